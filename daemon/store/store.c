#define _GNU_SOURCE /* memmem */
#include "store/scripts.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ascii.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/strmap.h"
#include "base/xmalloc.h"
#include "proto/event.h"
#include "proto/jbuf.h"
#include "proto/record.h"
#include "queue/shard.h"
#include "redis/redis_link.h"

/* A list of argument strings, addressed by offset into the batch's arena
 * so the arena can grow. */
struct args {
    size_t *off, *len;
    size_t n, cap;
};

/* A queued change's caller, and where its change sits in the batch. */
struct waiter {
    store_done_cb cb;
    void *arg;
    int shard;  /* with shards: whose records it changes, fenced by its epoch */
    bool fresh; /* in the fresh section */
    size_t at;  /* its index in its section (fresh: the pair) */
    size_t id;  /* index of its id among its section's arguments */
};

/*
 * A batch has two sections of arguments: fresh records (id, record pairs,
 * and the lower-cased recipients on one line each) that the script writes
 * with one HSET, and general changes, one by one. Fresh records go first,
 * so a change may join the fresh section only while no general change is
 * queued: the script then applies the changes in the order they came.
 */
struct batch {
    char *arena;
    size_t arena_len, arena_cap;
    struct args head, fresh, general;
    char *rcpts; /* the fresh section's recipients, '\n' after each */
    size_t rcpts_len, rcpts_cap;
    struct waiter *waiters;
    size_t nwaiters, cap_waiters, nfresh;
    /* replica acknowledgement (redis_min_replicas): the script's reply is
     * kept until the WAIT sent right behind it answers */
    bool wait_sent, wait_missing, applied_seen;
    redisReply *applied;
    int shard; /* whose records it writes and whose epoch fences it */
    uint64_t shards; /* with shards: the shards of its changes, a bit each */
};

/* The batch being filled, one per shard (one-shard layout: [0] alone);
 * [SPREAD_GLOBAL] with the shards on several primaries: the changes about
 * no message, on the cluster-wide keys. */
#define SPREAD_GLOBAL SHARD_MAX
static struct batch *current[SHARD_MAX + 1];
static char *key_shard_msgs[SHARD_MAX]; /* [0] is rbd->key_msgs with one shard */
static char *key_global_msgs; /* the cluster-wide batch's first key (apply.lua's; never written) */
/* The shards apart: the batch each shard's changes go in (spread_leaders). */
static int spread_leader[SHARD_MAX];
static bool spread_leaders_made;
static struct strmap in_doubt;

/* A batch closes at this many arguments so one script call stays short
 * and Redis keeps serving others. */
#define BATCH_MAX_ARGS 8192
/* The keys apply.lua is given, ahead of its arguments. */
#define APPLY_NKEYS 8 /* msg, events, rcpt, suppressed, domains, history, history_at, learned */

static struct batch *batch_new(void)
{
    struct batch *b = xcalloc(1, sizeof *b);
    return b;
}

static void args_free(struct args *a)
{
    free(a->off);
    free(a->len);
}

static void batch_free(struct batch *b)
{
    if (!b)
        return;
    free(b->arena);
    args_free(&b->head);
    args_free(&b->fresh);
    args_free(&b->general);
    free(b->rcpts);
    free(b->waiters);
    free(b);
}

static void grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    while (need > *cap)
        *cap = *cap ? *cap * 2 : 4096;
    *buf = xrealloc(*buf, *cap);
}

static void batch_arg(struct batch *b, struct args *a, const char *s, size_t n)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->off = xrealloc(a->off, a->cap * sizeof *a->off);
        a->len = xrealloc(a->len, a->cap * sizeof *a->len);
    }
    grow(&b->arena, &b->arena_cap, b->arena_len + n);
    if (n)
        memcpy(b->arena + b->arena_len, s, n);
    a->off[a->n] = b->arena_len;
    a->len[a->n] = n;
    b->arena_len += n;
    a->n++;
}

static void batch_arg_str(struct batch *b, struct args *a, const char *s)
{
    batch_arg(b, a, s ? s : "", s ? strlen(s) : 0);
}

static size_t batch_nargs(const struct batch *b)
{
    return b->head.n + b->fresh.n + (b->nfresh ? 1 : 0) + b->general.n;
}

static void batch_fail(struct batch *b)
{
    for (size_t i = 0; i < b->nwaiters; i++)
        b->waiters[i].cb(b->waiters[i].arg, false, 0);
    batch_free(b);
}

static char *make_key(const char *name)
{
    return store_global_key(name);
}

int store_nshards(void)
{
    return rbd->cfg.shards >= 2 ? rbd->cfg.shards : 1;
}

const char *store_msgs_key(int shard)
{
    return shard > 0 && shard < store_nshards() ? key_shard_msgs[shard] : rbd->key_msgs;
}

