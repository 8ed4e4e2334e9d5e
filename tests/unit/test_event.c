/*
 * Unit tests of proto/event.c: the message fragment, the body and the
 * line each parse back with jansson to exactly what went in, whatever the
 * id and address hold (quotes, backslashes, control characters, UTF-8);
 * the exact layout of the common cases; refusal of bodies that would
 * break framing; the type read back from a body; the compact retry body
 * giving the very line its JSON body gave, and refused when malformed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/event.h"
#include "proto/request.h"

/* Parses "{" fragment "}" and returns the object. */
static json_t *fragment_object(const char *frag, size_t len)
{
    char *s = malloc(len + 3);
    s[0] = '{';
    memcpy(s + 1, frag, len);
    s[len + 1] = '}';
    s[len + 2] = '\0';
    json_error_t e;
    json_t *o = json_loads(s, JSON_REJECT_DUPLICATES, &e);
    if (o == NULL)
        fail_msg("fragment {%s} does not parse: %s", frag, e.text);
    free(s);
    return o;
}

static void test_fragment_layout(void **state)
{
    (void)state;
    size_t len;
    char *f = event_msg_fragment("m1", "a@b.c", NULL, NULL, &len);
    assert_string_equal(f, "\"id\":\"m1\",\"rcpt\":\"a@b.c\"");
    assert_int_equal(len, strlen(f));
    free(f);

    json_t *meta = json_pack("{s:s, s:i}", "tenant", "t1", "n", 3);
    f = event_msg_fragment("m1", "a@b.c", "spring", meta, &len);
    assert_string_equal(f, "\"id\":\"m1\",\"rcpt\":\"a@b.c\",\"campaign\":\"spring\",\"meta\":{\"tenant\":\"t1\",\"n\":3}");
    free(f);
    /* meta is borrowed */
    assert_int_equal(meta->refcount, 1);
    json_decref(meta);
}

static void test_fragment_escaping(void **state)
{
    (void)state;
    static const char *const ids[] = {
        "plain", "with\"quote", "back\\slash", "\"\\\"", "<abc@mx.example>", "a/b", "}{,:", "\\u0041",
    };
    static const char *const rcpts[] = {
        "a@b.c", "j\xc3\xbcrgen@m\xc3\xbcnchen.de", "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe3\x81\x88.jp",
        "o'brien+\"x\"@example.com", "tab\there@x.y", "nl\nhere@x.y",
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        for (size_t k = 0; k < sizeof rcpts / sizeof rcpts[0]; k++) {
            size_t len;
            const char *campaign = (i + k) % 2 ? "Sommer \xe2\x80\x93 \"Aktion\"" : NULL;
            char *f = event_msg_fragment(ids[i], rcpts[k], campaign, NULL, &len);
            assert_non_null(f);
            assert_null(memchr(f, '\n', len));
            json_t *o = fragment_object(f, len);
            assert_string_equal(json_string_value(json_object_get(o, "id")), ids[i]);
            assert_string_equal(json_string_value(json_object_get(o, "rcpt")), rcpts[k]);
            if (campaign)
                assert_string_equal(json_string_value(json_object_get(o, "campaign")), campaign);
            else
                assert_null(json_object_get(o, "campaign"));
            assert_int_equal(json_object_size(o), campaign ? 3 : 2);
            json_decref(o);
            free(f);
        }
    }
    /* UTF-8 goes out as UTF-8, not as \u escapes */
    size_t len;
    char *f = event_msg_fragment("m", "j\xc3\xbcrgen@m\xc3\xbcnchen.de", NULL, NULL, &len);
    assert_non_null(strstr(f, "j\xc3\xbcrgen@m\xc3\xbcnchen.de"));
    free(f);
}

static void test_fragment_refuses(void **state)
{
    (void)state;
    size_t len = 99;
    assert_null(event_msg_fragment("bad\xff", "a@b", NULL, NULL, &len));
    assert_null(event_msg_fragment("id", "a@b\xc3", NULL, NULL, &len));
    assert_null(event_msg_fragment(NULL, "a@b", NULL, NULL, &len));
    json_t *arr = json_array();
    assert_null(event_msg_fragment("id", "a@b", NULL, arr, &len));
    json_decref(arr);
}

