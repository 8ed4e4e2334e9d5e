/*
 * retry_now, and the bulk form it shares with cancel: every message of a
 * domain or a campaign.
 *
 * retry_now makes a pending retry due now: its record is rewritten first
 * (so a restart keeps it due), then its entry moves to the front of the
 * heap; firing then gives it its retry event as for any retry, asking its
 * domain first, so the domain's pace applies and a held domain keeps it
 * until released. cancel by domain or campaign deletes the records (no
 * event), then forgets the entries.
 *
 * A bulk op on 100,000 messages must not stall the other clients: it
 * first gathers the ids (from memory for a domain: one pass over the
 * schedule; from the records for a campaign, which memory does not hold:
 * HSCAN pages of BULK_SCAN records, one per round trip), then works
 * through them a slice at a time (BULK_SLICE, BULK_SLICE_RETRY ids), one
 * Redis command per slice and one slice in flight, so every other client's
 * batch goes to Redis between two slices. The entries of a slice are busy while its command is in flight;
 * a message with a write of its own in flight then is left out.
 */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "ops/job.h"
#include "proto/jbuf.h"
#include "proto/record.h"
#include "schedule/domains.h"
#include "schedule/lease.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "store/store.h"

/* Ids per Redis command, sized so that a slice costs Redis about a
 * millisecond or two (an HDEL of 200 records; retry_now's script reads
 * and rewrites each record, 100 of them): another client's write waits
 * for at most one slice. */
#define BULK_SLICE 200
#define BULK_SLICE_RETRY 100
#define BULK_SCAN "1000"

struct bulk {
    struct job *op;
    bool cancel;
    char **ids; /* gathered */
    size_t n, cap, next;
    char cursor[32]; /* campaign: the HSCAN cursor */
    char *needle;    /* campaign: ,"campaign":"<name>" as records hold it */
    size_t needle_len;
    uint64_t count;
    int64_t started;
    struct entry *slice[BULK_SLICE];
    const char *slice_ids[BULK_SLICE];
    size_t slice_lens[BULK_SLICE];
    size_t nslice;
    int slice_shard; /* a slice is of one shard (each is fenced by its own) */
    int scan_shard;  /* campaign: the shard being scanned */
};

static bool wanted(const struct bulk *b, const struct entry *e)
{
    return b->cancel ? e->state != ENTRY_NEW : e->state == ENTRY_PENDING;
}

static void add_id(struct bulk *b, const char *id, size_t len)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->ids = xrealloc(b->ids, b->cap * sizeof *b->ids);
    }
    b->ids[b->n++] = xstrndup(id, len);
}

static void bulk_free(struct bulk *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->ids[i]);
    free(b->ids);
    free(b->needle);
    free(b);
}

static void bulk_end(struct bulk *b, bool ok)
{
    struct job *op = b->op;
    if (ok) {
        json_t *o = json_object();
        json_object_set_new(o, "count", json_integer((json_int_t)b->count));
        op_reply(op, o);
        log_info("%s: %llu messages (%zu gathered) in %lld ms", b->cancel ? "cancel" : "retry_now",
                 (unsigned long long)b->count, b->n, (long long)(now_ms() - b->started));
    } else {
        char msg[160];
        snprintf(msg, sizeof msg, "%s; %llu messages were done before, retry later for the rest",
                 rbd->stopping ? "reboundd is shutting down" : "Redis is not available", (unsigned long long)b->count);
        op_error(op, ERR_UNAVAILABLE, msg);
    }
    op_finish(op);
    bulk_free(b);
}

static void next_slice(struct bulk *b);

static void slice_cb(void *arg, redisReply *reply)
{
    struct bulk *b = arg;
    bool ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (ok && !b->cancel && (reply->type != REDIS_REPLY_ARRAY || reply->elements != b->nslice))
        ok = false;
    int64_t now = now_ms();
    for (size_t i = 0; i < b->nslice; i++) {
        struct entry *e = b->slice[i];
        e->flags &= (uint8_t)~ENTRY_BUSY;
        bool drop = false;
        if (ok && b->cancel) {
            sched_unset_due(rbd->sched, e);
            drop = true;
            b->count++;
        } else if (ok && reply->element[i]->type == REDIS_REPLY_INTEGER && reply->element[i]->integer == 1 &&
                   e->state == ENTRY_PENDING) {
            domains_entry_unplace(e);
            sched_set_due(rbd->sched, e, now);
            b->count++;
        }
        op_settle(e, drop);
    }
    b->nslice = 0;
    firing_kick();
    if (!ok) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_warn("%s: Redis refused a slice: %s", b->cancel ? "cancel" : "retry_now", reply->str);
        bulk_end(b, false);
        return;
    }
    next_slice(b);
}

/* Sends the next slice of the gathered ids that are still known, idle and
 * wanted; ends the op when none is left. */
static void next_slice(struct bulk *b)
{
    /* A drain waits for what is in Redis; it does not wait for the rest
     * of a bulk op. */
    if (rbd->stopping) {
        bulk_end(b, false);
        return;
    }
    size_t max = b->cancel ? BULK_SLICE : BULK_SLICE_RETRY;
    while (b->nslice < max && b->next < b->n) {
        const char *id = b->ids[b->next++];
        struct entry *e = sched_find(rbd->sched, id, strlen(id));
        if (!e || (e->flags & (ENTRY_BUSY | ENTRY_FIRING)) || !wanted(b, e))
            continue;
        if (rbd->cfg.shards >= 2 && !lease_shard_serving(entry_shard(e)))
            continue; /* its shard is not served here (any more) */
        if (b->nslice == 0)
            b->slice_shard = entry_shard(e);
        else if (entry_shard(e) != b->slice_shard) {
            b->next--; /* the next slice's */
            break;
        }
        e->flags |= ENTRY_BUSY;
        b->slice[b->nslice] = e;
        b->slice_ids[b->nslice] = e->id;
        b->slice_lens[b->nslice] = e->id_len;
        b->nslice++;
    }
    if (b->nslice == 0) {
        bulk_end(b, true);
        return;
    }
    int rc = b->cancel ? store_msgs_del(b->slice_shard, b->slice_ids, b->slice_lens, b->nslice, slice_cb, b)
                       : store_msgs_due_now(b->slice_shard, b->slice_ids, b->slice_lens, b->nslice, now_ms(),
                                            slice_cb, b);
    if (rc != 0)
        slice_cb(b, NULL);
}

