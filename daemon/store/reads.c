/*
 * What the daemon reads from Redis, and the stream's consumer-group
 * commands: each a function that names its key and spells its command, so
 * no other folder does. Replies go to a store_reply_cb exactly once (NULL
 * when the link went down first); a function that returns -1 sent nothing
 * and calls nothing.
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/xmalloc.h"
#include "queue/shard.h"
#include "redis/redis_link.h"
#include "store/scripts.h"

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

/* A command over shard's link (store_link: the one link unless the
 * shards live apart; shard < 0 the cluster-wide keys'). */
static int command_on(int shard, int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    if (!store_ready() || !store_shard_ready(shard))
        return -1;
    struct reply_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_command(store_link(shard), generic_reply_cb, c, argc, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

static int command(int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    return command_on(-1, argc, argv, lens, cb, arg);
}

int store_get(int shard, const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HGET", store_msgs_key(shard), id};
    size_t lens[] = {4, strlen(argv[1]), id_len};
    return command_on(shard, 3, argv, lens, cb, arg);
}

int store_get_with_rcpt(int shard, const char *id, size_t id_len, const char *rcpt, store_reply_cb cb, void *arg)
{
    if (!store_ready() || !store_shard_ready(shard))
        return -1;
    int ks = store_spread() ? shard : -1;
    const char *argv[] = {store_msgs_key(shard), store_spread_key(ks, SPREAD_RCPT), store_spread_key(ks, SPREAD_SUPP),
                          id ? id : "", rcpt ? rcpt : ""};
    size_t lens[] = {strlen(argv[0]), strlen(argv[1]), strlen(argv[2]), id ? id_len : 0, rcpt ? strlen(rcpt) : 0};
    struct reply_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_script(store_link(shard), SCRIPT_GET, generic_reply_cb, c, 3, 5, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

/* A command whose arguments are C strings. */
static int command_str(int argc, const char **argv, store_reply_cb cb, void *arg)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return command(argc, argv, lens, cb, arg);
}

static int command_str_on(int shard, int argc, const char **argv, store_reply_cb cb, void *arg)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return command_on(shard, argc, argv, lens, cb, arg);
}

static void ignore_reply_cb(void *arg, redisReply *reply)
{
}

int store_msgs_len(int shard, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HLEN", store_msgs_key(shard)};
    return command_str_on(shard, 2, argv, cb, arg);
}

int store_msgs_scan(int shard, const char *cursor, const char *count, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HSCAN", store_msgs_key(shard), cursor, "COUNT", count};
    return command_str_on(shard, 5, argv, cb, arg);
}

int store_suppressed_page(const char *cursor, int count, store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_spread_suppressed_page(cursor, count, cb, arg);
    char n[16];
    snprintf(n, sizeof n, "%d", count);
    const char *scan[] = {"HSCAN", rbd->key_supp, cursor, "COUNT", n};
    const char *len[] = {"HLEN", rbd->key_supp};
    /* Both go out now on the one connection. */
    if (command_str(5, scan, cb, arg) != 0)
        return -1;
    if (command_str(2, len, cb, arg) != 0)
        cb(arg, NULL);
    return 0;
}

int store_domains_read(store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HGETALL", rbd->key_domains};
    return command_str(2, argv, cb, arg);
}

void store_domain_forget(const char *name, size_t len)
{
    const char *argv[] = {"HDEL", rbd->key_domains, name};
    size_t lens[] = {4, strlen(rbd->key_domains), len};
    command(3, argv, lens, ignore_reply_cb, NULL);
}

int store_group_create(const char *group, store_reply_cb cb, void *arg)
{
    /* From the beginning of the retained stream, so events emitted before
     * the first subscribe are not lost. */
    const char *argv[] = {"XGROUP", "CREATE", rbd->key_events, group, "0", "MKSTREAM"};
    return command_str(6, argv, cb, arg);
}

int store_group_read(const char *group, const char *from, const char *count, store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_ready() ? store_spread_group_read(group, count, cb, arg) : -1;
    /* NOACK: Redis keeps no pending entry per event read (nor writes one
     * to the AOF); the group's mark (store_group_mark) says what is
     * handled instead. */
    const char *argv[] = {"XREADGROUP", "GROUP", group, STORE_CONSUMER, "COUNT", count, "NOACK", "STREAMS",
                          rbd->key_events, from};
    return command_str(10, argv, cb, arg);
}

int store_group_ack(const char *group, const char *const *ids, size_t n, store_reply_cb cb, void *arg)
{
    size_t argc = n + 3;
    const char **argv = xmalloc(argc * sizeof *argv);
    size_t *lens = xmalloc(argc * sizeof *lens);
    argv[0] = "XACK";
    argv[1] = rbd->key_events;
    argv[2] = group;
    for (size_t i = 0; i < n; i++)
        argv[3 + i] = ids[i];
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    int rc = command((int)argc, argv, lens, cb ? cb : ignore_reply_cb, arg);
    free(argv);
    free(lens);
    return rc;
}

/* ---- what operators see: /metrics and /status.json (metrics.c) ---- */
/* Consumer groups' upkeep (bounded groups, expiry, the groups op): the
 * stream's groups as Redis lists them, and a hash <prefix>groups of when
 * each group last had a subscriber (epoch ms), so an expiry survives a
 * restart. */
static const char *marks_key(void);

static const char *groups_key(void)
{
    static char *key;
    static const char *made_from;
    if (made_from != rbd->key_events) {
        /* <prefix>events -> <prefix>groups: the same prefix as every key */
        size_t plen = strlen(rbd->key_events) - strlen("events");
        free(key);
        key = xmalloc(plen + sizeof "groups");
        memcpy(key, rbd->key_events, plen);
        memcpy(key + plen, "groups", sizeof "groups");
        made_from = rbd->key_events;
    }
    return key;
}

int store_groups_info(store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_ready() ? store_spread_groups_info(cb, arg) : -1;
    const char *argv[] = {"XINFO", "GROUPS", rbd->key_events};
    return command_str(3, argv, cb, arg);
}

int store_stream_len(store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_spread_sum("XLEN", SPREAD_EVENTS, cb, arg);
    const char *argv[] = {"XLEN", rbd->key_events};
    return command_str(2, argv, cb, arg);
}

int store_suppressed_len(store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_spread_sum("HLEN", SPREAD_SUPP, cb, arg);
    const char *argv[] = {"HLEN", rbd->key_supp};
    return command_str(2, argv, cb, arg);
}

int store_events_latest(int count, store_reply_cb cb, void *arg)
{
    char n[16];
    snprintf(n, sizeof n, "%d", count);
    /* Apart: shard 0's newest (the status page's sample). */
    const char *argv[] = {"XREVRANGE", store_spread_key(0, SPREAD_EVENTS), "+", "-", "COUNT", n};
    return command_str_on(0, 6, argv, cb, arg);
}

int store_groups_seen_read(store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HGETALL", groups_key()};
    return command_str(2, argv, cb, arg);
}

int store_groups_seen(const char *const *names, const long long *ms, size_t n)
{
    if (n == 0)
        return 0;
    size_t argc = 2 + 2 * n;
    const char **argv = xmalloc(argc * sizeof *argv);
    size_t *lens = xmalloc(argc * sizeof *lens);
    char (*nums)[24] = xmalloc(n * sizeof *nums);
    argv[0] = "HSET";
    argv[1] = groups_key();
    for (size_t i = 0; i < n; i++) {
        snprintf(nums[i], sizeof nums[i], "%lld", ms[i]);
        argv[2 + 2 * i] = names[i];
        argv[3 + 2 * i] = nums[i];
    }
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    int rc = command((int)argc, argv, lens, ignore_reply_cb, NULL);
    free(nums);
    free(argv);
    free(lens);
    return rc;
}

int store_group_destroy(const char *group, store_reply_cb cb, void *arg)
{
    const char *hdel[] = {"HDEL", groups_key(), group};
    if (command_str(3, hdel, ignore_reply_cb, NULL) != 0)
        return -1;
    if (store_spread())
        return store_spread_group_destroy(group, cb, arg);
    const char *hdel_mark[] = {"HDEL", marks_key(), group};
    if (command_str(3, hdel_mark, ignore_reply_cb, NULL) != 0)
        return -1;
    const char *argv[] = {"XGROUP", "DESTROY", rbd->key_events, group};
    return command_str(4, argv, cb ? cb : ignore_reply_cb, arg);
}

/* ---- the groups' marks: what each group has handled ---- */
/* <prefix>groupmarks: per group, the entry id up to which every event is
 * acknowledged or skipped by the group (scripts/group.lua). */
static const char *marks_key(void)
{
    static char *key;
    static const char *made_from;
    if (made_from != rbd->key_events) {
        size_t plen = strlen(rbd->key_events) - strlen("events");
        free(key);
        key = xmalloc(plen + sizeof "groupmarks");
        memcpy(key, rbd->key_events, plen);
        memcpy(key + plen, "groupmarks", sizeof "groupmarks");
        made_from = rbd->key_events;
    }
    return key;
}

int store_group_attach(const char *group, const char *from, store_reply_cb cb, void *arg)
{
    /* Sent as EVAL: it runs once per group per connect, not worth a slot
     * among the scripts loaded by SHA. */
    if (store_spread())
        return store_ready() ? store_spread_group_attach(group, from, cb, arg) : -1;
    const char *argv[] = {"EVAL", script_group, "2", rbd->key_events, marks_key(), group, from ? from : ""};
    return command_str(7, argv, cb, arg);
}

int store_group_mark(const char *group, const char *mark, store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_ready() ? store_spread_group_mark(group, mark, cb, arg) : -1;
    const char *argv[] = {"HSET", marks_key(), group, mark};
    return command_str(4, argv, cb ? cb : ignore_reply_cb, arg);
}

/* ---- learned timing ---- */

int store_learned_scan(const char *cursor, const char *count, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HSCAN", rbd->key_learned, cursor, "COUNT", count};
    return command_str(5, argv, cb, arg);
}

void store_learned_forget(const char *name, size_t len)
{
    const char *argv[] = {"HDEL", rbd->key_learned, name};
    size_t lens[] = {4, strlen(rbd->key_learned), len};
    command(3, argv, lens, ignore_reply_cb, NULL);
}

/* KEYS: every shard's message hash; ARGV[1] the id. */
static const char locate_lua[] =
    "for k = 1, #KEYS do\n"
    "  if redis.call('HEXISTS', KEYS[k], ARGV[1]) == 1 then return k - 1 end\n"
    "end\n"
    "return -1\n";

int store_msgs_locate(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_ready() ? store_spread_locate(id, id_len, cb, arg) : -1;
    int n = store_nshards();
    const char *argv[3 + SHARD_MAX + 1];
    size_t lens[3 + SHARD_MAX + 1];
    char nk[16];
    snprintf(nk, sizeof nk, "%d", n);
    argv[0] = "EVAL";
    argv[1] = locate_lua;
    argv[2] = nk;
    for (int k = 0; k < n; k++)
        argv[3 + k] = store_msgs_key(k);
    argv[3 + n] = id;
    for (int i = 0; i < 3 + n; i++)
        lens[i] = strlen(argv[i]);
    lens[3 + n] = id_len;
    return command(4 + n, argv, lens, cb, arg);
}
