/*
 * queue/learn.c and the learned half of queue/decide.c, against simple
 * reference models: the per-class statistics follow a plain model that
 * keeps every event; the text form round-trips and refuses anything that
 * is not the canonical form of a consistent state; a learned retry time
 * never leaves the class's bounds, the max age or the attempt limit
 * (random policies, states and messages); and a simulated greylisting
 * domain is learned and then served faster than the table does, without
 * the learned time drifting. The seed is fixed so a failure replays; set
 * REBOUND_TEST_SEED to try others.
 */
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
#include "queue/learn.h"
#include "queue/policy.h"

#include "random_model.h"

#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define T0 1700000000000LL

/* ---- the reference model of one domain ---- */

struct ref_slot {
    uint32_t key;
    uint64_t delivered, deferred, attempts, age_sum;
    int64_t last_ms;
    uint32_t ok_ms;
    uint64_t evidence;
    uint32_t defers[4096]; /* every deferral age, in order */
    size_t ndefers;
};

struct ref {
    struct ref_slot s[LEARN_SLOTS];
};

static struct ref_slot *ref_slot(struct ref *r, uint32_t key)
{
    int victim = 0;
    for (int i = 0; i < LEARN_SLOTS; i++)
        if (r->s[i].key == key)
            return &r->s[i];
    for (int i = 0; i < LEARN_SLOTS; i++) {
        if (r->s[i].key == 0) {
            victim = i;
            break;
        }
        if (r->s[i].last_ms < r->s[victim].last_ms)
            victim = i;
    }
    memset(&r->s[victim], 0, sizeof(r->s[victim]));
    r->s[victim].key = key;
    return &r->s[victim];
}

static uint32_t clamp_age(int64_t a) { return a < 0 ? 0 : a > (int64_t)LEARN_AGE_MAX ? LEARN_AGE_MAX : (uint32_t)a; }

static void ref_delivered(struct ref *r, uint32_t key, int attempts, int64_t age, int64_t now)
{
    struct ref_slot *s = ref_slot(r, key);
    uint32_t a = clamp_age(age);
    s->delivered++;
    s->attempts += attempts > 0 ? (uint64_t)attempts : 1;
    s->age_sum += a;
    if (a > 0) {
        if (s->ok_ms == 0 || a < s->ok_ms)
            s->ok_ms = a;
        s->evidence++;
    }
    s->last_ms = now;
}

static void ref_deferred(struct ref *r, uint32_t key, int64_t age, int64_t now)
{
    struct ref_slot *s = ref_slot(r, key);
    uint32_t a = clamp_age(age);
    s->deferred++;
    s->defers[s->ndefers++ % 4096] = a;
    if (s->ok_ms != 0 && a >= s->ok_ms) {
        s->ok_ms = 0;
        s->evidence = 0;
    }
    s->last_ms = now;
}

/* The largest of the last LEARN_RING deferral ages. */
static uint32_t ref_latest(const struct ref_slot *s)
{
    uint32_t m = 0;
    size_t from = s->ndefers > LEARN_RING ? s->ndefers - LEARN_RING : 0;
    for (size_t i = from; i < s->ndefers; i++)
        if (s->defers[i % 4096] > m)
            m = s->defers[i % 4096];
    return m;
}

