/*
 * Parsing and validation of request lines.
 *
 * A line is parsed once by jansson into a tree that the struct request
 * borrows from: every string the daemon sees is a pointer into that tree,
 * so a valid request costs one parse and no copies. Validation is strict
 * where a bad value could do harm later (ids and addresses become part of
 * Redis keys and of event lines; codes drive the classifier) and liberal
 * where the world is messy (the local part of an address, the reply text).
 *
 * Everything a client sends arrives here first, so every message that
 * quotes client input is cut to a sane length and sanitized: an error
 * reply must itself be a valid JSON line.
 *
 * Unknown fields are ignored, so that a newer client can talk to an older
 * daemon. Duplicate keys are refused: {"id":"a","id":"b"} has no single
 * meaning, and guessing one would hide a client bug.
 */
#include "proto/request.h"

#include "proto/jbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIGITS_MAX 20 /* a uint64 in decimal, for stream ids */

static const char *const op_names[OP__COUNT] = {
    [OP_BOUNCE] = "bounce",       [OP_DELIVERED] = "delivered", [OP_CANCEL] = "cancel", [OP_GET] = "get",
    [OP_CLASSIFY] = "classify",   [OP_STATS] = "stats",         [OP_SUBSCRIBE] = "subscribe",
    [OP_ACK] = "ack",             [OP_PING] = "ping",           [OP_AUTH] = "auth",
    [OP_UNSUPPRESS] = "unsuppress", [OP_SUPPRESSED] = "suppressed", [OP_DOMAIN] = "domain",
    [OP_LIST] = "list",           [OP_RETRY_NOW] = "retry_now", [OP_HOLD] = "hold",
    [OP_RELEASE] = "release",     [OP_HISTORY] = "history",
    [OP_CLUSTER] = "cluster",
    [OP_GROUPS] = "groups",
};

static const char *const event_names[EV__COUNT] = {
    [EV_RETRY] = "retry",
    [EV_GIVE_UP] = "give_up",
    [EV_SUPPRESS] = "suppress",
    [EV_SENDER_ALERT] = "sender_alert",
    [EV_DOMAIN_THROTTLED] = "domain_throttled",
};

void proto_limits_default(struct proto_limits *lim)
{
    lim->max_id = 200;
    lim->max_rcpt = 320;
    lim->max_text = 4096;
    lim->max_meta = 4096;
    lim->max_campaign = 200;
    lim->max_group = 64;
    lim->max_ack_ids = 10000;
}

const char *op_name(enum op op)
{
    return (unsigned)op < OP__COUNT ? op_names[op] : "?";
}

const char *event_type_name(enum event_type t)
{
    return (unsigned)t < EV__COUNT ? event_names[t] : "?";
}

int event_type_parse(const char *name)
{
    for (int i = 0; i < EV__COUNT; i++)
        if (strcmp(name, event_names[i]) == 0)
            return i;
    return -1;
}

char *proto_text_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s);

    while (n > 0) {
        uint32_t cp;
        size_t k = jbuf_utf8_seq(p, n, &cp);
        if (k == 0 || cp < 0x20 || cp == 0x7f) {
            *p = '?';
            k = 1;
        }
        p += k;
        n -= k;
    }
    return s;
}

/* Whether a code point may appear in a name-like field. Controls, and the
 * invisible format characters that make two different strings look alike
 * (zero-width, bidi overrides, BOM), are never allowed; spaces only when
 * the field allows them. */
static bool codepoint_ok(uint32_t cp, bool allow_space)
{
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
        return false;
    if (cp == 0xad || cp == 0x180e || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202e) ||
        (cp >= 0x2060 && cp <= 0x206f) || cp == 0xfeff || (cp >= 0xfff9 && cp <= 0xfffb))
        return false;
    if (cp == ' ' || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x202f ||
        cp == 0x205f || cp == 0x3000)
        return allow_space;
    return true;
}

/* Checks that s[0, n) holds only allowed code points. jansson has already
 * checked that strings are valid UTF-8, but this does not rely on it. */
static bool text_ok(const char *s, size_t n, bool allow_space)
{
    const unsigned char *p = (const unsigned char *)s;

    while (n > 0) {
        if (*p > 0x20 && *p < 0x7f) { /* what codepoint_ok always allows */
            p++;
            n--;
            continue;
        }
        uint32_t cp;
        size_t k = jbuf_utf8_seq(p, n, &cp);
        if (k == 0 || !codepoint_ok(cp, allow_space))
            return false;
        p += k;
        n -= k;
    }
    return true;
}

static int fail(struct proto_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct proto_error *err, const char *code, const char *fmt, ...)
{
    va_list ap;

    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    proto_text_sanitize(err->message); /* vsnprintf may have cut a UTF-8 sequence */
    return -1;
}

/* Copies client text into buf (bufsize >= 8) for quoting in a message:
 * printable ASCII only, other bytes as '?', cut with "..." to fit. */
