/* The request handlers: one per op of docs/protocol.md. */
#ifndef REBOUND_DAEMON_OPS_H
#define REBOUND_DAEMON_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/sched.h"

struct conn;

/* Parses and runs one request line from c; its reply goes into the slot
 * reserved now, possibly later. */
void ops_dispatch(struct conn *c, const char *line, size_t len);

/* Runs the requests parked on e while a write for it was in flight. Call
 * after clearing ENTRY_BUSY. May remove e. */
void ops_run_waiters(struct entry *e);

/* Bookkeeping of the counters in struct daemon (and of the entry's
 * domain) when an entry changes. */
void stats_entry_leave(const struct entry *e);
void stats_entry_enter(const struct entry *e);

/* Pending retries due within the next minute, hour and day of now
 * (overdue ones included): what `stats` and the metrics show. Walks the
 * whole schedule. */
struct due_counts {
    uint64_t minute, hour, day;
};
struct due_counts stats_due(int64_t now);

/* Whether requests are parked on e. */
static inline bool entry_has_waiters(const struct entry *e) { return e->waiters != NULL; }
/* Drops e from the schedule (its domain released). No request may be
 * parked on it. */
void entry_forget(struct entry *e);

#endif
