/*
 * Unit tests of proto/request.c: every op, valid and invalid, through
 * request_parse; the error code and a piece of the message for each bad
 * line; "req" echo on errors; the limits.
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

#include "proto/reply.h"
#include "proto/request.h"

static struct proto_limits lim;

static int parse(const char *line, struct request *r, struct proto_error *err)
{
    return request_parse(line, strlen(line), &lim, r, err);
}

/* Parses a line that must be valid; the caller frees r. */
static void parse_ok(const char *line, struct request *r)
{
    struct proto_error err;
    int rc = parse(line, r, &err);
    if (rc != 0)
        fail_msg("expected %s to parse, got %s: %s", line, err.code, err.message);
}

static void test_limits_default(void **state)
{
    (void)state;
    struct proto_limits l;
    proto_limits_default(&l);
    assert_int_equal(l.max_id, 200);
    assert_int_equal(l.max_rcpt, 320);
    assert_int_equal(l.max_text, 4096);
    assert_int_equal(l.max_meta, 4096);
    assert_int_equal(l.max_campaign, 200);
    assert_int_equal(l.max_group, 64);
    assert_int_equal(l.max_ack_ids, 10000);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(op_name(OP_BOUNCE), "bounce");
    assert_string_equal(op_name(OP_AUTH), "auth");
    for (int t = 0; t < EV__COUNT; t++)
        assert_int_equal(event_type_parse(event_type_name((enum event_type)t)), t);
    assert_int_equal(event_type_parse("retryx"), -1);
    assert_int_equal(event_type_parse(""), -1);
    assert_string_equal(event_type_name(EV_DOMAIN_THROTTLED), "domain_throttled");
}

static void test_bounce_full(void **state)
{
    (void)state;
    struct request r;
    parse_ok("{\"op\":\"bounce\",\"req\":7,\"id\":\"msg-1@x\",\"rcpt\":\"Bob.Smith+tag@Example.COM\","
             "\"code\":451,\"enhanced\":\"4.7.1\",\"text\":\"try again later\",\"campaign\":\"Spring sale 2024\","
             "\"not_before\":1700000000000,\"meta\":{\"tenant\":\"a\",\"n\":[1,2]},\"future_field\":true}",
             &r);
    assert_int_equal(r.op, OP_BOUNCE);
    assert_true(json_is_integer(r.req));
    assert_int_equal(json_integer_value(r.req), 7);
    assert_string_equal(r.id, "msg-1@x");
    assert_int_equal(r.id_len, 7);
    assert_string_equal(r.rcpt, "Bob.Smith+tag@Example.COM");
    assert_int_equal(r.rcpt_len, strlen("Bob.Smith+tag@Example.COM"));
    assert_int_equal(r.code, 451);
    assert_string_equal(r.enhanced, "4.7.1");
    assert_string_equal(r.text, "try again later");
    assert_string_equal(r.campaign, "Spring sale 2024");
    assert_true(r.not_before == 1700000000000LL);
    assert_non_null(r.meta);
    assert_string_equal(json_string_value(json_object_get(r.meta, "tenant")), "a");
    request_free(&r);
    assert_null(r.root);
}

static void test_bounce_minimal(void **state)
{
    (void)state;
    struct request r;
    parse_ok("{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":550}", &r);
    assert_int_equal(r.op, OP_BOUNCE);
    assert_null(r.req);
    assert_null(r.enhanced);
    assert_null(r.text);
    assert_null(r.campaign);
    assert_null(r.meta);
    assert_true(r.not_before == 0);
    request_free(&r);

    /* null and "" stand for "not set" on the optional text fields */
    parse_ok("{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b.c\",\"code\":550,\"enhanced\":\"\",\"text\":null,"
             "\"campaign\":\"\",\"meta\":null,\"not_before\":null}",
             &r);
    assert_null(r.enhanced);
    assert_null(r.text);
    assert_null(r.campaign);
    assert_null(r.meta);
    request_free(&r);
}

static void test_addresses_accepted(void **state)
{
    (void)state;
    static const char *const good[] = {
        "user@example.com",
        "u@x",
        "first.last+folder@sub.example.co.uk",
        "o'brien@example.ie",
        "a!#$%&'*+-/=?^_`{|}~@example.com",
        "a..b@example.com",                 /* wrong by the RFC, delivered by some */
        "bounce-123=user=example.org@esp.example.net",
        "j\xc3\xbcrgen@m\xc3\xbcnchen.de",  /* SMTPUTF8 local part and an IDN */
        "user@xn--mnchen-3ya.de",
        "user@\xe4\xbe\x8b\xe3\x81\x88.\xe3\x83\x86\xe3\x82\xb9\xe3\x83\x88",
        "user@123.example",
        "a\\b@example.com",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char line[512];
        struct request r;
        json_t *s = json_string(good[i]);
        char *enc = json_dumps(s, JSON_ENCODE_ANY);
        snprintf(line, sizeof line, "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":%s,\"code\":450}", enc);
        free(enc);
        json_decref(s);
        parse_ok(line, &r);
        assert_string_equal(r.rcpt, good[i]);
        request_free(&r);
    }
}

struct bad_case {
    const char *line;
    const char *code;
    const char *substr;
};

#define B(body) "{\"op\":\"bounce\",\"id\":\"m1\",\"rcpt\":\"a@example.com\",\"code\":550" body "}"

