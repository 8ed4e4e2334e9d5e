/*
 * queue/shard.c: the shard of a recipient, the shards' hash tags, and the
 * fair-share rule, against reference models (the checksum by its published
 * check value and Redis Cluster's key slots; the share by a simulation of
 * instances joining and leaving, each taking free shards up to its share
 * and giving up what is above it, as schedule/lease.c does).
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

#include "queue/shard.h"

static void test_crc16_reference(void **state)
{
    /* CRC-16/XMODEM's check value, and slots as Redis Cluster gives them
     * (CLUSTER KEYSLOT). */
    assert_int_equal(shard_crc16("123456789", 9), 0x31C3);
    assert_int_equal(shard_crc16("foo", 3) % SHARD_SLOTS, 12182);
    assert_int_equal(shard_crc16("bar", 3) % SHARD_SLOTS, 5061);
    assert_int_equal(shard_crc16("", 0), 0);
}

static uint64_t rng = 88172645463325252ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void random_rcpt(char *buf, size_t cap)
{
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-_";
    size_t n = 3 + next() % 20, k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        buf[k++] = chars[next() % (sizeof chars - 1)];
    buf[k++] = '@';
    size_t d = 3 + next() % 10;
    for (size_t i = 0; i < d && k + 1 < cap; i++)
        buf[k++] = chars[next() % 36];
    buf[k] = '\0';
}

static void test_shard_of_rcpt(void **state)
{
    int hits[24] = {0};
    for (int i = 0; i < 24000; i++) {
        char r[64], low[64];
        random_rcpt(r, sizeof r);
        size_t n = strlen(r);
        for (size_t j = 0; j <= n; j++)
            low[j] = (r[j] >= 'A' && r[j] <= 'Z') ? (char)(r[j] + 32) : r[j];
        int k = shard_of_rcpt(r, n, 24);
        /* the model: CRC16 of the address in lower case, mod the shards */
        assert_int_equal(k, shard_crc16(low, n) % 24);
        assert_int_equal(k, shard_of_rcpt(low, n, 24));
        assert_int_equal(shard_of_rcpt(r, n, 0), 0);
        assert_int_equal(shard_of_rcpt(r, n, 1), 0);
        hits[k]++;
    }
    /* spread: every shard within 15 % of the mean (1000) */
    for (int k = 0; k < 24; k++)
        assert_in_range(hits[k], 850, 1150);
}

static void test_tags_spread_over_the_slots(void **state)
{
    static const int counts[] = {2, 3, 4, 6, 8, 24, 64};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        int s = counts[c];
        for (int k = 0; k < s; k++) {
            char tag[128], again[128];
            int slot = shard_tag("rebound:", k, s, tag, sizeof tag);
            assert_int_equal(slot, shard_crc16(tag, strlen(tag)) % SHARD_SLOTS);
            assert_true(slot >= k * SHARD_SLOTS / s && slot < (k + 1) * SHARD_SLOTS / s);
            assert_int_equal(strncmp(tag, "rebound:s", 9), 0);
            /* the same every time: every instance names the same keys */
            assert_int_equal(shard_tag("rebound:", k, s, again, sizeof again), slot);
            assert_string_equal(tag, again);
        }
    }
    char small[8];
    assert_int_equal(shard_tag("a-long-prefix:", 0, 6, small, sizeof small), -1);
}

static void test_fair_share_and_excess(void **state)
{
    for (int s = 1; s <= SHARD_MAX; s++)
        for (int n = 0; n <= 20; n++) {
            int share = shard_fair_share(s, n);
            if (n < 1)
                assert_int_equal(share, s);
            else {
                assert_true(share * n >= s);
                assert_true((share - 1) * n < s);
            }
        }
    for (int i = 0; i < 5000; i++) {
        uint64_t mine = next();
        int share = (int)(next() % 70);
        uint64_t give = shard_excess(mine, share);
        int held = shard_count(mine);
        assert_int_equal(give & ~mine, 0);
        assert_int_equal(shard_count(give), held > share ? held - share : 0);
        /* the highest-numbered ones: everything kept is below everything given */
        uint64_t kept = mine & ~give;
        if (give && kept)
            assert_true(64 - __builtin_clzll(kept) <= __builtin_ctzll(give));
    }
}

/* The model of the lease rule: each live instance gives up what is above
 * its share, then takes free shards up to it; repeated until nothing
 * moves, every shard must be owned and no instance above the share. */
#define INST 8

static void settle(int s, int *owner, const int *alive, int first_of[INST])
{
    for (int round = 0; round < 100; round++) {
        int n = 0;
        for (int i = 0; i < INST; i++)
            n += alive[i];
        int share = shard_fair_share(s, n);
        bool moved = false;
        for (int i = 0; i < INST; i++) {
            uint64_t mine = 0;
            for (int k = 0; k < s; k++) {
                if (owner[k] >= 0 && !alive[owner[k]])
                    owner[k] = -1; /* its lease runs out */
                if (owner[k] == i)
                    mine |= (uint64_t)1 << k;
            }
            if (!alive[i])
                continue;
            uint64_t give = shard_excess(mine, share);
            for (int k = 0; k < s; k++)
                if (give & ((uint64_t)1 << k)) {
                    owner[k] = -1;
                    moved = true;
                }
            int held = shard_count(mine & ~give);
            for (int j = 0; j < s && held < share; j++) {
                int k = (first_of[i] + j) % s;
                if (owner[k] < 0) {
                    owner[k] = i;
                    held++;
                    moved = true;
                }
            }
        }
        if (!moved)
            return;
    }
    fail_msg("the shards did not settle");
}

static void test_fair_share_model(void **state)
{
    static const int counts[] = {6, 24, 64};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        int s = counts[c];
        int owner[SHARD_MAX], alive[INST] = {0}, first_of[INST];
        for (int k = 0; k < s; k++)
            owner[k] = -1;
        for (int i = 0; i < INST; i++)
            first_of[i] = (int)(next() % (uint64_t)s);
        for (int step = 0; step < 200; step++) {
            int i = (int)(next() % INST);
            alive[i] = !alive[i] || (next() % 4 == 0); /* joins, or leaves (or dies) */
            int n = 0;
            for (int j = 0; j < INST; j++)
                n += alive[j];
            if (n == 0)
                continue;
            settle(s, owner, alive, first_of);
            int per[INST] = {0};
            for (int k = 0; k < s; k++) {
                assert_true(owner[k] >= 0);
                assert_true(alive[owner[k]]);
                per[owner[k]]++;
            }
            for (int j = 0; j < INST; j++)
                assert_true(per[j] <= shard_fair_share(s, n));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_reference),
        cmocka_unit_test(test_shard_of_rcpt),
        cmocka_unit_test(test_tags_spread_over_the_slots),
        cmocka_unit_test(test_fair_share_and_excess),
        cmocka_unit_test(test_fair_share_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
