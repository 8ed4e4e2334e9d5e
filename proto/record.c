#define _GNU_SOURCE /* memmem */
#include "proto/record.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/jbuf.h"

/* Epoch ms are at least this; times relative to first are far below. */
#define EPOCH_MS_MIN 1000000000000LL

/* The writers run for every report: plain appends, not snprintf. */
static char *put_str(char *p, const char *s, size_t max)
{
    while (*s && max--)
        *p++ = *s++;
    return p;
}

static char *put_i64(char *p, int64_t v)
{
    return p + jbuf_fmt_int(p, v);
}

/* Class names are at most 31 bytes, enhanced codes 15 (policy and proto
 * limits): the caps below only keep a broken caller inside the buffer. */
size_t record_header(char *buf, char state, int64_t due_ms, int attempt, const char *class_name, int64_t first_ms)
{
    char *p = buf;
    *p++ = state;
    p = put_i64(p, due_ms - first_ms);
    *p++ = ',';
    p = put_i64(p, attempt);
    *p++ = ',';
    p = put_str(p, class_name, 31);
    *p++ = ',';
    p = put_i64(p, first_ms);
    *p = '\0';
    return (size_t)(p - buf);
}

size_t record_item(char *buf, int64_t at_ms, int64_t first_ms, int code, const char *enhanced,
                   const char *class_name)
{
    char *p = buf;
    p = put_i64(p, at_ms - first_ms);
    *p++ = ',';
    p = put_i64(p, code);
    *p++ = ',';
    p = put_str(p, enhanced ? enhanced : "", 15);
    *p++ = ',';
    p = put_str(p, class_name, 31);
    *p = '\0';
    return (size_t)(p - buf);
}

static bool plain(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return false;
    return true;
}

void record_who(const char *id, size_t id_len, const char *rcpt, const char *members, const char **who,
                size_t *who_len)
{
    static const char a[] = "\"id\":\"", b[] = "\",\"rcpt\":\"";
    size_t rlen = rcpt ? strlen(rcpt) : 0, mlen = strlen(members);
    *who = members;
    *who_len = mlen;
    /* The members are exactly "id":"<id>","rcpt":"<rcpt>" when the id and
     * the recipient needed no escaping and nothing else was given. */
    if (!rcpt || rlen == 0 || mlen != sizeof a - 1 + id_len + sizeof b - 1 + rlen + 1 || !plain(id, id_len) ||
        !plain(rcpt, rlen))
        return;
    const char *p = members;
    if (memcmp(p, a, sizeof a - 1) != 0 || memcmp(p += sizeof a - 1, id, id_len) != 0 ||
        memcmp(p += id_len, b, sizeof b - 1) != 0 || memcmp(p += sizeof b - 1, rcpt, rlen) != 0 || p[rlen] != '"')
        return;
    *who = p;
    *who_len = rlen;
}

static int parse_i64(const char **p, const char *end, char stop, int64_t *out)
{
    int64_t v = 0;
    const char *s = *p;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*s - '0');
        s++;
    }
    if (s >= end || *s != stop)
        return -1;
    *p = s + 1;
    *out = v;
    return 0;
}

int record_parse(const char *rec, size_t len, struct record *out)
{
    const char *p = rec, *end = rec + len;
    if (len < 2 || (rec[0] != 'P' && rec[0] != 'A'))
        return -1;
    out->state = rec[0];
    p++;
    int64_t attempt, due;
    /* due precedes first only after the clock went back */
    bool before = p < end && *p == '-';
    p += before;
    if (parse_i64(&p, end, ',', &due) || parse_i64(&p, end, ',', &attempt) || attempt > 65535)
        return -1;
    if (before)
        due = -due;
    out->attempt = (int)attempt;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (!comma || comma == p)
        return -1;
    out->class_name = p;
    out->class_len = (size_t)(comma - p);
    p = comma + 1;
    /* an epoch time in ms is below 2^53; a larger one is a damaged record,
     * and the relative times added to it below would overflow */
    if (parse_i64(&p, end, '\n', &out->first_ms) || out->first_ms >= (1LL << 53))
        return -1;
    out->due_ms = due >= EPOCH_MS_MIN ? due : out->first_ms + due; /* epoch ms: an earlier version's */
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl || nl == p)
        return -1;
    out->who = p;
    out->who_len = (size_t)(nl - p);
    out->history = nl + 1;
    out->history_len = (size_t)(end - nl - 1);
    if (p[0] != '"') {
        out->rcpt = p;
        out->rcpt_len = out->who_len;
        return 0;
    }
    /* Members are compact JSON that jansson wrote: the member name appears
     * only as itself (inside a string a quote is escaped), so the value
     * ends at the next unescaped quote. */
    static const char key[] = "\"rcpt\":\"";
    const char *r = memmem(p, out->who_len, key, sizeof key - 1);
    out->rcpt = "";
    out->rcpt_len = 0;
    if (r) {
        const char *s = r + sizeof key - 1;
        for (const char *q = s; q < nl; q++) {
            if (*q == '\\')
                q++;
            else if (*q == '"') {
                out->rcpt = s;
                out->rcpt_len = (size_t)(q - s);
                break;
            }
        }
    }
    return 0;
}

