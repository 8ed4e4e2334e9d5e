/*
 * The daemon's connection to Redis, owned as a state machine:
 *
 *   DISCONNECTED --start/backoff timer--> CONNECTING --connected, AUTH,
 *   SELECT, SCRIPT LOAD done--> READY --error/timeout--> DISCONNECTED
 *   (reconnect with capped exponential back-off and jitter)
 *   any --redis_link_close--> DRAINING (in-flight replies still arrive)
 *   --> CLOSED (handles closed, closed_cb called)
 *
 * hiredis 0.14 has no connect or command time-outs, so a uv_timer watches
 * both: a connect that takes longer than timeout_ms, or a command whose
 * reply is older than timeout_ms, drops the connection. When the connection
 * drops, every command in flight gets its callback with reply == NULL: the
 * write may or may not have been applied (the caller must treat it as in
 * doubt).
 */
#ifndef REBOUND_DAEMON_REDIS_LINK_H
#define REBOUND_DAEMON_REDIS_LINK_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum link_state {
    LINK_DISCONNECTED,
    LINK_CONNECTING,
    LINK_READY,
    LINK_DRAINING,
    LINK_CLOSED,
};

struct redis_link_opts {
    const char *host;         /* NULL when unix_path is set */
    int port;
    const char *unix_path;    /* NULL for TCP */
    const char *user;         /* ACL user or NULL */
    const char *password;     /* NULL = no AUTH */
    int db;
    int64_t timeout_ms;       /* connect and command time-out */
    const char *const *scripts; /* Lua sources, loaded with SCRIPT LOAD at every connect */
    int nscripts;
    /* Sentinel discovery: with nsentinels > 0, host and port are only the
     * first guess; every connect asks the Sentinels ("host:port" each)
     * for master_name's address, and the link goes READY only on a server
     * whose ROLE is master. */
    const char *const *sentinels;
    int nsentinels;
    const char *master_name;
    const char *sentinel_password; /* NULL = no AUTH to the Sentinels */
    /* Redis Cluster discovery: with ncluster_seeds > 0 ("host:port" each),
     * host and port are only the first guess; every connect asks the seeds
     * which primary serves the slot of cluster_key (every key the caller
     * uses must share its hash tag), and the link goes READY only on a
     * server whose ROLE is master. MOVED, ASK, TRYAGAIN, CLUSTERDOWN and
     * READONLY answers drop the connection and ask again. */
    const char *const *cluster_seeds;
    int ncluster_seeds;
    const char *cluster_key;
};

struct redis_link;

/* Called on every change between up (READY) and down. */
typedef void (*link_state_cb)(struct redis_link *link, bool up, void *arg);
/* Called exactly once per command accepted by redis_link_*: reply is the
 * reply (owned by hiredis, valid during the call) or NULL when the link
 * went down first. */
typedef void (*link_reply_cb)(struct redis_link *link, redisReply *reply, void *privdata);

/* Returns a new link (not yet connecting); copies opts. */
struct redis_link *redis_link_new(uv_loop_t *loop, const struct redis_link_opts *opts, link_state_cb cb,
                                  void *arg);
/* Starts connecting (and keeps reconnecting until closed). */
void redis_link_start(struct redis_link *link);
enum link_state redis_link_state(const struct redis_link *link);
static inline bool redis_link_ready(const struct redis_link *link) { return redis_link_state(link) == LINK_READY; }
/* Human-readable reason for the last failure ("" if none). */
const char *redis_link_last_error(const struct redis_link *link);
/* Commands sent and not yet answered. */
size_t redis_link_inflight(const struct redis_link *link);
/* Changes the connect and command time-out (a reload); applies to the
 * commands already in flight too. */
void redis_link_set_timeout(struct redis_link *link, int64_t timeout_ms);
/* Every answered command's round trip is recorded into h (NULL: none).
 * h must outlive the link. */
struct histogram;
void redis_link_set_rtt_histogram(struct redis_link *link, struct histogram *h);

/* Sends one command. Returns 0 (cb will be called once), or -1 when the
 * link is not READY (cb is not called). */
int redis_link_command(struct redis_link *link, link_reply_cb cb, void *privdata, int argc, const char **argv,
                       const size_t *argvlen);
/* Runs script number `script` (an index into opts.scripts) with EVALSHA;
 * argv holds the keys first, then the arguments. On a NOSCRIPT error it
 * re-sends the script with EVAL, transparently. Same return as above. */
int redis_link_script(struct redis_link *link, int script, link_reply_cb cb, void *privdata, int nkeys, int argc,
                      const char **argv, const size_t *argvlen);

/* Keeps a reply that a link_reply_cb was given valid after the callback
 * returns (the whole reply, elements included; only the reply passed to
 * the callback, not one of its elements). Returns reply. Each retain needs
 * one redis_link_reply_release, which frees it once hiredis is done too.
 * Lets a callback send its next request first and work through a large
 * reply afterwards (from a uv_check or uv_idle), while Redis prepares the
 * next one. */
redisReply *redis_link_reply_retain(redisReply *reply);
/* Drops one retain of reply, freeing it when nothing holds it any more.
 * Allowed after the link is closed (a reply does not point into it). */
void redis_link_reply_release(redisReply *reply);

/* "host:port" of the server the link is (or was last) connected to, or
 * would connect to next: with Sentinels, the last master they named; in
 * a cluster, the last primary the seeds named. */
const char *redis_link_where(const struct redis_link *link);
/* The cluster slot the link serves, or -1 without cluster seeds. */
int redis_link_cluster_slot(const struct redis_link *link);
/* The cluster's answers that sent the link back to the seeds (MOVED, ASK,
 * TRYAGAIN, CLUSTERDOWN, READONLY). */
uint64_t redis_link_redirects(const struct redis_link *link);
/* The times the Sentinels (or the cluster seeds) named a master at another
 * address than the one
 * before (a failover followed); 0 without Sentinels. */
uint64_t redis_link_master_changes(const struct redis_link *link);

/* A Sentinel says master_name is at host:port since configuration epoch
 * `epoch` (redis/sentinel_watch.c asks). When that is newer than what the
 * link connected by and names another server, the connection is dropped
 * (commands in flight get NULL, in doubt) and the next connect asks the
 * Sentinels again; a link waiting out its back-off connects at once.
 * Returns whether it did either. */
bool redis_link_sentinel_moved(struct redis_link *link, const char *host, int port, long long epoch);
/* A link waiting out its back-off connects at once (a link to another
 * slot of a Redis Cluster just connected after a failover: this one likely
 * lost the same primary, and the seeds know the new one now). Returns
 * whether it was waiting. */
bool redis_link_reconnect_now(struct redis_link *link);
/* The master's name with Sentinels, or NULL without. */
const char *redis_link_master_name(const struct redis_link *link);

/* Stops reconnecting, waits (at most timeout_ms) for commands in flight,
 * disconnects, closes every handle, then calls closed_cb. The link is freed
 * after closed_cb returns. */
void redis_link_close(struct redis_link *link, void (*closed_cb)(void *arg), void *arg);


#endif
