/*
 * Shards: the schedule split by recipient into a fixed number of parts,
 * each owned by one reboundd at a time (docs/architecture.md, "Shards").
 * Pure arithmetic: no I/O, no clock.
 */
#ifndef REBOUND_QUEUE_SHARD_H
#define REBOUND_QUEUE_SHARD_H

#include <stddef.h>
#include <stdint.h>

/* At most this many shards: an instance keeps the set it serves in one
 * 64-bit word. */
#define SHARD_MAX 64
/* Redis Cluster's key slots. */
#define SHARD_SLOTS 16384

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection;
 * the checksum Redis Cluster hashes keys with. */
uint16_t shard_crc16(const char *buf, size_t len);

/* The shard of a recipient: CRC16 of the address in lower case, mod
 * nshards (0 when nshards < 2). */
int shard_of_rcpt(const char *rcpt, size_t len, int nshards);

/* The hash tag of shard k of nshards under prefix, written into buf (cap
 * bytes, at least strlen(prefix) + 24): "<prefix>s<k>.<n>" with the
 * smallest n whose slot lies in the k-th of nshards equal slices of the
 * slot space, so that the shards spread evenly over any split of the slots
 * into equal ranges. Returns the slot. */
int shard_tag(const char *prefix, int k, int nshards, char *buf, size_t cap);

/* How many shards one of nlive instances may own: ceil(nshards / nlive)
 * (nshards when nlive < 1). */
int shard_fair_share(int nshards, int nlive);

/* The shards (a bit each) an instance that owns `mine` should give up so
 * that it keeps at most share: the highest-numbered ones above the share. */
uint64_t shard_excess(uint64_t mine, int share);

/* The bits set in m. */
int shard_count(uint64_t m);

#endif
