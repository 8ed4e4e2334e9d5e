/*
 * A binary min-heap of due times with the index kept in each element, so
 * that cancel and reschedule are O(log n) (libuv's and libevent's timer heap
 * idea). Ties on due time are broken by a sequence number: equal due times
 * come out in insertion order.
 */
#ifndef REBOUND_QUEUE_HEAP_H
#define REBOUND_QUEUE_HEAP_H

#include <stddef.h>
#include <stdint.h>

#define HEAP_NONE UINT32_MAX

/* What the heap orders. Embed it in your element; the heap stores pointers
 * to it and keeps .index current (HEAP_NONE when not in the heap). */
struct heap_node {
    int64_t due_ms;
    uint64_t seq;
    uint32_t index;
};

struct heap {
    struct heap_node **slots;
    size_t len, cap;
    uint64_t next_seq;
};

void heap_init(struct heap *h);
void heap_free(struct heap *h); /* frees the slot array, not the nodes */

/* Inserts n (which must not be in the heap) due at due_ms. */
void heap_insert(struct heap *h, struct heap_node *n, int64_t due_ms);
/* Removes n, which must be in the heap. */
void heap_remove(struct heap *h, struct heap_node *n);
/* Moves n (in the heap or not) to due_ms; it goes behind equal due times. */
void heap_update(struct heap *h, struct heap_node *n, int64_t due_ms);
/* The earliest node, or NULL. */
static inline struct heap_node *heap_min(const struct heap *h) { return h->len ? h->slots[0] : NULL; }
static inline size_t heap_len(const struct heap *h) { return h->len; }

#endif
