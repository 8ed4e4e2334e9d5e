/*
 * The Sentinel query is blocking, on purpose and bounded: it runs only
 * when the link is about to connect (never while it is READY), hiredis
 * 0.14 already resolves host names with a blocking getaddrinfo at that
 * point, and the Sentinels of a deployment are a few LAN round trips away.
 * Each Sentinel gets timeout_ms to connect and timeout_ms to answer, so a
 * dead Sentinel costs a refused connect (microseconds) and a black-holed
 * one at most 2 x timeout_ms; the caller keeps that time-out short. An
 * asynchronous query would need a second hiredis context per attempt with
 * its own state machine, for a wait that only happens while Redis is not
 * usable anyway.
 */
#include "redis/sentinel.h"

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

int sentinel_parse_list(const char *list, struct sentinel_addr *out, int max)
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

/* An error text cut to fit: the reasons are for logs. */
static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

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

/* One Sentinel: 0 with the address and its configuration epoch, 1 when
 * it answered that it does not know the master, -1 when it could not be
 * asked. SENTINEL MASTER rather than get-master-addr-by-name: the same
 * address, plus the epoch that says which of two Sentinels is behind. */
static int ask_one(const struct sentinel_addr *s, const char *master, const char *password, struct timeval tv,
                   char *host, size_t hostlen, int *port, long long *epoch, char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
    if (!c) {
        errf(err, errlen, "%s:%d: out of memory", s->host, s->port);
        return -1;
    }
    if (c->err) {
        errf(err, errlen, "%s:%d: %s", s->host, s->port, c->errstr);
        redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    int rc = -1;
    redisReply *r;
    if (password) {
        r = redisCommand(c, "AUTH %s", password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            errf(err, errlen, "%s:%d: AUTH: %s", s->host, s->port, r ? r->str : c->errstr);
            if (r)
                freeReplyObject(r);
            redisFree(c);
            return -1;
        }
        freeReplyObject(r);
    }
    r = redisCommand(c, "SENTINEL MASTER %s", master);
    if (!r) {
        errf(err, errlen, "%s:%d: %s", s->host, s->port, c->errstr);
    } else if (r->type == REDIS_REPLY_ARRAY) {
        if (sentinel_parse_master(r, host, hostlen, port, epoch) == 0)
            rc = 0;
        else
            errf(err, errlen, "%s:%d: no usable address in its answer", s->host, s->port);
    } else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "No such master")) {
        errf(err, errlen, "%s:%d: does not know a master named \"%.100s\"", s->host, s->port, master);
        rc = 1;
    } else {
        errf(err, errlen, "%s:%d: unexpected reply%s%.100s", s->host, s->port,
             r->type == REDIS_REPLY_ERROR ? ": " : "", r->type == REDIS_REPLY_ERROR ? r->str : "");
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

int sentinel_get_master(const struct sentinel_addr *sentinels, int n, int *first, const char *master,
                        const char *password, int64_t timeout_ms, char *host, size_t hostlen, int *port,
                        long long *epoch_out, char *err, size_t errlen)
{
    if (timeout_ms <= 0)
        timeout_ms = 1000;
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
    char why[300] = "no Sentinel configured";
    int start = (*first >= 0 && *first < n) ? *first : 0;
    long long best = -1;
    /* Every Sentinel is asked: right after a failover the ones that did
     * not lead it still name the old master until they hear of the new
     * configuration, and the highest configuration epoch is the newest. */
    for (int k = 0; k < n; k++) {
        int i = (start + k) % n;
        char h[256];
        int p = 0;
        long long epoch = 0;
        if (ask_one(&sentinels[i], master, password, tv, h, sizeof h, &p, &epoch, why, sizeof why) != 0)
            continue;
        if (epoch > best && strlen(h) < hostlen) {
            best = epoch;
            memcpy(host, h, strlen(h) + 1);
            *port = p;
            *first = i;
            *epoch_out = epoch;
        }
    }
    if (best >= 0)
        return 0;
    errf(err, errlen, "no Sentinel named the master \"%.100s\" (last: %s)", master, why);
    return -1;
}