void store_init(void)
{
    memset(current, 0, sizeof current);
    strmap_init(&in_doubt);
    rbd->key_msgs = store_nshards() > 1 ? store_shard_key(0, "msg") : make_key("msg");
    key_shard_msgs[0] = rbd->key_msgs;
    for (int k = 1; k < store_nshards(); k++)
        key_shard_msgs[k] = store_shard_key(k, "msg");
    rbd->key_events = make_key("events");
    rbd->key_rcpts = make_key("rcpt");
    rbd->key_supp = make_key("suppressed");
    rbd->key_domains = make_key("domains");
    rbd->key_held = make_key("held");
    rbd->key_history = make_key("history");
    rbd->key_history_at = make_key("history_at");
    rbd->key_learned = make_key("learned");
    /* several reboundd on one Redis: the lease and its fencing */
    if (rbd->cfg.lease_ttl_ms > 0)
        store_lease_init();
    store_spread_init();
    if (store_spread())
        key_global_msgs = store_global_key("msg");
}

void store_mark_in_doubt(const char *id, size_t id_len)
{
    char buf[256];
    if (id_len >= sizeof buf)
        return;
    memcpy(buf, id, id_len);
    buf[id_len] = '\0';
    strmap_put(&in_doubt, buf, &in_doubt); /* any value but NULL */
}

struct take_ctx {
    void (*fn)(const char *id, void *arg);
    void *arg;
};

static void take_one(struct strmap *m, const char *key, void *value, void *arg)
{
    struct take_ctx *t = arg;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", key);
    strmap_del(m, key);
    t->fn(buf, t->arg);
}

void store_take_in_doubt(void (*fn)(const char *id, void *arg), void *arg)
{
    /* Detach first: fn may put ids back. */
    struct strmap taken = in_doubt;
    strmap_init(&in_doubt);
    struct take_ctx t = {fn, arg};
    strmap_foreach(&taken, take_one, &t);
    strmap_free(&taken);
}

void store_free(void)
{
    store_lease_free();
    store_spread_free();
    free(key_global_msgs);
    key_global_msgs = NULL;
    strmap_free(&in_doubt);
    /* Anything still queued never reached Redis: say so to its waiters. */
    for (int k = 0; k <= SHARD_MAX; k++) {
        struct batch *b = current[k];
        current[k] = NULL;
        if (b)
            batch_fail(b);
        if (k == SHARD_MAX)
            break;
        if (k > 0)
            free(key_shard_msgs[k]);
        key_shard_msgs[k] = NULL;
    }
    free(rbd->key_msgs);
    free(rbd->key_events);
    free(rbd->key_rcpts);
    free(rbd->key_supp);
    free(rbd->key_domains);
    free(rbd->key_learned);
    rbd->key_learned = NULL;
    rbd->key_msgs = rbd->key_events = rbd->key_rcpts = rbd->key_supp = rbd->key_domains = NULL;
    free(rbd->key_held);
    rbd->key_held = NULL;
    free(rbd->key_history);
    free(rbd->key_history_at);
    rbd->key_history = rbd->key_history_at = NULL;
}

bool store_ready(void)
{
    if (store_spread())
        return rbd->link && store_spread_any_ready();
    return rbd->link && redis_link_ready(rbd->link);
}

const char *store_last_error(void)
{
    return rbd->link ? redis_link_last_error(rbd->link) : "";
}

redisReply *store_reply_retain(redisReply *reply)
{
    return redis_link_reply_retain(reply);
}

void store_reply_release(redisReply *reply)
{
    redis_link_reply_release(reply);
}

static bool in_doubt_has(const char *id, size_t id_len)
{
    char buf[256];
    if (in_doubt.count == 0 || id_len >= sizeof buf)
        return false;
    memcpy(buf, id, id_len);
    buf[id_len] = '\0';
    return strmap_get(&in_doubt, buf) != NULL;
}

/* A message's first retry in a class that does not count toward the
 * streak, raising no event: all the script has to do, unless the
 * recipient is suppressed, is write the record. A record may exist only
 * for an id whose last write is in doubt. */
static bool is_fresh(const struct batch *b, const struct store_change *ch)
{
    return b->general.n == 0 && ch->mode == 'S' && ch->op == STORE_OP_BOUNCE && ch->nevents == 0 &&
           ch->rec.attempt == 1 && ch->arg && ch->arg[0] == 'R' && ch->arg[1] == '-' && ch->key && ch->key[0] &&
           !in_doubt_has(ch->id, ch->id_len);
}

static void batch_open(int shard)
{
    const struct policy *p = rbd->policy;
    struct batch *b = current[shard] = batch_new();
    b->shard = shard;
    char num[32];
    /* Apart, each shard's batch names only keys of its slot (the
     * cluster-wide batch only the cluster-wide keys): store_spread_key. */
    int ks = store_spread() ? shard : -1;
    batch_arg_str(b, &b->head, shard == SPREAD_GLOBAL ? key_global_msgs : store_msgs_key(shard));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_EVENTS));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_RCPT));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_SUPP));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_DOMAINS));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_HISTORY));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_HISTORY_AT));
    batch_arg_str(b, &b->head, store_spread_key(ks, SPREAD_LEARNED));
    snprintf(num, sizeof num, "%lld", rbd->cfg.stream_maxlen);
    batch_arg_str(b, &b->head, num);
    /* The streak rules of the policy in force when the batch opened. */
    snprintf(num, sizeof num, "%d", p->streak_campaigns);
    batch_arg_str(b, &b->head, num);
    snprintf(num, sizeof num, "%lld", (long long)p->chronic_span_ms);
    batch_arg_str(b, &b->head, num);
    snprintf(num, sizeof num, "%d", p->chronic_attempts);
    batch_arg_str(b, &b->head, num);
}

