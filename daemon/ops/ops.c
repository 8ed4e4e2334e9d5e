#include "ops/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "config/explain.h"
#include "events/events.h"
#include "net/conn.h"
#include "proto/event.h"
#include "proto/jbuf.h"
#include "proto/record.h"
#include "proto/reply.h"
#include "queue/classify.h"
#include "queue/decide.h"
#include "redis/redis_link.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "store/store.h"

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
    int prior_attempt;   /* bounce: retries made before this report */
    uint32_t domain;     /* the recipient's domain (a reference is held), or 0 */
    bool alert_claimed;  /* bounce: this report raises the window's sender_alert */
    uint64_t alert_repeats;
    int nevents;
    enum event_type event_types[3];
    char copies[192]; /* the request's strings, when they fit */
};

static struct classify_cache class_cache;
/* Scratch buffers, reused by every report: what is written into them is
 * copied out (to the connection, to the store's batch) before they are
 * written again. */
static struct jbuf reply_buf, frag_buf, extra_buf;
/* Finished jobs kept for reuse, at most JOBS_KEPT: a job is where every
 * request line is parsed into, so the one just finished, still in the
 * cache, takes the next line. */
#define JOBS_KEPT 1024
static struct job *free_jobs;
static int nfree_jobs;

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
    counters_error(code);
    reply_line(c, s, line, n);
}

static void reply_obj(struct conn *c, struct slot *s, json_t *req, json_t *obj)
{
    size_t n;
    char *line = reply_ok(obj, req, &n);
    reply_line(c, s, line, n);
}

static struct job *job_new(void)
{
    struct job *op = free_jobs;
    if (!op)
        return xcalloc(1, sizeof *op);
    free_jobs = op->next;
    nfree_jobs--;
    memset(op, 0, sizeof *op);
    return op;
}

static void job_release(struct job *op)
{
    request_free(&op->req);
    if (nfree_jobs >= JOBS_KEPT) {
        free(op);
        return;
    }
    op->next = free_jobs;
    free_jobs = op;
    nfree_jobs++;
}

