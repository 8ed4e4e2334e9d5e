/*
 * One timer drives every retry (OpenSMTPD's scheduler idea): it is armed
 * for the earliest due time; when it fires, a bounded batch of due entries
 * goes to Redis (scripts/fire.lua) and, if more are due, the next batch
 * follows as soon as a slot is free, so sockets and Redis are not starved.
 * Each sleep is capped, so a wall-clock jump is corrected soon.
 */
#ifndef REBOUND_DAEMON_FIRING_H
#define REBOUND_DAEMON_FIRING_H

void firing_init(void);
/* Re-arms the timer for the earliest due time (call after the heap head may
 * have changed). Cheap. */
void firing_kick(void);
void firing_stop(void);

#endif