static const char *quote(char *buf, size_t bufsize, const char *s, size_t n)
{
    size_t max = bufsize - 4, o = 0;

    for (size_t i = 0; i < n && o < max; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (n > max)
        memcpy(buf + o, "...", 3), o += 3;
    buf[o] = '\0';
    return buf;
}

/*
 * Field access. Each getter returns 1 when the field is present and valid,
 * 0 when it is absent (or null, which clients use for "not set"), -1 on
 * error with err filled in.
 */

static int get_string(json_t *root, const char *name, bool required, const char **s, size_t *n,
                      struct proto_error *err)
{
    json_t *v = json_object_get(root, name);

    if (v == NULL || json_is_null(v)) {
        if (required)
            return fail(err, ERR_BAD_REQUEST, "field '%s' is required", name);
        return 0;
    }
    if (!json_is_string(v))
        return fail(err, ERR_BAD_REQUEST, "field '%s' must be a string", name);
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 1;
}

/* A string with a byte limit; an empty string is refused when required. */
static int get_bounded(json_t *root, const char *name, bool required, size_t max, const char **s, size_t *n,
                       struct proto_error *err)
{
    int rc = get_string(root, name, required, s, n, err);

    if (rc <= 0)
        return rc;
    if (*n > max)
        return fail(err, ERR_TOO_LARGE, "field '%s' is %zu bytes, the limit is %zu", name, *n, max);
    if (*n == 0 && required)
        return fail(err, ERR_BAD_REQUEST, "field '%s' must not be empty", name);
    return 1;
}

static int get_int(json_t *root, const char *name, bool required, json_int_t *out, struct proto_error *err)
{
    json_t *v = json_object_get(root, name);

    if (v == NULL || json_is_null(v)) {
        if (required)
            return fail(err, ERR_BAD_REQUEST, "field '%s' is required", name);
        return 0;
    }
    if (!json_is_integer(v))
        return fail(err, ERR_BAD_REQUEST, "field '%s' must be an integer", name);
    *out = json_integer_value(v);
    return 1;
}

static int get_id(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    int rc = get_bounded(root, "id", true, lim->max_id, &r->id, &r->id_len, err);

    if (rc < 0)
        return -1;
    for (size_t i = 0; i < r->id_len; i++) {
        unsigned char c = (unsigned char)r->id[i];
        if (c < 0x21 || c > 0x7e)
            return fail(err, ERR_BAD_REQUEST,
                        "field 'id' must be printable ASCII without spaces (byte %zu is 0x%02x)", i, c);
    }
    return 0;
}

/* Returns NULL when label is a valid domain label: letters, digits,
 * hyphens (not first or last), or non-ASCII letters of an IDN in UTF-8. */
static const char *label_problem(const char *s, size_t n)
{
    if (n == 0)
        return "the domain has an empty label";
    if (n > 63)
        return "a domain label is longer than 63 bytes";
    if (s[0] == '-' || s[n - 1] == '-')
        return "a domain label starts or ends with '-'";
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
                return "the domain may hold only letters, digits, '-' and '.'";
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = jbuf_utf8_seq((const unsigned char *)s + i, n - i, &cp);
        if (k == 0 || !codepoint_ok(cp, false))
            return "the domain holds a character that is not a letter";
        i += k;
    }
    return NULL;
}

/* Returns NULL when s is an address we accept, or what is wrong with it.
 * The local part is taken as the sender's MTA had it (anything printable
 * but spaces, '@', quotes and angle brackets); the domain must be a
 * host name. Address literals ("[192.0.2.1]") and quoted local parts are
 * refused: neither occurs in bulk mail, and both complicate every consumer. */
static const char *address_problem(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);
    size_t local_len, dom_len;
    const char *dom;

    if (n > 0 && (s[0] == '<' || s[n - 1] == '>'))
        return "write the bare address, without angle brackets";
    if (at == NULL)
        return "there is no '@'";
    if (memchr(at + 1, '@', n - (size_t)(at + 1 - s)) != NULL)
        return "there is more than one '@' (quoted local parts are not accepted)";
    local_len = (size_t)(at - s);
    dom = at + 1;
    dom_len = n - local_len - 1;
    if (local_len == 0)
        return "the local part is empty";
    if (s[0] == '"')
        return "quoted local parts are not accepted";
    if (!text_ok(s, local_len, false))
        return "the local part holds a space or a control character";
    for (size_t i = 0; i < local_len; i++)
        if (s[i] == '"' || s[i] == '<' || s[i] == '>')
            return "the local part holds '\"', '<' or '>'";
    if (dom_len == 0)
        return "the domain is empty";
    if (dom_len > 255)
        return "the domain is longer than 255 bytes";
    if (dom[0] == '[')
        return "address literals are not accepted";
    for (const char *p = dom, *end = dom + dom_len; p <= end;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *lend = dot ? dot : end;
        const char *why = label_problem(p, (size_t)(lend - p));
        if (why != NULL)
            return why;
        p = lend + 1;
    }
    return NULL;
}

static int get_rcpt(json_t *root, bool required, const struct proto_limits *lim, struct request *r,
                    struct proto_error *err)
{
    int rc = get_bounded(root, "rcpt", required, lim->max_rcpt, &r->rcpt, &r->rcpt_len, err);
    const char *why;

    if (rc <= 0)
        return rc;
    why = address_problem(r->rcpt, r->rcpt_len);
    if (why != NULL)
        return fail(err, ERR_BAD_REQUEST, "field 'rcpt' must be an address (local@domain): %s", why);
    return 1;
}

/* Accepts class.subject.detail: class 2, 4 or 5, subject and detail
 * 0..999 (1 to 3 digits), nothing before or after. */
static bool enhanced_ok(const char *s, size_t n)
{
    size_t i = 0;

    if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return false;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 4)
            i++, digits++;
        if (digits == 0 || digits > 3)
            return false;
        if (part == 0) {
            if (i >= n || s[i] != '.')
                return false;
            i++;
        }
    }
    return i == n;
}

static int get_code(json_t *root, bool required, struct request *r, struct proto_error *err)
{
    json_int_t v = 0;
    int rc = get_int(root, "code", required, &v, err);

    if (rc <= 0)
        return rc;
    if (v < 200 || v > 599)
        return fail(err, ERR_BAD_REQUEST, "field 'code' must be an SMTP reply code (200..599), not %lld",
                    (long long)v);
    r->code = (int)v;
    return 1;
}

/* enhanced and text, shared by bounce and classify. An empty string is
 * the same as an absent field: clients often forward an empty enhanced
 * code when the server gave none. */
static int get_reply_fields(json_t *root, const struct proto_limits *lim, struct request *r,
                            struct proto_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    int rc;

    rc = get_string(root, "enhanced", false, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0) {
        if (!enhanced_ok(s, n)) {
            char q[40];
            return fail(err, ERR_BAD_REQUEST,
                        "field 'enhanced' must be an enhanced status code X.Y.Z (class 2, 4 or 5), not '%s'",
                        quote(q, sizeof q, s, n));
        }
        r->enhanced = s;
    }
    rc = get_bounded(root, "text", false, lim->max_text, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0)
        r->text = s;
    return 0;
}

