/*
 * Shards on several Redis Cluster primaries (shards >= 2 with
 * redis_cluster): the keys of each shard in its own slot, one link per
 * shard's slot, and the reads that must visit every shard (docs/
 * architecture.md, "Shards on a Redis Cluster").
 *
 * A script or a transaction may only touch keys of one slot, so every key
 * a write for a message touches lives under its shard's hash tag: the
 * records, the event stream, the recipients' streaks and suppressions, the
 * history and the consumer groups' marks. What is about no message (domain
 * throttles, learned timing, held domains, members, meta, the groups' last
 * use) lives under one cluster-wide tag, "{<prefix>}", and is read and
 * written by commands of its own.
 *
 * Reads that span shards (where an id is, a finished message's story, the
 * suppressed list, a consumer group's new events) send one command per
 * shard, each on its shard's link, and answer once all have answered; a
 * shard whose link is down answers as empty (or, where the answer would be
 * wrong without it, fails the whole read).
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "queue/shard.h"
#include "redis/redis_link.h"
#include "store/scripts.h"

/* Per shard, in its slot: the names below, index by enum spread_name. */
static const char *const spread_names[SPREAD__COUNT] = {
    [SPREAD_EVENTS] = "events",         [SPREAD_RCPT] = "rcpt",
    [SPREAD_SUPP] = "suppressed",       [SPREAD_DOMAINS] = "domains",
    [SPREAD_HISTORY] = "history",       [SPREAD_HISTORY_AT] = "history_at",
    [SPREAD_LEARNED] = "learned",       [SPREAD_MARKS] = "groupmarks",
};
static char *spread_keys[SHARD_MAX][SPREAD__COUNT];
static struct redis_link *shard_links[SHARD_MAX];

bool store_spread(void)
{
    return rbd->cfg.shards >= 2 && rbd->cfg.redis_cluster[0] != '\0';
}

void store_spread_init(void)
{
    if (!store_spread())
        return;
    for (int k = 0; k < store_nshards(); k++)
        for (int i = 0; i < SPREAD__COUNT; i++)
            spread_keys[k][i] = store_shard_key(k, spread_names[i]);
}

void store_spread_free(void)
{
    for (int k = 0; k < SHARD_MAX; k++)
        for (int i = 0; i < SPREAD__COUNT; i++) {
            free(spread_keys[k][i]);
            spread_keys[k][i] = NULL;
        }
}

const char *store_spread_key(int shard, enum spread_name name)
{
    if (store_spread() && shard >= 0 && shard < store_nshards() && spread_keys[shard][name])
        return spread_keys[shard][name];
    /* one Redis, or the cluster-wide keys: the one key of each name */
    switch (name) {
    case SPREAD_EVENTS:
        return rbd->key_events;
    case SPREAD_RCPT:
        return rbd->key_rcpts;
    case SPREAD_SUPP:
        return rbd->key_supp;
    case SPREAD_DOMAINS:
        return rbd->key_domains;
    case SPREAD_HISTORY:
        return rbd->key_history;
    case SPREAD_HISTORY_AT:
        return rbd->key_history_at;
    case SPREAD_LEARNED:
        return rbd->key_learned;
    default:
        return "";
    }
}

char *store_global_key(const char *name)
{
    size_t a = strlen(rbd->cfg.prefix), b = strlen(name);
    bool braces = store_spread();
    char *k = xmalloc(a + b + 3);
    size_t n = 0;
    if (braces)
        k[n++] = '{';
    memcpy(k + n, rbd->cfg.prefix, a);
    n += a;
    if (braces)
        k[n++] = '}';
    memcpy(k + n, name, b + 1);
    return k;
}

void store_spread_set_link(int shard, struct redis_link *link)
{
    if (shard >= 0 && shard < SHARD_MAX)
        shard_links[shard] = link;
}

struct redis_link *store_spread_link(int shard)
{
    return shard >= 0 && shard < SHARD_MAX ? shard_links[shard] : NULL;
}

struct redis_link *store_link(int shard)
{
    if (!store_spread() || shard < 0 || shard >= store_nshards())
        return rbd->link;
    return shard_links[shard];
}

