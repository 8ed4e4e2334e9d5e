#include "queue/shard.h"

#include <stdio.h>
#include <string.h>

/* The byte-at-a-time table of the polynomial: runs once per report in a
 * sharded layout, so 256 entries rather than eight shifts a byte. */
static const uint16_t *crc_table(void)
{
    static uint16_t t[256];
    static int ready;
    if (!ready) {
        for (int i = 0; i < 256; i++) {
            uint16_t crc = (uint16_t)(i << 8);
            for (int b = 0; b < 8; b++)
                crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
            t[i] = crc;
        }
        ready = 1;
    }
    return t;
}

uint16_t shard_crc16(const char *buf, size_t len)
{
    const uint16_t *t = crc_table();
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ t[((crc >> 8) ^ (unsigned char)buf[i]) & 0xff]);
    return crc;
}

int shard_of_rcpt(const char *rcpt, size_t len, int nshards)
{
    if (nshards < 2)
        return 0;
    const uint16_t *t = crc_table();
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)rcpt[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + ('a' - 'A'));
        crc = (uint16_t)((crc << 8) ^ t[((crc >> 8) ^ c) & 0xff]);
    }
    return crc % nshards;
}

int shard_tag(const char *prefix, int k, int nshards, char *buf, size_t cap)
{
    if (nshards < 1)
        nshards = 1;
    long lo = (long)k * SHARD_SLOTS / nshards, hi = (long)(k + 1) * SHARD_SLOTS / nshards;
    int slot = 0;
    /* A slice holds at least 256 slots (SHARD_MAX 64): about one try in
     * nshards lands in it, so the search ends after a few dozen tries. */
    for (unsigned n = 0; n < 1000000; n++) {
        int len = snprintf(buf, cap, "%ss%d.%u", prefix, k, n);
        if (len < 0 || (size_t)len >= cap)
            return -1;
        slot = shard_crc16(buf, (size_t)len) & (SHARD_SLOTS - 1);
        if (slot >= lo && slot < hi)
            return slot;
    }
    return slot;
}

int shard_fair_share(int nshards, int nlive)
{
    if (nlive < 1)
        return nshards;
    return (nshards + nlive - 1) / nlive;
}

int shard_count(uint64_t m)
{
    int n = 0;
    for (; m; m &= m - 1)
        n++;
    return n;
}

uint64_t shard_excess(uint64_t mine, int share)
{
    uint64_t out = 0;
    int extra = shard_count(mine) - share;
    for (int k = SHARD_MAX - 1; k >= 0 && extra > 0; k--) {
        if (mine & ((uint64_t)1 << k)) {
            out |= (uint64_t)1 << k;
            extra--;
        }
    }
    return out;
}