static void same_as_ref(const struct learn_domain *d, const struct ref *r, int64_t now)
{
    for (int i = 0; i < LEARN_SLOTS; i++) {
        const struct ref_slot *s = &r->s[i];
        struct learn_view v;
        if (s->key == 0)
            continue;
        learn_view(d, s->key, &v);
        CHECK(v.known);
        CHECK_EQ(v.delivered, s->delivered);
        CHECK_EQ(v.deferred, s->deferred);
        CHECK_EQ(v.ok_ms, s->ok_ms);
        CHECK_EQ(v.evidence, s->evidence);
        CHECK_EQ(v.last_ms, s->last_ms);
        CHECK_EQ(v.latest_deferral_ms, ref_latest(s));
        if (s->delivered)
            CHECK_EQ(v.mean_age_ms, (int64_t)(s->age_sum / s->delivered));
        for (int ev = 1; ev <= 4; ev++) {
            int64_t got = -1;
            int tol = (int)rnd_below(120);
            bool have = learn_estimate(d, s->key, ev, tol, 0, now, &got);
            bool want = s->ok_ms != 0 && s->evidence >= (uint64_t)ev;
            CHECK_EQ(have, want);
            if (want) {
                uint64_t late = ref_latest(s), ok = s->ok_ms;
                int64_t expect;
                if (late >= ok)
                    expect = (int64_t)late;
                else if ((double)(ok - late) > (double)ok * tol / 100.0 + 0.999)
                    expect = (int64_t)(late + (ok - late) / 2);
                else
                    expect = (int64_t)ok;
                /* the model's tolerance in floating point may differ by the rounding of ok * tol / 100 */
                if ((ok - late) * 100 > ok * (uint64_t)tol && (ok - late) * 100 < ok * (uint64_t)tol + 100)
                    continue;
                CHECK_EQ(got, expect);
                CHECK(got <= (int64_t)(late > ok ? late : ok));
                CHECK(got >= (int64_t)(late < ok ? late : ok));
            }
        }
    }
    /* and nothing the model does not have */
    for (int i = 0; i < LEARN_SLOTS; i++) {
        bool found = false;
        if (d->slots[i].key == 0)
            continue;
        for (int k = 0; k < LEARN_SLOTS; k++)
            found |= r->s[k].key == d->slots[i].key;
        CHECK(found);
    }
}

static void test_size(void **state)
{
    (void)state;
    /* The bound the header promises: fixed, whatever the traffic. */
    assert_int_equal(LEARN_DOMAIN_BYTES, 256);
    char buf[LEARN_ENCODED_MAX];
    struct learn_domain d;
    learn_init(&d);
    /* the longest text: every field at its maximum */
    for (int i = 0; i < LEARN_SLOTS; i++) {
        struct learn_slot *s = &d.slots[i];
        s->key = 0xffffffffu - (uint32_t)i;
        s->delivered = s->deferred = s->attempts = UINT32_MAX;
        s->age_sum = UINT64_MAX;
        s->last_ms = INT64_MAX;
        s->ok_ms = LEARN_AGE_MAX;
        s->evidence = UINT16_MAX;
        s->nring = LEARN_RING;
        for (int k = 0; k < LEARN_RING; k++)
            s->ring[k] = LEARN_AGE_MAX;
    }
    size_t n = learn_encode(&d, buf, sizeof(buf));
    assert_true(n > 0 && n < LEARN_ENCODED_MAX);
    struct learn_domain e;
    assert_int_equal(learn_decode(&e, buf, n), 0);
    assert_memory_equal(&d, &e, sizeof(d));
    /* too small a buffer: 0 and an empty string */
    assert_int_equal(learn_encode(&d, buf, n), 0);
    assert_string_equal(buf, "");
    learn_init(&d);
    assert_int_equal(learn_encode(&d, buf, sizeof(buf)), 2);
    assert_string_equal(buf, "v1");
}

static void test_reference_model(void **state)
{
    (void)state;
    static struct ref r;
    struct learn_domain d;
    uint32_t keys[6];

    seed_from_env(0x1ea2);
    for (int i = 0; i < 6; i++)
        keys[i] = learn_class_key((const char *[]){"greylist", "rate_limit", "congestion", "timeout", "dns_temp",
                                                    "temp_other"}[i]);
    for (int round = 0; round < 20; round++) {
        memset(&r, 0, sizeof(r));
        learn_init(&d);
        int64_t now = T0;
        for (op = 0; op < 2000; op++) {
            uint32_t key = keys[rnd_below(rnd_below(4) == 0 ? 6 : 2)];
            int64_t age;
            switch (rnd_below(8)) {
            case 0: age = -(int64_t)rnd_below(1000); break;
            case 1: age = (int64_t)LEARN_AGE_MAX + (int64_t)rnd_below(10); break;
            case 2: age = 0; break;
            default: age = (int64_t)rnd_below(3 * HOUR); break;
            }
            now += (int64_t)rnd_below(10 * MIN);
            if (rnd_below(3) == 0) {
                int attempts = 1 + (int)rnd_below(5);
                learn_delivered(&d, key, attempts, age, now);
                ref_delivered(&r, key, attempts, age, now);
            } else {
                learn_deferred(&d, key, age, now);
                ref_deferred(&r, key, age, now);
            }
            same_as_ref(&d, &r, now);
        }
    }
}

