/* A small string-keyed hash map (keys copied, values borrowed). */
#ifndef REBOUND_DAEMON_STRMAP_H
#define REBOUND_DAEMON_STRMAP_H

#include <stddef.h>

struct strmap_item {
    struct strmap_item *next;
    void *value;
    char key[];
};

struct strmap {
    struct strmap_item **buckets;
    size_t nbuckets, count;
};

void strmap_init(struct strmap *m);
void strmap_free(struct strmap *m);
void *strmap_get(const struct strmap *m, const char *key);
/* Sets key to value (replacing any). */
void strmap_put(struct strmap *m, const char *key, void *value);
/* Removes key; returns its value or NULL. */
void *strmap_del(struct strmap *m, const char *key);
/* Calls fn for each item; fn may delete the item it is given. */
void strmap_foreach(struct strmap *m, void (*fn)(struct strmap *m, const char *key, void *value, void *arg),
                    void *arg);

#endif
