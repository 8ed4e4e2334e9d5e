/*
 * The daemon's shared state: one instance, owned by main.c. Every part of
 * daemon/ runs on the one libuv loop thread, so there is no locking.
 */
#ifndef REBOUND_DAEMON_DAEMON_H
#define REBOUND_DAEMON_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "proto/request.h"
#include "queue/policy.h"
#include "queue/sched.h"

struct redis_link;

enum script_id { SCRIPT_APPLY, SCRIPT_FIRE, SCRIPT__COUNT };

struct daemon {
    uv_loop_t *loop;
    struct config cfg;
    struct policy *policy;
    struct sched *sched;
    struct redis_link *link;
    struct proto_limits limits;
    uint64_t rng;

    char *key_msgs;   /* <prefix>msg: hash of message records */
    char *key_events; /* <prefix>events: the event stream (outbox) */

    bool loaded;      /* the schedule has been read back from Redis */
    bool stopping;
    int64_t started_ms;

    /* counters for stats */
    uint64_t events_emitted[EV__COUNT];
    uint64_t pending_by_class[POLICY_MAX_CLASSES];
    uint64_t npending, nawaiting;
    uint64_t reports, errors;
    int nconns;
};

extern struct daemon *rbd;

/* Wall-clock time in epoch ms (due times are persisted, so wall clock). */
int64_t now_ms(void);

/* Lua sources, generated from daemon/scripts/. */
extern const char script_apply[];
extern const char script_fire[];

#endif
