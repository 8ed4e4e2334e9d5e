/*
 * A growing output buffer for the encoders in proto/: replies and events
 * are written into one buffer from pieces (fixed text, strings and numbers
 * encoded here, jansson dumps of what the client sent) without building
 * intermediate objects. After the first failed allocation or encoding
 * every call is a no-op and jbuf_finish reports the failure.
 */
#ifndef REBOUND_PROTO_JBUF_H
#define REBOUND_PROTO_JBUF_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct jbuf {
    char *p;
    size_t len, cap;
    bool failed;
};

/* The length of the UTF-8 sequence at s (n >= 1 bytes) and its code point
 * in *cp, or 0 when the bytes there are not one: overlong forms,
 * surrogates and code points past U+10FFFF are refused, as jansson
 * refuses them. */
size_t jbuf_utf8_seq(const unsigned char *s, size_t n, uint32_t *cp);

/* 1 for the bytes that go into a JSON string as they are: printable
 * ASCII but '"' and '\\' (DEL included, as JSON allows). */
extern const unsigned char jbuf_plain[256];

/* The slow half of jbuf_reserve: reallocates. */
bool jbuf_grow(struct jbuf *b, size_t n);

/* Makes room for n more bytes and a final NUL, so that small appends do
 * not reallocate. Returns false once failed. */
static inline bool jbuf_reserve(struct jbuf *b, size_t n)
{
    if (b->failed)
        return false;
    return b->cap - b->len >= n + 1 || jbuf_grow(b, n);
}

/* Appends n bytes (keeping room for a final NUL). Returns false once failed. */
static inline bool jbuf_put(struct jbuf *b, const char *s, size_t n)
{
    if (!jbuf_reserve(b, n))
        return false;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

/* Appends a string literal (its length known at compile time). */
#define jbuf_lit(b, s) jbuf_put((b), "" s, sizeof(s) - 1)

/* Appends s[0, n) as a JSON string, quoted and escaped byte for byte as
 * jansson's compact encoding does it ('"', '\' and control characters
 * escaped, UTF-8 kept as it is). Fails (and marks the buffer failed) when
 * s is not valid UTF-8, as jansson refuses such a string. */
bool jbuf_str(struct jbuf *b, const char *s, size_t n);
/* Appends v in decimal, as jansson encodes an integer. */
bool jbuf_int(struct jbuf *b, long long v);
/* Writes v in decimal at dst (room for JBUF_INT_MAX bytes), without a
 * NUL; returns the length. For the writers that fill fixed buffers. */
#define JBUF_INT_MAX 20
size_t jbuf_fmt_int(char *dst, long long v);
/* Appends v as compact JSON (any value). Returns false once failed. */
bool jbuf_json(struct jbuf *b, json_t *v);
/* Empties b for reuse, keeping its memory (and clearing a failure). */
void jbuf_reset(struct jbuf *b);
/* Returns the text so far, NUL-terminated, still owned by b, or NULL once
 * failed. */
const char *jbuf_cstr(struct jbuf *b);
/* Returns the NUL-terminated text (the caller frees it) and its length, or
 * NULL (the buffer freed, *len 0) if anything failed. */
char *jbuf_finish(struct jbuf *b, size_t *len);

#endif
