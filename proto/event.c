/*
 * Event encoding. An event is built from pieces encoded at different
 * times: the message fragment once, when the bounce arrives (it is stored
 * with the message); the body when the event happens (it goes into the
 * Redis stream); the line when a subscriber reads it, with the stream's
 * entry id spliced in. Each step is string work on compact JSON (written
 * by jbuf's encoders, or dumped by jansson), never a re-parse, because a
 * burst of due retries turns into that many lines at once.
 */
#include "proto/event.h"

#include "proto/jbuf.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends the members of obj as ,"k":v,"k2":v2, or nothing for an empty
 * object. */
static void append_members(struct jbuf *b, json_t *obj)
{
    size_t at = b->len;

    if (b->failed || obj == NULL || json_object_size(obj) == 0)
        return;
    if (!jbuf_json(b, obj))
        return;
    /* The dump is "{...}": its opening brace becomes the comma, its
     * closing one goes. */
    b->len--;
    b->p[at] = ',';
}

bool event_msg_fragment_put(struct jbuf *b, const char *id, const char *rcpt, const char *campaign, json_t *meta)
{
    /* Written member by member in the order readers know; only meta, the
     * client's own object, goes through jansson. */
    if (id == NULL || rcpt == NULL || (meta != NULL && !json_is_object(meta))) {
        b->failed = true;
        return false;
    }
    size_t idn = strlen(id), rn = strlen(rcpt), cn = campaign != NULL ? strlen(campaign) : 0;
    jbuf_reserve(b, 24 + idn + rn + cn);
    jbuf_lit(b, "\"id\":");
    jbuf_str(b, id, idn);
    jbuf_lit(b, ",\"rcpt\":");
    jbuf_str(b, rcpt, rn);
    if (campaign != NULL) {
        jbuf_lit(b, ",\"campaign\":");
        jbuf_str(b, campaign, cn);
    }
    if (meta != NULL) {
        jbuf_lit(b, ",\"meta\":");
        jbuf_json(b, meta);
    }
    return !b->failed;
}

/*
 * Returns the fragment (free it with free), or NULL when a string is not
 * valid UTF-8 or meta is not an object. campaign and meta may be NULL.
 */
char *event_msg_fragment(const char *id, const char *rcpt, const char *campaign, json_t *meta, size_t *len)
{
    struct jbuf b = {0};

    event_msg_fragment_put(&b, id, rcpt, campaign, meta);
    return jbuf_finish(&b, len);
}

/*
 * Returns the body (free it with free), or NULL for an unknown type or
 * when extra cannot be encoded. fragment may be NULL or "" for events not
 * about one message (domain_throttled). Members of extra come after the
 * fragment; the caller must not repeat a member that is already there.
 */
/* {"type":..,"at":..[,fragment] into b; false for an unknown type. */
static bool body_head(struct jbuf *b, enum event_type type, long long at_ms, const char *fragment)
{
    if ((unsigned)type >= EV__COUNT)
        return false;
    size_t fn = fragment != NULL ? strlen(fragment) : 0;
    const char *name = event_type_name(type);
    jbuf_reserve(b, 40 + fn + 200);
    jbuf_lit(b, "{\"type\":\"");
    jbuf_put(b, name, strlen(name));
    jbuf_lit(b, "\",\"at\":");
    jbuf_int(b, at_ms);
    if (fn > 0) {
        jbuf_lit(b, ",");
        jbuf_put(b, fragment, fn);
    }
    return true;
}

char *event_body(enum event_type type, long long at_ms, const char *fragment, json_t *extra, size_t *len)
{
    struct jbuf b = {0};

    if (extra != NULL && !json_is_object(extra))
        return NULL;
    if (!body_head(&b, type, at_ms, fragment))
        return NULL;
    append_members(&b, extra);
    jbuf_lit(&b, "}");
    return jbuf_finish(&b, len);
}

char *event_body_text(enum event_type type, long long at_ms, const char *fragment, const char *members,
                      size_t members_len, size_t *len)
{
    struct jbuf b = {0};

    if (members_len > 0 && members[0] != ',')
        return NULL;
    if (!body_head(&b, type, at_ms, fragment))
        return NULL;
    jbuf_put(&b, members, members_len);
    jbuf_lit(&b, "}");
    return jbuf_finish(&b, len);
}

/* Whether eid can go between quotes as it is (stream ids always can). */
static bool plain_string(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7f)
            return false;
    }
    return true;
}

/*
 * Returns the line (free it with free), or NULL when body does not look
 * like a JSON object text: it must start with '{', end with '}' and hold
 * no raw newline or NUL (which would break framing). The inside is not
 * re-validated: bodies come from event_body.
 */
