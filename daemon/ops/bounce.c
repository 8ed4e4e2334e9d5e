/*
 * bounce: a report of a failed delivery. Classify the reply, decide from
 * the message's committed state (queue/decide.c), write the record's new
 * state with its events (the store's batch, apply.lua, which may override
 * the decision when the address is suppressed), and only then change the
 * entry and reply.
 */
#include <stdlib.h>
#include <string.h>

#include "base/ascii.h"
#include "base/counters.h"
#include "base/daemon.h"
#include "events/events.h"
#include "net/conn.h"
#include "ops/job.h"
#include "proto/event.h"
#include "proto/jbuf.h"
#include "proto/reply.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "schedule/learned.h"
#include "store/store.h"

static struct classify_cache class_cache;
/* Scratch buffers, reused by every report: what is written into them is
 * copied out (to the connection, to the store's batch) before they are
 * written again. */
static struct jbuf reply_buf, frag_buf, extra_buf;

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
        if (op->d.learned && op->d.action == ACTION_RETRY && op->d.retry_at == retry_at) {
            jbuf_lit(b, ",\"learned\":true");
            if (op->d.learned_ms > 0) {
                jbuf_lit(b, ",\"learned_ms\":");
                jbuf_int(b, op->d.learned_ms);
            }
        }
    } else {
        jbuf_lit(b, ",\"reason\":");
        jbuf_str(b, reason, strlen(reason));
    }
    if (!reply_end(b)) {
        op_error(op, ERR_INTERNAL, "the reply could not be encoded");
        return;
    }
    conn_reply_copy(op->conn, op->slot, b->p, b->len);
}

static const char *alert_reason(const struct policy *p, int class_idx)
{
    return p->classes[class_idx].name;
}

static void bounce_done_cb(void *arg, bool ok, long long result);

/* ---- learned timing ----------------------------------------------------- */

/* The learned state's own write needs no answer of its own: it travels in
 * the report's batch, so Redis applies both or neither. */
static void learn_write_cb(void *arg, bool ok, long long result)
{
    (void)arg;
    (void)ok;
    (void)result;
}

/* Queues domain `name`'s learned state behind the report's change, in the
 * same batch (the same atomic apply.lua call). */
void op_learn_write(const char *name, size_t len, const struct learn_domain *st)
{
    char text[LEARN_ENCODED_MAX];
    if (!learn_encode(st, text, sizeof text))
        return;
    char key[LEARNED_NAME_MAX + 1];
    memcpy(key, name, len);
    key[len] = '\0';
    struct store_change ch = {.id = "", .id_len = 0, .mode = '-', .op = STORE_OP_LEARN, .key = key, .arg = text};
    store_queue(&ch, learn_write_cb, NULL);
}

/* The receiving domain's learned state for a report in a class that
 * learns, or NULL. A report for a message already retried is a retry
 * deferred again: the state learns that first. The state in memory changes
 * at once rather than when Redis answers, so that two reports for one
 * domain in one batch both count and the last write carries both; *write
 * says the state changed and must be written with the report. */
static const struct learn_domain *bounce_learned(const struct job *op, const struct prior *prior, int64_t now,
                                                 char *name, size_t *name_len, bool *write)
{
    const struct policy_class *cl = &rbd->policy->classes[op->cls.class_idx];
    const struct request *r = &op->req;
    *write = false;
    if (!cl->learn.enabled || !(*name_len = learned_name_of_rcpt(r->rcpt, r->rcpt_len, name)))
        return NULL;
    if (prior->attempt < 1)
        return learned_find(name, *name_len);
    struct learn_domain *st = learned_touch(name, *name_len);
    learn_deferred(st, learn_class_key(cl->name), now - prior->first_ms, now);
    *write = true;
    return st;
}

/* The events a report raises besides its record's change, built into
 * events[] (malloc'd bodies, NULL where one could not be encoded): a
 * give_up or suppress for a message not retried, and the window's
 * sender_alert when this report claims it. Returns how many. Most reports
 * (a retry, no alert) raise none and build nothing. */
static int bounce_events(struct job *op, const char *frag, int64_t now, char **events)
{
    const struct request *r = &op->req;
    const struct policy *p = rbd->policy;
    const struct decision *d = &op->d;
    const char *cname = p->classes[d->class_idx].name;
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
        jbuf_int(x, d->action == ACTION_RETRY ? d->attempt : op->prior_attempt);
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
                ascii_lower(dom, at + 1, dn);
                dom[dn] = '\0';
                jbuf_lit(x, ",\"domain\":");
                jbuf_str(x, dom, strlen(dom));
            }
            jbuf_lit(x, ",\"repeats\":");
            jbuf_int(x, (long long)op->alert_repeats);
            events[nev] = x->failed ? NULL : event_body_text(EV_SENDER_ALERT, now, frag, x->p, x->len, &n);
            /* With shards the alert is raised once across the instances
             * (domains_alert_shared), not with this report. */
            if (events[nev] && domains_alert_shared(op->domain, d->class_idx, events[nev]))
                free(events[nev]);
            else
                op->event_types[nev++] = EV_SENDER_ALERT;
        }
    }
    return nev;
}