static const struct bad_case bad[] = {
    /* not JSON, not an object */
    {"", ERR_BAD_REQUEST, "empty line"},
    {"   \r", ERR_BAD_REQUEST, "empty line"},
    {"hello", ERR_BAD_REQUEST, "invalid JSON at column"},
    {"{\"op\":\"ping\"", ERR_BAD_REQUEST, "invalid JSON"},
    {"{\"op\":\"ping\"} x", ERR_BAD_REQUEST, "invalid JSON"},
    {"[1,2]", ERR_BAD_REQUEST, "must be a JSON object"},
    {"\"ping\"", ERR_BAD_REQUEST, "must be a JSON object"},
    {"42", ERR_BAD_REQUEST, "must be a JSON object"},
    {"{\"op\":\"ping\",\"op\":\"stats\"}", ERR_BAD_REQUEST, "duplicate"},
    {"{\"op\":\"ping\",\"x\":\"\\u0000\"}", ERR_BAD_REQUEST, "invalid JSON"},
    {"{\"op\":\"ping\",\"x\":\"\xff\"}", ERR_BAD_REQUEST, "invalid JSON"},
    /* op */
    {"{}", ERR_BAD_REQUEST, "field 'op' is required"},
    {"{\"op\":1}", ERR_BAD_REQUEST, "field 'op' must be a string"},
    {"{\"op\":null}", ERR_BAD_REQUEST, "field 'op' must be a string"},
    {"{\"op\":\"bouncee\"}", ERR_UNKNOWN_OP, "unknown op 'bouncee'"},
    {"{\"op\":\"\"}", ERR_UNKNOWN_OP, "unknown op ''"},
    {"{\"op\":\"PING\"}", ERR_UNKNOWN_OP, "unknown op 'PING'"},
    {"{\"op\":\"ping\\u0000x\"}", ERR_BAD_REQUEST, "invalid JSON"},
    /* req */
    {"{\"op\":\"ping\",\"req\":{}}", ERR_BAD_REQUEST, "field 'req' must be a string, a number"},
    {"{\"op\":\"ping\",\"req\":[1]}", ERR_BAD_REQUEST, "field 'req'"},
    /* bounce: id */
    {"{\"op\":\"bounce\",\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST, "field 'id' is required"},
    {"{\"op\":\"bounce\",\"id\":null,\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST, "field 'id' is required"},
    {"{\"op\":\"bounce\",\"id\":5,\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST, "field 'id' must be a string"},
    {"{\"op\":\"bounce\",\"id\":\"\",\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST,
     "field 'id' must not be empty"},
    {"{\"op\":\"bounce\",\"id\":\"a b\",\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST,
     "printable ASCII without spaces (byte 1 is 0x20)"},
    {"{\"op\":\"bounce\",\"id\":\"a\\tb\",\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST, "0x09"},
    {"{\"op\":\"bounce\",\"id\":\"\xc3\xa9\",\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST, "0xc3"},
    {"{\"op\":\"bounce\",\"id\":\"a\\u007fb\",\"rcpt\":\"a@b\",\"code\":550}", ERR_BAD_REQUEST, "0x7f"},
    /* bounce: rcpt */
    {"{\"op\":\"bounce\",\"id\":\"a\",\"code\":550}", ERR_BAD_REQUEST, "field 'rcpt' is required"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":[],\"code\":550}", ERR_BAD_REQUEST, "field 'rcpt' must be a string"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"\",\"code\":550}", ERR_BAD_REQUEST, "must not be empty"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"nobody\",\"code\":550}", ERR_BAD_REQUEST, "there is no '@'"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"@example.com\",\"code\":550}", ERR_BAD_REQUEST,
     "local part is empty"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@\",\"code\":550}", ERR_BAD_REQUEST, "domain is empty"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b@c\",\"code\":550}", ERR_BAD_REQUEST, "more than one '@'"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"\\\"a b\\\"@c.com\",\"code\":550}", ERR_BAD_REQUEST,
     "quoted local parts"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a b@c.com\",\"code\":550}", ERR_BAD_REQUEST, "space"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a\\u0001b@c.com\",\"code\":550}", ERR_BAD_REQUEST,
     "control character"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a\\u200bb@c.com\",\"code\":550}", ERR_BAD_REQUEST,
     "control character"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"<a@c.com>\",\"code\":550}", ERR_BAD_REQUEST, "angle brackets"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c.com>\",\"code\":550}", ERR_BAD_REQUEST, "angle brackets"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c..com\",\"code\":550}", ERR_BAD_REQUEST, "empty label"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@.c.com\",\"code\":550}", ERR_BAD_REQUEST, "empty label"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c.com.\",\"code\":550}", ERR_BAD_REQUEST, "empty label"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@-c.com\",\"code\":550}", ERR_BAD_REQUEST, "starts or ends"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c-.com\",\"code\":550}", ERR_BAD_REQUEST, "starts or ends"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c_d.com\",\"code\":550}", ERR_BAD_REQUEST,
     "only letters, digits"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c.com;rm\",\"code\":550}", ERR_BAD_REQUEST,
     "only letters, digits"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@c com\",\"code\":550}", ERR_BAD_REQUEST, "only letters"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@[192.0.2.1]\",\"code\":550}", ERR_BAD_REQUEST,
     "address literals"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@x\\u00a0y.com\",\"code\":550}", ERR_BAD_REQUEST,
     "not a letter"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com\",\"code\":550}",
     ERR_BAD_REQUEST, "longer than 63"},
    /* bounce: code */
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\"}", ERR_BAD_REQUEST, "field 'code' is required"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":\"550\"}", ERR_BAD_REQUEST,
     "field 'code' must be an integer"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":550.0}", ERR_BAD_REQUEST,
     "field 'code' must be an integer"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":true}", ERR_BAD_REQUEST,
     "field 'code' must be an integer"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":250}", ERR_BAD_REQUEST,
     "'code' must be 4xx or 5xx"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":354}", ERR_BAD_REQUEST,
     "'code' must be 4xx or 5xx"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":600}", ERR_BAD_REQUEST, "(200..599), not 600"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":199}", ERR_BAD_REQUEST, "(200..599)"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":-550}", ERR_BAD_REQUEST, "(200..599)"},
    {"{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"a@b\",\"code\":4294967746}", ERR_BAD_REQUEST, "(200..599)"},
    /* bounce: enhanced */
    {B(",\"enhanced\":4.1"), ERR_BAD_REQUEST, "field 'enhanced' must be a string"},
    {B(",\"enhanced\":\"5.1\""), ERR_BAD_REQUEST, "enhanced status code X.Y.Z"},
    {B(",\"enhanced\":\"3.1.1\""), ERR_BAD_REQUEST, "not '3.1.1'"},
    {B(",\"enhanced\":\"#5.1.1\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\" 5.1.1\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5.1.1 \""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5.1.1.1\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5.1000.1\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5.1.1000\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5..1\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5.1.\""), ERR_BAD_REQUEST, "X.Y.Z"},
    {B(",\"enhanced\":\"5.a.1\""), ERR_BAD_REQUEST, "X.Y.Z"},
    /* bounce: text, campaign, not_before, meta */
    {B(",\"text\":550"), ERR_BAD_REQUEST, "field 'text' must be a string"},
    {B(",\"campaign\":1"), ERR_BAD_REQUEST, "field 'campaign' must be a string"},
    {B(",\"campaign\":\"a\\nb\""), ERR_BAD_REQUEST, "field 'campaign' must not hold control characters"},
    {B(",\"campaign\":\"a\\u202eb\""), ERR_BAD_REQUEST, "control characters"},
    {B(",\"not_before\":\"soon\""), ERR_BAD_REQUEST, "field 'not_before' must be an integer"},
    {B(",\"not_before\":1.7e12"), ERR_BAD_REQUEST, "field 'not_before' must be an integer"},
    {B(",\"not_before\":0"), ERR_BAD_REQUEST, "epoch milliseconds"},
    {B(",\"not_before\":-5"), ERR_BAD_REQUEST, "epoch milliseconds"},
    {B(",\"not_before\":9007199254740992"), ERR_BAD_REQUEST, "epoch milliseconds"},
    {B(",\"meta\":[1]"), ERR_BAD_REQUEST, "field 'meta' must be an object"},
    {B(",\"meta\":\"x\""), ERR_BAD_REQUEST, "field 'meta' must be an object"},
    {B(",\"meta\":{\"a\":1,\"a\":2}"), ERR_BAD_REQUEST, "duplicate"},
    /* delivered, cancel, get */
    {"{\"op\":\"delivered\"}", ERR_BAD_REQUEST, "field 'id' is required"},
    {"{\"op\":\"delivered\",\"id\":\"a\",\"rcpt\":\"nope\"}", ERR_BAD_REQUEST, "field 'rcpt' must be an address"},
    {"{\"op\":\"delivered\",\"id\":\"a\",\"rcpt\":7}", ERR_BAD_REQUEST, "field 'rcpt' must be a string"},
    {"{\"op\":\"cancel\"}", ERR_BAD_REQUEST, "field 'id' is required"},
    {"{\"op\":\"cancel\",\"id\":\"a\\\"b c\"}", ERR_BAD_REQUEST, "without spaces"},
    {"{\"op\":\"get\",\"id\":[\"a\"]}", ERR_BAD_REQUEST, "field 'id' must be a string"},
    /* classify */
    {"{\"op\":\"classify\"}", ERR_BAD_REQUEST, "field 'code' is required"},
    {"{\"op\":\"classify\",\"enhanced\":\"5.1.1\"}", ERR_BAD_REQUEST, "field 'code' is required"},
    {"{\"op\":\"classify\",\"code\":\"550\"}", ERR_BAD_REQUEST, "field 'code' must be an integer"},
    {"{\"op\":\"classify\",\"code\":700}", ERR_BAD_REQUEST, "200..599"},
    {"{\"op\":\"classify\",\"code\":550,\"enhanced\":\"5-1-1\"}", ERR_BAD_REQUEST, "X.Y.Z"},
    /* subscribe */
    {"{\"op\":\"subscribe\"}", ERR_BAD_REQUEST, "field 'group' is required"},
    {"{\"op\":\"subscribe\",\"group\":\"\"}", ERR_BAD_REQUEST, "field 'group' must not be empty"},
    {"{\"op\":\"subscribe\",\"group\":3}", ERR_BAD_REQUEST, "field 'group' must be a string"},
    {"{\"op\":\"subscribe\",\"group\":\"a b\"}", ERR_BAD_REQUEST, "only letters, digits and '_.:-'"},
    {"{\"op\":\"subscribe\",\"group\":\"a/b\"}", ERR_BAD_REQUEST, "only letters"},
    {"{\"op\":\"subscribe\",\"group\":\"a{b}\"}", ERR_BAD_REQUEST, "only letters"},
    {"{\"op\":\"subscribe\",\"group\":\"g\",\"types\":\"retry\"}", ERR_BAD_REQUEST, "must be an array"},
    {"{\"op\":\"subscribe\",\"group\":\"g\",\"types\":[]}", ERR_BAD_REQUEST, "must not be empty"},
    {"{\"op\":\"subscribe\",\"group\":\"g\",\"types\":[1]}", ERR_BAD_REQUEST, "array of event type names"},
    {"{\"op\":\"subscribe\",\"group\":\"g\",\"types\":[\"retry\",\"bounce\"]}", ERR_BAD_REQUEST,
     "unknown event type 'bounce'"},
    /* ack */
    {"{\"op\":\"ack\"}", ERR_BAD_REQUEST, "field 'ids' is required"},
    {"{\"op\":\"ack\",\"ids\":\"1-0\"}", ERR_BAD_REQUEST, "must be an array"},
    {"{\"op\":\"ack\",\"ids\":[]}", ERR_BAD_REQUEST, "must not be empty"},
    {"{\"op\":\"ack\",\"ids\":[\"1-0\",2]}", ERR_BAD_REQUEST, "element 1 must be a string"},
    {"{\"op\":\"ack\",\"ids\":[\"1-0\",\"x\"]}", ERR_BAD_REQUEST, "element 1 must be an event id"},
    {"{\"op\":\"ack\",\"ids\":[\"1\"]}", ERR_BAD_REQUEST, "element 0 must be an event id"},
    {"{\"op\":\"ack\",\"ids\":[\"1-\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"-1\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"1-2-3\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"1-2 \"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"*\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"123456789012345678901-0\"]}", ERR_BAD_REQUEST, "event id"},
    /* shard-qualified ids (shards apart on a Redis Cluster): <shard>/<id> */
    {"{\"op\":\"ack\",\"ids\":[\"/1-0\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"100/1-0\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"3/\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"3/x-0\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"3//1-0\"]}", ERR_BAD_REQUEST, "event id"},
    {"{\"op\":\"ack\",\"ids\":[\"a/1-0\"]}", ERR_BAD_REQUEST, "event id"},
    /* auth */
    {"{\"op\":\"auth\"}", ERR_BAD_REQUEST, "field 'token' is required"},
    {"{\"op\":\"auth\",\"token\":1234}", ERR_BAD_REQUEST, "field 'token' must be a string"},
    {"{\"op\":\"auth\",\"token\":\"\"}", ERR_BAD_REQUEST, "must not be empty"},
    /* get by recipient, unsuppress, suppressed, domain */
    {"{\"op\":\"get\"}", ERR_BAD_REQUEST, "field 'id' is required"},
    {"{\"op\":\"get\",\"rcpt\":\"nope\"}", ERR_BAD_REQUEST, "field 'rcpt' must be an address"},
    {"{\"op\":\"unsuppress\"}", ERR_BAD_REQUEST, "field 'rcpt' is required"},
    {"{\"op\":\"unsuppress\",\"rcpt\":\"a@b@c\"}", ERR_BAD_REQUEST, "more than one '@'"},
    {"{\"op\":\"suppressed\",\"cursor\":12}", ERR_BAD_REQUEST, "field 'cursor' must be a string"},
    {"{\"op\":\"suppressed\",\"cursor\":\"\"}", ERR_BAD_REQUEST, "previous page"},
    {"{\"op\":\"suppressed\",\"cursor\":\"-1\"}", ERR_BAD_REQUEST, "decimal digits"},
    {"{\"op\":\"suppressed\",\"cursor\":\"123456789012345678901\"}", ERR_TOO_LARGE, "field 'cursor'"},
    /* with shards on a Redis Cluster: "<shard>.<cursor>" */
    {"{\"op\":\"suppressed\",\"cursor\":\".5\"}", ERR_BAD_REQUEST, "decimal digits"},
    {"{\"op\":\"suppressed\",\"cursor\":\"3.\"}", ERR_BAD_REQUEST, "decimal digits"},
    {"{\"op\":\"suppressed\",\"cursor\":\"123.5\"}", ERR_BAD_REQUEST, "decimal digits"},
    {"{\"op\":\"suppressed\",\"cursor\":\"3.5.1\"}", ERR_BAD_REQUEST, "decimal digits"},
    {"{\"op\":\"suppressed\",\"count\":0}", ERR_BAD_REQUEST, "1..1000"},
    {"{\"op\":\"suppressed\",\"count\":1001}", ERR_BAD_REQUEST, "1..1000"},
    {"{\"op\":\"suppressed\",\"count\":\"5\"}", ERR_BAD_REQUEST, "must be an integer"},
    {"{\"op\":\"domain\"}", ERR_BAD_REQUEST, "field 'domain' is required"},
    {"{\"op\":\"domain\",\"domain\":\"\"}", ERR_BAD_REQUEST, "must not be empty"},
    {"{\"op\":\"domain\",\"domain\":\"a..b\"}", ERR_BAD_REQUEST, "empty label"},
    {"{\"op\":\"domain\",\"domain\":\"x@y.z\"}", ERR_BAD_REQUEST, "must be a host name"},
    {"{\"op\":\"domain\",\"domain\":\"rcpt:x\"}", ERR_BAD_REQUEST, "must be a host name"},
};

static void test_bad_lines(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct request r;
        struct proto_error err;
        int rc = parse(bad[i].line, &r, &err);
        if (rc != -1)
            fail_msg("case %zu: %s parsed, expected %s", i, bad[i].line, bad[i].code);
        if (err.code == NULL || strcmp(err.code, bad[i].code) != 0)
            fail_msg("case %zu: %s: code %s, expected %s (%s)", i, bad[i].line, err.code ? err.code : "(null)",
                     bad[i].code, err.message);
        if (strstr(err.message, bad[i].substr) == NULL)
            fail_msg("case %zu: %s: message \"%s\" lacks \"%s\"", i, bad[i].line, err.message, bad[i].substr);
        /* a failed parse leaves no validated-looking field behind */
        assert_null(r.id);
        assert_null(r.rcpt);
        assert_null(r.meta);
        request_free(&r);
    }
}

static void test_json_error_has_column(void **state)
{
    (void)state;
    struct request r;
    struct proto_error err;
    assert_int_equal(parse("{\"op\":\"ping\",,}", &r, &err), -1);
    assert_string_equal(err.code, ERR_BAD_REQUEST);
    assert_non_null(strstr(err.message, "column 14"));
    request_free(&r);
}

static void test_other_ops_valid(void **state)
{
    (void)state;
    struct request r;

    parse_ok("{\"op\":\"delivered\",\"id\":\"m1\"}", &r);
    assert_int_equal(r.op, OP_DELIVERED);
    assert_string_equal(r.id, "m1");
    assert_null(r.rcpt);
    request_free(&r);

    parse_ok("{\"op\":\"delivered\",\"id\":\"m1\",\"rcpt\":\"x@y.z\"}", &r);
    assert_string_equal(r.rcpt, "x@y.z");
    request_free(&r);

    parse_ok("{\"op\":\"cancel\",\"id\":\"<abc$def@mx>\",\"req\":\"c1\"}", &r);
    assert_int_equal(r.op, OP_CANCEL);
    assert_string_equal(r.id, "<abc$def@mx>");
    assert_string_equal(json_string_value(r.req), "c1");
    request_free(&r);

    parse_ok("{\"op\":\"get\",\"id\":\"a\\\"b\\\\c\"}", &r);
    assert_int_equal(r.op, OP_GET);
    assert_string_equal(r.id, "a\"b\\c");
    request_free(&r);

    parse_ok("{\"op\":\"classify\",\"code\":550,\"enhanced\":\"5.1.1\",\"text\":\"no such user\"}", &r);
    assert_int_equal(r.op, OP_CLASSIFY);
    assert_int_equal(r.code, 550);
    assert_string_equal(r.enhanced, "5.1.1");
    assert_string_equal(r.text, "no such user");
    request_free(&r);

    /* classify without a code: the classifier reads it from the text */
    parse_ok("{\"op\":\"classify\",\"text\":\"421 4.7.0 try again later\"}", &r);
    assert_int_equal(r.code, 0);
    assert_non_null(r.text);
    request_free(&r);

    parse_ok("{\"op\":\"classify\",\"code\":250}", &r); /* allowed in a dry run */
    assert_int_equal(r.code, 250);
    request_free(&r);

    parse_ok("{\"op\":\"stats\"}", &r);
    assert_int_equal(r.op, OP_STATS);
    request_free(&r);

    parse_ok(" {\"op\" : \"ping\", \"req\": null } \r", &r);
    assert_int_equal(r.op, OP_PING);
    assert_true(json_is_null(r.req));
    request_free(&r);

    parse_ok("{\"op\":\"subscribe\",\"group\":\"senders.eu-1:a_b\"}", &r);
    assert_int_equal(r.op, OP_SUBSCRIBE);
    assert_string_equal(r.group, "senders.eu-1:a_b");
    assert_int_equal(r.types, EV_ALL);
    request_free(&r);

    parse_ok("{\"op\":\"subscribe\",\"group\":\"g\",\"types\":[\"retry\",\"sender_alert\",\"retry\"]}", &r);
    assert_int_equal(r.types, (1u << EV_RETRY) | (1u << EV_SENDER_ALERT));
    request_free(&r);

    parse_ok("{\"op\":\"ack\",\"ids\":[\"1700000000000-0\",\"1700000000001-15\"]}", &r);
    assert_int_equal(r.op, OP_ACK);
    assert_int_equal(json_array_size(r.ids), 2);
    request_free(&r);
    parse_ok("{\"op\":\"ack\",\"ids\":[\"0/1700000000000-0\",\"63/1700000000001-15\",\"1-0\"]}", &r);
    assert_int_equal(json_array_size(r.ids), 3);
    request_free(&r);

    parse_ok("{\"op\":\"auth\",\"token\":\"s3cret with spaces\"}", &r);
    assert_int_equal(r.op, OP_AUTH);
    assert_string_equal(r.token, "s3cret with spaces");
    request_free(&r);
}

static void test_recipient_and_domain_ops(void **state)
{
    (void)state;
    struct request r;

    parse_ok("{\"op\":\"get\",\"rcpt\":\"Alice@Example.com\"}", &r);
    assert_int_equal(r.op, OP_GET);
    assert_null(r.id);
    assert_string_equal(r.rcpt, "Alice@Example.com");
    request_free(&r);

    /* with an id, the message; rcpt is not looked at */
    parse_ok("{\"op\":\"get\",\"id\":\"m1\",\"rcpt\":\"x@y.z\"}", &r);
    assert_string_equal(r.id, "m1");
    assert_null(r.rcpt);
    request_free(&r);

    parse_ok("{\"op\":\"unsuppress\",\"rcpt\":\"bob@example.org\",\"req\":7}", &r);
    assert_int_equal(r.op, OP_UNSUPPRESS);
    assert_string_equal(r.rcpt, "bob@example.org");
    request_free(&r);

    parse_ok("{\"op\":\"suppressed\"}", &r);
    assert_int_equal(r.op, OP_SUPPRESSED);
    assert_string_equal(r.cursor, "0");
    assert_int_equal(r.count, 100);
    request_free(&r);

    parse_ok("{\"op\":\"suppressed\",\"cursor\":\"18446744073709551615\",\"count\":1000}", &r);
    assert_string_equal(r.cursor, "18446744073709551615");
    assert_int_equal(r.count, 1000);
    request_free(&r);
    parse_ok("{\"op\":\"suppressed\",\"cursor\":\"23.18446744073709551615\"}", &r);
    assert_string_equal(r.cursor, "23.18446744073709551615");
    request_free(&r);

    parse_ok("{\"op\":\"domain\",\"domain\":\"Mail.Example.COM\"}", &r);
    assert_int_equal(r.op, OP_DOMAIN);
    assert_string_equal(r.domain, "Mail.Example.COM");
    assert_int_equal(r.domain_len, 16);
    request_free(&r);

    parse_ok("{\"op\":\"domain\",\"domain\":\"m\u00fcnchen.de\"}", &r);
    assert_string_equal(r.domain, "m\xc3\xbcnchen.de");
    request_free(&r);

    assert_string_equal(op_name(OP_UNSUPPRESS), "unsuppress");
    assert_string_equal(op_name(OP_SUPPRESSED), "suppressed");
    assert_string_equal(op_name(OP_DOMAIN), "domain");
}

static void test_req_scalars(void **state)
{
    (void)state;
    static const char *const reqs[] = {"\"abc\"", "12", "-1.5", "true", "false", "null", "\"\""};
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        char line[128];
        struct request r;
        snprintf(line, sizeof line, "{\"op\":\"ping\",\"req\":%s}", reqs[i]);
        parse_ok(line, &r);
        assert_non_null(r.req);
        char *enc = json_dumps(r.req, JSON_ENCODE_ANY | JSON_COMPACT);
        json_t *want = json_loads(reqs[i], JSON_DECODE_ANY, NULL);
        assert_true(json_equal(r.req, want));
        free(enc);
        json_decref(want);
        request_free(&r);
    }
}

/* The req of a bad request is kept, so the error reply can echo it. */
static void test_req_echo_on_error(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "{\"req\":\"r-1\",\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"bad\",\"code\":550}",
        "{\"req\":\"r-1\",\"op\":\"nosuch\"}",
        "{\"req\":\"r-1\"}",
        "{\"op\":\"ack\",\"ids\":[],\"req\":\"r-1\"}",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct request r;
        struct proto_error err;
        size_t len;
        assert_int_equal(parse(lines[i], &r, &err), -1);
        assert_non_null(r.req);
        assert_string_equal(json_string_value(r.req), "r-1");
        char *line = reply_error(r.req, err.code, err.message, &len);
        assert_non_null(line);
        assert_int_equal(line[len - 1], '\n');
        json_t *o = json_loadb(line, len, 0, NULL);
        assert_non_null(o);
        assert_string_equal(json_string_value(json_object_get(o, "req")), "r-1");
        assert_true(json_is_false(json_object_get(o, "ok")));
        assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "code")), err.code);
        json_decref(o);
        free(line);
        request_free(&r);
    }

    /* An object req is refused and not echoed; nor is anything from
     * a line that is not JSON. */
    struct request r;
    struct proto_error err;
    assert_int_equal(parse("{\"req\":{\"a\":1},\"op\":\"ping\"}", &r, &err), -1);
    assert_null(r.req);
    request_free(&r);
    assert_int_equal(parse("{\"req\":1,\"op\":\"ping\"", &r, &err), -1);
    assert_null(r.req);
    request_free(&r);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void expect_error(const char *line, const char *code, const char *substr)
{
    struct request r;
    struct proto_error err;
    if (parse(line, &r, &err) != -1)
        fail_msg("expected an error for a %zu-byte line", strlen(line));
    assert_string_equal(err.code, code);
    if (strstr(err.message, substr) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err.message, substr);
    request_free(&r);
}

