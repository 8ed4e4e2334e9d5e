/*
 * Learned timing: what each receiving domain's deferrals turned out to
 * mean, per class, so that the next retry can be sent when that domain
 * actually accepts instead of at the policy table's time.
 *
 * Pure: no I/O, no clock (every time is an argument), no allocation. The
 * state of one domain is a fixed-size struct (sizeof(struct learn_domain)
 * == LEARN_DOMAIN_BYTES, 256 bytes on LP64), kept by the caller (say in
 * its per-domain record) and stored in Redis as the compact text that
 * learn_encode writes (at most LEARN_ENCODED_MAX bytes, typically 50-110
 * per class seen), one hash field per domain.
 *
 * How the caller feeds it (ages are ms since the message's first deferral,
 * the prior's first_ms):
 *   - a retry of the message was deferred again:   learn_deferred()
 *   - the message was delivered after retries:     learn_delivered()
 * and how it reads it back:
 *   - decide_bounce_learned() (queue/decide.h) takes the domain's state,
 *     or NULL, and says in the decision whether the time was learned;
 *   - learn_view() for showing a domain's statistics (`domain`, `stats`,
 *     metrics).
 *
 * What is learned per (domain, class): the smallest age at which a retry
 * was accepted since the domain last contradicted it (ok_ms), and the
 * ages of the most recent deferred retries (a ring of LEARN_RING). The
 * domain starts accepting somewhere between the latest deferral and ok_ms
 * (learn_estimate halves a wide gap, so that a few retries find where);
 * a greylisting domain that lets every second attempt through after 5
 * minutes never defers past 5 minutes, so the estimate settles at the
 * lowest accepted age and does not drift up with the margin added to it;
 * a domain whose limit recovers after an hour keeps deferring retries made
 * before the hour, so the estimate is the latest of those. A deferral at or
 * past ok_ms is a contradiction (the domain now wants longer): ok_ms and
 * the evidence count start again, and nothing is learned until enough new
 * deliveries come in.
 */
#ifndef REBOUND_QUEUE_LEARN_H
#define REBOUND_QUEUE_LEARN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEARN_SLOTS 4        /* classes remembered per domain (least recently updated goes) */
#define LEARN_RING 6         /* recent deferral ages kept per class */
#define LEARN_ENCODED_MAX 768 /* learn_encode never writes more (with its NUL) */
#define LEARN_AGE_MAX 0xfffffffeU /* ages are kept in ms in 32 bits: about 49.7 days */

struct learn_slot {
    uint32_t key;        /* learn_class_key() of the class name; 0: free slot */
    uint32_t delivered;  /* deliveries seen after at least one retry (saturating) */
    uint32_t deferred;   /* retries deferred again (saturating) */
    uint32_t attempts;   /* sum of the attempts of those deliveries (saturating) */
    uint64_t age_sum;    /* sum of their ages, ms (saturating) */
    int64_t last_ms;     /* when this slot last changed (epoch ms) */
    uint32_t ok_ms;      /* smallest accepted age since the last contradiction; 0: none */
    uint16_t evidence;   /* deliveries since the last contradiction (saturating) */
    uint8_t nring;       /* ages in ring[], 0..LEARN_RING */
    uint8_t pos;         /* where the next deferral age goes */
    uint32_t ring[LEARN_RING]; /* recent deferred-retry ages, ms */
};

struct learn_domain {
    struct learn_slot slots[LEARN_SLOTS];
};

#define LEARN_DOMAIN_BYTES sizeof(struct learn_domain)

/* What a caller shows of one (domain, class). */
struct learn_view {
    bool known;            /* the domain has a slot for the class */
    uint32_t delivered, deferred;
    double mean_attempts;  /* per delivery; 0 without deliveries */
    int64_t mean_age_ms;   /* first deferral to delivery; 0 without deliveries */
    int64_t ok_ms;         /* see above; 0: none */
    int64_t latest_deferral_ms; /* the largest age in the ring; 0: none */
    int evidence;
    int64_t last_ms;
};

/* The key of a class name (FNV-1a, never 0). Keys, not indices, name
 * classes here, so the state survives a policy reload that reorders or
 * renames classes (a class that is gone only ages out). */
uint32_t learn_class_key(const char *class_name);

/* Empties d. */
void learn_init(struct learn_domain *d);

/* A message of this class was delivered after `attempts` retries (>= 1),
 * age_ms after its first deferral, at now_ms. Ages below 0 count as 0 and
 * ages over LEARN_AGE_MAX as LEARN_AGE_MAX. */
void learn_delivered(struct learn_domain *d, uint32_t class_key, int attempts, int64_t age_ms, int64_t now_ms);

/* A retry of a message of this class was deferred again, age_ms after the
 * message's first deferral, at now_ms. */
void learn_deferred(struct learn_domain *d, uint32_t class_key, int64_t age_ms, int64_t now_ms);

/* The learned acceptance age for the class: true with *accept_ms set when
 * the slot has at least min_evidence deliveries since its last
 * contradiction and changed no earlier than now_ms - forget_ms (forget_ms
 * 0: never forgotten); false otherwise. d may be NULL (false).
 *
 * The domain is known to accept at ok_ms and to have deferred at the
 * latest ring age. When that latest deferral is at or past ok_ms, it is the
 * estimate. Otherwise acceptance starts somewhere between the two: while
 * the gap is wider than tolerance_pct of ok_ms the estimate is its middle
 * (a bisection: each retry there narrows the gap), then ok_ms itself. */
bool learn_estimate(const struct learn_domain *d, uint32_t class_key, int min_evidence, int tolerance_pct,
                    int64_t forget_ms, int64_t now_ms, int64_t *accept_ms);

/* Fills v for the class (v->known false when d is NULL or has no slot). */
void learn_view(const struct learn_domain *d, uint32_t class_key, struct learn_view *v);

/* Writes d as text into buf (cap bytes, NUL-terminated) and returns its
 * length, or 0 when cap is too small (LEARN_ENCODED_MAX always is enough).
 * The form, version 1:
 *   "v1" then per used slot, in slot order,
 *   ";" key (8 lower-case hex digits) "," delivered "," deferred "," attempts
 *   "," age_sum "," last_ms "," ok_ms "," evidence "," ring
 * where ring is "-" when empty, else the ages oldest first joined by "/".
 * Numbers are decimal without leading zeros. An empty state is "v1". */
size_t learn_encode(const struct learn_domain *d, char *buf, size_t cap);

/* Reads text (len bytes, need not be NUL-terminated) written by
 * learn_encode into *d. Strict: anything but the exact canonical form of a
 * consistent state (wrong version, a field out of range, a duplicate key,
 * more than LEARN_SLOTS slots, evidence above delivered, a stray byte) is
 * refused: returns -1 and leaves *d empty. Returns 0 on success. Never
 * reads past len. */
int learn_decode(struct learn_domain *d, const char *text, size_t len);

#endif
