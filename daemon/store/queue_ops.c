/*
 * The store's side of acting on the queue (ops/list.c, retry_now.c,
 * hold.c, cancel's bulk form in drop.c): the held domains' hash and the
 * bounded bulk commands on the message records.
 */
#include "store/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/xmalloc.h"
#include "redis/redis_link.h"

struct qo_ctx {
    store_reply_cb cb;
    void *arg;
};

static void qo_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct qo_ctx *c = privdata;
    if (c->cb)
        c->cb(c->arg, reply);
    free(c);
}

static void qo_fenced_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    store_fenced_reply(reply);
    qo_reply_cb(link, reply, privdata);
}

/* Over shard's link (store_link; shard < 0: the cluster-wide keys'). */
static int qo_command_on(int shard, int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    if (!store_ready() || !store_shard_ready(shard))
        return -1;
    struct qo_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_command(store_link(shard), qo_reply_cb, c, argc, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

static int qo_command(int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    return qo_command_on(-1, argc, argv, lens, cb, arg);
}

/* A write: with the lease on, it runs only while the epoch is ours
 * (store/lease.c); a FENCED refusal reaches cb as the error reply. */
static int qo_write(int shard, int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    if (!store_fencing())
        return qo_command(argc, argv, lens, cb, arg);
    /* Apart, a write about no message (a hold) is on the cluster-wide
     * keys, where no shard's epoch is: unfenced, like a throttle. */
    if (store_spread() && shard < 0)
        return qo_command_on(-1, argc, argv, lens, cb, arg);
    if (!store_ready() || !store_shard_ready(shard))
        return -1;
    const char **a;
    size_t *l;
    int n = store_fence_wrap(shard, argc, argv, lens, &a, &l);
    struct qo_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    int rc = redis_link_command(store_link(shard), qo_fenced_reply_cb, c, n, a, l);
    if (rc != 0)
        free(c);
    free(a);
    free(l);
    return rc;
}

/* A command already fenced by itself (a script with the prologue): only
 * its FENCED reply is noticed. */
static int qo_write_raw(int shard, int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    if (!store_ready() || !store_shard_ready(shard))
        return -1;
    struct qo_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_command(store_link(shard), qo_fenced_reply_cb, c, argc, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int store_held_set(const char *domain, int64_t until, int64_t since, store_reply_cb cb, void *arg)
{
    char val[48];
    snprintf(val, sizeof val, "%" PRId64 ",%" PRId64, until, since);
    const char *argv[] = {"HSET", rbd->key_held, domain, val};
    size_t lens[] = {4, strlen(rbd->key_held), strlen(domain), strlen(val)};
    return qo_write(STORE_SHARD_ANY, 4, argv, lens, cb, arg);
}

int store_held_del(const char *domain, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HDEL", rbd->key_held, domain};
    size_t lens[] = {4, strlen(rbd->key_held), strlen(domain)};
    return qo_write(STORE_SHARD_ANY, 3, argv, lens, cb, arg);
}

int store_held_read(store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HGETALL", rbd->key_held};
    size_t lens[] = {7, strlen(rbd->key_held)};
    return qo_command(2, argv, lens, cb, arg);
}

/* <cmd> <key> id...: a bulk command on the message records. */
static int bulk(int shard, const char *cmd, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg)
{
    if (n == 0 || n > STORE_BULK_MAX)
        return -1;
    size_t argc = 2 + n;
    const char **argv = xmalloc(argc * sizeof *argv);
    size_t *alens = xmalloc(argc * sizeof *alens);
    argv[0] = cmd;
    alens[0] = strlen(cmd);
    argv[1] = store_msgs_key(shard);
    alens[1] = strlen(argv[1]);
    for (size_t i = 0; i < n; i++) {
        argv[2 + i] = ids[i];
        alens[2 + i] = lens[i];
    }
    int rc = cmd[0] == 'H' && cmd[1] == 'D' ? qo_write(shard, (int)argc, argv, alens, cb, arg)
                                            : qo_command_on(shard, (int)argc, argv, alens, cb, arg);
    free(argv);
    free(alens);
    return rc;
}

int store_msgs_get(int shard, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg)
{
    return bulk(shard, "HMGET", ids, lens, n, cb, arg);
}

/* KEYS: every shard's message hash; ARGV: (shard, id) pairs. */
static const char get_each_lua[] =
    "local out = {}\n"
    "for i = 1, #ARGV, 2 do\n"
    "  out[#out + 1] = redis.call('HGET', KEYS[tonumber(ARGV[i]) + 1], ARGV[i + 1])\n"
    "end\n"
    "return out\n";

int store_msgs_get_each(const int *shards, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb,
                        void *arg)
{
    if (n == 0 || n > STORE_BULK_MAX)
        return -1;
    if (store_spread())
        return store_ready() ? store_spread_get_each(shards, ids, lens, n, cb, arg) : -1;
    int ns = store_nshards();
    size_t argc = 3 + (size_t)ns + 2 * n;
    const char **argv = xmalloc(argc * sizeof *argv);
    size_t *alens = xmalloc(argc * sizeof *alens);
    char *nums = xmalloc(n * 12);
    char nk[16];
    snprintf(nk, sizeof nk, "%d", ns);
    argv[0] = "EVAL";
    argv[1] = get_each_lua;
    argv[2] = nk;
    for (int k = 0; k < ns; k++)
        argv[3 + k] = store_msgs_key(k);
    for (size_t i = 0; i < 3 + (size_t)ns; i++)
        alens[i] = strlen(argv[i]);
    for (size_t i = 0; i < n; i++) {
        char *num = nums + 12 * i;
        int k = shards[i] >= 0 && shards[i] < ns ? shards[i] : 0;
        snprintf(num, 12, "%d", k);
        argv[3 + ns + 2 * i] = num;
        alens[3 + ns + 2 * i] = strlen(num);
        argv[4 + ns + 2 * i] = ids[i];
        alens[4 + ns + 2 * i] = lens[i];
    }
    int rc = qo_command((int)argc, argv, alens, cb, arg);
    free(argv);
    free(alens);
    free(nums);
    return rc;
}

int store_msgs_del(int shard, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg)
{
    return bulk(shard, "HDEL", ids, lens, n, cb, arg);
}

/* Rewrites the due time in the header of each pending record
 * (proto/record.h: "P<due-first>,<attempt>,<class>,<first>\n..."),
 * leaving the rest as it is. Sent with EVAL: it is short, and a bulk op
 * sends one per thousand ids. */
static const char due_now_lua[] =
    /* the fence (store/lease.c): the epoch key after KEYS[1], the epoch last */
    "if #KEYS > 1 and redis.call('GET', KEYS[2]) ~= table.remove(ARGV) then\n"
    "  return redis.error_reply('FENCED the lease on the schedule moved to another instance')\n"
    "end\n"
    "local due = tonumber(ARGV[1])\n"
    "local out = {}\n"
    "for i = 2, #ARGV do\n"
    "  local v = redis.call('HGET', KEYS[1], ARGV[i])\n"
    "  local r = 0\n"
    "  if v and string.byte(v, 1) == 80 then\n"
    "    local mid, first, rest = string.match(v, '^P%-?%d+(,%d+,[^,\\n]+,)(%-?%d+)(\\n.*)$')\n"
    "    if first then\n"
    "      local rel = due - tonumber(first)\n"
    "      redis.call('HSET', KEYS[1], ARGV[i], 'P' .. string.format('%d', rel) .. mid .. first .. rest)\n"
    "      r = 1\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = r\n"
    "end\n"
    "return out\n";

int store_msgs_due_now(int shard, const char *const *ids, const size_t *lens, size_t n, int64_t due, store_reply_cb cb,
                       void *arg)
{
    if (n == 0 || n > STORE_BULK_MAX)
        return -1;
    char when[24];
    snprintf(when, sizeof when, "%" PRId64, due);
    size_t argc = 5 + n;
    bool fence = store_fencing();
    const char **argv = xmalloc((argc + 2) * sizeof *argv);
    size_t *alens = xmalloc((argc + 2) * sizeof *alens);
    argv[0] = "EVAL";
    argv[1] = due_now_lua;
    argv[2] = "1";
    argv[3] = store_msgs_key(shard);
    argv[4] = when;
    for (int i = 0; i < 5; i++)
        alens[i] = strlen(argv[i]);
    for (size_t i = 0; i < n; i++) {
        argv[5 + i] = ids[i];
        alens[5 + i] = lens[i];
    }
    if (fence) {
        /* the EVAL's keys start after its 3 words: EVAL, script, numkeys */
        int nkeys = 1, nargs = (int)argc - 3;
        store_fence_args(shard, argv + 3, alens + 3, &nkeys, &nargs);
        argv[2] = "2";
        argc = (size_t)nargs + 3;
    }
    int rc = fence ? qo_write_raw(shard, (int)argc, argv, alens, cb, arg)
                   : qo_command_on(shard, (int)argc, argv, alens, cb, arg);
    free(argv);
    free(alens);
    return rc;
}

int store_history_get(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    if (store_spread())
        return store_ready() ? store_spread_history_get(id, id_len, cb, arg) : -1;
    const char *argv[] = {"HGET", rbd->key_history, id};
    size_t lens[] = {4, strlen(rbd->key_history), id_len};
    return qo_command(3, argv, lens, cb, arg);
}