static void test_contradiction_and_forgetting(void **state)
{
    (void)state;
    struct learn_domain d;
    uint32_t g = learn_class_key("greylist");
    int64_t a;

    learn_init(&d);
    assert_false(learn_estimate(&d, g, 1, 100, 0, T0, &a));
    assert_false(learn_estimate(NULL, g, 1, 100, 0, T0, &a));
    learn_deferred(&d, g, 4 * MIN, T0);
    learn_delivered(&d, g, 1, 6 * MIN, T0);
    learn_delivered(&d, g, 2, 5 * MIN, T0);
    assert_false(learn_estimate(&d, g, 3, 100, 0, T0, &a));
    learn_delivered(&d, g, 1, 9 * MIN, T0);
    assert_true(learn_estimate(&d, g, 3, 100, 0, T0, &a));
    assert_int_equal(a, 5 * MIN); /* the lowest accepted age, above every deferral */
    /* a deferral past it: the domain wants longer now, start again */
    learn_deferred(&d, g, 7 * MIN, T0 + 1);
    assert_false(learn_estimate(&d, g, 1, 100, 0, T0 + 1, &a));
    learn_delivered(&d, g, 2, 8 * MIN, T0 + 2);
    assert_true(learn_estimate(&d, g, 1, 100, 0, T0 + 2, &a));
    assert_int_equal(a, 8 * MIN);
    /* evidence untouched for longer than forget is not used */
    assert_true(learn_estimate(&d, g, 1, 100, HOUR, T0 + 2 + HOUR, &a));
    assert_false(learn_estimate(&d, g, 1, 100, HOUR, T0 + 3 + HOUR, &a));
    /* a deferral below it (a retry made too early) only raises the floor */
    learn_deferred(&d, g, 7 * MIN + 30 * SEC, T0 + 4);
    assert_true(learn_estimate(&d, g, 1, 100, 0, T0 + 4, &a));
    assert_int_equal(a, 8 * MIN);
    /* the fifth class takes the slot changed longest ago */
    learn_delivered(&d, learn_class_key("a"), 1, MIN, T0 + 10);
    learn_delivered(&d, learn_class_key("b"), 1, MIN, T0 + 11);
    learn_delivered(&d, learn_class_key("c"), 1, MIN, T0 + 12);
    learn_delivered(&d, learn_class_key("d"), 1, MIN, T0 + 13);
    struct learn_view v;
    learn_view(&d, g, &v);
    assert_false(v.known);
    learn_view(&d, learn_class_key("d"), &v);
    assert_true(v.known);
    assert_int_equal(v.delivered, 1);
    assert_true(learn_class_key("") != 0);
}

/* ---- the text form ---- */

static void random_state(struct learn_domain *d)
{
    learn_init(d);
    int64_t now = T0;
    int n = (int)rnd_below(60);
    for (int i = 0; i < n; i++) {
        uint32_t key = (uint32_t)rnd() | 1;
        if (rnd_below(4) != 0)
            key = learn_class_key((const char *[]){"greylist", "rate_limit", "x", "y", "z"}[rnd_below(5)]);
        int64_t age = rnd_below(5) == 0 ? (int64_t)rnd() : (int64_t)rnd_below(3 * HOUR);
        now += (int64_t)rnd_below(HOUR);
        if (rnd_below(2))
            learn_delivered(d, key, 1 + (int)rnd_below(8), age, now);
        else
            learn_deferred(d, key, age, now);
    }
}

