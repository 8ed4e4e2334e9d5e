#define _GNU_SOURCE /* memmem */
#include "daemon/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "daemon/domains.h"
#include "daemon/log.h"
#include "daemon/redis_link.h"
#include "daemon/strmap.h"
#include "daemon/xmalloc.h"

/* Argument strings live in one arena per batch, addressed by offset so the
 * arena can grow. */
struct batch {
    char *arena;
    size_t arena_len, arena_cap;
    size_t *off, *len;
    size_t nargs, cap_args;
    struct {
        store_done_cb cb;
        void *arg;
        size_t id_arg; /* index of the change's id among the arguments */
    } *waiters;
    size_t nwaiters, cap_waiters;
};

static struct batch *current;
static struct strmap in_doubt;

/* A batch closes at this many arguments so one script call stays short
 * and Redis keeps serving others. */
#define BATCH_MAX_ARGS 8192
/* The keys apply.lua is given, ahead of its arguments. */
#define APPLY_NKEYS 5

static struct batch *batch_new(void)
{
    struct batch *b = xcalloc(1, sizeof *b);
    return b;
}

static void batch_free(struct batch *b)
{
    if (!b)
        return;
    free(b->arena);
    free(b->off);
    free(b->len);
    free(b->waiters);
    free(b);
}

static void batch_arg(struct batch *b, const char *s, size_t n)
{
    if (b->nargs == b->cap_args) {
        b->cap_args = b->cap_args ? b->cap_args * 2 : 64;
        b->off = xrealloc(b->off, b->cap_args * sizeof *b->off);
        b->len = xrealloc(b->len, b->cap_args * sizeof *b->len);
    }
    if (b->arena_len + n > b->arena_cap) {
        while (b->arena_len + n > b->arena_cap)
            b->arena_cap = b->arena_cap ? b->arena_cap * 2 : 4096;
        b->arena = xrealloc(b->arena, b->arena_cap);
    }
    if (n)
        memcpy(b->arena + b->arena_len, s, n);
    b->off[b->nargs] = b->arena_len;
    b->len[b->nargs] = n;
    b->arena_len += n;
    b->nargs++;
}

static void batch_arg_str(struct batch *b, const char *s)
{
    batch_arg(b, s ? s : "", s ? strlen(s) : 0);
}

static char *make_key(const char *name)
{
    size_t a = strlen(rbd->cfg.prefix), b = strlen(name);
    char *k = xmalloc(a + b + 1);
    memcpy(k, rbd->cfg.prefix, a);
    memcpy(k + a, name, b + 1);
    return k;
}

void store_init(void)
{
    current = NULL;
    strmap_init(&in_doubt);
    rbd->key_rcpts = make_key("rcpt");
    rbd->key_supp = make_key("suppressed");
    rbd->key_domains = make_key("domains");
}

void store_mark_in_doubt(const char *id, size_t id_len)
{
    char buf[256];
    if (id_len >= sizeof buf)
        return;
    memcpy(buf, id, id_len);
    buf[id_len] = '\0';
    strmap_put(&in_doubt, buf, NULL);
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
    strmap_free(&in_doubt);
    /* The domain table outlives every write that names a domain. */
    domains_free();
    /* Anything still queued never reached Redis: say so to its waiters. */
    struct batch *b = current;
    current = NULL;
    if (b) {
        for (size_t i = 0; i < b->nwaiters; i++)
            b->waiters[i].cb(b->waiters[i].arg, false, 0);
        batch_free(b);
    }
    free(rbd->key_rcpts);
    free(rbd->key_supp);
    free(rbd->key_domains);
    rbd->key_rcpts = rbd->key_supp = rbd->key_domains = NULL;
}

bool store_ready(void)
{
    return rbd->link && redis_link_ready(rbd->link);
}

