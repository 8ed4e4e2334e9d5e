/*
 * A growing output buffer for the encoders in proto/: replies and events
 * are written into one buffer from pieces (fixed text, jansson dumps)
 * without building intermediate objects. After the first failed
 * allocation every call is a no-op and jbuf_finish reports the failure.
 */
#ifndef REBOUND_PROTO_JBUF_H
#define REBOUND_PROTO_JBUF_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct jbuf {
    char *p;
    size_t len, cap;
    bool failed;
};

/* Appends n bytes (keeping room for a final NUL). Returns false once failed. */
bool jbuf_put(struct jbuf *b, const char *s, size_t n);
/* Appends v as compact JSON (any value). Returns false once failed. */
bool jbuf_json(struct jbuf *b, json_t *v);
/* Returns the NUL-terminated text (the caller frees it) and its length, or
 * NULL (the buffer freed, *len 0) if anything failed. */
char *jbuf_finish(struct jbuf *b, size_t *len);

#endif
