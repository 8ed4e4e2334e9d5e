/*
 * Per-domain arithmetic: a sliding window of counts and a pace.
 *
 * The window answers "how many rate-limit replies did this domain send in
 * the last minute" for every report of a tracked class, so it must be
 * cheap and small: a ring of twelve counters, each a twelfth of the window,
 * is 56 bytes and O(1) per report. The price is precision at the trailing
 * edge (the oldest bucket drops out whole), which a threshold such as "50
 * in a minute" does not notice.
 *
 * The pace is the generic cell rate algorithm (as in ATM traffic shaping
 * and most rate limiters): a theoretical arrival time (TAT) that each
 * retry moves on by one interval. A retry due at now may go when
 * TAT - tolerance <= now, where the tolerance is (burst - 1) intervals;
 * otherwise it is handed the place TAT - tolerance and the TAT moves on as
 * if it had gone there. One integer per domain thus spreads any number of
 * due retries one interval apart, in the order they fell due, and a
 * caller that reschedules each retry to its place keeps the work O(log n)
 * per retry in the heap. Microseconds, so that paces above 1000 a second
 * keep their spacing.
 */
#include "queue/domain.h"

#include <string.h>

static int64_t floor_to(int64_t t, int64_t step)
{
    int64_t q = t / step;

    if (t % step != 0 && t < 0)
        q--;
    return q * step;
}

static int64_t bucket_ms(int64_t window_ms)
{
    int64_t b = window_ms / DOMAIN_WINDOW_BUCKETS;

    return b > 0 ? b : 1;
}

static bool window_empty(const struct domain_window *w)
{
    for (int i = 0; i < DOMAIN_WINDOW_BUCKETS; i++)
        if (w->counts[i])
            return false;
    return true;
}

/* Moves the newest bucket up to the one holding now, zeroing the buckets
 * it passes. */
static void window_advance(struct domain_window *w, int64_t bw, int64_t now_ms)
{
    int64_t k;

    if (window_empty(w)) {
        w->head_start = floor_to(now_ms, bw);
        return;
    }
    if (now_ms < w->head_start)
        return;
    k = (now_ms - w->head_start) / bw;
    if (k == 0)
        return;
    if (k >= DOMAIN_WINDOW_BUCKETS) {
        memset(w->counts, 0, sizeof w->counts);
        w->head = 0;
        w->head_start = floor_to(now_ms, bw);
        return;
    }
    for (int64_t i = 0; i < k; i++) {
        w->head = (uint8_t)((w->head + 1) % DOMAIN_WINDOW_BUCKETS);
        w->counts[w->head] = 0;
    }
    w->head_start += k * bw;
}

/* Adds n at now_ms; counts saturate rather than wrap. */
void domain_window_add(struct domain_window *w, int64_t window_ms, int64_t now_ms, uint32_t n)
{
    window_advance(w, bucket_ms(window_ms), now_ms);
    uint32_t *c = &w->counts[w->head];
    *c = *c > UINT32_MAX - n ? UINT32_MAX : *c + n;
}

/* The sum of the buckets still inside the window at now_ms. */
uint32_t domain_window_count(struct domain_window *w, int64_t window_ms, int64_t now_ms)
{
    uint64_t sum = 0;

    window_advance(w, bucket_ms(window_ms), now_ms);
    for (int i = 0; i < DOMAIN_WINDOW_BUCKETS; i++)
        sum += w->counts[i];
    return sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
}

void domain_window_clear(struct domain_window *w)
{
    memset(w, 0, sizeof *w);
}

/* A place in microseconds as the first whole millisecond at or after it,
 * so that a retry never goes before its place. */
static int64_t us_to_ms_up(int64_t us)
{
    int64_t ms = us / 1000;

    return us % 1000 > 0 ? ms + 1 : ms;
}

/* See domain.h. Returns 0 or a time strictly after now_ms. */
int64_t domain_pace_take(struct domain_pace *p, int64_t now_ms, int64_t interval_us, int burst)
{
    int64_t now_us = now_ms * 1000, tolerance;

    if (interval_us <= 0)
        return 0;
    if (burst < 1)
        burst = 1;
    if (p->strict && p->tat_us <= now_us)
        p->strict = false;
    tolerance = p->strict ? 0 : (int64_t)(burst - 1) * interval_us;
    if (p->tat_us - tolerance <= now_us) {
        p->tat_us = (p->tat_us > now_us ? p->tat_us : now_us) + interval_us;
        return 0;
    }
    int64_t place = p->tat_us - tolerance;
    p->tat_us += interval_us;
    return us_to_ms_up(place);
}

/* See domain.h. Without a pace every held retry goes at until_ms. */
int64_t domain_pace_hold(struct domain_pace *p, int64_t until_ms, int64_t interval_us)
{
    int64_t until_us = until_ms * 1000;
    int64_t place = p->tat_us > until_us ? p->tat_us : until_us;

    if (interval_us <= 0)
        return until_ms;
    p->tat_us = place + interval_us;
    p->strict = true;
    return us_to_ms_up(place);
}

void domain_pace_shift(struct domain_pace *p, int64_t delta_ms)
{
    if (delta_ms > 0)
        p->tat_us -= delta_ms * 1000;
}

bool domain_pace_backlogged(const struct domain_pace *p, int64_t now_ms)
{
    return p->tat_us > now_ms * 1000;
}
