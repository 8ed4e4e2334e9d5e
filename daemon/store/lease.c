/*
 * The lease on the schedule and its fencing (several reboundd on one
 * Redis: docs/architecture.md, "The lease"). The keys:
 *
 *   <prefix>lease    "<instance> <addr> <epoch>", with a time to live: who
 *                    owns the schedule, and where clients reach it
 *   <prefix>epoch    the fencing token: incremented by every acquisition
 *   <prefix>members  hash, instance id -> "<addr> <at ms>": each instance's
 *                    heartbeat, read by the cluster op
 *
 * Acquiring is SET NX PX and INCR in one script, so an epoch belongs to
 * one owner only. Every write the daemon sends while lease_ttl is set
 * carries the epoch it holds and is refused with FENCED when the counter
 * moved on: apply.lua and fire.lua check it in a prologue (the epoch key
 * after their own keys, the epoch as their last argument), the burst's
 * MULTI/EXEC WATCHes the counter behind a checked read, and the single
 * commands of queue_ops.c go through fence_lua. With lease_ttl 0 nothing
 * of this is sent.
 */
#include "store/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "queue/shard.h"
#include "redis/redis_link.h"

/* Per shard (shard 0 alone in the one-shard layout): the lease, the
 * epoch, and the epoch writes carry ("0" while none is held). */
static char *key_lease[SHARD_MAX], *key_epoch[SHARD_MAX], *key_members, *key_meta;
static char fence_epoch[SHARD_MAX][24];
static void (*fenced_hook)(void);

/* KEYS[1] lease, KEYS[2] epoch; ARGV[1] "<instance> <addr>", ARGV[2] ttl.
 * Returns {epoch, value}: epoch 0 and the holder's value when it is held. */
static const char acquire_lua[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then return {0, cur} end\n"
    "local e = redis.call('INCR', KEYS[2])\n"
    "local v = ARGV[1] .. ' ' .. e\n"
    "redis.call('SET', KEYS[1], v, 'PX', ARGV[2])\n"
    "return {e, v}\n";

/* KEYS[1] lease, KEYS[2] epoch; ARGV[1] our value, ARGV[2] ttl, ARGV[3]
 * the epoch in our value: 1 renewed, 0 not ours (the value, or the epoch,
 * moved: a write refused as FENCED is traced to its shard this way). */
static const char renew_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS[1] lease; ARGV[1] our value: 1 released, 0 not ours. The epoch
 * stays: the next owner increments it. */
static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* One command, run only while the epoch is ours: KEYS[1] the epoch,
 * KEYS[2] the command's key; ARGV[1] the epoch held, ARGV[2] the command,
 * ARGV[3..] its other arguments. redis.call takes its arguments from Lua's
 * stack (at most about 8000): a longer list (an HMGET of a burst, an HDEL
 * of ids) goes in slices, whose answers are joined (arrays) or summed
 * (integers). */
static const char fence_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then\n"
    "  return redis.error_reply('FENCED the lease on the schedule moved to another instance')\n"
    "end\n"
    "local n = #ARGV\n"
    "if n <= 4002 then return redis.call(ARGV[2], KEYS[2], unpack(ARGV, 3)) end\n"
    "local out, sum = {}, 0\n"
    "for i = 3, n, 4000 do\n"
    "  local r = redis.call(ARGV[2], KEYS[2], unpack(ARGV, i, math.min(i + 3999, n)))\n"
    "  if type(r) == 'table' then\n"
    "    for k = 1, #r do out[#out + 1] = r[k] end\n"
    "  else\n"
    "    sum = sum + r\n"
    "  end\n"
    "end\n"
    "if #out > 0 then return out end\n"
    "return sum\n";

static char *lease_key(const char *name)
{
    return store_global_key(name);
}

/* "{<shard k's tag>}<name>" (queue/shard.h). */
char *store_shard_key(int k, const char *name)
{
    char tag[400];
    shard_tag(rbd->cfg.prefix, k, store_nshards(), tag, sizeof tag);
    size_t a = strlen(tag), b = strlen(name);
    char *key = xmalloc(a + b + 3);
    key[0] = '{';
    memcpy(key + 1, tag, a);
    key[a + 1] = '}';
    memcpy(key + a + 2, name, b + 1);
    return key;
}

void store_lease_init(void)
{
    int n = store_nshards();
    for (int k = 0; k < n; k++) {
        key_lease[k] = n > 1 ? store_shard_key(k, "lease") : lease_key("lease");
        key_epoch[k] = n > 1 ? store_shard_key(k, "epoch") : lease_key("epoch");
        snprintf(fence_epoch[k], sizeof fence_epoch[k], "0");
    }
    key_members = lease_key("members");
    key_meta = lease_key("meta");
}

void store_lease_free(void)
{
    for (int k = 0; k < SHARD_MAX; k++) {
        free(key_lease[k]);
        free(key_epoch[k]);
        key_lease[k] = key_epoch[k] = NULL;
    }
    free(key_members);
    free(key_meta);
    key_members = key_meta = NULL;
}

bool store_fencing(void)
{
    return rbd->cfg.lease_ttl_ms > 0 && key_epoch[0];
}

void store_fence_set(int shard, long long epoch)
{
    if (shard >= 0 && shard < SHARD_MAX)
        snprintf(fence_epoch[shard], sizeof fence_epoch[shard], "%lld", epoch);
}

int store_shard_any(void)
{
    int n = store_nshards();
    for (int k = 0; k < n; k++)
        if (strcmp(fence_epoch[k], "0") != 0)
            return k;
    return 0;
}

void store_set_fenced_hook(void (*fn)(void))
{
    fenced_hook = fn;
}

bool store_fenced_reply(const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ERROR || strncmp(reply->str, "FENCED", 6) != 0)
        return false;
    store_fenced_now();
    return true;
}

