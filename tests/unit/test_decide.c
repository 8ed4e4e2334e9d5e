/*
 * queue/decide.c (and the small functions of queue/policy.c): hand-computed
 * cases for the default schedules of the spec, then properties over random
 * policies and inputs: the action follows the class and code; a retry falls
 * inside the window its step (or the stated wait, clamped) allows and never
 * before not_before; the message is given up exactly when its attempts or
 * its max age run out; whole schedules have monotone attempts and agree
 * with the forecast; the same rng state gives the same decision. Policies
 * are built by hand here: nothing depends on the classifier or the loader.
 * The seed is fixed so a failure replays; set REBOUND_TEST_SEED to try
 * others. Failures print the seed and the case.
 */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/decide.h"
#include "queue/policy.h"

#define MIN (60 * 1000LL)
#define HOUR (60 * MIN)
#define T0 1700000000000LL /* a Tuesday in November 2023, in epoch ms */

#include "random_model.h"

static struct policy *policy_new(void)
{
    struct policy *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->max_attempts = 8;
    p->max_age_ms = 72 * HOUR;
    return p;
}

static int add_class(struct policy *p, const char *name, enum action a4, enum action a5)
{
    struct policy_class *c = &p->classes[p->nclasses];
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->action_4xx = a4;
    c->action_5xx = a5;
    return p->nclasses++;
}

static void set_fixed(struct policy *p, int ci, int n, const int64_t *ms)
{
    struct policy_class *c = &p->classes[ci];
    for (int i = 0; i < n; i++)
        c->steps[i].lo_ms = c->steps[i].hi_ms = ms[i];
    c->nsteps = n;
}

static struct classification cls(int class_idx, int code, int64_t stated)
{
    struct classification c;
    memset(&c, 0, sizeof(c));
    c.class_idx = class_idx;
    c.rule_idx = -1;
    c.code = code;
    c.stated_wait_ms = stated;
    return c;
}

/* --- hand-computed cases ------------------------------------------------ */

static void test_rng_known_values(void **state)
{
    uint64_t s = 1;
    (void)state;
    /* xorshift64 (13, 7, 17) from 1: the published first outputs */
    assert_int_equal(rng_next(&s), 1082269761ULL);
    assert_int_equal(s, 1082269761ULL);
    assert_int_equal(rng_next(&s), 1152992998833853505ULL);
    /* a zero state is replaced, never kept */
    s = 0;
    uint64_t a = rng_next(&s);
    assert_true(a != 0);
    assert_true(s != 0);
    uint64_t s2 = 0;
    assert_int_equal(rng_next(&s2), a);
}

/* server_unavailable: 1 h, 4 h, 24 h, then 24 h again; max age 72 h. Each
 * retry bounces at once: retries at +1 h, +5 h, +29 h, +53 h, and the next
 * (+77 h) is past the max age. */
static void test_fixed_schedule_max_age(void **state)
{
    struct policy *p = policy_new();
    const int64_t steps[] = {1 * HOUR, 4 * HOUR, 24 * HOUR};
    int ci = add_class(p, "server_unavailable", ACTION_RETRY, ACTION_GIVE_UP);
    const int64_t want[] = {1 * HOUR, 5 * HOUR, 29 * HOUR, 53 * HOUR};
    struct classification c = cls(ci, 421, 0);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 42;
    int64_t now = T0;

    (void)state;
    set_fixed(p, ci, 3, steps);
    for (int i = 0; i < 4; i++) {
        decide_bounce(p, &c, &pr, now, 0, &rng, &d);
        assert_int_equal(d.action, ACTION_RETRY);
        assert_int_equal(d.attempt, i + 1);
        assert_int_equal(d.retry_at, T0 + want[i]);
        assert_int_equal(d.first_ms, T0);
        assert_int_equal(d.reason, REASON_NONE);
        assert_int_equal(d.class_idx, ci);
        assert_false(d.alert);
        pr.attempt = d.attempt;
        pr.first_ms = d.first_ms;
        now = d.retry_at;
    }
    decide_bounce(p, &c, &pr, now, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_GIVE_UP);
    assert_int_equal(d.reason, REASON_MAX_AGE);
    assert_int_equal(d.attempt, 4);
    assert_int_equal(d.first_ms, T0);
    assert_int_equal(d.retry_at, 0);

    /* a fixed step with no jitter does not touch the rng */
    uint64_t before = rng;
    pr.attempt = 0;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(rng, before);
    policy_free(p);
}

