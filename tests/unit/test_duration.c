/*
 * config/duration.c: a table of inputs that must parse to a given number
 * of milliseconds, a table that must be refused, formatting, and a round
 * trip of format then parse over random values of every magnitude. The
 * seed is fixed so a failure replays; REBOUND_TEST_SEED tries others.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/duration.h"

#define S 1000LL
#define M (60 * S)
#define H (60 * M)
#define D (24 * H)

struct good {
    const char *text;
    int64_t ms;
};

static const struct good good[] = {
    {"0", 0},
    {"0s", 0},
    {"0ms", 0},
    {"250ms", 250},
    {"5s", 5 * S},
    {"5m", 5 * M},
    {"4h", 4 * H},
    {"3d", 3 * D},
    {"72h", 3 * D},
    {"90m", 90 * M},
    {"1h30m", 90 * M},
    {"1.5h", 90 * M},
    {"0.5h", 30 * M},
    {"1.25s", 1250},
    {"0.001s", 1},
    {"0.5ms", 1},      /* halves round away from zero */
    {"0.4ms", 0},
    {"1.0005s", 1001}, /* 1000.5 ms */
    {"1.0004s", 1000},
    {"2d3h4m5s6ms", 2 * D + 3 * H + 4 * M + 5 * S + 6},
    {"1d1ms", D + 1},
    {"1h30.5s", H + 30 * S + 500},
    {"007m", 7 * M},
    {"30d", 30 * D},
    {"0.999999999d", D},        /* 86399999.9136 ms rounds up to a day */
    {"9223372036854775807ms", INT64_MAX},
};

static const char *const bad[] = {
    "",
    "5",           /* no unit */
    "5x",
    "m",
    "ms",
    "5 m",
    " 5m",
    "5m ",
    "-5m",         /* sign only through duration_parse_signed */
    "+5m",
    "5M",
    "5H",
    "1.h",
    ".5h",
    "1..5h",
    "30m1h",       /* units in decreasing order */
    "5m5m",
    "5ms5m",
    "1.5h30m",     /* only the last component has a fraction */
    "1h-5m",
    "5mm",
    "1e3ms",
    "0x10s",
    "5sec",
    "5min",
    "1w",
    "00",
    "0.0000000001s", /* more than 9 fraction digits */
    "9223372036854775808ms",
    "106751991168d",
    "106751991167d1d",
    "9223372036854775807ms1ms",
};

static void test_parse_good(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t ms = -12345;
        if (duration_parse(good[i].text, &ms) != 0)
            fail_msg("\"%s\" was refused", good[i].text);
        if (ms != good[i].ms)
            fail_msg("\"%s\": got %lld, want %lld", good[i].text, (long long)ms, (long long)good[i].ms);
    }
}

static void test_parse_bad(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = -12345;
        if (duration_parse(bad[i], &ms) != -1)
            fail_msg("\"%s\" was accepted as %lld", bad[i], (long long)ms);
        assert_int_equal(ms, -12345); /* untouched on failure */
    }
    int64_t ms = 7;
    assert_int_equal(duration_parse(NULL, &ms), -1);
    assert_int_equal(duration_parse_signed(NULL, &ms), -1);
    assert_int_equal(ms, 7);
}