static void test_body_layout(void **state)
{
    (void)state;
    size_t len;
    char *body;

    body = event_body(EV_DOMAIN_THROTTLED, 1700000000123LL, NULL, NULL, &len);
    assert_string_equal(body, "{\"type\":\"domain_throttled\",\"at\":1700000000123}");
    assert_int_equal(len, strlen(body));
    free(body);

    json_t *extra = json_pack("{s:s, s:i}", "domain", "example.com", "until", 5);
    body = event_body(EV_DOMAIN_THROTTLED, 1, "", extra, &len);
    assert_string_equal(body, "{\"type\":\"domain_throttled\",\"at\":1,\"domain\":\"example.com\",\"until\":5}");
    free(body);
    json_decref(extra);

    extra = json_pack("{s:s, s:i, s:I}", "class", "greylist", "attempt", 1, "due_at", (json_int_t)1700000300000LL);
    body = event_body(EV_RETRY, 1700000300001LL, "\"id\":\"m1\",\"rcpt\":\"a@b.c\"", extra, &len);
    assert_string_equal(body, "{\"type\":\"retry\",\"at\":1700000300001,\"id\":\"m1\",\"rcpt\":\"a@b.c\","
                              "\"class\":\"greylist\",\"attempt\":1,\"due_at\":1700000300000}");
    free(body);
    assert_int_equal(extra->refcount, 1); /* borrowed */
    json_decref(extra);

    /* an empty extra adds nothing */
    extra = json_object();
    body = event_body(EV_GIVE_UP, 7, "\"id\":\"m\",\"rcpt\":\"a@b\"", extra, &len);
    assert_string_equal(body, "{\"type\":\"give_up\",\"at\":7,\"id\":\"m\",\"rcpt\":\"a@b\"}");
    free(body);
    json_decref(extra);

    assert_null(event_body((enum event_type)EV__COUNT, 1, NULL, NULL, &len));
    assert_null(event_body((enum event_type)-1, 1, NULL, NULL, &len));
    json_t *notobj = json_string("x");
    assert_null(event_body(EV_RETRY, 1, NULL, notobj, &len));
    json_decref(notobj);
}

static void test_line_layout(void **state)
{
    (void)state;
    size_t len;
    char *line;
    const char *body = "{\"type\":\"retry\",\"at\":5,\"id\":\"m\"}";

    line = event_line("1700000000000-0", body, strlen(body), &len);
    assert_string_equal(line, "{\"eid\":\"1700000000000-0\",\"type\":\"retry\",\"at\":5,\"id\":\"m\"}\n");
    assert_int_equal(len, strlen(line));
    free(line);

    line = event_line("1-1", "{}", 2, &len);
    assert_string_equal(line, "{\"eid\":\"1-1\"}\n");
    free(line);
    line = event_line("1-1", "{ \t}", 4, &len);
    assert_string_equal(line, "{\"eid\":\"1-1\"}\n");
    free(line);

    /* body_len is honoured: the body need not be NUL-terminated */
    const char two[] = "{\"a\":1}{\"b\":2}";
    line = event_line("2-0", two, 7, &len);
    assert_string_equal(line, "{\"eid\":\"2-0\",\"a\":1}\n");
    free(line);

    /* an odd eid is escaped, not spliced raw */
    line = event_line("x\"y\\z\n", body, strlen(body), &len);
    assert_non_null(line);
    assert_ptr_equal(memchr(line, '\n', len), line + len - 1);
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "eid")), "x\"y\\z\n");
    json_decref(o);
    free(line);
}

static void test_line_refuses(void **state)
{
    (void)state;
    static const char *const bodies[] = {"", "{", "}", "[]", "x{}", "{}x", "\"{}\"", "{\"a\":\"\n\"}", "{\n}"};
    size_t len;
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        if (event_line("1-0", bodies[i], strlen(bodies[i]), &len) != NULL)
            fail_msg("body '%s' was accepted", bodies[i]);
    const char nul[] = "{\"a\":\"\0\"}";
    assert_null(event_line("1-0", nul, sizeof nul - 1, &len));
    assert_null(event_line(NULL, "{}", 2, &len));
}

/* The whole path: a bounce request, its fragment, a body, a line, and
 * back: every value arrives intact. */
