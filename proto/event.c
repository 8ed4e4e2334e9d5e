/*
 * Event encoding. An event is built from pieces encoded at different
 * times: the message fragment once, when the bounce arrives (it is stored
 * with the message); the body when the event happens (it goes into the
 * Redis stream); the line when a subscriber reads it, with the stream's
 * entry id spliced in. Each step is string work on compact JSON that
 * jansson produced, never a re-parse, because a burst of due retries
 * turns into that many lines at once.
 */
#include "proto/event.h"

#include "proto/jbuf.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends the members of obj without braces ("k":v,"k2":v2), or nothing
 * for an empty object; comma_first puts a ',' before them. */
static void append_members(struct jbuf *b, json_t *obj, bool comma_first)
{
    size_t at = b->len;

    if (b->failed || obj == NULL || json_object_size(obj) == 0)
        return;
    if (!jbuf_json(b, obj))
        return;
    /* The dump is "{...}": drop the closing brace, and turn the opening
     * one into the comma or shift the members over it. */
    b->len--;
    if (comma_first) {
        b->p[at] = ',';
    } else {
        memmove(b->p + at, b->p + at + 1, b->len - at - 1);
        b->len--;
    }
}

/*
 * Returns the fragment (free it with free), or NULL when a string is not
 * valid UTF-8 or meta is not an object. campaign and meta may be NULL.
 */
char *event_msg_fragment(const char *id, const char *rcpt, const char *campaign, json_t *meta, size_t *len)
{
    struct jbuf b = {0};
    json_t *o = json_object();
    bool ok = o != NULL;

    /* An object built in order and dumped keeps that order (jansson keeps
     * insertion order), and jansson does the string escaping. */
    ok = ok && id != NULL && rcpt != NULL;
    ok = ok && json_object_set_new(o, "id", json_string(id)) == 0;
    ok = ok && json_object_set_new(o, "rcpt", json_string(rcpt)) == 0;
    if (ok && campaign != NULL)
        ok = json_object_set_new(o, "campaign", json_string(campaign)) == 0;
    if (ok && meta != NULL)
        ok = json_is_object(meta) && json_object_set(o, "meta", meta) == 0;
    if (ok)
        append_members(&b, o, false);
    else
        b.failed = true;
    json_decref(o);
    if (!b.failed && b.p == NULL)
        jbuf_put(&b, "", 0);
    return jbuf_finish(&b, len);
}

/*
 * Returns the body (free it with free), or NULL for an unknown type or
 * when extra cannot be encoded. fragment may be NULL or "" for events not
 * about one message (domain_throttled). Members of extra come after the
 * fragment; the caller must not repeat a member that is already there.
 */
char *event_body(enum event_type type, long long at_ms, const char *fragment, json_t *extra, size_t *len)
{
    struct jbuf b = {0};
    char head[96];
    int n;

    if ((unsigned)type >= EV__COUNT || (extra != NULL && !json_is_object(extra)))
        return NULL;
    n = snprintf(head, sizeof head, "{\"type\":\"%s\",\"at\":%lld", event_type_name(type), at_ms);
    jbuf_put(&b, head, (size_t)n);
    if (fragment != NULL && fragment[0] != '\0') {
        jbuf_put(&b, ",", 1);
        jbuf_put(&b, fragment, strlen(fragment));
    }
    append_members(&b, extra, true);
    jbuf_put(&b, "}", 1);
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
char *event_line(const char *eid, const char *body, size_t body_len, size_t *len)
{
    struct jbuf b = {0};
    size_t i;

    if (eid == NULL || body == NULL || body_len < 2 || body[0] != '{' || body[body_len - 1] != '}' ||
        memchr(body, '\n', body_len) != NULL || memchr(body, '\0', body_len) != NULL)
        return NULL;

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
