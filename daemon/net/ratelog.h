/*
 * Rate-limited warnings for what a client can trigger (a refused
 * connection, a time-out, a wrong token): at most one line per interval for
 * each kind, carrying how many happened since the last line, so an attacker
 * does not control the log's volume.
 */
#ifndef REBOUND_DAEMON_RATELOG_H
#define REBOUND_DAEMON_RATELOG_H

#include <stdint.h>

/* One line per this many ms per kind. */
#define RATELOG_INTERVAL_MS 10000

struct ratelog {
    int64_t last_ms;     /* when the last line was written, 0 = never */
    uint64_t suppressed; /* occurrences since then that wrote no line */
};

/* Counts one occurrence of rl's kind and writes it as a warning when the
 * last line of that kind is older than RATELOG_INTERVAL_MS (with the number
 * left out since, if any); otherwise only counts it. */
void ratelog_warn(struct ratelog *rl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