void store_fenced_now(void)
{
    rbd->lease_fenced_writes++;
    if (fenced_hook)
        fenced_hook();
}

static const char *key_epoch_of(int shard)
{
    return key_epoch[shard >= 0 && shard < SHARD_MAX && key_epoch[shard] ? shard : 0];
}

void store_fence_args(int shard, const char **argv, size_t *lens, int *nkeys, int *argc)
{
    if (shard < 0)
        shard = store_shard_any();
    const char *ekey = key_epoch_of(shard), *epoch = fence_epoch[shard];
    int k = *nkeys, n = *argc;
    memmove(argv + k + 1, argv + k, (size_t)(n - k) * sizeof *argv);
    memmove(lens + k + 1, lens + k, (size_t)(n - k) * sizeof *lens);
    argv[k] = ekey;
    lens[k] = strlen(ekey);
    argv[n + 1] = epoch;
    lens[n + 1] = strlen(epoch);
    *nkeys = k + 1;
    *argc = n + 2;
}

int store_fence_wrap(int shard, int argc, const char *const *argv, const size_t *lens, const char ***out,
                     size_t **out_lens)
{
    if (shard < 0)
        shard = store_shard_any();
    const char *ekey = key_epoch_of(shard), *epoch = fence_epoch[shard];
    /* EVAL fence_lua 2 <epoch key> <key> <epoch> <cmd> <other args...> */
    int n = argc + 5;
    const char **a = xmalloc((size_t)n * sizeof *a);
    size_t *l = xmalloc((size_t)n * sizeof *l);
    a[0] = "EVAL";
    a[1] = fence_lua;
    a[2] = "2";
    a[3] = ekey;
    a[4] = argv[1];
    a[5] = epoch;
    a[6] = argv[0];
    for (int i = 0; i < 7; i++)
        l[i] = strlen(a[i]);
    l[4] = lens[1];
    l[6] = lens[0];
    for (int i = 2; i < argc; i++) {
        a[5 + i] = argv[i];
        l[5 + i] = lens[i];
    }
    *out = a;
    *out_lens = l;
    return n;
}