static int parse_bounce(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    json_int_t v = 0;
    json_t *meta;
    int rc;

    if (get_id(root, lim, r, err) < 0 || get_rcpt(root, true, lim, r, err) < 0 ||
        get_code(root, true, r, err) < 0)
        return -1;
    if (r->code < 400)
        return fail(err, ERR_BAD_REQUEST, "field 'code' must be 4xx or 5xx for a bounce, not %d", r->code);
    if (get_reply_fields(root, lim, r, err) < 0)
        return -1;

    rc = get_bounded(root, "campaign", false, lim->max_campaign, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0) {
        if (!text_ok(s, n, true))
            return fail(err, ERR_BAD_REQUEST, "field 'campaign' must not hold control characters");
        r->campaign = s;
    }

    rc = get_int(root, "not_before", false, &v, err);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        if (v <= 0 || v >= (json_int_t)1 << 53)
            return fail(err, ERR_BAD_REQUEST,
                        "field 'not_before' must be a time in epoch milliseconds (0 < n < 2^53)");
        r->not_before = v;
    }

    meta = json_object_get(root, "meta");
    if (meta != NULL && !json_is_null(meta)) {
        size_t size;
        if (!json_is_object(meta))
            return fail(err, ERR_BAD_REQUEST, "field 'meta' must be an object");
        /* The limit is on what events will carry: the compact encoding. */
        size = json_dumpb(meta, NULL, 0, JSON_COMPACT);
        if (size == 0)
            return fail(err, ERR_BAD_REQUEST, "field 'meta' cannot be encoded");
        if (size > lim->max_meta)
            return fail(err, ERR_TOO_LARGE, "field 'meta' is %zu bytes as compact JSON, the limit is %zu", size,
                        lim->max_meta);
        r->meta = meta;
    }
    return 0;
}

static int parse_delivered(json_t *root, const struct proto_limits *lim, struct request *r,
                           struct proto_error *err)
{
    if (get_id(root, lim, r, err) < 0 || get_rcpt(root, false, lim, r, err) < 0)
        return -1;
    return 0;
}

static int parse_classify(json_t *root, const struct proto_limits *lim, struct request *r,
                          struct proto_error *err)
{
    if (get_code(root, false, r, err) < 0 || get_reply_fields(root, lim, r, err) < 0)
        return -1;
    if (r->code == 0 && r->text == NULL)
        return fail(err, ERR_BAD_REQUEST, "field 'code' is required (or a 'text' that starts with one)");
    return 0;
}

static int parse_nothing(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    return 0;
}

static int parse_subscribe(json_t *root, const struct proto_limits *lim, struct request *r,
                           struct proto_error *err)
{
    size_t n = 0;
    json_t *types, *t;
    size_t i;

    if (get_bounded(root, "group", true, lim->max_group, &r->group, &n, err) < 0)
        return -1;
    for (i = 0; i < n; i++) {
        char c = r->group[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == ':' || c == '-'))
            return fail(err, ERR_BAD_REQUEST, "field 'group' may hold only letters, digits and '_.:-'");
    }

    r->types = EV_ALL;
    types = json_object_get(root, "types");
    if (types == NULL || json_is_null(types))
        return 0;
    if (!json_is_array(types))
        return fail(err, ERR_BAD_REQUEST, "field 'types' must be an array of event type names");
    if (json_array_size(types) == 0)
        return fail(err, ERR_BAD_REQUEST, "field 'types' must not be empty (leave it out for every type)");
    r->types = 0;
    json_array_foreach(types, i, t) {
        int ev;
        if (!json_is_string(t))
            return fail(err, ERR_BAD_REQUEST, "field 'types' must be an array of event type names");
        ev = event_type_parse(json_string_value(t));
        if (ev < 0) {
            char q[40];
            return fail(err, ERR_BAD_REQUEST,
                        "unknown event type '%s' in field 'types' (known: retry, give_up, suppress, "
                        "sender_alert, domain_throttled)",
                        quote(q, sizeof q, json_string_value(t), json_string_length(t)));
        }
        r->types |= 1u << ev;
    }
    return 0;
}

/* A Redis stream entry id: "<ms>-<seq>", both decimal; with the shards
 * on several Redis Cluster primaries "<shard>/<ms>-<seq>" (the shard's
 * stream), a shard below 64. */
static bool stream_id_ok(const char *s, size_t n)
{
    size_t i = 0, d;

    for (d = 0; i < n && s[i] >= '0' && s[i] <= '9' && d < 3; i++, d++)
        ;
    if (d > 0 && d < 3 && i < n && s[i] == '/')
        i++;
    else
        i = 0;
    for (d = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++, d++)
        ;
    if (d == 0 || d > DIGITS_MAX || i >= n || s[i] != '-')
        return false;
    i++;
    for (d = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++, d++)
        ;
    return d > 0 && d <= DIGITS_MAX && i == n;
}

static int parse_ack(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    json_t *ids = json_object_get(root, "ids"), *v;
    size_t i;

    if (ids == NULL || json_is_null(ids))
        return fail(err, ERR_BAD_REQUEST, "field 'ids' is required");
    if (!json_is_array(ids))
        return fail(err, ERR_BAD_REQUEST, "field 'ids' must be an array of event ids");
    if (json_array_size(ids) == 0)
        return fail(err, ERR_BAD_REQUEST, "field 'ids' must not be empty");
    if (json_array_size(ids) > lim->max_ack_ids)
        return fail(err, ERR_TOO_LARGE, "field 'ids' has %zu elements, the limit is %zu", json_array_size(ids),
                    lim->max_ack_ids);
    json_array_foreach(ids, i, v) {
        if (!json_is_string(v))
            return fail(err, ERR_BAD_REQUEST, "field 'ids' element %zu must be a string", i);
        if (!stream_id_ok(json_string_value(v), json_string_length(v))) {
            char q[40];
            return fail(err, ERR_BAD_REQUEST,
                        "field 'ids' element %zu must be an event id like \"1700000000000-0\", not '%s'", i,
                        quote(q, sizeof q, json_string_value(v), json_string_length(v)));
        }
    }
    r->ids = ids;
    return 0;
}