bool store_shard_ready(int shard)
{
    struct redis_link *l = store_link(shard);
    return l && redis_link_ready(l);
}

bool store_spread_any_ready(void)
{
    if (rbd->link && redis_link_ready(rbd->link))
        return true;
    for (int k = 0; k < store_nshards(); k++)
        if (shard_links[k] && redis_link_ready(shard_links[k]))
            return true;
    return false;
}

size_t store_spread_inflight(void)
{
    size_t n = 0;
    for (int k = 0; k < store_nshards(); k++)
        if (shard_links[k])
            n += redis_link_inflight(shard_links[k]);
    return n;
}

int store_spread_ready_count(void)
{
    int n = 0;
    for (int k = 0; k < store_nshards(); k++)
        n += shard_links[k] && redis_link_ready(shard_links[k]);
    return n;
}

uint64_t store_spread_redirects(void)
{
    uint64_t n = 0;
    for (int k = 0; k < store_nshards(); k++)
        if (shard_links[k])
            n += redis_link_redirects(shard_links[k]) + redis_link_master_changes(shard_links[k]);
    return n;
}

/* ---- one command per shard, answered together ------------------------- */

struct fan;
/* Makes the answer from every shard's reply (NULL where a shard gave
 * none) and calls the caller's cb with it. */
typedef void (*fan_combine)(struct fan *f);

struct fan {
    store_reply_cb cb;
    void *arg;
    fan_combine combine;
    int want, got;
    redisReply *r[SHARD_MAX];
    bool sent[SHARD_MAX];
    int ival;     /* the combiner's own */
    char *text;   /* the combiner's own (freed with the fan) */
};

struct fan_one {
    struct fan *f;
    int shard;
};

static void fan_finish(struct fan *f)
{
    f->combine(f);
    for (int k = 0; k < SHARD_MAX; k++)
        if (f->r[k])
            redis_link_reply_release(f->r[k]);
    free(f->text);
    free(f);
}

static void fan_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    (void)link;
    struct fan_one *o = privdata;
    struct fan *f = o->f;
    f->r[o->shard] = reply ? redis_link_reply_retain(reply) : NULL;
    free(o);
    if (++f->got == f->want)
        fan_finish(f);
}

static struct fan *fan_new(fan_combine combine, store_reply_cb cb, void *arg)
{
    struct fan *f = xcalloc(1, sizeof *f);
    f->combine = combine;
    f->cb = cb;
    f->arg = arg;
    f->want = 1; /* the sender's own, dropped by fan_go */
    return f;
}

/* Sends one command to shard k's link. */
static void fan_send(struct fan *f, int k, int argc, const char **argv, const size_t *lens)
{
    struct redis_link *l = store_link(k);
    struct fan_one *o = xmalloc(sizeof *o);
    o->f = f;
    o->shard = k;
    f->want++;
    if (!l || redis_link_command(l, fan_reply_cb, o, argc, argv, lens) != 0) {
        f->want--;
        free(o);
        return;
    }
    f->sent[k] = true;
}

/* Every command is sent: answers now if all have answered (or none could
 * be sent). Returns 0, or -1 (cb not called) when no shard could be asked. */
static int fan_go(struct fan *f)
{
    bool any = false;
    for (int k = 0; k < SHARD_MAX; k++)
        any |= f->sent[k];
    if (!any) {
        free(f->text);
        free(f);
        return -1;
    }
    if (++f->got == f->want)
        fan_finish(f);
    return 0;
}

static bool fan_complete(const struct fan *f)
{
    for (int k = 0; k < store_nshards(); k++)
        if (!f->sent[k] || !f->r[k] || f->r[k]->type == REDIS_REPLY_ERROR)
            return false;
    return true;
}

/* A reply of the store's own making, handed to a store_reply_cb: the
 * callers of the fanned reads never retain it. */
static redisReply *mk_reply(int type)
{
    redisReply *r = xcalloc(1, sizeof *r);
    r->type = type;
    return r;
}

