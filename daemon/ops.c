#include "daemon/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/explain.h"
#include "daemon/conn.h"
#include "daemon/daemon.h"
#include "daemon/events.h"
#include "daemon/firing.h"
#include "daemon/log.h"
#include "daemon/redis_link.h"
#include "daemon/store.h"
#include "daemon/xmalloc.h"
#include "proto/event.h"
#include "proto/reply.h"
#include "queue/classify.h"
#include "queue/decide.h"

/* A request that needs Redis, from parse to reply. While an entry has a
 * write in flight, later requests for the same id wait on it (in order), so
 * every decision is made on committed state. */
struct job {
    struct job *next; /* next waiter on the same entry */
    struct conn *conn;
    struct slot *slot;
    struct request req;
    struct entry *e;
    int64_t old_due; /* e's due time before the op, to restore on failure */
    bool was_scheduled;
    struct decision d;
    struct classification cls;
    int nevents;
    enum event_type event_types[3];
};

static void reply_line(struct conn *c, struct slot *s, char *line, size_t len)
{
    conn_reply(c, s, line, len);
}

static void reply_err(struct conn *c, struct slot *s, json_t *req, const char *code, const char *msg)
{
    size_t n;
    char *line = reply_error(req, code, msg, &n);
    if (strcmp(code, ERR_UNAVAILABLE) != 0 && strcmp(code, ERR_NOT_FOUND) != 0)
        rbd->errors++;
    reply_line(c, s, line, n);
}

static void reply_obj(struct conn *c, struct slot *s, json_t *req, json_t *obj)
{
    size_t n;
    char *line = reply_ok(obj, req, &n);
    reply_line(c, s, line, n);
}

static void op_finish(struct job *op)
{
    request_free(&op->req);
    conn_unref(op->conn);
    free(op);
}

static bool store_usable(void)
{
    return rbd->loaded && !rbd->stopping && store_ready();
}

static void op_unavailable(struct job *op)
{
    char msg[200];
    snprintf(msg, sizeof msg, "Redis is not available (%s); nothing was written, retry later",
             !rbd->loaded ? "still loading the schedule" : rbd->link ? redis_link_last_error(rbd->link) : "shutting down");
    reply_err(op->conn, op->slot, op->req.req, ERR_UNAVAILABLE, msg);
}

void stats_entry_leave(const struct entry *e)
{
    if (e->state == ENTRY_PENDING) {
        rbd->npending--;
        rbd->pending_by_class[e->class_idx]--;
    } else if (e->state == ENTRY_AWAITING) {
        rbd->nawaiting--;
    }
}

void stats_entry_enter(const struct entry *e)
{
    if (e->state == ENTRY_PENDING) {
        rbd->npending++;
        rbd->pending_by_class[e->class_idx]++;
    } else if (e->state == ENTRY_AWAITING) {
        rbd->nawaiting++;
    }
}

/* ---- bounce ---------------------------------------------------------- */

static json_t *bounce_reply(const struct job *op, const char *class_name, enum action action, int attempt,
                            int64_t retry_at, enum reason reason)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
    json_object_set_new(o, "class", json_string(class_name));
    json_object_set_new(o, "action", json_string(action_name(action)));
    json_object_set_new(o, "attempt", json_integer(attempt));
    if (action == ACTION_RETRY)
        json_object_set_new(o, "retry_at", json_integer(retry_at));
    else
        json_object_set_new(o, "reason", json_string(reason_name(reason)));
    return o;
}

static const char *alert_reason(const struct policy *p, int class_idx)
{
    return p->classes[class_idx].name;
}

static void bounce_done_cb(void *arg, bool ok);

static void op_run(struct job *op);

