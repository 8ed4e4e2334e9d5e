/*
 * Unit tests of the encoders that write replies and event fragments
 * without jansson objects (proto/jbuf.c, reply_open/reply_end,
 * event_msg_fragment): on random strings (every kind of byte: quotes,
 * backslashes, controls, DEL, UTF-8 of every length, invalid sequences)
 * and random integers, each must produce byte for byte what jansson's
 * compact dump of the same values produces, and refuse what jansson
 * refuses.
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

#include "proto/event.h"
#include "proto/jbuf.h"
#include "proto/reply.h"

#include "random_model.h"

/* jansson's encoding of one value, as the reference (malloc'd), or NULL. */
static char *dump(json_t *v)
{
    if (v == NULL)
        return NULL;
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(v);
    return s;
}

/* A random byte string of length n: mostly text, with every troublesome
 * kind of byte now and then. */
static void random_bytes(char *buf, size_t n)
{
    static const char *const pieces[] = {"\"", "\\", "\n", "\t", "\r", "\b", "\f", "\x01", "\x1f", "\x7f", "/",
                                         "\xc3\xa9", "\xe2\x9c\x89", "\xf0\x9f\x93\xa7", "\xed\x9f\xbf", "\xef\xbf\xbf",
                                         "\xf4\x8f\xbf\xbf"};
    static const char *const bad[] = {"\x80", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff",
                                      "\xe2\x9c", "\xf8\x88\x80\x80\x80"};
    size_t i = 0;
    while (i < n) {
        uint64_t r = rnd_below(100);
        const char *p;
        if (r < 70) {
            buf[i++] = (char)(0x20 + rnd_below(0x5f));
            continue;
        }
        p = r < 98 ? pieces[rnd_below(sizeof pieces / sizeof pieces[0])] : bad[rnd_below(sizeof bad / sizeof bad[0])];
        size_t k = strlen(p);
        if (i + k > n)
            break;
        memcpy(buf + i, p, k);
        i += k;
    }
    buf[i] = '\0';
}

static void test_str_against_jansson(void **state)
{
    (void)state;
    char s[64];
    struct jbuf b = {0};
    int refused = 0;

    seed_from_env(0x5eed);
    for (op = 0; op < 100000; op++) {
        size_t n = rnd_below(sizeof s);
        random_bytes(s, n);
        n = strlen(s);
        /* Sometimes with a NUL inside, which json_stringn keeps. */
        if (n > 2 && rnd_below(20) == 0)
            s[rnd_below(n)] = '\0';
        char *want = dump(json_stringn(s, n));
        jbuf_reset(&b);
        jbuf_lit(&b, "x");
        bool ok = jbuf_str(&b, s, n);
        if (want == NULL) {
            CHECK(!ok);
            CHECK(b.failed);
            refused++;
            continue;
        }
        CHECK(ok);
        const char *got = jbuf_cstr(&b);
        CHECK(got != NULL);
        if (strcmp(got + 1, want) != 0)
            fail_msg("[%s] != jansson's [%s] (seed %llu, op %zu)", got + 1, want, (unsigned long long)seed, op);
        CHECK_EQ(b.len, strlen(want) + 1);
        free(want);
    }
    CHECK(refused > 100);
    free(b.p);
}

static void test_int_against_jansson(void **state)
{
    (void)state;
    static const long long edge[] = {0, 1, -1, 9, 10, -10, 99, 100, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN,
                                     1795000123456LL, -1795000123456LL};
    struct jbuf b = {0};

    seed_from_env(0x1e7);
    for (op = 0; op < 100000; op++) {
        long long v;
        if (op < sizeof edge / sizeof edge[0])
            v = edge[op];
        else
            v = (long long)(rnd() >> rnd_below(64));
        if (rnd_below(2) && v != INT64_MIN)
            v = -v;
        char *want = dump(json_integer(v));
        jbuf_reset(&b);
        CHECK(jbuf_int(&b, v));
        const char *got = jbuf_cstr(&b);
        if (strcmp(got, want) != 0)
            fail_msg("%s != jansson's %s (seed %llu, op %zu)", got, want, (unsigned long long)seed, op);
        free(want);
    }
    free(b.p);
}

/* A bounce reply written member by member is the line reply_ok makes of
 * the same object. */