static void mk_free(redisReply *r)
{
    if (!r)
        return;
    free(r->str);
    free(r->element);
    free(r);
}

/* The integer of the first shard (in shard order) whose reply is 1, or
 * -1; NULL when a shard could not tell and none said 1. */
static void combine_locate(struct fan *f)
{
    int found = -1;
    for (int k = 0; k < store_nshards() && found < 0; k++)
        if (f->r[k] && f->r[k]->type == REDIS_REPLY_INTEGER && f->r[k]->integer == 1)
            found = k;
    if (found < 0 && !fan_complete(f)) {
        f->cb(f->arg, NULL);
        return;
    }
    redisReply *r = mk_reply(REDIS_REPLY_INTEGER);
    r->integer = found;
    f->cb(f->arg, r);
    mk_free(r);
}

int store_spread_locate(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_locate, cb, arg);
    for (int k = 0; k < store_nshards(); k++) {
        const char *argv[] = {"HEXISTS", store_msgs_key(k), id};
        size_t lens[] = {7, strlen(argv[1]), id_len};
        fan_send(f, k, 3, argv, lens);
    }
    return fan_go(f);
}

/* The first string answer in shard order, else nil; NULL when a shard
 * could not tell. */
static void combine_first_string(struct fan *f)
{
    for (int k = 0; k < store_nshards(); k++)
        if (f->r[k] && f->r[k]->type == REDIS_REPLY_STRING) {
            f->cb(f->arg, f->r[k]);
            return;
        }
    if (!fan_complete(f)) {
        f->cb(f->arg, NULL);
        return;
    }
    redisReply *r = mk_reply(REDIS_REPLY_NIL);
    f->cb(f->arg, r);
    mk_free(r);
}

int store_spread_history_get(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_first_string, cb, arg);
    for (int k = 0; k < store_nshards(); k++) {
        const char *argv[] = {"HGET", store_spread_key(k, SPREAD_HISTORY), id};
        size_t lens[] = {4, strlen(argv[1]), id_len};
        fan_send(f, k, 3, argv, lens);
    }
    return fan_go(f);
}

/* The sum of the integer answers; NULL when a shard could not tell. */
static void combine_sum(struct fan *f)
{
    if (!fan_complete(f)) {
        f->cb(f->arg, NULL);
        return;
    }
    redisReply *r = mk_reply(REDIS_REPLY_INTEGER);
    for (int k = 0; k < store_nshards(); k++)
        if (f->r[k]->type == REDIS_REPLY_INTEGER)
            r->integer += f->r[k]->integer;
    f->cb(f->arg, r);
    mk_free(r);
}

int store_spread_sum(const char *cmd, enum spread_name name, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_sum, cb, arg);
    for (int k = 0; k < store_nshards(); k++) {
        const char *argv[] = {cmd, store_spread_key(k, name)};
        fan_send(f, k, 2, argv, NULL);
    }
    return fan_go(f);
}

/* HMGET per shard, answered as one array in the callers' order: f->text
 * holds the position of each id within its shard's HMGET (4 bytes each),
 * f->ival the number of ids, the shards in the order table after it. */
struct each_ctx {
    int n;
    int *shard, *pos;
};

static void combine_each(struct fan *f)
{
    struct each_ctx *c = (struct each_ctx *)f->text;
    redisReply *r = mk_reply(REDIS_REPLY_ARRAY);
    r->elements = (size_t)c->n;
    r->element = xcalloc((size_t)c->n, sizeof *r->element);
    bool ok = true;
    for (int i = 0; i < c->n && ok; i++) {
        const redisReply *s = f->r[c->shard[i]];
        if (!s || s->type != REDIS_REPLY_ARRAY || (size_t)c->pos[i] >= s->elements)
            ok = false;
        else
            r->element[i] = s->element[c->pos[i]];
    }
    f->cb(f->arg, ok ? r : NULL);
    mk_free(r);
    free(c->shard);
    free(c->pos);
}