size_t event_retry_compact(char *out, long long at_ms, long long due_ms, int attempt, const char *class_name,
                           size_t class_len, const char *id, size_t id_len, const char *who, size_t who_len)
{
    char *p = out;
    *p++ = 'R';
    /* at in base 36: 8 digits where decimal takes 13 (until 2059), which
     * with everything else puts the common event under the 64 bytes that
     * a stream node stores with a one-byte length. */
    char tmp[16], *q = tmp + sizeof tmp;
    unsigned long long u = at_ms < 0 ? 0 : (unsigned long long)at_ms;
    do {
        *--q = "0123456789abcdefghijklmnopqrstuvwxyz"[u % 36];
        u /= 36;
    } while (u);
    memcpy(p, q, (size_t)(tmp + sizeof tmp - q));
    p += tmp + sizeof tmp - q;
    *p++ = ',';
    p += jbuf_fmt_int(p, at_ms - due_ms);
    *p++ = ',';
    p += jbuf_fmt_int(p, attempt);
    *p++ = ',';
    memcpy(p, class_name, class_len);
    p += class_len;
    *p++ = '\n';
    if (who_len == 0 || who[0] != '"') {
        memcpy(p, id, id_len);
        p += id_len;
        *p++ = '\n';
    }
    memcpy(p, who, who_len);
    p += who_len;
    return (size_t)(p - out);
}

/* Reads a base-36 integer of 1-12 digits (0-9, a-z) ending at the byte
 * end; advances *s past it. */
static bool compact_b36(const char **s, const char *e, char end, long long *v)
{
    const char *p = *s;
    long long n = 0;
    int digits = 0;
    for (; p < e && digits < 12; p++, digits++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'z' ? *p - 'a' + 10 : -1;
        if (d < 0)
            break;
        n = n * 36 + d;
    }
    if (digits == 0 || p >= e || *p != end)
        return false;
    *v = n;
    *s = p + 1;
    return true;
}

/* Reads a decimal integer (an optional '-' then 1-18 digits) ending at
 * the byte end; advances *s past it. */
static bool compact_int(const char **s, const char *e, char end, long long *v)
{
    const char *p = *s;
    bool neg = p < e && *p == '-';
    p += neg;
    long long n = 0;
    int digits = 0;
    for (; p < e && *p >= '0' && *p <= '9' && digits < 18; p++, digits++)
        n = n * 10 + (*p - '0');
    if (digits == 0 || p >= e || *p != end)
        return false;
    *v = neg ? -n : n;
    *s = p + 1;
    return true;
}

/* Whether s[0..n) can go between JSON quotes as it is. */
static bool plain_bytes(const char *s, size_t n, bool allow_quote)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\\' || (c == '"' && !allow_quote))
            return false;
    }
    return true;
}

/* The last part of a compact body, from who to e: the members JSON of a
 * record (it starts with '"', written by the encoder from a record: it only
 * has to keep the line one line), or "<id>\n<rcpt>". Returns 0 with *id
 * and *rcpt set (NULL for the JSON form), or -1 when it is malformed. */
static int read_who(const char *who, const char *e, const char **id, size_t *idn, const char **rcpt, size_t *rn)
{
    size_t who_len = (size_t)(e - who);
    if (who_len > 0 && who[0] == '"')
        return memchr(who, '\n', who_len) != NULL || memchr(who, '\0', who_len) != NULL ? -1 : 0;
    const char *nl2 = memchr(who, '\n', who_len);
    if (nl2 == NULL || nl2 == who || nl2 + 1 == e)
        return -1;
    *id = who;
    *idn = (size_t)(nl2 - who);
    *rcpt = nl2 + 1;
    *rn = (size_t)(e - *rcpt);
    return plain_bytes(*id, *idn, false) && plain_bytes(*rcpt, *rn, false) ? 0 : -1;
}

/* The members every compact form starts its line with, in the JSON body's
 * order: {"eid":..,"type":..,"at":..,"id":..,"rcpt":.. (or the record's
 * members JSON, who),"class":..,"attempt":N. */
