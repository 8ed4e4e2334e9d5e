/*
 * queue/heap.c against a reference model: random insert/remove/update/pop
 * sequences, with the model answering what the minimum must be (earliest
 * due, first in among equals) and the heap's index invariant checked after
 * every operation. The seed is fixed so a failure replays; set
 * REBOUND_TEST_SEED to try others. Failures print the seed and the op.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "queue/heap.h"

#include "random_model.h"

/* The model: for every node, whether it is in, its due time and the order
 * in which it was last inserted or moved. The minimum is found by a plain
 * scan, which is obviously right. */
struct mnode {
    struct heap_node node;
    int in;
    int64_t due;
    uint64_t order;
};

static struct mnode *model_min(struct mnode *m, size_t n)
{
    struct mnode *best = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!m[i].in)
            continue;
        if (!best || m[i].due < best->due || (m[i].due == best->due && m[i].order < best->order))
            best = &m[i];
    }
    return best;
}

/* The index of every node; the heap order over the settled part
 * slots[0 .. ordered); then heap_min, which settles the rest, against the
 * model, and the order over all of it. */
static void check_invariants(struct heap *h, struct mnode *m, size_t n)
{
    size_t in = 0;

    for (size_t i = 0; i < n; i++) {
        if (m[i].in) {
            in++;
            CHECK(m[i].node.index < h->len);
            CHECK(h->slots[m[i].node.index] == &m[i].node);
            CHECK_EQ(m[i].node.due_ms, m[i].due);
        } else {
            CHECK_EQ(m[i].node.index, HEAP_NONE);
        }
    }
    CHECK_EQ(heap_len(h), in);
    CHECK(h->len <= h->cap);
    CHECK(h->ordered <= h->len);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < h->len; i++) {
            const struct heap_node *a = h->slots[i];
            CHECK_EQ(a->index, i);
            if (i > 0 && i < h->ordered) {
                const struct heap_node *p = h->slots[(i - 1) / 2];
                CHECK(p->due_ms < a->due_ms || (p->due_ms == a->due_ms && p->seq < a->seq));
            }
        }
        if (pass == 0) {
            struct mnode *want = model_min(m, n);
            CHECK(heap_min(h) == (want ? &want->node : NULL));
            CHECK_EQ(h->ordered, h->len);
        }
    }
}

static void run_random(size_t nnodes, size_t nops, int64_t due_range, int full_check_every)
{
    struct mnode *m = calloc(nnodes, sizeof(*m));
    struct heap h;
    uint64_t order = 0;

    assert_non_null(m);
    heap_init(&h);
    for (size_t i = 0; i < nnodes; i++)
        m[i].node.index = HEAP_NONE;

    for (op = 0; op < nops; op++) {
        struct mnode *x = &m[rnd_below(nnodes)];
        int64_t due = (int64_t)rnd_below((uint64_t)due_range) - due_range / 4;
        unsigned kind = (unsigned)rnd_below(100);

        if (kind < 35) {
            /* insert (or move, when it is already in) */
            if (x->in) {
                heap_update(&h, &x->node, due);
            } else {
                heap_insert(&h, &x->node, due);
                x->in = 1;
            }
            x->due = due;
            x->order = order++;
        } else if (kind < 40) {
            /* a burst of inserts, as a load makes: left unordered until
             * an operation needs the order */
            size_t k = 1 + rnd_below(nnodes / 2 + 1);
            for (size_t j = 0; j < k; j++) {
                struct mnode *y = &m[rnd_below(nnodes)];
                if (y->in)
                    continue;
                y->due = (int64_t)rnd_below((uint64_t)due_range) - due_range / 4;
                heap_insert(&h, &y->node, y->due);
                y->in = 1;
                y->order = order++;
            }
        } else if (kind < 55) {
            if (x->in) {
                heap_remove(&h, &x->node);
                x->in = 0;
                CHECK_EQ(x->node.index, HEAP_NONE);
            }
        } else if (kind < 75) {
            /* update, in or not: not in means insert */
            heap_update(&h, &x->node, due);
            x->in = 1;
            x->due = due;
            x->order = order++;
        } else {
            struct mnode *want = model_min(m, nnodes);
            struct heap_node *got = heap_min(&h);
            CHECK(got == (want ? &want->node : NULL));
            if (got) {
                heap_remove(&h, got);
                want->in = 0;
            }
        }
        if (full_check_every <= 1 || op % (size_t)full_check_every == 0) {
            check_invariants(&h, m, nnodes);
        } else if (rnd_below(4) == 0) {
            /* not every time, so that unordered tails build up and get
             * removed from and updated in before they are settled */
            struct mnode *want = model_min(m, nnodes);
            CHECK(heap_min(&h) == (want ? &want->node : NULL));
        }
    }

    /* Drain: everything comes out in (due, order) order. */
    check_invariants(&h, m, nnodes);
    for (;;) {
        struct mnode *want = model_min(m, nnodes);
        struct heap_node *got = heap_min(&h);
        CHECK(got == (want ? &want->node : NULL));
        if (!got)
            break;
        heap_remove(&h, got);
        want->in = 0;
        op++;
    }
    CHECK_EQ(heap_len(&h), 0);
    heap_free(&h);
    free(m);
}

/* Small heap, many ties (due in a range of 16): every op is checked in
 * full, including FIFO order among equal due times. */
static void test_random_ties(void **state)
{
    (void)state;
    seed_from_env(20240601);
    run_random(64, 200000, 16, 1);
}

/* Larger heap, wide due range: the index and heap invariants are checked
 * every 97 ops, the minimum after every op. */
static void test_random_large(void **state)
{
    (void)state;
    seed_from_env(77);
    run_random(3000, 200000, 1000000, 97);
}