static void test_reply_open_end(void **state)
{
    (void)state;
    char id[40], cls[24];
    struct jbuf b = {0};
    json_t *reqs[] = {NULL, json_string("r-1"), json_integer(-7), json_true(), json_null(), json_string("q\"\n")};

    seed_from_env(0x4e91);
    for (op = 0; op < 20000; op++) {
        random_bytes(id, 1 + rnd_below(sizeof id - 1));
        random_bytes(cls, 1 + rnd_below(sizeof cls - 1));
        json_t *req = reqs[rnd_below(sizeof reqs / sizeof reqs[0])];
        long long attempt = (long long)rnd_below(20), at = (long long)(rnd() >> 20);

        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "class", json_string(cls));
        json_object_set_new(o, "attempt", json_integer(attempt));
        json_object_set_new(o, "retry_at", json_integer(at));
        size_t wn;
        char *want = reply_ok(o, req, &wn);

        jbuf_reset(&b);
        reply_open(&b, req);
        jbuf_lit(&b, ",\"id\":");
        jbuf_str(&b, id, strlen(id));
        jbuf_lit(&b, ",\"class\":");
        jbuf_str(&b, cls, strlen(cls));
        jbuf_lit(&b, ",\"attempt\":");
        jbuf_int(&b, attempt);
        jbuf_lit(&b, ",\"retry_at\":");
        jbuf_int(&b, at);
        bool ok = reply_end(&b);
        json_t *vid = json_string(id), *vcls = json_string(cls);
        bool valid = vid != NULL && vcls != NULL;
        json_decref(vid);
        json_decref(vcls);
        if (!valid) {
            /* jansson dropped the member; the writer refuses the line */
            CHECK(!ok);
            free(want);
            continue;
        }
        CHECK(ok);
        CHECK_EQ(b.len, wn);
        if (memcmp(b.p, want, wn) != 0)
            fail_msg("[%.*s] != reply_ok's [%s] (seed %llu, op %zu)", (int)b.len, b.p, want,
                     (unsigned long long)seed, op);
        CHECK(memchr(b.p, '\n', b.len) == b.p + b.len - 1);
        free(want);
    }
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++)
        json_decref(reqs[i]);
    free(b.p);
}

/* The fragment as it was made before: an object dumped by jansson, its
 * braces taken off. */
static char *fragment_reference(const char *id, const char *rcpt, const char *campaign, json_t *meta)
{
    json_t *o = json_object();
    if (json_object_set_new(o, "id", json_string(id)) != 0 ||
        json_object_set_new(o, "rcpt", json_string(rcpt)) != 0 ||
        (campaign && json_object_set_new(o, "campaign", json_string(campaign)) != 0) ||
        (meta && json_object_set(o, "meta", meta) != 0)) {
        json_decref(o);
        return NULL;
    }
    char *s = dump(o);
    size_t n = strlen(s);
    memmove(s, s + 1, n - 2);
    s[n - 2] = '\0';
    return s;
}

static void test_fragment_against_reference(void **state)
{
    (void)state;
    char id[40], rcpt[40], camp[40];
    struct jbuf b = {0};
    json_t *metas[] = {NULL, json_pack("{s:s, s:i}", "tenant", "t\"1", "n", 3), json_object(),
                       json_pack("{s:[i,s], s:{s:n}}", "a", 1, "\xc3\xa9", "b", "c")};

    seed_from_env(0xf4a9);
    for (op = 0; op < 20000; op++) {
        random_bytes(id, rnd_below(sizeof id));
        random_bytes(rcpt, rnd_below(sizeof rcpt));
        random_bytes(camp, rnd_below(sizeof camp));
        const char *c = rnd_below(2) ? camp : NULL;
        json_t *meta = metas[rnd_below(sizeof metas / sizeof metas[0])];
        char *want = fragment_reference(id, rcpt, c, meta);
        size_t n;
        char *got = event_msg_fragment(id, rcpt, c, meta, &n);
        jbuf_reset(&b);
        jbuf_lit(&b, "pre");
        bool ok = event_msg_fragment_put(&b, id, rcpt, c, meta);
        if (want == NULL) {
            CHECK(got == NULL);
            CHECK(!ok);
            continue;
        }
        CHECK(got != NULL);
        CHECK(ok);
        if (strcmp(got, want) != 0)
            fail_msg("[%s] != [%s] (seed %llu, op %zu)", got, want, (unsigned long long)seed, op);
        CHECK_EQ(n, strlen(want));
        CHECK_EQ(b.len, n + 3);
        CHECK(memcmp(b.p + 3, want, n) == 0);
        free(got);
        free(want);
    }
    for (size_t i = 0; i < sizeof metas / sizeof metas[0]; i++)
        json_decref(metas[i]);
    free(b.p);
}

