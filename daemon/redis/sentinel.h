/*
 * Asking Redis Sentinels where a master is (SENTINEL MASTER), through
 * redis/discovery.h: every Sentinel is asked and the answer with the
 * highest configuration epoch wins; the link then confirms with ROLE.
 */
#ifndef REBOUND_DAEMON_REDIS_SENTINEL_H
#define REBOUND_DAEMON_REDIS_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

#include "redis/discovery.h"

/* Asks each of the n Sentinels, starting at *first, for master's address,
 * each with a connect and reply time-out of timeout_ms (blocking: see
 * redis/discovery.h). Returns 0 with *claim filled from the answer of the
 * highest configuration epoch and *first set to the Sentinel that gave
 * it, or -1 with why in err when none answered. */
int sentinel_get_master(const struct server_addr *sentinels, int n, int *first, const char *master,
                        const char *password, int64_t timeout_ms, struct master_claim *claim, char *err,
                        size_t errlen);

/* Reads SENTINEL MASTER's reply (a flat array of names and values): 0
 * with ip (iplen bytes), *port and *epoch ("config-epoch") filled, or -1
 * when it holds no usable address. */
struct redisReply;
int sentinel_parse_master(const struct redisReply *r, char *ip, size_t iplen, int *port, long long *epoch);

#endif
