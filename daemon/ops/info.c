/*
 * The ops that answer from memory at once: ping, auth, classify, stats,
 * domain.
 */
#include <string.h>

#include "base/daemon.h"
#include "config/explain.h"
#include "net/conn.h"
#include "net/peer.h"
#include "ops/job.h"
#include "proto/event.h"
#include "proto/reply.h"
#include "queue/classify.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/learned.h"
#include "queue/shard.h"
#include "schedule/lease.h"
#include "store/store.h"

void op_ping(struct job *op)
{
    op_reply(op, NULL);
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

void op_auth(struct job *op)
{
    if (rbd->cfg.token[0] && !token_equal(op->req.token, rbd->cfg.token)) {
        op_error(op, ERR_AUTH, "wrong token");
        conn_auth_failed(op->conn);
    } else {
        op->conn->authed = true;
        op_reply(op, NULL);
    }
}

/* ---- learned timing ----------------------------------------------------- */

/* classify knows no domain: it says whether a retry of the class may be
 * timed by what its domain taught (learned), on what terms (learn), and
 * that the forecast is the table's, what a domain without evidence gets. */
static void classify_learn_json(json_t *o, const struct classification *cls)
{
    const struct policy_class *cl = &rbd->policy->classes[cls->class_idx];
    const struct policy_learn *lc = &cl->learn;
    json_object_set_new(o, "learned", json_boolean(lc->enabled && !cls->stated_wait_ms));
    if (!lc->enabled)
        return;
    json_t *l = json_object();
    json_object_set_new(l, "min_evidence", json_integer(lc->min_evidence));
    if (lc->margin_ms)
        json_object_set_new(l, "margin_ms", json_integer(lc->margin_ms));
    else
        json_object_set_new(l, "margin_pct", json_integer(lc->margin_pct));
    json_object_set_new(l, "jitter_pct", json_integer(lc->jitter_pct));
    json_object_set_new(l, "forget_after_ms", json_integer(lc->forget_ms));
    json_object_set_new(o, "learn", l);
}

/* The domain op's and stats' learned parts. */
static void domain_learn_json(json_t *o, const char *name, size_t len)
{
    json_t *l = learned_domain_json(name, len, now_ms());
    json_object_set_new(o, "learned", l ? l : json_object());
}

void op_classify(struct job *op)
{
    const struct request *r = &op->req;
    struct classification cls;
    classify_reply(rbd->policy, r->code, r->enhanced, r->text, &cls);
    json_t *o = explain_classification(rbd->policy, &cls);
    classify_learn_json(o, &cls);
    op_reply(op, o);
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
    /* with shards: every shard this instance holds is read back */
    json_object_set_new(o, "loaded", json_boolean(rbd->loaded && rbd->shards_served == rbd->shards_held));
    json_object_set_new(o, "uptime_s", json_integer((now_ms() - rbd->started_ms) / 1000));
    json_object_set_new(o, "connections", json_integer(rbd->nconns));
    json_object_set_new(o, "domains", domains_stats_json(now_ms()));
    json_object_set_new(o, "learned", learned_stats_json());
    /* several reboundd on one Redis (schedule/lease.c) */
    if (rbd->cfg.lease_ttl_ms > 0)
        json_object_set_new(o, "lease",
                            json_pack("{sssIsssIsIsIsIsIsI}", "role", lease_role_name(), "epoch",
                                      (json_int_t)rbd->lease_epoch, "owner", lease_owner_addr(), "takeovers",
                                      (json_int_t)rbd->lease_takeovers, "fenced_writes",
                                      (json_int_t)rbd->lease_fenced_writes, "renew_failures",
                                      (json_int_t)rbd->lease_renew_failures, "self_fenced",
                                      (json_int_t)rbd->lease_self_fenced, "forwarded",
                                      (json_int_t)peer_forwarded(), "forward_failed", (json_int_t)peer_failed()));
    /* shards: this instance's (stats is asked of every instance and merged:
     * the rest of its numbers are the whole schedule's) */
    if (rbd->cfg.lease_ttl_ms > 0 && rbd->cfg.shards >= 2) {
        json_t *serving = json_array();
        for (int k = 0; k < lease_shards(); k++)
            if (lease_shard_serving(k))
                json_array_append_new(serving, json_integer(k));
        json_object_set_new(o, "shards",
                            json_pack("{sisosIsIsI}", "count", lease_shards(), "serving", serving, "loading",
                                      (json_int_t)shard_count(rbd->shards_held & ~rbd->shards_served), "forwarded",
                                      (json_int_t)rbd->shards_forwarded, "shed", (json_int_t)rbd->shards_shed));
    }
    return o;
}
void op_stats(struct job *op)
{
    op_reply(op, stats_json());
}

void op_domain(struct job *op)
{
    json_t *o = domains_json(op->req.domain, op->req.domain_len, now_ms());
    domain_learn_json(o, op->req.domain, op->req.domain_len);
    op_reply(op, o);
}