static void test_round_trip(void **state)
{
    (void)state;
    struct proto_limits lim;
    struct request r;
    struct proto_error err;
    const char *req = "{\"op\":\"bounce\",\"id\":\"<a\\\"b\\\\c@mx>\",\"rcpt\":\"\xc3\xa9l\xc3\xa8ve@\xc3\xa9" "cole.fr\","
                      "\"code\":452,\"campaign\":\"Rentr\xc3\xa9" "e \\\"2024\\\"\",\"meta\":{\"k\":[1,\"\\u2028\",{\"z\":null}],"
                      "\"x\":1.5}}";
    size_t flen, blen, llen;

    proto_limits_default(&lim);
    if (request_parse(req, strlen(req), &lim, &r, &err) != 0)
        fail_msg("%s", err.message);
    char *frag = event_msg_fragment(r.id, r.rcpt, r.campaign, r.meta, &flen);
    assert_non_null(frag);
    json_t *extra = json_pack("{s:s, s:i, s:I, s:s}", "class", "storage", "attempt", 3, "due_at",
                              (json_int_t)1700000000000LL, "reason", "max_age");
    char *body = event_body(EV_GIVE_UP, 1700000000999LL, frag, extra, &blen);
    assert_non_null(body);
    assert_int_equal(body[0], '{');
    assert_int_equal(event_body_type(body, blen), EV_GIVE_UP);
    char *line = event_line("1700000000999-3", body, blen, &llen);
    assert_non_null(line);
    assert_ptr_equal(memchr(line, '\n', llen), line + llen - 1);

    json_t *o = json_loadb(line, llen - 1, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "eid")), "1700000000999-3");
    assert_string_equal(json_string_value(json_object_get(o, "type")), "give_up");
    assert_true(json_integer_value(json_object_get(o, "at")) == 1700000000999LL);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "<a\"b\\c@mx>");
    assert_string_equal(json_string_value(json_object_get(o, "rcpt")), r.rcpt);
    assert_string_equal(json_string_value(json_object_get(o, "campaign")), "Rentr\xc3\xa9" "e \"2024\"");
    assert_true(json_equal(json_object_get(o, "meta"), r.meta));
    assert_string_equal(json_string_value(json_object_get(o, "class")), "storage");
    assert_int_equal(json_integer_value(json_object_get(o, "attempt")), 3);
    assert_string_equal(json_string_value(json_object_get(o, "reason")), "max_age");
    assert_int_equal(json_object_size(o), 11);

    json_decref(o);
    json_decref(extra);
    free(line);
    free(body);
    free(frag);
    request_free(&r);
}