static void test_round_trip(void **state)
{
    (void)state;
    char buf[LEARN_ENCODED_MAX], again[LEARN_ENCODED_MAX];
    struct learn_domain d, e;

    seed_from_env(0x7e47);
    for (op = 0; op < 20000; op++) {
        random_state(&d);
        size_t n = learn_encode(&d, buf, sizeof(buf));
        CHECK(n > 0 && n < sizeof(buf));
        CHECK_EQ(strlen(buf), n);
        CHECK_EQ(learn_decode(&e, buf, n), 0);
        /* the same meaning, and the same text again */
        for (int i = 0; i < LEARN_SLOTS; i++) {
            struct learn_view a, b;
            learn_view(&d, d.slots[i].key, &a);
            learn_view(&e, d.slots[i].key, &b);
            CHECK(memcmp(&a, &b, sizeof(a)) == 0);
            int64_t x = 0, y = 0;
            CHECK_EQ(learn_estimate(&d, d.slots[i].key, 1, 10, 0, T0, &x), learn_estimate(&e, d.slots[i].key, 1, 10, 0, T0, &y));
            CHECK_EQ(x, y);
        }
        CHECK_EQ(learn_encode(&e, again, sizeof(again)), n);
        CHECK(memcmp(buf, again, n) == 0);
        /* and the decoded state learns on exactly like the original */
        uint32_t k = d.slots[rnd_below(LEARN_SLOTS)].key;
        learn_deferred(&d, k ? k : 5, 3 * MIN, T0 + HOUR);
        learn_deferred(&e, k ? k : 5, 3 * MIN, T0 + HOUR);
        learn_encode(&d, buf, sizeof(buf));
        learn_encode(&e, again, sizeof(again));
        CHECK(strcmp(buf, again) == 0);
    }
}

static void expect_refused(const char *text, size_t len)
{
    struct learn_domain d;
    memset(&d, 0x5a, sizeof(d));
    if (learn_decode(&d, text, len) != -1)
        fail_msg("accepted \"%.*s\"", (int)len, text);
    /* refused input leaves an empty state, never a half-read one */
    struct learn_domain empty;
    learn_init(&empty);
    assert_memory_equal(&d, &empty, sizeof(d));
}

