/*
 * Reply encoding. A reply is written straight into one growing buffer:
 * the fixed head ("ok", then "req" so that a person reading a pipelined
 * session sees at once which request an answer belongs to), then the
 * members of the caller's object, spliced in by turning its opening brace
 * into a comma. No intermediate object is built and nothing is re-hashed.
 *
 * The replies every report gets (bounce) are not built as objects at all:
 * the caller writes their members between reply_open and reply_end with
 * the encoders of jbuf.h.
 *
 * jansson's compact encoding, and jbuf_str after it, escape every control
 * character inside strings and put no whitespace between tokens, so a
 * reply never holds a raw newline: the '\n' at the end is the only one, as
 * framing requires.
 */
#include "proto/reply.h"

#include <stdlib.h>
#include <string.h>

#include "proto/jbuf.h"
#include "proto/request.h"

/* Appends obj's members as ",k:v,...}" (or just "}" when it has none). */
static void append_members_close(struct jbuf *b, json_t *obj)
{
    size_t at = b->len;

    if (obj == NULL || json_object_size(obj) == 0) {
        jbuf_put(b, "}", 1);
        return;
    }
    if (jbuf_json(b, obj))
        b->p[at] = ','; /* the object's '{' */
}

/* Returns the buffer as a finished line, or NULL (and frees it) on failure. */
static char *finish_line(struct jbuf *b, size_t *len)
{
    jbuf_put(b, "\n", 1);
    return jbuf_finish(b, len);
}

/*
 * Returns a malloc'd reply line (free it with free), or NULL when out of
 * memory or when obj holds something jansson cannot encode. obj is stolen
 * in every case; members named "ok" or "req" in it are dropped, as the
 * head already carries them.
 */
char *reply_ok(json_t *obj, json_t *req, size_t *len)
{
    struct jbuf b = {0};

    if (obj != NULL && json_is_object(obj)) {
        json_object_del(obj, "ok");
        json_object_del(obj, "req");
    }
    jbuf_put(&b, "{\"ok\":true", 10);
    if (req != NULL) {
        jbuf_put(&b, ",\"req\":", 7);
        jbuf_json(&b, req);
    }
    if (obj != NULL && !json_is_object(obj))
        b.failed = true;
    else
        append_members_close(&b, obj);
    json_decref(obj);
    return finish_line(&b, len);
}

void reply_open(struct jbuf *b, json_t *req)
{
    jbuf_reserve(b, 120);
    jbuf_lit(b, "{\"ok\":true");
    if (req != NULL) {
        jbuf_lit(b, ",\"req\":");
        jbuf_json(b, req);
    }
}

bool reply_end(struct jbuf *b)
{
    return jbuf_lit(b, "}\n");
}

/*
 * Returns a malloc'd error line, or NULL when out of memory. code should
 * be one of the ERR_* strings; message may quote client input: bytes that
 * are not valid UTF-8 are replaced with '?'.
 */
char *reply_error(json_t *req, const char *code, const char *message, size_t *len)
{
    struct jbuf b = {0};
    json_t *s;

    jbuf_put(&b, "{\"ok\":false", 11);
    if (req != NULL) {
        jbuf_put(&b, ",\"req\":", 7);
        jbuf_json(&b, req);
    }
    jbuf_put(&b, ",\"error\":{\"code\":", 17);
    s = json_string(code ? code : ERR_INTERNAL);
    if (s == NULL)
        s = json_string(ERR_INTERNAL);
    jbuf_json(&b, s);
    json_decref(s);

    jbuf_put(&b, ",\"message\":", 11);
    s = json_string(message ? message : "");
    if (s == NULL) {
        char *copy = strdup(message);
        if (copy != NULL) {
            s = json_string(proto_text_sanitize(copy));
            free(copy);
        }
    }
    if (s == NULL)
        b.failed = true;
    else
        jbuf_json(&b, s);
    json_decref(s);
    jbuf_put(&b, "}}", 2);
    return finish_line(&b, len);
}
