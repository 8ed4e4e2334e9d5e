/*
 * The schedule from Redis's records: read back in pages at start, re-read
 * for the writes whose answer was lost, and re-mapped when the policy's
 * classes change.
 */
#ifndef REBOUND_DAEMON_LOAD_H
#define REBOUND_DAEMON_LOAD_H

struct policy;

/* Starts reading the schedule from Redis (in pages); calls done() once all
 * is loaded. */
void schedule_load(void (*done)(void));
/* Re-reads the records whose last write got no answer (the connection
 * dropped: Redis may or may not have applied it) and makes the schedule
 * agree with Redis. Called when Redis is back. */
void schedule_resync(void);
/* Re-maps entries' class indices after the policy changed (reload). */
void schedule_remap_classes(const struct policy *old_policy, const struct policy *new_policy);

#endif