static void test_decode_garbage(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "v", "v2", "V1", "v1;", "v1 ", " v1", "v1;;",
        "v10000000a,1,0,1,5,1,5,1,-",                        /* no ';' */
        "v1;0000000a,1,0,1,5,1,5,1",                          /* no ring */
        "v1;0000000a,1,0,1,5,1,5,1,",                         /* empty ring */
        "v1;0000000A,1,0,1,5,1,5,1,-",                        /* upper-case hex */
        "v1;000000a,1,0,1,5,1,5,1,-",                         /* short key */
        "v1;00000000,1,0,1,5,1,5,1,-",                        /* key 0 */
        "v1;0000000a,01,0,1,5,1,5,1,-",                       /* leading zero */
        "v1;0000000a,1,0,1,5,1,5,2,-",                        /* evidence above delivered */
        "v1;0000000a,1,0,1,5,1,0,1,-",                        /* evidence without ok */
        "v1;0000000a,1,0,1,5,1,5,0,-",                        /* ok without evidence */
        "v1;0000000a,2,0,1,5,1,5,1,-",                        /* fewer attempts than deliveries */
        "v1;0000000a,0,1,0,0,1,0,0,1/2",                      /* more ring than deferrals */
        "v1;0000000a,0,7,0,0,1,0,0,1/2/3/4/5/6/7",            /* ring too long */
        "v1;0000000a,0,1,0,0,1,0,0,-5",                       /* a sign */
        "v1;0000000a,0,1,0,0,1,0,0,4294967295",               /* age past LEARN_AGE_MAX */
        "v1;0000000a,4294967296,0,1,5,1,5,1,-",               /* count past 32 bits */
        "v1;0000000a,1,0,1,18446744073709551616,1,5,1,-",     /* sum past 64 bits */
        "v1;0000000a,1,0,1,5,9223372036854775808,5,1,-",      /* time past int64 */
        "v1;0000000a,1,0,1,5,1,5,65536,-",                    /* evidence past 16 bits */
        "v1;0000000a,0,0,0,0,1,0,0,-;0000000a,0,0,0,0,1,0,0,-", /* the same class twice */
        "v1;0000000a,0,0,0,0,1,0,0,-;0000000b,0,0,0,0,1,0,0,-;0000000c,0,0,0,0,1,0,0,-;"
        "0000000d,0,0,0,0,1,0,0,-;0000000e,0,0,0,0,1,0,0,-", /* five slots */
        "v1;0000000a,0,0,0,0,1,0,0,-x",                       /* trailing bytes */
        "v1;0000000a,0,0,0,0,1,0,0,-;",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_refused(bad[i], strlen(bad[i]));
    expect_refused(NULL, 0);
    /* a NUL inside, and a length that stops short of the end */
    expect_refused("v1\0;0000000a,0,0,0,0,1,0,0,-", 29);
    expect_refused("v1;0000000a,0,0,0,0,1,0,0,-", 20);
    /* what is accepted */
    struct learn_domain d;
    assert_int_equal(learn_decode(&d, "v1", 2), 0);
    const char *good = "v1;0000000a,3,2,5,900000,1700000000000,250000,3,200000/260000";
    assert_int_equal(learn_decode(&d, good, strlen(good)), 0);
    int64_t a;
    assert_true(learn_estimate(&d, 10, 3, 100, 0, 1700000000000LL, &a));
    assert_int_equal(a, 260000);
    assert_true(learn_estimate(&d, 10, 3, 0, 0, 1700000000000LL, &a));
    assert_int_equal(a, 260000); /* the latest deferral is past the lowest acceptance */
    const char *gap = "v1;0000000a,3,2,5,900000,1700000000000,600000,3,200000/100000";
    assert_int_equal(learn_decode(&d, gap, strlen(gap)), 0);
    assert_true(learn_estimate(&d, 10, 3, 10, 0, 1700000000000LL, &a));
    assert_int_equal(a, 400000); /* halfway between 200000 and 600000 */
    assert_true(learn_estimate(&d, 10, 3, 70, 0, 1700000000000LL, &a));
    assert_int_equal(a, 600000); /* a gap within the tolerance: the lowest acceptance */

    /* Random bytes, and valid texts with a byte changed, cut or grown:
     * refused, or read as exactly what they say (the canonical form of a
     * consistent state, so encoding it again gives the same bytes). */
    char buf[LEARN_ENCODED_MAX + 8], again[LEARN_ENCODED_MAX];
    size_t accepted = 0;
    seed_from_env(0x6a7b);
    for (op = 0; op < 200000; op++) {
        size_t n;
        if (rnd_below(4) == 0) {
            n = rnd_below(sizeof(buf));
            for (size_t i = 0; i < n; i++)
                buf[i] = (char)rnd();
        } else {
            random_state(&d);
            n = learn_encode(&d, buf, LEARN_ENCODED_MAX);
            int edits = 1 + (int)rnd_below(3);
            for (int e = 0; e < edits; e++) {
                switch (rnd_below(4)) {
                case 0: if (n) buf[rnd_below(n)] = "0123456789abcdef,;/-vx\0 "[rnd_below(25)]; break;
                case 1: if (n) n = rnd_below(n); break;
                case 2: if (n + 1 < sizeof(buf)) buf[n++] = "0;,/9"[rnd_below(5)]; break;
                default: if (n) buf[rnd_below(n)] ^= (char)(1 << rnd_below(8)); break;
                }
            }
        }
        struct learn_domain e;
        if (learn_decode(&e, buf, n) == 0) {
            accepted++;
            CHECK_EQ(learn_encode(&e, again, sizeof(again)), n);
            CHECK(memcmp(again, buf, n) == 0);
        }
    }
    /* some edits keep the text valid (a digit for a digit): both paths ran */
    assert_true(accepted > 100);
}

