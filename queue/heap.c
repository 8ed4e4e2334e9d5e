/*
 * The timer heap: every scheduled retry, ordered by when it falls due.
 *
 * Why a binary heap. The daemon needs three things from its schedule: the
 * earliest due time (to arm its one timer), the entries due now (to fire a
 * batch), and cancel/reschedule of an arbitrary message (delivered, cancel,
 * a new bounce, a domain back-off). A binary min-heap in one array gives
 * O(1) for the first and O(log n) for the others, with one pointer per
 * element and no allocation per operation. A sorted tree costs three
 * pointers per element and a hierarchical timer wheel buys O(1) at the price
 * of a fixed resolution and cascading; neither pays for itself at the sizes
 * rebound holds (millions), where log2 n is about 23.
 *
 * Why the index lives in the node. Cancel and reschedule start from an
 * entry found by id in the hash table, not from the heap. If the heap did not
 * know where that entry sits, removing it would need a linear search. So the
 * heap writes each node's slot number into the node whenever it moves it
 * (the trick of libuv's and libevent's timer heaps), and HEAP_NONE marks a
 * node that is not in the heap, which is how sched.h answers "scheduled?".
 * The invariant, checked by the unit test after every operation:
 * slots[i]->index == i for every i < len.
 *
 * Why a sequence number. Many retries share a due time (a campaign bounces
 * in one second, a fixed-delay class schedules them all 1 h later). A heap
 * is not stable, so without a tie-break they would fire in an arbitrary
 * order that changes with unrelated inserts. Ordering by (due_ms, seq) with
 * seq taken from a counter at insert makes equal due times come out first
 * in, first out, which is fair and makes runs reproducible. heap_update takes
 * a fresh seq: a rescheduled entry queues behind those already waiting for
 * the same moment, as it would had it been inserted then. A 64-bit counter
 * does not wrap in the life of a process.
 *
 * Why time is passed in. The heap compares numbers; it never reads a
 * clock. Due times are absolute Unix milliseconds because they are persisted
 * in Redis and must mean the same thing after a restart, and because code
 * that takes the time as an argument can be tested with any time at all.
 *
 * Why inserts wait. An insert only appends; the order is made by the
 * first operation that needs it (the minimum, a remove, an update), or
 * when the owner has time to spare (heap_settle): a few appended nodes are
 * sifted up one by one; a tail as long as the ordered part is merged by
 * rebuilding the whole heap bottom-up (Floyd's method, O(n)). A start reads
 * millions of entries back from Redis in pages; the daemon settles each
 * page while Redis makes the next one, instead of in the loop that parses
 * the page or, worse, all at once after the last page (a second at ten
 * million, with the daemon otherwise ready). Either way the order is
 * (due_ms, seq), so what comes out, and in which order, does not depend on
 * when the settling happened.
 *
 * Memory. The node (20 bytes) is embedded in the caller's element, the
 * heap holds one pointer per element. The array doubles when full and halves
 * when it falls below a quarter, so a burst of ten million retries does not
 * pin its array forever. Growth that fails aborts: the schedule is rebuilt
 * from Redis at start, so a restart loses nothing, while a half-done insert
 * would.
 */
#include "queue/heap.h"

#include <stdio.h>
#include <stdlib.h>

#define HEAP_MIN_CAP 64

static void heap_oom(size_t cap)
{
    fprintf(stderr, "rebound: out of memory growing the heap to %zu slots\n", cap);
    abort();
}

static inline int node_less(const struct heap_node *a, const struct heap_node *b)
{
    if (a->due_ms != b->due_ms)
        return a->due_ms < b->due_ms;
    return a->seq < b->seq;
}

static inline void heap_place(struct heap *h, struct heap_node *n, size_t i)
{
    h->slots[i] = n;
    n->index = (uint32_t)i;
}

/* Whether n sits in h. Robust against a node that was never initialised to
 * HEAP_NONE: its index must also point back at it. */
static inline int heap_holds(const struct heap *h, const struct heap_node *n)
{
    return n->index < h->len && h->slots[n->index] == n;
}

static void heap_resize(struct heap *h, size_t cap)
{
    struct heap_node **slots;

    if (cap > SIZE_MAX / sizeof(*slots))
        heap_oom(cap);
    slots = realloc(h->slots, cap * sizeof(*slots));
    if (!slots)
        heap_oom(cap);
    h->slots = slots;
    h->cap = cap;
}

/* Moves the node at i towards the root while it is less than its parent.
 * The node travels in a register and is written once, at its final slot. */
static size_t heap_sift_up(struct heap *h, size_t i)
{
    struct heap_node *n = h->slots[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!node_less(n, h->slots[parent]))
            break;
        heap_place(h, h->slots[parent], i);
        i = parent;
    }
    heap_place(h, n, i);
    return i;
}