/* mailbox_full: 12 h, 24 h, 36 h with max_attempts 3. The third retry lands
 * exactly on the 72 h max age, which is still allowed; the fourth bounce is
 * out of attempts. */
static void test_mailbox_full_max_attempts(void **state)
{
    struct policy *p = policy_new();
    const int64_t steps[] = {12 * HOUR, 24 * HOUR, 36 * HOUR};
    int ci = add_class(p, "mailbox_full", ACTION_RETRY, ACTION_RETRY);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 7;
    int64_t now = T0;

    (void)state;
    set_fixed(p, ci, 3, steps);
    p->classes[ci].max_attempts = 3;
    struct classification c = cls(ci, 552, 0); /* 5.2.2 over quota, a permanent code */
    for (int i = 0; i < 3; i++) {
        decide_bounce(p, &c, &pr, now, 0, &rng, &d);
        assert_int_equal(d.action, ACTION_RETRY);
        assert_int_equal(d.attempt, i + 1);
        pr.attempt = d.attempt;
        pr.first_ms = d.first_ms;
        now = d.retry_at;
    }
    assert_int_equal(now, T0 + 72 * HOUR);
    decide_bounce(p, &c, &pr, now, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_GIVE_UP);
    assert_int_equal(d.reason, REASON_MAX_ATTEMPTS);
    assert_int_equal(d.attempt, 3);
    assert_int_equal(d.retry_at, 0);

    int64_t lo[8], hi[8];
    assert_int_equal(decide_forecast(p, ci, 452, lo, hi, 8), 3);
    assert_int_equal(lo[0], 12 * HOUR);
    assert_int_equal(hi[0], 12 * HOUR);
    assert_int_equal(lo[1], 36 * HOUR);
    assert_int_equal(lo[2], 72 * HOUR);
    assert_int_equal(hi[2], 72 * HOUR);
    assert_int_equal(decide_forecast(p, ci, 452, lo, hi, 2), 2);
    policy_free(p);
}

/* rate_limit: 30 m, 1 h, 2 h, 4 h with +/-20 % jitter. */
static void test_jitter_pct(void **state)
{
    struct policy *p = policy_new();
    const int64_t steps[] = {30 * MIN, 1 * HOUR, 2 * HOUR, 4 * HOUR};
    int ci = add_class(p, "rate_limit", ACTION_RETRY, ACTION_RETRY);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 12345;
    bool low_half = false, high_half = false;

    (void)state;
    set_fixed(p, ci, 4, steps);
    p->classes[ci].jitter_pct = 20;
    struct classification c = cls(ci, 450, 0);
    for (int i = 0; i < 2000; i++) {
        decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
        assert_int_equal(d.action, ACTION_RETRY);
        assert_in_range(d.retry_at, T0 + 24 * MIN, T0 + 36 * MIN);
        low_half |= d.retry_at < T0 + 27 * MIN;
        high_half |= d.retry_at > T0 + 33 * MIN;
    }
    /* the draws spread over the window rather than sitting at one end */
    assert_true(low_half && high_half);

    /* forecast: the windows widen by the jitter; 4 h repeats after the 4th */
    int64_t lo[16], hi[16];
    int n = decide_forecast(p, ci, 421, lo, hi, 16);
    assert_int_equal(n, 8);
    assert_int_equal(lo[0], 24 * MIN);
    assert_int_equal(hi[0], 36 * MIN);
    assert_int_equal(lo[1], 72 * MIN);
    assert_int_equal(hi[1], 108 * MIN);
    assert_int_equal(lo[3], 360 * MIN);
    assert_int_equal(hi[3], 540 * MIN);
    assert_int_equal(lo[7], 1128 * MIN);
    assert_int_equal(hi[7], 1692 * MIN);
    policy_free(p);
}