static void put_head(struct jbuf *b, const char *eid, const char *type, long long at, const char *id, size_t idn,
                     const char *rcpt, size_t rn, const char *who, size_t who_len, const char *cls, size_t clsn,
                     long long attempt)
{
    jbuf_lit(b, "{\"eid\":");
    if (plain_string(eid)) {
        jbuf_lit(b, "\"");
        jbuf_put(b, eid, strlen(eid));
        jbuf_lit(b, "\"");
    } else {
        json_t *s = json_string(eid);
        jbuf_json(b, s);
        json_decref(s);
    }
    jbuf_lit(b, ",\"type\":\"");
    jbuf_put(b, type, strlen(type));
    jbuf_lit(b, "\",\"at\":");
    jbuf_int(b, at);
    jbuf_lit(b, ",");
    if (id != NULL) {
        jbuf_lit(b, "\"id\":\"");
        jbuf_put(b, id, idn);
        jbuf_lit(b, "\",\"rcpt\":\"");
        jbuf_put(b, rcpt, rn);
        jbuf_lit(b, "\"");
    } else {
        jbuf_put(b, who, who_len);
    }
    jbuf_lit(b, ",\"class\":\"");
    jbuf_put(b, cls, clsn);
    jbuf_lit(b, "\",\"attempt\":");
    jbuf_int(b, attempt);
}

/* The line of a compact retry body (event_retry_compact), or NULL when it
 * is malformed. The members written are those of the JSON body, in its
 * order, so the line is byte for byte what the JSON body gives. */
