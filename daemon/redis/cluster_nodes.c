/*
 * Redis Cluster's key slots and its CLUSTER NODES answer, read as the
 * cluster specification states them; redis/discovery.c asks the seeds.
 */
#include "redis/cluster_nodes.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue/shard.h"

/* The hashed part of key: its tag when it has a non-empty one. */
static void hashed_part(const char *key, size_t len, const char **part, size_t *plen)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close != NULL && close > open + 1) {
            *part = open + 1;
            *plen = (size_t)(close - open - 1);
            return;
        }
    }
    *part = key;
    *plen = len;
}

int cluster_key_slot(const char *key, size_t len)
{
    const char *part;
    size_t plen;
    hashed_part(key, len, &part, &plen);
    return shard_crc16(part, plen) & (CLUSTER_SLOTS - 1);
}

bool cluster_has_hash_tag(const char *key, size_t len)
{
    const char *part;
    size_t plen;
    hashed_part(key, len, &part, &plen);
    return part != key || plen != len;
}

/* Whether one slot field of a CLUSTER NODES line ("5461", "0-5460", or a
 * migration note "[93->-id]" / "[93-<-id]", which claims nothing) holds slot. */
static bool field_has_slot(const char *f, size_t len, int slot)
{
    if (len == 0 || f[0] == '[')
        return false;
    char buf[32];
    if (len >= sizeof buf)
        return false;
    memcpy(buf, f, len);
    buf[len] = '\0';
    char *end;
    long lo = strtol(buf, &end, 10), hi = lo;
    if (end == buf)
        return false;
    if (*end == '-') {
        char *end2;
        hi = strtol(end + 1, &end2, 10);
        if (end2 == end + 1 || *end2 != '\0')
            return false;
    } else if (*end != '\0') {
        return false;
    }
    return slot >= lo && slot <= hi;
}

/* Whether the comma-separated flags hold `flag` exactly. */
static bool has_flag(const char *flags, size_t len, const char *flag)
{
    size_t fl = strlen(flag);
    const char *p = flags, *end = flags + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (n == fl && memcmp(p, flag, n) == 0)
            return true;
        p += n + 1;
    }
    return false;
}

int cluster_nodes_primary(const char *text, size_t len, int slot, char *host, size_t hostlen, int *port,
                          long long *epoch)
{
    long long best = -1;
    const char *line = text, *end = text + len;
    while (line < end) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *lend = nl ? nl : end;
        /* id addr flags master ping pong epoch link slot... */
        const char *f[8];
        size_t fl[8];
        int nf = 0;
        const char *p = line;
        while (p < lend && nf < 8) {
            while (p < lend && *p == ' ')
                p++;
            const char *s = p;
            while (p < lend && *p != ' ')
                p++;
            if (p > s) {
                f[nf] = s;
                fl[nf] = (size_t)(p - s);
                nf++;
            }
        }
        if (nf == 8 && has_flag(f[2], fl[2], "master") && !has_flag(f[2], fl[2], "fail") &&
            !has_flag(f[2], fl[2], "noaddr") && !has_flag(f[2], fl[2], "handshake")) {
            bool claims = false;
            const char *q = p;
            while (q < lend && !claims) {
                while (q < lend && *q == ' ')
                    q++;
                const char *s = q;
                while (q < lend && *q != ' ')
                    q++;
                claims = field_has_slot(s, (size_t)(q - s), slot);
            }
            /* addr is "ip:port@cport" and may carry ",hostname" */
            char addr[300];
            long long ep = strtoll(f[6], NULL, 10);
            if (claims && ep > best && fl[1] < sizeof addr) {
                memcpy(addr, f[1], fl[1]);
                addr[fl[1]] = '\0';
                addr[strcspn(addr, "@,")] = '\0';
                char *colon = strrchr(addr, ':');
                long pn = colon ? strtol(colon + 1, NULL, 10) : 0;
                if (colon && colon > addr && pn >= 1 && pn <= 65535 && (size_t)(colon - addr) < hostlen) {
                    *colon = '\0';
                    const char *h = addr;
                    size_t hl = strlen(h);
                    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
                        addr[hl - 1] = '\0';
                        h++;
                    }
                    memcpy(host, h, strlen(h) + 1);
                    *port = (int)pn;
                    *epoch = ep;
                    best = ep;
                }
            }
        }
        line = lend + 1;
    }
    return best >= 0 ? 0 : -1;
}