static void queue_fresh(struct batch *b, const struct store_change *ch, const char *who, size_t who_len)
{
    char rec[RECORD_HEADER_MAX + 1 + 256 + 1 + RECORD_ITEM_MAX];
    size_t n = record_header(rec, 'P', ch->rec.due_ms, ch->rec.attempt, ch->rec.class_name, ch->rec.first_ms);
    rec[n++] = '\n';
    if (who_len > 256) /* record_who gives the bare form only for a plain recipient: at most 254 bytes */
        who_len = 256;
    memcpy(rec + n, who, who_len);
    n += who_len;
    rec[n++] = '\n';
    n += record_item(rec + n, ch->rec.at_ms, ch->rec.first_ms, ch->rec.code, ch->rec.enhanced, ch->rec.class_name);
    batch_arg(b, &b->fresh, ch->id, ch->id_len);
    batch_arg(b, &b->fresh, rec, n);
    size_t rlen = strlen(ch->key);
    grow(&b->rcpts, &b->rcpts_cap, b->rcpts_len + rlen + 1);
    ascii_lower(b->rcpts + b->rcpts_len, ch->key, rlen);
    b->rcpts_len += rlen;
    b->rcpts[b->rcpts_len++] = '\n';
}

/* Mode 'H' (the record goes, its story is kept): the header argument is
 * "<outcome>,<reason>,<at>,<cutoff>|<record header>", the record header
 * for a message with no record yet (a first bounce that ends it), and the
 * item the bounce that ended it, if one did. Returns the header's length. */
static size_t history_header(const struct store_change *ch, char *buf, size_t cap, char *item, size_t *in)
{
    int64_t cutoff = ch->rec.at_ms - rbd->cfg.history_retention_ms;
    int n = snprintf(buf, cap, "%s,%lld,%lld|", ch->story, (long long)ch->rec.at_ms, (long long)cutoff);
    if (n < 0 || (size_t)n >= cap - RECORD_HEADER_MAX)
        n = 0;
    size_t len = (size_t)n;
    if (ch->rec.class_name) {
        len += record_header(buf + len, 'A', ch->rec.at_ms, ch->rec.attempt, ch->rec.class_name, ch->rec.first_ms);
        *in = record_item(item, ch->rec.at_ms, ch->rec.first_ms, ch->rec.code, ch->rec.enhanced, ch->rec.class_name);
    }
    return len;
}

/* An event body goes to the stream in its compact form (proto/event.h):
 * about half the bytes of Redis memory and AOF per event. A body of
 * another shape goes as it is. */
static void queue_event(struct batch *b, const char *body)
{
    size_t n = body ? strlen(body) : 0;
    char small[512];
    char *out = n <= sizeof small ? small : xmalloc(n);
    size_t cn = n ? event_compact(body, n, out) : 0;
    if (cn > 0)
        batch_arg(b, &b->general, out, cn);
    else
        batch_arg_str(b, &b->general, body);
    if (out != small)
        free(out);
}

static void queue_general(struct batch *b, const struct store_change *ch, const char *who, size_t who_len)
{
    char mode[2] = {ch->mode, '\0'};
    char op[2] = {(char)ch->op, '\0'};
    char nev[16], header[RECORD_HEADER_MAX] = "", item[RECORD_ITEM_MAX] = "";
    size_t hn = 0, in = 0;
    if (ch->mode == 'S') {
        hn = record_header(header, 'P', ch->rec.due_ms, ch->rec.attempt, ch->rec.class_name, ch->rec.first_ms);
        in = record_item(item, ch->rec.at_ms, ch->rec.first_ms, ch->rec.code, ch->rec.enhanced, ch->rec.class_name);
    }
    char story[sizeof header + 160];
    if (ch->mode == 'H')
        hn = history_header(ch, story, sizeof story, item, &in);
    nev[jbuf_fmt_int(nev, ch->nevents)] = '\0';
    batch_arg(b, &b->general, ch->id, ch->id_len);
    batch_arg_str(b, &b->general, mode);
    batch_arg(b, &b->general, ch->mode == 'H' ? story : header, hn);
    batch_arg(b, &b->general, who, who_len);
    batch_arg(b, &b->general, item, in);
    batch_arg_str(b, &b->general, op);
    batch_arg_str(b, &b->general, ch->key);
    batch_arg_str(b, &b->general, ch->arg);
    batch_arg_str(b, &b->general, nev);
    for (int i = 0; i < ch->nevents; i++)
        queue_event(b, ch->events[i]);
}

