/*
 * queue/slab.c against a model: random allocations and frees of random
 * sizes, each live block filled with a pattern of its own, so a block
 * handed out twice or overlapping another shows up as a damaged pattern.
 * The model keeps every live block's size and pattern and checks the
 * slab's byte counts. The seed is fixed so a failure replays; set
 * REBOUND_TEST_SEED to try others.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/slab.h"

#include "random_model.h"

struct mblock {
    unsigned char *p; /* NULL: not allocated */
    size_t size;
    unsigned char fill;
};

static size_t rounded(size_t n)
{
    return (n + SLAB_ALIGN - 1) / SLAB_ALIGN * SLAB_ALIGN;
}

static void check_block(const struct mblock *b)
{
    CHECK(((uintptr_t)b->p % SLAB_ALIGN) == 0);
    for (size_t i = 0; i < b->size; i++)
        if (b->p[i] != (unsigned char)(b->fill + i))
            CHECK(b->p[i] == (unsigned char)(b->fill + i));
}

static void run_random(size_t nblocks, size_t nops, size_t max_size, size_t full_every)
{
    struct mblock *m = calloc(nblocks, sizeof(*m));
    struct slab *sl = slab_new();
    size_t used = 0;

    assert_non_null(m);
    for (op = 0; op < nops; op++) {
        struct mblock *b = &m[rnd_below(nblocks)];
        if (!b->p) {
            /* a few sizes most of the time, as ids of one sender are */
            b->size = rnd_below(4) ? 56 + 8 * rnd_below(3) : 1 + rnd_below(max_size);
            b->p = slab_alloc(sl, b->size);
            CHECK(b->p != NULL);
            b->fill = (unsigned char)rnd();
            for (size_t i = 0; i < b->size; i++)
                b->p[i] = (unsigned char)(b->fill + i);
            used += rounded(b->size);
        } else {
            check_block(b);
            slab_free(sl, b->p, b->size);
            b->p = NULL;
            used -= rounded(b->size);
        }
        CHECK_EQ(slab_used(sl), used);
        CHECK(slab_held(sl) >= used);
        if (op % full_every == 0)
            for (size_t i = 0; i < nblocks; i++)
                if (m[i].p)
                    check_block(&m[i]);
    }
    for (size_t i = 0; i < nblocks; i++)
        if (m[i].p)
            check_block(&m[i]);
    /* the live blocks go with the slab */
    slab_destroy(sl);
    free(m);
}

static void test_random_small(void **state)
{
    (void)state;
    seed_from_env(31337);
    run_random(200, 100000, SLAB_MAX_SIZE, 50);
}

static void test_random_many(void **state)
{
    (void)state;
    seed_from_env(1234);
    run_random(20000, 200000, 320, 20000);
}

/* Blocks of one size made one after the other are contiguous, and a freed
 * block is the next one handed out. */
static void test_order_and_reuse(void **state)
{
    struct slab *sl = slab_new();
    char *a, *b, *c;

    (void)state;
    a = slab_alloc(sl, 62);
    b = slab_alloc(sl, 64);
    assert_ptr_equal(b, a + 64);
    c = slab_alloc(sl, 65);
    assert_true(c != a && c != b);
    assert_int_equal(slab_used(sl), 64 + 64 + 72);
    slab_free(sl, a, 62);
    assert_ptr_equal(slab_alloc(sl, 57), a);
    slab_free(sl, c, 65);
    slab_free(sl, b, 64);
    assert_int_equal(slab_used(sl), 64);
    assert_true(slab_held(sl) >= 2 * 4096 - 64);
    /* the largest block, and many of them across several chunks */
    for (int i = 0; i < 10000; i++)
        memset(slab_alloc(sl, SLAB_MAX_SIZE), 0xab, SLAB_MAX_SIZE);
    assert_int_equal(slab_used(sl), 64 + 10000 * (size_t)SLAB_MAX_SIZE);
    slab_destroy(sl);
    slab_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_reuse),
        cmocka_unit_test(test_random_small),
        cmocka_unit_test(test_random_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
