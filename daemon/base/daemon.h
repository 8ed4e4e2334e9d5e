/*
 * The daemon's shared state: one instance (base/daemon.c), filled in by
 * main.c. Every part of daemon/ runs on the one libuv loop thread, so there
 * is no locking. It sits in base/ because every floor reads it (like
 * Redis's `server`); what it points to belongs to the floor that made it.
 */
#ifndef REBOUND_DAEMON_DAEMON_H
#define REBOUND_DAEMON_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/histogram.h"
#include "config/config.h"
#include "proto/request.h"
#include "queue/policy.h"
#include "queue/sched.h"

struct redis_link;

struct daemon {
    uv_loop_t *loop;
    struct config cfg;
    struct policy *policy;
    struct sched *sched;
    struct redis_link *link;
    struct proto_limits limits;
    uint64_t rng;

    /* The Redis keys: made by store_init, named only in store/. */
    char *key_msgs;    /* <prefix>msg: hash of message records */
    char *key_events;  /* <prefix>events: the event stream (outbox) */
    char *key_rcpts;   /* <prefix>rcpt: hash of recipients' soft-bounce streaks */
    char *key_supp;    /* <prefix>suppressed: hash of suppressed addresses */
    char *key_domains; /* <prefix>domains: hash of domain throttles */
    char *key_learned; /* <prefix>learned: hash of domains' learned timing (queue/learn.h text) */

    bool loaded;      /* the schedule has been read back from Redis */
    bool stopping;
    int64_t started_ms;

    /* counters for stats */
    uint64_t events_emitted[EV__COUNT];
    uint64_t pending_by_class[POLICY_MAX_CLASSES];
    uint64_t npending, nawaiting;
    uint64_t reports, errors;
    int nconns;

    /* operations: rendered by metrics.c (docs/operations.md, Metrics) */
    struct histogram request_latency; /* a request line read -> its reply ready */
    struct histogram redis_rtt;       /* a Redis command sent -> its reply */
    uint64_t requests_waiting;        /* requests read and not yet answered, all connections */
    uint64_t conns_accepted, conns_refused;
    uint64_t reloads_ok, reloads_failed;
    uint64_t policy_generation; /* bumped each time rbd->policy changes: keys caches of its results */
    uint64_t redis_connects;          /* times the Redis link became ready */

    /* acting on the queue (ops/list.c, retry_now.c, hold.c) */
    char *key_held; /* <prefix>held: hash of held domains */
    char *key_history;    /* <prefix>history: hash of finished messages' stories */
    char *key_history_at; /* <prefix>history_at: sorted set, id by the time it finished */
    /* high availability (docs/operations.md) */
    char instance_id[300];            /* cfg.instance_id, or "<hostname>:<pid>" made at start */
    char advertise[300];              /* cfg.advertise, or the listen address */
    uint64_t wait_batches;            /* write batches followed by a WAIT */
    uint64_t wait_short;              /* of those, WAITs short of redis_min_replicas: answered unavailable */
    /* several reboundd on one Redis: the lease (schedule/lease.c) */
    int lease_role;                   /* enum lease_role (schedule/lease.h) */
    long long lease_epoch;            /* the epoch held, 0 none */
    uint64_t lease_takeovers;         /* times this instance acquired the lease */
    uint64_t lease_fenced_writes;     /* writes Redis refused as FENCED */
    uint64_t lease_renew_failures;    /* renewals that got no answer */
    uint64_t lease_self_fenced;       /* times this instance stopped serving: lease lost or not renewed */
    /* shards (cfg.shards >= 2; schedule/lease.c): a bit per shard */
    uint64_t shards_held;             /* leased by this instance: loading or served */
    uint64_t shards_served;           /* loaded and served */
    uint64_t shards_forwarded;        /* requests relayed to another shard's owner */
    uint64_t shards_shed;             /* shards given up to stay within the fair share */
};

extern struct daemon *rbd;

/* Wall-clock time in epoch ms (due times are persisted, so wall clock). */
int64_t now_ms(void);

#endif
