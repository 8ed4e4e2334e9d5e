/*
 * Ops over the whole schedule with shards (cfg.shards >= 2): each instance
 * holds only its shards in memory, so list, stats, hold, release and the
 * bulk forms of retry_now and cancel are asked of every live instance,
 * this one included (over a peer connection to its own address, so that
 * every part takes the same path), and the replies are merged into one:
 *
 *   list         the items of every page, in (time, id) order, cut to
 *                `count`; the cursor the last item kept, or an instance's
 *                own cursor if that is earlier ("0" when all are done)
 *   stats        counts summed (pending, awaiting, by class, due, events,
 *                reports, errors, connections); the rest is this one's
 *   hold, release, retry_now, cancel   "pending" and "count" summed
 *
 * The instances are those whose heartbeat is younger than the lease's TTL
 * (lease_members). An instance that cannot be asked, or that answers with
 * an error, makes the whole op answer `unavailable` (or that error): every
 * one of these ops may be resent.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/xmalloc.h"
#include "net/conn.h"
#include "net/peer.h"
#include "ops/job.h"
#include "proto/reply.h"
#include "schedule/lease.h"

#define FANOUT_MAX 64

struct fanout {
    struct conn *c;
    struct slot *s;
    json_t *req; /* the request's "req", echoed on an error here */
    enum op op;
    int count; /* list: the page's size */
    int want, got;
    char failed[300]; /* an instance that could not be asked */
    json_t *replies[FANOUT_MAX];
};

struct fanout_ask {
    struct fanout *f;
    int i;
    char addr[300];
};

