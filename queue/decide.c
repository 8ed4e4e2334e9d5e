/*
 * The retry decision: one bounce in, one action out.
 *
 * Everything it needs comes in as arguments (the policy, the classified
 * reply, what is known of the message, the time and the random state), so
 * the daemon, the classify dry run and the tests all get the same answer for
 * the same inputs, and a test can replay a whole schedule without a clock.
 *
 * The order of the checks is the order an operator reasons in: what does
 * this class do with this code (suppress, give up, retry); if retry, is the
 * message out of attempts; if not, when is the next one (the wait the
 * server named, or else the receiving domain's learned acceptance time
 * when the caller passed its state and the class learns, or else the
 * class's step for this attempt, jittered; the first two kept within the
 * class's range, and never before the sender's not_before); and would
 * that time fall past the message's max age, counted from its first bounce.
 * A retry that would fall past the max age is given up now rather than
 * scheduled to be given up later: the sender learns the outcome sooner and
 * nothing sits in the queue that can no longer be sent.
 */
#include "queue/decide.h"

#include <stddef.h>

/* Any odd constant will do; it only has to be non-zero. */
#define RNG_RESEED 0x9e3779b97f4a7c15ULL

/* Advances the xorshift64 state (13, 7, 17) and returns the new value. A
 * zero state, which xorshift would never leave, is replaced by a fixed
 * non-zero one first. */
uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;

    if (x == 0)
        x = RNG_RESEED;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

/* A uniform draw in [lo, hi] (lo <= hi). The 64-bit draw is scaled to the
 * span by the high half of a 128-bit product (Lemire's multiply-shift): no
 * division, and a bias below span / 2^64, far under a millisecond's worth
 * for any span a policy can name. */
static int64_t rng_between(uint64_t *rng, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)hi - (uint64_t)lo + 1;
    uint64_t r = rng_next(rng);
    uint64_t off = span ? (uint64_t)(((unsigned __int128)r * span) >> 64) : r;

    return (int64_t)((uint64_t)lo + off);
}

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;

    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* ms * pct / 100, exact, for 0 <= ms and 0 <= pct <= 200; saturates. */
static int64_t scale_pct(int64_t ms, int pct)
{
    __int128 v = (__int128)ms * pct / 100;

    return v > INT64_MAX ? INT64_MAX : (int64_t)v;
}

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static const struct policy_class *class_of(const struct policy *p, int class_idx)
{
    if (!p || class_idx < 0 || class_idx >= p->nclasses)
        return NULL;
    return &p->classes[class_idx];
}

/* The action for a basic code: 4xx uses the 4xx column, anything else (5xx,
 * or a code we could not read) the 5xx one, which is the cautious side. */
static inline bool is_4xx(int code) { return code >= 400 && code <= 499; }

static enum action class_action(const struct policy_class *cl, int code)
{
    return is_4xx(code) ? cl->action_4xx : cl->action_5xx;
}

static int effective_max_attempts(const struct policy *p, const struct policy_class *cl)
{
    return cl->max_attempts ? cl->max_attempts : p->max_attempts;
}

static int64_t effective_max_age(const struct policy *p, const struct policy_class *cl)
{
    return cl->max_age_ms ? cl->max_age_ms : p->max_age_ms;
}

/* The step used for retry n (1-based): retries past the last step reuse
 * it. A class without steps (the loader refuses those for retry classes)
 * retries at once rather than reading past the array. */
static struct policy_step class_step(const struct policy_class *cl, int n)
{
    struct policy_step none = {0, 0};
    int k;

    if (cl->nsteps <= 0)
        return none;
    k = n - 1;
    if (k > cl->nsteps - 1)
        k = cl->nsteps - 1;
    if (k < 0)
        k = 0;
    return cl->steps[k];
}

/* The window a delay for retry n is drawn from, jitter included, never
 * negative: a range step as written; a fixed step widened by the class's
 * jitter, a percentage or else an added range. */