/* get: a message by id or, without an id, a recipient by rcpt (with an
 * id, rcpt is ignored like any other member get does not use). */
static int parse_get(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    json_t *id = json_object_get(root, "id");
    int rc;

    if (id != NULL && !json_is_null(id))
        return get_id(root, lim, r, err);
    rc = get_rcpt(root, false, lim, r, err);
    if (rc < 0)
        return -1;
    if (rc == 0)
        return fail(err, ERR_BAD_REQUEST, "field 'id' is required (or 'rcpt' for a recipient)");
    return 0;
}

static int parse_unsuppress(json_t *root, const struct proto_limits *lim, struct request *r,
                            struct proto_error *err)
{
    return get_rcpt(root, true, lim, r, err) < 0 ? -1 : 0;
}

/* A paged op's optional "count" (1..1000) into r->count, which holds the
 * op's default. */
static int get_page_count(json_t *root, struct request *r, struct proto_error *err)
{
    json_int_t v = 0;
    int rc = get_int(root, "count", false, &v, err);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        if (v < 1 || v > 1000)
            return fail(err, ERR_BAD_REQUEST, "field 'count' must be 1..1000, not %lld", (long long)v);
        r->count = (int)v;
    }
    return 0;
}

/* suppressed: "cursor" a string of decimal digits (a Redis HSCAN cursor,
 * which may exceed 2^53, hence a string), or with shards on a Redis Cluster
 * "<shard>.<digits>" (the shard's list and the cursor in it), "count"
 * 1..1000. */
static int parse_suppressed(json_t *root, const struct proto_limits *lim, struct request *r,
                            struct proto_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    int rc;

    r->cursor = "0";
    r->count = 100;
    rc = get_bounded(root, "cursor", false, DIGITS_MAX + 3, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        if (n == 0)
            return fail(err, ERR_BAD_REQUEST, "field 'cursor' must be the cursor of the previous page (\"0\" to start)");
        size_t dot = n;
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '.' && dot == n && i >= 1 && i <= 2 && i + 1 < n)
                dot = i;
            else if (s[i] < '0' || s[i] > '9')
                return fail(err, ERR_BAD_REQUEST,
                            "field 'cursor' must be the cursor of the previous page (decimal digits, \"0\" to start)");
        }
        if (dot == n && n > DIGITS_MAX)
            return fail(err, ERR_TOO_LARGE, "field 'cursor' is longer than %d characters", DIGITS_MAX);
        r->cursor = s;
    }
    return get_page_count(root, r, err);
}

static int parse_domain(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    int rc = get_bounded(root, "domain", true, 255, &r->domain, &r->domain_len, err);

    if (rc < 0)
        return -1;
    for (const char *p = r->domain, *end = r->domain + r->domain_len; p <= end;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *lend = dot ? dot : end;
        const char *why = label_problem(p, (size_t)(lend - p));
        if (why != NULL) {
            r->domain = NULL;
            return fail(err, ERR_BAD_REQUEST, "field 'domain' must be a host name: %s", why);
        }
        p = lend + 1;
    }
    return 0;
}

static int parse_auth(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    size_t n = 0;

    return get_bounded(root, "token", true, SIZE_MAX, &r->token, &n, err) < 0 ? -1 : 0;
}


/* ---- acting on the queue: list, retry_now, cancel's bulk form, hold ---- */

/* An optional "domain" that must be a host name (parse_domain's check). */
static int get_domain_opt(json_t *root, struct request *r, struct proto_error *err)
{
    int rc = get_bounded(root, "domain", false, 255, &r->domain, &r->domain_len, err);

    if (rc <= 0 || r->domain_len == 0) {
        r->domain = NULL;
        r->domain_len = 0;
        return rc < 0 ? -1 : 0;
    }
    for (const char *p = r->domain, *end = r->domain + r->domain_len; p <= end;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *lend = dot ? dot : end;
        const char *why = label_problem(p, (size_t)(lend - p));
        if (why != NULL) {
            r->domain = NULL;
            return fail(err, ERR_BAD_REQUEST, "field 'domain' must be a host name: %s", why);
        }
        p = lend + 1;
    }
    return 1;
}

static int get_campaign_opt(json_t *root, const struct proto_limits *lim, struct request *r,
                            struct proto_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = get_bounded(root, "campaign", false, lim->max_campaign, &s, &n, err);

    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0) {
        if (!text_ok(s, n, true))
            return fail(err, ERR_BAD_REQUEST, "field 'campaign' must not hold control characters");
        r->campaign = s;
        return 1;
    }
    return 0;
}

static int get_time_opt(json_t *root, const char *name, int64_t *out, struct proto_error *err)
{
    json_int_t v = 0;
    int rc = get_int(root, name, false, &v, err);

    if (rc <= 0)
        return rc;
    if (v <= 0 || v >= (json_int_t)1 << 53)
        return fail(err, ERR_BAD_REQUEST, "field '%s' must be a time in epoch milliseconds (0 < n < 2^53)", name);
    *out = v;
    return 1;
}

/* cancel and retry_now: one message by "id", or in bulk every message of
 * a "domain" or a "campaign" (exactly one of the three). */
static int parse_selection(json_t *root, const struct proto_limits *lim, struct request *r,
                           struct proto_error *err)
{
    json_t *id = json_object_get(root, "id");
    int nd, nc;

