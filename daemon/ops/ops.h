/* The request handlers: one per op of docs/protocol.md. */
#ifndef REBOUND_DAEMON_OPS_H
#define REBOUND_DAEMON_OPS_H

#include <stddef.h>

#include "queue/sched.h"

struct conn;

/* Parses and runs one request line from c; its reply goes into the slot
 * reserved now, possibly later. main.c registers it as the connections'
 * on_line hook. */
void ops_dispatch(struct conn *c, const char *line, size_t len);

/* Runs the requests parked on e while a write for it was in flight, in
 * order, until one makes e busy again. main.c registers it as the entries'
 * run_waiters hook (schedule/entry.h). */
void ops_run_waiters(struct entry *e);

#endif
