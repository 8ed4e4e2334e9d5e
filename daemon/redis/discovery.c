/*
 * The loop over the servers and the blocking connection that asks each
 * (redis/discovery.h says why blocking is acceptable here).
 */
#include "redis/discovery.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

int server_parse_list(const char *list, struct server_addr *out, int max)
{
    int n = 0;
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char one[300];
        if (len == 0 || len >= sizeof one || n == max)
            return -1;
        memcpy(one, p, len);
        one[len] = '\0';
        char *colon = strrchr(one, ':');
        if (!colon || colon == one)
            return -1;
        *colon = '\0';
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end || port < 1 || port > 65535)
            return -1;
        char *host = one;
        size_t hl = strlen(host);
        if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
            host[hl - 1] = '\0';
            host++;
        }
        if (strlen(host) >= sizeof out[n].host)
            return -1;
        memcpy(out[n].host, host, strlen(host) + 1); /* fits: checked above */
        out[n].port = (int)port;
        n++;
        p += len + (comma ? 1 : 0);
    }
    return n;
}

/* One server: connect, AUTH, ask. */
static int ask_one(const struct server_addr *s, const char *user, const char *password, struct timeval tv,
                   discovery_ask_fn ask, void *arg, struct master_claim *claim, char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
    if (!c) {
        snprintf(err, errlen, "%s:%d: out of memory", s->host, s->port);
        return -1;
    }
    if (c->err) {
        snprintf(err, errlen, "%s:%d: %s", s->host, s->port, c->errstr);
        redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    if (password) {
        redisReply *r = user ? redisCommand(c, "AUTH %s %s", user, password) : redisCommand(c, "AUTH %s", password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "%s:%d: AUTH: %s", s->host, s->port, r ? r->str : c->errstr);
            if (r)
                freeReplyObject(r);
            redisFree(c);
            return -1;
        }
        freeReplyObject(r);
    }
    char why[250] = "";
    int rc = ask(c, arg, claim, why, sizeof why);
    if (rc != 0)
        snprintf(err, errlen, "%s:%d: %s", s->host, s->port, why);
    redisFree(c);
    return rc;
}

int discovery_ask_all(const struct server_addr *servers, int n, int *first, const char *user,
                      const char *password, int64_t timeout_ms, discovery_ask_fn ask, void *arg,
                      struct master_claim *claim, char *err, size_t errlen)
{
    if (timeout_ms <= 0)
        timeout_ms = 1000;
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
    snprintf(err, errlen, "no server configured");
    int start = (*first >= 0 && *first < n) ? *first : 0;
    long long best = -1;
    /* Every server is asked: right after a failover the ones that did not
     * lead it still name the old master until they hear of the new
     * configuration, and the highest configuration epoch is the newest. */
    for (int k = 0; k < n; k++) {
        int i = (start + k) % n;
        struct master_claim one = {.port = 0};
        if (ask_one(&servers[i], user, password, tv, ask, arg, &one, err, errlen) != 0)
            continue;
        if (one.epoch > best) {
            best = one.epoch;
            *claim = one;
            *first = i;
        }
    }
    return best >= 0 ? 0 : -1;
}