static void batch_flush(int shard);

static int spread_queue(const struct store_change *ch, store_done_cb done, void *arg);

int store_queue(const struct store_change *ch, store_done_cb done, void *arg)
{
    if (!store_ready())
        return -1;
    if (store_spread())
        return spread_queue(ch, done, arg);
    int shard = ch->shard;
    /* A change about no message (a throttle, learned timing, unsuppress)
     * goes under any shard this instance holds: on one Redis every key is
     * in reach, and the fence only needs an epoch that is ours. */
    if (shard < 0 || (ch->id_len == 0 && store_nshards() > 1))
        shard = store_shard_any();
    else if (shard >= store_nshards())
        shard = 0;
    /* With shards one batch a turn carries every shard's changes, each
     * fenced by its own shard's epoch (apply.lua's selector): one script
     * call per turn, as with one shard. */
    int slot = store_nshards() > 1 && !store_spread() ? 0 : shard;
    if (!current[slot])
        batch_open(slot);
    struct batch *b = current[slot];
    b->shards |= (uint64_t)1 << shard;
    const char *who = "";
    size_t who_len = 0;
    if (ch->fragment)
        record_who(ch->id, ch->id_len, ch->op == STORE_OP_BOUNCE ? ch->key : NULL, ch->fragment, &who, &who_len);
    if (b->nwaiters == b->cap_waiters) {
        b->cap_waiters = b->cap_waiters ? b->cap_waiters * 2 : 32;
        b->waiters = xrealloc(b->waiters, b->cap_waiters * sizeof *b->waiters);
    }
    struct waiter *w = &b->waiters[b->nwaiters++];
    w->cb = done;
    w->arg = arg;
    w->shard = shard;
    w->fresh = is_fresh(b, ch) && who_len > 0 && who[0] != '"';
    if (w->fresh) {
        w->at = b->nfresh++;
        w->id = b->fresh.n;
        queue_fresh(b, ch, who, who_len);
    } else {
        w->at = b->nwaiters - 1 - b->nfresh;
        w->id = b->general.n;
        queue_general(b, ch, who, who_len);
    }
    if (batch_nargs(b) >= BATCH_MAX_ARGS)
        batch_flush(slot);
    return 0;
}

static void batch_answer(struct batch *b, redisReply *reply);
static void batch_send_wait(struct batch *b);

static void batch_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    (void)link;
    struct batch *b = privdata;
    if (b->wait_sent) {
        /* Hold the answers until the replicas confirmed (wait_reply_cb). */
        b->applied_seen = true;
        b->applied = reply ? redis_link_reply_retain(reply) : NULL;
        return;
    }
    if (b->wait_missing) {
        /* The WAIT could not be sent: nobody confirmed the copies. */
        rbd->wait_short++;
        batch_answer(b, NULL);
        return;
    }
    batch_answer(b, reply);
}

/* Answers every waiter of b from the script's reply, or as not confirmed
 * (reply NULL: the ids are then in doubt). Frees b. */
static void batch_answer(struct batch *b, redisReply *reply)
{
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == b->nwaiters;
    if (reply && !ok && store_fenced_reply(reply))
        ; /* the lease moved: the lifecycle says so (schedule/lease.c) */
    else if (reply && !ok)
        log_error("redis: apply script failed: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    if (!reply) {
        /* The connection dropped: Redis may have applied the batch. */
        for (size_t i = 0; i < b->nwaiters; i++) {
            const struct args *a = b->waiters[i].fresh ? &b->fresh : &b->general;
            size_t k = b->waiters[i].id;
            if (a->len[k] > 0)
                store_mark_in_doubt(b->arena + a->off[k], a->len[k]);
        }
    }
    for (size_t i = 0; i < b->nwaiters; i++) {
        long long result = 0;
        size_t r = b->waiters[i].fresh ? b->waiters[i].at : b->nfresh + b->waiters[i].at;
        if (ok && reply->element[r]->type == REDIS_REPLY_INTEGER)
            result = reply->element[r]->integer;
        b->waiters[i].cb(b->waiters[i].arg, ok, result);
    }
    batch_free(b);
}

void store_flush(void)
{
    int n = store_nshards();
    for (int k = 0; k < n; k++)
        if (current[k])
            batch_flush(k);
    if (current[SPREAD_GLOBAL])
        batch_flush(SPREAD_GLOBAL);
    if (store_spread())
        spread_leaders_made = false; /* worked out again at the next change */
}

/* A batch of several shards' changes (apply.lua's selector): after the
 * 8 keys, the epoch key of each shard present, then its message hash; at
 * the end of the arguments, their epochs, the selector (one byte per fresh
 * record, then per general change: 64 + the rank of its shard among those
 * present) and "M<m>". */
static int spread_send(struct batch *b, const char **argv, size_t *lens, size_t argc, const int *order, int m,
                       const char *sel, size_t nsel);

