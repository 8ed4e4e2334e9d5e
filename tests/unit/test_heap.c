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

static void check_invariants(const struct heap *h, struct mnode *m, size_t n)
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
    for (size_t i = 0; i < h->len; i++) {
        const struct heap_node *a = h->slots[i];
        CHECK_EQ(a->index, i);
        if (i > 0) {
            const struct heap_node *p = h->slots[(i - 1) / 2];
            CHECK(p->due_ms < a->due_ms || (p->due_ms == a->due_ms && p->seq < a->seq));
        }
    }
    struct mnode *want = model_min(m, n);
    CHECK(heap_min(h) == (want ? &want->node : NULL));
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
        } else {
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_ties_and_update),
        cmocka_unit_test(test_extreme_due),
        cmocka_unit_test(test_grow_and_shrink),
        cmocka_unit_test(test_random_ties),
        cmocka_unit_test(test_random_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