static void test_limits(void **state)
{
    (void)state;
    char line[16384];
    struct request r;
    char *s;

    /* id: 200 bytes is fine, 201 is too large */
    s = repeat('i', 200);
    snprintf(line, sizeof line, "{\"op\":\"get\",\"id\":\"%s\"}", s);
    parse_ok(line, &r);
    assert_int_equal(r.id_len, 200);
    request_free(&r);
    free(s);
    s = repeat('i', 201);
    snprintf(line, sizeof line, "{\"op\":\"get\",\"id\":\"%s\"}", s);
    expect_error(line, ERR_TOO_LARGE, "field 'id' is 201 bytes, the limit is 200");
    free(s);

    /* text */
    s = repeat('t', 4096);
    snprintf(line, sizeof line, B(",\"text\":\"%s\""), s);
    parse_ok(line, &r);
    request_free(&r);
    free(s);
    s = repeat('t', 5000);
    snprintf(line, sizeof line, B(",\"text\":\"%s\""), s);
    expect_error(line, ERR_TOO_LARGE, "field 'text' is 5000 bytes, the limit is 4096");
    free(s);

    /* multi-byte characters count in bytes */
    s = malloc(2 * 2049 + 1);
    for (int i = 0; i < 2049; i++)
        memcpy(s + 2 * i, "\xc3\xa9", 2);
    s[2 * 2049] = '\0';
    snprintf(line, sizeof line, B(",\"text\":\"%s\""), s);
    expect_error(line, ERR_TOO_LARGE, "field 'text' is 4098 bytes");
    free(s);

    /* campaign */
    s = repeat('c', 201);
    snprintf(line, sizeof line, B(",\"campaign\":\"%s\""), s);
    expect_error(line, ERR_TOO_LARGE, "field 'campaign' is 201 bytes, the limit is 200");
    free(s);

    /* rcpt: 320 fine, 321 too large */
    s = repeat('r', 320 - 12);
    snprintf(line, sizeof line, "{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"%s@example.com\",\"code\":450}", s);
    parse_ok(line, &r);
    assert_int_equal(r.rcpt_len, 320);
    request_free(&r);
    free(s);
    s = repeat('r', 321 - 12);
    snprintf(line, sizeof line, "{\"op\":\"bounce\",\"id\":\"a\",\"rcpt\":\"%s@example.com\",\"code\":450}", s);
    expect_error(line, ERR_TOO_LARGE, "field 'rcpt' is 321 bytes, the limit is 320");
    free(s);

    /* meta: measured as compact JSON; whitespace in the line does not count */
    s = repeat('m', 4096 - 8); /* {"k":"<s>"} is 8 bytes + s */
    snprintf(line, sizeof line, B(",\"meta\" : { \"k\" :   \"%s\" }"), s);
    parse_ok(line, &r);
    assert_non_null(r.meta);
    request_free(&r);
    free(s);
    s = repeat('m', 4096 - 7);
    snprintf(line, sizeof line, B(",\"meta\":{\"k\":\"%s\"}"), s);
    expect_error(line, ERR_TOO_LARGE, "field 'meta' is 4097 bytes as compact JSON, the limit is 4096");
    free(s);

    /* group */
    s = repeat('g', 65);
    snprintf(line, sizeof line, "{\"op\":\"subscribe\",\"group\":\"%s\"}", s);
    expect_error(line, ERR_TOO_LARGE, "field 'group' is 65 bytes, the limit is 64");
    free(s);

    /* not_before: the largest accepted value */
    parse_ok(B(",\"not_before\":9007199254740991"), &r);
    assert_true(r.not_before == 9007199254740991LL);
    request_free(&r);
}