static int batch_send_sharded(struct batch *b, const char **argv, size_t *lens, size_t argc)
{
    int rank[SHARD_MAX], order[SHARD_MAX], m = 0;
    for (int k = 0; k < SHARD_MAX; k++)
        if (b->shards & ((uint64_t)1 << k)) {
            order[m] = k;
            rank[k] = ++m;
        }
    /* The fresh pairs (and their recipients' lines) regrouped by shard, so
     * that the script writes each shard's with one HSET of a run of its
     * arguments; their order does not matter (distinct ids, all as decided
     * unless suppressed), and each waiter learns its new place. */
    if (b->nfresh > 1) {
        size_t nf = b->nfresh, count[SHARD_MAX + 1] = {0};
        size_t *old_pos = xmalloc(nf * sizeof *old_pos);
        const char **lines = xmalloc(nf * sizeof *lines);
        size_t *line_len = xmalloc(nf * sizeof *line_len);
        const char *p = b->rcpts;
        for (size_t i = 0; i < nf; i++) {
            const char *nl = memchr(p, '\n', (size_t)(b->rcpts + b->rcpts_len - p));
            lines[i] = p;
            line_len[i] = nl ? (size_t)(nl - p) + 1 : 0;
            p = nl ? nl + 1 : p;
        }
        for (size_t i = 0; i < b->nwaiters; i++)
            if (b->waiters[i].fresh)
                count[rank[b->waiters[i].shard]]++;
        size_t start[SHARD_MAX + 1], at = 0;
        for (int j = 1; j <= m; j++) {
            start[j] = at;
            at += count[j];
        }
        /* argument index of pair q: 1 + 2q into the head-less arrays below */
        size_t *off = xmalloc(2 * nf * sizeof *off), *len = xmalloc(2 * nf * sizeof *len);
        char *rc = xmalloc(b->rcpts_len + 1);
        size_t *rc_at = xmalloc(nf * sizeof *rc_at), *rc_n = xmalloc(nf * sizeof *rc_n);
        for (size_t i = 0; i < b->nwaiters; i++) {
            struct waiter *w = &b->waiters[i];
            if (!w->fresh)
                continue;
            size_t q = start[rank[w->shard]]++, o = w->at;
            off[2 * q] = b->fresh.off[2 * o];
            len[2 * q] = b->fresh.len[2 * o];
            off[2 * q + 1] = b->fresh.off[2 * o + 1];
            len[2 * q + 1] = b->fresh.len[2 * o + 1];
            rc_at[q] = (size_t)(lines[o] - b->rcpts);
            rc_n[q] = line_len[o];
            old_pos[q] = o;
            w->at = q;
            w->id = 2 * q;
        }
        size_t rl = 0;
        for (size_t q = 0; q < nf; q++) {
            memcpy(rc + rl, b->rcpts + rc_at[q], rc_n[q]);
            rl += rc_n[q];
        }
        memcpy(b->fresh.off, off, 2 * nf * sizeof *off);
        memcpy(b->fresh.len, len, 2 * nf * sizeof *len);
        memcpy(b->rcpts, rc, rl);
        /* the caller's argv points at the arena by pair: redo that part */
        for (size_t q = 0; q < 2 * nf; q++) {
            argv[b->head.n + 1 + q] = b->arena + b->fresh.off[q];
            lens[b->head.n + 1 + q] = b->fresh.len[q];
        }
        free(off);
        free(len);
        free(rc);
        free(rc_at);
        free(rc_n);
        free(old_pos);
        free(lines);
        free(line_len);
    }
    size_t nsel = b->nwaiters;
    char *sel = xmalloc(nsel + 1);
    for (size_t i = 0; i < b->nwaiters; i++) {
        const struct waiter *w = &b->waiters[i];
        size_t pos = w->fresh ? w->at : b->nfresh + w->at;
        if (pos < nsel)
            sel[pos] = (char)(64 + rank[w->shard]);
    }
    if (store_spread()) {
        int rc = spread_send(b, argv, lens, argc, order, m, sel, nsel);
        free(sel);
        return rc;
    }
    char mark[16];
    snprintf(mark, sizeof mark, "M%d", m);
    size_t total = argc + 3 * (size_t)m + 2;
    const char **a = xmalloc(total * sizeof *a);
    size_t *l = xmalloc(total * sizeof *l);
    size_t k = 0;
    for (int i = 0; i < APPLY_NKEYS; i++, k++) {
        a[k] = argv[i];
        l[k] = lens[i];
    }
    for (int j = 0; j < m; j++, k++) {
        a[k] = store_fence_key(order[j]);
        l[k] = strlen(a[k]);
    }
    for (int j = 0; j < m; j++, k++) {
        a[k] = store_msgs_key(order[j]);
        l[k] = strlen(a[k]);
    }
    for (size_t i = APPLY_NKEYS; i < argc; i++, k++) {
        a[k] = argv[i];
        l[k] = lens[i];
    }
    for (int j = 0; j < m; j++, k++) {
        a[k] = store_fence_epoch(order[j]);
        l[k] = strlen(a[k]);
    }
    a[k] = sel;
    l[k++] = nsel;
    a[k] = mark;
    l[k++] = strlen(mark);
    int rc = redis_link_script(rbd->link, SCRIPT_APPLY, batch_reply_cb, b, APPLY_NKEYS + 2 * m, (int)k, a, l);
    free(a);
    free(l);
    free(sel);
    return rc;
}

