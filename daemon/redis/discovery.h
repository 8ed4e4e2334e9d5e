/*
 * Asking a list of servers where the master is: the Sentinels of a master
 * (redis/sentinel.c) or the seed nodes of a Redis Cluster
 * (redis/cluster_nodes.c). Each server is asked in turn over a short-lived
 * blocking connection, and of their answers the one with the highest
 * configuration epoch wins, so that one server that has not yet heard of a
 * failover does not send the link back to the dead master.
 *
 * Blocking on purpose and bounded: it runs only when the link is about to
 * connect (never while it is READY), hiredis 0.14 already resolves host
 * names with a blocking getaddrinfo at that point, and the servers of a
 * deployment are a few LAN round trips away. Each server gets timeout_ms
 * to connect and timeout_ms to answer, so a dead one costs a refused
 * connect (microseconds) and a black-holed one at most 2 x timeout_ms; the
 * caller keeps that time-out short. An asynchronous query would need a
 * second hiredis context per attempt with its own state machine, for a
 * wait that only happens while Redis is not usable anyway.
 */
#ifndef REBOUND_DAEMON_REDIS_DISCOVERY_H
#define REBOUND_DAEMON_REDIS_DISCOVERY_H

#include <stddef.h>
#include <stdint.h>

struct server_addr {
    char host[256];
    int port;
};

/* Splits "host:port,host:port" (IPv6 as "[v6]:port") into at most max
 * addresses. Returns how many, or -1 when one does not parse. */
int server_parse_list(const char *list, struct server_addr *out, int max);

/* Where one server says the master is. */
struct master_claim {
    char host[256];
    int port;
    long long epoch; /* the configuration epoch of the claim */
};

struct redisContext;
/* Asks one connected (and authenticated) server. Returns 0 with *claim
 * filled, or -1 with why in err (the server's address is prefixed by the
 * caller). */
typedef int (*discovery_ask_fn)(struct redisContext *c, void *arg, struct master_claim *claim, char *err,
                                size_t errlen);

/* Asks each of the n servers, starting at *first, authenticating with
 * user/password (NULL: no AUTH; user NULL: the default user). Returns 0
 * with *claim the newest claim and *first set to the server that made it,
 * or -1 with the last reason in err when none answered. */
int discovery_ask_all(const struct server_addr *servers, int n, int *first, const char *user,
                      const char *password, int64_t timeout_ms, discovery_ask_fn ask, void *arg,
                      struct master_claim *claim, char *err, size_t errlen);

#endif
