/*
 * The per-domain learned timing in memory: a chained hash table by name
 * and a list in the order the states last changed, so that the table can
 * stay within LEARNED_MAX_DOMAINS by letting the stalest domain go.
 */
#include "schedule/learned.h"

#include <stdlib.h>
#include <string.h>

#include "base/ascii.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "store/store.h"

struct node {
    struct learn_domain st;  /* first: the part the decision reads */
    struct node *hnext;      /* hash chain */
    struct node *older, *newer; /* the change order */
    uint32_t hash;
    uint8_t len;
    char name[];             /* NUL-terminated */
};

static struct {
    struct node **buckets;
    size_t nbuckets, count;
    struct node *oldest, *newest;
    size_t name_bytes;
} L;

uint64_t learned_retries;
uint64_t learned_evicted;

static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

void learned_init(void)
{
    memset(&L, 0, sizeof L);
    L.nbuckets = 1024;
    L.buckets = xcalloc(L.nbuckets, sizeof *L.buckets);
}

void learned_free(void)
{
    if (!L.buckets)
        return;
    struct node *n = L.oldest;
    while (n) {
        struct node *next = n->newer;
        free(n);
        n = next;
    }
    free(L.buckets);
    memset(&L, 0, sizeof L);
}

size_t learned_name(const char *name, size_t len, char *buf)
{
    if (len == 0 || len > LEARNED_NAME_MAX)
        return 0;
    ascii_lower(buf, name, len);
    buf[len] = '\0';
    return len;
}

size_t learned_name_of_rcpt(const char *rcpt, size_t len, char *buf)
{
    const char *at = NULL;
    for (size_t i = len; i > 0; i--)
        if (rcpt[i - 1] == '@') {
            at = rcpt + i - 1;
            break;
        }
    if (!at)
        return 0;
    return learned_name(at + 1, len - (size_t)(at + 1 - rcpt), buf);
}

static struct node **slot_of(const char *name, size_t len, uint32_t h)
{
    struct node **p = &L.buckets[h & (L.nbuckets - 1)];
    while (*p && !((*p)->hash == h && (*p)->len == len && memcmp((*p)->name, name, len) == 0))
        p = &(*p)->hnext;
    return p;
}

static void list_unlink(struct node *n)
{
    if (n->older)
        n->older->newer = n->newer;
    else
        L.oldest = n->newer;
    if (n->newer)
        n->newer->older = n->older;
    else
        L.newest = n->older;
    n->older = n->newer = NULL;
}

static void list_push(struct node *n)
{
    n->older = L.newest;
    n->newer = NULL;
    if (L.newest)
        L.newest->newer = n;
    else
        L.oldest = n;
    L.newest = n;
}

static void grow(void)
{
    size_t nb = L.nbuckets * 2;
    struct node **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < L.nbuckets; i++) {
        struct node *n = L.buckets[i];
        while (n) {
            struct node *next = n->hnext;
            n->hnext = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(L.buckets);
    L.buckets = b;
    L.nbuckets = nb;
}

static void drop(struct node *n)
{
    struct node **p = slot_of(n->name, n->len, n->hash);
    *p = n->hnext;
    list_unlink(n);
    L.count--;
    L.name_bytes -= (size_t)n->len + 1;
    free(n);
}

const struct learn_domain *learned_find(const char *name, size_t len)
{
    if (len == 0 || len > LEARNED_NAME_MAX || L.count == 0 || !L.buckets)
        return NULL;
    struct node *n = *slot_of(name, len, name_hash(name, len));
    return n ? &n->st : NULL;
}

/* The node for name, added (empty) when missing. */
static struct node *node_get(const char *name, size_t len)
{
    if (!L.buckets)
        learned_init();
    uint32_t h = name_hash(name, len);
    struct node **p = slot_of(name, len, h);
    if (*p) {
        list_unlink(*p);
        list_push(*p);
        return *p;
    }
    if (L.count >= LEARNED_MAX_DOMAINS && L.oldest) {
        /* Redis keeps what memory keeps: a domain let go here would
         * otherwise come back, stale, at the next start. */
        struct node *old = L.oldest;
        store_learned_forget(old->name, old->len);
        learned_evicted++;
        drop(old);
        p = slot_of(name, len, h);
    }
    if (L.count >= L.nbuckets) {
        grow();
        p = slot_of(name, len, h);
    }
    struct node *n = xmalloc(sizeof *n + len + 1);
    learn_init(&n->st);
    n->hash = h;
    n->len = (uint8_t)len;
    memcpy(n->name, name, len);
    n->name[len] = '\0';
    n->hnext = NULL;
    *p = n;
    list_push(n);
    L.count++;
    L.name_bytes += len + 1;
    return n;
}

struct learn_domain *learned_touch(const char *name, size_t len)
{
    if (len == 0 || len > LEARNED_NAME_MAX)
        return NULL;
    return &node_get(name, len)->st;
}

size_t learned_count(void)
{
    return L.count;
}

size_t learned_memory(void)
{
    return L.count * sizeof(struct node) + L.name_bytes + L.nbuckets * sizeof(struct node *);
}

/* ---- load ---- */

static void (*load_done)(void);
static uint64_t load_count, load_bad;

static void load_finish(void)
{
    log_info("load: learned timing of %llu domains read back from Redis%s", (unsigned long long)load_count,
             load_bad ? " (some unreadable, skipped)" : "");
    void (*done)(void) = load_done;
    load_done = NULL;
    if (done)
        done();
}

static void load_reply_cb(void *arg, redisReply *reply)
{
    (void)arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        /* Soft state: a start without it schedules by the table until
         * the domains teach it again. */
        log_warn("load: the learned timing could not be read (%s); starting without it",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
        load_finish();
        return;
    }
    redisReply *items = reply->element[1];
    for (size_t i = 0; i + 1 < items->elements; i += 2) {
        redisReply *k = items->element[i], *v = items->element[i + 1];
        char name[LEARNED_NAME_MAX + 1];
        size_t n;
        struct learn_domain st;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !(n = learned_name(k->str, k->len, name)) || learn_decode(&st, v->str, v->len) != 0) {
            load_bad++;
            continue;
        }
        struct node *nd = node_get(name, n);
        nd->st = st;
        load_count++;
    }
    const char *cursor = reply->element[0]->str;
    if (strcmp(cursor, "0") == 0 || rbd->stopping) {
        load_finish();
        return;
    }
    char next[32];
    snprintf(next, sizeof next, "%s", cursor);
    if (store_learned_scan(next, "2000", load_reply_cb, NULL) != 0)
        load_finish();
}

