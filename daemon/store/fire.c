/*
 * Firing in Redis: pending records turn awaiting and their retry events
 * are appended to the stream in one atomic step, so a retry is emitted
 * once even if the daemon dies right after. Two ways, chosen by the caller
 * (schedule/firing.c) by the batch's size:
 *
 *   - scripts/fire.lua, which also reads the new events for the consumer
 *     groups that are caught up (a retry reaches its subscriber one round
 *     trip after it fell due);
 *   - a burst in two steps, about half of the script's cost in Redis per
 *     retry (below).
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "proto/event.h"
#include "proto/record.h"
#include "redis/redis_link.h"
#include "store/scripts.h"

/* The burst's own state, between its two steps. */
struct fire_priv {
    const char **ids; /* copies of the caller's arrays (the ids themselves are the entries') */
    size_t *lens;
    int *slot;        /* the entry's XADD in the EXEC reply, or -1 */
    int nxadd;        /* XADDs in the transaction */
};

/* The fire script's answer is {fired, read_1, ..., read_g}; fired holds
 * two elements per id (scripts/fire.lua). */
static bool fire_reply_ok(const struct store_fire *b, const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)b->ngroups + 1)
        return false;
    const redisReply *fired = reply->element[0];
    if (fired->type != REDIS_REPLY_ARRAY || fired->elements != 2 * (size_t)b->n)
        return false;
    for (int j = 1; j <= b->ngroups; j++)
        if (reply->element[j]->type != REDIS_REPLY_ARRAY && reply->element[j]->type != REDIS_REPLY_ERROR)
            return false;
    return true;
}

/* With the lease on (store/lease.c): the burst between its WATCH of the
 * epoch and its EXEC, per connection. An EXEC ends every WATCH of the
 * connection, so only one burst at a time may be in that window on a
 * link; the others of the moment go through the fire script, which checks
 * the epoch itself. With the shards apart each shard has a link of its
 * own (index = shard), else the one link is slot 0. */
static struct store_fire *watching[64];

static struct store_fire **watch_slot(const struct store_fire *b)
{
    return &watching[store_spread() && b->shard > 0 && b->shard < 64 ? b->shard : 0];
}

static void finish(struct store_fire *b, bool ok)
{
    if (*watch_slot(b) == b)
        *watch_slot(b) = NULL;
    struct fire_priv *p = b->priv;
    if (p) {
        free(p->slot);
        free(p->ids);
        free(p->lens);
        free(p);
        b->priv = NULL;
    }
    b->done(b, ok);
}

static void fire_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct store_fire *b = arg;
    bool ok = fire_reply_ok(b, reply);
    if (reply && !ok && store_fenced_reply(reply))
        ; /* the lease moved: nothing fired */
    else if (reply && !ok)
        log_error("redis: fire script failed: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    for (int i = 0; ok && i < b->n; i++) {
        const redisReply *r = reply->element[0]->element[2 * i];
        b->outcome[i] = r->type == REDIS_REPLY_STRING ? STORE_FIRE_NOW
                        : r->type == REDIS_REPLY_INTEGER && r->integer == 0 ? STORE_FIRE_UNKNOWN
                                                                            : STORE_FIRE_BEFORE;
    }
    b->fired = ok ? reply->element[0] : NULL;
    for (int j = 0; j < b->ngroups; j++)
        b->reads[j] = ok ? reply->element[1 + j] : NULL;
    finish(b, ok);
}

/*
 * A large batch fires in two steps, which cost Redis about half of what
 * the script costs it per retry (an XADD called from Lua is dear): HMGET
 * the records; then one MULTI ... EXEC that appends each pending record's
 * retry event, turns the records awaiting (one HSET) and trims the stream,
 * atomically. Between the two steps nothing else writes these records:
 * the daemon is their only writer, and an entry that fires is busy, so its
 * own writes wait. Events are appended ahead of the records' change, as in
 * the script.
 */

/* Allocates the argument arrays of an argc-argument command on the
 * message hash, with the command and the key filled in. */