/* greylist: uniform ranges; a jitter range on a fixed step; not_before. */
static void test_ranges_jitter_range_not_before(void **state)
{
    struct policy *p = policy_new();
    int g = add_class(p, "greylist", ACTION_RETRY, ACTION_RETRY);
    int f = add_class(p, "fixed_plus", ACTION_RETRY, ACTION_RETRY);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 99;

    (void)state;
    p->classes[g].steps[0] = (struct policy_step){5 * MIN, 30 * MIN};
    p->classes[g].steps[1] = (struct policy_step){30 * MIN, 60 * MIN};
    p->classes[g].steps[2] = (struct policy_step){1 * HOUR, 2 * HOUR};
    p->classes[g].nsteps = 3;
    p->classes[f].steps[0] = (struct policy_step){1 * HOUR, 1 * HOUR};
    p->classes[f].nsteps = 1;
    p->classes[f].jitter_lo_ms = -30 * 1000;
    p->classes[f].jitter_hi_ms = 60 * 1000;

    struct classification cg = cls(g, 451, 0);
    struct classification cf = cls(f, 451, 0);
    for (int i = 0; i < 500; i++) {
        decide_bounce(p, &cg, &pr, T0, 0, &rng, &d);
        assert_in_range(d.retry_at, T0 + 5 * MIN, T0 + 30 * MIN);
        decide_bounce(p, &cf, &pr, T0, 0, &rng, &d);
        assert_in_range(d.retry_at, T0 + HOUR - 30 * 1000, T0 + HOUR + 60 * 1000);
    }
    /* the second retry uses the second step, from now */
    pr.attempt = 1;
    pr.first_ms = T0 - HOUR;
    decide_bounce(p, &cg, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.attempt, 2);
    assert_in_range(d.retry_at, T0 + 30 * MIN, T0 + 60 * MIN);
    assert_int_equal(d.first_ms, T0 - HOUR);

    /* the sender's not_before wins when later, and is ignored when earlier */
    pr.attempt = 0;
    decide_bounce(p, &cg, &pr, T0, T0 + 3 * HOUR, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY);
    assert_int_equal(d.retry_at, T0 + 3 * HOUR);
    decide_bounce(p, &cg, &pr, T0, T0 + 1000, &rng, &d);
    assert_in_range(d.retry_at, T0 + 5 * MIN, T0 + 30 * MIN);
    /* but never past the max age: then the message is given up */
    decide_bounce(p, &cg, &pr, T0, T0 + 73 * HOUR, &rng, &d);
    assert_int_equal(d.action, ACTION_GIVE_UP);
    assert_int_equal(d.reason, REASON_MAX_AGE);
    assert_int_equal(d.attempt, 0);
    assert_int_equal(d.first_ms, T0);
    policy_free(p);
}

/* A server that names a wait is honoured within the class's range: here
 * [5 min, 2 h] for the greylist steps. */
static void test_stated_wait_clamped(void **state)
{
    struct policy *p = policy_new();
    int g = add_class(p, "greylist", ACTION_RETRY, ACTION_RETRY);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 5;

    (void)state;
    p->classes[g].steps[0] = (struct policy_step){5 * MIN, 30 * MIN};
    p->classes[g].steps[1] = (struct policy_step){30 * MIN, 60 * MIN};
    p->classes[g].steps[2] = (struct policy_step){1 * HOUR, 2 * HOUR};
    p->classes[g].nsteps = 3;

    struct classification c = cls(g, 450, 10 * MIN);
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.retry_at, T0 + 10 * MIN);
    c.stated_wait_ms = 60 * 1000;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.retry_at, T0 + 5 * MIN);
    c.stated_wait_ms = 5 * HOUR;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.retry_at, T0 + 2 * HOUR);
    /* the same on a later attempt: the stated wait replaces the step */
    pr.attempt = 2;
    pr.first_ms = T0 - HOUR;
    c.stated_wait_ms = 7 * MIN;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.attempt, 3);
    assert_int_equal(d.retry_at, T0 + 7 * MIN);
    policy_free(p);
}