/* ---- the decision ---- */

static struct policy *policy_new(void)
{
    struct policy *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->max_attempts = 8;
    p->max_age_ms = 72 * HOUR;
    return p;
}

static void class_bounds_ref(const struct policy_class *cl, int64_t *lo, int64_t *hi)
{
    *lo = INT64_MAX;
    *hi = 0;
    for (int k = 0; k < cl->nsteps; k++) {
        if (cl->steps[k].lo_ms < *lo)
            *lo = cl->steps[k].lo_ms;
        int64_t h = cl->steps[k].hi_ms > cl->steps[k].lo_ms ? cl->steps[k].hi_ms : cl->steps[k].lo_ms;
        if (h > *hi)
            *hi = h;
    }
}

/* Random classes, learn settings, learned states and messages: a learned
 * retry lies within the class's bounds from now, within the max age, after
 * not_before, within the attempt limit; without learning the decision is
 * exactly decide_bounce's. */
static void test_learned_within_bounds(void **state)
{
    (void)state;
    struct policy *p = policy_new();
    struct policy_class *cl = &p->classes[0];
    size_t learned = 0, fallback = 0;

    p->nclasses = 1;
    snprintf(cl->name, sizeof(cl->name), "greylist");
    seed_from_env(0xb0b);
    for (op = 0; op < 200000; op++) {
        memset(cl->steps, 0, sizeof(cl->steps));
        cl->nsteps = 1 + (int)rnd_below(4);
        for (int k = 0; k < cl->nsteps; k++) {
            int64_t lo = (int64_t)rnd_below(2 * HOUR);
            cl->steps[k].lo_ms = lo;
            cl->steps[k].hi_ms = rnd_below(2) ? lo : lo + (int64_t)rnd_below(2 * HOUR);
        }
        cl->action_4xx = cl->action_5xx = ACTION_RETRY;
        cl->jitter_pct = (int)rnd_below(3) * 10;
        cl->max_attempts = rnd_below(2) ? 0 : 1 + (int)rnd_below(8);
        cl->max_age_ms = rnd_below(2) ? 0 : (int64_t)(1 + rnd_below(10 * HOUR));
        cl->learn.enabled = rnd_below(8) != 0;
        cl->learn.min_evidence = 1 + (int)rnd_below(4);
        cl->learn.margin_pct = rnd_below(2) ? (int)rnd_below(101) : 0;
        cl->learn.margin_ms = cl->learn.margin_pct ? 0 : (int64_t)rnd_below(30 * MIN);
        cl->learn.jitter_pct = (int)rnd_below(101);
        cl->learn.forget_ms = rnd_below(2) ? 0 : (int64_t)rnd_below(10 * HOUR);

        struct learn_domain ld;
        learn_init(&ld);
        uint32_t key = rnd_below(10) ? learn_class_key(cl->name) : learn_class_key("other");
        int64_t now = T0 + (int64_t)rnd_below(10 * HOUR);
        int nev = (int)rnd_below(12);
        for (int i = 0; i < nev; i++) {
            int64_t age = rnd_below(10) ? (int64_t)rnd_below(4 * HOUR) : (int64_t)rnd();
            if (rnd_below(3))
                learn_delivered(&ld, key, 1 + (int)rnd_below(3), age, now - (int64_t)rnd_below(12 * HOUR));
            else
                learn_deferred(&ld, key, age, now - (int64_t)rnd_below(12 * HOUR));
        }
        struct prior pr = {(int)rnd_below(9), now - (int64_t)rnd_below(12 * HOUR)};
        struct classification c = {0};
        c.class_idx = 0;
        c.rule_idx = -1;
        c.code = rnd_below(2) ? 451 : 550;
        c.stated_wait_ms = rnd_below(10) ? 0 : (int64_t)rnd_below(HOUR);
        int64_t not_before = rnd_below(5) ? 0 : now + (int64_t)rnd_below(3 * HOUR);

        uint64_t r1 = rnd() | 1, r2 = r1;
        struct decision d, plain;
        decide_bounce_learned(p, &c, &pr, rnd_below(10) ? &ld : NULL, now, not_before, &r1, &d);
        decide_bounce(p, &c, &pr, now, not_before, &r2, &plain);

        int max_att = cl->max_attempts ? cl->max_attempts : p->max_attempts;
        int64_t max_age = cl->max_age_ms ? cl->max_age_ms : p->max_age_ms;
        int64_t first = pr.attempt ? pr.first_ms : now;
        if (!d.learned && not_before > 0 && d.retry_at == not_before)
            continue; /* the sender's time decided */
        if (!d.learned) {
            /* the table decided: the very same decision */
            CHECK_EQ(d.action, plain.action);
            CHECK_EQ(d.retry_at, plain.retry_at);
            CHECK_EQ(d.reason, plain.reason);
            CHECK_EQ(d.attempt, plain.attempt);
            if (not_before == 0)
                CHECK_EQ(r1, r2); /* a learned time later overruled by not_before has drawn its jitter */
            fallback++;
            continue;
        }
        learned++;
        int64_t blo, bhi;
        class_bounds_ref(cl, &blo, &bhi);
        CHECK(cl->learn.enabled);
        CHECK_EQ(c.stated_wait_ms, 0);
        CHECK_EQ(d.action, ACTION_RETRY);
        CHECK(d.attempt == pr.attempt + 1 && d.attempt <= max_att);
        CHECK(d.retry_at - now >= blo);
        CHECK(d.retry_at - now <= bhi);
        CHECK(d.retry_at <= first + max_age);
        CHECK(d.retry_at >= not_before);
        /* never earlier than the learned age plus the margin, nor later
         * than that plus the jitter, unless the class's bounds say so */
        int64_t margin = cl->learn.margin_pct ? d.learned_ms * cl->learn.margin_pct / 100 : cl->learn.margin_ms;
        int64_t base = d.learned_ms + margin;
        CHECK(d.retry_at >= first + base || d.retry_at - now == bhi);
        CHECK(d.retry_at <= first + base + base * cl->learn.jitter_pct / 100 + 1 || d.retry_at - now == blo);
    }
    /* both paths ran often */
    assert_true(learned > 5000);
    assert_true(fallback > 5000);
    policy_free(p);
}