static void heap_sift_down(struct heap *h, size_t i)
{
    struct heap_node *n = h->slots[i];

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len)
            break;
        if (child + 1 < h->len && node_less(h->slots[child + 1], h->slots[child]))
            child++;
        if (!node_less(h->slots[child], n))
            break;
        heap_place(h, h->slots[child], i);
        i = child;
    }
    heap_place(h, n, i);
}

/* Restores order around slot i after its key changed either way. */
static void heap_fix(struct heap *h, size_t i)
{
    if (heap_sift_up(h, i) == i)
        heap_sift_down(h, i);
}

/* Initialises an empty heap; it allocates on the first insert. */
void heap_init(struct heap *h)
{
    h->slots = NULL;
    h->len = 0;
    h->cap = 0;
    h->ordered = 0;
    h->next_seq = 0;
}

/* Frees the slot array. The nodes belong to the caller and are not
 * touched (they may already be gone); the heap is left empty and usable. */
void heap_free(struct heap *h)
{
    free(h->slots);
    h->slots = NULL;
    h->len = 0;
    h->cap = 0;
    h->ordered = 0;
}

/* Grows the slot array to hold n nodes (never shrinks it). Aborts on OOM
 * or when n is more than the heap can index. */
void heap_reserve(struct heap *h, size_t n)
{
    if (n > (size_t)HEAP_NONE - 1)
        heap_oom(n);
    if (n > h->cap)
        heap_resize(h, n);
}

/* Orders slots[ordered .. len) into the heap: one by one when few, else by
 * rebuilding the whole heap bottom-up. */
void heap_settle(struct heap *h)
{
    size_t tail = h->len - h->ordered;

    if (tail == 0)
        return;
    if (tail < h->ordered) {
        for (size_t i = h->ordered; i < h->len; i++)
            heap_sift_up(h, i);
    } else {
        for (size_t i = h->len / 2; i-- > 0;)
            heap_sift_down(h, i);
    }
    h->ordered = h->len;
}

/* Inserts n, which must not be in the heap, due at due_ms, behind every
 * node already due at the same time. It is only appended: the next
 * operation that needs the order settles it. Aborts on OOM. */
void heap_insert(struct heap *h, struct heap_node *n, int64_t due_ms)
{
    if (heap_holds(h, n)) {
        fprintf(stderr, "rebound: heap_insert of a node already in the heap\n");
        abort();
    }
    if (h->len == h->cap) {
        /* HEAP_NONE is UINT32_MAX, so the last usable index is one below. */
        if (h->len >= (size_t)HEAP_NONE - 1)
            heap_oom(h->len + 1);
        size_t cap = h->cap ? h->cap * 2 : HEAP_MIN_CAP;
        if (cap > (size_t)HEAP_NONE - 1)
            cap = (size_t)HEAP_NONE - 1;
        heap_resize(h, cap);
    }
    n->due_ms = due_ms;
    n->seq = h->next_seq++;
    heap_place(h, n, h->len);
    h->len++;
}

/* Removes n, which must be in the heap, and marks it HEAP_NONE. */
void heap_remove(struct heap *h, struct heap_node *n)
{
    size_t i = n->index;

    if (!heap_holds(h, n)) {
        fprintf(stderr, "rebound: heap_remove of a node not in the heap\n");
        abort();
    }
    if (i < h->ordered && h->ordered != h->len) {
        heap_settle(h); /* which may move n */
        i = n->index;
    }
    h->len--;
    if (i >= h->ordered) {
        /* In the unordered tail (settling may have just made it empty):
         * the last node fills the hole, and order does not matter there. */
        if (i != h->len)
            heap_place(h, h->slots[h->len], i);
    } else {
        h->ordered--;
        if (i != h->len) {
            /* The last node fills the hole; it may belong above or below it. */
            heap_place(h, h->slots[h->len], i);
            heap_fix(h, i);
        }
    }
    n->index = HEAP_NONE;
    if (h->cap > HEAP_MIN_CAP && h->len < h->cap / 4) {
        /* Giving memory back is optional: if realloc cannot, keep it. */
        struct heap_node **slots = realloc(h->slots, h->cap / 2 * sizeof(*slots));
        if (slots) {
            h->slots = slots;
            h->cap /= 2;
        }
    }
}

/* Moves n to due_ms with a fresh sequence number, inserting it if it was
 * not in the heap. Aborts on OOM (insert only). */
void heap_update(struct heap *h, struct heap_node *n, int64_t due_ms)
{
    if (!heap_holds(h, n)) {
        heap_insert(h, n, due_ms);
        return;
    }
    /* A node in the ordered part moves only once the tail is in order
     * around its old key. */
    if (n->index < h->ordered)
        heap_settle(h);
    n->due_ms = due_ms;
    n->seq = h->next_seq++;
    if (n->index < h->ordered)
        heap_fix(h, n->index); /* else in the tail: settled with the rest */
}