/* auth_failure: 4xx retries, 5xx gives up, both alert. hard_invalid
 * suppresses. A code that is not 4xx takes the 5xx column. */
static void test_actions_and_alerts(void **state)
{
    struct policy *p = policy_new();
    const int64_t steps[] = {1 * HOUR, 4 * HOUR};
    int a = add_class(p, "auth_failure", ACTION_RETRY, ACTION_GIVE_UP);
    int h = add_class(p, "hard_invalid", ACTION_SUPPRESS, ACTION_SUPPRESS);
    int t = add_class(p, "temp_other", ACTION_RETRY, ACTION_GIVE_UP);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 1;

    (void)state;
    set_fixed(p, a, 2, steps);
    set_fixed(p, t, 2, steps);
    p->classes[a].alert_4xx = p->classes[a].alert_5xx = true;

    struct classification c = cls(a, 451, 0);
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY);
    assert_true(d.alert);
    assert_int_equal(d.retry_at, T0 + HOUR);

    c = cls(a, 550, 0);
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_GIVE_UP);
    assert_int_equal(d.reason, REASON_PERMANENT);
    assert_true(d.alert);
    assert_int_equal(d.retry_at, 0);
    assert_int_equal(d.first_ms, T0);
    assert_int_equal(d.attempt, 0);

    /* a permanent failure after retries keeps the count and first bounce */
    pr.attempt = 2;
    pr.first_ms = T0 - 5 * HOUR;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_GIVE_UP);
    assert_int_equal(d.attempt, 2);
    assert_int_equal(d.first_ms, T0 - 5 * HOUR);

    pr.attempt = 0;
    c = cls(h, 550, 0);
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_SUPPRESS);
    assert_int_equal(d.reason, REASON_HARD_INVALID);
    assert_false(d.alert);

    /* the deciding rule names why: an account that exists but is disabled */
    struct policy_rule rules[2];
    memset(rules, 0, sizeof(rules));
    rules[0].class_idx = h;
    rules[1].class_idx = h;
    rules[1].reason = RULE_REASON_DISABLED;
    p->rules = rules;
    p->nrules = 2;
    for (int k = 0; k < 2; k++) {
        c = cls(h, 550, 0);
        c.rule_idx = k;
        decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
        assert_int_equal(d.action, ACTION_SUPPRESS);
        assert_int_equal(d.reason, k ? REASON_DISABLED : REASON_HARD_INVALID);
    }
    c.rule_idx = 7; /* out of range: the plain reason */
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.reason, REASON_HARD_INVALID);
    p->rules = NULL;
    p->nrules = 0;

    /* 0 (unknown), 399, 500 and 600 are not 4xx: the 5xx column */
    const int not4xx[] = {0, 399, 500, 600};
    for (size_t i = 0; i < sizeof(not4xx) / sizeof(not4xx[0]); i++) {
        c = cls(t, not4xx[i], 0);
        decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
        assert_int_equal(d.action, ACTION_GIVE_UP);
    }
    c = cls(t, 400, 0);
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY);
    c = cls(t, 499, 0);
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY);

    int64_t lo[4], hi[4];
    assert_int_equal(decide_forecast(p, a, 550, lo, hi, 4), 0);
    assert_int_equal(decide_forecast(p, h, 450, lo, hi, 4), 0);
    assert_int_equal(decide_forecast(p, a, 421, lo, hi, 4), 4);
    assert_int_equal(decide_forecast(p, 99, 421, lo, hi, 4), 0);
    policy_free(p);
}