static char *compact_line(const char *eid, const char *body, size_t body_len, size_t *len)
{
    const char *p = body + 1, *e = body + body_len;
    long long at, late, attempt;
    if (!compact_b36(&p, e, ',', &at) || !compact_int(&p, e, ',', &late) || !compact_int(&p, e, ',', &attempt) ||
        attempt < 0 || attempt > 1000000)
        return NULL;
    const char *cls = p, *nl = memchr(p, '\n', (size_t)(e - p));
    if (nl == NULL || nl == cls)
        return NULL;
    size_t cls_len = (size_t)(nl - cls);
    for (size_t i = 0; i < cls_len; i++) {
        char c = cls[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return NULL;
    }
    const char *who = nl + 1, *id = NULL, *rcpt = NULL;
    size_t who_len = (size_t)(e - who), id_len = 0, rcpt_len = 0;
    if (read_who(who, e, &id, &id_len, &rcpt, &rcpt_len) != 0)
        return NULL;

    struct jbuf b = {0};
    jbuf_reserve(&b, 7 + strlen(eid) + 2 + 96 + cls_len + who_len + 24);
    put_head(&b, eid, "retry", at, id, id_len, rcpt, rcpt_len, who, who_len, cls, cls_len, attempt);
    jbuf_lit(&b, ",\"due_at\":");
    jbuf_int(&b, at - late);
    jbuf_lit(&b, "}\n");
    return jbuf_finish(&b, len);
}

/* ---- the generic compact form (event_compact) ---- */

/* The type letters, by enum event_type. */
static const char type_letter[EV__COUNT] = {
    [EV_RETRY] = 'r', [EV_GIVE_UP] = 'g', [EV_SUPPRESS] = 's', [EV_SENDER_ALERT] = 'a', [EV_DOMAIN_THROTTLED] = 'd',
};

/* The member names replaced, each by its code: control bytes but the
 * whitespace ones (\t \n \r), which compact JSON never holds raw. */
static const struct {
    unsigned char code;
    const char *name; /* "<name>": */
    size_t len;
} member_codes[] = {
#define MC(c, n) {c, "\"" n "\":", sizeof(n) + 2}
    MC(0x01, "id"),      MC(0x02, "rcpt"),    MC(0x03, "campaign"), MC(0x04, "meta"),    MC(0x05, "class"),
    MC(0x06, "attempt"), MC(0x07, "code"),    MC(0x08, "enhanced"), MC(0x0b, "reason"),  MC(0x0c, "text"),
    MC(0x0e, "domain"),  MC(0x0f, "repeats"), MC(0x10, "due_at"),   MC(0x11, "until"),   MC(0x12, "replies"),
    MC(0x13, "window_ms"),
#undef MC
};
#define NCODES (sizeof member_codes / sizeof member_codes[0])

static int letter_type(char c)
{
    for (int t = 0; t < EV__COUNT; t++)
        if (type_letter[t] == c)
            return t;
    return -1;
}

static long long b36_of(const char *s, size_t n, bool *ok);
static size_t compact_outcome(int t, const char *p, const char *e, long long at, char *out);

size_t event_compact(const char *body, size_t body_len, char *out)
{
    static const char head[] = "{\"type\":\"";
    const size_t hl = sizeof head - 1;
    if (body_len < hl + 8 || memcmp(body, head, hl) != 0 || body[body_len - 1] != '}')
        return 0;
    const char *p = body + hl, *e = body + body_len - 1;
    const char *q = memchr(p, '"', (size_t)(e - p));
    char name[32];
    if (q == NULL || (size_t)(q - p) >= sizeof name)
        return 0;
    memcpy(name, p, (size_t)(q - p));
    name[q - p] = '\0';
    int t = event_type_parse(name);
    if (t < 0 || (size_t)(e - q) < 7 || memcmp(q, "\",\"at\":", 7) != 0)
        return 0;
    p = q + 7;
    long long at = 0;
    int digits = 0;
    for (; p < e && *p >= '0' && *p <= '9' && digits < 16; p++, digits++)
        at = at * 10 + (*p - '0');
    if (digits == 0 || (p < e && *p != ','))
        return 0;
    /* The outcomes of a report take the positional form, when they have
     * the shape bounce.c writes (what every one of them has). */
    if (t == EV_GIVE_UP || t == EV_SUPPRESS || t == EV_SENDER_ALERT) {
        size_t n = compact_outcome(t, p, e, at, out);
        if (n > 0)
            return n;
    }
    /* The members must not hold a code byte already (compact JSON does
     * not: a control character in a string is escaped). */
    for (const char *c = p; c < e; c++)
        if ((unsigned char)*c < 0x20)
            return 0;

    char *o = out;
    *o++ = type_letter[t];
    char tmp[16], *d = tmp + sizeof tmp;
    unsigned long long u = (unsigned long long)at;
    do {
        *--d = "0123456789abcdefghijklmnopqrstuvwxyz"[u % 36];
        u /= 36;
    } while (u);
    memcpy(o, d, (size_t)(tmp + sizeof tmp - d));
    o += tmp + sizeof tmp - d;
    while (p < e) {
        size_t k = NCODES;
        if (*p == '"')
            for (k = 0; k < NCODES; k++)
                if ((size_t)(e - p) >= member_codes[k].len && memcmp(p, member_codes[k].name, member_codes[k].len) == 0)
                    break;
        if (k < NCODES) {
            *o++ = (char)member_codes[k].code;
            p += member_codes[k].len;
        } else {
            *o++ = *p++;
        }
    }
    return (size_t)(o - out);
}

/* The line of a generic compact body, or NULL when it is malformed. */
static char *generic_line(const char *eid, const char *body, size_t body_len, size_t *len)
{
    int t = letter_type(body[0]);
    if (t < 0)
        return NULL;
    const char *p = body + 1, *e = body + body_len;
    const char *comma = memchr(p, ',', (size_t)(e - p));
    const char *ae = comma ? comma : e;
    bool ok;
    long long at = b36_of(p, (size_t)(ae - p), &ok);
    if (!ok || memchr(body, '\n', body_len) != NULL || memchr(body, '\0', body_len) != NULL)
        return NULL;
    const char *tn = event_type_name((enum event_type)t);

    struct jbuf b = {0};
    jbuf_reserve(&b, 7 + strlen(eid) + 2 + 40 + 2 * body_len + 32);
    jbuf_lit(&b, "{\"eid\":");
    if (plain_string(eid)) {
        jbuf_lit(&b, "\"");
        jbuf_put(&b, eid, strlen(eid));
        jbuf_lit(&b, "\"");
    } else {
        json_t *s = json_string(eid);
        jbuf_json(&b, s);
        json_decref(s);
    }
    jbuf_lit(&b, ",\"type\":\"");
    jbuf_put(&b, tn, strlen(tn));
    jbuf_lit(&b, "\",\"at\":");
    jbuf_int(&b, at);
    for (p = ae; p < e;) {
        const char *run = p;
        while (p < e && (unsigned char)*p >= 0x20)
            p++;
        jbuf_put(&b, run, (size_t)(p - run));
        if (p == e)
            break;
        size_t k;
        for (k = 0; k < NCODES && member_codes[k].code != (unsigned char)*p; k++)
            ;
        if (k == NCODES) {
            size_t n;
            free(jbuf_finish(&b, &n));
            return NULL;
        }
        jbuf_put(&b, member_codes[k].name, member_codes[k].len);
        p++;
    }
    jbuf_lit(&b, "}\n");
    return jbuf_finish(&b, len);
}

/* A base-36 number of 1-12 digits, the whole of s[0..n). */
static long long b36_of(const char *s, size_t n, bool *ok)
{
    long long v = 0;
    *ok = n >= 1 && n <= 12;
    for (size_t i = 0; *ok && i < n; i++) {
        int d = s[i] >= '0' && s[i] <= '9' ? s[i] - '0' : s[i] >= 'a' && s[i] <= 'z' ? s[i] - 'a' + 10 : -1;
        if (d < 0)
            *ok = false;
        else
            v = v * 36 + d;
    }
    return v;
}

/* ---- the positional compact form of give_up, suppress, sender_alert ---- */

/* The reasons these events name, each by one letter; '=' in the form
 * stands for a reason equal to the class (every sender_alert's). */
static const struct {
    char letter;
    const char *name;
} reason_codes[] = {
    {'p', "permanent"}, {'m', "max_attempts"}, {'a', "max_age"},     {'h', "hard_invalid"},
    {'d', "disabled"},  {'c', "chronic_soft"}, {'s', "suppressed"},
};
#define NREASONS (sizeof reason_codes / sizeof reason_codes[0])

/* A JSON scanner for the bodies event_body_text wrote: each reads one
 * item at *p (before e) and advances past it, or returns false. */
static bool lit(const char **p, const char *e, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(e - *p) < n || memcmp(*p, s, n) != 0)
        return false;
    *p += n;
    return true;
}

