/*
 * Counters that any floor bumps and metrics.c (the top floor) renders:
 * error replies by code and accepted reports by class and action. They live
 * here, below everything, so that bumping one never names the HTTP side.
 */
#ifndef REBOUND_DAEMON_COUNTERS_H
#define REBOUND_DAEMON_COUNTERS_H

#include <stdint.h>

#include "queue/policy.h"

/* Error codes are a short fixed vocabulary (proto/request.h); a table keeps
 * series for codes added later without touching this file. */
#define COUNTERS_MAX_ERROR_CODES 32
/* Keyed by class name, not index: a reload may reorder the classes, and a
 * counter must never go down or move to another series. */
#define COUNTERS_MAX_REPORT_CLASSES (POLICY_MAX_CLASSES * 2)
#define COUNTERS_NACTIONS 3 /* enum action: retry, suppress, give up */

struct counters {
    struct {
        char code[32];
        uint64_t n;
    } errors[COUNTERS_MAX_ERROR_CODES];
    int nerrors;
    uint64_t error_other; /* past COUNTERS_MAX_ERROR_CODES distinct codes: cannot happen with today's */
    struct {
        char name[POLICY_NAME_MAX];
        uint64_t n[COUNTERS_NACTIONS];
    } reports[COUNTERS_MAX_REPORT_CLASSES];
    int nreports;
};

/* Read-only outside counters.c. */
extern struct counters counters;

/* Counts one error reply by its code (an ERR_* string). Unknown codes get
 * their own series, up to a fixed number of distinct codes. */
void counters_error(const char *code);
/* Counts one accepted bounce report by class name and action (an enum
 * action value); other actions are ignored. */
void counters_report(const char *class_name, int action);

/* ---- firing lateness: fire time minus due time of each retry fired ---- */

/* Upper bounds of its buckets in milliseconds: a retry fires within a few
 * ms in the steady state and minutes to hours late after an outage, so the
 * buckets span both (the request histograms stop at 10 s). */
#define LATENESS_BOUNDS_MS {1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 30000, 60000, 300000, 900000, 3600000}
#define LATENESS_NBOUNDS 14

struct lateness {
    uint64_t buckets[LATENESS_NBOUNDS + 1]; /* not cumulative; the last is +Inf */
    uint64_t count;
    uint64_t sum_ms;
};

/* Read-only outside counters.c. */
extern struct lateness lateness;

/* Counts one retry that fired late_ms after it fell due (a fire ahead of
 * its due millisecond, a negative value, counts as 0). */
void counters_lateness(int64_t late_ms);

#endif
