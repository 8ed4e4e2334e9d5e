/*
 * The Sentinels' side of discovery: what to ask one Sentinel and how to
 * read its answer; redis/discovery.c asks them all.
 */
#include "redis/sentinel.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sentinel_parse_master(const struct redisReply *r, char *ip, size_t iplen, int *port, long long *epoch)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return -1;
    const char *h = NULL, *p = NULL, *ep = "0";
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "ip") == 0)
            h = v->str;
        else if (strcmp(k->str, "port") == 0)
            p = v->str;
        else if (strcmp(k->str, "config-epoch") == 0)
            ep = v->str;
    }
    if (!h || !p || strlen(h) >= iplen)
        return -1;
    char *end;
    long pn = strtol(p, &end, 10);
    if (*end || pn < 1 || pn > 65535)
        return -1;
    memcpy(ip, h, strlen(h) + 1);
    *port = (int)pn;
    *epoch = strtoll(ep, NULL, 10);
    return 0;
}

/* SENTINEL MASTER rather than get-master-addr-by-name: the same address,
 * plus the epoch that says which of two Sentinels is behind. */
static int ask_sentinel(struct redisContext *c, void *arg, struct master_claim *claim, char *err, size_t errlen)
{
    const char *master = arg;
    redisReply *r = redisCommand(c, "SENTINEL MASTER %s", master);
    int rc = -1;
    if (!r)
        snprintf(err, errlen, "%s", c->errstr);
    else if (r->type == REDIS_REPLY_ARRAY && sentinel_parse_master(r, claim->host, sizeof claim->host, &claim->port,
                                                                   &claim->epoch) == 0)
        rc = 0;
    else if (r->type == REDIS_REPLY_ARRAY)
        snprintf(err, errlen, "no usable address in its answer");
    else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "No such master"))
        snprintf(err, errlen, "does not know a master named \"%.100s\"", master);
    else
        snprintf(err, errlen, "unexpected reply%s%.100s", r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    if (r)
        freeReplyObject(r);
    return rc;
}

int sentinel_get_master(const struct server_addr *sentinels, int n, int *first, const char *master,
                        const char *password, int64_t timeout_ms, struct master_claim *claim, char *err,
                        size_t errlen)
{
    char why[300];
    if (discovery_ask_all(sentinels, n, first, NULL, password, timeout_ms, ask_sentinel, (void *)master, claim, why,
                          sizeof why) == 0)
        return 0;
    snprintf(err, errlen, "no Sentinel named the master \"%.100s\" (last: %s)", master, why);
    return -1;
}
