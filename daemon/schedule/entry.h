/*
 * An entry's life: the one place that changes an entry's state (and the
 * counters that follow it: pending, awaiting, by class, by domain), checks
 * the state it leaves, and lets an idle entry go.
 *
 * States (queue/sched.h): NEW while a first write is in flight, PENDING
 * (a retry scheduled), AWAITING (fired, waiting for the sender's outcome).
 * Every change is made on committed state: never while a write about the
 * entry is in flight (ENTRY_BUSY) or it is in a fire batch (ENTRY_FIRING).
 * The checks are assertions: they fire in the test builds (Debug, with and
 * without sanitizers) and cost nothing in a release build.
 *
 * The requests waiting behind an entry's write (e->waiters) belong to ops/,
 * a floor above: the entry runs them through a hook that main.c registers.
 */
#ifndef REBOUND_DAEMON_ENTRY_H
#define REBOUND_DAEMON_ENTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/sched.h"

struct entry_hooks {
    /* Runs the requests parked on e, in order, while e is not busy. */
    void (*run_waiters)(struct entry *e);
};

/* Sets the hooks (copied); run_waiters must be set before the first
 * request or fire batch. */
void entry_set_hooks(const struct entry_hooks *hooks);

/* What a record says about its pending retry. */
struct entry_facts {
    int class_idx; /* into rbd->policy's classes */
    int attempt;
    int64_t first_ms;
    uint32_t domain; /* the recipient's domain (schedule/domains.h), or 0 */
};

/* Moves e to state `to`. With facts, e takes them too (class, attempt,
 * first bounce, domain); without, it keeps its own, and AWAITING can then
 * only be reached from PENDING (a fire). Does not touch the heap: the
 * caller schedules e (or not) for its new state. */
void entry_become(struct entry *e, enum entry_state to, const struct entry_facts *facts);

/* The entry is idle again after a write or a fire: runs what waited on it,
 * then forgets it if it is NEW, not busy and nothing waits. */
void entry_settle(struct entry *e);

/* Forgets e: its counters, its domain reference and the entry itself
 * (freed). No request may wait on it. */
void entry_forget(struct entry *e);

static inline bool entry_has_waiters(const struct entry *e) { return e->waiters != NULL; }

struct due_counts {
    uint64_t minute, hour, day;
};
/* Pending retries due within a minute, an hour and a day of now (overdue
 * ones included): one walk over the schedule. */
struct due_counts entry_due_counts(int64_t now);

#endif