static void test_parse_signed(void **state)
{
    int64_t ms;
    (void)state;

    assert_int_equal(duration_parse_signed("-5m", &ms), 0);
    assert_int_equal(ms, -5 * M);
    assert_int_equal(duration_parse_signed("-1h30m", &ms), 0);
    assert_int_equal(ms, -90 * M);
    assert_int_equal(duration_parse_signed("-0.5ms", &ms), 0);
    assert_int_equal(ms, -1);
    assert_int_equal(duration_parse_signed("-0s", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(duration_parse_signed("60s", &ms), 0);
    assert_int_equal(ms, 60 * S);
    assert_int_equal(duration_parse_signed("-", &ms), -1);
    assert_int_equal(duration_parse_signed("--5m", &ms), -1);
    assert_int_equal(duration_parse_signed("- 5m", &ms), -1);
    assert_int_equal(duration_parse_signed("+5m", &ms), -1);
    assert_int_equal(duration_parse_signed("5m-", &ms), -1);
    /* Every unsigned refusal stays a refusal with a minus in front. */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[64];
        snprintf(buf, sizeof(buf), "-%s", bad[i]);
        if (duration_parse_signed(buf, &ms) != -1)
            fail_msg("\"%s\" was accepted as %lld", buf, (long long)ms);
    }
}

static void check_format(int64_t ms, const char *want)
{
    char buf[64];

    memset(buf, 'X', sizeof(buf));
    duration_format(ms, buf, sizeof(buf));
    if (strcmp(buf, want) != 0)
        fail_msg("duration_format(%lld): got \"%s\", want \"%s\"", (long long)ms, buf, want);
}

static void test_format(void **state)
{
    (void)state;
    check_format(0, "0s");
    check_format(1, "1ms");
    check_format(250, "250ms");
    check_format(5 * S, "5s");
    check_format(90 * S, "1m30s");
    check_format(90 * M, "1h30m");
    check_format(72 * H, "3d");
    check_format(D + 1, "1d1ms");
    check_format(D + H + M + S + 1, "1d1h1m1s1ms");
    check_format(1001, "1s1ms");
    check_format(-5 * M, "-5m");
    check_format(-1, "-1ms");
    check_format(INT64_MAX, "106751991167d7h12m55s807ms");
    check_format(INT64_MIN, "-106751991167d7h12m55s808ms");
}

static void test_format_short_buffer(void **state)
{
    char buf[8];
    (void)state;

    memset(buf, 'X', sizeof(buf));
    duration_format(90 * M, buf, 4);
    assert_string_equal(buf, "1h3");
    assert_int_equal(buf[4], 'X'); /* nothing written past buflen */
    duration_format(90 * M, buf, 1);
    assert_string_equal(buf, "");
    assert_int_equal(buf[1], 'h'); /* untouched from the call before */
    buf[0] = 'Y';
    duration_format(90 * M, buf, 0); /* no room at all: no write */
    assert_int_equal(buf[0], 'Y');
}

static uint64_t rs;

static uint64_t rnd(void)
{
    uint64_t z = (rs += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void test_round_trip(void **state)
{
    const char *env = getenv("REBOUND_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : 20240601;
    (void)state;

    rs = seed;
    for (int i = 0; i < 200000; i++) {
        /* Every magnitude, not just huge ones: mask to a random width. */
        int bits = (int)(rnd() % 63) + 1;
        int64_t v = (int64_t)(rnd() & ((bits == 63) ? INT64_MAX : ((1ULL << bits) - 1)));
        if (rnd() & 1)
            v = -v;
        char buf[64];
        int64_t back = 0;
        duration_format(v, buf, sizeof(buf));
        if (duration_parse_signed(buf, &back) != 0 || back != v)
            fail_msg("%lld -> \"%s\" -> %lld (seed %llu, i %d)", (long long)v, buf, (long long)back,
                     (unsigned long long)seed, i);
        if (v >= 0 && (duration_parse(buf, &back) != 0 || back != v))
            fail_msg("unsigned %lld -> \"%s\" -> %lld (seed %llu)", (long long)v, buf, (long long)back,
                     (unsigned long long)seed);
        /* Shortest exact form: no zero component ("1h0m") and no
         * leading zero ("05s"), i.e. no number starts with '0'. */
        for (size_t j = 0; v != 0 && buf[j] != '\0'; j++) {
            if (buf[j] == '0' && (j == 0 || buf[j - 1] < '0' || buf[j - 1] > '9'))
                fail_msg("%lld -> \"%s\": a number starts with 0", (long long)v, buf);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),  cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_parse_signed), cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_short_buffer), cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