static void test_limits_configurable(void **state)
{
    (void)state;
    struct proto_limits small;
    struct request r;
    struct proto_error err;
    char *line;
    size_t n = 0;

    proto_limits_default(&small);
    small.max_id = 3;
    small.max_ack_ids = 2;
    const char *l1 = "{\"op\":\"get\",\"id\":\"abcd\"}";
    assert_int_equal(request_parse(l1, strlen(l1), &small, &r, &err), -1);
    assert_string_equal(err.code, ERR_TOO_LARGE);
    request_free(&r);
    const char *l2 = "{\"op\":\"ack\",\"ids\":[\"1-1\",\"1-2\",\"1-3\"]}";
    assert_int_equal(request_parse(l2, strlen(l2), &small, &r, &err), -1);
    assert_string_equal(err.code, ERR_TOO_LARGE);
    assert_non_null(strstr(err.message, "3 elements, the limit is 2"));
    request_free(&r);

    /* 10001 ack ids with the default limits */
    line = malloc(10001 * 6 + 64);
    n += (size_t)sprintf(line, "{\"op\":\"ack\",\"ids\":[");
    for (int i = 0; i < 10001; i++)
        n += (size_t)sprintf(line + n, "%s\"1-%d\"", i ? "," : "", i % 10);
    sprintf(line + n, "]}");
    expect_error(line, ERR_TOO_LARGE, "10001 elements, the limit is 10000");
    free(line);
}