static void test_body_type(void **state)
{
    (void)state;
    for (int t = 0; t < EV__COUNT; t++) {
        size_t len;
        char *body = event_body((enum event_type)t, 1, "\"id\":\"m\",\"rcpt\":\"a@b\"", NULL, &len);
        assert_int_equal(event_body_type(body, len), t);
        /* the length is honoured */
        assert_int_equal(event_body_type(body, 9), -1);
        free(body);
    }
    static const struct {
        const char *body;
        int type;
    } cases[] = {
        {"{\"at\":1,\"type\":\"suppress\"}", EV_SUPPRESS},
        {"{ \"type\" : \"sender_alert\" }", EV_SENDER_ALERT},
        {"{\"type\":\"bounce\",\"at\":1}", -1},
        {"{\"type\":\"retry\\u0000\"}", -1},
        {"{\"type\":\"re\\\"try\"}", -1},
        {"{\"type\":7}", -1},
        {"{\"at\":1}", -1},
        {"[\"type\",\"retry\"]", -1},
        {"not json", -1},
        {"", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (event_body_type(cases[i].body, strlen(cases[i].body)) != cases[i].type)
            fail_msg("body %s: expected %d", cases[i].body, cases[i].type);
}

/* The line of a compact retry body against the line of the JSON body the
 * stream held before (protocol.md's retry event): the same bytes. */
static void expect_same_line(const char *id, const char *rcpt, const char *campaign, long long at, long long due,
                             int attempt, const char *cls)
{
    size_t flen, blen, l1, l2;
    char *frag = event_msg_fragment(id, rcpt, campaign, NULL, &flen);
    assert_non_null(frag);
    char members[128];
    int mn = snprintf(members, sizeof members, ",\"class\":\"%s\",\"attempt\":%d,\"due_at\":%lld", cls, attempt, due);
    char *body = event_body_text(EV_RETRY, at, frag, members, (size_t)mn, &blen);
    assert_non_null(body);
    char *json_line = event_line("1700000000123-7", body, blen, &l1);
    assert_non_null(json_line);

    /* who as the record holds it (proto/record.h): the recipient alone
     * for a plain id and recipient, else the members */
    const char *who = campaign == NULL && strpbrk(id, "\"\\") == NULL ? rcpt : frag;
    char compact[512];
    size_t cn = event_retry_compact(compact, at, due, attempt, cls, strlen(cls), id, strlen(id), who, strlen(who));
    assert_true(cn <= EVENT_RETRY_COMPACT_MAX + strlen(cls) + strlen(id) + strlen(who));
    assert_true(cn < blen * 2 / 3); /* the point of the form */
    assert_int_equal(event_body_type(compact, cn), EV_RETRY);
    char *line = event_line("1700000000123-7", compact, cn, &l2);
    assert_non_null(line);
    assert_int_equal(l1, l2);
    assert_memory_equal(line, json_line, l1);
    free(line);
    free(json_line);
    free(body);
    free(frag);
}

static void test_retry_compact(void **state)
{
    (void)state;
    char out[256];
    size_t n = event_retry_compact(out, 1700000000999LL, 1700000000990LL, 1, "greylist", 8, "m1", 2, "a@b.example", 11);
    assert_int_equal(n, strlen("Rloyw3vtz,9,1,greylist\nm1\na@b.example"));
    assert_memory_equal(out, "Rloyw3vtz,9,1,greylist\nm1\na@b.example", n);

    expect_same_line("m1", "a@b.example", NULL, 1700000000999LL, 1700000000990LL, 1, "greylist");
    expect_same_line("msg-0000001", "user0000001@d0000001.example.com", NULL, 1700000000000LL, 1700000000000LL, 12,
                     "mailbox_full");
    /* fired before it was due (a negative lateness), and very late */
    expect_same_line("m2", "x@y", NULL, 1700000000000LL, 1700000000500LL, 3, "rate-limit");
    expect_same_line("m3", "x@y", NULL, 1800000000000LL, 1700000000000LL, 100, "c");
    /* members: a campaign, or an id that needs escaping */
    expect_same_line("m4", "x@y.example", "Rentr\xc3\xa9" "e \"2024\"", 1700000000001LL, 1700000000000LL, 2,
                     "greylist");
    expect_same_line("<a\"b\\c@mx>", "x@y.example", NULL, 1700000000001LL, 1700000000000LL, 2, "greylist");
}

static void test_retry_compact_refuses(void **state)
{
    (void)state;
    static const char *bad[] = {
        "R",
        "R1,2,3,greylist",
        "R1,2,3,\nid\nr@x",
        "RX,2,3,c\nid\nr@x",
        "R-1,2,3,c\nid\nr@x",
        "R1234567890123,2,3,c\nid\nr@x",
        "R1,,3,c\nid\nr@x",
        "R1,2,-3,c\nid\nr@x",
        "R1,2,3,c\n\nr@x",
        "R1,2,3,c\nid\n",
        "R1,2,3,c\nid",
        "R1,2,3,c\"\nid\nr@x",
        "R1,2,3,c\ni\"d\nr@x",
        "R1,2,3,c\nid\nr\\x",
        "R1,2,3,c\nid\nr\nx",
        "R1,2,3,c\n\"id\":\"m\"\n",
        "R1,1234567890123456789,3,c\nid\nr@x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len;
        char *line = event_line("1-0", bad[i], strlen(bad[i]), &len);
        if (line != NULL)
            fail_msg("compact body %zu accepted: %s", i, line);
    }
    /* a NUL inside members */
    static const char nul[] = "R1,2,3,c\n\"id\":\"m\0\"";
    size_t len;
    assert_null(event_line("1-0", nul, sizeof nul - 1, &len));
}

/* Every body event_body makes, compacted by the store, gives its line
 * back byte for byte, whatever its strings hold (member names, quotes,
 * escapes inside strings included); the form is much shorter. */
static void test_generic_compact(void **state)
{
    (void)state;
    static const char *frags[] = {
        "\"id\":\"msg-0000001\",\"rcpt\":\"user0000001@d0000001.example.com\"",
        "\"id\":\"a\\\"class\\\":\",\"rcpt\":\"x@y\",\"campaign\":\"\\\"rcpt\\\":\\u0001\"",
        "\"id\":\"m\",\"rcpt\":\"x@y\",\"meta\":{\"x\\\"class\":1,\"id\":[\"code\",{\"text\":null}]}",
        NULL,
    };
    for (int t = 0; t < EV__COUNT; t++) {
        for (size_t f = 0; f < sizeof frags / sizeof frags[0]; f++) {
            json_t *extra = json_pack("{s:s, s:i, s:i, s:s, s:s}", "class", "hard_invalid", "attempt", 2, "code", 550,
                                      "enhanced", "5.1.1", "reason", "hard_invalid");
            size_t blen, cl, l1, l2;
            char *body = event_body((enum event_type)t, 1796607541758LL, frags[f], f == 0 ? extra : NULL, &blen);
            assert_non_null(body);
            char *c = malloc(blen);
            cl = event_compact(body, blen, c);
            assert_true(cl > 0 && cl < blen);
            if (f == 0)
                assert_true(cl * 3 < blen * 2); /* the names and the type go */
            assert_int_equal(event_body_type(c, cl), t);
            char *want = event_line("1796607541758-0", body, blen, &l1);
            char *got = event_line("1796607541758-0", c, cl, &l2);
            assert_non_null(got);
            assert_int_equal(l1, l2);
            assert_memory_equal(got, want, l1);
            free(want);
            free(got);
            free(c);
            free(body);
            json_decref(extra);
        }
    }
    /* not of event_body's shape: stored as they are */
    static const char *other[] = {"{}", "{\"at\":1,\"type\":\"retry\"}", "{\"type\":\"bounce\",\"at\":1}",
                                  "{\"type\":\"retry\",\"at\":x}", "{\"type\":\"retry\",\"at\":1,\"a\":\"\x01\"}"};
    char out[64];
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        assert_int_equal(event_compact(other[i], strlen(other[i]), out), 0);
    /* malformed compact bodies */
    static const char *bad[] = {"g", "gX", "g-1,\x01\"m\"", "g1,\x1f\"m\"", "g1,\x01\"m\"\n", "z1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len;
        char *line = event_line("1-0", bad[i], strlen(bad[i]), &len);
        if (line != NULL)
            fail_msg("compact body %zu accepted: %s", i, line);
    }
}

/* give_up, suppress and sender_alert as bounce.c writes them take the
 * positional form: the same line back byte for byte, in well under two
 * thirds of the JSON's bytes for the common event. */
static void test_outcome_compact(void **state)
{
    (void)state;
    static const char *frags[] = {
        "\"id\":\"msg-g000001\",\"rcpt\":\"userg000001@D0000001.Example.com\"",
        "\"id\":\"a\\\"b\",\"rcpt\":\"x@y.example\"",
        "\"id\":\"m\",\"rcpt\":\"x@y.example\",\"campaign\":\"c,\\\"1\\\"\"",
        "\"id\":\"m\",\"rcpt\":\"x@y.example\",\"meta\":{\"t\":\"a,b\",\"n\":[1,{\"class\":\"x\"}],\"z\":null}",
        "\"id\":\"m\",\"rcpt\":\"caf\xc3\xa9@y.example\"",
    };
    static const char *outcomes[] = {
        ",\"class\":\"hard_other\",\"attempt\":0,\"code\":554,\"enhanced\":\"5.0.0\",\"reason\":\"permanent\"",
        ",\"class\":\"hard_invalid\",\"attempt\":3,\"code\":550,\"enhanced\":\"5.1.1\",\"reason\":\"hard_invalid\"",
        ",\"class\":\"mailbox_full\",\"attempt\":12,\"code\":452,\"reason\":\"max_age\"",
        ",\"class\":\"rate-limit\",\"attempt\":1,\"code\":421,\"enhanced\":\"4.7.0\",\"reason\":\"max_attempts\"",
    };
    static const char *alerts[] = {
        ",\"class\":\"auth_failure\",\"attempt\":0,\"code\":550,\"enhanced\":\"5.7.26\",\"reason\":\"auth_failure\","
        "\"text\":\"5.7.26 DMARC, \\\"p=reject\\\"\",\"domain\":\"%s\",\"repeats\":7",
        ",\"class\":\"content_rejected\",\"attempt\":2,\"code\":554,\"reason\":\"content_rejected\","
        "\"domain\":\"%s\",\"repeats\":0",
    };
    for (size_t f = 0; f < sizeof frags / sizeof frags[0]; f++) {
        for (int t = EV_GIVE_UP; t <= EV_SENDER_ALERT; t++) {
            size_t nm = t == EV_SENDER_ALERT ? 2 * (sizeof alerts / sizeof alerts[0]) : sizeof outcomes / sizeof outcomes[0];
            for (size_t k = 0; k < nm; k++) {
                char members[512];
                if (t == EV_SENDER_ALERT)
                    snprintf(members, sizeof members, alerts[k / 2],
                             k % 2 ? "other.example" : f == 0 ? "d0000001.example.com" : "y.example");
                else
                    snprintf(members, sizeof members, "%s", outcomes[k]);
                size_t blen, cl, l1, l2;
                char *body = event_body_text((enum event_type)t, 1796607541758LL, frags[f], members, strlen(members),
                                             &blen);
                assert_non_null(body);
                char *c = malloc(blen);
                cl = event_compact(body, blen, c);
                assert_true(cl > 0 && cl < blen);
                assert_int_equal(c[0], t == EV_GIVE_UP ? 'G' : t == EV_SUPPRESS ? 'S' : 'A');
                if (f == 0 && k == 0)
                    assert_true(cl * 3 < blen * 2);
                assert_int_equal(event_body_type(c, cl), t);
                char *want = event_line("1796607541758-3", body, blen, &l1);
                char *got = event_line("1796607541758-3", c, cl, &l2);
                if (got == NULL || l1 != l2 || memcmp(got, want, l1) != 0)
                    fail_msg("type %d frag %zu members %zu:\n%s%.*s", t, f, k, want, got ? (int)l2 : 6,
                             got ? got : "(null)");
                free(want);
                free(got);
                free(c);
                free(body);
            }
        }
    }
    /* the body apply.lua writes for an address already suppressed */
    static const char lua[] = "Sloyw3vtz,0,550,5.1.1,shard_invalid\nm1\na@b.example";
    size_t l1, l2, blen;
    char *body = event_body_text(EV_SUPPRESS, 1700000000999LL, "\"id\":\"m1\",\"rcpt\":\"a@b.example\"",
                                 ",\"class\":\"hard_invalid\",\"attempt\":0,\"code\":550,\"enhanced\":\"5.1.1\","
                                 "\"reason\":\"suppressed\"",
                                 strlen(",\"class\":\"hard_invalid\",\"attempt\":0,\"code\":550,\"enhanced\":\"5.1.1\","
                                        "\"reason\":\"suppressed\""),
                                 &blen);
    char *want = event_line("1-0", body, blen, &l1);
    char *got = event_line("1-0", lua, sizeof lua - 1, &l2);
    assert_non_null(got);
    assert_int_equal(l1, l2);
    assert_memory_equal(got, want, l1);
    free(want);
    free(got);
    free(body);
    /* not of bounce.c's shape: the generic form */
    static const char *other[] = {
        "{\"type\":\"give_up\",\"at\":1,\"id\":\"m\",\"rcpt\":\"x\",\"class\":\"c\",\"attempt\":0,\"code\":5,\"reason\":\"why\"}",
        "{\"type\":\"give_up\",\"at\":1,\"id\":\"m\",\"rcpt\":\"x\",\"class\":\"c c\",\"attempt\":0,\"code\":5,\"reason\":\"c c\"}",
        "{\"type\":\"sender_alert\",\"at\":1,\"id\":\"m\",\"rcpt\":\"x\",\"class\":\"c\",\"attempt\":0,\"code\":5,\"reason\":\"c\"}",
        "{\"type\":\"suppress\",\"at\":1,\"rcpt\":\"x\",\"id\":\"m\",\"class\":\"c\",\"attempt\":0,\"code\":5,\"reason\":\"c\"}",
    };
    char out[512];
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        size_t n = event_compact(other[i], strlen(other[i]), out);
        assert_true(n > 0);
        assert_true(out[0] >= 'a' && out[0] <= 'z');
    }
    /* malformed positional bodies */
    static const char *bad[] = {
        "G",
        "G1,0,550,5.1.1,ph\nm",
        "G1,0,550,5.1.1,xh\nm\nr@x",
        "G1,0,550,5.1.1,p\nm\nr@x",
        "G1,0,550,5.1.1,ph,1\nm\nr@x",
        "G1,-1,550,,ph\nm\nr@x",
        "G1,0,550,5x,ph\nm\nr@x",
        "G1,0,550,,ph\nm\"\nr@x",
        "S1,0,550,,=h h\nm\nr@x",
        "A1,0,550,,=c\nm\nr@x",
        "A1,0,550,,=c,1,,\"t\nm\nr@x",
        "A1,0,550,,=c,1,d\"x\nm\nr@x",
        "A1,0,550,,=c,-1,\nm\nr@x",
        "A1,0,550,,=c,1,\nm\nrx",
        "A1,0,550,,=c,1,\n\"id\":\"m\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len;
        char *line = event_line("1-0", bad[i], strlen(bad[i]), &len);
        if (line != NULL)
            fail_msg("positional body %zu accepted: %s", i, line);
    }
}

/* A batch entry: written by the head and item writers, read back body by
 * body, each event's id counted down from the entry's. */
static void test_batch(void **state)
{
    const char *bodies[] = {"R1,0,1,greylist\nm1\nu@x", "", "R2,5,3,c\n\"id\":\"q:\\\"\"", "{\"type\":\"retry\"}"};
    char v[512];
    size_t n = event_batch_head(v, 4);
    for (int i = 0; i < 4; i++) {
        n += event_batch_item(v + n, strlen(bodies[i]));
        memcpy(v + n, bodies[i], strlen(bodies[i]));
        n += strlen(bodies[i]);
    }
    assert_true(event_is_batch(v, n));
    assert_false(event_is_batch(bodies[0], strlen(bodies[0])));
    size_t pos;
    assert_int_equal(event_batch_open(v, n, &pos), 4);
    const char *b;
    size_t bl;
    for (int i = 0; i < 4; i++) {
        assert_true(event_batch_next(v, n, &pos, &b, &bl));
        assert_int_equal(bl, strlen(bodies[i]));
        assert_memory_equal(b, bodies[i], bl);
    }
    assert_false(event_batch_next(v, n, &pos, &b, &bl));

    char id[48];
    assert_true(event_batch_eid("1700000000000-12", 4, 0, id, sizeof id));
    assert_string_equal(id, "1700000000000-9");
    assert_true(event_batch_eid("1700000000000-12", 4, 3, id, sizeof id));
    assert_string_equal(id, "1700000000000-12");
    assert_true(event_batch_eid("5-3", 4, 0, id, sizeof id));
    assert_string_equal(id, "5-0");
    assert_false(event_batch_eid("5-2", 4, 0, id, sizeof id)); /* no room below the entry's seq */
    assert_false(event_batch_eid("5-9", 4, 4, id, sizeof id));
    assert_false(event_batch_eid("x-9", 4, 0, id, sizeof id));
    assert_false(event_batch_eid("5-9x", 4, 0, id, sizeof id));

    /* Malformed: no head, a length past the end, a missing colon. */
    const char *bad[] = {"#\n1:a", "#x\n", "#2\n9:ab", "#1\n2ab", "R1,0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = strlen(bad[i]);
        long long k = event_batch_open(bad[i], len, &pos);
        if (k >= 0)
            assert_false(event_batch_next(bad[i], len, &pos, &b, &bl));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fragment_layout),
        cmocka_unit_test(test_fragment_escaping),
        cmocka_unit_test(test_fragment_refuses),
        cmocka_unit_test(test_body_layout),
        cmocka_unit_test(test_line_layout),
        cmocka_unit_test(test_line_refuses),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_body_type),
        cmocka_unit_test(test_retry_compact),
        cmocka_unit_test(test_retry_compact_refuses),
        cmocka_unit_test(test_generic_compact),
        cmocka_unit_test(test_outcome_compact),
        cmocka_unit_test(test_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
