/*
 * config/regex_size.c: a table of patterns with their sizes, saturation,
 * and random patterns built together with their size by a generator that
 * follows the counting rules of regex_size.h (the reference model). Every
 * generated pattern is also compiled by regcomp, so the generator stays
 * within what the C library accepts. The seed is fixed so a failure
 * replays; REBOUND_TEST_SEED tries others.
 */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/regex_size.h"

static const struct {
    const char *pattern;
    uint64_t positions;
} table[] = {
    {"", 0},
    {"a", 1},
    {"mailbox full", 12},
    {"a*", 1},
    {"a?", 1},
    {"a+", 2},
    {"a{3}", 3},
    {"a{3,}", 4},
    {"a{2,5}", 5},
    {"a{0}", 0},
    {"ab{3}", 4},
    {"(ab){3}", 9},
    {"(a|bc)", 4},
    {"(a|bc)+", 8},
    {"[0-9]{1,3}", 3},
    {"[]a]{2}", 2},
    {"[^]a]x", 2},
    {"[[:digit:]]{4}", 4},
    {"[[.-.]]", 1},
    {"\\.{3}", 3},
    {"\\{3}", 3},
    {"a{", 2},
    {"a{x}", 4},
    {"a{}", 3},
    {"x{255}{255}", 65025},
    {"try again in [0-9]+ min", 19},
    {"((a{2}){3}){4}", 40},
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        uint64_t got = regex_positions(table[i].pattern, 1000000);
        if (got != table[i].positions)
            fail_msg("\"%s\": %llu positions, expected %llu", table[i].pattern, (unsigned long long)got,
                     (unsigned long long)table[i].positions);
    }
}

static void test_saturates(void **state)
{
    (void)state;
    assert_int_equal(regex_positions("x{255}{255}", 4096), 4097);
    assert_int_equal(regex_positions("x{32767}{32767}{32767}{32767}{32767}", 4096), 4097);
    assert_int_equal(regex_positions("((((x{99999999999999999999}){9}){9}){9})", 100), 101);
    assert_int_equal(regex_positions("abcd", 4), 4);
    assert_int_equal(regex_positions("abcde", 4), 5);
    assert_int_equal(regex_positions("abcd", UINT64_MAX), 4);
    /* Growing, then shrunk by {0}, must stay saturated: it was refused. */
    assert_int_equal(regex_positions("x{100}{100}y{0}", 50), 51);
}

/* Unbalanced parentheses and a nesting deeper than the measure tracks. */
static void test_malformed(void **state)
{
    (void)state;
    assert_int_equal(regex_positions("(ab", 100), 3);
    assert_int_equal(regex_positions("ab)", 100), 3);
    assert_int_equal(regex_positions("[ab", 100), 3);
    assert_int_equal(regex_positions("a\\", 100), 2);
    char deep[400];
    size_t n = 0;
    for (int i = 0; i < 100; i++)
        deep[n++] = '(';
    deep[n++] = 'a';
    for (int i = 0; i < 100; i++)
        deep[n++] = ')';
    deep[n] = '\0';
    assert_true(regex_positions(deep, 1000) >= 101);
}

/* ---- the reference model: a pattern built with its size ---- */

struct gen {
    char buf[4096];
    size_t len;
};

static void put(struct gen *g, const char *s)
{
    size_t n = strlen(s);
    assert_true(g->len + n < sizeof g->buf);
    memcpy(g->buf + g->len, s, n);
    g->len += n;
    g->buf[g->len] = '\0';
}

static uint64_t gen_seq(struct gen *g, int depth);

/* One atom and its quantifier; returns its size. */
static uint64_t gen_piece(struct gen *g, int depth)
{
    static const char *const atoms[] = {"a", "Z", ".", "[0-9]", "[^]x]", "[[:alpha:]_]", "\\.", "\\(", "-", " "};
    uint64_t size;
    if (depth < 3 && rand() % 4 == 0) {
        put(g, "(");
        size = gen_seq(g, depth + 1);
        while (rand() % 3 == 0) {
            put(g, "|");
            size += gen_seq(g, depth + 1);
        }
        put(g, ")");
        size += 1;
    } else {
        put(g, atoms[rand() % (int)(sizeof atoms / sizeof atoms[0])]);
        size = 1;
    }
    char q[32];
    int m = rand() % 5, n = m + rand() % 4;
    switch (rand() % 8) {
    case 0:
        put(g, "*");
        return size;
    case 1:
        put(g, "?");
        return size;
    case 2:
        put(g, "+");
        return size * 2;
    case 3:
        snprintf(q, sizeof q, "{%d}", m);
        put(g, q);
        return size * (uint64_t)m;
    case 4:
        snprintf(q, sizeof q, "{%d,}", m);
        put(g, q);
        return size * (uint64_t)(m + 1);
    case 5:
        snprintf(q, sizeof q, "{%d,%d}", m, n);
        put(g, q);
        return size * (uint64_t)n;
    default:
        return size;
    }
}

static uint64_t gen_seq(struct gen *g, int depth)
{
    uint64_t size = gen_piece(g, depth);
    int more = rand() % 4;
    for (int i = 0; i < more; i++)
        size += gen_piece(g, depth);
    return size;
}

static void test_model(void **state)
{
    (void)state;
    const char *env = getenv("REBOUND_TEST_SEED");
    unsigned seed = env != NULL ? (unsigned)strtoul(env, NULL, 10) : 20261207u;
    srand(seed);
    for (int i = 0; i < 3000; i++) {
        struct gen g = {.len = 0};
        g.buf[0] = '\0';
        uint64_t want = gen_seq(&g, 0);
        uint64_t got = regex_positions(g.buf, UINT64_MAX - 1);
        if (got != want)
            fail_msg("seed %u: \"%s\": %llu positions, the model says %llu", seed, g.buf, (unsigned long long)got,
                     (unsigned long long)want);
        /* Below the true size, the measure saturates at cap + 1. */
        if (want > 0)
            assert_int_equal(regex_positions(g.buf, want - 1), want);
        regex_t re;
        int e = regcomp(&re, g.buf, REG_EXTENDED | REG_NOSUB);
        if (e != 0)
            fail_msg("seed %u: regcomp refused \"%s\"", seed, g.buf);
        regfree(&re);
    }
}

static void test_backref(void **state)
{
    (void)state;
    assert_true(regex_has_backref("(a*)*\\1"));
    assert_true(regex_has_backref("x\\9"));
    assert_false(regex_has_backref("x\\0"));
    assert_false(regex_has_backref("a\\\\1")); /* an escaped backslash, then 1 */
    assert_false(regex_has_backref("[\\1]"));    /* inside brackets: two members */
    assert_false(regex_has_backref("try again in [0-9]+"));
    assert_false(regex_has_backref("trailing\\"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_saturates),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_backref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
