/*
 * queue/sched.c against a naive model: an array of ids with, for each,
 * whether it is known, whether it is scheduled, its due time and the order
 * it was scheduled in. Random add/find/remove/set_due/unset_due/pop_due
 * sequences over ids of every length from 1 to 255 bytes (many sharing long
 * prefixes, some prefixes of others), across several doublings of the table.
 * The seed is fixed so a failure replays; set REBOUND_TEST_SEED to try
 * others. Failures print the seed and the op.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/sched.h"

#include "random_model.h"

struct mid {
    char id[256];
    size_t len;
    struct entry *e; /* NULL: not known */
    bool scheduled;
    int64_t due;
    uint64_t order;
};

/* Distinct ids: random lengths 1..255, random printable bytes; a third
 * share a long common prefix and differ near the end; a few are the prefix
 * of another id. Duplicates are rejected by a plain scan. */
static struct mid *make_ids(size_t n)
{
    struct mid *m = calloc(n, sizeof(*m));
    size_t k = 0;

    assert_non_null(m);
    while (k < n) {
        struct mid *x = &m[k];
        unsigned kind = (unsigned)rnd_below(3);
        if (kind == 2 && k > 0 && m[k - 1].len > 1) {
            x->len = 1 + rnd_below(m[k - 1].len - 1);
            memcpy(x->id, m[k - 1].id, x->len);
        } else {
            x->len = 1 + rnd_below(255);
            for (size_t i = 0; i < x->len; i++)
                x->id[i] = (char)(33 + rnd_below(94));
            if (kind == 1) {
                size_t pre = x->len > 4 ? x->len - 4 : 0;
                memset(x->id, 'p', pre);
            }
        }
        bool dup = false;
        for (size_t j = 0; j < k && !dup; j++)
            dup = m[j].len == x->len && memcmp(m[j].id, x->id, x->len) == 0;
        if (!dup)
            k++;
    }
    return m;
}

static struct mid *model_next(struct mid *m, size_t n)
{
    struct mid *best = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!m[i].scheduled)
            continue;
        if (!best || m[i].due < best->due || (m[i].due == best->due && m[i].order < best->order))
            best = &m[i];
    }
    return best;
}

static void check_entry(const struct mid *x)
{
    const struct entry *e = x->e;
    CHECK_EQ(e->id_len, x->len);
    CHECK(memcmp(e->id, x->id, x->len) == 0);
    CHECK_EQ(e->id[x->len], '\0');
    CHECK_EQ(entry_scheduled(e), x->scheduled);
    if (x->scheduled)
        CHECK_EQ(e->node.due_ms, x->due);
    CHECK(e->waiters == x);
}

static void foreach_mark_cb(struct entry *e, void *arg)
{
    size_t *seen = arg;
    struct mid *x = e->waiters;
    CHECK(x != NULL && x->e == e);
    /* each entry once: the mark goes in a field sched never reads */
    CHECK_EQ(e->class_idx, 0);
    e->class_idx = 1;
    (*seen)++;
}

static void foreach_unmark_cb(struct entry *e, void *arg)
{
    (void)arg;
    e->class_idx = 0;
}

static void check_all(struct sched *s, struct mid *m, size_t n)
{
    size_t known = 0, scheduled = 0, seen = 0, bytes = 0;

    for (size_t i = 0; i < n; i++) {
        struct entry *e = sched_find(s, m[i].id, m[i].len);
        CHECK(e == m[i].e);
        if (e) {
            known++;
            check_entry(&m[i]);
            /* the fixed fields, the id and its NUL, rounded to 8 */
            bytes += (offsetof(struct entry, id) + m[i].len + 1 + 7) / 8 * 8;
        }
        scheduled += m[i].scheduled;
    }
    CHECK_EQ(sched_count(s), known);
    CHECK_EQ(sched_entry_bytes(s), bytes);
    CHECK_EQ(sched_scheduled(s), scheduled);
    sched_foreach(s, foreach_mark_cb, &seen);
    CHECK_EQ(seen, known);
    sched_foreach(s, foreach_unmark_cb, NULL);
}