/* The policy's limits apply when the class sets none; the class's win. */
static void test_limits_fallback(void **state)
{
    struct policy *p = policy_new();
    const int64_t one_min[] = {1 * MIN};
    int ci = add_class(p, "x", ACTION_RETRY, ACTION_RETRY);
    struct prior pr = {0, 0};
    struct decision d;
    uint64_t rng = 3;

    (void)state;
    set_fixed(p, ci, 1, one_min);
    p->max_attempts = 2;
    struct classification c = cls(ci, 450, 0);
    pr.attempt = 2;
    pr.first_ms = T0;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.reason, REASON_MAX_ATTEMPTS);
    p->classes[ci].max_attempts = 5;
    decide_bounce(p, &c, &pr, T0, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY);
    assert_int_equal(d.attempt, 3);

    p->max_age_ms = 10 * MIN;
    decide_bounce(p, &c, &pr, T0 + 9 * MIN, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY); /* at exactly first + max age */
    decide_bounce(p, &c, &pr, T0 + 9 * MIN + 1, 0, &rng, &d);
    assert_int_equal(d.reason, REASON_MAX_AGE);
    p->classes[ci].max_age_ms = 20 * MIN;
    decide_bounce(p, &c, &pr, T0 + 9 * MIN + 1, 0, &rng, &d);
    assert_int_equal(d.action, ACTION_RETRY);
    policy_free(p);
}

static void test_names_and_policy(void **state)
{
    struct policy *p = policy_new();
    regex_t *re;

    (void)state;
    assert_string_equal(reason_name(REASON_NONE), "none");
    assert_string_equal(reason_name(REASON_HARD_INVALID), "hard_invalid");
    assert_string_equal(reason_name(REASON_PERMANENT), "permanent");
    assert_string_equal(reason_name(REASON_MAX_ATTEMPTS), "max_attempts");
    assert_string_equal(reason_name(REASON_MAX_AGE), "max_age");
    assert_string_equal(reason_name(REASON_CHRONIC_SOFT), "chronic_soft");
    assert_string_equal(reason_name(REASON_DISABLED), "disabled");
    assert_string_equal(action_name(ACTION_RETRY), "retry");
    assert_string_equal(action_name(ACTION_GIVE_UP), "give_up");
    assert_string_equal(action_name(ACTION_SUPPRESS), "suppress");

    add_class(p, "greylist", ACTION_RETRY, ACTION_RETRY);
    add_class(p, "rate_limit", ACTION_RETRY, ACTION_RETRY);
    add_class(p, "a_class_name_of_exactly_31_char", ACTION_RETRY, ACTION_RETRY);
    assert_int_equal(policy_class_find(p, "greylist"), 0);
    assert_int_equal(policy_class_find(p, "rate_limit"), 1);
    assert_int_equal(policy_class_find(p, "a_class_name_of_exactly_31_char"), 2);
    assert_int_equal(policy_class_find(p, "a_class_name_of_exactly_31_charX"), -1);
    assert_int_equal(policy_class_find(p, "rate"), -1);
    assert_int_equal(policy_class_find(p, "Greylist"), -1);
    assert_int_equal(policy_class_find(p, NULL), -1);

    /* policy_free releases rules, texts and compiled regexes (the
     * sanitizer build checks that nothing leaks) */
    p->nrules = 2;
    p->rules = calloc(2, sizeof(*p->rules));
    assert_non_null(p->rules);
    p->rules[0].name = strdup("gmail-greylist");
    p->rules[0].ntexts = 2;
    p->rules[0].texts = calloc(2, sizeof(*p->rules[0].texts));
    p->rules[0].texts[0].pattern = strdup("greylisted");
    p->rules[0].texts[1].pattern = strdup("try again in [0-9]+ min");
    p->rules[0].texts[1].is_regex = true;
    re = malloc(sizeof(*re));
    assert_int_equal(regcomp(re, "try again in [0-9]+ min", REG_ICASE | REG_EXTENDED | REG_NOSUB), 0);
    p->rules[0].texts[1].regex = re;
    p->rules[1].name = strdup("by-code");
    policy_free(p);
    policy_free(NULL);
}