/* A JSON string: *p at its opening quote. *plain says whether it holds no
 * escape (its bytes are then the value). */
static bool jstring(const char **p, const char *e, bool *plain)
{
    const char *q = *p;
    if (q >= e || *q != '"')
        return false;
    *plain = true;
    for (q++; q < e; q++) {
        if (*q == '\\') {
            *plain = false;
            q++;
        } else if (*q == '"') {
            *p = q + 1;
            return true;
        } else if ((unsigned char)*q < 0x20) {
            return false;
        }
    }
    return false;
}

/* Any JSON value (meta): strings and nesting skipped whole, a scalar up
 * to the next delimiter. */
static bool jvalue(const char **p, const char *e)
{
    const char *q = *p;
    int depth = 0;
    bool plain;
    while (q < e) {
        char c = *q;
        if (c == '"') {
            if (!jstring(&q, e, &plain))
                return false;
            if (depth == 0)
                break;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                break;
            if (--depth == 0) {
                q++;
                break;
            }
        } else if (c == ',' && depth == 0) {
            break;
        } else if ((unsigned char)c < 0x20) {
            return false;
        }
        q++;
    }
    if (depth != 0 || q == *p)
        return false;
    *p = q;
    return true;
}

/* Digits (an optional '-' first), at most 18. */
static bool jint(const char **p, const char *e, const char **v, size_t *n)
{
    const char *q = *p;
    *v = q;
    if (q < e && *q == '-')
        q++;
    const char *d = q;
    while (q < e && *q >= '0' && *q <= '9' && q - d < 18)
        q++;
    if (q == d)
        return false;
    *n = (size_t)(q - *v);
    *p = q;
    return true;
}

static bool name_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return n > 0;
}

/* The lower-cased domain of a plain recipient, as the alert names it. */
static bool domain_of_rcpt(const char *rcpt, size_t rn, const char *d, size_t dn)
{
    const char *at = memchr(rcpt, '@', rn);
    if (at == NULL)
        return false;
    size_t n = rn - (size_t)(at + 1 - rcpt);
    if (n != dn)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = at[1 + i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != d[i])
            return false;
    }
    return true;
}

static char *put(char *o, const char *s, size_t n)
{
    if (n > 0) /* s may be NULL for an absent member */
        memcpy(o, s, n);
    return o + n;
}

static char *put_b36(char *o, unsigned long long u)
{
    char tmp[16], *d = tmp + sizeof tmp;
    do {
        *--d = "0123456789abcdefghijklmnopqrstuvwxyz"[u % 36];
        u /= 36;
    } while (u);
    return put(o, d, (size_t)(tmp + sizeof tmp - d));
}

/* The positional form of a give_up, suppress or sender_alert body of the
 * shape bounce.c writes, into out (room for body_len bytes); 0 for any
 * other shape. */