/* The length argument is honoured: the line need not be NUL-terminated,
 * and bytes past len are not read. */
static void test_length_not_nul(void **state)
{
    (void)state;
    const char buf[] = "{\"op\":\"ping\"}{\"op\":\"stats\"}";
    struct request r;
    struct proto_error err;
    assert_int_equal(request_parse(buf, 13, &lim, &r, &err), 0);
    assert_int_equal(r.op, OP_PING);
    request_free(&r);
    assert_int_equal(request_parse(buf, 12, &lim, &r, &err), -1);
    request_free(&r);
    assert_int_equal(request_parse(buf, 0, &lim, &r, &err), -1);
    assert_non_null(strstr(err.message, "empty line"));
    request_free(&r);
}

/* Messages that quote client input stay printable and valid UTF-8. */
static void test_messages_sanitized(void **state)
{
    (void)state;
    struct request r;
    struct proto_error err;
    const char *line = "{\"op\":\"b\\u0001\\n\xc3\xa9oooooooooooooooooooooooooooooooooooooooooooooooooooooo\"}";
    assert_int_equal(parse(line, &r, &err), -1);
    assert_string_equal(err.code, ERR_UNKNOWN_OP);
    for (const char *p = err.message; *p; p++)
        assert_true((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);
    assert_non_null(strstr(err.message, "..."));
    json_t *s = json_string(err.message);
    assert_non_null(s);
    json_decref(s);
    request_free(&r);

    char text[] = "ok \xff\xfe bad \xc3 cut \xe2\x82\xac euro \x01";
    proto_text_sanitize(text);
    assert_string_equal(text, "ok ?? bad ? cut \xe2\x82\xac euro ?");
}

/* The exact bytes of replies: "ok" first, "req" second, one '\n'. */
static void test_reply_ok_layout(void **state)
{
    (void)state;
    size_t len;
    char *line;

    line = reply_ok(NULL, NULL, &len);
    assert_string_equal(line, "{\"ok\":true}\n");
    assert_int_equal(len, strlen(line));
    free(line);

    json_t *req = json_string("r1");
    line = reply_ok(json_object(), req, &len);
    assert_string_equal(line, "{\"ok\":true,\"req\":\"r1\"}\n");
    free(line);

    json_t *o = json_pack("{s:s, s:i, s:b, s:[i,i], s:{s:n}}", "id", "m1", "attempt", 2, "found", 1, "list", 1, 2,
                          "nested", "x");
    line = reply_ok(o, req, &len);
    assert_string_equal(line, "{\"ok\":true,\"req\":\"r1\",\"id\":\"m1\",\"attempt\":2,\"found\":true,"
                              "\"list\":[1,2],\"nested\":{\"x\":null}}\n");
    assert_int_equal(len, strlen(line));
    free(line);
    /* req is borrowed: still ours */
    assert_string_equal(json_string_value(req), "r1");
    json_decref(req);

    /* the head wins over members of the same names */
    o = json_pack("{s:b, s:s, s:i}", "ok", 0, "req", "fake", "n", 1);
    req = json_integer(-3);
    line = reply_ok(o, req, &len);
    assert_string_equal(line, "{\"ok\":true,\"req\":-3,\"n\":1}\n");
    free(line);
    json_decref(req);

    /* not an object: refused, and still stolen (no leak under ASan) */
    assert_null(reply_ok(json_integer(1), NULL, &len));
}

static void test_reply_no_raw_newline(void **state)
{
    (void)state;
    size_t len;
    json_t *o = json_pack("{s:s, s:s}", "text", "line one\nline two\r\n\ttab \xe2\x80\xa8 sep", "q", "\"\\");
    json_t *copy = json_deep_copy(o);
    json_t *req = json_string("a\nb");
    char *line = reply_ok(o, req, &len);
    assert_non_null(line);
    assert_ptr_equal(memchr(line, '\n', len), line + len - 1);
    json_t *back = json_loadb(line, len, 0, NULL);
    assert_non_null(back);
    assert_string_equal(json_string_value(json_object_get(back, "text")),
                        json_string_value(json_object_get(copy, "text")));
    assert_string_equal(json_string_value(json_object_get(back, "req")), "a\nb");
    json_decref(back);
    json_decref(copy);
    json_decref(req);
    free(line);

    line = reply_error(NULL, ERR_BAD_REQUEST, "two\nlines", &len);
    assert_ptr_equal(memchr(line, '\n', len), line + len - 1);
    free(line);
}

static void test_reply_error_layout(void **state)
{
    (void)state;
    size_t len;
    char *line;
    json_t *req = json_real(1.5);

    line = reply_error(NULL, ERR_NOT_FOUND, "no such id", &len);
    assert_string_equal(line, "{\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"no such id\"}}\n");
    assert_int_equal(len, strlen(line));
    free(line);

    line = reply_error(req, ERR_UNAVAILABLE, "redis is down", &len);
    assert_string_equal(line, "{\"ok\":false,\"req\":1.5,\"error\":{\"code\":\"unavailable\","
                              "\"message\":\"redis is down\"}}\n");
    free(line);
    json_decref(req);

    /* a message quoting bytes that are not UTF-8 still makes valid JSON */
    line = reply_error(NULL, ERR_BAD_REQUEST, "near '\xff\xc3'", &len);
    assert_non_null(line);
    json_t *back = json_loadb(line, len, 0, NULL);
    assert_non_null(back);
    assert_string_equal(json_string_value(json_object_get(json_object_get(back, "error"), "message")), "near '?" "?'");
    json_decref(back);
    free(line);
}

/* ---- the fast path against the jansson path ------------------------- */

static bool same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Parses line both ways and fails unless the results agree. Returns
 * whether it parsed. */
static bool check_same(const char *line, size_t len)
{
    struct request a, b;
    struct proto_error ea, eb;
    int ra = request_parse(line, len, &lim, &a, &ea);
    int rb = request_parse_json(line, len, &lim, &b, &eb);
    if (ra != rb)
        fail_msg("fast path %d, jansson %d for [%.*s]", ra, rb, (int)len, line);
    if (ra != 0) {
        assert_string_equal(ea.code, eb.code);
        assert_string_equal(ea.message, eb.message);
    } else {
        assert_int_equal(a.op, b.op);
        assert_true(same_str(a.id, b.id));
        assert_int_equal(a.id_len, b.id_len);
        assert_true(same_str(a.rcpt, b.rcpt));
        assert_int_equal(a.rcpt_len, b.rcpt_len);
        assert_int_equal(a.code, b.code);
        assert_true(same_str(a.enhanced, b.enhanced));
        assert_true(same_str(a.text, b.text));
        assert_true(same_str(a.campaign, b.campaign));
        assert_true(a.not_before == b.not_before);
        assert_true((a.meta == NULL) == (b.meta == NULL));
        assert_int_equal(a.types, b.types);
        assert_true((a.ids == NULL) == (b.ids == NULL));
        if (a.ids)
            assert_true(json_equal(a.ids, b.ids));
    }
    assert_true((a.req == NULL) == (b.req == NULL));
    if (a.req)
        assert_true(json_equal(a.req, b.req));
    request_free(&a);
    request_free(&b);
    return ra == 0;
}

static void test_fast_path_agrees(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "{\"op\":\"bounce\",\"id\":\"m1\",\"rcpt\":\"u1@d1.example\",\"code\":451,\"enhanced\":\"4.7.1\","
        "\"text\":\"greylisted\"}",
        "{\"op\":\"bounce\",\"id\":\"m2\",\"rcpt\":\"u2@d2.example\",\"code\":451,\"enhanced\":\"4.7.1\","
        "\"text\":\"greylisted\",\"not_before\":1795370400000,\"req\":\"r-1\"}",
        " { \"op\" : \"bounce\" , \"req\" : 17 , \"id\" : \"a\" , \"rcpt\" : \"a@b\" , \"code\" : 550 } ",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"j\xc3\xb6rg@m\xc3\xbcnchen.de\",\"code\":452,"
        "\"campaign\":\"Sommer \xc3\xa9t\xc3\xa9\",\"text\":\"Postfach voll \xe2\x9c\x89\",\"enhanced\":\"\","
        "\"meta\":null,\"req\":null}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451,\"req\":true,\"unknown\":[1,2]}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451,\"meta\":{\"k\":\"v\"}}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451,\"text\":\"say \\\"hi\\\"\"}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451,\"not_before\":-5}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451.0}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":251}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":\"451\"}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"id\":\"y\",\"rcpt\":\"a@b\",\"code\":451}",
        "{\"op\":\"delivered\",\"id\":\"m1\",\"rcpt\":\"u1@d1.example\",\"req\":false}",
        "{\"op\":\"delivered\",\"id\":\"m1\",\"rcpt\":\"\"}",
        "{\"op\":\"cancel\",\"id\":\"m1\"}",
        "{\"op\":\"get\",\"id\":\"m 1\"}",
        "{\"op\":\"get\",\"id\":\"a\",\"rcpt\":\"x@y.z\"}",
        "{\"op\":\"get\",\"rcpt\":\"x@y.z\",\"id\":null}",
        "{\"op\":\"ping\"}",
        "{\"op\":\"stats\",\"req\":-0}",
        "{\"op\":\"subscribe\",\"group\":\"g\"}",
        "{\"op\":\"classify\",\"code\":550,\"text\":\"no such user\"}",
        "{\"op\":\"bounse\",\"id\":\"m1\"}",
        "{\"op\":\"ack\",\"group\":\"g\",\"ids\":[\"1700000000000-0\",\"1700000000000-1\"]}",
        "{ \"ids\" : [ \"1-0\" , \"22-5\" ] , \"op\" : \"ack\" , \"req\" : \"r\" }",
        "{\"op\":\"ack\",\"ids\":[]}",
        "{\"op\":\"ack\",\"ids\":[\"abc\"],\"req\":1}",
        "{\"op\":\"ack\",\"ids\":[1,2]}",
        "{\"op\":\"ack\",\"ids\":\"1-0\"}",
        "{\"op\":\"ack\",\"ids\":[\"1-0\"],\"req\":[\"x\"]}",
        "{\"op\":\"ack\",\"ids\":[\"1-0\"],\"ids\":[\"2-0\"]}",
        "{\"op\":\"ack\",\"ids\":[\"1-0\",[\"2-0\"]]}",
        "{\"op\":\"ack\",\"ids\":[\"1-\\u0030\"]}",
        "{\"op\":\"ack\",\"ids\":null}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451,\"tags\":[\"a\",\"b\"],\"more\":[]}",
        "{\"op\":\"bounce\",\"id\":\"x\",\"rcpt\":\"a@b\",\"code\":451,\"text\":[\"greylisted\"]}",
        "{\"op\":\"subscribe\",\"group\":\"g\",\"types\":[\"retry\"]}",
        "{\"op\":7}",
        "[1,2]",
    };
    /* Each line, then each cut short and with each byte replaced by one
     * of a few troublemakers: both paths must agree on every variant. */
    static const char repl[] = {'"', '\\', '{', '}', ',', ':', ' ', '0', '9', '-', '.', 'e', 'a', 'n', '\x01',
                                '\x80', '\xc3', '\x7f'};
    int accepted = 0;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        const char *line = lines[i];
        size_t len = strlen(line);
        accepted += check_same(line, len);
        char *buf = malloc(len + 1);
        assert_non_null(buf);
        for (size_t cut = 0; cut < len; cut++)
            check_same(line, cut);
        for (size_t at = 0; at < len; at++) {
            for (size_t k = 0; k < sizeof repl; k++) {
                memcpy(buf, line, len);
                buf[at] = repl[k];
                check_same(buf, len);
            }
        }
        free(buf);
    }
    assert_true(accepted >= 12);

    /* ack's limit on ids, at and past it, both ways */
    struct proto_limits small = lim;
    small.max_ack_ids = 3;
    for (int n = 1; n <= 5; n++) {
        char line[256] = "{\"op\":\"ack\",\"ids\":[";
        for (int i = 0; i < n; i++)
            snprintf(line + strlen(line), sizeof line - strlen(line), "%s\"17-%d\"", i ? "," : "", i);
        strcat(line, "]}");
        struct request a, b;
        struct proto_error ea, eb;
        int ra = request_parse(line, strlen(line), &small, &a, &ea);
        int rb = request_parse_json(line, strlen(line), &small, &b, &eb);
        assert_int_equal(ra, rb);
        assert_int_equal(ra, n <= 3 ? 0 : -1);
        if (ra == 0) {
            assert_null(a.root); /* the fast path took it */
            assert_true(json_equal(a.ids, b.ids));
            assert_int_equal(json_array_size(a.ids), n);
        } else {
            assert_string_equal(ea.message, eb.message);
        }
        request_free(&a);
        request_free(&b);
    }
}

