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
 * to it and keeps .index current (HEAP_NONE when not in the heap). Packed
 * to 4-byte alignment: 20 bytes rather than 24, so that a 4-byte field of the
 * embedding element can sit where the padding would be (millions of them). */
struct __attribute__((packed, aligned(4))) heap_node {
    int64_t due_ms;
    uint64_t seq;
    uint32_t index;
};

/* slots[0 .. ordered) is a heap; slots[ordered .. len) were inserted since
 * and wait, unordered, for the next operation that needs the order (see
 * heap.c: inserts in bulk, as at start, are ordered in bulk). */
struct heap {
    struct heap_node **slots;
    size_t len, cap, ordered;
    uint64_t next_seq;
};

void heap_init(struct heap *h);
void heap_free(struct heap *h); /* frees the slot array, not the nodes */
/* Makes room for n nodes in all, so that a load of n inserts never grows
 * the array. Aborts on OOM. */
void heap_reserve(struct heap *h, size_t n);

/* Inserts n (which must not be in the heap) due at due_ms. */
void heap_insert(struct heap *h, struct heap_node *n, int64_t due_ms);
/* Removes n, which must be in the heap. */
void heap_remove(struct heap *h, struct heap_node *n);
/* Moves n (in the heap or not) to due_ms; it goes behind equal due times. */
void heap_update(struct heap *h, struct heap_node *n, int64_t due_ms);
/* Orders the nodes inserted since the last operation that needed the
 * order; heap_min and the others call it. */
void heap_settle(struct heap *h);
/* The earliest node, or NULL. */
static inline struct heap_node *heap_min(struct heap *h)
{
    if (h->ordered != h->len)
        heap_settle(h);
    return h->len ? h->slots[0] : NULL;
}
static inline size_t heap_len(const struct heap *h) { return h->len; }

#endif