static void history_add(json_t *out, json_int_t at, json_int_t code, const char *enh, size_t enh_len,
                        const char *cls, size_t cls_len)
{
    json_t *h = json_object();
    json_object_set_new(h, "at", json_integer(at));
    json_object_set_new(h, "code", json_integer(code));
    if (enh_len)
        json_object_set_new(h, "enhanced", json_stringn(enh, enh_len));
    json_object_set_new(h, "class", json_stringn(cls, cls_len));
    json_array_append_new(out, h);
}

/* The history as written before the compact form: a JSON array. */
static void history_legacy(json_t *out, const char *text, size_t len)
{
    json_t *arr = json_loadb(text, len, 0, NULL);
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        const char *enh = json_string_value(json_array_get(item, 2));
        const char *cls = json_string_value(json_array_get(item, 3));
        history_add(out, json_integer_value(json_array_get(item, 0)), json_integer_value(json_array_get(item, 1)), enh ? enh : "",
                    enh ? strlen(enh) : 0, cls ? cls : "", cls ? strlen(cls) : 0);
    }
    json_decref(arr);
}

static json_t *history_json(const struct record *rec)
{
    json_t *out = json_array();
    const char *p = rec->history, *end = rec->history + rec->history_len;
    if (p < end && *p == '[') {
        history_legacy(out, p, rec->history_len);
        return out;
    }
    while (p < end) {
        const char *stop = memchr(p, ';', (size_t)(end - p));
        if (!stop)
            stop = end;
        /* at,code,enhanced,class */
        const char *f[4];
        size_t fl[4];
        int n = 0;
        for (const char *q = p; n < 4 && q <= stop; n++) {
            const char *c = n < 3 ? memchr(q, ',', (size_t)(stop - q)) : NULL;
            const char *e = c ? c : stop;
            f[n] = q;
            fl[n] = (size_t)(e - q);
            q = e + 1;
        }
        if (n == 4) {
            long long at = strtoll(f[0], NULL, 10), code = strtoll(f[1], NULL, 10);
            history_add(out, (json_int_t)(at < EPOCH_MS_MIN ? rec->first_ms + at : at), (json_int_t)code, f[2],
                        fl[2], f[3], fl[3]);
        }
        p = stop + 1;
    }
    return out;
}

json_t *record_json(const struct record *rec, const char *id, size_t id_len)
{
    json_t *o;
    if (rec->who_len && rec->who[0] == '"') {
        /* Members; braces make them an object. */
        char *text = malloc(rec->who_len + 2);
        o = NULL;
        if (text) {
            text[0] = '{';
            memcpy(text + 1, rec->who, rec->who_len);
            text[rec->who_len + 1] = '}';
            o = json_loadb(text, rec->who_len + 2, 0, NULL);
            free(text);
        }
        if (!o)
            o = json_object();
    } else {
        o = json_object();
        json_object_set_new(o, "id", json_stringn(id, id_len));
        json_object_set_new(o, "rcpt", json_stringn(rec->who, rec->who_len));
    }
    json_object_set_new(o, "state", json_string(rec->state == 'P' ? "pending" : "awaiting"));
    json_object_set_new(o, "class", json_stringn(rec->class_name, rec->class_len));
    json_object_set_new(o, "attempt", json_integer(rec->attempt));
    json_object_set_new(o, "first_at", json_integer(rec->first_ms));
    json_object_set_new(o, "due_at", json_integer(rec->due_ms));
    json_object_set_new(o, "history", history_json(rec));
    return o;
}

int rcpt_record_parse(const char *rec, size_t len, struct rcpt_record *out)
{
    const char *p = rec, *end = rec + len;
    if (parse_i64(&p, end, ',', &out->streak) || parse_i64(&p, end, ',', &out->first_ms) ||
        parse_i64(&p, end, ',', &out->last_ms) || parse_i64(&p, end, ',', &out->soft))
        return -1;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (!comma)
        return -1;
    out->classes = p;
    out->classes_len = (size_t)(comma - p);
    out->campaign = comma + 1;
    out->campaign_len = (size_t)(end - comma - 1);
    return 0;
}
