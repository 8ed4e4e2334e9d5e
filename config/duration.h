#ifndef REBOUND_CONFIG_DURATION_H
#define REBOUND_CONFIG_DURATION_H

#include <stdint.h>

/* Parses a duration: a number with a unit, "250ms", "5s", "5m", "4h", "3d"
 * (fractions allowed: "1.5h"), or combinations "1h30m". Returns 0 and the
 * value in *ms, or -1. */
int duration_parse(const char *s, int64_t *ms);

/* The same, but a leading '-' is allowed ("-5m"), for the few settings
 * that may move a time earlier (a jitter range's low end). */
int duration_parse_signed(const char *s, int64_t *ms);

/* Writes the shortest exact form ("90m" -> "1h30m") into buf. */
void duration_format(int64_t ms, char *buf, int buflen);

#endif