    if (id != NULL && !json_is_null(id))
        return get_id(root, lim, r, err);
    if ((nd = get_domain_opt(root, r, err)) < 0 || (nc = get_campaign_opt(root, lim, r, err)) < 0)
        return -1;
    if (nd + nc == 0)
        return fail(err, ERR_BAD_REQUEST, "field 'id' is required (or 'domain' or 'campaign' for many messages)");
    if (nd + nc > 1)
        return fail(err, ERR_BAD_REQUEST, "give one of 'id', 'domain' and 'campaign', not several");
    return 0;
}

#define LIST_CURSOR_MAX 300

static int parse_list(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    int rc;

    if (get_domain_opt(root, r, err) < 0 || get_campaign_opt(root, lim, r, err) < 0 ||
        get_time_opt(root, "due_before", &r->due_before, err) < 0 ||
        get_time_opt(root, "due_after", &r->due_after, err) < 0)
        return -1;
    rc = get_bounded(root, "class", false, 64, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0) {
        if (!text_ok(s, n, false))
            return fail(err, ERR_BAD_REQUEST, "field 'class' must be a class name");
        r->class_name = s;
        r->class_len = n;
    }
    rc = get_bounded(root, "state", false, 16, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0) {
        if (n == 7 && memcmp(s, "pending", 7) == 0)
            r->state = 'P';
        else if (n == 8 && memcmp(s, "awaiting", 8) == 0)
            r->state = 'A';
        else
            return fail(err, ERR_BAD_REQUEST, "field 'state' must be \"pending\" or \"awaiting\"");
    }
    r->cursor = "0";
    r->count = 100;
    rc = get_bounded(root, "cursor", false, LIST_CURSOR_MAX, &s, &n, err);
    if (rc < 0)
        return -1;
    if (rc > 0 && n > 0) {
        if (!text_ok(s, n, false))
            return fail(err, ERR_BAD_REQUEST, "field 'cursor' must be the cursor of the previous page (\"0\" to start)");
        r->cursor = s;
    }
    return get_page_count(root, r, err);
}

/* groups: "delete" (optional) names a group as subscribe's "group" does;
 * it goes to r->group. */
static int parse_groups(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    size_t n = 0;
    int rc = get_bounded(root, "delete", false, lim->max_group, &r->group, &n, err);
    if (rc <= 0)
        return rc;
    if (n == 0)
        return fail(err, ERR_BAD_REQUEST, "field 'delete' must name a group");
    for (size_t i = 0; i < n; i++) {
        char c = r->group[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == ':' || c == '-'))
            return fail(err, ERR_BAD_REQUEST, "field 'delete' may hold only letters, digits and '_.:-'");
    }
    return 0;
}

static int parse_history(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    return get_id(root, lim, r, err);
}

static int parse_hold(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err)
{
    if (parse_domain(root, lim, r, err) < 0 || get_time_opt(root, "until", &r->until, err) < 0)
        return -1;
    return 0;
}

typedef int (*op_parser)(json_t *root, const struct proto_limits *lim, struct request *r, struct proto_error *err);

static const op_parser op_parsers[OP__COUNT] = {
    [OP_BOUNCE] = parse_bounce,       [OP_DELIVERED] = parse_delivered, [OP_CANCEL] = parse_selection,
    [OP_GET] = parse_get,             [OP_CLASSIFY] = parse_classify,   [OP_STATS] = parse_nothing,
    [OP_SUBSCRIBE] = parse_subscribe, [OP_ACK] = parse_ack,             [OP_PING] = parse_nothing,
    [OP_AUTH] = parse_auth,           [OP_UNSUPPRESS] = parse_unsuppress, [OP_SUPPRESSED] = parse_suppressed,
    [OP_DOMAIN] = parse_domain,       [OP_LIST] = parse_list,           [OP_RETRY_NOW] = parse_selection,
    [OP_HOLD] = parse_hold,           [OP_RELEASE] = parse_domain,      [OP_HISTORY] = parse_history,
    [OP_CLUSTER] = parse_nothing,     [OP_GROUPS] = parse_groups,
};

static int op_lookup(const char *s, size_t n)
{
    /* A dozen names: a length check before strcmp makes this a handful of
     * comparisons, not worth a hash. */
    for (int i = 0; i < OP__COUNT; i++)
        if (strlen(op_names[i]) == n && memcmp(op_names[i], s, n) == 0)
            return i;
    return -1;
}

/*
 * The fast path. Nearly every line a sending platform sends is a flat
 * object of plain strings and integers: {"op":"bounce","id":..,"rcpt":..,
 * "code":451,...}. Building a jansson tree for it (a hash table, a
 * malloc per member) and freeing it after the Redis round trip cost a
 * fifth of the daemon's CPU at full ingest. So such lines are scanned in
 * place, and the strings the request needs are copied into one block (the
 * caller's, with request_parse_buf). A subscriber's acks,
 * {"op":"ack","ids":[..hundreds of ids..]}, are the other common line: an
 * array of plain strings is scanned too, and the ids go straight into the
 * array the jansson path would have made.
 *
 * The fast path only ever accepts: anything it does not handle (escapes,
 * objects, arrays of anything but plain strings, reals, duplicate members,
 * an op other than the common ones) or anything that fails a check makes
 * it give up, and the jansson
 * path above runs on the same line and says what is wrong, with the same
 * words as always. Its checks are the same functions, so a line is
 * accepted by both paths or by neither (tests/unit/test_request.c
 * compares the two on a corpus of lines).
 */

#define FLAT_MAX 16

struct flat_member {
    const char *key, *val; /* val: the string's bytes, the literal's, or an array's inside */
    size_t klen, vlen;
    char type;             /* 's' string, 'i' integer, 't' true, 'f' false, 'n' null,
                              'a' array of strings (as flat as the strings above) */
    json_int_t num;        /* 'i': the value; 'a': the number of strings */
};