static void step_window(const struct policy_class *cl, int n, int64_t *wlo, int64_t *whi)
{
    struct policy_step st = class_step(cl, n);
    int64_t lo = max64(st.lo_ms, 0);

    if (st.lo_ms < st.hi_ms) {
        *wlo = lo;
        *whi = max64(st.hi_ms, 0);
    } else if (cl->jitter_pct > 0) {
        int pct = cl->jitter_pct > 100 ? 100 : cl->jitter_pct;
        *wlo = scale_pct(lo, 100 - pct);
        *whi = scale_pct(lo, 100 + pct);
    } else if (cl->jitter_hi_ms > cl->jitter_lo_ms) {
        *wlo = max64(sat_add(lo, cl->jitter_lo_ms), 0);
        *whi = max64(sat_add(lo, cl->jitter_hi_ms), 0);
    } else {
        *wlo = *whi = lo;
    }
}

/* The range of delays the class can name at all: the smallest step's
 * lower bound to the largest step's upper bound, without jitter. */
static void class_bounds(const struct policy_class *cl, int64_t *blo, int64_t *bhi)
{
    int n = cl->nsteps > 0 ? cl->nsteps : 1;

    *blo = INT64_MAX;
    *bhi = 0;
    for (int k = 1; k <= n; k++) {
        struct policy_step st = class_step(cl, k);
        *blo = min64(*blo, max64(st.lo_ms, 0));
        *bhi = max64(*bhi, max64(st.hi_ms, st.lo_ms));
    }
    if (*bhi < *blo)
        *bhi = *blo;
}

/* The learned delay for retry from now, or -1 when the table decides
 * (see decide_bounce_learned in decide.h). Draws from *rng only when it
 * returns a delay and the class has a jitter. */
static int64_t learned_delay(const struct policy *p, const struct policy_class *cl, const struct learn_domain *ld,
                             int64_t first, int64_t now_ms, uint64_t *rng, int64_t *accept_out)
{
    const struct policy_learn *lc = &cl->learn;
    int64_t accept, blo, bhi, target, delay;

    /* The bracket is halved down to the margin: closer than that, a retry
     * at the lowest accepted age plus the margin is as good as any. */
    int tol = lc->margin_pct > 0 ? lc->margin_pct : 10;
    if (!ld || !lc->enabled ||
        !learn_estimate(ld, learn_class_key(cl->name), lc->min_evidence, tol, lc->forget_ms, now_ms, &accept))
        return -1;
    int64_t base = sat_add(accept, lc->margin_pct > 0 ? scale_pct(accept, lc->margin_pct) : lc->margin_ms);
    int64_t last = sat_add(first, effective_max_age(p, cl));

    target = sat_add(first, base);
    /* A retry at the learned time already went and was deferred again:
     * the learned time says nothing more about this message. */
    if (target <= now_ms)
        return -1;
    class_bounds(cl, &blo, &bhi);
    /* Past the max age (or pushed there by the class's minimum), it is the
     * table's call, which may be to give up. Checked before the jitter is
     * drawn, so that a fallback leaves *rng as the table expects it. */
    if (target > last || sat_add(now_ms, blo) > last)
        return -1;
    if (lc->jitter_pct > 0) {
        int64_t spread = scale_pct(base, lc->jitter_pct > 100 ? 100 : lc->jitter_pct);
        target = min64(sat_add(target, rng_between(rng, 0, spread)), last);
    }
    delay = min64(max64(target - now_ms, blo), bhi);
    *accept_out = accept;
    return delay;
}

/* Fills out with what to do about this bounce (see decide.h). p and c
 * are read only; *rng is advanced once when a step's delay is drawn, and not
 * at all otherwise. A NULL prior is a message never seen. */
void decide_bounce(const struct policy *p, const struct classification *c, const struct prior *prior,
                   int64_t now_ms, int64_t not_before_ms, uint64_t *rng, struct decision *out)
{
    decide_bounce_learned(p, c, prior, NULL, now_ms, not_before_ms, rng, out);
}