static void bounce_run(struct job *op, struct entry *e)
{
    const struct request *r = &op->req;
    const struct policy *p = rbd->policy;

    if (e && e->state == ENTRY_PENDING) {
        /* The client re-sent a report whose retry is still pending. */
        json_t *o = bounce_reply(op, p->classes[e->class_idx].name, ACTION_RETRY, e->attempt, e->node.due_ms,
                                 REASON_NONE);
        reply_obj(op->conn, op->slot, r->req, o);
        op_finish(op);
        return;
    }
    if (!store_usable()) {
        op_unavailable(op);
        op_finish(op);
        return;
    }

    int64_t now = now_ms();
    struct prior prior = {0, 0};
    if (e && e->state == ENTRY_AWAITING) {
        prior.attempt = e->attempt;
        prior.first_ms = e->first_ms;
    }
    classify_reply(p, r->code, r->enhanced, r->text, &op->cls);
    decide_bounce(p, &op->cls, &prior, now, r->not_before, &rbd->rng, &op->d);
    const struct decision *d = &op->d;
    const char *cname = p->classes[d->class_idx].name;

    size_t flen;
    char *frag = event_msg_fragment(r->id, r->rcpt, r->campaign, r->meta, &flen);
    char header[128], hist[160];
    char *events[3];
    int nev = 0;

    json_t *extra = json_object();
    json_object_set_new(extra, "class", json_string(cname));
    json_object_set_new(extra, "attempt", json_integer(d->action == ACTION_RETRY ? d->attempt : prior.attempt));
    json_object_set_new(extra, "code", json_integer(op->cls.code));
    if (op->cls.enhanced[0])
        json_object_set_new(extra, "enhanced", json_string(op->cls.enhanced));
    if (d->action != ACTION_RETRY) {
        json_object_set_new(extra, "reason", json_string(reason_name(d->reason)));
        enum event_type t = d->action == ACTION_SUPPRESS ? EV_SUPPRESS : EV_GIVE_UP;
        size_t n;
        events[nev] = event_body(t, now, frag, extra, &n);
        op->event_types[nev++] = t;
    }
    if (d->alert) {
        json_object_set_new(extra, "reason", json_string(alert_reason(p, d->class_idx)));
        if (r->text)
            json_object_set_new(extra, "text", json_string(r->text));
        size_t n;
        events[nev] = event_body(EV_SENDER_ALERT, now, frag, extra, &n);
        op->event_types[nev++] = EV_SENDER_ALERT;
    }
    json_decref(extra);
    op->nevents = nev;

    snprintf(hist, sizeof hist, "[%lld,%d,\"%s\",\"%s\"]", (long long)now, op->cls.code, op->cls.enhanced, cname);
    struct store_change ch = {
        .id = r->id,
        .id_len = r->id_len,
        .events = (const char *const *)events,
        .nevents = nev,
    };
    if (d->action == ACTION_RETRY) {
        snprintf(header, sizeof header, "P%lld,%d,%s,%lld", (long long)d->retry_at, d->attempt, cname,
                 (long long)d->first_ms);
        ch.mode = 'S';
        ch.header = header;
        ch.fragment = frag;
        ch.hist_item = hist;
    } else {
        ch.mode = e ? 'D' : '-';
    }

    if (!e)
        e = sched_add(rbd->sched, r->id, r->id_len);
    op->e = e;
    op->was_scheduled = entry_scheduled(e);
    op->old_due = e->node.due_ms;
    e->flags |= ENTRY_BUSY;
    int rc = store_queue(&ch, bounce_done_cb, op);
    free(frag);
    for (int i = 0; i < nev; i++)
        free(events[i]);
    if (rc != 0)
        bounce_done_cb(op, false);
}

static void count_events(const struct job *op)
{
    for (int i = 0; i < op->nevents; i++)
        rbd->events_emitted[op->event_types[i]]++;
    if (op->nevents)
        events_notify();
}

/* The entry is idle again: run what waited, and drop it if nothing keeps it. */
static void entry_settle(struct entry *e, bool drop)
{
    if (drop) {
        stats_entry_leave(e);
        e->state = ENTRY_NEW; /* forgotten, unless a waiter brings it back */
    }
    ops_run_waiters(e);
    if (e->state == ENTRY_NEW && !(e->flags & ENTRY_BUSY) && !e->waiters)
        sched_remove(rbd->sched, e);
}

static void bounce_done_cb(void *arg, bool ok)
{
    struct job *op = arg;
    struct entry *e = op->e;
    const struct decision *d = &op->d;
    e->flags &= ~ENTRY_BUSY;
    if (!ok) {
        /* Nothing changed as far as we know; put the entry back. */
        if (op->was_scheduled && !entry_scheduled(e))
            sched_set_due(rbd->sched, e, op->old_due);
        op_unavailable(op);
        op_finish(op);
        entry_settle(e, false);
        firing_kick();
        return;
    }
    rbd->reports++;
    count_events(op);
    const char *cname = rbd->policy->classes[d->class_idx].name;
    json_t *o = bounce_reply(op, cname, d->action, d->action == ACTION_RETRY ? d->attempt : e->attempt, d->retry_at,
                             d->reason);
    bool drop = false;
    if (d->action == ACTION_RETRY) {
        stats_entry_leave(e);
        e->state = ENTRY_PENDING;
        e->attempt = (uint16_t)d->attempt;
        e->class_idx = (uint8_t)d->class_idx;
        e->first_ms = d->first_ms;
        stats_entry_enter(e);
        sched_set_due(rbd->sched, e, d->retry_at);
        firing_kick();
    } else {
        drop = true;
    }
    reply_obj(op->conn, op->slot, op->req.req, o);
    op_finish(op);
    entry_settle(e, drop);
}