static void msgs_command(int shard, const char *cmd, size_t argc, const char ***argv, size_t **lens)
{
    const char *key = store_msgs_key(shard);
    *argv = xmalloc(argc * sizeof **argv);
    *lens = xmalloc(argc * sizeof **lens);
    (*argv)[0] = cmd;
    (*lens)[0] = strlen(cmd);
    (*argv)[1] = key;
    (*lens)[1] = strlen(key);
}

/* Appends the retry event of id's pending record rec to *buf (at *len,
 * capacity *cap) and returns 0, or -1 when rec is not a pending record.
 * The one place in the daemon that reads a record to build its event
 * (scripts/fire.lua does the same for small batches). */
static int retry_body(char **buf, size_t *len, size_t *cap, const char *id, size_t id_len, const char *rec,
                      size_t rec_len, int64_t now)
{
    struct record r;
    if (rec_len < 1 || rec[0] != 'P' || record_parse(rec, rec_len, &r) != 0)
        return -1;
    /* The compact form (proto/event.h): about half the JSON's bytes, and
     * so half of the stream's memory and of the AOF's bytes per retry. */
    size_t need = EVENT_RETRY_COMPACT_MAX + r.class_len + id_len + r.who_len;
    if (*len + need > *cap) {
        while (*len + need > *cap)
            *cap = *cap ? 2 * *cap : 65536;
        *buf = xrealloc(*buf, *cap);
    }
    size_t n = event_retry_compact(*buf + *len, (long long)now, (long long)r.due_ms, r.attempt, r.class_name,
                                   r.class_len, id, id_len, r.who, r.who_len);
    *len += (size_t)n;
    return 0;
}

static void queued_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
}

/* The burst's events as one batch entry: scripts/batch.lua, run with EVAL
 * inside the burst's MULTI. */
extern const char script_batch[];

static void exec_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct store_fire *b = arg;
    struct fire_priv *p = b->priv;
    /* EXEC answers each command of the transaction: the batch's script
     * (its one XADD), HSET, XTRIM. */
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3;
    if (reply && reply->type == REDIS_REPLY_NIL && *watch_slot(b) == b)
        store_fenced_now(); /* the WATCHed epoch moved: the transaction did not run */
    else if (reply && !ok)
        log_error("redis: fire transaction failed: %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    for (int i = 0; ok && i < b->n; i++) {
        if (p->slot[i] < 0)
            continue;
        const redisReply *r = reply->element[0];
        if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_INTEGER) {
            /* The record turned awaiting all the same (a transaction does
             * not roll back): say so, the retry is not re-sent. */
            log_error("redis: appending a retry event failed: %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
            b->outcome[i] = STORE_FIRE_BEFORE;
        }
    }
    finish(b, ok);
}

/* The retry events of the records read (reply, one per id), one after the
 * other in the returned buffer: id i's at boff[i], bl[i] bytes, when
 * p->slot[i] >= 0. Sets every outcome. */
static char *burst_bodies(struct store_fire *b, const redisReply *reply, size_t *boff, size_t *bl)
{
    struct fire_priv *p = b->priv;
    char *bodies = NULL;
    size_t blen = 0, bcap = 0;
    p->slot = xmalloc((size_t)b->n * sizeof *p->slot);
    p->nxadd = 0;
    for (int i = 0; i < b->n; i++) {
        const redisReply *r = reply->element[i];
        p->slot[i] = -1;
        if (r->type != REDIS_REPLY_STRING) {
            b->outcome[i] = STORE_FIRE_UNKNOWN;
            continue;
        }
        size_t at = blen;
        if (retry_body(&bodies, &blen, &bcap, p->ids[i], p->lens[i], r->str, r->len, b->now) != 0) {
            if (r->len > 0 && r->str[0] == 'P')
                log_warn("firing: the record of %.*s is malformed; not fired", (int)p->lens[i], p->ids[i]);
            b->outcome[i] = STORE_FIRE_BEFORE;
            continue;
        }
        b->outcome[i] = STORE_FIRE_NOW;
        p->slot[i] = p->nxadd++;
        boff[i] = at;
        bl[i] = blen - at;
    }
    return bodies;
}

/* The value of the batch entry of the events of b (built by burst_bodies),
 * in their order; *len its length. */