/* --- properties over random policies -------------------------------------- */

static enum action rnd_action(void)
{
    unsigned k = (unsigned)rnd_below(10);
    return k < 7 ? ACTION_RETRY : k < 9 ? ACTION_GIVE_UP : ACTION_SUPPRESS;
}

static int64_t rnd_ms(int64_t max) { return (int64_t)rnd_below((uint64_t)max + 1); }

static void rnd_class(struct policy_class *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "c%u", (unsigned)rnd_below(1000));
    c->action_4xx = rnd_action();
    c->action_5xx = rnd_action();
    c->alert_4xx = rnd() & 1;
    c->alert_5xx = rnd() & 1;
    c->nsteps = 1 + (int)rnd_below(POLICY_MAX_STEPS);
    for (int i = 0; i < c->nsteps; i++) {
        int64_t lo = rnd_ms(26 * HOUR);
        if (rnd() & 1)
            c->steps[i] = (struct policy_step){lo, lo + rnd_ms(4 * HOUR)};
        else
            c->steps[i] = (struct policy_step){lo, lo};
    }
    switch (rnd_below(3)) {
    case 0:
        c->jitter_pct = 1 + (int)rnd_below(100);
        break;
    case 1:
        c->jitter_lo_ms = -rnd_ms(10 * MIN);
        c->jitter_hi_ms = rnd_ms(10 * MIN);
        break;
    default:
        break;
    }
    c->max_attempts = (rnd() & 1) ? 0 : 1 + (int)rnd_below(10);
    c->max_age_ms = (rnd() & 1) ? 0 : 1 + rnd_ms(100 * HOUR);
}

static struct policy *rnd_policy(void)
{
    struct policy *p = policy_new();
    p->nclasses = 1 + (int)rnd_below(8);
    for (int i = 0; i < p->nclasses; i++)
        rnd_class(&p->classes[i]);
    p->max_attempts = 1 + (int)rnd_below(10);
    p->max_age_ms = 1 + rnd_ms(100 * HOUR);
    return p;
}

/* The reference: the window a delay for retry n may fall in, written from
 * the policy's documented meaning, independently of decide.c. */
static void ref_window(const struct policy_class *c, int n, int64_t *lo, int64_t *hi)
{
    const struct policy_step *s = &c->steps[(n - 1 < c->nsteps - 1) ? n - 1 : c->nsteps - 1];
    if (s->lo_ms < s->hi_ms) {
        *lo = s->lo_ms;
        *hi = s->hi_ms;
    } else if (c->jitter_pct > 0) {
        *lo = s->lo_ms * (100 - c->jitter_pct) / 100;
        *hi = s->lo_ms * (100 + c->jitter_pct) / 100;
    } else if (c->jitter_hi_ms > c->jitter_lo_ms) {
        *lo = s->lo_ms + c->jitter_lo_ms;
        *hi = s->lo_ms + c->jitter_hi_ms;
    } else {
        *lo = *hi = s->lo_ms;
    }
    if (*lo < 0)
        *lo = 0;
    if (*hi < 0)
        *hi = 0;
}

static void ref_bounds(const struct policy_class *c, int64_t *lo, int64_t *hi)
{
    *lo = INT64_MAX;
    *hi = 0;
    for (int i = 0; i < c->nsteps; i++) {
        if (c->steps[i].lo_ms < *lo)
            *lo = c->steps[i].lo_ms;
        if (c->steps[i].hi_ms > *hi)
            *hi = c->steps[i].hi_ms;
    }
}