/* ---- delivered / cancel ---------------------------------------------- */

static void drop_done_cb(void *arg, bool ok)
{
    struct job *op = arg;
    struct entry *e = op->e;
    e->flags &= ~ENTRY_BUSY;
    if (!ok) {
        if (op->was_scheduled && !entry_scheduled(e))
            sched_set_due(rbd->sched, e, op->old_due);
        op_unavailable(op);
        op_finish(op);
        entry_settle(e, false);
        firing_kick();
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
    json_object_set_new(o, "found", json_true());
    reply_obj(op->conn, op->slot, op->req.req, o);
    op_finish(op);
    sched_unset_due(rbd->sched, e);
    entry_settle(e, true);
}

static void drop_run(struct job *op, struct entry *e)
{
    if (!e || e->state == ENTRY_NEW) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
        json_object_set_new(o, "found", json_false());
        reply_obj(op->conn, op->slot, op->req.req, o);
        op_finish(op);
        return;
    }
    if (!store_usable()) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    struct store_change ch = {.id = op->req.id, .id_len = op->req.id_len, .mode = 'D'};
    op->e = e;
    op->was_scheduled = entry_scheduled(e);
    op->old_due = e->node.due_ms;
    e->flags |= ENTRY_BUSY;
    if (store_queue(&ch, drop_done_cb, op) != 0)
        drop_done_cb(op, false);
}

/* ---- get ------------------------------------------------------------- */

static json_t *history_json(const char *text, size_t len)
{
    json_t *arr = json_loadb(text, len, 0, NULL);
    json_t *out = json_array();
    size_t i;
    json_t *item;
    if (!json_is_array(arr)) {
        json_decref(arr);
        return out;
    }
    json_array_foreach(arr, i, item)
    {
        json_t *h = json_object();
        json_object_set(h, "at", json_array_get(item, 0));
        json_object_set(h, "code", json_array_get(item, 1));
        const char *enh = json_string_value(json_array_get(item, 2));
        if (enh && enh[0])
            json_object_set(h, "enhanced", json_array_get(item, 2));
        json_object_set(h, "class", json_array_get(item, 3));
        json_array_append_new(out, h);
    }
    json_decref(arr);
    return out;
}

static void get_reply_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    struct record rec;
    if (!reply) {
        op_unavailable(op);
    } else if (reply->type != REDIS_REPLY_STRING) {
        reply_err(op->conn, op->slot, op->req.req, ERR_NOT_FOUND, "no pending or awaiting message with this id");
    } else if (record_parse(reply->str, reply->len, &rec) != 0) {
        reply_err(op->conn, op->slot, op->req.req, ERR_INTERNAL, "the stored record is malformed");
    } else {
        /* The fragment is a list of members; braces make it an object. */
        size_t flen = rec.fragment_len + 2;
        char *fobj = xmalloc(flen + 1);
        fobj[0] = '{';
        memcpy(fobj + 1, rec.fragment, rec.fragment_len);
        fobj[flen - 1] = '}';
        fobj[flen] = '\0';
        json_t *o = json_loadb(fobj, flen, 0, NULL);
        free(fobj);
        if (!o)
            o = json_object();
        json_object_set_new(o, "state", json_string(rec.state == 'P' ? "pending" : "awaiting"));
        json_object_set_new(o, "class", json_stringn(rec.class_name, rec.class_len));
        json_object_set_new(o, "attempt", json_integer(rec.attempt));
        json_object_set_new(o, "first_at", json_integer(rec.first_ms));
        json_object_set_new(o, "due_at", json_integer(rec.due_ms));
        json_object_set_new(o, "history", history_json(rec.history, rec.history_len));
        reply_obj(op->conn, op->slot, op->req.req, o);
    }
    op_finish(op);
}