/* A receiving world of one domain that greylists: it defers every
 * message's attempts until `delay` after the first, then accepts. The
 * same stream of messages is sent with the table's timing and with
 * learned timing; learned timing delivers sooner, with fewer wasted
 * retries, never before the class's 5 minutes, and its learned time stays
 * near the domain's delay instead of creeping up with its own margin. */
struct world_result {
    double mean_ttd_ms;
    size_t wasted, learned, delivered;
    int64_t min_delay;
    int64_t first_learned_ms, last_learned_ms;
    int64_t end_ok_ms, end_estimate_ms;
};

static struct world_result run_world(const struct policy *p, int64_t delay, bool learn, uint64_t rng_seed)
{
    struct world_result res = {0, 0, 0, 0, INT64_MAX, 0, 0, 0, 0};
    struct learn_domain ld;
    uint64_t rng = rng_seed;
    uint32_t key = learn_class_key("greylist");
    struct classification c = {0};
    int64_t total = 0, now_last = T0;

    learn_init(&ld);
    c.class_idx = 0;
    c.rule_idx = -1;
    c.code = 451;
    for (int m = 0; m < 300; m++) {
        int64_t first = T0 + m * 7 * MIN;
        struct prior pr = {0, 0};
        int64_t now = first;
        for (;;) {
            struct decision d;
            decide_bounce_learned(p, &c, &pr, learn ? &ld : NULL, now, 0, &rng, &d);
            if (d.action != ACTION_RETRY)
                break;
            if (d.retry_at - now < res.min_delay)
                res.min_delay = d.retry_at - now;
            res.learned += d.learned;
            if (d.learned) {
                if (res.first_learned_ms == 0)
                    res.first_learned_ms = d.learned_ms;
                res.last_learned_ms = d.learned_ms;
            }
            now = d.retry_at;
            now_last = now;
            if (now - first >= delay) {
                learn_delivered(&ld, key, d.attempt, now - first, now);
                total += now - first;
                res.delivered++;
                break;
            }
            learn_deferred(&ld, key, now - first, now);
            res.wasted++;
            pr.attempt = d.attempt;
            pr.first_ms = d.first_ms;
        }
    }
    res.mean_ttd_ms = res.delivered ? (double)total / (double)res.delivered : 0;
    struct learn_view v;
    learn_view(&ld, key, &v);
    res.end_ok_ms = v.ok_ms;
    learn_estimate(&ld, key, 1, 10, 0, now_last, &res.end_estimate_ms);
    return res;
}

