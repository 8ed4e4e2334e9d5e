/*
 * The recipient's side: get (a message's record with its recipient's
 * streak and suppression, or a recipient's alone), unsuppress, and the
 * suppressed list a page at a time.
 */
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/xmalloc.h"
#include "ops/job.h"
#include "proto/record.h"
#include "proto/reply.h"
#include "store/store.h"

static void unsuppress_done_cb(void *arg, bool ok, long long result)
{
    struct job *op = arg;
    if (!ok) {
        op_unavailable(op);
    } else {
        json_t *o = json_object();
        json_object_set_new(o, "rcpt", json_string(op->req.rcpt));
        json_object_set_new(o, "found", json_boolean(result > 0));
        op_reply(op, o);
    }
    op_finish(op);
}

void op_unsuppress(struct job *op)
{
    struct store_change ch = {.id = "", .id_len = 0, .mode = '-', .op = STORE_OP_UNSUPPRESS, .key = op->req.rcpt};
    if (!op_store_usable(op))
        return;
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
        op_reply(op, pg->out);
    }
    op_finish(op);
    free(pg);
}

void op_suppressed(struct job *op)
{
    if (!op_store_usable(op))
        return;
    struct page *pg = xcalloc(1, sizeof *pg);
    pg->op = op;
    pg->out = json_object();
    /* The second reply finishes. */
    if (store_suppressed_page(op->req.cursor, op->req.count, page_reply_cb, pg) != 0) {
        json_decref(pg->out);
        free(pg);
        op_unavailable(op);
        op_finish(op);
    }
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

/* Whether the pending retry's time came from its domain's learned timing:
 * the entry's flag, set by the decisions made since the daemon started (a
 * retry read back at start says false until its next decision). */
static void get_learned_json(json_t *o, const char *id, size_t id_len)
{
    const struct entry *e = sched_find(rbd->sched, id, id_len);
    json_object_set_new(o, "learned", json_boolean(e && e->state == ENTRY_PENDING && (e->flags & ENTRY_LEARNED)));
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
        op_error(op, ERR_INTERNAL,
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
        op_reply(op, o);
    } else if (msg->type != REDIS_REPLY_STRING) {
        json_decref(rcpt);
        op_error(op, ERR_NOT_FOUND,
                 "no pending or awaiting message with this id; a finished one: {\"op\":\"history\",\"id\":...}");
    } else if (record_parse(msg->str, msg->len, &rec) != 0) {
        json_decref(rcpt);
        op_error(op, ERR_INTERNAL, "the stored record is malformed");
    } else {
        json_t *o = record_json(&rec, op->req.id, op->req.id_len);
        get_learned_json(o, op->req.id, op->req.id_len);
        if (rcpt)
            json_object_set_new(o, "recipient", rcpt);
        op_reply(op, o);
    }
    op_finish(op);
}

void op_get(struct job *op)
{
    op->e = NULL; /* read from Redis: the record is the truth */
    if (!op_store_usable(op))
        return;
    if (store_get_with_rcpt(op->shard, op->req.id, op->req.id_len, op->req.id ? NULL : op->req.rcpt, get_reply_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}