static size_t compact_outcome(int t, const char *p, const char *e, long long at, char *out)
{
    const char *who = p, *id = NULL, *rcpt = NULL;
    size_t idn = 0, rn = 0;
    bool plain_id, plain_rcpt, plain;
    /* the message's members */
    if (!lit(&p, e, ",\"id\":"))
        return 0;
    who = p - 5;
    id = p + 1;
    if (!jstring(&p, e, &plain_id))
        return 0;
    idn = (size_t)(p - 1 - id);
    if (!lit(&p, e, ",\"rcpt\":"))
        return 0;
    rcpt = p + 1;
    if (!jstring(&p, e, &plain_rcpt))
        return 0;
    rn = (size_t)(p - 1 - rcpt);
    bool members_json = !plain_id || !plain_rcpt || !plain_bytes(id, idn, false) || !plain_bytes(rcpt, rn, false);
    if (lit(&p, e, ",\"campaign\":")) {
        members_json = true;
        if (!jstring(&p, e, &plain))
            return 0;
    }
    if (lit(&p, e, ",\"meta\":")) {
        members_json = true;
        if (!jvalue(&p, e))
            return 0;
    }
    const char *who_end = p;
    /* the outcome's members */
    const char *cls, *att, *code, *enh = NULL, *reason, *text = NULL, *dom = NULL, *rep = NULL;
    size_t clsn, attn, coden, enhn = 0, reasonn, textn = 0, domn = 0, repn = 0;
    if (!lit(&p, e, ",\"class\":\""))
        return 0;
    cls = p;
    while (p < e && *p != '"')
        p++;
    clsn = (size_t)(p - cls);
    if (!name_chars(cls, clsn) || !lit(&p, e, "\",\"attempt\":") || !jint(&p, e, &att, &attn) || att[0] == '-' ||
        !lit(&p, e, ",\"code\":") || !jint(&p, e, &code, &coden))
        return 0;
    if (lit(&p, e, ",\"enhanced\":\"")) {
        enh = p;
        while (p < e && ((*p >= '0' && *p <= '9') || *p == '.'))
            p++;
        enhn = (size_t)(p - enh);
        if (enhn == 0 || !lit(&p, e, "\""))
            return 0;
    }
    if (!lit(&p, e, ",\"reason\":\""))
        return 0;
    reason = p;
    while (p < e && *p != '"')
        p++;
    reasonn = (size_t)(p - reason);
    if (!name_chars(reason, reasonn) || !lit(&p, e, "\""))
        return 0;
    if (t == EV_SENDER_ALERT) {
        if (lit(&p, e, ",\"text\":")) {
            text = p;
            if (!jstring(&p, e, &plain))
                return 0;
            textn = (size_t)(p - text);
        }
        if (!lit(&p, e, ",\"domain\":\""))
            return 0;
        dom = p;
        while (p < e && *p != '"' && *p != ',' && *p != '\\' && (unsigned char)*p >= 0x20)
            p++;
        domn = (size_t)(p - dom);
        if (domn == 0 || !lit(&p, e, "\",\"repeats\":") || !jint(&p, e, &rep, &repn) || rep[0] == '-')
            return 0;
    }
    if (p != e)
        return 0;
    char rl = 0;
    if (reasonn == clsn && memcmp(reason, cls, clsn) == 0) {
        rl = '=';
    } else {
        for (size_t k = 0; k < NREASONS; k++)
            if (strlen(reason_codes[k].name) == reasonn && memcmp(reason_codes[k].name, reason, reasonn) == 0)
                rl = reason_codes[k].letter;
        if (!rl)
            return 0;
    }

    char *o = out;
    *o++ = t == EV_GIVE_UP ? 'G' : t == EV_SUPPRESS ? 'S' : 'A';
    o = put_b36(o, (unsigned long long)at);
    *o++ = ',';
    o = put(o, att, attn);
    *o++ = ',';
    o = put(o, code, coden);
    *o++ = ',';
    o = put(o, enh, enhn);
    *o++ = ',';
    *o++ = rl;
    o = put(o, cls, clsn);
    if (t == EV_SENDER_ALERT) {
        *o++ = ',';
        o = put(o, rep, repn);
        *o++ = ',';
        /* the recipient's own domain, what the alert names, goes empty */
        if (members_json || !domain_of_rcpt(rcpt, rn, dom, domn))
            o = put(o, dom, domn);
        if (text) {
            *o++ = ',';
            o = put(o, text, textn);
        }
    }
    *o++ = '\n';
    if (members_json) {
        o = put(o, who, (size_t)(who_end - who));
    } else {
        o = put(o, id, idn);
        *o++ = '\n';
        o = put(o, rcpt, rn);
    }
    return (size_t)(o - out);
}

/* The line of a positional body (compact_outcome), or NULL when it is
 * malformed: the members of the JSON body, in its order. */