static void test_random_decisions(void **state)
{
    (void)state;
    struct policy *p = NULL;

    seed_from_env(31337);
    for (op = 0; op < 200000; op++) {
        if (op % 50 == 0) {
            policy_free(p);
            p = rnd_policy();
        }

        int ci = (int)rnd_below((uint64_t)p->nclasses);
        const struct policy_class *pc = &p->classes[ci];
        int code = (rnd() & 1) ? 400 + (int)rnd_below(100) : 500 + (int)rnd_below(100);
        if (rnd_below(20) == 0)
            code = (int)rnd_below(700);
        int64_t stated = rnd_below(5) == 0 ? 1 + rnd_ms(30 * HOUR) : 0;
        struct classification c = cls(ci, code, stated);
        struct prior pr = {(int)rnd_below(12), 0};
        int64_t now = T0 + rnd_ms(24 * HOUR);
        pr.first_ms = now - rnd_ms(120 * HOUR);
        int64_t nb = 0;
        if (rnd_below(4) == 0)
            nb = now + rnd_ms(100 * HOUR) - 10 * HOUR;
        uint64_t rng = rnd() | 1, rng2 = rng;
        struct decision d, d2;

        decide_bounce(p, &c, &pr, now, nb, &rng, &d);
        decide_bounce(p, &c, &pr, now, nb, &rng2, &d2);
        /* the same inputs and rng state: the same decision and state */
        CHECK_EQ(d.action, d2.action);
        CHECK_EQ(d.retry_at, d2.retry_at);
        CHECK_EQ(d.attempt, d2.attempt);
        CHECK_EQ(d.reason, d2.reason);
        CHECK_EQ(rng, rng2);

        bool is4 = code >= 400 && code <= 499;
        enum action act = is4 ? pc->action_4xx : pc->action_5xx;
        int64_t first = pr.attempt ? pr.first_ms : now;
        CHECK_EQ(d.class_idx, ci);
        CHECK_EQ(d.alert, is4 ? pc->alert_4xx : pc->alert_5xx);
        CHECK_EQ(d.first_ms, first);

        if (act != ACTION_RETRY) {
            CHECK_EQ(d.action, act);
            CHECK_EQ(d.reason, act == ACTION_SUPPRESS ? REASON_HARD_INVALID : REASON_PERMANENT);
            CHECK_EQ(d.attempt, pr.attempt);
            CHECK_EQ(d.retry_at, 0);
            continue;
        }
        int max_attempts = pc->max_attempts ? pc->max_attempts : p->max_attempts;
        int64_t max_age = pc->max_age_ms ? pc->max_age_ms : p->max_age_ms;
        int n = pr.attempt + 1;
        if (n > max_attempts) {
            CHECK_EQ(d.action, ACTION_GIVE_UP);
            CHECK_EQ(d.reason, REASON_MAX_ATTEMPTS);
            CHECK_EQ(d.attempt, pr.attempt);
            CHECK_EQ(d.retry_at, 0);
            continue;
        }
        int64_t wlo, whi;
        if (stated) {
            ref_bounds(pc, &wlo, &whi);
            int64_t w = stated < wlo ? wlo : stated > whi ? whi : stated;
            wlo = whi = w;
        } else {
            ref_window(pc, n, &wlo, &whi);
        }
        int64_t earliest = now + wlo, latest = now + whi;
        if (nb > earliest)
            earliest = nb;
        if (nb > latest)
            latest = nb;
        if (d.action == ACTION_RETRY) {
            CHECK_EQ(d.reason, REASON_NONE);
            CHECK_EQ(d.attempt, n);
            CHECK(d.retry_at >= earliest && d.retry_at <= latest);
            CHECK(d.retry_at >= nb);
            CHECK(d.retry_at >= now);
            CHECK(d.retry_at <= first + max_age);
        } else {
            CHECK_EQ(d.action, ACTION_GIVE_UP);
            CHECK_EQ(d.reason, REASON_MAX_AGE);
            CHECK_EQ(d.attempt, pr.attempt);
            CHECK_EQ(d.retry_at, 0);
            /* only when the window reaches past the max age */
            CHECK(latest > first + max_age);
        }
        /* a window entirely inside or entirely past the max age decides it */
        if (latest <= first + max_age)
            CHECK_EQ(d.action, ACTION_RETRY);
        if (earliest > first + max_age)
            CHECK_EQ(d.action, ACTION_GIVE_UP);
    }
    policy_free(p);
}