static void test_fifo_ties_and_update(void **state)
{
    struct heap_node n[5];
    struct heap h;

    (void)state;
    heap_init(&h);
    for (int i = 0; i < 5; i++) {
        n[i].index = HEAP_NONE;
        heap_insert(&h, &n[i], 100);
    }
    /* n[0] moved to the same time goes behind the others. */
    heap_update(&h, &n[0], 100);
    int want[] = {1, 2, 3, 4, 0};
    for (int i = 0; i < 5; i++) {
        struct heap_node *got = heap_min(&h);
        assert_ptr_equal(got, &n[want[i]]);
        heap_remove(&h, got);
        assert_int_equal(got->index, HEAP_NONE);
    }
    assert_null(heap_min(&h));

    /* update of a node not in the heap inserts it */
    n[2].index = HEAP_NONE;
    heap_update(&h, &n[2], -5);
    assert_int_equal(heap_len(&h), 1);
    assert_ptr_equal(heap_min(&h), &n[2]);
    assert_int_equal(n[2].due_ms, -5);
    assert_int_equal(n[2].index, 0);

    /* moving earlier and later */
    n[3].index = HEAP_NONE;
    heap_insert(&h, &n[3], 10);
    heap_update(&h, &n[3], -10);
    assert_ptr_equal(heap_min(&h), &n[3]);
    heap_update(&h, &n[3], 20);
    assert_ptr_equal(heap_min(&h), &n[2]);
    heap_free(&h);
    assert_int_equal(heap_len(&h), 0);
    assert_null(heap_min(&h));
}

/* The extremes of int64 order correctly (no subtraction in the compare). */
static void test_extreme_due(void **state)
{
    struct heap_node a = {.index = HEAP_NONE}, b = {.index = HEAP_NONE}, c = {.index = HEAP_NONE};
    struct heap h;

    (void)state;
    heap_init(&h);
    heap_insert(&h, &a, INT64_MAX);
    heap_insert(&h, &b, INT64_MIN);
    heap_insert(&h, &c, 0);
    assert_ptr_equal(heap_min(&h), &b);
    heap_remove(&h, &b);
    assert_ptr_equal(heap_min(&h), &c);
    heap_remove(&h, &c);
    assert_ptr_equal(heap_min(&h), &a);
    heap_free(&h);
}

/* The slot array grows for a burst and gives the memory back after. */
static void test_grow_and_shrink(void **state)
{
    enum { N = 100000 };
    struct heap_node *n = calloc(N, sizeof(*n));
    struct heap h;

    (void)state;
    assert_non_null(n);
    heap_init(&h);
    for (int i = 0; i < N; i++) {
        n[i].index = HEAP_NONE;
        heap_insert(&h, &n[i], (int64_t)(N - i));
    }
    assert_int_equal(heap_len(&h), N);
    assert_true(h.cap >= N);
    for (int i = 0; i < N - 10; i++) {
        struct heap_node *got = heap_min(&h);
        assert_ptr_equal(got, &n[N - 1 - i]);
        heap_remove(&h, got);
    }
    assert_int_equal(heap_len(&h), 10);
    assert_true(h.cap <= 128);
    for (size_t i = 0; i < h.len; i++)
        assert_int_equal(h.slots[i]->index, i);
    heap_free(&h);
    free(n);
}

/* A load: many inserts with many ties, some moved or removed before the
 * heap is ordered, then drained: the order is (due, insertion), as if
 * every insert had been sifted into place. */
static void test_bulk_load(void **state)
{
    enum { N = 50000 };
    struct mnode *m = calloc(N, sizeof(*m));
    struct heap h;
    uint64_t order = 0;

    (void)state;
    seed_from_env(4711);
    assert_non_null(m);
    heap_init(&h);
    heap_reserve(&h, N);
    assert_true(h.cap >= N);
    for (size_t i = 0; i < N; i++) {
        m[i].node.index = HEAP_NONE;
        m[i].due = (int64_t)rnd_below(1000);
        heap_insert(&h, &m[i].node, m[i].due);
        m[i].in = 1;
        m[i].order = order++;
    }
    assert_int_equal(h.cap, N); /* reserved: no growth */
    assert_int_equal(h.ordered, 0);
    for (op = 0; op < N / 10; op++) {
        struct mnode *x = &m[rnd_below(N)];
        if (rnd() & 1) {
            if (x->in) {
                heap_remove(&h, &x->node);
                x->in = 0;
            }
        } else {
            x->due = (int64_t)rnd_below(1000);
            heap_update(&h, &x->node, x->due);
            x->in = 1;
            x->order = order++;
        }
    }
    assert_int_equal(h.ordered, 0); /* nothing so far needed the order */
    check_invariants(&h, m, N);
    int64_t last_due = INT64_MIN;
    uint64_t last_order = 0;
    size_t out = 0;
    for (struct heap_node *got; (got = heap_min(&h)) != NULL; out++) {
        void *p = got; /* the node is the first member */
        struct mnode *x = p;
        CHECK(x->due > last_due || (x->due == last_due && x->order > last_order));
        last_due = x->due;
        last_order = x->order;
        heap_remove(&h, got);
        x->in = 0;
    }
    for (size_t i = 0; i < N; i++)
        CHECK_EQ(m[i].node.index, HEAP_NONE);
    assert_true(out > N / 2);
    heap_free(&h);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_ties_and_update),
        cmocka_unit_test(test_extreme_due),
        cmocka_unit_test(test_grow_and_shrink),
        cmocka_unit_test(test_bulk_load),
        cmocka_unit_test(test_random_ties),
        cmocka_unit_test(test_random_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
