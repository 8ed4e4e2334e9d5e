/*
 * Finding the Redis Cluster primary that serves rebound's keys.
 *
 * Every key reboundd writes shares one hash tag (the `{...}` in the key
 * prefix), so all of them live in one of the cluster's 16384 slots and
 * every script stays atomic on one node. The link asks the seed nodes
 * (CLUSTER NODES) which primary serves that slot before every connect; of
 * their answers, the primary claiming the slot with the highest
 * configuration epoch wins, which is how the cluster itself settles two
 * claims (a seed that has not yet heard of a failover still names the old
 * primary). The link then confirms with ROLE, and a MOVED, ASK, TRYAGAIN,
 * CLUSTERDOWN or READONLY answer sends it back to the seeds.
 */
#ifndef REBOUND_DAEMON_REDIS_CLUSTER_NODES_H
#define REBOUND_DAEMON_REDIS_CLUSTER_NODES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis/discovery.h"

#define CLUSTER_SLOTS 16384

/* The slot of a key as Redis Cluster computes it: CRC16 (XMODEM) of the
 * key, or of the part between the first '{' and the next '}' when that
 * part is not empty, modulo 16384. */
int cluster_key_slot(const char *key, size_t len);

/* True when key has a non-empty hash tag, so that every key that starts
 * with it lands in the same slot. */
bool cluster_has_hash_tag(const char *key, size_t len);

/* Reads one CLUSTER NODES answer: 0 with host (hostlen bytes), *port and
 * *epoch set to the primary that claims slot with the highest
 * configuration epoch (a primary marked failed is not taken), or -1 when
 * none does. */
int cluster_nodes_primary(const char *text, size_t len, int slot, char *host, size_t hostlen, int *port,
                          long long *epoch);

/* Asks each of the n seeds, starting at *first, which primary serves
 * slot, with a connect and reply time-out of timeout_ms each (blocking:
 * see redis/discovery.h), authenticating with user/password (NULL: none)
 * as to any node. Returns 0 with *claim the newest claim and *first set
 * to the seed that made it, or -1 with why in err when none could tell. */
int cluster_get_primary(const struct server_addr *seeds, int n, int *first, int slot, const char *user,
                        const char *password, int64_t timeout_ms, struct master_claim *claim, char *err,
                        size_t errlen);

#endif