/* The member names the fast path reads, found once while scanning. */
enum flat_key { K_OP, K_ID, K_RCPT, K_CODE, K_ENHANCED, K_TEXT, K_CAMPAIGN, K_NOT_BEFORE, K_META, K_REQ, K_IDS,
                K__COUNT };

struct flat {
    struct flat_member m[FLAT_MAX];
    int n;
    signed char known[K__COUNT]; /* index into m, or -1 */
};

static int flat_key_of(const char *k, size_t n)
{
    /* By length first: most names are then one comparison away. */
#define IS(lit) (memcmp(k, lit, sizeof(lit) - 1) == 0)
    switch (n) {
    case 2:
        return IS("op") ? K_OP : IS("id") ? K_ID : -1;
    case 3:
        return IS("req") ? K_REQ : IS("ids") ? K_IDS : -1;
    case 4:
        return IS("rcpt") ? K_RCPT : IS("code") ? K_CODE : IS("text") ? K_TEXT : IS("meta") ? K_META : -1;
    case 8:
        return IS("enhanced") ? K_ENHANCED : IS("campaign") ? K_CAMPAIGN : -1;
    case 10:
        return IS("not_before") ? K_NOT_BEFORE : -1;
    default:
        return -1;
    }
#undef IS
}

static bool json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Scans a string body from p (after the opening quote). Returns the
 * closing quote, or NULL for what the fast path leaves to jansson:
 * escapes, control characters, invalid UTF-8, no closing quote. */
static const char *flat_string(const char *p, const char *end)
{
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (jbuf_plain[c]) { /* most bytes: one test */
            p++;
            continue;
        }
        if (c == '"')
            return p;
        if (c == '\\' || c < 0x20)
            return NULL;
        if (c < 0x80) {
            p++;
            continue;
        }
        uint32_t cp;
        size_t k = jbuf_utf8_seq((const unsigned char *)p, (size_t)(end - p), &cp);
        if (k == 0)
            return NULL;
        p += k;
    }
    return NULL;
}

/* Splits a flat JSON object into members. Returns 0, or -1 when the line
 * is anything else (left to jansson). */
static int flat_scan(const char *p, size_t len, struct flat *f)
{
    const char *end = p + len;
    f->n = 0;
    while (p < end && json_ws(*p))
        p++;
    if (p == end || *p != '{')
        return -1;
    p++;
    memset(f->known, -1, sizeof f->known);
    for (;;) {
        while (p < end && json_ws(*p))
            p++;
        if (p == end || *p != '"' || f->n == FLAT_MAX)
            return -1;
        struct flat_member *m = &f->m[f->n];
        const char *q = flat_string(++p, end);
        if (!q)
            return -1;
        m->key = p;
        m->klen = (size_t)(q - p);
        p = q + 1;
        while (p < end && json_ws(*p))
            p++;
        if (p == end || *p != ':')
            return -1;
        p++;
        while (p < end && json_ws(*p))
            p++;
        if (p == end)
            return -1;
        if (*p == '"') {
            q = flat_string(++p, end);
            if (!q)
                return -1;
            m->type = 's';
            m->val = p;
            m->vlen = (size_t)(q - p);
            p = q + 1;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            /* JSON integers: -?(0|[1-9][0-9]*); a fraction or exponent
             * makes it a real. Past 16 digits, or past 2^53 - 1, the line
             * goes to jansson, which refuses it (int_exact below): the
             * count is checked before the multiplication, so no input can
             * overflow v. */
            const char *s = p;
            bool neg = *p == '-';
            if (neg)
                p++;
            if (p == end || *p < '0' || *p > '9' || (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9'))
                return -1;
            json_int_t v = 0;
            int digits = 0;
            while (p < end && *p >= '0' && *p <= '9') {
                if (++digits > 16)
                    return -1;
                v = v * 10 + (*p++ - '0');
            }
            if (v > PROTO_INT_MAX || (p < end && (*p == '.' || *p == 'e' || *p == 'E')))
                return -1;
            m->type = 'i';
            m->num = neg ? -v : v;
            m->val = s;
            m->vlen = (size_t)(p - s);
        } else if ((size_t)(end - p) >= 4 && memcmp(p, "true", 4) == 0) {
            m->type = 't', m->val = p, m->vlen = 4, p += 4;
        } else if ((size_t)(end - p) >= 5 && memcmp(p, "false", 5) == 0) {
            m->type = 'f', m->val = p, m->vlen = 5, p += 5;
        } else if ((size_t)(end - p) >= 4 && memcmp(p, "null", 4) == 0) {
            m->type = 'n', m->val = p, m->vlen = 4, p += 4;
        } else if (*p == '[') {
            /* An array of strings (ack's ids); anything else in it, or
             * around it, is left to jansson. */
            m->type = 'a';
            m->num = 0;
            m->val = ++p;
            while (p < end && json_ws(*p))
                p++;
            if (p < end && *p != ']') {
                for (;;) {
                    if (p == end || *p != '"' || !(q = flat_string(p + 1, end)))
                        return -1;
                    m->num++;
                    p = q + 1;
                    while (p < end && json_ws(*p))
                        p++;
                    if (p < end && *p == ',') {
                        p++;
                        while (p < end && json_ws(*p))
                            p++;
                        continue;
                    }
                    break;
                }
            }
            if (p == end || *p != ']')
                return -1;
            m->vlen = (size_t)(p - m->val);
            p++;
        } else {
            return -1; /* objects, anything malformed */
        }
        /* A duplicate makes jansson word the error. The names the fast
         * path knows are checked by index, the rest one by one. */
        int k = flat_key_of(m->key, m->klen);
        if (k >= 0) {
            if (f->known[k] >= 0)
                return -1;
            f->known[k] = (signed char)f->n;
        } else {
            for (int i = 0; i < f->n; i++)
                if (f->m[i].klen == m->klen && memcmp(f->m[i].key, m->key, m->klen) == 0)
                    return -1;
        }
        f->n++;
        while (p < end && json_ws(*p))
            p++;
        if (p == end)
            return -1;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p != '}')
            return -1;
        p++;
        while (p < end && json_ws(*p))
            p++;
        return p == end ? 0 : -1;
    }
}

static inline const struct flat_member *flat_get(const struct flat *f, enum flat_key k)
{
    return f->known[k] >= 0 ? &f->m[f->known[k]] : NULL;
}

/* A string member as get_string sees it: 1 present, 0 absent or null,
 * -1 another type. */
static int flat_string_member(const struct flat *f, enum flat_key name, const struct flat_member **out)
{
    const struct flat_member *m = flat_get(f, name);
    if (!m || m->type == 'n')
        return 0;
    if (m->type != 's')
        return -1;
    *out = m;
    return 1;
}

static bool flat_id_ok(const struct flat *f, const struct proto_limits *lim, const struct flat_member **id)
{
    if (flat_string_member(f, K_ID, id) != 1 || (*id)->vlen == 0 || (*id)->vlen > lim->max_id)
        return false;
    for (size_t i = 0; i < (*id)->vlen; i++) {
        unsigned char c = (unsigned char)(*id)->val[i];
        if (c < 0x21 || c > 0x7e)
            return false;
    }
    return true;
}

/* rcpt as get_rcpt checks it; *rcpt stays NULL when absent. */
static bool flat_rcpt_ok(const struct flat *f, bool required, const struct proto_limits *lim,
                         const struct flat_member **rcpt)
{
    int rc = flat_string_member(f, K_RCPT, rcpt);
    if (rc < 0 || (rc == 0 && required))
        return false;
    if (rc == 0) {
        *rcpt = NULL;
        return true;
    }
    return (*rcpt)->vlen <= lim->max_rcpt && address_problem((*rcpt)->val, (*rcpt)->vlen) == NULL;
}

/* Copies the strings that the request points to into one block. */
struct flat_copy {
    const struct flat_member *m;
    const char **dst;
    size_t *dst_len;
};

static void flat_copy_out(struct request *r, struct flat_copy *c, int n, char *buf, size_t cap)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (c[i].m)
            total += c[i].m->vlen + 1;
    char *block = buf;
    if (total > cap) {
        block = malloc(total ? total : 1);
        if (!block) {
            fprintf(stderr, "rebound: out of memory\n");
            abort();
        }
        r->copies = block;
    }
    char *p = block;
    for (int i = 0; i < n; i++) {
        if (!c[i].m)
            continue;
        memcpy(p, c[i].m->val, c[i].m->vlen);
        p[c[i].m->vlen] = '\0';
        *c[i].dst = p;
        if (c[i].dst_len)
            *c[i].dst_len = c[i].m->vlen;
        p += c[i].m->vlen + 1;
    }
}

