/*
 * The domain throttles and sender_alert windows the instances share
 * (shards): the keys and commands, under a hash tag of their own so that
 * each command touches one slot wherever the shards' keys are. The rule
 * of the merge is scripts/throttle.lua's; schedule/domains.c decides when
 * to merge, poll and claim.
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/xmalloc.h"
#include "redis/redis_link.h"

extern const char script_throttle[];

struct throttle_ctx {
    store_reply_cb cb;
    void *arg;
};

static void throttle_reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct throttle_ctx *c = privdata;
    if (c->cb)
        c->cb(c->arg, reply);
    free(c);
}

static int send_cmd(int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg)
{
    if (!store_ready())
        return -1;
    struct throttle_ctx *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redis_link_command(rbd->link, throttle_reply_cb, c, argc, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

/* "{<prefix>domains}<name>": the prefix has no braces with shards
 * (config.c refuses them), so the tag is the whole of it. With the shards
 * apart on a Redis Cluster, "{<prefix>}<name>": rbd->link is the link to
 * the slot of the keys about no message, and these are such keys. */
static void shared_key(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, store_spread() ? "{%s}%s" : "{%sdomains}%s", rbd->cfg.prefix, name);
}

/* EVAL rather than a script loaded by SHA: a merge is rare and the poll
 * once a second, so the text sent costs nothing that matters, and the
 * link's table of scripts stays the hot paths'. */
static int throttle_eval(int nargs, const char **args, store_reply_cb cb, void *arg)
{
    char key[512];
    shared_key(key, sizeof key, "throttle");
    const char *argv[8] = {"EVAL", script_throttle, "1", key};
    size_t lens[8] = {4, strlen(script_throttle), 1, strlen(key)};
    for (int i = 0; i < nargs && i < 4; i++) {
        argv[4 + i] = args[i];
        lens[4 + i] = strlen(args[i]);
    }
    return send_cmd(4 + nargs, argv, lens, cb, arg);
}

int store_throttle_merge(const char *domain, const char *value, int64_t now, store_reply_cb cb, void *arg)
{
    char n[24];
    snprintf(n, sizeof n, "%lld", (long long)now);
    const char *args[] = {"M", domain, value, n};
    return throttle_eval(4, args, cb, arg);
}

int store_throttle_end(const char *domain, int64_t since, int64_t now, store_reply_cb cb, void *arg)
{
    char s[24], n[24];
    snprintf(s, sizeof s, "%lld", (long long)since);
    snprintf(n, sizeof n, "%lld", (long long)now);
    const char *args[] = {"E", domain, s, n};
    return throttle_eval(4, args, cb, arg);
}

int store_throttle_poll(int64_t now, int64_t keep_ms, store_reply_cb cb, void *arg)
{
    char n[24], k[24];
    snprintf(n, sizeof n, "%lld", (long long)now);
    snprintf(k, sizeof k, "%lld", (long long)keep_ms);
    const char *args[] = {"P", n, k};
    return throttle_eval(3, args, cb, arg);
}

int store_alert_claim(const char *domain, const char *class_name, const char *who, int64_t ttl_ms, store_reply_cb cb,
                      void *arg)
{
    /* The class first: it has no ':' (policy names are [a-z0-9_]), so the
     * domain after it cannot be mistaken for part of it. */
    char key[900], name[600], ttl[24];
    snprintf(name, sizeof name, "alert:%s:%s", class_name, domain);
    shared_key(key, sizeof key, name);
    snprintf(ttl, sizeof ttl, "%lld", (long long)(ttl_ms > 0 ? ttl_ms : 1));
    const char *argv[] = {"SET", key, who, "NX", "PX", ttl};
    size_t lens[] = {3, strlen(key), strlen(who), 2, 2, strlen(ttl)};
    return send_cmd(6, argv, lens, cb, arg);
}
