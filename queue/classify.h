/*
 * Classification of an SMTP reply (basic code, enhanced code, text) into a
 * policy class. Pure: no I/O, no clock, no allocation on the hot path.
 */
#ifndef REBOUND_QUEUE_CLASSIFY_H
#define REBOUND_QUEUE_CLASSIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/policy.h"

struct classification {
    int class_idx;          /* always a valid class of the policy */
    int rule_idx;           /* index into policy->rules, or -1 for a fallback */
    int code;               /* the basic code used (the field, or the one found in the text) */
    char enhanced[16];      /* the enhanced code used: the field, or the one found in the text, or "" */
    int64_t stated_wait_ms; /* a wait the server named ("try again in 5 minutes"), or 0 */
};

/* Classifies one reply. enhanced and text may be NULL. code is the basic
 * code (200..599), or 0 when unknown (then it is taken from the text when
 * the text starts with one). Never fails: without any match the result is
 * the policy's temp_other (4xx) or hard_other (otherwise). A result that
 * would suppress the address is then checked against the policy's guard
 * rules, and the first that matches decides instead (rule_idx names it). */
void classify_reply(const struct policy *p, int code, const char *enhanced, const char *text,
                    struct classification *out);

/*
 * A memo of classify_reply for one policy: a campaign repeats the same
 * reply text thousands of times, and reading it and trying the rules
 * costs far more than looking it up. Direct-mapped, a fixed number of
 * slots, and only short texts are kept, so its size is bounded
 * (sizeof(struct classify_cache), about 150 KiB); what does not fit is
 * classified as if there were no cache. Zero it before first use.
 */
#define CLASSIFY_CACHE_SLOTS 512
#define CLASSIFY_CACHE_TEXT 224
#define CLASSIFY_CACHE_ENH 16

struct classify_cache_slot {
    uint64_t hash;
    int code;
    uint16_t text_len;
    uint8_t enh_len;
    bool used;
    char enh[CLASSIFY_CACHE_ENH];
    char text[CLASSIFY_CACHE_TEXT];
    struct classification cls;
};

struct classify_cache {
    const struct policy *policy; /* whose results the slots hold */
    uint64_t generation;
    uint64_t hits, misses;
    struct classify_cache_slot slots[CLASSIFY_CACHE_SLOTS];
};

/* classify_reply through the cache: out gets exactly what classify_reply
 * would give. The cache holds the results of one policy, named by p and
 * generation together; any other pair empties it first. The caller must
 * pass a generation that changes whenever a different policy could have
 * been allocated at p's address (the pointer alone does not name a policy
 * once its memory is reused). */
void classify_cached(struct classify_cache *cache, const struct policy *p, uint64_t generation, int code,
                     const char *enhanced, const char *text, struct classification *out);

/* Why a classification that suppresses does so: the reason of the rule
 * that decided it (RULE_REASON_UNKNOWN, "does not exist", when no rule or
 * a rule without one decided). */
enum rule_reason classify_reason(const struct policy *p, const struct classification *c);

/* Returns the action the class takes for this basic code. */
enum action classify_action(const struct policy *p, int class_idx, int code);

#endif
