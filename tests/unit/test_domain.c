/*
 * queue/domain.c: the sliding window of reply counts and the per-domain
 * pace. Time is an argument, so every case runs a made-up clock; the pace
 * is also checked against a plain model (no more than `burst` in any
 * instant, never two closer than one interval once the burst is spent, in
 * due order, nothing early) over random arrival patterns.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "queue/domain.h"

#define T0 1700000000000LL /* a plausible epoch ms */

static void test_window_counts_and_slides(void **state)
{
    struct domain_window w = {0};
    const int64_t win = 60000; /* buckets of 5 s */

    assert_int_equal(domain_window_count(&w, win, T0), 0);
    for (int i = 0; i < 10; i++)
        domain_window_add(&w, win, T0 + i * 1000, 1);
    assert_int_equal(domain_window_count(&w, win, T0 + 10000), 10);
    domain_window_add(&w, win, T0 + 30000, 5);
    assert_int_equal(domain_window_count(&w, win, T0 + 30000), 15);
    /* the first ten drop out once their buckets leave the window; the
     * window is precise to one bucket (5 s) at its trailing edge */
    assert_int_equal(domain_window_count(&w, win, T0 + 50000), 15);
    assert_int_equal(domain_window_count(&w, win, T0 + 75000), 5);
    assert_int_equal(domain_window_count(&w, win, T0 + 95000), 0);
}

static void test_window_idle_then_new(void **state)
{
    struct domain_window w = {0};
    const int64_t win = 1000;

    domain_window_add(&w, win, T0, 7);
    /* long silence: everything is forgotten, and a new count starts over */
    domain_window_add(&w, win, T0 + 3600000, 2);
    assert_int_equal(domain_window_count(&w, win, T0 + 3600000), 2);
    domain_window_clear(&w);
    assert_int_equal(domain_window_count(&w, win, T0 + 3600000), 0);
}

static void test_window_clock_back(void **state)
{
    struct domain_window w = {0};
    const int64_t win = 60000;

    domain_window_add(&w, win, T0 + 10000, 1);
    domain_window_add(&w, win, T0, 1); /* the clock went back: still counted */
    assert_int_equal(domain_window_count(&w, win, T0 + 10000), 2);
    assert_int_equal(domain_window_count(&w, win, T0), 2);
}

static void test_window_tiny(void **state)
{
    struct domain_window w = {0};

    /* a window shorter than the bucket count still works (1 ms buckets) */
    domain_window_add(&w, 5, T0, 1);
    domain_window_add(&w, 5, T0 + 1, 1);
    assert_int_equal(domain_window_count(&w, 5, T0 + 1), 2);
    assert_int_equal(domain_window_count(&w, 5, T0 + 20), 0);
}

static void test_window_saturates(void **state)
{
    struct domain_window w = {0};

    domain_window_add(&w, 1000, T0, UINT32_MAX - 1);
    domain_window_add(&w, 1000, T0, 5);
    assert_int_equal(domain_window_count(&w, 1000, T0), UINT32_MAX);
}

static void test_pace_burst_then_interval(void **state)
{
    struct domain_pace p = {0};
    const int64_t iv = 10000; /* 100 a second */

    /* a burst of 5 goes at once, the rest one interval apart */
    for (int i = 0; i < 5; i++)
        assert_int_equal(domain_pace_take(&p, T0, iv, 5), 0);
    assert_int_equal(domain_pace_take(&p, T0, iv, 5), T0 + 10);
    assert_int_equal(domain_pace_take(&p, T0, iv, 5), T0 + 20);
    assert_int_equal(domain_pace_take(&p, T0, iv, 5), T0 + 30);
    /* quiet for a while: the burst is back */
    for (int i = 0; i < 5; i++)
        assert_int_equal(domain_pace_take(&p, T0 + 10000, iv, 5), 0);
    assert_true(domain_pace_take(&p, T0 + 10000, iv, 5) > T0 + 10000);
}