struct gather_ctx {
    struct bulk *b;
    uint32_t domain;
};

static void gather_one(struct entry *e, void *arg)
{
    struct gather_ctx *g = arg;
    if (entry_domain(e) == g->domain && wanted(g->b, e))
        add_id(g->b, e->id, e->id_len);
}

/* Whether the record names the campaign: its who line holds the members
 * as event_msg_fragment_put wrote them, campaign before meta. */
static bool record_in_campaign(const struct bulk *b, const char *v, size_t len)
{
    struct record rec;
    if (record_parse(v, len, &rec) != 0 || rec.who_len == 0 || rec.who[0] != '"')
        return false;
    if (!b->cancel && rec.state != 'P')
        return false;
    static const char meta[] = ",\"meta\":";
    const char *end = rec.who + rec.who_len;
    const char *m = memmem(rec.who, rec.who_len, meta, sizeof meta - 1);
    if (m)
        end = m;
    return memmem(rec.who, (size_t)(end - rec.who), b->needle, b->needle_len) != NULL;
}

static void scan_page(struct bulk *b);

static void scan_cb(void *arg, redisReply *reply)
{
    struct bulk *b = arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        bulk_end(b, false);
        return;
    }
    redisReply *items = reply->element[1];
    for (size_t i = 0; i + 1 < items->elements; i += 2) {
        redisReply *k = items->element[i], *v = items->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING && record_in_campaign(b, v->str, v->len))
            add_id(b, k->str, k->len);
    }
    snprintf(b->cursor, sizeof b->cursor, "%.*s", (int)reply->element[0]->len, reply->element[0]->str);
    /* With shards: every shard served here, one after the other. */
    while (strcmp(b->cursor, "0") == 0 && ++b->scan_shard < lease_shards())
        if (lease_shard_serving(b->scan_shard)) {
            scan_page(b);
            return;
        }
    if (strcmp(b->cursor, "0") == 0)
        next_slice(b);
    else
        scan_page(b);
}

static void scan_page(struct bulk *b)
{
    if (rbd->stopping || store_msgs_scan(b->scan_shard, b->cursor, BULK_SCAN, scan_cb, b) != 0)
        bulk_end(b, false);
}

void op_bulk(struct job *op)
{
    if (!op_store_usable(op))
        return;
    const struct request *r = &op->req;
    struct bulk *b = xcalloc(1, sizeof *b);
    b->op = op;
    b->cancel = r->op == OP_CANCEL;
    b->started = now_ms();
    if (r->domain) {
        struct gather_ctx g = {b, domains_find(r->domain, r->domain_len, false, b->started)};
        if (g.domain)
            sched_foreach(rbd->sched, gather_one, &g);
        next_slice(b);
        return;
    }
    struct jbuf j;
    memset(&j, 0, sizeof j);
    jbuf_lit(&j, ",\"campaign\":");
    jbuf_str(&j, r->campaign, strlen(r->campaign));
    b->needle = jbuf_finish(&j, &b->needle_len);
    if (!b->needle) {
        op_error(op, ERR_INTERNAL, "the campaign could not be encoded");
        op_finish(op);
        bulk_free(b);
        return;
    }
    strcpy(b->cursor, "0");
    b->scan_shard = 0;
    while (b->scan_shard + 1 < lease_shards() && !lease_shard_serving(b->scan_shard))
        b->scan_shard++;
    scan_page(b);
}

static void one_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    struct entry *e = op->e;
    e->flags &= (uint8_t)~ENTRY_BUSY;
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 1;
    bool moved = ok && reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[0]->integer == 1 &&
                 e->state == ENTRY_PENDING;
    if (moved) {
        domains_entry_unplace(e);
        sched_set_due(rbd->sched, e, now_ms());
    }
    if (ok) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
        json_object_set_new(o, "found", json_true());
        json_object_set_new(o, "count", json_integer(moved ? 1 : 0));
        op_reply(op, o);
    } else {
        op_unavailable(op);
    }
    op_finish(op);
    op_settle(e, false);
    firing_kick();
}

void op_retry_now(struct job *op)
{
    if (!op->req.id) {
        op_bulk(op);
        return;
    }
    struct entry *e = op->e;
    if (!e || e->state != ENTRY_PENDING) {
        /* Unknown, or its retry already fired (awaiting): nothing to move. */
        json_t *o = json_object();
        json_object_set_new(o, "id", json_stringn(op->req.id, op->req.id_len));
        json_object_set_new(o, "found", json_boolean(e && e->state != ENTRY_NEW));
        json_object_set_new(o, "count", json_integer(0));
        op_reply(op, o);
        op_finish(op);
        return;
    }
    if (!op_store_usable(op))
        return;
    e->flags |= ENTRY_BUSY;
    const char *ids[1] = {e->id};
    size_t lens[1] = {e->id_len};
    if (store_msgs_due_now(op->shard, ids, lens, 1, now_ms(), one_cb, op) != 0)
        one_cb(op, NULL);
}