static char *batch_value(const struct store_fire *b, const char *bodies, const size_t *boff, const size_t *bl,
                         size_t *len)
{
    const struct fire_priv *p = b->priv;
    size_t cap = 24, n = 0;
    for (int i = 0; i < b->n; i++)
        if (p->slot[i] >= 0)
            cap += 24 + bl[i];
    char *v = xmalloc(cap);
    n = event_batch_head(v, p->nxadd);
    for (int i = 0; i < b->n; i++) {
        if (p->slot[i] < 0)
            continue;
        n += event_batch_item(v + n, bl[i]);
        memcpy(v + n, bodies + boff[i], bl[i]);
        n += bl[i];
    }
    *len = n;
    return v;
}

/* The transaction: MULTI, the batch entry of the events (scripts/batch.lua), one
 * HSET of the records turned awaiting, XTRIM, EXEC. Returns 0, or -1 when
 * the link refused a command (it refuses only when down, and then the first, MULTI, already:
 * a transaction cut short never runs). */
static int burst_send(struct store_fire *b, redisReply *reply, const char *bodies, const size_t *boff,
                      const size_t *bl)
{
    struct fire_priv *p = b->priv;
    /* The record's new state is the old record with its first byte
     * changed: the reply's own text serves (the command is formatted
     * before this callback returns). */
    size_t hargc = 2 + 2 * (size_t)p->nxadd;
    const char **hargv;
    size_t *hlens;
    msgs_command(b->shard, "HSET", hargc, &hargv, &hlens);
    char maxlen[32];
    snprintf(maxlen, sizeof maxlen, "%lld", rbd->cfg.stream_maxlen);
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *trim[] = {"XTRIM", store_spread_key(b->shard, SPREAD_EVENTS), "MAXLEN", "~", maxlen};
    size_t trim_lens[5];
    for (int k = 0; k < 5; k++)
        trim_lens[k] = strlen(trim[k]);
    struct redis_link *link = store_link(b->shard);
    const char *events_key = store_spread_key(b->shard, SPREAD_EVENTS);
    int rc = redis_link_command(link, queued_reply_cb, NULL, 1, multi, NULL);
    if (rc == 0) {
        size_t vlen;
        char *value = batch_value(b, bodies, boff, bl, &vlen);
        char nev[24];
        snprintf(nev, sizeof nev, "%d", p->nxadd);
        const char *bargv[] = {"EVAL", script_batch, "1", events_key, nev, value};
        size_t blens[] = {4, strlen(script_batch), 1, strlen(events_key), strlen(nev), vlen};
        rc = redis_link_command(link, queued_reply_cb, NULL, 6, bargv, blens);
        free(value);
    }
    size_t h = 2;
    for (int i = 0; rc == 0 && i < b->n; i++) {
        if (p->slot[i] < 0)
            continue;
        redisReply *r = reply->element[i];
        r->str[0] = 'A';
        hargv[h] = p->ids[i];
        hlens[h++] = p->lens[i];
        hargv[h] = r->str;
        hlens[h++] = r->len;
    }
    if (rc == 0)
        rc = redis_link_command(link, queued_reply_cb, NULL, (int)hargc, hargv, hlens);
    if (rc == 0)
        rc = redis_link_command(link, queued_reply_cb, NULL, 5, trim, trim_lens);
    if (rc == 0)
        rc = redis_link_command(link, exec_reply_cb, b, 1, exec, NULL);
    free(hargv);
    free(hlens);
    return rc;
}

static void hmget_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct store_fire *b = arg;
    struct fire_priv *p = b->priv;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)b->n) {
        if (*watch_slot(b) == b) {
            const char *unwatch[] = {"UNWATCH"};
            redis_link_command(store_link(b->shard), queued_reply_cb, NULL, 1, unwatch, NULL);
        }
        if (reply && store_fenced_reply(reply))
            ; /* the lease moved: nothing read, nothing fired */
        else if (reply)
            log_error("redis: reading records to fire failed: %s",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        finish(b, false);
        return;
    }
    size_t *boff = xmalloc((size_t)b->n * sizeof *boff), *bl = xmalloc((size_t)b->n * sizeof *bl);
    char *bodies = burst_bodies(b, reply, boff, bl);
    int rc = p->nxadd ? burst_send(b, reply, bodies, boff, bl) : 0;
    free(bodies);
    free(boff);
    free(bl);
    if (rc != 0)
        finish(b, false);
    else if (p->nxadd == 0)
        finish(b, true); /* nothing was pending any more */
}