void learned_load(void (*done)(void))
{
    load_done = done;
    load_count = load_bad = 0;
    if (!L.buckets)
        learned_init();
    /* A reload after a reconnect reads Redis's state again from scratch:
     * what memory had may include writes Redis never confirmed. */
    struct node *n = L.oldest;
    while (n) {
        struct node *next = n->newer;
        drop(n);
        n = next;
    }
    if (store_learned_scan("0", "2000", load_reply_cb, NULL) != 0)
        load_finish();
}

/* ---- views ---- */

static json_t *view_json(const struct learn_view *v, const struct learn_domain *st, const struct policy_class *cl,
                         int64_t now)
{
    json_t *o = json_object();
    json_object_set_new(o, "delivered", json_integer(v->delivered));
    json_object_set_new(o, "deferred", json_integer(v->deferred));
    json_object_set_new(o, "mean_attempts", json_real(v->mean_attempts));
    json_object_set_new(o, "mean_age_ms", json_integer(v->mean_age_ms));
    json_object_set_new(o, "accepted_ms", json_integer(v->ok_ms));
    json_object_set_new(o, "latest_deferral_ms", json_integer(v->latest_deferral_ms));
    json_object_set_new(o, "evidence", json_integer(v->evidence));
    json_object_set_new(o, "changed_at", json_integer(v->last_ms));
    int64_t accept = 0;
    const struct policy_learn *lc = &cl->learn;
    int tol = lc->margin_pct > 0 ? lc->margin_pct : 10;
    bool used = lc->enabled &&
                learn_estimate(st, learn_class_key(cl->name), lc->min_evidence, tol, lc->forget_ms, now, &accept);
    json_object_set_new(o, "in_use", json_boolean(used));
    if (used)
        json_object_set_new(o, "accept_ms", json_integer(accept));
    return o;
}

json_t *learned_domain_json(const char *name, size_t len, int64_t now)
{
    char buf[LEARNED_NAME_MAX + 1];
    size_t n = learned_name(name, len, buf);
    const struct learn_domain *st = n ? learned_find(buf, n) : NULL;
    if (!st)
        return NULL;
    const struct policy *p = rbd->policy;
    json_t *o = json_object();
    for (int i = 0; i < p->nclasses; i++) {
        struct learn_view v;
        learn_view(st, learn_class_key(p->classes[i].name), &v);
        if (v.known)
            json_object_set_new(o, p->classes[i].name, view_json(&v, st, &p->classes[i], now));
    }
    return o;
}

json_t *learned_stats_json(void)
{
    const struct policy *p = rbd->policy;
    json_t *o = json_object();
    json_object_set_new(o, "domains", json_integer((json_int_t)L.count));
    json_object_set_new(o, "retries_learned", json_integer((json_int_t)learned_retries));
    json_object_set_new(o, "evicted", json_integer((json_int_t)learned_evicted));
    json_object_set_new(o, "memory_bytes", json_integer((json_int_t)learned_memory()));
    json_t *by = json_object();
    for (int i = 0; i < p->nclasses; i++) {
        if (!p->classes[i].learn.enabled)
            continue;
        uint32_t key = learn_class_key(p->classes[i].name);
        uint64_t doms = 0, delivered = 0, deferred = 0;
        double attempts = 0, age = 0;
        /* One walk per learning class: stats is asked for rarely, and
         * keeping running totals would cost every report. */
        for (struct node *nd = L.oldest; nd; nd = nd->newer) {
            struct learn_view v;
            learn_view(&nd->st, key, &v);
            if (!v.known)
                continue;
            doms++;
            delivered += v.delivered;
            deferred += v.deferred;
            attempts += v.mean_attempts * v.delivered;
            age += (double)v.mean_age_ms * v.delivered;
        }
        json_t *c = json_object();
        json_object_set_new(c, "domains", json_integer((json_int_t)doms));
        json_object_set_new(c, "delivered", json_integer((json_int_t)delivered));
        json_object_set_new(c, "deferred", json_integer((json_int_t)deferred));
        json_object_set_new(c, "mean_attempts", json_real(delivered ? attempts / (double)delivered : 0));
        json_object_set_new(c, "mean_age_ms", json_integer(delivered ? (json_int_t)(age / (double)delivered) : 0));
        json_object_set_new(by, p->classes[i].name, c);
    }
    json_object_set_new(o, "by_class", by);
    return o;
}
