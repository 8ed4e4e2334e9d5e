/*
 * The retry state machine's decision for one bounce report: given the
 * classification, the message's prior state and the time, what to do now.
 * Pure: time and randomness come in as arguments.
 */
#ifndef REBOUND_QUEUE_DECIDE_H
#define REBOUND_QUEUE_DECIDE_H

#include "queue/classify.h"
#include "queue/learn.h"

/* What is known of a message before this report. attempt is the number of
 * retries already scheduled for it (0 for a message never seen). */
struct prior {
    int attempt;
    int64_t first_ms; /* time of the first bounce; ignored when attempt == 0 */
};

enum reason {
    REASON_NONE = 0,
    REASON_HARD_INVALID,   /* suppress: the address does not exist */
    REASON_PERMANENT,      /* give_up: a permanent failure for this message */
    REASON_MAX_ATTEMPTS,   /* give_up: the class's or policy's attempt limit */
    REASON_MAX_AGE,        /* give_up: the next retry would fall past max age */
    REASON_CHRONIC_SOFT,   /* suppress: the recipient keeps soft-bouncing */
    REASON_DISABLED,       /* suppress: the address exists, its account is disabled or closed */
};

struct decision {
    enum action action;
    int class_idx;
    int attempt;        /* retry: the number of the retry scheduled (1 = first) */
    int64_t retry_at;   /* retry: epoch ms */
    int64_t first_ms;   /* first bounce of the message (now for a new one) */
    enum reason reason; /* give_up / suppress */
    bool alert;         /* also raise a sender_alert */
    bool learned;       /* retry: retry_at came from the domain's learned timing */
    int64_t learned_ms; /* then: the learned acceptance age it used (ms after first_ms) */
};

/* Decides what to do with a bounce. not_before_ms is the sender's earliest
 * retry time or 0. *rng is a xorshift64 state (never 0), advanced here.
 * The same as decide_bounce_learned with no learned state. */
void decide_bounce(const struct policy *p, const struct classification *c, const struct prior *prior,
                   int64_t now_ms, int64_t not_before_ms, uint64_t *rng, struct decision *out);

/* Decides as decide_bounce, with the receiving domain's learned state
 * (queue/learn.h) as an optional input: learned may be NULL (the table's
 * time, exactly as decide_bounce). When the class has learning enabled,
 * the server named no wait, and the domain has enough recent evidence
 * (learn_estimate with the class's min_evidence and forget), the retry is
 * scheduled at first_ms + the learned age + the class's margin + an upward
 * jitter of up to jitter_pct of that, and out->learned says so; the delay
 * from now is clamped into the class's bounds (never below its smallest
 * step's lower end, never above its largest step's upper end). The table
 * decides instead when that learned time has already passed (a retry at
 * it was deferred) or falls past the max age. Attempt limits, max age
 * and not_before apply as always. The learned state is only read. */
void decide_bounce_learned(const struct policy *p, const struct classification *c, const struct prior *prior,
                           const struct learn_domain *learned, int64_t now_ms, int64_t not_before_ms,
                           uint64_t *rng, struct decision *out);

/* The forecast for a class: the delay windows of the retries that would
 * follow a first bounce with this code, and when it would be given up.
 * Writes up to max windows into lo/hi (ms after the first bounce, cumulative,
 * jitter included, hi capped at the max age: lo is the earliest, hi the
 * latest) and returns how many. */
int decide_forecast(const struct policy *p, int class_idx, int code, int64_t *lo, int64_t *hi, int max);

const char *reason_name(enum reason r);

/* xorshift64: the one random source of queue/. */
uint64_t rng_next(uint64_t *state);

#endif