int store_spread_get_each(const int *shards, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb,
                          void *arg)
{
    int ns = store_nshards();
    struct fan *f = fan_new(combine_each, cb, arg);
    struct each_ctx *c = xcalloc(1, sizeof *c);
    f->text = (char *)c;
    c->n = (int)n;
    c->shard = xmalloc(n * sizeof *c->shard);
    c->pos = xmalloc(n * sizeof *c->pos);
    const char **argv = xmalloc((n + 2) * sizeof *argv);
    size_t *alens = xmalloc((n + 2) * sizeof *alens);
    for (int k = 0; k < ns; k++) {
        int m = 0;
        argv[0] = "HMGET";
        argv[1] = store_msgs_key(k);
        alens[0] = 5;
        alens[1] = strlen(argv[1]);
        for (size_t i = 0; i < n; i++) {
            int s = shards[i] >= 0 && shards[i] < ns ? shards[i] : 0;
            if (s != k)
                continue;
            c->shard[i] = k;
            c->pos[i] = m;
            argv[2 + m] = ids[i];
            alens[2 + m] = lens[i];
            m++;
        }
        if (m > 0)
            fan_send(f, k, 2 + m, argv, alens);
    }
    free(argv);
    free(alens);
    /* fan_go frees c with the fan when nothing could be sent */
    int *cs = c->shard, *cp = c->pos;
    int rc = fan_go(f);
    if (rc != 0) {
        free(cs);
        free(cp);
    }
    return rc;
}

/* ---- the suppressed list, a shard at a time ----------------------------
 * The cursor is "<shard>.<HSCAN cursor>" ("0" is the start): a page comes
 * from one shard; its last page moves on to the next shard, and the list
 * ends after the last shard's. */
struct supp_ctx {
    store_reply_cb cb;
    void *arg;
    int shard;
};

/* The second answer, the list's size: the sum over every shard. */
static void supp_len_cb(void *arg, redisReply *reply)
{
    struct supp_ctx *c = arg;
    c->cb(c->arg, reply);
    free(c);
}

/* The page's answer, then the size asked for: the caller gets the two in
 * that order, whatever links they come over. */
static void supp_page_cb(struct supp_ctx *c, redisReply *reply);

static void supp_scan_cb(void *arg, redisReply *reply)
{
    struct supp_ctx *c = arg;
    supp_page_cb(c, reply);
    if (store_spread_sum("HLEN", SPREAD_SUPP, supp_len_cb, c) != 0)
        supp_len_cb(c, NULL);
}

static void supp_page_cb(struct supp_ctx *c, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        c->cb(c->arg, reply);
        return;
    }
    const char *cur = reply->element[0]->str;
    char next[64];
    if (strcmp(cur, "0") != 0)
        snprintf(next, sizeof next, "%d.%s", c->shard, cur);
    else if (c->shard + 1 < store_nshards())
        snprintf(next, sizeof next, "%d.0", c->shard + 1);
    else
        snprintf(next, sizeof next, "0");
    redisReply *r = mk_reply(REDIS_REPLY_ARRAY);
    redisReply *cr = mk_reply(REDIS_REPLY_STRING);
    cr->str = xstrdup(next);
    cr->len = strlen(next);
    r->elements = 2;
    r->element = xmalloc(2 * sizeof *r->element);
    r->element[0] = cr;
    r->element[1] = reply->element[1];
    c->cb(c->arg, r);
    mk_free(cr);
    mk_free(r);
}

static void supp_link_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    (void)link;
    supp_scan_cb(privdata, reply);
}