static void test_greylisting_world(void **state)
{
    (void)state;
    struct policy *p = policy_new();
    struct policy_class *cl = &p->classes[0];

    p->nclasses = 1;
    snprintf(cl->name, sizeof(cl->name), "greylist");
    cl->action_4xx = cl->action_5xx = ACTION_RETRY;
    cl->steps[0] = (struct policy_step){5 * MIN, 30 * MIN};
    cl->steps[1] = (struct policy_step){30 * MIN, 60 * MIN};
    cl->steps[2] = (struct policy_step){1 * HOUR, 2 * HOUR};
    cl->nsteps = 3;
    cl->learn = (struct policy_learn){true, 3, 10, 0, 10, 7 * 24 * HOUR};

    static const int64_t delays[] = {1 * MIN, 5 * MIN, 7 * MIN, 12 * MIN, 25 * MIN, 30 * MIN, 45 * MIN};
    for (size_t i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
        struct world_result st = run_world(p, delays[i], false, 42);
        struct world_result le = run_world(p, delays[i], true, 42);
        print_message("greylist delay %3lld min: table %.1f min %zu wasted, learned %.1f min %zu wasted (%zu learned)\n",
                      (long long)(delays[i] / MIN), st.mean_ttd_ms / MIN, st.wasted, le.mean_ttd_ms / MIN, le.wasted,
                      le.learned);
        assert_int_equal(st.delivered, 300);
        assert_int_equal(le.delivered, 300);
        assert_true(le.min_delay >= 5 * MIN); /* never before the class's minimum */
        assert_true(le.learned > 250);
        assert_true(le.wasted <= st.wasted);
        assert_true(le.mean_ttd_ms <= st.mean_ttd_ms);
        /* What is learned is the lowest age the domain accepted (never
         * below its delay): served at it plus the margin and jitter, it
         * teaches nothing lower and nothing higher, so it does not drift. */
        /* It settles within the margin of the domain's delay (or of the
         * class's 5 minutes, the earliest it may retry), and stays. */
        int64_t floor = delays[i] > 5 * MIN ? delays[i] : 5 * MIN;
        assert_true(le.end_ok_ms >= delays[i]);
        assert_true(le.end_ok_ms <= floor + floor / 5);
        assert_true(le.end_estimate_ms <= le.end_ok_ms);
        /* The common greylisting delays (postgrey 5 min, spamd 25,
         * milter-greylist 30) are served in well under the table's time;
         * a longer one is still served sooner. */
        assert_true(le.mean_ttd_ms <= (delays[i] <= 30 * MIN ? 0.7 : 0.85) * st.mean_ttd_ms);
    }
    policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_reference_model),
        cmocka_unit_test(test_contradiction_and_forgetting),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_decode_garbage),
        cmocka_unit_test(test_learned_within_bounds),
        cmocka_unit_test(test_greylisting_world),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
