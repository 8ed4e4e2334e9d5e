/* The message record: what the store writes is what load and get read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/record.h"
#include "random_model.h"

/* A record as the store writes a fresh one: header \n who \n item. */
static size_t write_record(char *buf, char state, int64_t due, int attempt, const char *cls, int64_t first,
                           const char *who, size_t who_len, int64_t at, int code, const char *enh)
{
    size_t n = record_header(buf, state, due, attempt, cls, first);
    buf[n++] = '\n';
    memcpy(buf + n, who, who_len);
    n += who_len;
    buf[n++] = '\n';
    n += record_item(buf + n, at, first, code, enh, cls);
    buf[n] = '\0';
    return n;
}

static void test_greylisted_retry_is_small(void **state)
{
    (void)state;
    /* The W1 report: its record must stay within the allocator's 80-byte
     * class (76 bytes of value with Redis's string header). */
    const char *members = "\"id\":\"m199999\",\"rcpt\":\"u199999@d999.example\"";
    const char *who;
    size_t who_len;
    record_who("m199999", 7, "u199999@d999.example", members, &who, &who_len);
    assert_int_equal(who_len, strlen("u199999@d999.example"));
    assert_memory_equal(who, "u199999@d999.example", who_len);
    char buf[512];
    int64_t first = 1763849100000LL;
    size_t n = write_record(buf, 'P', first + 959999, 1, "greylist", first, who, who_len, first, 451, "4.7.1");
    assert_true(n <= 76);
    assert_string_equal(buf, "P959999,1,greylist,1763849100000\nu199999@d999.example\n0,451,4.7.1,greylist");
}