/* A body with its members encoded as text is the body event_body makes
 * of the same members as an object. */
static void test_body_text(void **state)
{
    (void)state;
    char t1[40], t2[40];
    struct jbuf m = {0};

    seed_from_env(0xb0d7);
    for (op = 0; op < 20000; op++) {
        random_bytes(t1, rnd_below(sizeof t1));
        random_bytes(t2, rnd_below(sizeof t2));
        json_t *extra = json_object();
        jbuf_reset(&m);
        if (rnd_below(4)) {
            json_object_set_new(extra, "class", json_string(t1));
            jbuf_lit(&m, ",\"class\":");
            jbuf_str(&m, t1, strlen(t1));
        }
        long long n = (long long)(rnd() >> (1 + rnd_below(63))) - (1LL << 40);
        json_object_set_new(extra, "attempt", json_integer(n));
        jbuf_lit(&m, ",\"attempt\":");
        jbuf_int(&m, n);
        if (rnd_below(2)) {
            json_object_set_new(extra, "text", json_string(t2));
            jbuf_lit(&m, ",\"text\":");
            jbuf_str(&m, t2, strlen(t2));
        }
        enum event_type type = (enum event_type)rnd_below(EV__COUNT);
        const char *frag = rnd_below(3) ? "\"id\":\"m1\",\"rcpt\":\"a@b\"" : rnd_below(2) ? "" : NULL;
        long long at = (long long)(rnd() >> 20);
        size_t wn, gn;
        char *want = event_body(type, at, frag, extra, &wn);
        json_decref(extra);
        if (m.failed) {
            /* jansson left out a member it could not encode; the text way
             * has nothing to send */
            free(want);
            continue;
        }
        char *got = event_body_text(type, at, frag, m.p, m.len, &gn);
        CHECK(want != NULL && got != NULL);
        if (strcmp(got, want) != 0)
            fail_msg("[%s] != [%s] (seed %llu, op %zu)", got, want, (unsigned long long)seed, op);
        CHECK_EQ(gn, wn);
        free(want);
        free(got);
    }
    size_t n;
    assert_null(event_body_text(EV_RETRY, 1, NULL, "\"a\":1", 5, &n));
    assert_null(event_body_text((enum event_type)EV__COUNT, 1, NULL, "", 0, &n));
    char *e = event_body_text(EV_GIVE_UP, 5, NULL, "", 0, &n);
    assert_string_equal(e, "{\"type\":\"give_up\",\"at\":5}");
    free(e);
    free(m.p);
}

/* A failed buffer stays failed until reset, and a reset keeps the memory. */
static void test_jbuf_reset(void **state)
{
    (void)state;
    struct jbuf b = {0};
    assert_false(jbuf_str(&b, "\xff", 1));
    assert_true(b.failed);
    assert_false(jbuf_lit(&b, "x"));
    assert_null(jbuf_cstr(&b));
    jbuf_reset(&b);
    assert_true(jbuf_lit(&b, "ok"));
    assert_string_equal(jbuf_cstr(&b), "ok");
    char *p = b.p;
    jbuf_reset(&b);
    assert_true(jbuf_str(&b, "a\"b", 3));
    assert_ptr_equal(b.p, p);
    assert_string_equal(jbuf_cstr(&b), "\"a\\\"b\"");
    size_t n;
    char *s = jbuf_finish(&b, &n);
    assert_int_equal(n, 6);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_str_against_jansson),
        cmocka_unit_test(test_int_against_jansson),
        cmocka_unit_test(test_reply_open_end),
        cmocka_unit_test(test_fragment_against_reference),
        cmocka_unit_test(test_body_text),
        cmocka_unit_test(test_jbuf_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
