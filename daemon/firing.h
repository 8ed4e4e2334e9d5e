/*
 * One timer drives every retry (OpenSMTPD's scheduler idea): it is armed
 * for the earliest due time; when it fires, a bounded batch of due entries
 * goes to Redis (scripts/fire.lua) and, if more are due, the next batch
 * follows as soon as a slot is free, so sockets and Redis are not starved.
 * Each sleep is capped, so a wall-clock jump is corrected soon.
 *
 * Also here: reading the schedule back from Redis at start.
 */
#ifndef REBOUND_DAEMON_FIRING_H
#define REBOUND_DAEMON_FIRING_H

struct policy;

void firing_init(void);
/* Re-arms the timer for the earliest due time (call after the heap head may
 * have changed). Cheap. */
void firing_kick(void);
void firing_stop(void);
/* Starts reading the schedule from Redis (in pages); calls done() once all
 * is loaded. */
void firing_load(void (*done)(void));
/* Re-reads the records whose last write got no answer (the connection
 * dropped: Redis may or may not have applied it) and makes the schedule
 * agree with Redis. Called when Redis is back. */
void firing_resync(void);
/* Re-maps entries' class indices after the policy changed (reload). */
void firing_remap_classes(const struct policy *old_policy, const struct policy *new_policy);

#endif