int store_spread_suppressed_page(const char *cursor, int count, store_reply_cb cb, void *arg)
{
    int shard = 0;
    const char *cur = "0";
    const char *dot = strchr(cursor, '.');
    if (dot) {
        shard = atoi(cursor);
        cur = dot + 1;
    }
    if (shard < 0 || shard >= store_nshards())
        shard = 0;
    if (!store_shard_ready(shard))
        return -1;
    struct supp_ctx *c = xcalloc(1, sizeof *c);
    c->cb = cb;
    c->arg = arg;
    c->shard = shard;
    char n[16];
    snprintf(n, sizeof n, "%d", count);
    const char *scan[] = {"HSCAN", store_spread_key(shard, SPREAD_SUPP), cur, "COUNT", n};
    if (redis_link_command(store_link(shard), supp_link_cb, c, 5, scan, NULL) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

/* ---- consumer groups over every shard's stream ----------------------------
 * A group is a consumer group of the same name on each shard's stream, and
 * its position a list "<k>/<id>,..." (events.c keeps it); an event's id is
 * "<shard>/<entry id>". A read asks every shard for its new entries and
 * answers one stream reply with the ids qualified, each shard's in its
 * stream order. */

/* The entry id of shard k in a position list, copied into out ("" when
 * the list names none). */
void store_spread_position(const char *pos, int k, char *out, size_t cap)
{
    out[0] = '\0';
    const char *p = pos;
    while (p && *p) {
        char *end;
        long s = strtol(p, &end, 10);
        if (*end != '/')
            return;
        const char *id = end + 1;
        const char *comma = strchr(id, ',');
        size_t n = comma ? (size_t)(comma - id) : strlen(id);
        if (s == k) {
            if (n >= cap)
                n = cap - 1;
            memcpy(out, id, n);
            out[n] = '\0';
            return;
        }
        p = comma ? comma + 1 : NULL;
    }
}

static void combine_attach(struct fan *f)
{
    /* created when any shard's group was made anew */
    long long created = 0;
    for (int k = 0; k < store_nshards(); k++) {
        const redisReply *r = f->r[k];
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_INTEGER) {
            f->cb(f->arg, r && r->type == REDIS_REPLY_ERROR ? f->r[k] : NULL);
            return;
        }
        if (r->element[0]->integer == 1)
            created = 1;
    }
    /* each shard's position, "<shard>/<id>,...": a batch entry read again
     * whole is skipped up to it (events.c) */
    int n = store_nshards();
    char *list = xmalloc((size_t)n * 72 + 1);
    size_t len = 0;
    for (int k = 0; k < n; k++) {
        const redisReply *at = f->r[k]->element[1];
        if (at->type == REDIS_REPLY_STRING && at->len > 0 && at->len < 48)
            len += (size_t)sprintf(list + len, "%s%d/%s", len ? "," : "", k, at->str);
    }
    list[len] = '\0';
    redisReply *r = mk_reply(REDIS_REPLY_ARRAY);
    redisReply *c = mk_reply(REDIS_REPLY_INTEGER), *p = mk_reply(REDIS_REPLY_STRING);
    c->integer = created;
    p->str = list;
    p->len = len;
    r->elements = 2;
    r->element = xmalloc(2 * sizeof *r->element);
    r->element[0] = c;
    r->element[1] = p;
    f->cb(f->arg, r);
    mk_free(c);
    mk_free(p);
    mk_free(r);
}

int store_spread_group_attach(const char *group, const char *from, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_attach, cb, arg);
    for (int k = 0; k < store_nshards(); k++) {
        char at[64];
        store_spread_position(from ? from : "", k, at, sizeof at);
        const char *argv[] = {"EVAL", script_group, "2", store_spread_key(k, SPREAD_EVENTS),
                              store_spread_key(k, SPREAD_MARKS), group, at};
        fan_send(f, k, 7, argv, NULL);
    }
    if (fan_go(f) != 0)
        return -1;
    return 0;
}