int store_queue(const struct store_change *ch, store_done_cb done, void *arg)
{
    if (!store_ready())
        return -1;
    if (!current) {
        const struct policy *p = rbd->policy;
        char num[32];
        current = batch_new();
        batch_arg_str(current, rbd->key_msgs);
        batch_arg_str(current, rbd->key_events);
        batch_arg_str(current, rbd->key_rcpts);
        batch_arg_str(current, rbd->key_supp);
        batch_arg_str(current, rbd->key_domains);
        snprintf(num, sizeof num, "%lld", rbd->cfg.stream_maxlen);
        batch_arg_str(current, num);
        /* The streak rules of the policy in force when the batch opened. */
        snprintf(num, sizeof num, "%d", p->streak_campaigns);
        batch_arg_str(current, num);
        snprintf(num, sizeof num, "%lld", (long long)p->chronic_span_ms);
        batch_arg_str(current, num);
        snprintf(num, sizeof num, "%d", p->chronic_attempts);
        batch_arg_str(current, num);
    }
    struct batch *b = current;
    char mode[2] = {ch->mode, '\0'};
    char op[2] = {(char)ch->op, '\0'};
    char nev[16];
    snprintf(nev, sizeof nev, "%d", ch->nevents);
    size_t id_arg = b->nargs;
    batch_arg(b, ch->id, ch->id_len);
    batch_arg_str(b, mode);
    char header[128] = "", hist[160] = "";
    if (ch->mode == 'S') {
        snprintf(header, sizeof header, "P%lld,%d,%s,%lld", (long long)ch->rec.due_ms, ch->rec.attempt,
                 ch->rec.class_name, (long long)ch->rec.first_ms);
        snprintf(hist, sizeof hist, "[%lld,%d,\"%s\",\"%s\"]", (long long)ch->rec.at_ms, ch->rec.code,
                 ch->rec.enhanced, ch->rec.class_name);
    }
    batch_arg_str(b, header);
    batch_arg_str(b, ch->fragment);
    batch_arg_str(b, hist);
    batch_arg_str(b, op);
    batch_arg_str(b, ch->key);
    batch_arg_str(b, ch->arg);
    batch_arg_str(b, nev);
    for (int i = 0; i < ch->nevents; i++)
        batch_arg_str(b, ch->events[i]);
    if (b->nwaiters == b->cap_waiters) {
        b->cap_waiters = b->cap_waiters ? b->cap_waiters * 2 : 32;
        b->waiters = xrealloc(b->waiters, b->cap_waiters * sizeof *b->waiters);
    }
    b->waiters[b->nwaiters].cb = done;
    b->waiters[b->nwaiters].arg = arg;
    b->waiters[b->nwaiters].id_arg = id_arg;
    b->nwaiters++;
    if (b->nargs >= BATCH_MAX_ARGS)
        store_flush();
    return 0;
}

static void batch_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct batch *b = privdata;
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == b->nwaiters;
    if (reply && !ok)
        log_error("redis: apply script failed: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    if (!reply) {
        /* The connection dropped: Redis may have applied the batch. */
        for (size_t i = 0; i < b->nwaiters; i++) {
            size_t a = b->waiters[i].id_arg;
            if (b->len[a] > 0)
                store_mark_in_doubt(b->arena + b->off[a], b->len[a]);
        }
    }
    for (size_t i = 0; i < b->nwaiters; i++) {
        long long result = 0;
        if (ok && reply->element[i]->type == REDIS_REPLY_INTEGER)
            result = reply->element[i]->integer;
        b->waiters[i].cb(b->waiters[i].arg, ok, result);
    }
    batch_free(b);
}

void store_flush(void)
{
    struct batch *b = current;
    if (!b)
        return;
    current = NULL;
    if (!store_ready()) {
        for (size_t i = 0; i < b->nwaiters; i++)
            b->waiters[i].cb(b->waiters[i].arg, false, 0);
        batch_free(b);
        return;
    }
    const char **argv = xmalloc(b->nargs * sizeof *argv);
    for (size_t i = 0; i < b->nargs; i++)
        argv[i] = b->arena + b->off[i];
    int rc = redis_link_script(rbd->link, SCRIPT_APPLY, batch_reply_cb, b, APPLY_NKEYS, (int)b->nargs, argv, b->len);
    free(argv);
    if (rc != 0) {
        for (size_t i = 0; i < b->nwaiters; i++)
            b->waiters[i].cb(b->waiters[i].arg, false, 0);
        batch_free(b);
    }
}

struct reply_ctx {
    store_reply_cb cb;
    void *arg;
};

static void generic_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct reply_ctx *c = privdata;
    c->cb(c->arg, reply);
    free(c);
}