static void spread_head(int shard, const char **argv, size_t *lens);

static void batch_flush(int shard)
{
    struct batch *b = current[shard];
    if (!b)
        return;
    current[shard] = NULL;
    if (!store_ready() || (store_spread() && !store_shard_ready(shard))) {
        batch_fail(b);
        return;
    }
    /* ARGV: the head, the number of fresh records, their id and record
     * pairs and recipients (when there are any), then general changes. */
    char nfresh[32];
    snprintf(nfresh, sizeof nfresh, "%zu", b->nfresh);
    size_t argc = batch_nargs(b) + 1, k = 0;
    /* two more for the fence (store_fence_args) */
    const char **argv = xmalloc((argc + 2) * sizeof *argv);
    size_t *lens = xmalloc((argc + 2) * sizeof *lens);
    const struct args *parts[] = {&b->head, &b->fresh, &b->general};
    for (int p = 0; p < 3; p++) {
        if (p == 1) {
            argv[k] = nfresh;
            lens[k++] = strlen(nfresh);
        }
        for (size_t i = 0; i < parts[p]->n; i++) {
            argv[k] = b->arena + parts[p]->off[i];
            lens[k++] = parts[p]->len[i];
        }
        if (p == 1 && b->nfresh) {
            argv[k] = b->rcpts;
            lens[k++] = b->rcpts_len;
        }
    }
    int nkeys = APPLY_NKEYS, nargs = (int)argc;
    int rc;
    if (store_spread() && b->shard != SPREAD_GLOBAL && shard_count(b->shards) == 1) {
        /* one shard of its primary this turn: its own keys, as with one */
        for (int k1 = 0; k1 < SHARD_MAX; k1++)
            if (b->shards & ((uint64_t)1 << k1))
                b->shard = k1;
        spread_head(b->shard, argv, lens);
    }
    if (store_nshards() > 1 && (!store_spread() || (b->shard != SPREAD_GLOBAL && shard_count(b->shards) > 1))) {
        rc = batch_send_sharded(b, argv, lens, argc);
    } else {
        /* Apart, one call per shard fenced by its own epoch (in its slot);
         * the cluster-wide batch is fenced by none: a throttle or learned
         * timing written by a stale owner is merged like any other. */
        if (store_fencing() && b->shard != SPREAD_GLOBAL)
            store_fence_args(b->shard, argv, lens, &nkeys, &nargs);
        rc = redis_link_script(store_link(b->shard == SPREAD_GLOBAL ? -1 : b->shard), SCRIPT_APPLY, batch_reply_cb,
                               b, nkeys, nargs, argv, lens);
    }
    free(argv);
    free(lens);
    if (rc != 0)
        batch_fail(b);
    else
        batch_send_wait(b);
}

/* ---- replica acknowledgement ------------------------------------------ */

/*
 * With redis_min_replicas > 0, every write batch is followed on the same
 * connection by WAIT <n> <redis_replica_timeout>, one per batch, and the
 * batch's replies wait for it. Redis answers in order, so the WAIT's reply
 * comes after the script's and counts the replicas that have everything
 * up to and including the batch. Fewer than n (a replica down, lagging, or
 * the connection lost) answers the whole batch as not confirmed: the
 * writes may be in Redis, so their ids go in doubt, and the clients get
 * `unavailable`, which is safe to resend: a resent report is written (and
 * waited for) again and decides the same way against the same record. The
 * ids in doubt are re-read from Redis by the doubt hook once a later WAIT
 * is met (or at the next connect, as after any write in doubt).
 */

static void (*doubt_hook)(void);
static bool doubt_pending; /* ids went in doubt by a short WAIT since the last one met */

void store_set_doubt_hook(void (*fn)(void))
{
    doubt_hook = fn;
}