static void combine_read(struct fan *f)
{
    /* One stream reply: {{stream, {{"k/id", fields}, ...}}}. */
    size_t total = 0;
    for (int k = 0; k < store_nshards(); k++) {
        const redisReply *r = f->r[k];
        if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7) == 0) {
            f->cb(f->arg, f->r[k]);
            return;
        }
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements == 2 && r->element[0]->element[1]->type == REDIS_REPLY_ARRAY)
            total += r->element[0]->element[1]->elements;
    }
    if (total == 0) {
        redisReply *nil = mk_reply(REDIS_REPLY_NIL);
        f->cb(f->arg, nil);
        mk_free(nil);
        return;
    }
    redisReply *entries = mk_reply(REDIS_REPLY_ARRAY);
    entries->element = xcalloc(total, sizeof *entries->element);
    redisReply *ids = xcalloc(total, sizeof *ids);
    redisReply *pairs = xcalloc(total, sizeof *pairs);
    redisReply **pair_el = xcalloc(2 * total, sizeof *pair_el);
    size_t n = 0;
    for (int k = 0; k < store_nshards(); k++) {
        const redisReply *r = f->r[k];
        if (!(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
              r->element[0]->elements == 2 && r->element[0]->element[1]->type == REDIS_REPLY_ARRAY))
            continue;
        const redisReply *list = r->element[0]->element[1];
        for (size_t i = 0; i < list->elements; i++) {
            const redisReply *en = list->element[i];
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 || en->element[0]->type != REDIS_REPLY_STRING)
                continue;
            char qid[96];
            snprintf(qid, sizeof qid, "%d/%s", k, en->element[0]->str);
            ids[n].type = REDIS_REPLY_STRING;
            ids[n].str = xstrdup(qid);
            ids[n].len = strlen(qid);
            pairs[n].type = REDIS_REPLY_ARRAY;
            pairs[n].elements = 2;
            pairs[n].element = pair_el + 2 * n;
            pair_el[2 * n] = &ids[n];
            pair_el[2 * n + 1] = en->element[1];
            entries->element[n] = &pairs[n];
            n++;
        }
    }
    entries->elements = n;
    redisReply *name = mk_reply(REDIS_REPLY_STRING);
    name->str = xstrdup("events");
    name->len = 6;
    redisReply *stream = mk_reply(REDIS_REPLY_ARRAY);
    stream->elements = 2;
    stream->element = xmalloc(2 * sizeof *stream->element);
    stream->element[0] = name;
    stream->element[1] = entries;
    redisReply *top = mk_reply(REDIS_REPLY_ARRAY);
    top->elements = 1;
    top->element = xmalloc(sizeof *top->element);
    top->element[0] = stream;
    f->cb(f->arg, top);
    mk_free(top);
    mk_free(stream);
    mk_free(name);
    for (size_t i = 0; i < n; i++)
        free(ids[i].str);
    free(ids);
    free(pairs);
    free(pair_el);
    mk_free(entries);
}

int store_spread_group_read(const char *group, const char *count, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_read, cb, arg);
    for (int k = 0; k < store_nshards(); k++) {
        const char *argv[] = {"XREADGROUP", "GROUP", group, STORE_CONSUMER, "COUNT", count, "NOACK",
                              "STREAMS", store_spread_key(k, SPREAD_EVENTS), ">"};
        fan_send(f, k, 10, argv, NULL);
    }
    return fan_go(f);
}

static void combine_first(struct fan *f)
{
    for (int k = 0; k < store_nshards(); k++)
        if (f->r[k]) {
            f->cb(f->arg, f->r[k]);
            return;
        }
    f->cb(f->arg, NULL);
}

/* An integer 1 when every shard took it: the caller's cb sees NULL when
 * one did not. */
static void combine_all_ok(struct fan *f)
{
    for (int k = 0; k < store_nshards(); k++)
        if (f->sent[k] && (!f->r[k] || f->r[k]->type == REDIS_REPLY_ERROR)) {
            f->cb(f->arg, NULL);
            return;
        }
    redisReply *r = mk_reply(REDIS_REPLY_INTEGER);
    r->integer = 1;
    f->cb(f->arg, r);
    mk_free(r);
}

static void ignore_reply(void *arg, redisReply *reply)
{
    (void)arg;
    (void)reply;
}

int store_spread_group_mark(const char *group, const char *mark, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_all_ok, cb ? cb : ignore_reply, arg);
    for (int k = 0; k < store_nshards(); k++) {
        char at[64];
        store_spread_position(mark, k, at, sizeof at);
        if (!at[0])
            continue;
        const char *argv[] = {"HSET", store_spread_key(k, SPREAD_MARKS), group, at};
        fan_send(f, k, 4, argv, NULL);
    }
    return fan_go(f);
}

static void noop_link_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    (void)link;
    (void)reply;
    (void)privdata;
}