static void op_finish(struct job *op)
{
    domains_unref(op->domain);
    conn_unref(op->conn);
    job_release(op);
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

/* ---- bounce ---------------------------------------------------------- */

/* The reply to a report, written straight into its line: every report
 * gets one, and building and dumping a jansson object for it cost more
 * than the rest of the reply's path. */
static void bounce_reply(const struct job *op, const char *class_name, enum action action, int attempt,
                         int64_t retry_at, const char *reason)
{
    struct jbuf *b = &reply_buf;
    jbuf_reset(b);
    reply_open(b, op->req.req);
    jbuf_lit(b, ",\"id\":");
    jbuf_str(b, op->req.id, op->req.id_len);
    jbuf_lit(b, ",\"class\":");
    jbuf_str(b, class_name, strlen(class_name));
    jbuf_lit(b, ",\"action\":");
    const char *an = action_name(action);
    jbuf_str(b, an, strlen(an));
    jbuf_lit(b, ",\"attempt\":");
    jbuf_int(b, attempt);
    if (action == ACTION_RETRY) {
        jbuf_lit(b, ",\"retry_at\":");
        jbuf_int(b, retry_at);
    } else {
        jbuf_lit(b, ",\"reason\":");
        jbuf_str(b, reason, strlen(reason));
    }
    if (!reply_end(b)) {
        reply_err(op->conn, op->slot, op->req.req, ERR_INTERNAL, "the reply could not be encoded");
        return;
    }
    conn_reply_copy(op->conn, op->slot, b->p, b->len);
}

static const char *alert_reason(const struct policy *p, int class_idx)
{
    return p->classes[class_idx].name;
}

static void bounce_done_cb(void *arg, bool ok, long long result);

static void op_run(struct job *op);

static void bounce_run(struct job *op, struct entry *e)
{
    const struct request *r = &op->req;
    const struct policy *p = rbd->policy;

    if (e && e->state == ENTRY_PENDING) {
        /* The client re-sent a report whose retry is still pending. */
        bounce_reply(op, p->classes[e->class_idx].name, ACTION_RETRY, e->attempt, e->node.due_ms, NULL);
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
    /* rbd->policy and the reload count name the policy together: a new
     * policy is loaded while the one in force is alive, and a later one
     * that could reuse a freed policy's address comes with another reload. */
    classify_cached(&class_cache, p, rbd->policy_generation, r->code, r->enhanced, r->text, &op->cls);
    decide_bounce(p, &op->cls, &prior, now, r->not_before, &rbd->rng, &op->d);
    const struct decision *d = &op->d;
    const char *cname = p->classes[d->class_idx].name;
    op->prior_attempt = prior.attempt;
    op->domain = domains_of_rcpt(r->rcpt, r->rcpt_len, true, now);
    domains_ref(op->domain);

    jbuf_reset(&frag_buf);
    event_msg_fragment_put(&frag_buf, r->id, r->rcpt, r->campaign, r->meta);
    const char *frag = jbuf_cstr(&frag_buf);
    char *events[3];
    int nev = 0;

    /* One sender_alert per domain and class per alert window: a DMARC
     * failure reported for ten thousand recipients of one domain is one
     * problem to fix, not ten thousand. */
    if (d->alert)
        op->alert_claimed = domains_alert_claim(op->domain, d->class_idx, now, &op->alert_repeats);
    /* The event members, only for a report that raises an event (a retry,
     * what most reports are, raises none), written as text in the order
     * the events have always had: class, attempt, code, enhanced, reason,
     * then the alert's own. */
    if (d->action != ACTION_RETRY || op->alert_claimed) {
        struct jbuf *x = &extra_buf;
        size_t n;
        jbuf_reset(x);
        jbuf_lit(x, ",\"class\":");
        jbuf_str(x, cname, strlen(cname));
        jbuf_lit(x, ",\"attempt\":");
        jbuf_int(x, d->action == ACTION_RETRY ? d->attempt : prior.attempt);
        jbuf_lit(x, ",\"code\":");
        jbuf_int(x, op->cls.code);
        if (op->cls.enhanced[0]) {
            jbuf_lit(x, ",\"enhanced\":");
            jbuf_str(x, op->cls.enhanced, strlen(op->cls.enhanced));
        }
        jbuf_lit(x, ",\"reason\":");
        size_t common = x->len;
        if (d->action != ACTION_RETRY) {
            const char *why = reason_name(d->reason);
            enum event_type t = d->action == ACTION_SUPPRESS ? EV_SUPPRESS : EV_GIVE_UP;
            jbuf_str(x, why, strlen(why));
            events[nev] = x->failed ? NULL : event_body_text(t, now, frag, x->p, x->len, &n);
            op->event_types[nev++] = t;
        }
        if (op->alert_claimed) {
            const char *why = alert_reason(p, d->class_idx);
            x->len = common; /* the alert's reason instead */
            jbuf_str(x, why, strlen(why));
            if (r->text) {
                jbuf_lit(x, ",\"text\":");
                jbuf_str(x, r->text, strlen(r->text));
            }
            const char *at = memchr(r->rcpt, '@', r->rcpt_len); /* one, as request.c checked */
            if (at) {
                char dom[256];
                size_t dn = r->rcpt_len - (size_t)(at + 1 - r->rcpt);
                if (dn > sizeof dom - 1)
                    dn = sizeof dom - 1;
                for (size_t i = 0; i < dn; i++)
                    dom[i] = at[1 + i] >= 'A' && at[1 + i] <= 'Z' ? (char)(at[1 + i] - 'A' + 'a') : at[1 + i];
                dom[dn] = '\0';
                jbuf_lit(x, ",\"domain\":");
                jbuf_str(x, dom, strlen(dom));
            }
            jbuf_lit(x, ",\"repeats\":");
            jbuf_int(x, (long long)op->alert_repeats);
            events[nev] = x->failed ? NULL : event_body_text(EV_SENDER_ALERT, now, frag, x->p, x->len, &n);
            op->event_types[nev++] = EV_SENDER_ALERT;
        }
    }
    op->nevents = nev;

    /* The recipient's side (apply.lua): a suppressed address overrides
     * the decision, and a soft bounce counts toward its streak. */
    char barg[STORE_BOUNCE_ARG_MAX];
    store_bounce_arg(barg, d->action == ACTION_RETRY ? 'R' : d->action == ACTION_GIVE_UP ? 'G' : 'S',
                     p->classes[d->class_idx].counts_streak, now, op->cls.code, prior.attempt, cname,
                     op->cls.enhanced, r->campaign, r->id, r->id_len);
    struct store_change ch = {
        .id = r->id,
        .id_len = r->id_len,
        .fragment = frag,
        .op = STORE_OP_BOUNCE,
        .key = r->rcpt,
        .arg = barg,
        .events = (const char *const *)events,
        .nevents = nev,
    };
    if (d->action == ACTION_RETRY) {
        ch.mode = 'S';
        ch.rec.due_ms = d->retry_at;
        ch.rec.first_ms = d->first_ms;
        ch.rec.attempt = d->attempt;
        ch.rec.class_name = cname;
        ch.rec.at_ms = now;
        ch.rec.code = op->cls.code;
        ch.rec.enhanced = op->cls.enhanced;
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
    for (int i = 0; i < nev; i++)
        free(events[i]);
    if (rc != 0)
        bounce_done_cb(op, false, 0);
}

/* Counts the events the write appended: as planned, or, when the address
 * was suppressed, with the outcome event (the first, for a message not
 * retried) replaced by a suppress. */
static void count_events(const struct job *op, bool suppressed)
{
    int skip = suppressed && op->d.action != ACTION_RETRY ? 1 : 0;
    for (int i = skip; i < op->nevents; i++)
        rbd->events_emitted[op->event_types[i]]++;
    if (suppressed)
        rbd->events_emitted[EV_SUPPRESS]++;
    if (op->nevents || suppressed)
        events_notify();
}

/* The entry is idle again: run what waited, and drop it if nothing keeps it. */
static void op_settle(struct entry *e, bool drop)
{
    if (drop)
        entry_become(e, ENTRY_NEW, NULL); /* forgotten, unless a waiter brings it back */
    entry_settle(e);
}

static void bounce_done_cb(void *arg, bool ok, long long result)
{
    struct job *op = arg;
    struct entry *e = op->e;
    const struct decision *d = &op->d;
    e->flags &= ~ENTRY_BUSY;
    if (!ok) {
        /* Nothing changed as far as we know; put the entry back. */
        if (op->was_scheduled && !entry_scheduled(e))
            sched_set_due(rbd->sched, e, op->old_due);
        if (op->alert_claimed)
            domains_alert_unclaim(op->domain, d->class_idx, op->alert_repeats);
        op_unavailable(op);
        op_finish(op);
        op_settle(e, false);
        firing_kick();
        return;
    }
    rbd->reports++;
    bool suppressed = result == STORE_SUPPRESSED_NOW || result == STORE_WAS_SUPPRESSED;
    count_events(op, suppressed);
    domains_report(op->domain, d->class_idx, now_ms());
    const char *cname = rbd->policy->classes[d->class_idx].name;
    counters_report(cname, suppressed ? (int)ACTION_SUPPRESS : (int)d->action);
    bool drop = false;
    /* The reply goes out after the entry's new state is in place: replying
     * may run the connection's next requests at once. */
    if (suppressed) {
        /* The address is suppressed (now, or from before): the message is
         * not retried, whatever its class. */
        drop = true;
        bounce_reply(op, cname, ACTION_SUPPRESS, op->prior_attempt, 0,
                     result == STORE_SUPPRESSED_NOW ? reason_name(REASON_CHRONIC_SOFT) : "suppressed");
    } else if (d->action == ACTION_RETRY) {
        struct entry_facts f = {d->class_idx, d->attempt, d->first_ms, op->domain};
        entry_become(e, ENTRY_PENDING, &f);
        sched_set_due(rbd->sched, e, d->retry_at);
        firing_kick();
        bounce_reply(op, cname, d->action, d->attempt, d->retry_at, NULL);
    } else {
        drop = true;
        bounce_reply(op, cname, d->action, e->attempt, 0, reason_name(d->reason));
    }
    op_finish(op);
    op_settle(e, drop);
}

/* ---- delivered / cancel ---------------------------------------------- */

static void drop_done_cb(void *arg, bool ok, long long result)
{
    struct job *op = arg;
    struct entry *e = op->e;
    if (e)
        e->flags &= ~ENTRY_BUSY;
    if (!ok) {
        if (e && op->was_scheduled && !entry_scheduled(e))
            sched_set_due(rbd->sched, e, op->old_due);
        op_unavailable(op);
        op_finish(op);
        if (e) {
            op_settle(e, false);
            firing_kick();
        }
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
    json_object_set_new(o, "found", json_boolean(e != NULL));
    if (op->req.op == OP_DELIVERED) {
        json_object_set_new(o, "unsuppressed", json_boolean(result > 0));
        /* The domain takes mail again: its back-off, if any, ends now. */
        domains_delivered(op->domain, now_ms());
    }
    reply_obj(op->conn, op->slot, op->req.req, o);
    op_finish(op);
    if (e) {
        sched_unset_due(rbd->sched, e);
        op_settle(e, true);
    }
}

/* cancel drops the message; delivered also resets its recipient's streak
 * and lifts a suppression (the address takes mail after all), which needs
 * a write even for a message reboundd does not know, when it names the
 * recipient. */
static void drop_run(struct job *op, struct entry *e)
{
    bool known = e && e->state != ENTRY_NEW;
    bool delivered = op->req.op == OP_DELIVERED;
    if (!known && !(delivered && op->req.rcpt)) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
        json_object_set_new(o, "found", json_false());
        if (delivered)
            json_object_set_new(o, "unsuppressed", json_false());
        reply_obj(op->conn, op->slot, op->req.req, o);
        op_finish(op);
        return;
    }
    if (!store_usable()) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    struct store_change ch = {.id = op->req.id, .id_len = op->req.id_len, .mode = known ? 'D' : '-'};
    if (delivered) {
        ch.op = STORE_OP_RESET;
        ch.key = op->req.rcpt ? op->req.rcpt : ""; /* "": the recipient in the message's record */
        op->domain = op->req.rcpt ? domains_of_rcpt(op->req.rcpt, op->req.rcpt_len, false, now_ms()) : entry_domain(e);
        domains_ref(op->domain);
    }
    if (known) {
        op->e = e;
        op->was_scheduled = entry_scheduled(e);
        op->old_due = e->node.due_ms;
        e->flags |= ENTRY_BUSY;
    }
    if (store_queue(&ch, drop_done_cb, op) != 0)
        drop_done_cb(op, false, 0);
}

/* ---- unsuppress ------------------------------------------------------- */

static void unsuppress_done_cb(void *arg, bool ok, long long result)
{
    struct job *op = arg;
    if (!ok) {
        op_unavailable(op);
    } else {
        json_t *o = json_object();
        json_object_set_new(o, "rcpt", json_string(op->req.rcpt));
        json_object_set_new(o, "found", json_boolean(result > 0));
        reply_obj(op->conn, op->slot, op->req.req, o);
    }
    op_finish(op);
}

static void unsuppress_run(struct job *op)
{
    struct store_change ch = {.id = "", .id_len = 0, .mode = '-', .op = STORE_OP_UNSUPPRESS, .key = op->req.rcpt};
    if (!store_usable()) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    if (store_queue(&ch, unsuppress_done_cb, op) != 0)
        unsuppress_done_cb(op, false, 0);
}

/* ---- suppressed: the list, a page at a time ---------------------------- */

struct page {
    struct job *op;
    json_t *out;
    int replies; /* of the two commands */
    bool failed;
};

static void page_reply_cb(void *arg, redisReply *reply)
{
    struct page *pg = arg;
    pg->replies++;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        pg->failed = true;
    } else if (reply->type == REDIS_REPLY_INTEGER) {
        json_object_set_new(pg->out, "total", json_integer(reply->integer));
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
               reply->element[0]->type == REDIS_REPLY_STRING && reply->element[1]->type == REDIS_REPLY_ARRAY) {
        redisReply *items = reply->element[1];
        json_t *arr = json_array();
        for (size_t i = 0; i + 1 < items->elements; i += 2) {
            redisReply *k = items->element[i], *v = items->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            json_t *it = json_object();
            json_object_set_new(it, "rcpt", json_stringn(k->str, k->len));
            const char *comma = memchr(v->str, ',', v->len);
            json_object_set_new(it, "reason", json_stringn(v->str, comma ? (size_t)(comma - v->str) : v->len));
            if (comma)
                json_object_set_new(it, "at", json_integer(strtoll(comma + 1, NULL, 10)));
            json_array_append_new(arr, it);
        }
        json_object_set_new(pg->out, "cursor", json_stringn(reply->element[0]->str, reply->element[0]->len));
        json_object_set_new(pg->out, "items", arr);
    } else {
        pg->failed = true;
    }
    if (pg->replies < 2)
        return;
    struct job *op = pg->op;
    if (pg->failed) {
        json_decref(pg->out);
        op_unavailable(op);
    } else {
        reply_obj(op->conn, op->slot, op->req.req, pg->out);
    }
    op_finish(op);
    free(pg);
}

static void suppressed_run(struct job *op)
{
    if (!store_usable()) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    char count[16];
    snprintf(count, sizeof count, "%d", op->req.count);
    const char *scan[] = {"HSCAN", rbd->key_supp, op->req.cursor, "COUNT", count};
    const char *len[] = {"HLEN", rbd->key_supp};
    size_t scan_lens[5], len_lens[2];
    for (int i = 0; i < 5; i++)
        scan_lens[i] = strlen(scan[i]);
    for (int i = 0; i < 2; i++)
        len_lens[i] = strlen(len[i]);
    struct page *pg = xcalloc(1, sizeof *pg);
    pg->op = op;
    pg->out = json_object();
    /* Both go out now on the one connection; the second reply finishes. */
    if (store_command(5, scan, scan_lens, page_reply_cb, pg) != 0) {
        json_decref(pg->out);
        free(pg);
        op_unavailable(op);
        op_finish(op);
        return;
    }
    if (store_command(2, len, len_lens, page_reply_cb, pg) != 0)
        page_reply_cb(pg, NULL);
}

/* ---- get ------------------------------------------------------------- */

/* The recipient part of get: its streak, and whether it is suppressed. */
static json_t *recipient_json(redisReply *streak, redisReply *supp, redisReply *addr)
{
    const struct policy *p = rbd->policy;
    json_t *o = json_object();
    struct rcpt_record rr;
    if (addr->type == REDIS_REPLY_STRING)
        json_object_set_new(o, "address", json_stringn(addr->str, addr->len));
    if (streak->type == REDIS_REPLY_STRING && rcpt_record_parse(streak->str, streak->len, &rr) == 0) {
        json_object_set_new(o, "streak", json_integer(rr.streak));
        json_object_set_new(o, "soft_bounces", json_integer(rr.soft));
        json_object_set_new(o, "first_soft_at", json_integer(rr.first_ms));
        json_object_set_new(o, "last_soft_at", json_integer(rr.last_ms));
        json_t *classes = json_array();
        for (const char *c = rr.classes, *end = rr.classes + rr.classes_len; c < end;) {
            const char *bar = memchr(c, '|', (size_t)(end - c));
            const char *stop = bar ? bar : end;
            if (stop > c)
                json_array_append_new(classes, json_stringn(c, (size_t)(stop - c)));
            c = stop + 1;
        }
        json_object_set_new(o, "classes", classes);
        if (rr.campaign_len > 1)
            json_object_set_new(o, rr.campaign[0] == 'c' ? "last_campaign" : "last_message",
                                json_stringn(rr.campaign + 1, rr.campaign_len - 1));
    } else {
        json_object_set_new(o, "streak", json_integer(0));
        json_object_set_new(o, "soft_bounces", json_integer(0));
    }
    json_object_set_new(o, "streak_limit", json_integer(p->streak_campaigns));
    json_object_set_new(o, "suppressed", json_boolean(supp->type == REDIS_REPLY_STRING));
    if (supp->type == REDIS_REPLY_STRING) {
        const char *comma = memchr(supp->str, ',', supp->len);
        json_object_set_new(o, "suppressed_reason",
                            json_stringn(supp->str, comma ? (size_t)(comma - supp->str) : supp->len));
        if (comma)
            json_object_set_new(o, "suppressed_at", json_integer(strtoll(comma + 1, NULL, 10)));
    }
    return o;
}

static void get_reply_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    struct record rec;
    redisReply *msg = NULL;
    if (!reply) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        reply_err(op->conn, op->slot, op->req.req, ERR_INTERNAL,
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply from Redis");
        op_finish(op);
        return;
    }
    msg = reply->element[0];
    json_t *rcpt = NULL;
    if (reply->element[3]->type == REDIS_REPLY_STRING)
        rcpt = recipient_json(reply->element[1], reply->element[2], reply->element[3]);
    if (!op->req.id) {
        /* get by recipient */
        json_t *o = json_object();
        json_object_set_new(o, "rcpt", json_string(op->req.rcpt));
        json_object_set_new(o, "recipient", rcpt ? rcpt : json_object());
        reply_obj(op->conn, op->slot, op->req.req, o);
    } else if (msg->type != REDIS_REPLY_STRING) {
        json_decref(rcpt);
        reply_err(op->conn, op->slot, op->req.req, ERR_NOT_FOUND, "no pending or awaiting message with this id");
    } else if (record_parse(msg->str, msg->len, &rec) != 0) {
        json_decref(rcpt);
        reply_err(op->conn, op->slot, op->req.req, ERR_INTERNAL, "the stored record is malformed");
    } else {
        json_t *o = record_json(&rec, op->req.id, op->req.id_len);
        if (rcpt)
            json_object_set_new(o, "recipient", rcpt);
        reply_obj(op->conn, op->slot, op->req.req, o);
    }
    op_finish(op);
}

static void get_run(struct job *op)
{
    if (!store_usable() ||
        store_get_with_rcpt(op->req.id, op->req.id_len, op->req.id ? NULL : op->req.rcpt, get_reply_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}

/* ---- stats ----------------------------------------------------------- */

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
    struct due_counts dc = entry_due_counts(now_ms());
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
    json_object_set_new(o, "domains", domains_stats_json(now_ms()));
    return o;
}

/* ---- dispatch -------------------------------------------------------- */

static void op_run(struct job *op)
{
    if (!op->req.id) {
        /* About an address, not a message: nothing to wait for (writes
         * for one address are applied in request order by the batch). */
        if (op->req.op == OP_UNSUPPRESS)
            unsuppress_run(op);
        else if (op->req.op == OP_SUPPRESSED)
            suppressed_run(op);
        else if (op->req.op == OP_GET)
            get_run(op);
        else
            op_finish(op);
        return;
    }
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
    while (entry_has_waiters(e) && !(e->flags & ENTRY_BUSY)) {
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
    struct job *op = job_new();
    struct request *r = &op->req;
    struct proto_error err;
    if (request_parse_buf(line, len, &rbd->limits, r, &err, op->copies, sizeof op->copies) != 0) {
        reply_err(c, s, r->req, err.code, err.message);
        job_release(op);
        return;
    }
    if (!c->authed && r->op != OP_AUTH && r->op != OP_PING) {
        reply_err(c, s, r->req, ERR_AUTH, "this server requires {\"op\":\"auth\",\"token\":...} first");
        job_release(op);
        return;
    }
    switch (r->op) {
    case OP_PING:
        reply_obj(c, s, r->req, NULL);
        break;
    case OP_AUTH:
        if (rbd->cfg.token[0] && !token_equal(r->token, rbd->cfg.token)) {
            reply_err(c, s, r->req, ERR_AUTH, "wrong token");
        } else {
            c->authed = true;
            reply_obj(c, s, r->req, NULL);
        }
        break;
    case OP_CLASSIFY: {
        struct classification cls;
        classify_reply(rbd->policy, r->code, r->enhanced, r->text, &cls);
        reply_obj(c, s, r->req, explain_classification(rbd->policy, &cls));
        break;
    }
    case OP_STATS:
        reply_obj(c, s, r->req, stats_json());
        break;
    case OP_SUBSCRIBE:
        events_subscribe(c, s, r);
        break;
    case OP_ACK:
        events_ack(c, s, r);
        break;
    case OP_DOMAIN:
        reply_obj(c, s, r->req, domains_json(r->domain, r->domain_len, now_ms()));
        break;
    case OP_BOUNCE:
    case OP_DELIVERED:
    case OP_CANCEL:
    case OP_GET:
    case OP_UNSUPPRESS:
    case OP_SUPPRESSED:
        op->conn = c;
        op->slot = s;
        conn_ref(c);
        op_run(op);
        return; /* op finishes the request */
    default:
        reply_err(c, s, r->req, ERR_UNKNOWN_OP, "unknown op");
        break;
    }
    job_release(op);
}
