/*
 * Prometheus metrics: the counters that the rest of the daemon bumps, and
 * the text exposition served at GET /metrics (libmicrohttpd, run on the
 * daemon's libuv loop: no thread, so the handler reads struct daemon
 * directly and needs no lock).
 *
 * Histograms are header-only so that code built without the rest of the
 * daemon (the Redis link and its test) can observe into one it is given.
 */
#ifndef REBOUND_DAEMON_METRICS_H
#define REBOUND_DAEMON_METRICS_H

#include <stdbool.h>
#include <stddef.h>
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

/* Counts one error reply by its code (an ERR_* string). Unknown codes get
 * their own series, up to a fixed number of distinct codes. */
void metrics_count_error(const char *code);
/* Counts one accepted bounce report by class name and action (an enum
 * action value). */
void metrics_count_report(const char *class_name, int action);

/* Writes the whole exposition (text format 0.0.4) into a malloc'd buffer;
 * *len gets its length. Never fails (aborts on OOM). */
char *metrics_render(size_t *len);

/* Starts the HTTP endpoint on "HOST:PORT" (the metrics_listen option) on
 * rbd->loop. Returns 0, or -1 with the reason in err. */
int metrics_start(const char *hostport, char *err, size_t errlen);
/* Stops the endpoint and closes its handles (no-op when not started). */
void metrics_stop(void);
/* True when the build has the HTTP endpoint (libmicrohttpd). */
bool metrics_http_available(void);

#endif
