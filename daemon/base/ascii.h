/* ASCII case folding for addresses and domains: the one lower-casing of
 * the daemon (domain table, recipient keys, alert events). Bytes outside
 * A-Z, UTF-8 included, are copied as they are. */
#ifndef REBOUND_DAEMON_ASCII_H
#define REBOUND_DAEMON_ASCII_H

#include <stddef.h>

/* Writes the n bytes of src to dst (which may be src) with A-Z lower-cased. */
static inline void ascii_lower(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
}

#endif
