/*
 * Durations as people write them in the policy and config files.
 *
 * The grammar is deliberately narrow, because a duration that parses to
 * something the operator did not mean is worse than one that is refused:
 *
 *   duration  = "0" | component+
 *   component = digits [ "." digits ] unit
 *   unit      = "d" | "h" | "m" | "s" | "ms"
 *
 * Units appear in decreasing order, each at most once ("1h30m", never
 * "30m1h" or "5m5m"), and only the last component may have a fraction
 * ("1.5h", "1h30.5s"), so that rounding happens exactly once: the value is
 * rounded to the nearest millisecond, halves away from zero ("0.5ms" is
 * 1 ms, "0.4ms" is 0). No spaces, no upper case, no sign unless the caller
 * asked for duration_parse_signed.
 */
#include "config/duration.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct unit {
    const char *name;
    int64_t ms;
};

/* Longest first within a shared prefix ("ms" before "m"); the index is
 * the rank that enforces decreasing order. */
static const struct unit units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000},
};
#define NUNITS ((int)(sizeof(units) / sizeof(units[0])))

/* At most this many fraction digits: 10^9 times the largest unit still
 * fits an int64, and nobody means nanoseconds of a day. */
#define MAX_FRAC_DIGITS 9

static int unit_match(const char *s, int *len)
{
    if (s[0] == 'm' && s[1] == 's') {
        *len = 2;
        return 0;
    }
    for (int i = 1; i < NUNITS; i++) {
        if (s[0] == units[i].name[0]) {
            *len = 1;
            return i;
        }
    }
    return -1;
}

static int parse_magnitude(const char *s, int64_t *out)
{
    int64_t total = 0;
    int last_rank = NUNITS;
    bool had_fraction = false;

    if (s[0] == '\0')
        return -1;
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return 0;
    }
    while (*s != '\0') {
        int64_t whole = 0, frac = 0, frac_scale = 1;
        int ndigits = 0, nfrac = 0;

        if (had_fraction)
            return -1; /* a fraction must be the last component */
        while (*s >= '0' && *s <= '9') {
            if (__builtin_mul_overflow(whole, 10, &whole) || __builtin_add_overflow(whole, *s - '0', &whole))
                return -1;
            s++;
            ndigits++;
        }
        if (ndigits == 0)
            return -1;
        if (*s == '.') {
            s++;
            while (*s >= '0' && *s <= '9') {
                if (nfrac == MAX_FRAC_DIGITS)
                    return -1;
                frac = frac * 10 + (*s - '0');
                frac_scale *= 10;
                s++;
                nfrac++;
            }
            if (nfrac == 0)
                return -1;
            had_fraction = true;
        }
        int ulen = 0;
        int rank = unit_match(s, &ulen);
        if (rank < 0 || rank >= last_rank)
            return -1;
        last_rank = rank;
        s += ulen;

        int64_t unit = units[rank].ms, part;
        if (__builtin_mul_overflow(whole, unit, &part) || __builtin_add_overflow(total, part, &total))
            return -1;
        if (nfrac > 0) {
            /* frac < 10^9 and unit <= 8.64e7: the product fits. */
            int64_t num = frac * unit;
            int64_t q = num / frac_scale, r = num % frac_scale;
            if (2 * r >= frac_scale)
                q++;
            if (__builtin_add_overflow(total, q, &total))
                return -1;
        }
    }
    *out = total;
    return 0;
}

/* Parses a duration without sign. Returns 0 and *ms, or -1 (*ms untouched). */
int duration_parse(const char *s, int64_t *ms)
{
    if (s == NULL)
        return -1;
    return parse_magnitude(s, ms);
}

/* Parses a duration with an optional leading '-'. Returns 0 and *ms, or -1
 * (*ms untouched). "-0s" is 0. */
int duration_parse_signed(const char *s, int64_t *ms)
{
    int64_t v;

    if (s == NULL)
        return -1;
    if (*s == '-') {
        if (parse_magnitude(s + 1, &v) < 0)
            return -1;
        *ms = -v;
        return 0;
    }
    return parse_magnitude(s, ms);
}

/* Writes ms as components in decreasing units, zeros left out ("1d2h",
 * "1m30s", "250ms"), "0s" for zero and a leading '-' when negative; the
 * output parses back to ms exactly. buf is always NUL-terminated when
 * buflen > 0; a too-short buf gets a truncated text. */
void duration_format(int64_t ms, char *buf, int buflen)
{
    uint64_t left;
    size_t off = 0;

    if (buf == NULL || buflen <= 0)
        return;
    buf[0] = '\0';
    if (ms == 0) {
        snprintf(buf, (size_t)buflen, "0s");
        return;
    }
    if (ms < 0) {
        /* Negating through uint64 keeps INT64_MIN defined. */
        left = (uint64_t)0 - (uint64_t)ms;
        snprintf(buf, (size_t)buflen, "-");
        off = 1;
    } else {
        left = (uint64_t)ms;
    }
    for (int i = NUNITS - 1; i >= 0 && left > 0; i--) {
        uint64_t n = left / (uint64_t)units[i].ms;
        if (n == 0)
            continue;
        left -= n * (uint64_t)units[i].ms;
        if (off >= (size_t)buflen)
            break;
        int w = snprintf(buf + off, (size_t)buflen - off, "%llu%s", (unsigned long long)n, units[i].name);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}
