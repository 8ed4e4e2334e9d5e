#include "base/counters.h"

#include <stdio.h>
#include <string.h>

struct counters counters;

void counters_error(const char *code)
{
    for (int i = 0; i < counters.nerrors; i++) {
        if (strcmp(counters.errors[i].code, code) == 0) {
            counters.errors[i].n++;
            return;
        }
    }
    if (counters.nerrors == COUNTERS_MAX_ERROR_CODES) {
        counters.error_other++;
        return;
    }
    snprintf(counters.errors[counters.nerrors].code, sizeof counters.errors[0].code, "%s", code);
    counters.errors[counters.nerrors++].n = 1;
}

void counters_report(const char *class_name, int action)
{
    if (action < 0 || action >= COUNTERS_NACTIONS)
        return;
    for (int i = 0; i < counters.nreports; i++) {
        if (strcmp(counters.reports[i].name, class_name) == 0) {
            counters.reports[i].n[action]++;
            return;
        }
    }
    if (counters.nreports == COUNTERS_MAX_REPORT_CLASSES)
        return;
    snprintf(counters.reports[counters.nreports].name, sizeof counters.reports[0].name, "%s", class_name);
    counters.reports[counters.nreports++].n[action] = 1;
}

struct lateness lateness;

void counters_lateness(int64_t late_ms)
{
    static const int64_t bounds[LATENESS_NBOUNDS] = LATENESS_BOUNDS_MS;
    if (late_ms < 0)
        late_ms = 0;
    int i = 0;
    while (i < LATENESS_NBOUNDS && late_ms > bounds[i])
        i++;
    lateness.buckets[i]++;
    lateness.count++;
    lateness.sum_ms += (uint64_t)late_ms;
}