/* The report's change for the store: the record's new state (or its
 * deletion), the recipient's side for apply.lua, and the events. */
static void bounce_change(const struct job *op, const struct entry *e, const char *frag, int64_t now,
                          char *barg, char **events, int nev, struct store_change *ch, char *story)
{
    const struct request *r = &op->req;
    const struct policy *p = rbd->policy;
    const struct decision *d = &op->d;
    const char *cname = p->classes[d->class_idx].name;
    /* The recipient's side (apply.lua): a suppressed address overrides
     * the decision, and a soft bounce counts toward its streak. */
    store_bounce_arg(barg, d->action == ACTION_RETRY ? 'R' : d->action == ACTION_GIVE_UP ? 'G' : 'S',
                     p->classes[d->class_idx].counts_streak, now, op->cls.code, op->prior_attempt, cname,
                     op->cls.enhanced, r->campaign, r->id, r->id_len);
    *ch = (struct store_change){
        .shard = op->shard,
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
        ch->mode = 'S';
        ch->rec.due_ms = d->retry_at;
        ch->rec.first_ms = d->first_ms;
        ch->rec.attempt = d->attempt;
        ch->rec.class_name = cname;
        ch->rec.at_ms = now;
        ch->rec.code = op->cls.code;
        ch->rec.enhanced = op->cls.enhanced;
    } else {
        ch->mode = e ? 'D' : '-';
    }
    /* The message ends here: its story goes to the history (op history). */
    if (d->action != ACTION_RETRY && rbd->cfg.history_retention_ms > 0)
        history_change(ch, story, d->action == ACTION_SUPPRESS ? "suppress" : "give_up", reason_name(d->reason),
                       op->prior_attempt, d->first_ms ? d->first_ms : now, cname, now, op->cls.code,
                       op->cls.enhanced);
}

void op_bounce(struct job *op)
{
    struct entry *e = op->e;
    const struct request *r = &op->req;
    const struct policy *p = rbd->policy;
    op->e = NULL;

    if (e && e->state == ENTRY_PENDING) {
        /* The client re-sent a report whose retry is still pending. */
        if (e->flags & ENTRY_LEARNED) { /* the same reply: say it was learned (the age is not kept) */
            op->d.learned = true;
            op->d.action = ACTION_RETRY;
            op->d.retry_at = e->node.due_ms;
        }
        bounce_reply(op, p->classes[e->class_idx].name, ACTION_RETRY, e->attempt, e->node.due_ms, NULL);
        op_finish(op);
        return;
    }
    if (!op_store_usable(op))
        return;

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
    char lname[LEARNED_NAME_MAX + 1];
    size_t lname_len = 0;
    bool lwrite = false;
    const struct learn_domain *learned = bounce_learned(op, &prior, now, lname, &lname_len, &lwrite);
    decide_bounce_learned(p, &op->cls, &prior, learned, now, r->not_before, &rbd->rng, &op->d);
    op->prior_attempt = prior.attempt;
    op->domain = domains_of_rcpt(r->rcpt, r->rcpt_len, true, now);
    domains_ref(op->domain);

    jbuf_reset(&frag_buf);
    event_msg_fragment_put(&frag_buf, r->id, r->rcpt, r->campaign, r->meta);
    const char *frag = jbuf_cstr(&frag_buf);
    char *events[3];
    int nev = bounce_events(op, frag, now, events);
    op->nevents = nev;
    char barg[STORE_BOUNCE_ARG_MAX];
    char story[HISTORY_STORY_MAX];
    struct store_change ch;
    bounce_change(op, e, frag, now, barg, events, nev, &ch, story);

    if (!e) {
        e = sched_add(rbd->sched, r->id, r->id_len);
        if (op->shard)
            entry_set_shard(e, op->shard);
    }
    op->e = e;
    op->was_scheduled = entry_scheduled(e);
    op->old_due = e->node.due_ms;
    e->flags |= ENTRY_BUSY;
    int rc = store_queue(&ch, bounce_done_cb, op);
    if (rc == 0 && lwrite)
        op_learn_write(lname, lname_len, learned);
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
        /* get says whether the pending retry's time was learned. */
        if (d->learned) {
            e->flags |= ENTRY_LEARNED;
            learned_retries++;
        } else {
            e->flags &= (uint8_t)~ENTRY_LEARNED;
        }
        firing_kick();
        bounce_reply(op, cname, d->action, d->attempt, d->retry_at, NULL);
    } else {
        drop = true;
        bounce_reply(op, cname, d->action, e->attempt, 0, reason_name(d->reason));
    }
    op_finish(op);
    op_settle(e, drop);
}