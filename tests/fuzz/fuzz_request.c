/*
 * libFuzzer entry point over what a client controls: the byte stream that
 * frame.c cuts into lines, request_parse on every line, and the reply (and,
 * for a valid bounce, the event) built from the result.
 *
 * Input layout: byte 0 sets the line limit (16 + 4 * b, small so that
 * over-long lines are common), byte 1 seeds the sizes of the reads; the
 * rest is the stream. Checked on every input, besides the sanitizers:
 * - the lines that come out are exactly those of a plain split of the
 *   stream, in order, and -1 comes only for a line that is too long;
 * - every reply and event line is valid JSON with one '\n', at its end;
 * - "req" of a parsed line comes back unchanged in its reply.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"

#include "proto/event.h"
#include "proto/frame.h"
#include "proto/reply.h"
#include "proto/request.h"


/* A line (reply or event) must be one JSON object and one '\n'. */
static json_t *check_line(const char *line, size_t len)
{
    CHECK(line != NULL);
    CHECK(len >= 3 && line[len - 1] == '\n');
    CHECK(memchr(line, '\n', len - 1) == NULL);
    json_t *o = json_loadb(line, len - 1, JSON_REJECT_DUPLICATES, NULL);
    CHECK(json_is_object(o));
    return o;
}

static void handle_line(const char *line, size_t len, const struct proto_limits *lim)
{
    struct request r;
    struct proto_error err;
    size_t out_len;
    char *out;
    json_t *o;

    if (request_parse(line, len, lim, &r, &err) != 0) {
        CHECK(err.code != NULL);
        out = reply_error(r.req, err.code, err.message, &out_len);
    } else {
        json_t *body = json_object();
        if (r.id != NULL)
            json_object_set_new(body, "id", json_stringn(r.id, r.id_len));
        if (r.rcpt != NULL)
            json_object_set_new(body, "rcpt", json_stringn(r.rcpt, r.rcpt_len));
        if (r.text != NULL)
            json_object_set_new(body, "text", json_string(r.text));
        out = reply_ok(body, r.req, &out_len);

        if (r.op == OP_BOUNCE) {
            size_t flen, blen, llen;
            char *frag = event_msg_fragment(r.id, r.rcpt, r.campaign, r.meta, &flen);
            CHECK(frag != NULL);
            char *ev = event_body(EV_RETRY, 1, frag, NULL, &blen);
            CHECK(ev != NULL && event_body_type(ev, blen) == EV_RETRY);
            char *eline = event_line("1-0", ev, blen, &llen);
            json_t *e = check_line(eline, llen);
            CHECK(strcmp(json_string_value(json_object_get(e, "id")), r.id) == 0);
            CHECK(json_equal(json_object_get(e, "meta"), r.meta) || r.meta == NULL);
            json_decref(e);
            free(eline);
            free(ev);
            free(frag);
        }
    }
    o = check_line(out, out_len);
    if (r.req != NULL)
        CHECK(json_equal(json_object_get(o, "req"), r.req));
    json_decref(o);
    free(out);
    request_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_limits lim;
    struct frame f;
    uint64_t rng;
    size_t fed = 0, consumed = 0;
    int rc = 0;

    if (size < 2)
        return 0;
    proto_limits_default(&lim);
    lim.max_text = 64; /* small, so the limits are reached too */
    lim.max_meta = 64;
    lim.max_ack_ids = 4;
    frame_init(&f, 16 + 4 * (size_t)data[0]);
    rng = 0x9e3779b97f4a7c15ull ^ data[1];
    const char *s = (const char *)data + 2;
    size -= 2;

    /* The whole input as one line, too. */
    handle_line(s, size, &lim);

    while (fed < size && rc >= 0) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        size_t avail, want = 1 + (size_t)(rng % 300);
        char *p = frame_space(&f, want, &avail);
        CHECK(p != NULL && avail >= 1);
        size_t n = want < avail ? want : avail;
        if (n > size - fed)
            n = size - fed;
        memcpy(p, s + fed, n);
        frame_commit(&f, n);
        fed += n;

        const char *line;
        size_t len;
        while ((rc = frame_next(&f, &line, &len)) == 1) {
            /* the reference: the next '\n' after what was consumed */
            const char *nl = memchr(s + consumed, '\n', fed - consumed);
            CHECK(nl != NULL);
            size_t raw = (size_t)(nl - (s + consumed));
            size_t want_len = raw > 0 && s[consumed + raw - 1] == '\r' ? raw - 1 : raw;
            CHECK(len == want_len && len <= f.max_line);
            CHECK(memcmp(line, s + consumed, len) == 0);
            consumed += raw + 1;
            handle_line(line, len, &lim);
        }
    }
    if (rc < 0) {
        /* only for a line that is, or must become, too long */
        const char *nl = memchr(s + consumed, '\n', fed - consumed);
        size_t pend = fed - consumed;
        if (nl != NULL) {
            size_t raw = (size_t)(nl - (s + consumed));
            size_t l = raw > 0 && s[consumed + raw - 1] == '\r' ? raw - 1 : raw;
            CHECK(l > f.max_line);
        } else {
            CHECK(pend > f.max_line + 1 || (pend == f.max_line + 1 && s[fed - 1] != '\r'));
        }
    } else {
        /* every complete line came out */
        CHECK(memchr(s + consumed, '\n', size - consumed) == NULL);
    }
    frame_free(&f);
    return 0;
}
