#include "proto/jbuf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

bool jbuf_grow(struct jbuf *b, size_t n)
{
    size_t cap = b->cap ? b->cap : 128;
    while (cap - b->len < n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

size_t jbuf_utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t need;
    uint32_t v, min;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf)
        need = 2, v = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        need = 3, v = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 4, v = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return need;
}

const unsigned char jbuf_plain[256] = {
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
    R16(0), R16(0),                                     /* 0x00-0x1f: controls */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 0x20-0x2f: '"' */
    R16(1), R16(1),                                     /* 0x30-0x4f */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,     /* 0x50-0x5f: '\\' */
    R16(1), R16(1),                                     /* 0x60-0x7f */
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), /* 0x80-0xff: UTF-8, checked */
#undef R16
};

bool jbuf_str(struct jbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;

    /* Room for the worst case (every byte a \u00XX) up front: the loop
     * below then writes without checking. */
    if (n > (SIZE_MAX - 2) / 6 || !jbuf_reserve(b, 6 * n + 2)) {
        b->failed = true;
        return false;
    }
    char *o = b->p + b->len;
    *o++ = '"';
    while (p < end) {
        unsigned char c = *p;
        if (jbuf_plain[c]) {
            *o++ = (char)c;
            p++;
            continue;
        }
        if (c >= 0x80) {
            uint32_t cp;
            size_t k = jbuf_utf8_seq(p, (size_t)(end - p), &cp);
            if (k == 0) {
                b->failed = true;
                return false;
            }
            memcpy(o, p, k);
            o += k;
            p += k;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
            break;
        }
        p++;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return true;
}

size_t jbuf_fmt_int(char *dst, long long v)
{
    char tmp[24];
    char *q = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--q = '-';
    size_t n = (size_t)(tmp + sizeof tmp - q);
    memcpy(dst, q, n);
    return n;
}

bool jbuf_int(struct jbuf *b, long long v)
{
    if (!jbuf_reserve(b, JBUF_INT_MAX))
        return false;
    b->len += jbuf_fmt_int(b->p + b->len, v);
    return true;
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return jbuf_put(data, buffer, size) ? 0 : -1;
}

bool jbuf_json(struct jbuf *b, json_t *v)
{
    if (b->failed || v == NULL || json_dump_callback(v, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) != 0) {
        b->failed = true;
        return false;
    }
    return true;
}

void jbuf_reset(struct jbuf *b)
{
    b->len = 0;
    b->failed = false;
}

const char *jbuf_cstr(struct jbuf *b)
{
    if (b->failed || !jbuf_reserve(b, 0))
        return NULL;
    b->p[b->len] = '\0';
    return b->p;
}

char *jbuf_finish(struct jbuf *b, size_t *len)
{
    if (b->failed || (b->p == NULL && !jbuf_put(b, "", 0))) {
        free(b->p);
        b->p = NULL;
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    b->p[b->len] = '\0';
    if (len != NULL)
        *len = b->len;
    return b->p;
}