static const char *str_or_empty(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

bool ops_fans_out(const struct request *r)
{
    switch (r->op) {
    case OP_LIST:
    case OP_STATS:
    case OP_HOLD:
    case OP_RELEASE:
        return true;
    case OP_RETRY_NOW:
        return r->id == NULL;
    case OP_CANCEL:
        return r->id == NULL && r->rcpt == NULL;
    default:
        return false;
    }
}

static void sum_field(json_t *into, json_t *from, const char *key)
{
    json_t *a = json_object_get(into, key), *b = json_object_get(from, key);
    if (json_is_integer(a) && json_is_integer(b))
        json_integer_set(a, json_integer_value(a) + json_integer_value(b));
    else if (json_is_object(a) && json_is_object(b)) {
        const char *k;
        json_t *v;
        json_object_foreach(a, k, v) sum_field(a, b, k);
    }
}

/* An item's place in the order: (time, id), the time a page is cut by. */
static int64_t item_time(json_t *it)
{
    json_t *t = json_object_get(it, "expires");
    if (!t)
        t = json_object_get(it, "fires_at");
    if (!t)
        t = json_object_get(it, "due");
    return json_is_integer(t) ? (int64_t)json_integer_value(t) : 0;
}

static int cmp_place(int64_t ta, const char *ia, int64_t tb, const char *ib)
{
    if (ta != tb)
        return ta < tb ? -1 : 1;
    return strcmp(ia, ib);
}

static int cmp_items(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return cmp_place(item_time(x), str_or_empty(json_object_get(x, "id")), item_time(y),
                     str_or_empty(json_object_get(y, "id")));
}

/* "<time>:<id>" into its parts; false for "0" (done). */
static bool cursor_parse(const char *cur, int64_t *t, const char **id)
{
    if (!cur || strcmp(cur, "0") == 0)
        return false;
    const char *colon = strchr(cur, ':');
    if (!colon)
        return false;
    *t = strtoll(cur, NULL, 10);
    *id = colon + 1;
    return true;
}

static json_t *merge_list(struct fanout *f)
{
    size_t n = 0;
    for (int i = 0; i < f->want; i++)
        n += json_array_size(json_object_get(f->replies[i], "items"));
    json_t **all = xmalloc((n ? n : 1) * sizeof *all);
    size_t k = 0;
    /* the earliest place an instance stopped at: nothing after it is known */
    bool limited = false;
    int64_t lim_t = 0;
    const char *lim_id = "";
    for (int i = 0; i < f->want; i++) {
        json_t *items = json_object_get(f->replies[i], "items"), *it;
        size_t j;
        json_array_foreach(items, j, it) all[k++] = it;
        int64_t t;
        const char *id;
        if (cursor_parse(json_string_value(json_object_get(f->replies[i], "cursor")), &t, &id) &&
            (!limited || cmp_place(t, id, lim_t, lim_id) < 0)) {
            limited = true;
            lim_t = t;
            lim_id = id;
        }
    }
    qsort(all, k, sizeof *all, cmp_items);
    json_t *items = json_array();
    size_t keep = 0;
    for (size_t i = 0; i < k && (int)keep < f->count; i++) {
        const char *id = str_or_empty(json_object_get(all[i], "id"));
        if (limited && cmp_place(item_time(all[i]), id, lim_t, lim_id) > 0)
            break;
        json_array_append(items, all[i]);
        keep++;
    }
    char cur[40 + 300];
    if (keep < k) {
        json_t *last = json_array_get(items, keep - 1);
        if (last)
            snprintf(cur, sizeof cur, "%" PRId64 ":%s", item_time(last),
                     str_or_empty(json_object_get(last, "id")));
        else
            snprintf(cur, sizeof cur, "%" PRId64 ":%s", lim_t, lim_id);
    } else if (limited) {
        snprintf(cur, sizeof cur, "%" PRId64 ":%s", lim_t, lim_id);
    } else {
        snprintf(cur, sizeof cur, "0");
    }
    free(all);
    json_t *o = json_deep_copy(f->replies[0]);
    json_object_set_new(o, "items", items);
    json_object_set_new(o, "cursor", json_string(cur));
    return o;
}

static json_t *merge(struct fanout *f)
{
    if (f->op == OP_LIST)
        return merge_list(f);
    /* This instance's reply is the base (its lease, its Redis, ...). */
    int base = 0;
    json_t *o = json_deep_copy(f->replies[base]);
    static const char *const stats_sums[] = {"pending", "awaiting", "by_class", "due", "events",
                                             "reports", "errors",  "connections", NULL};
    static const char *const op_sums[] = {"pending", "count", NULL};
    const char *const *sums = f->op == OP_STATS ? stats_sums : op_sums;
    for (int i = 0; i < f->want; i++) {
        if (i == base)
            continue;
        for (int j = 0; sums[j]; j++)
            sum_field(o, f->replies[i], sums[j]);
        json_t *rel = json_object_get(f->replies[i], "released");
        if (json_is_true(rel))
            json_object_set(o, "released", json_true());
    }
    if (f->op == OP_STATS)
        json_object_set_new(o, "instances", json_integer(f->want));
    return o;
}

static void fanout_end(struct fanout *f)
{
    json_t *err = NULL;
    for (int i = 0; i < f->want && !err; i++)
        if (f->replies[i] && !json_is_true(json_object_get(f->replies[i], "ok")))
            err = f->replies[i];
    if (f->failed[0]) {
        char msg[400];
        snprintf(msg, sizeof msg, "the instance at %s could not be asked; nothing may have been done there, resend",
                 f->failed);
        conn_reply_error(f->c, f->s, f->req, ERR_UNAVAILABLE, msg);
    } else {
        json_t *o = err ? json_incref(err) : merge(f);
        char *line = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        size_t n = strlen(line);
        char *out = xmalloc(n + 1);
        memcpy(out, line, n);
        out[n] = '\n';
        free(line);
        conn_reply(f->c, f->s, out, n + 1);
    }
    for (int i = 0; i < f->want; i++)
        json_decref(f->replies[i]);
    json_decref(f->req);
    conn_unref(f->c);
    free(f);
}

static void ask_cb(void *arg, const char *line, size_t len)
{
    struct fanout_ask *a = arg;
    struct fanout *f = a->f;
    json_t *r = line ? json_loadb(line, len, 0, NULL) : NULL;
    if (!json_is_object(r) && !f->failed[0])
        snprintf(f->failed, sizeof f->failed, "%s", a->addr);
    if (json_is_object(r))
        f->replies[a->i] = r;
    else
        json_decref(r);
    free(a);
    if (++f->got == f->want)
        fanout_end(f);
}

struct member_list {
    char addr[FANOUT_MAX][300];
    int n;
    bool self;
};

static void add_member(const char *id, const char *addr, void *arg)
{
    struct member_list *m = arg;
    if (m->n >= FANOUT_MAX || !addr[0])
        return;
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->addr[i], addr) == 0)
            return;
    m->self = m->self || strcmp(addr, rbd->advertise) == 0;
    snprintf(m->addr[m->n++], sizeof m->addr[0], "%s", addr);
}

void ops_fan_out(struct conn *c, struct slot *s, const struct request *r, const char *line, size_t len)
{
    struct member_list *m = xcalloc(1, sizeof *m);
    /* this instance first: its reply is the merge's base */
    add_member(rbd->instance_id, rbd->advertise, m);
    lease_members(add_member, m);
    struct fanout *f = xcalloc(1, sizeof *f);
    f->c = c;
    f->s = s;
    f->req = r->req ? json_incref(r->req) : NULL;
    f->op = r->op;
    f->count = r->count > 0 ? (int)r->count : 100;
    f->want = m->n;
    conn_ref(c);
    /* Each ask answers once; the last answer ends the op. */
    int sent = 0;
    for (int i = 0; i < m->n; i++) {
        struct fanout_ask *a = xmalloc(sizeof *a);
        a->f = f;
        a->i = i;
        snprintf(a->addr, sizeof a->addr, "%s", m->addr[i]);
        if (peer_ask(m->addr[i], line, len, ask_cb, a) != 0) {
            free(a);
            if (!f->failed[0])
                snprintf(f->failed, sizeof f->failed, "%s", m->addr[i]);
            f->got++;
        } else {
            sent++;
        }
    }
    free(m);
    if (sent == 0 || f->got == f->want) {
        f->got = f->want;
        fanout_end(f);
    }
}