int store_spread_group_destroy(const char *group, store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_first, cb ? cb : ignore_reply, arg);
    for (int k = 0; k < store_nshards(); k++) {
        const char *argv[] = {"XGROUP", "DESTROY", store_spread_key(k, SPREAD_EVENTS), group};
        fan_send(f, k, 4, argv, NULL);
        const char *del[] = {"HDEL", store_spread_key(k, SPREAD_MARKS), group};
        struct redis_link *l = store_link(k);
        if (l)
            redis_link_command(l, noop_link_cb, NULL, 3, del, NULL);
    }
    return fan_go(f);
}

/* ---- the groups as XINFO GROUPS lists them -------------------------------
 * Shard 0's list (a group is made on every shard's stream together), each
 * group's "lag" the sum over every shard (nil when a shard cannot tell, as
 * Redis answers after some trims), so that the lag shown and alerted on is
 * the whole schedule's. */
static const redisReply *map_field(const redisReply *m, const char *name, size_t *at)
{
    if (!m || m->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2)
        if (m->element[i]->type == REDIS_REPLY_STRING && strcmp(m->element[i]->str, name) == 0) {
            if (at)
                *at = i + 1;
            return m->element[i + 1];
        }
    return NULL;
}

/* Group name's lag in shard k's list: its integer, or -1 when unknown. */
static long long lag_in(const redisReply *list, const char *name)
{
    if (!list || list->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *nm = map_field(list->element[i], "name", NULL);
        if (nm && nm->type == REDIS_REPLY_STRING && strcmp(nm->str, name) == 0) {
            const redisReply *lag = map_field(list->element[i], "lag", NULL);
            return lag && lag->type == REDIS_REPLY_INTEGER ? lag->integer : -1;
        }
    }
    return -1;
}

static void combine_groups(struct fan *f)
{
    const redisReply *first = f->r[0];
    if (!first || first->type != REDIS_REPLY_ARRAY) {
        f->cb(f->arg, f->r[0]);
        return;
    }
    size_t n = first->elements;
    redisReply *top = mk_reply(REDIS_REPLY_ARRAY);
    top->elements = n;
    top->element = xcalloc(n ? n : 1, sizeof *top->element);
    redisReply **maps = xcalloc(n ? n : 1, sizeof *maps), **lags = xcalloc(n ? n : 1, sizeof *lags);
    for (size_t i = 0; i < n; i++) {
        const redisReply *m = first->element[i];
        const redisReply *nm = map_field(m, "name", NULL);
        size_t at = 0;
        if (!nm || nm->type != REDIS_REPLY_STRING || !map_field(m, "lag", &at)) {
            top->element[i] = first->element[i];
            continue;
        }
        long long sum = 0;
        for (int k = 0; k < store_nshards() && sum >= 0; k++) {
            long long one = lag_in(f->r[k], nm->str);
            sum = one < 0 ? -1 : sum + one;
        }
        lags[i] = mk_reply(sum < 0 ? REDIS_REPLY_NIL : REDIS_REPLY_INTEGER);
        lags[i]->integer = sum < 0 ? 0 : sum;
        maps[i] = mk_reply(REDIS_REPLY_ARRAY);
        maps[i]->elements = m->elements;
        maps[i]->element = xmalloc(m->elements * sizeof *maps[i]->element);
        memcpy(maps[i]->element, m->element, m->elements * sizeof *m->element);
        maps[i]->element[at] = lags[i];
        top->element[i] = maps[i];
    }
    f->cb(f->arg, top);
    for (size_t i = 0; i < n; i++) {
        mk_free(maps[i]);
        mk_free(lags[i]);
    }
    free(maps);
    free(lags);
    mk_free(top);
}

int store_spread_groups_info(store_reply_cb cb, void *arg)
{
    struct fan *f = fan_new(combine_groups, cb, arg);
    for (int k = 0; k < store_nshards(); k++) {
        const char *argv[] = {"XINFO", "GROUPS", store_spread_key(k, SPREAD_EVENTS)};
        fan_send(f, k, 3, argv, NULL);
    }
    return fan_go(f);
}