const char *store_fence_epoch(int shard)
{
    return fence_epoch[shard >= 0 && shard < SHARD_MAX ? shard : 0];
}

const char *store_fence_key(int shard)
{
    return key_epoch_of(shard < 0 ? store_shard_any() : shard);
}

/* ---- the lease's own commands ---- */

struct lease_ctx {
    store_reply_cb cb;
    void *arg;
};

static void lease_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct lease_ctx *c = privdata;
    if (c->cb)
        c->cb(c->arg, reply);
    free(c);
}

/* Over shard's link (store_link: shard < 0 for members and meta). */
static int lease_command_on(int shard, int argc, const char **argv, store_reply_cb cb, void *arg)
{
    if (!store_ready() || !key_lease[0] || !store_shard_ready(shard))
        return -1;
    struct lease_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_command(store_link(shard), lease_reply_cb, c, argc, argv, NULL) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

static int lease_command(int argc, const char **argv, store_reply_cb cb, void *arg)
{
    return lease_command_on(-1, argc, argv, cb, arg);
}

int store_lease_acquire(int shard, const char *who, int64_t ttl_ms, store_reply_cb cb, void *arg)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *argv[] = {"EVAL", acquire_lua, "2", key_lease[shard], key_epoch[shard], who, ttl};
    return lease_command_on(shard, 7, argv, cb, arg);
}

int store_lease_renew(int shard, const char *value, int64_t ttl_ms, store_reply_cb cb, void *arg)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *sp = strrchr(value, ' ');
    const char *argv[] = {"EVAL", renew_lua, "2", key_lease[shard], key_epoch[shard], value, ttl, sp ? sp + 1 : ""};
    return lease_command_on(shard, 8, argv, cb, arg);
}

int store_lease_release(int shard, const char *value, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"EVAL", release_lua, "1", key_lease[shard], value};
    return lease_command_on(shard, 5, argv, cb, arg);
}

int store_lease_read(int shard, store_reply_cb cb, void *arg)
{
    const char *argv[] = {"GET", key_lease[shard]};
    return lease_command_on(shard, 2, argv, cb, arg);
}

int store_members_beat(const char *id, const char *value)
{
    const char *argv[] = {"HSET", key_members, id, value};
    return lease_command(4, argv, NULL, NULL);
}

int store_members_forget(const char *id)
{
    const char *argv[] = {"HDEL", key_members, id};
    return lease_command(3, argv, NULL, NULL);
}

int store_members_read(store_reply_cb cb, void *arg)
{
    const char *argv[] = {"HGETALL", key_members};
    return lease_command(2, argv, cb, arg);
}

/* KEYS[1] meta, KEYS[2] the one-shard layout's message hash; ARGV[1]
 * the shards configured (1: the one-shard layout, which writes no meta).
 * A sharded layout is recorded only where no one-shard records are. */
static const char meta_lua[] =
    "local cur = redis.call('HGET', KEYS[1], 'shards')\n"
    "if cur then return tonumber(cur) end\n"
    "local n = tonumber(ARGV[1])\n"
    "if n < 2 then return 1 end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end\n"
    "redis.call('HSET', KEYS[1], 'shards', ARGV[1])\n"
    "return n\n";

int store_meta_shards(int nshards, store_reply_cb cb, void *arg)
{
    char n[16];
    snprintf(n, sizeof n, "%d", nshards);
    char *meta = lease_key("meta"), *msg = lease_key("msg");
    const char *argv[] = {"EVAL", meta_lua, "2", meta, msg, n};
    int rc = -1;
    if (store_ready()) {
        struct lease_ctx *c = xmalloc(sizeof *c);
        c->cb = cb;
        c->arg = arg;
        rc = redis_link_command(rbd->link, lease_reply_cb, c, 6, argv, NULL);
        if (rc != 0)
            free(c);
    }
    free(meta);
    free(msg);
    return rc;
}

size_t store_inflight(void)
{
    return (rbd->link ? redis_link_inflight(rbd->link) : 0) + store_spread_inflight();
}