static void model_remove(struct sched *s, struct mid *x)
{
    x->e->waiters = NULL;
    sched_remove(s, x->e);
    x->e = NULL;
    x->scheduled = false;
}

static void run_random(size_t nids, size_t nops, int64_t due_range, size_t full_every)
{
    struct mid *m = make_ids(nids);
    struct sched *s = sched_new();
    uint64_t order = 0;
    int64_t now = 0;

    for (op = 0; op < nops; op++) {
        struct mid *x = &m[rnd_below(nids)];
        unsigned kind = (unsigned)rnd_below(100);
        int64_t due = now + (int64_t)rnd_below((uint64_t)due_range) - due_range / 8;

        if (kind < 30) {
            bool added = false;
            if (kind < 15) {
                /* a load's way: one lookup that adds what is missing */
                sched_prefetch(s, x->id, x->len);
                struct entry *e = sched_find_or_add(s, x->id, x->len, &added);
                CHECK_EQ(added, x->e == NULL);
                if (!added)
                    CHECK(e == x->e);
                x->e = e;
            } else if (!x->e) {
                x->e = sched_add(s, x->id, x->len);
                added = true;
            }
            if (added) {
                CHECK(x->e != NULL);
                CHECK_EQ(x->e->state, ENTRY_NEW);
                CHECK_EQ(x->e->flags, 0);
                CHECK_EQ(x->e->attempt, 0);
                CHECK_EQ(x->e->domain, 0);
                CHECK_EQ(x->e->first_ms, 0);
                CHECK(x->e->waiters == NULL);
                CHECK(!entry_scheduled(x->e));
                x->e->waiters = x;
            }
        } else if (kind == 99 && rnd_below(4) == 0) {
            /* room for a load of up to nids more, in the middle of it all */
            sched_reserve(s, sched_count(s) + rnd_below(nids));
        } else if (kind < 45) {
            struct entry *e = sched_find(s, x->id, x->len);
            CHECK(e == x->e);
            /* a proper prefix or extension of a known id is another id */
            if (x->len > 1) {
                struct entry *p = sched_find(s, x->id, x->len - 1);
                CHECK(p == NULL || p->id_len == x->len - 1);
            }
        } else if (kind < 55) {
            if (x->e)
                model_remove(s, x);
        } else if (kind < 75) {
            if (x->e) {
                sched_set_due(s, x->e, due);
                x->scheduled = true;
                x->due = due;
                x->order = order++;
            }
        } else if (kind < 82) {
            if (x->e) {
                sched_unset_due(s, x->e);
                x->scheduled = false;
            }
        } else {
            /* time passes; everything due comes out in order */
            now += (int64_t)rnd_below((uint64_t)due_range / 4 + 1);
            size_t limit = 1 + rnd_below(8);
            for (size_t k = 0; k < limit; k++) {
                struct mid *want = model_next(m, nids);
                struct entry *next = sched_next(s);
                CHECK(next == (want ? want->e : NULL));
                struct entry *got = sched_pop_due(s, now);
                if (!want || want->due > now) {
                    CHECK(got == NULL);
                    break;
                }
                CHECK(got == want->e);
                CHECK(!entry_scheduled(got));
                want->scheduled = false;
                CHECK(sched_find(s, want->id, want->len) == got);
            }
        }
        {
            struct mid *want = model_next(m, nids);
            CHECK(sched_next(s) == (want ? want->e : NULL));
        }
        if (op % full_every == 0)
            check_all(s, m, nids);
    }
    check_all(s, m, nids);

    /* remove about half, check, then free the rest with the schedule */
    for (size_t i = 0; i < nids; i++)
        if (m[i].e && (rnd() & 1))
            model_remove(s, &m[i]);
    check_all(s, m, nids);
    sched_free(s);
    free(m);
}

