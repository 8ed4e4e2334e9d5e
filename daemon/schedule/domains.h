/*
 * Receiving domains: what reboundd knows about each domain it retries
 * mail to, in memory. Soft state, except the throttles, which are kept in
 * Redis (<prefix>domains) so that a restart honours them.
 *
 * Per domain: the retries pending for it; sliding windows of the replies
 * of the classes that throttle (rate limits, reputation blocks,
 * congestion), which back the domain off when they pass the policy's
 * threshold; the pace at which its retries may leave; and when it last
 * raised a sender_alert of each class.
 *
 * Domains are numbered from 1; an entry of the schedule carries its
 * domain's number (entry_domain). A domain is forgotten when no entry
 * names it, it is not throttled, and it has been idle for a while, so the
 * table holds the domains seen recently, not every domain ever seen.
 */
#ifndef REBOUND_DAEMON_DOMAINS_H
#define REBOUND_DAEMON_DOMAINS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/policy.h"
#include "queue/sched.h"

void domains_init(void);
void domains_free(void);

/* The number of the domain of address rcpt (the part after its last '@',
 * lower-cased), or of the domain name itself with domains_find. With
 * create, a domain not known yet is added; otherwise 0 when unknown.
 * 0 also when the name is unusable or the table is full. */
uint32_t domains_of_rcpt(const char *rcpt, size_t len, bool create, int64_t now);
uint32_t domains_find(const char *name, size_t len, bool create, int64_t now);

/* A reference keeps domain d from being forgotten (a request in flight
 * holds one). 0 is ignored. */
void domains_ref(uint32_t d);
void domains_unref(uint32_t d);

/* The entry's domain (0: none). */
uint32_t entry_domain(const struct entry *e);
/* The entry's shard (0 in the one-shard layout), kept in the same word. */
int entry_shard(const struct entry *e);
void entry_set_shard(struct entry *e, int shard);
/* Sets the entry's domain (references counted; 0 clears it) and clears its
 * place in the domain's pace. Call only while the entry is not counted as
 * pending (between stats_entry_leave and stats_entry_enter, or while it is
 * ENTRY_NEW), since the domain's pending count follows those. */
void entry_set_domain(struct entry *e, uint32_t d);

/* Bookkeeping from stats_entry_enter/leave: delta pending retries. */
void domains_pending(uint32_t d, int delta);

/* A report of class class_idx from domain d was committed at now: counts it
 * and, when the domain passes the throttle threshold, backs it off (and
 * writes the throttle and its domain_throttled event to Redis). */
void domains_report(uint32_t d, int class_idx, int64_t now);
/* A delivered report for domain d: ends its back-off early. */
void domains_delivered(uint32_t d, int64_t now);

/* Whether a sender_alert of class_idx for domain d is raised now: true for
 * the first in each alert window (the window starts), false for the rest,
 * which are counted. *repeats is how many were not raised since the last
 * one that was. domains_alert_unclaim undoes a claim whose write failed. */
bool domains_alert_claim(uint32_t d, int class_idx, int64_t now, uint64_t *repeats);
void domains_alert_unclaim(uint32_t d, int class_idx, uint64_t repeats);

/* Firing: the pending entry e falls due at now. Returns 0 when it may fire
 * now, or the time it must wait for (its domain is backed off, or the
 * domain's pace is spent); the caller reschedules it there, and it fires
 * when it falls due again. */
int64_t domains_pace_entry(struct entry *e, int64_t now);

/* Reads the throttles kept in Redis (at start), then calls done. */
void domains_load(void (*done)(void));
/* The policy changed: the windows (counted per class) start over. */
void domains_policy_changed(void);

/* For stats: {"known":n,"throttled":[..],"top_pending":[..]}. */
json_t *domains_stats_json(int64_t now);
/* For the domain op: the state of one domain (name as the client gave
 * it; it is lower-cased here). */
json_t *domains_json(const char *name, size_t len, int64_t now);