int store_fire_burst(struct store_fire *b, const char **ids, const size_t *lens)
{
    if (!store_ready() || !store_shard_ready(b->shard))
        return -1;
    if (store_fencing() && *watch_slot(b))
        return store_fire_script(b, ids, lens);
    struct fire_priv *p = xcalloc(1, sizeof *p);
    /* Kept for the second step: the callers' arrays do not last. */
    p->ids = xmalloc((size_t)b->n * sizeof *p->ids);
    p->lens = xmalloc((size_t)b->n * sizeof *p->lens);
    memcpy(p->ids, ids, (size_t)b->n * sizeof *ids);
    memcpy(p->lens, lens, (size_t)b->n * sizeof *lens);
    b->priv = p;
    size_t argc = 2 + (size_t)b->n;
    const char **argv;
    size_t *argl;
    msgs_command(b->shard, "HMGET", argc, &argv, &argl);
    memcpy(argv + 2, ids, (size_t)b->n * sizeof *ids);
    memcpy(argl + 2, lens, (size_t)b->n * sizeof *lens);
    int rc;
    if (store_fencing()) {
        /* WATCH the epoch, then read the records only if it is ours: the
         * EXEC that follows runs only if it has not moved since. */
        const char *watch[] = {"WATCH", store_fence_key(b->shard)};
        const char **fa;
        size_t *fl;
        int fn = store_fence_wrap(b->shard, (int)argc, argv, argl, &fa, &fl);
        rc = redis_link_command(store_link(b->shard), queued_reply_cb, NULL, 2, watch, NULL);
        if (rc == 0)
            rc = redis_link_command(store_link(b->shard), hmget_reply_cb, b, fn, fa, fl);
        if (rc == 0)
            *watch_slot(b) = b;
        free(fa);
        free(fl);
    } else {
        rc = redis_link_command(store_link(b->shard), hmget_reply_cb, b, (int)argc, argv, argl);
    }
    free(argv);
    free(argl);
    if (rc != 0) {
        free(p->ids);
        free(p->lens);
        free(p);
        b->priv = NULL;
    }
    return rc;
}

int store_fire_script(struct store_fire *b, const char **ids, const size_t *lens)
{
    if (!store_ready() || !store_shard_ready(b->shard))
        return -1;
    char now_s[32], maxlen[32], count[32], ngroups[32];
    snprintf(now_s, sizeof now_s, "%lld", (long long)b->now);
    snprintf(maxlen, sizeof maxlen, "%lld", rbd->cfg.stream_maxlen);
    snprintf(count, sizeof count, "%d", b->read_count);
    snprintf(ngroups, sizeof ngroups, "%d", b->ngroups);
    int head = 2 + 5 + b->ngroups;
    int argc = head + b->n;
    /* two more for the fence (store_fence_args) */
    const char **argv = xmalloc((size_t)(argc + 2) * sizeof *argv);
    size_t *argl = xmalloc((size_t)(argc + 2) * sizeof *argl);
    argv[0] = store_msgs_key(b->shard);
    argv[1] = store_spread_key(b->shard, SPREAD_EVENTS);
    argv[2] = now_s;
    argv[3] = maxlen;
    argv[4] = STORE_CONSUMER;
    argv[5] = count;
    argv[6] = ngroups;
    for (int j = 0; j < b->ngroups; j++)
        argv[7 + j] = b->groups[j];
    for (int i = 0; i < head; i++)
        argl[i] = strlen(argv[i]);
    memcpy(argv + head, ids, (size_t)b->n * sizeof *ids);
    memcpy(argl + head, lens, (size_t)b->n * sizeof *lens);
    int nkeys = 2;
    if (store_fencing())
        store_fence_args(b->shard, argv, argl, &nkeys, &argc);
    int rc = redis_link_script(store_link(b->shard), SCRIPT_FIRE, fire_reply_cb, b, nkeys, argc, argv, argl);
    free(argv);
    free(argl);
    return rc;
}
