/*
 * Learned timing per receiving domain (queue/learn.h), in memory: what
 * each domain's deferrals and deliveries turned out to mean, read by the
 * bounce decision and fed by bounce (a retry deferred again) and
 * delivered. Redis keeps the same state (<prefix>learned, one field per
 * domain, written in the report's own atomic write); it is read back at
 * start, after the schedule.
 *
 * Bounded: at most LEARNED_MAX_DOMAINS domains, each one node of
 * LEARNED_NODE_BYTES plus its name and an 8-byte bucket (about 300 bytes
 * with a typical name). When the table is full, the domain whose state
 * changed least recently is let go, in memory and in Redis, so the two
 * stay the same size.
 */
#ifndef REBOUND_DAEMON_LEARNED_H
#define REBOUND_DAEMON_LEARNED_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/learn.h"

#define LEARNED_MAX_DOMAINS 262144
#define LEARNED_NAME_MAX 255

void learned_init(void);
void learned_free(void);

/* The lower-cased domain of address rcpt (after its last '@') into
 * buf (LEARNED_NAME_MAX + 1 bytes); returns its length, 0 when unusable. */
size_t learned_name_of_rcpt(const char *rcpt, size_t len, char *buf);
/* The same for a domain name. */
size_t learned_name(const char *name, size_t len, char *buf);

/* The state of domain `name` (as learned_name made it), or NULL. */
const struct learn_domain *learned_find(const char *name, size_t len);
/* The state of domain `name`, made empty when it was not known (which may
 * let the least recently changed domain go). Marks it the most recently
 * changed: the caller is about to change it. */
struct learn_domain *learned_touch(const char *name, size_t len);

/* Domains with a learned state. */
size_t learned_count(void);
/* The bytes the table holds now: nodes, names and buckets. */
size_t learned_memory(void);
/* Retries scheduled at a learned time since start (metrics, stats). */
extern uint64_t learned_retries;
/* Domains let go to stay within LEARNED_MAX_DOMAINS. */
extern uint64_t learned_evicted;

/* Reads the learned states kept in Redis (HSCAN pages), then calls done.
 * A state that does not decode is skipped (and logged). */
void learned_load(void (*done)(void));

/* For the domain op: {class: view} of the domain's classes, or NULL when
 * it has no state. */
json_t *learned_domain_json(const char *name, size_t len, int64_t now);
/* For stats: domains, retries, and per class the totals of every domain. */
json_t *learned_stats_json(void);

#endif