/* ---- operator holds (ops/hold.c) ----
 * A held domain fires no retry until its hold ends; reports for it are
 * still accepted and scheduled. The hold itself is kept in Redis by the
 * op (<prefix>held) and read back by domains_load. */
#define DOMAINS_HOLD_FOREVER INT64_C(253402300799999) /* held until released */

/* Holds the domain called name until `until` (epoch ms, 0: until
 * released), held since `since`. Returns its number (0: unusable name). */
uint32_t domains_hold(const char *name, size_t len, int64_t until, int64_t since, int64_t now);
/* Ends the hold of name; the retries it held back are due now (their pace
 * still applies). Returns how many were moved up. */
size_t domains_release(const char *name, size_t len, int64_t now);
/* Whether domain d is held at now. */
bool domains_held(uint32_t d, int64_t now);
/* How many domains are held at now (rebound_domains_held): one pass over
 * the domains table. */
uint64_t domains_held_count(int64_t now);
/* retry_now: e's place in its domain's pace is forgotten, so the pace
 * spaces it out again when it falls due. */
void domains_entry_unplace(struct entry *e);


/* The lower-case name of domain d, or NULL (0, or forgotten). */
const char *domains_name(uint32_t d);
/* ---- throttles and alerts across instances (shards S >= 2) ----
 * docs/policy.md, "Throttles across instances"; domains.c says why. */

/* The share arithmetic: an instance serving `owned` of `nshards` shards
 * sees about owned/nshards of a domain's replies and sends that much of
 * its retries, so the threshold (rounded up, at least 1), the pace's
 * interval and its burst (rounded up, at least 1) are scaled by it. With
 * one shard, or owned >= nshards, the policy's own figures. */
uint32_t domains_share_threshold(int replies, int owned, int nshards);
int64_t domains_share_interval_us(int per_second, int owned, int nshards);
int domains_share_burst(int burst, int owned, int nshards);

/* A throttle as the shared hash keeps it: "<class>,<until>,<since>". */
struct domains_throttle {
    char cls[POLICY_NAME_MAX];
    int64_t until, since;
};
#define DOMAINS_MERGE_COVERED 0    /* one in force ends as late or later: it stays */
#define DOMAINS_MERGE_LENGTHENED 1 /* ours ends later: until raised, the episode's class and since kept */
#define DOMAINS_MERGE_BEGAN 2      /* none in force: ours is stored, and announced by its instance */
/* The merge rule of store/scripts/throttle.lua at now, in C: stored (when
 * *have) becomes the throttle in force. Returns DOMAINS_MERGE_*. */
int domains_throttle_merge(struct domains_throttle *stored, bool *have, const struct domains_throttle *mine,
                           int64_t now);

#define DOMAINS_APPLIED_ADOPTED 1 /* backed off (or longer) as another instance decided */
#define DOMAINS_APPLIED_ENDED 2   /* the episode this instance held ended early elsewhere */
/* A shared throttle read back by the poll, value "<class>,<until>,<since>":
 * applied to this instance's retries of the domain. Returns 0 (nothing to
 * do: not known here, or nothing new) or DOMAINS_APPLIED_*. */
int domains_shared_apply(const char *name, size_t len, const char *value, size_t vlen, int64_t now);
/* One poll of the shared throttles (the timer's, about once a second;
 * tests call it): skipped while the last is unanswered. */
void domains_share_tick(int64_t now);
/* Stops the poll's timer (shutdown). */
void domains_share_stop(void);
/* With shards, a sender_alert claimed by domains_alert_claim (this
 * instance's window) is raised here, once across the instances: the
 * window is claimed in Redis (SET NX PX) and the event (body, copied)
 * written by the instance that wins. Returns false when not shared (the
 * caller writes the alert with its report as before). */
bool domains_alert_shared(uint32_t d, int class_idx, const char *body);
/* For stats: the share and the poll's counters, NULL when not shared. */
json_t *domains_share_json(void);

#endif