static void test_pace_none(void **state)
{
    struct domain_pace p = {0};

    for (int i = 0; i < 1000; i++)
        assert_int_equal(domain_pace_take(&p, T0, 0, 1), 0);
    assert_int_equal(domain_pace_hold(&p, T0 + 500, 0), T0 + 500);
}

static void test_pace_sub_millisecond(void **state)
{
    struct domain_pace p = {0};
    int now_count = 0, later = 0;

    /* 4000 a second, burst 1: four places per millisecond, never early */
    for (int i = 0; i < 40; i++) {
        int64_t t = domain_pace_take(&p, T0, 250, 1);
        if (t == 0) {
            now_count++;
        } else {
            assert_true(t > T0);
            assert_true(t <= T0 + 10);
            later++;
        }
    }
    assert_int_equal(now_count, 1);
    assert_int_equal(later, 39);
}

static void test_pace_hold_is_strict(void **state)
{
    struct domain_pace p = {0};
    const int64_t iv = 100000; /* 10 a second */
    const int64_t until = T0 + 30000;

    /* held retries line up from the end of the hold, one interval apart */
    assert_int_equal(domain_pace_hold(&p, until, iv), until);
    assert_int_equal(domain_pace_hold(&p, until, iv), until + 100);
    assert_int_equal(domain_pace_hold(&p, until, iv), until + 200);
    /* after the hold, a retry due then queues behind them: no burst */
    assert_int_equal(domain_pace_take(&p, until, iv, 50), until + 300);
    assert_true(domain_pace_backlogged(&p, until));
    /* once the backlog is gone the burst allowance returns */
    assert_false(domain_pace_backlogged(&p, until + 10000));
    for (int i = 0; i < 50; i++)
        assert_int_equal(domain_pace_take(&p, until + 10000, iv, 50), 0);
}

static void test_pace_shift(void **state)
{
    struct domain_pace p = {0};
    const int64_t iv = 100000;
    const int64_t until = T0 + 30000;

    domain_pace_hold(&p, until, iv);
    domain_pace_hold(&p, until, iv);
    /* the hold ends 20 s early: the next place moves with it */
    domain_pace_shift(&p, 20000);
    assert_int_equal(domain_pace_take(&p, T0 + 10000, iv, 50), until - 20000 + 200);
}

/* The model check: random bursts of due retries, each rescheduled to its
 * place and taken again there (as the daemon does). */
static void test_pace_model(void **state)
{
    enum { N = 3000 };
    static int64_t go[N];
    const int64_t iv = 20000; /* 50 a second */
    const int burst = 8;
    struct domain_pace p = {0};
    unsigned seed = 12345;
    int64_t now = T0;
    int n = 0;

    while (n < N) {
        now += (int64_t)((seed = seed * 1103515245u + 12345u) >> 16) % 400;
        int k = 1 + (int)(((seed = seed * 1103515245u + 12345u) >> 16) % 40);
        for (int i = 0; i < k && n < N; i++) {
            int64_t t = domain_pace_take(&p, now, iv, burst);
            assert_true(t == 0 || t > now);
            go[n++] = t == 0 ? now : t;
        }
    }
    /* in due order, and in any window of one interval at most `burst` */
    for (int i = 1; i < N; i++)
        assert_true(go[i] >= go[i - 1]);
    for (int i = burst; i < N; i++)
        assert_true(go[i] - go[i - burst] >= (iv / 1000) * 1 - 1);
    /* and over any second, at most 50 + burst */
    for (int i = 0, j = 0; i < N; i++) {
        while (go[i] - go[j] >= 1000)
            j++;
        assert_true(i - j + 1 <= 50 + burst);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_counts_and_slides),
        cmocka_unit_test(test_window_idle_then_new),
        cmocka_unit_test(test_window_clock_back),
        cmocka_unit_test(test_window_tiny),
        cmocka_unit_test(test_window_saturates),
        cmocka_unit_test(test_pace_burst_then_interval),
        cmocka_unit_test(test_pace_none),
        cmocka_unit_test(test_pace_sub_millisecond),
        cmocka_unit_test(test_pace_hold_is_strict),
        cmocka_unit_test(test_pace_shift),
        cmocka_unit_test(test_pace_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
