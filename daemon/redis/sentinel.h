/*
 * Asking Redis Sentinels where a master is. Every Sentinel is asked
 * (SENTINEL MASTER) and the answer with the highest configuration epoch
 * wins, so one Sentinel that has not yet heard of a failover does not send
 * the link back to the dead master; the link then confirms with ROLE.
 */
#ifndef REBOUND_DAEMON_REDIS_SENTINEL_H
#define REBOUND_DAEMON_REDIS_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

struct sentinel_addr {
    char host[256];
    int port;
};

/* Splits "host:port,host:port" (IPv6 as "[v6]:port") into at most max
 * addresses. Returns how many, or -1 when one does not parse. */
int sentinel_parse_list(const char *list, struct sentinel_addr *out, int max);

/* Asks each of the n Sentinels, starting at *first, for master's address,
 * each with a connect and reply time-out of timeout_ms (blocking: see
 * sentinel.c). Returns 0 with host (hostlen bytes) and *port filled from
 * the answer of the highest configuration epoch (in *epoch) and *first
 * set to the Sentinel that gave it, or -1 with why in err when none
 * answered. */
int sentinel_get_master(const struct sentinel_addr *sentinels, int n, int *first, const char *master,
                        const char *password, int64_t timeout_ms, char *host, size_t hostlen, int *port,
                        long long *epoch, char *err, size_t errlen);

/* Reads SENTINEL MASTER's reply (a flat array of names and values): 0
 * with ip (iplen bytes), *port and *epoch ("config-epoch") filled, or -1
 * when it holds no usable address. */
struct redisReply;
int sentinel_parse_master(const struct redisReply *r, char *ip, size_t iplen, int *port, long long *epoch);

#endif
