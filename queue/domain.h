/*
 * Arithmetic for one receiving domain: how many replies of a kind it sent
 * in the last window, and when its next retry may leave. Pure: no clock of
 * its own (time comes in as an argument), no allocation.
 */
#ifndef REBOUND_QUEUE_DOMAIN_H
#define REBOUND_QUEUE_DOMAIN_H

#include <stdbool.h>
#include <stdint.h>

#define DOMAIN_WINDOW_BUCKETS 12

/* A sliding window of counts, in DOMAIN_WINDOW_BUCKETS buckets of
 * window / DOMAIN_WINDOW_BUCKETS each: the count covers between the last
 * window and the last window minus one bucket. Zero-initialised is empty. */
struct domain_window {
    int64_t head_start;  /* start of the newest bucket, ms */
    uint32_t counts[DOMAIN_WINDOW_BUCKETS];
    uint8_t head;        /* index of the newest bucket */
};

/* Adds n at now to w, whose window is window_ms long (> 0). A time before
 * the newest bucket (the clock went back) counts in the newest bucket. */
void domain_window_add(struct domain_window *w, int64_t window_ms, int64_t now_ms, uint32_t n);
/* The count of the window that ends at now (w is brought up to now). */
uint32_t domain_window_count(struct domain_window *w, int64_t window_ms, int64_t now_ms);
/* Forgets every count. */
void domain_window_clear(struct domain_window *w);

/*
 * The pace of a domain's retries: at most one per interval, with a burst
 * of up to `burst` at once when the domain has been quiet (the generic cell
 * rate algorithm: a theoretical arrival time that each retry moves on by
 * one interval). After a hold (the domain throttled us) the pace is strict,
 * with no burst, until the retries held back have all gone.
 */
struct domain_pace {
    int64_t tat_us; /* theoretical arrival time of the next retry, in microseconds */
    bool strict;    /* releasing a hold: no burst */
};

/* A retry of this domain is due at now. Returns 0 when it may go now, or
 * the time (ms, > now) it may go at; either way its place is taken, so the
 * caller must send it then. interval_us <= 0 means no pace (always 0);
 * burst < 1 counts as 1. */
int64_t domain_pace_take(struct domain_pace *p, int64_t now_ms, int64_t interval_us, int burst);
/* A retry of this domain is due while it is held back until until_ms
 * (> now): returns the time (ms, >= until_ms) it may go at, one interval
 * after the one before it, and makes the pace strict. */
int64_t domain_pace_hold(struct domain_pace *p, int64_t until_ms, int64_t interval_us);
/* The hold ended delta_ms early: the places handed out move that much
 * earlier (the caller moves the retries that hold them). */
void domain_pace_shift(struct domain_pace *p, int64_t delta_ms);
/* Whether retries handed a later place are still waiting for it at now. */
bool domain_pace_backlogged(const struct domain_pace *p, int64_t now_ms);

#endif
