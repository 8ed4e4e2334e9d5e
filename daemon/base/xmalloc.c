#include "base/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void xmalloc_failed(size_t n)
{
    if (n)
        fprintf(stderr, "reboundd: fatal: out of memory allocating %zu bytes\n", n);
    else
        fprintf(stderr, "reboundd: fatal: out of memory\n");
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        xmalloc_failed(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        xmalloc_failed(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        xmalloc_failed(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}
