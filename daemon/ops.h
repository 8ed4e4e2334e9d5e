/* The request handlers: one per op of docs/protocol.md. */
#ifndef REBOUND_DAEMON_OPS_H
#define REBOUND_DAEMON_OPS_H

#include <stddef.h>

#include "queue/sched.h"

struct conn;

/* Parses and runs one request line from c; its reply goes into the slot
 * reserved now, possibly later. */
void ops_dispatch(struct conn *c, const char *line, size_t len);

/* Runs the requests parked on e while a write for it was in flight. Call
 * after clearing ENTRY_BUSY. May remove e. */
void ops_run_waiters(struct entry *e);

/* Bookkeeping of the counters in struct daemon when an entry changes. */
void stats_entry_leave(const struct entry *e);
void stats_entry_enter(const struct entry *e);

#endif