/* A 19-digit integer once overflowed the fast path's scanner (signed
 * overflow: the sanitizer build died on one line). Every integer past
 * 2^53 - 1, anywhere in a request, is now bad_request, on both paths; the
 * bound itself passes. */
static void test_big_integers(void **state)
{
    (void)state;
    static const char *const big[] = {
        "1234567890123456789", "9999999999999999999", "-9223372036854775808", "9223372036854775807",
        "99999999999999999999999", "9007199254740992", "-9007199254740992", "10000000000000000",
    };
    static const char *const fmts[] = {
        "{\"op\":\"ping\",\"x\":%s}",
        "{\"op\":\"ping\",\"req\":%s}",
        "{\"op\":\"stats\",\"a\":[1,{\"b\":[%s]}]}",
        "{\"op\":\"bounce\",\"id\":\"m\",\"rcpt\":\"a@b\",\"code\":451,\"meta\":{\"n\":%s}}",
        "{\"op\":\"bounce\",\"id\":\"m\",\"rcpt\":\"a@b\",\"code\":451,\"n\":%s}",
        "{\"op\":\"bounce\",\"id\":\"m\",\"rcpt\":\"a@b\",\"code\":%s}",
        "{\"op\":\"bounce\",\"id\":\"m\",\"rcpt\":\"a@b\",\"code\":451,\"not_before\":%s}",
        "{\"op\":\"ack\",\"ids\":[\"1-0\"],\"req\":%s}",
        "{\"op\":\"get\",\"id\":\"m\",\"x\":%s}",
    };
    char line[256];
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
        for (size_t b = 0; b < sizeof big / sizeof big[0]; b++) {
            snprintf(line, sizeof line, fmts[f], big[b]);
            struct request a, j;
            struct proto_error ea, ej;
            int ra = request_parse(line, strlen(line), &lim, &a, &ea);
            int rj = request_parse_json(line, strlen(line), &lim, &j, &ej);
            if (ra != -1 || rj != -1)
                fail_msg("%s: accepted", line);
            assert_string_equal(ea.code, ERR_BAD_REQUEST);
            assert_string_equal(ea.message, ej.message);
            request_free(&a);
            request_free(&j);
        }
        /* the bound and its negative are accepted wherever the field
         * takes any integer (not code or not_before) */
        if (f <= 4 || f >= 7) {
            for (int neg = 0; neg < 2; neg++) {
                snprintf(line, sizeof line, fmts[f], neg ? "-9007199254740991" : "9007199254740991");
                struct request a;
                parse_ok(line, &a);
                request_free(&a);
            }
        }
    }
    /* the message says what is wrong */
    struct request r;
    struct proto_error err;
    assert_int_equal(parse("{\"op\":\"ping\",\"x\":1234567890123456789}", &r, &err), -1);
    assert_non_null(strstr(err.message, "out of range"));
    request_free(&r);
}