static void wait_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    (void)link;
    struct batch *b = privdata;
    redisReply *applied = b->applied;
    long long want = rbd->cfg.redis_min_replicas;
    bool confirmed = b->applied_seen && applied && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer >= want;
    rbd->wait_batches++;
    static bool short_before;
    if (confirmed && short_before)
        log_info("redis: WAIT: the replicas confirm writes again");
    /* Replication is one stream: a WAIT that is met covers every write
     * before it, the short batches' too. Only now may their records be
     * read back into memory (a duplicate report is then answered from
     * memory, without another write to confirm). */
    if (confirmed && doubt_pending) {
        doubt_pending = false;
        if (doubt_hook)
            doubt_hook();
    }
    if (!confirmed && applied) {
        rbd->wait_short++;
        /* One warning when writes stop being confirmed, not one a batch. */
        int level = short_before ? LOG_DEBUG : LOG_WARN;
        short_before = true;
        if (!log_enabled(level))
            ;
        else if (reply && reply->type == REDIS_REPLY_INTEGER)
            log_msg(level, "redis: WAIT: %lld of %lld replicas confirmed a batch of %zu writes: answered unavailable",
                     reply->integer, want, b->nwaiters);
        else
            log_msg(level, "redis: WAIT failed: %s", reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
    } else if (confirmed) {
        short_before = false;
    }
    b->wait_sent = false;
    batch_answer(b, confirmed ? applied : NULL);
    if (applied)
        redis_link_reply_release(applied);
    if (!confirmed)
        doubt_pending = true;
}

/* Sends the WAIT behind the batch just sent, when replicas must confirm. */
static void batch_send_wait(struct batch *b)
{
    if (rbd->cfg.redis_min_replicas <= 0)
        return;
    char n[16], t[32];
    snprintf(n, sizeof n, "%d", rbd->cfg.redis_min_replicas);
    snprintf(t, sizeof t, "%lld", (long long)rbd->cfg.redis_replica_timeout_ms);
    const char *argv[3] = {"WAIT", n, t};
    if (redis_link_command(store_link(b->shard == SPREAD_GLOBAL ? -1 : b->shard), wait_reply_cb, b, 3, argv, NULL) == 0)
        b->wait_sent = true;
    else
        b->wait_missing = true;
}

/* Runs for every report, so plain appends rather than snprintf. */
static char *put(char *p, const char *s, size_t max)
{
    while (*s && max--)
        *p++ = *s++;
    return p;
}

void store_bounce_arg(char *buf, char action, bool counts, int64_t now, int code, int attempt,
                      const char *class_name, const char *enhanced, const char *campaign, const char *id,
                      size_t id_len)
{
    /* Campaigns hold at most 200 bytes and ids 200 (proto limits), class
     * names 31, enhanced codes 15, so this fits in STORE_BOUNCE_ARG_MAX;
     * the caps only keep a broken caller inside it. The campaign goes last
     * because it may hold commas. Only a bounce that counts needs the
     * campaign: the common retry in another class goes without. */
    char *p = buf;
    bool plain_retry = !counts && action == 'R';
    *p++ = action;
    *p++ = counts ? 'c' : '-';
    *p++ = ',';
    p += jbuf_fmt_int(p, now);
    *p++ = ',';
    p += jbuf_fmt_int(p, code);
    *p++ = ',';
    p += jbuf_fmt_int(p, attempt);
    *p++ = ',';
    p = put(p, class_name, 31);
    *p++ = ',';
    p = put(p, enhanced ? enhanced : "", 15);
    *p++ = ',';
    if (!plain_retry && campaign) {
        *p++ = 'c';
        p = put(p, campaign, 255);
    } else if (!plain_retry) {
        *p++ = 'm';
        size_t n = id_len < 255 ? id_len : 255;
        memcpy(p, id, n);
        p += n;
    }
    *p = '\0';
}

bool store_batch_empty(void)
{
    for (int k = 0; k <= SHARD_MAX; k++)
        if (current[k])
            return false;
    return true;
}

/* The shards apart (store_spread): a change goes to its own shard's batch,
 * a recipient's (unsuppress) to the recipient's shard, and one about no
 * message (a throttle, learned timing) to the cluster-wide batch, its
 * events to a shard this instance holds, so that they reach the streams
 * subscribers read. */
static void spread_event_done(void *arg, bool ok, long long result)
{
    (void)arg;
    (void)ok;
    (void)result;
}

/* Which batch shard k's changes go in: the first shard (in order) whose
 * link is ready to the same primary, so that one call a turn carries the
 * changes of every shard of a primary (apply.lua's "P" form). Worked out
 * again after every flush: a failover moves a primary's shards together,
 * and a batch sent to a node that no longer serves a shard is refused
 * there (unavailable, resent). */
static void spread_leaders(void)
{
    int n = store_nshards();
    const char *where[SHARD_MAX];
    for (int k = 0; k < n; k++) {
        struct redis_link *l = store_link(k);
        where[k] = l && redis_link_ready(l) ? redis_link_where(l) : NULL;
        spread_leader[k] = k;
        for (int j = 0; where[k] && j < k; j++)
            if (where[j] && strcmp(where[j], where[k]) == 0) {
                spread_leader[k] = spread_leader[j];
                break;
            }
    }
    spread_leaders_made = true;
}

/* The first 8 keys of a call (apply.lua's KEYS) made shard's own. */
static void spread_head(int shard, const char **argv, size_t *lens)
{
    static const enum spread_name names[] = {SPREAD_EVENTS, SPREAD_RCPT,    SPREAD_SUPP,       SPREAD_DOMAINS,
                                             SPREAD_HISTORY, SPREAD_HISTORY_AT, SPREAD_LEARNED};
    argv[0] = store_msgs_key(shard);
    lens[0] = strlen(argv[0]);
    for (int i = 0; i < 7; i++) {
        argv[1 + i] = store_spread_key(shard, names[i]);
        lens[1 + i] = strlen(argv[1 + i]);
    }
}