/* The "req" member as a value of its own (a scalar: the scan took no
 * other kind), or NULL when absent. */
static json_t *flat_req(const struct flat *f)
{
    const struct flat_member *m = flat_get(f, K_REQ);
    if (!m)
        return NULL;
    switch (m->type) {
    case 's':
        return json_stringn_nocheck(m->val, m->vlen);
    case 'i':
        return json_integer(m->num);
    case 't':
        return json_true();
    case 'f':
        return json_false();
    default:
        return json_null();
    }
}

/* Tries the fast path. Returns 0 with out filled in, or -1 (out untouched
 * but for what was zeroed) when the line must go the jansson way. */
static int parse_fast(const char *line, size_t len, const struct proto_limits *lim, struct request *out, char *buf,
                      size_t cap)
{
    struct flat f;
    const struct flat_member *opm, *id = NULL, *rcpt = NULL, *enh = NULL, *text = NULL, *camp = NULL, *m;

    if (flat_scan(line, len, &f) != 0 || flat_string_member(&f, K_OP, &opm) != 1)
        return -1;
    int op = op_lookup(opm->val, opm->vlen);
    switch (op) {
    case OP_BOUNCE: {
        m = flat_get(&f, K_CODE);
        if (!flat_id_ok(&f, lim, &id) || !flat_rcpt_ok(&f, true, lim, &rcpt) || !m || m->type != 'i' ||
            m->num < 400 || m->num > 599)
            return -1;
        out->code = (int)m->num;
        int rc = flat_string_member(&f, K_ENHANCED, &enh);
        if (rc < 0 || (rc > 0 && enh->vlen > 0 && !enhanced_ok(enh->val, enh->vlen)))
            return -1;
        if (rc > 0 && enh->vlen == 0)
            enh = NULL;
        rc = flat_string_member(&f, K_TEXT, &text);
        if (rc < 0 || (rc > 0 && text->vlen > lim->max_text))
            return -1;
        if (rc > 0 && text->vlen == 0)
            text = NULL;
        rc = flat_string_member(&f, K_CAMPAIGN, &camp);
        if (rc < 0 || (rc > 0 && (camp->vlen > lim->max_campaign || !text_ok(camp->val, camp->vlen, true))))
            return -1;
        if (rc > 0 && camp->vlen == 0)
            camp = NULL;
        m = flat_get(&f, K_NOT_BEFORE);
        if (m && m->type != 'n') {
            if (m->type != 'i' || m->num <= 0 || m->num >= (json_int_t)1 << 53)
                return -1;
            out->not_before = m->num;
        }
        m = flat_get(&f, K_META);
        if (m && m->type != 'n')
            return -1; /* an object (jansson keeps it), or a wrong type */
        break;
    }
    case OP_DELIVERED:
        if (!flat_id_ok(&f, lim, &id) || !flat_rcpt_ok(&f, false, lim, &rcpt))
            return -1;
        break;
    case OP_CANCEL:
        if (!flat_id_ok(&f, lim, &id))
            return -1;
        break;
    case OP_GET:
        /* By id only; a recipient lookup (rcpt) takes the jansson way. */
        m = flat_get(&f, K_RCPT);
        if (!flat_id_ok(&f, lim, &id) || (m && m->type != 'n'))
            return -1;
        break;
    case OP_PING:
    case OP_STATS:
        break;
    case OP_ACK: {
        /* A subscriber acks hundreds of events a line: the ids go into the
         * array the jansson path would have made, without its lexer and
         * without the object around them. */
        m = flat_get(&f, K_IDS);
        if (!m || m->type != 'a' || m->num == 0 || (size_t)m->num > lim->max_ack_ids)
            return -1;
        json_t *ids = json_array();
        if (!ids)
            return -1;
        const char *p = m->val, *end = m->val + m->vlen;
        for (json_int_t i = 0; i < m->num; i++) {
            /* The scan saw exactly num strings without escapes here. */
            p = (const char *)memchr(p, '"', (size_t)(end - p)) + 1;
            const char *q = memchr(p, '"', (size_t)(end - p));
            size_t n = (size_t)(q - p);
            if (!stream_id_ok(p, n) || json_array_append_new(ids, json_stringn_nocheck(p, n)) != 0) {
                json_decref(ids);
                return -1;
            }
            p = q + 1;
        }
        out->ids = ids;
        break;
    }
    default:
        return -1;
    }
    m = flat_get(&f, K_REQ);
    if (m && m->type == 'a') {
        json_decref(out->ids); /* jansson refuses an array as req */
        out->ids = NULL;
        return -1;
    }
    struct flat_copy c[] = {
        {id, &out->id, &out->id_len},       {rcpt, &out->rcpt, &out->rcpt_len}, {enh, &out->enhanced, NULL},
        {text, &out->text, NULL},           {camp, &out->campaign, NULL},
    };
    flat_copy_out(out, c, (int)(sizeof c / sizeof c[0]), buf, cap);
    out->req = flat_req(&f);
    out->op = (enum op)op;
    return 0;
}