/* Few ids, much churn, ties in due times: full check every 64 ops. */
static void test_random_small(void **state)
{
    (void)state;
    seed_from_env(424242);
    run_random(300, 200000, 50, 64);
}

/* Enough ids to double the table several times, in the middle of churn. */
static void test_random_growth(void **state)
{
    (void)state;
    seed_from_env(9001);
    run_random(6000, 150000, 100000, 5000);
}

/* Straight growth to 300k entries and back: every id found after every
 * doubling finished or not, then removed in a different order. */
static void test_bulk_growth(void **state)
{
    enum { N = 300000 };
    struct sched *s = sched_new();
    char id[64];

    (void)state;
    for (int i = 0; i < N; i++) {
        int len = snprintf(id, sizeof(id), "msg-%d@campaign", i);
        struct entry *e = sched_add(s, id, (size_t)len);
        e->attempt = (uint16_t)(i & 0xffff);
        if (i % 3 == 0)
            sched_set_due(s, e, i / 7);
        /* spot checks while a rehash is in flight */
        if ((i & (i - 1)) == 0 || i % 9973 == 0) {
            for (int j = 0; j <= i; j += 1 + i / 50) {
                len = snprintf(id, sizeof(id), "msg-%d@campaign", j);
                struct entry *f = sched_find(s, id, (size_t)len);
                assert_non_null(f);
                assert_int_equal(f->attempt, j & 0xffff);
            }
        }
    }
    assert_int_equal(sched_count(s), N);
    assert_int_equal(sched_scheduled(s), (N + 2) / 3);
    for (int i = 0; i < N; i++) {
        int len = snprintf(id, sizeof(id), "msg-%d@campaign", i);
        struct entry *e = sched_find(s, id, (size_t)len);
        assert_non_null(e);
        assert_int_equal(e->id_len, len);
        assert_string_equal(e->id, id);
    }
    assert_null(sched_find(s, "msg-300000@campaign", 19));
    for (int i = N - 1; i >= 0; i -= 2) {
        int len = snprintf(id, sizeof(id), "msg-%d@campaign", i);
        sched_remove(s, sched_find(s, id, (size_t)len));
    }
    assert_int_equal(sched_count(s), N / 2);
    for (int i = 0; i < N; i++) {
        int len = snprintf(id, sizeof(id), "msg-%d@campaign", i);
        struct entry *e = sched_find(s, id, (size_t)len);
        if (i % 2)
            assert_null(e);
        else
            assert_non_null(e);
    }
    sched_free(s);
}

static void test_pop_due_and_next(void **state)
{
    struct sched *s = sched_new();
    struct entry *a, *b, *c;

    (void)state;
    assert_null(sched_next(s));
    assert_null(sched_pop_due(s, INT64_MAX));
    a = sched_add(s, "a", 1);
    b = sched_add(s, "b", 1);
    c = sched_add(s, "c", 1);
    assert_int_equal(sched_count(s), 3);
    assert_int_equal(sched_scheduled(s), 0);
    assert_null(sched_next(s));

    sched_set_due(s, a, 1000);
    sched_set_due(s, b, 500);
    sched_set_due(s, c, 1000);
    assert_ptr_equal(sched_next(s), b);
    assert_null(sched_pop_due(s, 499));
    assert_ptr_equal(sched_pop_due(s, 500), b);
    assert_false(entry_scheduled(b));
    assert_ptr_equal(sched_find(s, "b", 1), b);
    /* equal due times: first scheduled first; a reschedule goes behind */
    sched_set_due(s, a, 1000);
    assert_ptr_equal(sched_pop_due(s, 2000), c);
    assert_ptr_equal(sched_pop_due(s, 2000), a);
    assert_null(sched_pop_due(s, 2000));

    sched_set_due(s, a, 10);
    sched_unset_due(s, a);
    sched_unset_due(s, a); /* no-op */
    assert_false(entry_scheduled(a));
    assert_int_equal(sched_scheduled(s), 0);

    /* remove a scheduled entry: it leaves the heap too */
    sched_set_due(s, c, 5);
    sched_remove(s, c);
    assert_null(sched_find(s, "c", 1));
    assert_int_equal(sched_scheduled(s), 0);
    assert_null(sched_next(s));
    assert_int_equal(sched_count(s), 2);
    sched_free(s);
    sched_free(NULL);
}