/* Whole schedules: a message that bounces again the moment each retry
 * fires. Attempts go 1, 2, 3, ... with retry times inside the forecast's
 * windows, and the end is a give up for exactly the limit that ran out. */
static void test_random_schedules(void **state)
{
    (void)state;
    seed_from_env(2718);
    for (op = 0; op < 20000; op++) {
        struct policy *p = rnd_policy();
        int ci = (int)rnd_below((uint64_t)p->nclasses);
        const struct policy_class *pc = &p->classes[ci];
        int code = (rnd() & 1) ? 451 : 554;
        struct classification c = cls(ci, code, 0);
        struct prior pr = {0, 0};
        struct decision d;
        uint64_t rng = rnd();
        int64_t now = T0, lo[64], hi[64];
        int max_attempts = pc->max_attempts ? pc->max_attempts : p->max_attempts;
        int64_t max_age = pc->max_age_ms ? pc->max_age_ms : p->max_age_ms;
        int nf = decide_forecast(p, ci, code, lo, hi, 64);
        enum action act = (code == 451) ? pc->action_4xx : pc->action_5xx;

        if (act != ACTION_RETRY)
            CHECK_EQ(nf, 0);
        CHECK(nf <= max_attempts);
        for (int k = 0; k < nf; k++) {
            CHECK(lo[k] <= hi[k]);
            CHECK(lo[k] <= max_age);
            CHECK(hi[k] <= max_age);
            if (k > 0)
                CHECK(lo[k] >= lo[k - 1] && hi[k] >= hi[k - 1]);
        }
        for (int k = 1;; k++) {
            decide_bounce(p, &c, &pr, now, 0, &rng, &d);
            if (d.action != ACTION_RETRY)
                break;
            CHECK_EQ(d.attempt, k);
            CHECK(k <= nf);
            CHECK(d.retry_at - T0 >= lo[k - 1] && d.retry_at - T0 <= hi[k - 1]);
            CHECK(d.retry_at >= now);
            pr.attempt = d.attempt;
            pr.first_ms = d.first_ms;
            now = d.retry_at;
            CHECK(k <= max_attempts);
        }
        if (act != ACTION_RETRY) {
            CHECK_EQ(d.action, act);
            CHECK_EQ(pr.attempt, 0);
        } else if (pr.attempt == max_attempts) {
            CHECK_EQ(d.reason, REASON_MAX_ATTEMPTS);
        } else {
            CHECK_EQ(d.reason, REASON_MAX_AGE);
            CHECK(pr.attempt < max_attempts);
        }
        CHECK_EQ(d.attempt, pr.attempt);
        /* the forecast lists no retry that could not happen at all */
        CHECK(nf >= pr.attempt);
        policy_free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng_known_values),
        cmocka_unit_test(test_fixed_schedule_max_age),
        cmocka_unit_test(test_mailbox_full_max_attempts),
        cmocka_unit_test(test_jitter_pct),
        cmocka_unit_test(test_ranges_jitter_range_not_before),
        cmocka_unit_test(test_stated_wait_clamped),
        cmocka_unit_test(test_actions_and_alerts),
        cmocka_unit_test(test_limits_fallback),
        cmocka_unit_test(test_names_and_policy),
        cmocka_unit_test(test_random_decisions),
        cmocka_unit_test(test_random_schedules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
