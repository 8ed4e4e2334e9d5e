/*
 * Latency histograms with fixed buckets. Header-only so that code built
 * without the rest of the daemon (the Redis link and its test) can observe
 * into one it is given; metrics.c renders them.
 */
#ifndef REBOUND_DAEMON_HISTOGRAM_H
#define REBOUND_DAEMON_HISTOGRAM_H

#include <stdint.h>

/* Upper bounds of the histogram buckets, in nanoseconds: 100 µs to 10 s,
 * roughly 1-2.5-5 per decade, which covers a loopback Redis round trip and
 * a request that waited on a slow disk alike. */
#define HISTOGRAM_BOUNDS                                                                                       \
    {100000ull,    250000ull,    500000ull,     1000000ull,    2500000ull,  5000000ull,                        \
     10000000ull,  25000000ull,  50000000ull,   100000000ull,  250000000ull, 500000000ull,                     \
     1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull}
#define HISTOGRAM_NBOUNDS 16

struct histogram {
    uint64_t buckets[HISTOGRAM_NBOUNDS + 1]; /* not cumulative; the last is +Inf */
    uint64_t count;
    uint64_t sum_ns;
};

/* Records one observation of ns nanoseconds. */
static inline void histogram_observe(struct histogram *h, uint64_t ns)
{
    static const uint64_t bounds[HISTOGRAM_NBOUNDS] = HISTOGRAM_BOUNDS;
    int i = 0;
    while (i < HISTOGRAM_NBOUNDS && ns > bounds[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum_ns += ns;
}

#endif