/* The changes of m shards of one primary in one call, routed by the first
 * shard's slot (its keys and epoch key declared), the others' keys among
 * the arguments (apply.lua's "P" form). */
static int spread_send(struct batch *b, const char **argv, size_t *lens, size_t argc, const int *order, int m,
                       const char *sel, size_t nsel)
{
    int first = order[0];
    b->shard = first;
    spread_head(first, argv, lens);
    static const enum spread_name names[] = {SPREAD_EVENTS, SPREAD_RCPT, SPREAD_SUPP, SPREAD_HISTORY,
                                             SPREAD_HISTORY_AT};
    char mark[16];
    snprintf(mark, sizeof mark, "P%d", m);
    size_t total = argc + 1 + 8 * (size_t)m + 2;
    const char **a = xmalloc(total * sizeof *a);
    size_t *l = xmalloc(total * sizeof *l);
    size_t k = 0;
    for (int i = 0; i < APPLY_NKEYS; i++, k++) {
        a[k] = argv[i];
        l[k] = lens[i];
    }
    a[k] = store_fence_key(first);
    l[k] = strlen(a[k]);
    k++;
    for (size_t i = APPLY_NKEYS; i < argc; i++, k++) {
        a[k] = argv[i];
        l[k] = lens[i];
    }
    for (int j = 0; j < m; j++) {
        a[k++] = store_fence_key(order[j]);
        a[k++] = store_fence_epoch(order[j]);
        a[k++] = store_msgs_key(order[j]);
        for (int i = 0; i < 5; i++)
            a[k++] = store_spread_key(order[j], names[i]);
        for (size_t q = k - 8; q < k; q++)
            l[q] = strlen(a[q]);
    }
    a[k] = sel;
    l[k++] = nsel;
    a[k] = mark;
    l[k++] = strlen(mark);
    int rc = redis_link_script(store_link(first), SCRIPT_APPLY, batch_reply_cb, b, APPLY_NKEYS + 1, (int)k, a, l);
    free(a);
    free(l);
    return rc;
}

static int spread_queue(const struct store_change *ch, store_done_cb done, void *arg)
{
    struct store_change c = *ch;
    bool global = ch->op == STORE_OP_THROTTLE || ch->op == STORE_OP_UNTHROTTLE || ch->op == STORE_OP_LEARN;
    if (global && ch->nevents > 0) {
        struct store_change ev = {.shard = store_shard_any(), .id = "", .id_len = 0, .mode = '-',
                                  .events = ch->events, .nevents = ch->nevents};
        spread_queue(&ev, spread_event_done, NULL);
        c.events = NULL;
        c.nevents = 0;
    }
    int shard;
    if (global)
        shard = SPREAD_GLOBAL;
    else if (ch->id_len == 0 && ch->op == STORE_OP_UNSUPPRESS && ch->key)
        shard = shard_of_rcpt(ch->key, strlen(ch->key), store_nshards());
    else if (ch->shard < 0 || ch->id_len == 0)
        shard = store_shard_any();
    else
        shard = ch->shard < store_nshards() ? ch->shard : 0;
    if (!(shard == SPREAD_GLOBAL ? store_shard_ready(-1) : store_shard_ready(shard)))
        return -1;
    if (!spread_leaders_made)
        spread_leaders();
    int slot = shard == SPREAD_GLOBAL ? SPREAD_GLOBAL : spread_leader[shard];
    if (!current[slot])
        batch_open(slot);
    struct batch *b = current[slot];
    if (shard != SPREAD_GLOBAL)
        b->shards |= (uint64_t)1 << shard;
    const char *who = "";
    size_t who_len = 0;
    if (c.fragment)
        record_who(c.id, c.id_len, c.op == STORE_OP_BOUNCE ? c.key : NULL, c.fragment, &who, &who_len);
    if (b->nwaiters == b->cap_waiters) {
        b->cap_waiters = b->cap_waiters ? b->cap_waiters * 2 : 32;
        b->waiters = xrealloc(b->waiters, b->cap_waiters * sizeof *b->waiters);
    }
    struct waiter *w = &b->waiters[b->nwaiters++];
    w->cb = done;
    w->arg = arg;
    w->shard = shard;
    w->fresh = is_fresh(b, &c) && who_len > 0 && who[0] != '"';
    if (w->fresh) {
        w->at = b->nfresh++;
        w->id = b->fresh.n;
        queue_fresh(b, &c, who, who_len);
    } else {
        w->at = b->nwaiters - 1 - b->nfresh;
        w->id = b->general.n;
        queue_general(b, &c, who, who_len);
    }
    if (batch_nargs(b) >= BATCH_MAX_ARGS)
        batch_flush(slot);
    return 0;
}