static char *outcome_line(const char *eid, const char *body, size_t body_len, size_t *len)
{
    int t = body[0] == 'G' ? EV_GIVE_UP : body[0] == 'S' ? EV_SUPPRESS : EV_SENDER_ALERT;
    const char *p = body + 1, *e = body + body_len;
    const char *nl = memchr(p, '\n', (size_t)(e - p));
    if (nl == NULL)
        return NULL;
    long long at, attempt, code, repeats = 0;
    if (!compact_b36(&p, nl, ',', &at) || !compact_int(&p, nl, ',', &attempt) || attempt < 0 ||
        !compact_int(&p, nl, ',', &code))
        return NULL;
    const char *enh = p;
    while (p < nl && ((*p >= '0' && *p <= '9') || *p == '.'))
        p++;
    size_t enhn = (size_t)(p - enh);
    if (p >= nl || *p != ',')
        return NULL;
    p++;
    char rl = p < nl ? *p++ : 0;
    const char *cls = p;
    while (p < nl && *p != ',')
        p++;
    size_t clsn = (size_t)(p - cls);
    if (!name_chars(cls, clsn))
        return NULL;
    const char *reason = cls;
    size_t reasonn = clsn;
    if (rl != '=') {
        reason = NULL;
        for (size_t k = 0; k < NREASONS; k++)
            if (reason_codes[k].letter == rl)
                reason = reason_codes[k].name;
        if (reason == NULL)
            return NULL;
        reasonn = strlen(reason);
    }
    const char *dom = NULL, *text = NULL;
    size_t domn = 0, textn = 0;
    if (t == EV_SENDER_ALERT) {
        if (p >= nl)
            return NULL;
        p++;
        if (!compact_int(&p, nl, ',', &repeats) || repeats < 0)
            return NULL;
        dom = p;
        while (p < nl && *p != ',')
            p++;
        domn = (size_t)(p - dom);
        if (domn == 0)
            dom = NULL;
        if (p < nl) {
            text = p + 1;
            textn = (size_t)(nl - text);
            if (textn < 2 || text[0] != '"' || text[textn - 1] != '"' || memchr(text, '\0', textn) != NULL)
                return NULL;
        }
    } else if (p != nl) {
        return NULL;
    }
    const char *who = nl + 1, *id = NULL, *rcpt = NULL;
    size_t who_len = (size_t)(e - who), idn = 0, rn = 0;
    if (read_who(who, e, &id, &idn, &rcpt, &rn) != 0)
        return NULL;
    char lower[256];
    if (t == EV_SENDER_ALERT && domn == 0) {
        /* the recipient's domain, lower-cased, as the alert names it */
        const char *a = rcpt ? memchr(rcpt, '@', rn) : NULL;
        if (a == NULL)
            return NULL;
        domn = rn - (size_t)(a + 1 - rcpt);
        if (domn == 0 || domn >= sizeof lower)
            return NULL;
        for (size_t i = 0; i < domn; i++) {
            char c = a[1 + i];
            lower[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
        }
        dom = lower;
    }
    if (dom != NULL && !plain_bytes(dom, domn, false))
        return NULL;

    const char *tn = event_type_name((enum event_type)t);
    struct jbuf b = {0};
    jbuf_reserve(&b, 7 + strlen(eid) + 2 + 200 + body_len + reasonn + domn);
    put_head(&b, eid, tn, at, id, idn, rcpt, rn, who, who_len, cls, clsn, attempt);
    jbuf_lit(&b, ",\"code\":");
    jbuf_int(&b, code);
    if (enhn > 0) {
        jbuf_lit(&b, ",\"enhanced\":\"");
        jbuf_put(&b, enh, enhn);
        jbuf_lit(&b, "\"");
    }
    jbuf_lit(&b, ",\"reason\":\"");
    jbuf_put(&b, reason, reasonn);
    jbuf_lit(&b, "\"");
    if (t == EV_SENDER_ALERT) {
        if (text != NULL) {
            jbuf_lit(&b, ",\"text\":");
            jbuf_put(&b, text, textn);
        }
        jbuf_lit(&b, ",\"domain\":\"");
        jbuf_put(&b, dom, domn);
        jbuf_lit(&b, "\",\"repeats\":");
        jbuf_int(&b, repeats);
    }
    jbuf_lit(&b, "}\n");
    return jbuf_finish(&b, len);
}

char *event_line(const char *eid, const char *body, size_t body_len, size_t *len)
{
    struct jbuf b = {0};
    size_t i;

    if (eid != NULL && body != NULL && body_len > 0 && body[0] == 'R')
        return compact_line(eid, body, body_len, len);
    if (eid != NULL && body != NULL && body_len > 0 && (body[0] == 'G' || body[0] == 'S' || body[0] == 'A'))
        return outcome_line(eid, body, body_len, len);
    if (eid != NULL && body != NULL && body_len > 0 && body[0] >= 'a' && body[0] <= 'z')
        return generic_line(eid, body, body_len, len);
    if (eid == NULL || body == NULL || body_len < 2 || body[0] != '{' || body[body_len - 1] != '}' ||
        memchr(body, '\n', body_len) != NULL || memchr(body, '\0', body_len) != NULL)
        return NULL;

    /* One allocation of the right size: bursts make lines by the
     * thousand. A plain eid takes its length plus the quotes. */
    jbuf_reserve(&b, 7 + strlen(eid) + 2 + body_len + 1);
    jbuf_put(&b, "{\"eid\":", 7);
    if (plain_string(eid)) {
        jbuf_put(&b, "\"", 1);
        jbuf_put(&b, eid, strlen(eid));
        jbuf_put(&b, "\"", 1);
    } else {
        json_t *s = json_string(eid);
        jbuf_json(&b, s);
        json_decref(s);
    }
    for (i = 1; i < body_len - 1; i++)
        if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r')
            break;
    if (i < body_len - 1) {
        jbuf_put(&b, ",", 1);
        jbuf_put(&b, body + 1, body_len - 1);
    } else {
        jbuf_put(&b, "}", 1);
    }
    jbuf_put(&b, "\n", 1);
    return jbuf_finish(&b, len);
}

int event_body_type(const char *body, size_t body_len)
{
    static const char head[] = "{\"type\":\"";
    const size_t hl = sizeof head - 1;
    char name[32];
    int t = -1;

    if (body_len > 0 && body[0] == 'R')
        return EV_RETRY; /* the compact form: event_retry_compact */
    if (body_len > 0 && body[0] == 'G')
        return EV_GIVE_UP; /* the positional forms of event_compact */
    if (body_len > 0 && body[0] == 'S')
        return EV_SUPPRESS;
    if (body_len > 0 && body[0] == 'A')
        return EV_SENDER_ALERT;
    if (body_len > 0 && body[0] >= 'a' && body[0] <= 'z')
        return letter_type(body[0]); /* event_compact's */
    /* Bodies from event_body start with the type: read it in place. */
    if (body_len > hl && memcmp(body, head, hl) == 0) {
        const char *q = memchr(body + hl, '"', body_len - hl);
        size_t n = q ? (size_t)(q - body - hl) : 0;
        if (q != NULL && n < sizeof name && memchr(body + hl, '\\', n) == NULL) {
            memcpy(name, body + hl, n);
            name[n] = '\0';
            return event_type_parse(name);
        }
    }

    /* Anything else (hand-written, reordered): parse it. */
    json_t *root = json_loadb(body, body_len, 0, NULL);
    json_t *type = json_object_get(root, "type");
    if (json_is_string(type))
        t = event_type_parse(json_string_value(type));
    json_decref(root);
    return t;
}

/* ---- batch entries (event.h) ---- */

size_t event_batch_head(char *out, long long n)
{
    out[0] = EVENT_BATCH_MARK;
    size_t k = 1 + jbuf_fmt_int(out + 1, n);
    out[k++] = '\n';
    return k;
}

size_t event_batch_item(char *out, size_t body_len)
{
    size_t k = jbuf_fmt_int(out, (long long)body_len);
    out[k++] = ':';
    return k;
}

/* Reads decimal digits at *pos up to the byte stop; -1 when there are none,
 * too many, or stop does not follow. */
static long long batch_number(const char *v, size_t len, size_t *pos, char stop)
{
    size_t i = *pos;
    long long n = 0;
    while (i < len && v[i] >= '0' && v[i] <= '9' && i - *pos < 15)
        n = n * 10 + (v[i++] - '0');
    if (i == *pos || i >= len || v[i] != stop)
        return -1;
    *pos = i + 1;
    return n;
}

long long event_batch_open(const char *v, size_t len, size_t *pos)
{
    if (!event_is_batch(v, len))
        return -1;
    *pos = 1;
    return batch_number(v, len, pos, '\n');
}

bool event_batch_next(const char *v, size_t len, size_t *pos, const char **body, size_t *body_len)
{
    size_t at = *pos;
    long long n = batch_number(v, len, &at, ':');
    if (n < 0 || (size_t)n > len - at) {
        *pos = len;
        return false;
    }
    *body = v + at;
    *body_len = (size_t)n;
    *pos = at + (size_t)n;
    return true;
}

bool event_batch_eid(const char *entry_eid, long long n, long long k, char *out, size_t cap)
{
    unsigned long long ms = 0, seq = 0;
    const char *p = entry_eid;
    char *end;
    if (*p < '0' || *p > '9' || n < 1 || k < 0 || k >= n)
        return false;
    ms = strtoull(p, &end, 10);
    if (*end != '-' || end[1] < '0' || end[1] > '9')
        return false;
    seq = strtoull(end + 1, &end, 10);
    if (*end != '\0' || seq < (unsigned long long)(n - 1))
        return false;
    int w = snprintf(out, cap, "%llu-%llu", ms, seq - (unsigned long long)(n - 1 - k));
    return w > 0 && (size_t)w < cap;
}
