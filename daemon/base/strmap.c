#include "base/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/xmalloc.h"

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void strmap_init(struct strmap *m)
{
    m->nbuckets = 64;
    m->count = 0;
    m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
}

void strmap_free(struct strmap *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct strmap_item *it = m->buckets[i];
        while (it) {
            struct strmap_item *n = it->next;
            free(it);
            it = n;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
    m->count = 0;
}

static struct strmap_item **find(const struct strmap *m, const char *key)
{
    struct strmap_item **p = &m->buckets[hash(key) & (m->nbuckets - 1)];
    while (*p && strcmp((*p)->key, key) != 0)
        p = &(*p)->next;
    return p;
}

void *strmap_get(const struct strmap *m, const char *key)
{
    struct strmap_item *it = *find(m, key);
    return it ? it->value : NULL;
}

static void grow(struct strmap *m)
{
    size_t nb = m->nbuckets * 2;
    struct strmap_item **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct strmap_item *it = m->buckets[i];
        while (it) {
            struct strmap_item *n = it->next;
            size_t j = hash(it->key) & (nb - 1);
            it->next = b[j];
            b[j] = it;
            it = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
}

void strmap_put(struct strmap *m, const char *key, void *value)
{
    struct strmap_item **p = find(m, key);
    if (*p) {
        (*p)->value = value;
        return;
    }
    size_t n = strlen(key);
    struct strmap_item *it = xmalloc(sizeof *it + n + 1);
    memcpy(it->key, key, n + 1);
    it->value = value;
    it->next = NULL;
    *p = it;
    if (++m->count > m->nbuckets)
        grow(m);
}

void *strmap_del(struct strmap *m, const char *key)
{
    struct strmap_item **p = find(m, key);
    struct strmap_item *it = *p;
    if (!it)
        return NULL;
    *p = it->next;
    void *v = it->value;
    free(it);
    m->count--;
    return v;
}

void strmap_foreach(struct strmap *m, void (*fn)(struct strmap *m, const char *key, void *value, void *arg),
                    void *arg)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct strmap_item *it = m->buckets[i];
        while (it) {
            struct strmap_item *n = it->next;
            fn(m, it->key, it->value, arg);
            it = n;
        }
    }
}
