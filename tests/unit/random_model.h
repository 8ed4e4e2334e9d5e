/*
 * What the randomised model tests share: a seeded generator independent of
 * the one under test (splitmix64), the seed taken from REBOUND_TEST_SEED
 * when set so a failure can be replayed, and checks that print the seed and
 * the operation number next to both sides. Include after <cmocka.h>.
 */
#ifndef REBOUND_TESTS_RANDOM_MODEL_H
#define REBOUND_TESTS_RANDOM_MODEL_H

#include <stdint.h>
#include <stdlib.h>

static uint64_t seed;
static uint64_t rs;
static size_t op; /* the operation (or case) being checked */

static inline uint64_t rnd(void)
{
    uint64_t z = (rs += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rnd_below(uint64_t n) { return rnd() % n; }

static inline void seed_from_env(uint64_t dflt)
{
    const char *s = getenv("REBOUND_TEST_SEED");
    seed = s ? strtoull(s, NULL, 0) : dflt;
    rs = seed;
    op = 0;
}

#define CHECK(cond)                                                                                 \
    do {                                                                                            \
        if (!(cond))                                                                                \
            fail_msg("%s (seed %llu, op %zu)", #cond, (unsigned long long)seed, op);                \
    } while (0)

#define CHECK_EQ(a, b)                                                                              \
    do {                                                                                            \
        long long a_ = (long long)(a), b_ = (long long)(b);                                         \
        if (a_ != b_)                                                                               \
            fail_msg("%s == %s: %lld != %lld (seed %llu, op %zu)", #a, #b, a_, b_,                  \
                     (unsigned long long)seed, op);                                                 \
    } while (0)

#endif