static void test_who_keeps_members_that_are_not_plain(void **state)
{
    (void)state;
    struct {
        const char *id, *rcpt, *members;
    } cases[] = {
        {"m1", "a@b.example", "\"id\":\"m1\",\"rcpt\":\"a@b.example\",\"campaign\":\"c\""},
        {"m\"1", "a@b.example", "\"id\":\"m\\\"1\",\"rcpt\":\"a@b.example\""},
        {"m1", "\"a b\"@b.example", "\"id\":\"m1\",\"rcpt\":\"\\\"a b\\\"@b.example\""},
        {"m1", "j\xc3\xb6rg@b.example", "\"id\":\"m1\",\"rcpt\":\"j\xc3\xb6rg@b.example\""},
        {"m1", "a@b.example", "\"id\":\"m1\",\"rcpt\":\"a@b.example\",\"meta\":{}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *who;
        size_t who_len;
        record_who(cases[i].id, strlen(cases[i].id), cases[i].rcpt, cases[i].members, &who, &who_len);
        assert_ptr_equal(who, cases[i].members);
        assert_int_equal(who_len, strlen(cases[i].members));
    }
}

/* Random records: every field read back as written. */
static void test_random_round_trip(void **state)
{
    (void)state;
    seed_from_env(0x7265636fu);
    static const char *classes[] = {"greylist", "rate_limit", "mailbox_full", "temp_other", "x"};
    for (op = 0; op < 20000; op++) {
        char id[32], rcpt[64], members[256], buf[1024];
        snprintf(id, sizeof id, "m%u", (unsigned)rnd_below(1000000000u));
        snprintf(rcpt, sizeof rcpt, "u%u@d%u.example", (unsigned)rnd_below(100000u), (unsigned)rnd_below(50u));
        bool extra = rnd_below(4) == 0;
        snprintf(members, sizeof members, "\"id\":\"%s\",\"rcpt\":\"%s\"%s", id, rcpt,
                 extra ? ",\"campaign\":\"spring\"" : "");
        const char *who;
        size_t who_len;
        record_who(id, strlen(id), rcpt, members, &who, &who_len);
        char st = rnd_below(2) ? 'P' : 'A';
        int64_t first = 1700000000000LL + (int64_t)rnd_below(1000000000u);
        /* earlier than first only after the clock went back */
        int64_t due = first + (int64_t)rnd_below(300000000u) - (rnd_below(10) == 0 ? 400000000 : 0);
        int attempt = (int)rnd_below(65536);
        const char *cls = classes[rnd_below(5)];
        int code = 400 + (int)rnd_below(200);
        size_t n = write_record(buf, st, due, attempt, cls, first, who, who_len, first, code, "4.2.2");

        struct record rec;
        assert_int_equal(record_parse(buf, n, &rec), 0);
        assert_int_equal(rec.state, st);
        assert_int_equal(rec.due_ms, due);
        assert_int_equal(rec.first_ms, first);
        assert_int_equal(rec.attempt, attempt);
        assert_int_equal(rec.class_len, strlen(cls));
        assert_memory_equal(rec.class_name, cls, rec.class_len);
        assert_int_equal(rec.rcpt_len, strlen(rcpt));
        assert_memory_equal(rec.rcpt, rcpt, rec.rcpt_len);

        json_t *o = record_json(&rec, id, strlen(id));
        assert_string_equal(json_string_value(json_object_get(o, "id")), id);
        assert_string_equal(json_string_value(json_object_get(o, "rcpt")), rcpt);
        assert_int_equal(json_object_get(o, "campaign") != NULL, extra);
        assert_int_equal(json_integer_value(json_object_get(o, "due_at")), due);
        json_t *h = json_array_get(json_object_get(o, "history"), 0);
        assert_int_equal(json_array_size(json_object_get(o, "history")), 1);
        assert_int_equal(json_integer_value(json_object_get(h, "at")), first);
        assert_int_equal(json_integer_value(json_object_get(h, "code")), code);
        assert_string_equal(json_string_value(json_object_get(h, "enhanced")), "4.2.2");
        assert_string_equal(json_string_value(json_object_get(h, "class")), cls);
        json_decref(o);

        /* Truncations are refused or parse within bounds (ASan checks). */
        size_t cut = rnd_below(n);
        char *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        if (record_parse(copy, cut, &rec) == 0)
            json_decref(record_json(&rec, id, strlen(id)));
        free(copy);
    }
}

static void test_history_of_several_bounces(void **state)
{
    (void)state;
    const char *text = "A3600000,2,rate_limit,1763849100000\nu@d.example\n0,451,4.7.1,greylist;-5,421,,rate_limit";
    struct record rec;
    assert_int_equal(record_parse(text, strlen(text), &rec), 0);
    json_t *o = record_json(&rec, "m1", 2);
    json_t *hist = json_object_get(o, "history");
    assert_int_equal(json_array_size(hist), 2);
    json_t *b = json_array_get(hist, 1);
    assert_int_equal(json_integer_value(json_object_get(b, "at")), 1763849100000LL - 5);
    assert_int_equal(json_integer_value(json_object_get(b, "code")), 421);
    assert_null(json_object_get(b, "enhanced"));
    assert_string_equal(json_string_value(json_object_get(b, "class")), "rate_limit");
    assert_string_equal(json_string_value(json_object_get(o, "state")), "awaiting");
    json_decref(o);
}

static void test_records_of_earlier_versions(void **state)
{
    (void)state;
    const char *text = "P1763850000000,1,greylist,1763849100000\n\"id\":\"m1\",\"rcpt\":\"a@b.example\"\n"
                       "[[1763849100000,451,\"4.7.1\",\"greylist\"]]";
    struct record rec;
    assert_int_equal(record_parse(text, strlen(text), &rec), 0);
    assert_int_equal(rec.due_ms, 1763850000000LL);
    assert_int_equal(rec.rcpt_len, strlen("a@b.example"));
    json_t *o = record_json(&rec, "m1", 2);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "m1");
    json_t *h = json_array_get(json_object_get(o, "history"), 0);
    assert_int_equal(json_integer_value(json_object_get(h, "at")), 1763849100000LL);
    assert_string_equal(json_string_value(json_object_get(h, "enhanced")), "4.7.1");
    json_decref(o);
}

static void test_malformed(void **state)
{
    (void)state;
    const char *bad[] = {"", "P", "X1,1,c,1\na\n", "P1,1,,1\na\n", "P1,1,c,1\n\n", "P1,1,c\na\nb", "P--1,1,c,1\na\n", "P1,-1,c,1\na\n",
                         /* a first bounce past any epoch time: the relative times would overflow */
                         "P999999999999,1,c,9223372036854775799\na\n", "P1,1,c,9007199254740992\na\n"};
    struct record rec;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(record_parse(bad[i], strlen(bad[i]), &rec), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greylisted_retry_is_small),
        cmocka_unit_test(test_who_keeps_members_that_are_not_plain),
        cmocka_unit_test(test_random_round_trip),
        cmocka_unit_test(test_history_of_several_bounces),
        cmocka_unit_test(test_records_of_earlier_versions),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