/*
 * The seeds' last answers, kept for a moment: with shards on a Redis
 * Cluster each shard's link asks the seeds for its own slot, and after a
 * failover they reconnect together; without this each would ask every
 * seed again, and a seed that does not answer (a black-holed host) would
 * block the loop once per link instead of once.
 */
#define SEEDS_ANSWERS_MS 250
#define SEEDS_ANSWERS_MAX 16
static struct {
    int64_t at_ms;
    int n; /* answers kept */
    struct server_addr from[SEEDS_ANSWERS_MAX];
    char *text[SEEDS_ANSWERS_MAX];
    size_t len[SEEDS_ANSWERS_MAX];
} answers;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void answers_clear(void)
{
    for (int i = 0; i < answers.n; i++)
        free(answers.text[i]);
    answers.n = 0;
}

/* CLUSTER NODES of one seed, read for the primary of the slot, its text
 * kept among the answers. */
static int ask_seed_keep(struct redisContext *c, void *arg, struct master_claim *claim, char *err, size_t errlen)
{
    int slot = *(const int *)arg;
    redisReply *r = redisCommand(c, "CLUSTER NODES");
    int rc = -1;
    if (!r) {
        snprintf(err, errlen, "%s", c->errstr);
        return -1;
    }
    if ((r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && answers.n < SEEDS_ANSWERS_MAX &&
        c->tcp.host && strlen(c->tcp.host) < sizeof answers.from[0].host) {
        int i = answers.n++;
        snprintf(answers.from[i].host, sizeof answers.from[i].host, "%s", c->tcp.host);
        answers.from[i].port = c->tcp.port;
        answers.text[i] = malloc(r->len + 1);
        if (answers.text[i]) {
            memcpy(answers.text[i], r->str, r->len);
            answers.text[i][r->len] = '\0';
            answers.len[i] = r->len;
        } else {
            answers.n--;
        }
    }
    if ((r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
        cluster_nodes_primary(r->str, r->len, slot, claim->host, sizeof claim->host, &claim->port, &claim->epoch) ==
            0)
        rc = 0;
    else if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        snprintf(err, errlen, "no live primary claims slot %d", slot);
    else
        snprintf(err, errlen, "CLUSTER NODES: %.150s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    return rc;
}

/* The newest claim on slot among the answers kept, when they are fresh
 * and came from these seeds: 0, or -1 to ask the seeds. */
static int answers_claim(const struct server_addr *seeds, int n, int slot, struct master_claim *claim)
{
    if (answers.n == 0 || mono_ms() - answers.at_ms > SEEDS_ANSWERS_MS)
        return -1;
    for (int i = 0; i < answers.n; i++) {
        bool listed = false;
        for (int j = 0; j < n && !listed; j++)
            listed = seeds[j].port == answers.from[i].port && strcmp(seeds[j].host, answers.from[i].host) == 0;
        if (!listed)
            return -1;
    }
    long long best = -1;
    for (int i = 0; i < answers.n; i++) {
        struct master_claim one = {.port = 0};
        if (cluster_nodes_primary(answers.text[i], answers.len[i], slot, one.host, sizeof one.host, &one.port,
                                  &one.epoch) == 0 &&
            one.epoch > best) {
            best = one.epoch;
            *claim = one;
        }
    }
    return best >= 0 ? 0 : -1;
}

int cluster_get_primary(const struct server_addr *seeds, int n, int *first, int slot, const char *user,
                        const char *password, int64_t timeout_ms, struct master_claim *claim, char *err,
                        size_t errlen)
{
    char why[300];
    if (answers_claim(seeds, n, slot, claim) == 0)
        return 0;
    answers_clear();
    int rc = discovery_ask_all(seeds, n, first, user, password, timeout_ms, ask_seed_keep, &slot, claim, why,
                               sizeof why);
    answers.at_ms = mono_ms(); /* fresh from when the last seed answered */
    if (rc == 0)
        return 0;
    snprintf(err, errlen, "no seed named the primary of slot %d (last: %s)", slot, why);
    return -1;
}