static void test_id_edges(void **state)
{
    struct sched *s = sched_new();
    char longid[256];
    struct entry *e;

    (void)state;
    memset(longid, 'x', 255);
    longid[255] = '\0';
    e = sched_add(s, longid, 255);
    assert_int_equal(e->id_len, 255);
    assert_string_equal(e->id, longid);
    assert_ptr_equal(sched_find(s, longid, 255), e);
    assert_null(sched_find(s, longid, 254));
    /* longer than any id can be: not found, not a crash */
    char toolong[300];
    memset(toolong, 'x', sizeof(toolong));
    assert_null(sched_find(s, toolong, sizeof(toolong)));

    /* ids are bytes with a length: an embedded NUL is part of the id */
    struct entry *z = sched_add(s, "ab\0c", 4);
    assert_ptr_equal(sched_find(s, "ab\0c", 4), z);
    assert_null(sched_find(s, "ab", 2));
    assert_null(sched_find(s, "ab\0d", 4));
    sched_free(s);
}

/* A load as the daemon makes it: reserve, then find-or-add each id (some
 * twice, as HSCAN may return them) and schedule it; nothing grows during
 * it, and the heap gives the entries back in (due, insertion) order. */
static void test_load(void **state)
{
    enum { N = 200000 };
    struct sched *s = sched_new();
    char id[64];
    size_t added_n = 0;

    (void)state;
    seed_from_env(555);
    sched_add(s, "before", 6); /* known before the load, not scheduled */
    sched_reserve(s, sched_count(s) + N);
    for (int i = 0; i < N; i++) {
        /* every id once, and now and then one seen before again */
        int k = rnd_below(10) == 0 && i > 0 ? (int)rnd_below((uint64_t)i) : i;
        for (int again = 0; again < 2; again++) {
            int len = snprintf(id, sizeof(id), "m%d", again ? i : k);
            bool added;
            sched_prefetch(s, id, (size_t)len);
            struct entry *e = sched_find_or_add(s, id, (size_t)len, &added);
            assert_non_null(e);
            if (!added) {
                assert_true(k < i && !again);
                continue;
            }
            assert_int_equal(atoi(e->id + 1), i);
            added_n++;
            e->attempt = (uint16_t)(i & 0xffff);
            sched_set_due(s, e, (int64_t)(i % 1000));
            break;
        }
    }
    assert_int_equal(sched_count(s), added_n + 1);
    assert_int_equal(sched_scheduled(s), added_n);
    /* small ids: 64 bytes an entry, with no header */
    assert_true(sched_entry_bytes(s) <= (added_n + 1) * 64);
    int64_t last_due = -1;
    int last_k = -1;
    size_t out = 0;
    for (struct entry *e; (e = sched_pop_due(s, INT64_MAX)) != NULL; out++) {
        int k = atoi(e->id + 1);
        assert_int_equal(e->attempt, k & 0xffff);
        assert_true(e->node.due_ms > last_due || (e->node.due_ms == last_due && k > last_k));
        last_due = e->node.due_ms;
        last_k = k;
    }
    assert_int_equal(out, added_n);
    assert_non_null(sched_find(s, "before", 6));
    sched_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pop_due_and_next),
        cmocka_unit_test(test_id_edges),
        cmocka_unit_test(test_bulk_growth),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_random_small),
        cmocka_unit_test(test_random_growth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