/* request_parse_buf: the same request, its strings in the caller's buffer
 * when they fit, in a block of their own when they do not. */
static void test_parse_buf(void **state)
{
    (void)state;
    static const char line[] = "{\"op\":\"bounce\",\"id\":\"m1\",\"rcpt\":\"u1@d1.example\",\"code\":451,"
                               "\"enhanced\":\"4.7.1\",\"text\":\"greylisted\",\"req\":\"r\"}";
    char buf[64];
    struct request a, b;
    struct proto_error ea, eb;

    for (size_t cap = 0; cap <= sizeof buf; cap += 8) {
        memset(buf, 'x', sizeof buf);
        assert_int_equal(request_parse_buf(line, strlen(line), &lim, &a, &ea, buf, cap), 0);
        assert_int_equal(request_parse(line, strlen(line), &lim, &b, &eb), 0);
        assert_string_equal(a.id, b.id);
        assert_string_equal(a.rcpt, b.rcpt);
        assert_string_equal(a.enhanced, b.enhanced);
        assert_string_equal(a.text, b.text);
        assert_true(json_equal(a.req, b.req));
        bool inside = a.id >= buf && a.id < buf + sizeof buf;
        /* 3 + 14 + 6 + 11 bytes with their NULs */
        assert_int_equal(inside, cap >= 34);
        assert_int_equal(a.copies == NULL, cap >= 34);
        request_free(&a);
        request_free(&b);
    }
}

int main(void)
{
    proto_limits_default(&lim);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_default),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bounce_full),
        cmocka_unit_test(test_bounce_minimal),
        cmocka_unit_test(test_addresses_accepted),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_json_error_has_column),
        cmocka_unit_test(test_other_ops_valid),
        cmocka_unit_test(test_recipient_and_domain_ops),
        cmocka_unit_test(test_req_scalars),
        cmocka_unit_test(test_req_echo_on_error),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_limits_configurable),
        cmocka_unit_test(test_length_not_nul),
        cmocka_unit_test(test_messages_sanitized),
        cmocka_unit_test(test_reply_ok_layout),
        cmocka_unit_test(test_reply_no_raw_newline),
        cmocka_unit_test(test_reply_error_layout),
        cmocka_unit_test(test_fast_path_agrees),
        cmocka_unit_test(test_parse_buf),
        cmocka_unit_test(test_big_integers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
