/*
 * libFuzzer entry point over the events' encoding and decoding in proto/.
 * The daemon's stream handling proper (daemon/events.c) is bound to the
 * Redis link and the connections; what it does with an entry's bytes is
 * this: the body read from the stream goes through event_body_type and
 * event_line, and the bodies it writes are built by event_msg_fragment,
 * event_body and event_body_text.
 *
 * Byte 0 picks the half. Decoding: the rest is a stream entry's body, as
 * Redis hands it over (counted, no NUL). Encoding: the rest is cut at
 * '\n' into id, rcpt, campaign and extra members, which become a body and
 * a line. Checked besides the sanitizers: a line is one JSON object with
 * one '\n', at its end, that names the entry id and holds the body's
 * members; a body's type is read back.
 */
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "proto/event.h"

static json_t *check_line(const char *line, size_t len)
{
    CHECK(line != NULL);
    CHECK(len >= 3 && line[len - 1] == '\n');
    CHECK(memchr(line, '\n', len - 1) == NULL);
    json_t *o = json_loadb(line, len - 1, 0, NULL);
    CHECK(json_is_object(o));
    return o;
}

static void decode(const char *body, size_t len)
{
    int t = event_body_type(body, len);
    CHECK(t >= -1 && t < EV__COUNT);

    size_t llen;
    char *line = event_line("1700000000000-7", body, len, &llen);
    json_t *b = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    if (json_is_object(b) && body[0] == '{' && body[len - 1] == '}' && !memchr(body, '\n', len) &&
        !memchr(body, '\0', len)) {
        /* a valid body, as event_line documents it (the stream holds
         * bodies as event_body writes them: no space around the braces),
         * makes a valid line with the same members */
        json_t *o = check_line(line, llen);
        if (!json_object_get(b, "eid")) {
            /* (a body with its own "eid", which event_body never writes,
             * shadows the entry id in the line) */
            CHECK(strcmp(json_string_value(json_object_get(o, "eid")), "1700000000000-7") == 0);
            json_object_del(o, "eid");
            CHECK(json_equal(o, b));
        }
        json_decref(o);
    } else if (line) {
        CHECK(line[llen - 1] == '\n' && memchr(line, '\n', llen - 1) == NULL);
    }
    json_decref(b);
    free(line);
}

static void encode(const char *s, size_t len)
{
    /* id \n rcpt \n campaign \n members */
    char *buf = malloc(len + 1);
    CHECK(buf != NULL);
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *part[4] = {buf, NULL, NULL, NULL};
    for (int i = 1; i < 4 && part[i - 1]; i++) {
        char *nl = strchr(part[i - 1], '\n');
        if (nl) {
            *nl = '\0';
            part[i] = nl + 1;
        }
    }
    if (!part[1]) {
        free(buf);
        return;
    }
    size_t flen, blen, llen;
    /* The daemon passes what request_parse accepted: valid UTF-8. */
    json_t *idj = json_string(part[0]), *rj = json_string(part[1]);
    json_t *cj = part[2] && part[2][0] ? json_string(part[2]) : NULL;
    if (!idj || !rj || (part[2] && part[2][0] && !cj)) {
        json_decref(idj);
        json_decref(rj);
        json_decref(cj);
        free(buf);
        return;
    }
    json_t *meta = json_pack("{s:s,s:i}", "k", part[0], "n", (json_int_t)len);
    char *frag = event_msg_fragment(part[0], part[1], cj ? part[2] : NULL, meta, &flen);
    CHECK(frag != NULL);
    /* the fragment is members: braces make it the object it stands for */
    char *obj = malloc(flen + 3);
    CHECK(obj != NULL);
    obj[0] = '{';
    memcpy(obj + 1, frag, flen);
    obj[flen + 1] = '}';
    json_t *fo = json_loadb(obj, flen + 2, JSON_REJECT_DUPLICATES, NULL);
    CHECK(json_is_object(fo));
    CHECK(json_equal(json_object_get(fo, "id"), idj) && json_equal(json_object_get(fo, "rcpt"), rj));
    json_decref(fo);
    free(obj);

    char *body = event_body(EV_GIVE_UP, 1700000000000LL, frag, meta, &blen);
    CHECK(body != NULL && event_body_type(body, blen) == EV_GIVE_UP);
    char *line = event_line("5-0", body, blen, &llen);
    json_decref(check_line(line, llen));
    free(line);
    free(body);

    /* members given as text: used as they are when they start with ',' */
    const char *members = part[3] ? part[3] : "";
    body = event_body_text(EV_RETRY, 1, frag, members, strlen(members), &blen);
    if (body) {
        CHECK(members[0] == '\0' || members[0] == ',');
        CHECK(event_body_type(body, blen) == EV_RETRY);
        free(body);
    }
    free(frag);
    json_decref(meta);
    json_decref(idj);
    json_decref(rj);
    json_decref(cj);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *s = malloc(size - 1 ? size - 1 : 1);
    CHECK(s != NULL);
    memcpy(s, data + 1, size - 1);
    if (data[0] & 1)
        encode(s, size - 1);
    else
        decode(s, size - 1);
    free(s);
    return 0;
}
