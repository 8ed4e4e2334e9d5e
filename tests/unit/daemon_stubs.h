/* The stubs of tests/unit/daemon_stubs.c: what they recorded, and how a
 * test answers the store's writes and fires. */
#ifndef REBOUND_TESTS_DAEMON_STUBS_H
#define REBOUND_TESTS_DAEMON_STUBS_H

#include <stdbool.h>
#include <stdint.h>

#include "events/events.h"
#include "net/conn.h"
#include "store/store.h"
#include "net/peer.h"

#define STUBS_MAX 64

struct stub_write {
    char id[256];
    char mode;
    enum store_op op;
    int attempt;
    int64_t due_ms;
    int nevents;
    store_done_cb done; /* NULL once answered */
    void *arg;
};

struct stubs {
    bool ready; /* store_ready() */
    struct stub_write writes[STUBS_MAX];
    int nwrites;
    struct {
        struct store_fire *f;
        bool burst;
        int n;
    } fires[STUBS_MAX];
    int nfires;
    char *replies[STUBS_MAX]; /* lines sent to the connection, in order */
    int nreplies;
    int notified, fired_calls, unsent;
    const char **ids;
};

extern struct stubs stubs;

/* Forgets everything recorded; the store is ready again. */
void stubs_reset(void);
/* Answers write i as Redis would: ok, with apply.lua's result. */
void stubs_answer_write(int i, bool ok, long long result);
/* Answers fire i: every id with outcome (an enum store_fire_outcome). */
void stubs_answer_fire(int i, bool ok, unsigned char outcome);

/* The store's commands for acting on the queue (store/queue_ops.c): each
 * call is recorded, and the test answers it with stubs_answer_command. */
struct stub_command {
    const char *name; /* the store function */
    size_t n;         /* ids */
    char first[256];  /* the first id, or the domain */
    store_reply_cb cb; /* NULL once answered */
    void *arg;
};
struct stub_commands {
    struct stub_command c[STUBS_MAX];
    int n;
};
extern struct stub_commands stub_cmds;
/* Answers command i with reply (NULL: the link went down). */
void stubs_answer_command(int i, redisReply *reply);

/* store/lease.c: the lease's commands are recorded among stub_cmds (named
 * "store_lease_acquire", ...; first is the value sent); the epoch writes
 * carry, and the commands in flight the lifecycle sees. */
extern long long stub_fence_epoch;
extern size_t stub_inflight;
extern int stub_nshards; /* store_nshards(); > 1: members reads are recorded too */
/* The schedule's and learned timing's reads (msgs_len, msgs_scan,
 * learned_scan) recorded instead of refused. */
extern bool stub_record_loads;
extern int stub_events_link_ups;
/* net/peer.c: peer_forward calls, and what it returns (-1: not relayed) */
extern int stub_forwards;
extern int stub_forward_result; /* events_link_up calls */

#endif
