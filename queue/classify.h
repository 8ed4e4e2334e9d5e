/*
 * Classification of an SMTP reply (basic code, enhanced code, text) into a
 * policy class. Pure: no I/O, no clock, no allocation on the hot path.
 */
#ifndef REBOUND_QUEUE_CLASSIFY_H
#define REBOUND_QUEUE_CLASSIFY_H

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
 * the policy's temp_other (4xx) or hard_other (otherwise). */
void classify_reply(const struct policy *p, int code, const char *enhanced, const char *text,
                    struct classification *out);

/* Returns the action the class takes for this basic code. */
enum action classify_action(const struct policy *p, int class_idx, int code);

#endif
