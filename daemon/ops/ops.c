/*
 * The request dispatcher: every request line is parsed into a job, checked
 * for authentication, and run by its row of the op table. Adding an op is
 * a handler in the file of its family (job.h lists them) and one row here.
 *
 * An op that answers after Redis (needs_store) keeps its job, and a
 * reference to its connection, until its handler calls op_finish; an op
 * that is about one message (per_message) first waits behind a write in
 * flight for the same id, parked on the entry in arrival order, and runs
 * when the entry settles (ops_run_waiters, the entries' hook).
 */
#include "ops/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/xmalloc.h"
#include "net/conn.h"
#include "net/peer.h"
#include "ops/job.h"
#include "proto/reply.h"
#include "proto/request.h"
#include "queue/shard.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/lease.h"
#include "store/store.h"

/* The op table: {handler, per_message, needs_store}, by proto's enum op
 * (proto/request.c has the names). */
static const struct op_handler handlers[OP__COUNT] = {
    [OP_BOUNCE] = {op_bounce, true, true},
    [OP_DELIVERED] = {op_drop, true, true},
    [OP_CANCEL] = {op_drop, true, true},
    [OP_GET] = {op_get, true, true},
    [OP_UNSUPPRESS] = {op_unsuppress, false, true},
    [OP_SUPPRESSED] = {op_suppressed, false, true},
    [OP_PING] = {op_ping, false, false},
    [OP_AUTH] = {op_auth, false, false},
    [OP_CLASSIFY] = {op_classify, false, false},
    [OP_STATS] = {op_stats, false, false},
    [OP_DOMAIN] = {op_domain, false, false},
    [OP_SUBSCRIBE] = {op_subscribe, false, false},
    [OP_ACK] = {op_ack, false, false},
    /* acting on the queue */
    [OP_LIST] = {op_list, false, true},
    [OP_RETRY_NOW] = {op_retry_now, true, true},
    [OP_HOLD] = {op_hold, false, true},
    [OP_RELEASE] = {op_release, false, true},
    [OP_HISTORY] = {op_history, false, true},
    [OP_CLUSTER] = {op_cluster, false, false},
    [OP_GROUPS] = {op_groups, false, false},
};

/* Finished jobs kept for reuse, at most JOBS_KEPT: a job is where every
 * request line is parsed into, so the one just finished, still in the
 * cache, takes the next line. */
#define JOBS_KEPT 1024
static struct job *free_jobs;
static int nfree_jobs;

static struct job *job_new(void)
{
    struct job *op = free_jobs;
    if (!op)
        return xcalloc(1, sizeof *op);
    free_jobs = op->next;
    nfree_jobs--;
    memset(op, 0, sizeof *op);
    return op;
}

static void job_release(struct job *op)
{
    request_free(&op->req);
    free(op->line);
    op->line = NULL;
    if (nfree_jobs >= JOBS_KEPT) {
        free(op);
        return;
    }
    op->next = free_jobs;
    free_jobs = op;
    nfree_jobs++;
}

void op_reply(const struct job *op, json_t *obj)
{
    size_t n;
    char *line = reply_ok(obj, op->req.req, &n);
    conn_reply(op->conn, op->slot, line, n);
}

void op_error(const struct job *op, const char *code, const char *msg)
{
    conn_reply_error(op->conn, op->slot, op->req.req, code, msg);
}

void op_finish(struct job *op)
{
    domains_unref(op->domain);
    conn_unref(op->conn);
    job_release(op);
}

void op_unavailable(struct job *op)
{
    char msg[200];
    snprintf(msg, sizeof msg, "Redis is not available (%s); nothing was written, retry later",
             !rbd->loaded ? "still loading the schedule" : rbd->link ? store_last_error() : "shutting down");
    op_error(op, ERR_UNAVAILABLE, msg);
}

bool op_store_usable(struct job *op)
{
    /* With shards, dispatch checked the op's shard already. */
    if ((rbd->loaded || rbd->cfg.shards >= 2) && !rbd->stopping && store_ready())
        return true;
    op_unavailable(op);
    op_finish(op);
    return false;
}

void op_settle(struct entry *e, bool drop)
{
    if (drop)
        entry_become(e, ENTRY_NEW, NULL); /* forgotten, unless a waiter brings it back */
    entry_settle(e);
}