/* Whether every integer in v is exactly representable as a double: a
 * client written in JavaScript (and many a JSON library) would read a
 * larger one rounded, so the daemon would echo, store and send on a
 * number that is not the one its reader sees. jansson's own depth limit
 * bounds the recursion. */
static bool int_exact(const json_t *v)
{
    const char *key;
    json_t *e;
    size_t i;

    switch (json_typeof(v)) {
    case JSON_INTEGER:
        return json_integer_value(v) >= -PROTO_INT_MAX && json_integer_value(v) <= PROTO_INT_MAX;
    case JSON_OBJECT:
        json_object_foreach((json_t *)v, key, e)
            if (!int_exact(e))
                return false;
        return true;
    case JSON_ARRAY:
        json_array_foreach(v, i, e)
            if (!int_exact(e))
                return false;
        return true;
    default:
        return true;
    }
}

static int parse_line(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                      struct proto_error *err, bool fast, char *buf, size_t cap)
{
    json_error_t jerr;
    json_t *root, *req = NULL, *opv;
    int op;

    memset(out, 0, sizeof *out);
    out->types = EV_ALL;
    err->code = NULL;
    err->message[0] = '\0';

    /* A blank line (or only a '\r') is most often a person pressing Enter
     * in nc; say so rather than quote jansson's "'[' or '{' expected". */
    size_t blank = 0;
    while (blank < len && (line[blank] == ' ' || line[blank] == '\t' || line[blank] == '\r'))
        blank++;
    if (blank == len)
        return fail(err, ERR_BAD_REQUEST, "empty line: expected a JSON object");

    if (fast && parse_fast(line, len, lim, out, buf, cap) == 0)
        return 0;
    memset(out, 0, sizeof *out);
    out->types = EV_ALL;

    root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL)
        return fail(err, ERR_BAD_REQUEST, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    out->root = root;
    if (!json_is_object(root))
        return fail(err, ERR_BAD_REQUEST, "a request must be a JSON object");

    req = json_object_get(root, "req");
    if (req != NULL) {
        if (json_is_object(req) || json_is_array(req))
            /* Not echoed: a reply must stay small and flat. */
            return fail(err, ERR_BAD_REQUEST, "field 'req' must be a string, a number, a boolean or null");
        out->req = req;
    }

    opv = json_object_get(root, "op");
    if (opv == NULL)
        return fail(err, ERR_BAD_REQUEST, "field 'op' is required");
    if (!json_is_string(opv))
        return fail(err, ERR_BAD_REQUEST, "field 'op' must be a string");
    op = op_lookup(json_string_value(opv), json_string_length(opv));
    if (op < 0) {
        char q[48];
        return fail(err, ERR_UNKNOWN_OP, "unknown op '%s'",
                    quote(q, sizeof q, json_string_value(opv), json_string_length(opv)));
    }
    out->op = (enum op)op;
    /* After the op's own checks, so that a field's error keeps its words;
     * before any value is used. */
    if (op_parsers[op](root, lim, out, err) < 0 ||
        (!int_exact(root) &&
         fail(err, ERR_BAD_REQUEST, "an integer in the request is out of range (-(2^53-1)..2^53-1)") < 0)) {
        /* Leave no half-validated field behind, only what the error
         * reply needs. */
        memset(out, 0, sizeof *out);
        out->root = root;
        out->req = req;
        out->op = (enum op)op;
        out->types = EV_ALL;
        return -1;
    }
    return 0;
}

int request_parse(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                  struct proto_error *err)
{
    return parse_line(line, len, lim, out, err, true, NULL, 0);
}

int request_parse_json(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                       struct proto_error *err)
{
    return parse_line(line, len, lim, out, err, false, NULL, 0);
}

int request_parse_buf(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                      struct proto_error *err, char *buf, size_t cap)
{
    return parse_line(line, len, lim, out, err, true, buf, cap);
}

void request_free(struct request *r)
{
    if (r->root != NULL) {
        json_decref(r->root);
    } else {
        /* the fast path's own values */
        json_decref(r->req);
        json_decref(r->ids);
    }
    free(r->copies);
    memset(r, 0, sizeof *r);
    r->types = EV_ALL;
}