int store_command(int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    if (!store_ready())
        return -1;
    struct reply_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_command(rbd->link, generic_reply_cb, c, argc, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int store_fire(const char *const *ids, const size_t *id_lens, int n, int64_t now, store_reply_cb cb, void *arg)
{
    if (!store_ready())
        return -1;
    int argc = 4 + n;
    const char **argv = xmalloc((size_t)argc * sizeof *argv);
    size_t *lens = xmalloc((size_t)argc * sizeof *lens);
    char now_s[32], maxlen[32];
    snprintf(now_s, sizeof now_s, "%lld", (long long)now);
    snprintf(maxlen, sizeof maxlen, "%lld", rbd->cfg.stream_maxlen);
    argv[0] = rbd->key_msgs;
    argv[1] = rbd->key_events;
    argv[2] = now_s;
    argv[3] = maxlen;
    for (int i = 0; i < 4; i++)
        lens[i] = strlen(argv[i]);
    for (int i = 0; i < n; i++) {
        argv[4 + i] = ids[i];
        lens[4 + i] = id_lens[i];
    }
    struct reply_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    int rc = redis_link_script(rbd->link, SCRIPT_FIRE, generic_reply_cb, c, 2, argc, argv, lens);
    if (rc != 0)
        free(c);
    free(argv);
    free(lens);
    return rc;
}

int store_get(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HGET", rbd->key_msgs, id};
    size_t lens[] = {4, strlen(rbd->key_msgs), id_len};
    return store_command(3, argv, lens, cb, arg);
}

int store_get_with_rcpt(const char *id, size_t id_len, const char *rcpt, store_reply_cb cb, void *arg)
{
    if (!store_ready())
        return -1;
    const char *argv[] = {rbd->key_msgs, rbd->key_rcpts, rbd->key_supp, id ? id : "", rcpt ? rcpt : ""};
    size_t lens[] = {strlen(argv[0]), strlen(argv[1]), strlen(argv[2]), id ? id_len : 0, rcpt ? strlen(rcpt) : 0};
    struct reply_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_script(rbd->link, SCRIPT_GET, generic_reply_cb, c, 3, 5, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

void store_bounce_arg(char *buf, char action, bool counts, int64_t now, int code, int attempt,
                      const char *class_name, const char *enhanced, const char *campaign, const char *id,
                      size_t id_len)
{
    /* Campaigns hold at most 200 bytes and ids 200 (proto limits), class
     * names 31, so this always fits; the campaign goes last because it may
     * hold commas. Only a bounce that counts needs the campaign: the
     * common retry in another class goes without. */
    if (!counts && action == 'R')
        snprintf(buf, STORE_BOUNCE_ARG_MAX, "R-,%lld,%d,%d,%s,%s,", (long long)now, code, attempt, class_name,
                 enhanced ? enhanced : "");
    else if (campaign)
        snprintf(buf, STORE_BOUNCE_ARG_MAX, "%c%c,%lld,%d,%d,%s,%s,c%s", action, counts ? 'c' : '-',
                 (long long)now, code, attempt, class_name, enhanced ? enhanced : "", campaign);
    else
        snprintf(buf, STORE_BOUNCE_ARG_MAX, "%c%c,%lld,%d,%d,%s,%s,m%.*s", action, counts ? 'c' : '-',
                 (long long)now, code, attempt, class_name, enhanced ? enhanced : "", (int)id_len, id);
}

static int parse_i64(const char **p, const char *end, char stop, int64_t *out)
{
    int64_t v = 0;
    const char *s = *p;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*s - '0');
        s++;
    }
    if (s >= end || *s != stop)
        return -1;
    *p = s + 1;
    *out = v;
    return 0;
}

int record_parse(const char *rec, size_t len, struct record *out)
{
    const char *p = rec, *end = rec + len;
    if (len < 2 || (rec[0] != 'P' && rec[0] != 'A'))
        return -1;
    out->state = rec[0];
    p++;
    int64_t attempt;
    if (parse_i64(&p, end, ',', &out->due_ms) || parse_i64(&p, end, ',', &attempt) || attempt > 65535)
        return -1;
    out->attempt = (int)attempt;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (!comma || comma == p)
        return -1;
    out->class_name = p;
    out->class_len = (size_t)(comma - p);
    p = comma + 1;
    if (parse_i64(&p, end, '\n', &out->first_ms))
        return -1;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return -1;
    out->fragment = p;
    out->fragment_len = (size_t)(nl - p);
    /* The fragment is compact JSON that jansson wrote: the member name
     * appears only as itself (inside a string a quote is escaped), and an
     * address holds no unescaped quote, so its value ends at the next one. */
    static const char key[] = "\"rcpt\":\"";
    const char *r = memmem(p, out->fragment_len, key, sizeof key - 1);
    const char *rend = r ? memchr(r + sizeof key - 1, '"', (size_t)(nl - r - (sizeof key - 1))) : NULL;
    out->rcpt = rend ? r + sizeof key - 1 : "";
    out->rcpt_len = rend ? (size_t)(rend - out->rcpt) : 0;
    out->history = nl + 1;
    out->history_len = (size_t)(end - nl - 1);
    return 0;
}

int rcpt_record_parse(const char *rec, size_t len, struct rcpt_record *out)
{
    const char *p = rec, *end = rec + len;
    if (parse_i64(&p, end, ',', &out->streak) || parse_i64(&p, end, ',', &out->first_ms) ||
        parse_i64(&p, end, ',', &out->last_ms) || parse_i64(&p, end, ',', &out->soft))
        return -1;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (!comma)
        return -1;
    out->classes = p;
    out->classes_len = (size_t)(comma - p);
    out->campaign = comma + 1;
    out->campaign_len = (size_t)(end - comma - 1);
    return 0;
}