static void get_run(struct job *op)
{
    if (!store_usable() || store_get(op->req.id, op->req.id_len, get_reply_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}

/* ---- stats ----------------------------------------------------------- */

struct due_counts {
    int64_t now;
    uint64_t minute, hour, day;
};

static void count_due(struct entry *e, void *arg)
{
    struct due_counts *dc = arg;
    if (e->state != ENTRY_PENDING || !entry_scheduled(e))
        return;
    int64_t in = e->node.due_ms - dc->now;
    if (in <= 60000)
        dc->minute++;
    if (in <= 3600000)
        dc->hour++;
    if (in <= 86400000)
        dc->day++;
}

static json_t *stats_json(void)
{
    const struct policy *p = rbd->policy;
    json_t *o = json_object();
    json_object_set_new(o, "pending", json_integer((json_int_t)rbd->npending));
    json_object_set_new(o, "awaiting", json_integer((json_int_t)rbd->nawaiting));
    json_t *by = json_object();
    for (int i = 0; i < p->nclasses; i++)
        json_object_set_new(by, p->classes[i].name, json_integer((json_int_t)rbd->pending_by_class[i]));
    json_object_set_new(o, "by_class", by);
    struct due_counts dc = {.now = now_ms()};
    sched_foreach(rbd->sched, count_due, &dc);
    json_object_set_new(o, "due",
                        json_pack("{sIsIsI}", "minute", (json_int_t)dc.minute, "hour", (json_int_t)dc.hour, "day",
                                  (json_int_t)dc.day));
    json_t *ev = json_object();
    for (int t = 0; t < EV__COUNT; t++)
        json_object_set_new(ev, event_type_name((enum event_type)t), json_integer((json_int_t)rbd->events_emitted[t]));
    json_object_set_new(o, "events", ev);
    json_object_set_new(o, "reports", json_integer((json_int_t)rbd->reports));
    json_object_set_new(o, "errors", json_integer((json_int_t)rbd->errors));
    json_object_set_new(o, "redis", json_string(store_ready() ? "up" : "down"));
    json_object_set_new(o, "loaded", json_boolean(rbd->loaded));
    json_object_set_new(o, "uptime_s", json_integer((now_ms() - rbd->started_ms) / 1000));
    json_object_set_new(o, "connections", json_integer(rbd->nconns));
    return o;
}

/* ---- dispatch -------------------------------------------------------- */

static void op_run(struct job *op)
{
    struct entry *e = sched_find(rbd->sched, op->req.id, op->req.id_len);
    if (e && (e->flags & ENTRY_BUSY)) {
        /* Park behind the write in flight, in arrival order. */
        struct job **tail = (struct job **)&e->waiters;
        while (*tail)
            tail = &(*tail)->next;
        op->next = NULL;
        *tail = op;
        return;
    }
    switch (op->req.op) {
    case OP_BOUNCE:
        bounce_run(op, e);
        break;
    case OP_DELIVERED:
    case OP_CANCEL:
        drop_run(op, e);
        break;
    case OP_GET:
        get_run(op);
        break;
    default:
        op_finish(op);
        break;
    }
}

void ops_run_waiters(struct entry *e)
{
    while (e->waiters && !(e->flags & ENTRY_BUSY)) {
        struct job *op = e->waiters;
        e->waiters = op->next;
        op->next = NULL;
        op_run(op);
    }
}

static bool token_equal(const char *a, const char *b)
{
    /* Constant time in the length of the configured token. */
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)((i < la ? a[i] : 0) ^ b[i]);
    return diff == 0;
}

void ops_dispatch(struct conn *c, const char *line, size_t len)
{
    struct slot *s = conn_slot(c);
    struct request r;
    struct proto_error err;
    if (request_parse(line, len, &rbd->limits, &r, &err) != 0) {
        reply_err(c, s, r.req, err.code, err.message);
        request_free(&r);
        return;
    }
    if (!c->authed && r.op != OP_AUTH && r.op != OP_PING) {
        reply_err(c, s, r.req, ERR_AUTH, "this server requires {\"op\":\"auth\",\"token\":...} first");
        request_free(&r);
        return;
    }
    switch (r.op) {
    case OP_PING:
        reply_obj(c, s, r.req, NULL);
        break;
    case OP_AUTH:
        if (rbd->cfg.token[0] && !token_equal(r.token, rbd->cfg.token)) {
            reply_err(c, s, r.req, ERR_AUTH, "wrong token");
        } else {
            c->authed = true;
            reply_obj(c, s, r.req, NULL);
        }
        break;
    case OP_CLASSIFY: {
        struct classification cls;
        classify_reply(rbd->policy, r.code, r.enhanced, r.text, &cls);
        reply_obj(c, s, r.req, explain_classification(rbd->policy, &cls));
        break;
    }
    case OP_STATS:
        reply_obj(c, s, r.req, stats_json());
        break;
    case OP_SUBSCRIBE:
        events_subscribe(c, s, &r);
        break;
    case OP_ACK:
        events_ack(c, s, &r);
        break;
    case OP_BOUNCE:
    case OP_DELIVERED:
    case OP_CANCEL:
    case OP_GET: {
        struct job *op = xcalloc(1, sizeof *op);
        op->conn = c;
        op->slot = s;
        op->req = r;
        conn_ref(c);
        op_run(op);
        return; /* op owns the request now */
    }
    default:
        reply_err(c, s, r.req, ERR_UNKNOWN_OP, "unknown op");
        break;
    }
    request_free(&r);
}