/* Runs a needs_store job, or parks it behind the write in flight for its id. */
static void op_run(struct job *op)
{
    const struct op_handler *h = &handlers[op->req.op];
    op->e = NULL;
    /* A request about an address, not a message, has nothing to wait for
     * (writes for one address are applied in request order by the batch). */
    if (h->per_message && op->req.id) {
        struct entry *e = sched_find(rbd->sched, op->req.id, op->req.id_len);
        if (e && (e->flags & ENTRY_BUSY)) {
            /* Park behind the write in flight, in arrival order. */
            struct job **tail = (struct job **)&e->waiters;
            while (*tail)
                tail = &(*tail)->next;
            op->next = NULL;
            *tail = op;
            return;
        }
        op->e = e;
    }
    h->run(op);
}

void ops_run_waiters(struct entry *e)
{
    while (entry_has_waiters(e) && !(e->flags & ENTRY_BUSY)) {
        struct job *op = e->waiters;
        e->waiters = op->next;
        op->next = NULL;
        op_run(op);
    }
}

/* ---- the lease (several reboundd on one Redis: schedule/lease.c) ----
 * An instance that does not serve the schedule answers only what does not
 * need it; everything else gets `unavailable` with the owner's address
 * ("owner", "" while unknown), where the client resends. */
static bool op_needs_schedule(enum op o)
{
    return o != OP_PING && o != OP_AUTH && o != OP_CLASSIFY && o != OP_STATS && o != OP_CLUSTER;
}

static void op_not_owner_of(struct conn *c, struct slot *s, json_t *req, const char *msg, const char *owner_addr)
{
    size_t n;
    char *line = reply_error(req, ERR_UNAVAILABLE, msg, &n);
    /* reply_error's line is one object ending "}\n": the owner joins it. */
    json_t *owner = json_string(owner_addr);
    char *ow = owner ? json_dumps(owner, JSON_ENCODE_ANY) : NULL;
    json_decref(owner);
    if (ow && n >= 2 && line[n - 2] == '}') {
        size_t olen = strlen(ow);
        char *out = xmalloc(n + olen + 16);
        memcpy(out, line, n - 2);
        size_t k = n - 2;
        memcpy(out + k, ",\"owner\":", 9);
        k += 9;
        memcpy(out + k, ow, olen);
        k += olen;
        memcpy(out + k, "}\n", 2);
        k += 2;
        free(line);
        line = out;
        n = k;
    }
    free(ow);
    counters_error(ERR_UNAVAILABLE);
    conn_reply(c, s, line, n);
}

static void op_not_owner(struct conn *c, struct slot *s, json_t *req)
{
    char msg[200];
    snprintf(msg, sizeof msg, "this instance does not serve the schedule (%s); nothing was written, resend to the owner",
             lease_role_name());
    op_not_owner_of(c, s, req, msg, lease_owner_addr());
}

/* A standby relays a request to the owner (lease_forward) and its client
 * gets the owner's reply; not an op bound to this connection (subscribe,
 * ack, groups), nor one that came from a peer, nor while the owner is
 * unknown or this instance is between roles. Returns true when relayed. */
static bool op_forward(struct conn *c, struct slot *s, const struct request *r, const char *line, size_t len)
{
    const char *owner = lease_owner_addr();
    if (!rbd->cfg.lease_forward || c->from_peer || rbd->lease_role != LEASE_STANDBY || !owner[0] ||
        strcmp(owner, rbd->advertise) == 0 || r->op == OP_SUBSCRIBE || r->op == OP_ACK || r->op == OP_GROUPS)
        return false;
    return peer_forward(owner, c, s, line, len, r->req) == 0;
}

/* ---- shards (cfg.shards >= 2): routing by the report's recipient ----
 * An op about one message runs where its shard is served: here, or
 * relayed to the shard's owner over a peer connection (as a standby
 * relays to the one owner), or answered `unavailable` with the owner's
 * address when it cannot be relayed. Its shard is its recipient's; for an
 * id alone, the shard of the id's entry here, else of the shard whose
 * hash holds its record in Redis (one script over every shard's hash:
 * on one Redis that is the cheapest fan-out). Every other op (lists,
 * history, suppressed, subscriptions, stats) is this instance's. */

