#include "proto/jbuf.h"

#include <stdlib.h>
#include <string.h>

bool jbuf_put(struct jbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return false;
    if (b->cap - b->len < n + 1) {
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
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
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