void decide_bounce_learned(const struct policy *p, const struct classification *c, const struct prior *prior,
                           const struct learn_domain *learned, int64_t now_ms, int64_t not_before_ms,
                           uint64_t *rng, struct decision *out)
{
    static const struct prior fresh = {0, 0};
    const struct policy_class *cl = class_of(p, c->class_idx);
    int prior_attempt;
    int64_t first, delay, retry_at;
    int n;

    if (!prior)
        prior = &fresh;
    prior_attempt = prior->attempt > 0 ? prior->attempt : 0;
    first = prior_attempt ? prior->first_ms : now_ms;

    out->class_idx = c->class_idx;
    out->attempt = prior_attempt;
    out->retry_at = 0;
    out->first_ms = first;
    out->reason = REASON_NONE;
    out->alert = false;
    out->learned = false;
    out->learned_ms = 0;

    if (!cl) {
        /* classify_reply never yields this; give up rather than guess. */
        out->action = ACTION_GIVE_UP;
        out->reason = REASON_PERMANENT;
        return;
    }
    out->action = class_action(cl, c->code);
    out->alert = is_4xx(c->code) ? cl->alert_4xx : cl->alert_5xx;

    switch (out->action) {
    case ACTION_SUPPRESS:
        out->reason = classify_reason(p, c) == RULE_REASON_DISABLED ? REASON_DISABLED : REASON_HARD_INVALID;
        return;
    case ACTION_GIVE_UP:
        out->reason = REASON_PERMANENT;
        return;
    case ACTION_RETRY:
        break;
    default:
        out->action = ACTION_GIVE_UP;
        out->reason = REASON_PERMANENT;
        return;
    }

    n = prior_attempt + 1;
    if (n > effective_max_attempts(p, cl)) {
        out->action = ACTION_GIVE_UP;
        out->reason = REASON_MAX_ATTEMPTS;
        return;
    }

    int64_t accept = 0;
    if (c->stated_wait_ms > 0) {
        int64_t blo, bhi;
        class_bounds(cl, &blo, &bhi);
        delay = min64(max64(c->stated_wait_ms, blo), bhi);
    } else if ((delay = learned_delay(p, cl, learned, first, now_ms, rng, &accept)) >= 0) {
        out->learned = true;
        out->learned_ms = accept;
    } else {
        int64_t wlo, whi;
        step_window(cl, n, &wlo, &whi);
        delay = wlo < whi ? rng_between(rng, wlo, whi) : wlo;
    }
    if (delay < 0)
        delay = 0;

    retry_at = sat_add(now_ms, delay);
    if (not_before_ms > retry_at)
        retry_at = not_before_ms;
    if (retry_at > sat_add(first, effective_max_age(p, cl))) {
        out->action = ACTION_GIVE_UP;
        out->reason = REASON_MAX_AGE;
        out->learned = false; /* only a sender's not_before gets here from a learned time */
        return;
    }
    out->action = ACTION_RETRY;
    out->attempt = n;
    out->retry_at = retry_at;
    if (out->learned && not_before_ms > sat_add(now_ms, delay))
        out->learned = false; /* the sender's time decided, not the learned one */
}

/* Writes the windows of the retries a first bounce with this code would
 * get (cumulative ms after the first bounce, jitter included, each retry
 * assumed to bounce again at once) and returns how many, at most max. The
 * list ends at the attempt limit, at max, or at the first retry that could
 * not fall within the max age; an upper bound past the max age is cut to it,
 * since a retry drawn later is given up instead. Returns 0 for a class that
 * does not retry this code, or an unknown class. */
int decide_forecast(const struct policy *p, int class_idx, int code, int64_t *lo, int64_t *hi, int max)
{
    const struct policy_class *cl = class_of(p, class_idx);
    int64_t cum_lo = 0, cum_hi = 0, max_age;
    int max_attempts, k = 0;

    if (!cl || class_action(cl, code) != ACTION_RETRY)
        return 0;
    max_attempts = effective_max_attempts(p, cl);
    max_age = effective_max_age(p, cl);
    for (int n = 1; n <= max_attempts && k < max; n++) {
        int64_t wlo, whi;
        step_window(cl, n, &wlo, &whi);
        cum_lo = sat_add(cum_lo, wlo);
        cum_hi = sat_add(cum_hi, whi);
        if (cum_lo > max_age)
            break;
        lo[k] = cum_lo;
        hi[k] = min64(cum_hi, max_age);
        k++;
    }
    return k;
}

/* The reason's name in events and replies (a static string). */
const char *reason_name(enum reason r)
{
    switch (r) {
    case REASON_NONE:
        return "none";
    case REASON_HARD_INVALID:
        return "hard_invalid";
    case REASON_PERMANENT:
        return "permanent";
    case REASON_MAX_ATTEMPTS:
        return "max_attempts";
    case REASON_MAX_AGE:
        return "max_age";
    case REASON_CHRONIC_SOFT:
        return "chronic_soft";
    case REASON_DISABLED:
        return "disabled";
    }
    return "unknown";
}