static bool op_by_message(const struct request *r)
{
    switch (r->op) {
    case OP_BOUNCE:
    case OP_DELIVERED:
    case OP_CANCEL:
    case OP_GET:
    case OP_UNSUPPRESS:
        return r->id || r->rcpt;
    case OP_RETRY_NOW:
        return r->id != NULL;
    default:
        return false;
    }
}

/* Runs op (parsed, authenticated) on shard k here, or relays it. */
static void op_route(struct job *op, int k, const char *line, size_t len)
{
    struct conn *c = op->conn;
    struct slot *s = op->slot;
    if (k < 0) {
        /* Known to no shard: any shard served here answers as a single
         * daemon would (an unknown message); else the first known owner. */
        for (int j = 0; j < lease_shards() && k < 0; j++)
            if (lease_shard_serving(j))
                k = j;
        for (int j = 0; j < lease_shards() && k < 0; j++)
            if (lease_shard_owner_addr(j)[0])
                k = j;
        if (k < 0)
            k = 0;
    }
    if (lease_shard_serving(k) && !rbd->stopping) {
        op->shard = k;
        op_run(op); /* the handler finishes the job */
        return;
    }
    const char *owner = lease_shard_owner_addr(k);
    if (rbd->cfg.lease_forward && !c->from_peer && owner[0] && strcmp(owner, rbd->advertise) != 0 &&
        !rbd->stopping && peer_forward(owner, c, s, line, len, op->req.req) == 0) {
        rbd->shards_forwarded++;
    } else {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "this instance does not serve shard %d of this message; nothing was written, resend to the owner", k);
        op_not_owner_of(c, s, op->req.req, msg, owner);
    }
    conn_unref(c);
    job_release(op);
}

static void locate_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    op_route(op, (int)reply->integer, op->line, op->line_len);
}

/* Routes an op about one message; the job holds a reference to c. */
static void op_shard_dispatch(struct job *op, const char *line, size_t len)
{
    const struct request *r = &op->req;
    if (r->rcpt) {
        op_route(op, shard_of_rcpt(r->rcpt, r->rcpt_len, lease_shards()), line, len);
        return;
    }
    struct entry *e = sched_find(rbd->sched, r->id, r->id_len);
    if (e) {
        op_route(op, entry_shard(e), line, len);
        return;
    }
    op->line = xmalloc(len + 1);
    memcpy(op->line, line, len);
    op->line_len = len;
    if (store_msgs_locate(r->id, r->id_len, locate_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}

void ops_dispatch(struct conn *c, const char *line, size_t len)
{
    struct slot *s = conn_slot(c);
    struct job *op = job_new();
    struct request *r = &op->req;
    struct proto_error err;
    if (request_parse_buf(line, len, &rbd->limits, r, &err, op->copies, sizeof op->copies) != 0) {
        conn_reply_error(c, s, r->req, err.code, err.message);
        job_release(op);
        return;
    }
    if (!c->authed && r->op != OP_AUTH && r->op != OP_PING) {
        conn_reply_error(c, s, r->req, ERR_AUTH, "this server requires {\"op\":\"auth\",\"token\":...} first");
        job_release(op);
        return;
    }
    const struct op_handler *h = (unsigned)r->op < OP__COUNT ? &handlers[r->op] : NULL;
    if (!h || !h->run) {
        conn_reply_error(c, s, r->req, ERR_UNKNOWN_OP, "unknown op");
        job_release(op);
        return;
    }
    if (r->op == OP_PING && json_is_string(r->req) && strcmp(json_string_value(r->req), PEER_HELLO_REQ) == 0)
        c->from_peer = true;
    if (rbd->cfg.shards >= 2 && rbd->cfg.lease_ttl_ms > 0 && !c->from_peer && ops_fans_out(r)) {
        ops_fan_out(c, s, r, line, len);
        job_release(op);
        return;
    }
    if (rbd->cfg.shards >= 2 && h->needs_store && op_by_message(r)) {
        op->conn = c;
        op->slot = s;
        conn_ref(c);
        op_shard_dispatch(op, line, len);
        return;
    }
    if (!lease_serving() && op_needs_schedule(r->op)) {
        if (!op_forward(c, s, r, line, len))
            op_not_owner(c, s, r->req);
        job_release(op);
        return;
    }
    op->conn = c;
    op->slot = s;
    if (h->needs_store) {
        conn_ref(c);
        op_run(op); /* the handler finishes the job */
        return;
    }
    h->run(op);
    job_release(op);
}
