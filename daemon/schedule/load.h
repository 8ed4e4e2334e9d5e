/*
 * The schedule from Redis's records: read back in pages at start, re-read
 * for the writes whose answer was lost, and re-mapped when the policy's
 * classes change.
 */
#ifndef REBOUND_DAEMON_LOAD_H
#define REBOUND_DAEMON_LOAD_H

#include <stdbool.h>

struct policy;

/* Starts reading the schedule from Redis (in pages); calls done() once all
 * is loaded. */
void schedule_load(void (*done)(void));
/* Reads shard's records (a sharded layout) and calls done(shard) once all
 * are in; with_domains, also the throttles and learned timing, first. A
 * new load stops the one running, its throttles' and learned timing's
 * reads included (it then never calls its done). */
void schedule_load_shard(int shard, bool with_domains, void (*done)(int shard));
/* True while a load runs. */
bool schedule_loading(void);
/* Re-reads the records whose last write got no answer (the connection
 * dropped: Redis may or may not have applied it) and makes the schedule
 * agree with Redis. Called when Redis is back. */
void schedule_resync(void);
/* Re-maps entries' class indices after the policy changed (reload). */
void schedule_remap_classes(const struct policy *old_policy, const struct policy *new_policy);

#endif
