/*
 * delivered and cancel: the message is done with (delivered after all, or
 * withdrawn by the sender); its record goes, and delivered also resets its
 * recipient's streak and ends the domain's back-off.
 */
#include <string.h>

#include "base/daemon.h"
#include "ops/job.h"
#include "proto/request.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "schedule/learned.h"
#include "store/store.h"

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
    op_reply(op, o);
    op_finish(op);
    if (e) {
        sched_unset_due(rbd->sched, e);
        op_settle(e, true);
    }
}

/* ---- learned timing ----------------------------------------------------- */

/* A delivered message that had been retried in a class that learns teaches
 * its domain when it accepts: after how many attempts, how long after the
 * first deferral. Queued behind the delivered report's own change, in the
 * same batch. */
static void drop_learn(const struct job *op, const struct entry *e, int64_t now)
{
    /* A pending entry's attempt is the retry still to come: the delivery
     * came from elsewhere, after the retries before it. */
    int retries = e->state == ENTRY_AWAITING ? e->attempt : e->attempt - 1;
    if (retries < 1 || e->class_idx >= rbd->policy->nclasses)
        return;
    const struct policy_class *cl = &rbd->policy->classes[e->class_idx];
    if (!cl->learn.enabled)
        return;
    char name[LEARNED_NAME_MAX + 1];
    size_t n = 0;
    if (op->req.rcpt) {
        n = learned_name_of_rcpt(op->req.rcpt, op->req.rcpt_len, name);
    } else {
        const char *dn = domains_name(entry_domain(e));
        n = dn ? learned_name(dn, strlen(dn), name) : 0;
    }
    if (!n)
        return;
    struct learn_domain *st = learned_touch(name, n);
    learn_delivered(st, learn_class_key(cl->name), retries, now - e->first_ms, now);
    op_learn_write(name, n, st);
}

/* cancel drops the message; delivered also resets its recipient's streak
 * and lifts a suppression (the address takes mail after all), which needs
 * a write even for a message reboundd does not know, when it names the
 * recipient. */
void op_drop(struct job *op)
{
    if (!op->req.id) {
        op_bulk(op); /* cancel by domain or campaign */
        return;
    }
    struct entry *e = op->e;
    op->e = NULL; /* set again below when the write is about the entry */
    bool known = e && e->state != ENTRY_NEW;
    bool delivered = op->req.op == OP_DELIVERED;
    if (!known && !(delivered && op->req.rcpt)) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
        json_object_set_new(o, "found", json_false());
        if (delivered)
            json_object_set_new(o, "unsuppressed", json_false());
        op_reply(op, o);
        op_finish(op);
        return;
    }
    if (!op_store_usable(op))
        return;
    struct store_change ch = {.shard = op->shard, .id = op->req.id, .id_len = op->req.id_len, .mode = known ? 'D' : '-'};
    if (delivered) {
        ch.op = STORE_OP_RESET;
        ch.key = op->req.rcpt ? op->req.rcpt : ""; /* "": the recipient in the message's record */
        op->domain = op->req.rcpt ? domains_of_rcpt(op->req.rcpt, op->req.rcpt_len, false, now_ms()) : entry_domain(e);
        domains_ref(op->domain);
    }
    char story[HISTORY_STORY_MAX];
    if (known && delivered && rbd->cfg.history_retention_ms > 0)
        history_change(&ch, story, "delivered", "delivered", e->attempt, e->first_ms, NULL, now_ms(), 0, NULL);
    if (known) {
        op->e = e;
        op->was_scheduled = entry_scheduled(e);
        op->old_due = e->node.due_ms;
        e->flags |= ENTRY_BUSY;
    }
    if (store_queue(&ch, drop_done_cb, op) != 0) {
        drop_done_cb(op, false, 0);
        return;
    }
    if (delivered && known)
        drop_learn(op, e, now_ms());
}