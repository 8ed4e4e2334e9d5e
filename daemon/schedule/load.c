#include "schedule/load.h"
#include "schedule/learned.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "proto/record.h"
#include "queue/policy.h"
#include "queue/shard.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "store/store.h"

/*
 * The load at start. Redis needs about as long to produce a page of HSCAN
 * as the daemon needs to take it in, so the two work side by side: a page's
 * reply is kept (redis_link_reply_retain), the request for the next page
 * leaves at once, and the kept page is worked through from a uv_check
 * handle, which runs after the read that brought the page, so after that
 * request went out. Before the first page, HLEN tells how many records are
 * coming, so the schedule is sized once (sched_reserve) rather than doubled
 * and rehashed along the way.
 *
 * One scan alone still leaves Redis idle while the daemon reads each reply
 * (the next request can only name the cursor that reply ends with). So the
 * hash is read by LOAD_SCANS scans at once, each over its own part of the
 * cursor space: an HSCAN cursor counts buckets with its bits reversed, so
 * the cursors whose low bits are p come one after the other, and a scan
 * started at cursor p has read every bucket of its part when the cursor it
 * gets back has other low bits (or is 0, at the very end). While the daemon
 * reads one scan's page, Redis works on another's. A hash small enough to
 * be stored compactly comes whole in the first page of every scan; the
 * duplicates are skipped like any other.
 *
 * A run belongs to one connection: when Redis fails mid-load the run stops
 * (the pages it kept are still taken in), and the next connection starts a
 * new run from the start (the cursors of a dropped connection mean nothing
 * to a restarted server); entries read before are kept, duplicates skipped.
 */
#define LOAD_PAGE_COUNT "5000"
#define LOAD_SCAN_BITS 1
#define LOAD_SCANS (1 << LOAD_SCAN_BITS)
#define LOAD_MAX_KEPT (2 * LOAD_SCANS)
/* How many records ahead of the one being taken in its bucket is fetched
 * into the cache; the chain's first entry is fetched half as far ahead. */
#define LOAD_PREFETCH 8

struct load_run;

struct load_scan {
    struct load_run *run;
    unsigned part; /* the low cursor bits of this scan's part */
    char cursor[32];
    bool waiting; /* a page is asked for */
    bool done;    /* the part is read */
};

struct load_run {
    uv_check_t check;
    struct load_scan scans[LOAD_SCANS];
    redisReply *kept[LOAD_MAX_KEPT]; /* pages to take in, oldest first */
    int nkept;
    int nwaiting; /* scans with a page asked for */
    bool stopped; /* Redis failed, or a new run began: take in what is kept, then end */
    bool closing;
    int shard;    /* the shard read (0 in the one-shard layout) */
};

static void (*load_done)(void);
static void (*shard_done)(int shard); /* a shard's load (schedule_load_shard) */
static struct load_run *load_current; /* the run that asks for pages */
static uint64_t load_count;
static int load_class_last = -1; /* the class of the previous record */

static void load_page(struct load_scan *scan);

static int class_for(const char *name, size_t len)
{
    const struct policy *p = rbd->policy;
    /* Records come in runs of one class: the last one is tried first. */
    if (load_class_last >= 0 && load_class_last < p->nclasses && len < POLICY_NAME_MAX) {
        const char *last = p->classes[load_class_last].name;
        if (memcmp(last, name, len) == 0 && last[len] == '\0')
            return load_class_last;
    }
    char buf[POLICY_NAME_MAX];
    if (len >= sizeof buf)
        return p->temp_other;
    memcpy(buf, name, len);
    buf[len] = '\0';
    int i = policy_class_find(p, buf);
    if (i < 0)
        return p->temp_other;
    load_class_last = i;
    return i;
}

/* Makes e (new, or known and idle) say what its record says. */
static void entry_from_record(struct entry *e, const struct record *rec, int64_t awaiting, int64_t now)
{
    struct entry_facts f = {class_for(rec->class_name, rec->class_len), rec->attempt, rec->first_ms,
                            domains_of_rcpt(rec->rcpt, rec->rcpt_len, true, now)};
    entry_become(e, rec->state == 'P' ? ENTRY_PENDING : ENTRY_AWAITING, &f);
    if (store_nshards() > 1)
        entry_set_shard(e, shard_of_rcpt(rec->rcpt, rec->rcpt_len, store_nshards()));
    sched_set_due(rbd->sched, e, rec->state == 'P' ? rec->due_ms : rec->due_ms + awaiting);
}

/* Takes in one HSCAN page, {cursor, [field, value, ...]}, already checked
 * to be of that shape. */
static void load_take_page(redisReply *reply, int shard)
{
    redisReply *items = reply->element[1];
    int64_t awaiting = rbd->policy->awaiting_ms;
    int64_t now = now_ms(); /* a page takes a few milliseconds */
    size_t n = items->elements & ~(size_t)1;
    for (size_t i = 0; i < n; i += 2) {
        if (i + 2 * LOAD_PREFETCH < n) {
            redisReply *ahead = items->element[i + 2 * LOAD_PREFETCH];
            if (ahead->type == REDIS_REPLY_STRING && ahead->len <= 255)
                sched_prefetch(rbd->sched, ahead->str, ahead->len);
        }
        if (i + LOAD_PREFETCH < n) {
            redisReply *ahead = items->element[i + LOAD_PREFETCH];
            if (ahead->type == REDIS_REPLY_STRING && ahead->len <= 255)
                sched_prefetch_chain(rbd->sched, ahead->str, ahead->len);
        }
        redisReply *k = items->element[i], *v = items->element[i + 1];
        struct record rec;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len == 0 || k->len > 255 ||
            record_parse(v->str, v->len, &rec) != 0) {
            log_warn("load: skipping a malformed record (%.*s)", (int)(k->len > 64 ? 64 : k->len),
                     k->str ? k->str : "");
            continue;
        }
        bool added;
        struct entry *e = sched_find_or_add(rbd->sched, k->str, k->len, &added);
        if (!added)
            continue; /* HSCAN may return a field twice */
        entry_from_record(e, &rec, awaiting, now);
        if (shard)
            entry_set_shard(e, shard);
        load_count++;
    }
}

static void load_close_cb(uv_handle_t *h)
{
    free(h->data);
}

/* Ends run: nothing of it is in flight any more. */
static void load_end(struct load_run *run)
{
    if (run->closing)
        return;
    run->closing = true;
    if (load_current == run)
        load_current = NULL;
    for (int i = 0; i < run->nkept; i++)
        store_reply_release(run->kept[i]);
    run->nkept = 0;
    uv_close((uv_handle_t *)&run->check, load_close_cb);
}

/* ---- learned timing: read back after the throttles ---- */
static void (*learned_after)(void);

static void learned_then(void)
{
    void (*done)(void) = learned_after;
    learned_after = NULL;
    learned_load(done);
}

static void load_check_cb(uv_check_t *h)
{
    struct load_run *run = h->data;
    while (run->nkept > 0) {
        redisReply *page = run->kept[0];
        load_take_page(page, run->shard);
        store_reply_release(page);
        run->nkept--;
        memmove(run->kept, run->kept + 1, (size_t)run->nkept * sizeof run->kept[0]);
    }
    /* While Redis makes the next page: ordering the heap at the end of a
     * load of ten million would take a second after the last page. */
    sched_settle(rbd->sched);
    uv_check_stop(h);
    if (run->nwaiting > 0)
        return; /* more pages, or their failure, are on their way */
    bool read = true;
    for (int i = 0; i < LOAD_SCANS; i++)
        read = read && run->scans[i].done;
    load_end(run);
    if (run->stopped || !read || rbd->stopping)
        return;
    log_info("load: %llu messages read back from Redis (%llu pending, %llu awaiting)%s",
             (unsigned long long)load_count, (unsigned long long)rbd->npending,
             (unsigned long long)rbd->nawaiting, store_nshards() > 1 ? " for a shard" : "");
    if (shard_done) {
        void (*sdone)(int) = shard_done;
        shard_done = NULL;
        load_done = NULL;
        sdone(run->shard);
        return;
    }
    void (*done)(void) = load_done;
    load_done = NULL;
    /* Then the domain throttles, so that a restart honours them before the
     * first retry fires. */
    if (done) {
        learned_after = done;
        domains_load(learned_then);
    }
}

static void load_reply_cb(void *arg, redisReply *reply)
{
    struct load_scan *scan = arg;
    struct load_run *run = scan->run;
    scan->waiting = false;
    run->nwaiting--;
    if (rbd->stopping)
        run->stopped = true; /* a daemon that stops reads no further, and opens no listener */
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        if (!run->stopped)
            log_warn("load: reading the schedule failed (%s); will retry when Redis is back",
                     reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
        run->stopped = true; /* schedule_load is called again on reconnect */
    } else if (!run->stopped && run->nkept < LOAD_MAX_KEPT) {
        snprintf(scan->cursor, sizeof scan->cursor, "%.*s", (int)reply->element[0]->len, reply->element[0]->str);
        run->kept[run->nkept++] = store_reply_retain(reply);
        unsigned long long c = strtoull(scan->cursor, NULL, 10);
        if (c == 0 || (c & (LOAD_SCANS - 1)) != scan->part)
            scan->done = true;
        else
            load_page(scan);
    }
    if (run->stopped && load_current == run)
        load_current = NULL;
    uv_check_start(&run->check, load_check_cb);
}

static void load_page(struct load_scan *scan)
{
    struct load_run *run = scan->run;
    if (store_msgs_scan(run->shard, scan->cursor, LOAD_PAGE_COUNT, load_reply_cb, scan) == 0) {
        scan->waiting = true;
        run->nwaiting++;
        return;
    }
    if (!run->stopped)
        log_warn("load: Redis went away; will resume when it is back");
    run->stopped = true;
    if (load_current == run)
        load_current = NULL;
}

static void load_hlen_cb(void *arg, redisReply *reply)
{
    /* Only a size hint: without it the schedule grows as it goes. */
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        sched_reserve(rbd->sched, sched_count(rbd->sched) + (size_t)reply->integer);
}

static void load_start(int shard)
{
    if (load_current)
        load_current->stopped = true; /* it takes in what it kept, and ends */
    struct load_run *run = xcalloc(1, sizeof *run);
    uv_check_init(rbd->loop, &run->check);
    run->check.data = run;
    run->shard = shard;
    load_current = run;
    load_count = 0;
    load_class_last = -1;
    if (store_msgs_len(shard, load_hlen_cb, NULL) != 0) {
        log_warn("load: Redis went away; will resume when it is back");
        run->stopped = true;
    }
    for (unsigned i = 0; i < LOAD_SCANS && !run->stopped; i++) {
        struct load_scan *scan = &run->scans[i];
        scan->run = run;
        scan->part = i;
        snprintf(scan->cursor, sizeof scan->cursor, "%u", i);
        load_page(scan);
    }
    if (run->nwaiting == 0)
        load_end(run);
}

void schedule_load(void (*done)(void))
{
    if (rbd->stopping)
        return;
    load_done = done;
    shard_done = NULL;
    load_start(0);
}

/* ---- one shard (schedule/lease.c loads them one after the other) ---- */

static void (*extras_shard_done)(int);
static int extras_shard;
/* Loads started, and the one whose throttles and learned timing are being
 * read: a load started meanwhile (the link came back) owns done, and the
 * old reads' answer must not hand its shard over as loaded. */
static unsigned load_gen, extras_gen;

static void extras_then(void)
{
    if (extras_gen != load_gen)
        return; /* a load started since: its own reads end it */
    void (*done)(int) = extras_shard_done;
    extras_shard_done = NULL;
    if (done)
        done(extras_shard);
}

static void shard_then_extras(int shard)
{
    /* The throttles and learned timing are every shard's: read with the
     * first shard an instance takes, before its first retry fires. */
    extras_shard = shard;
    extras_gen = load_gen;
    learned_after = extras_then;
    domains_load(learned_then);
}

void schedule_load_shard(int shard, bool with_domains, void (*done)(int shard))
{
    if (rbd->stopping)
        return;
    load_done = NULL;
    load_gen++;
    if (with_domains) {
        extras_shard_done = done;
        shard_done = shard_then_extras;
    } else {
        shard_done = done;
    }
    load_start(shard);
}

bool schedule_loading(void)
{
    return load_current != NULL;
}

struct remap {
    int map[POLICY_MAX_CLASSES];
};

static void remap_entry(struct entry *e, void *arg)
{
    const struct remap *m = arg;
    e->class_idx = (uint8_t)m->map[e->class_idx];
}

void schedule_remap_classes(const struct policy *old_policy, const struct policy *new_policy)
{
    struct remap m;
    for (int i = 0; i < old_policy->nclasses; i++) {
        int j = policy_class_find(new_policy, old_policy->classes[i].name);
        m.map[i] = j >= 0 ? j : new_policy->temp_other;
    }
    for (int i = old_policy->nclasses; i < POLICY_MAX_CLASSES; i++)
        m.map[i] = new_policy->temp_other;
    sched_foreach(rbd->sched, remap_entry, &m);
    uint64_t counts[POLICY_MAX_CLASSES] = {0};
    for (int i = 0; i < old_policy->nclasses; i++)
        counts[m.map[i]] += rbd->pending_by_class[i];
    memcpy(rbd->pending_by_class, counts, sizeof counts);
    domains_policy_changed();
}

/* ---- writes in doubt ------------------------------------------------- */

static void resync_reply_cb(void *arg, redisReply *reply)
{
    char *id = arg;
    size_t len = strlen(id);
    struct record rec;
    if (!reply) {
        store_mark_in_doubt(id, len); /* still unknown: next time */
        free(id);
        return;
    }
    struct entry *e = sched_find(rbd->sched, id, len);
    if (e && (e->flags & ENTRY_BUSY)) {
        free(id); /* a newer write is in flight and decides */
        return;
    }
    if (reply->type == REDIS_REPLY_STRING && record_parse(reply->str, reply->len, &rec) == 0) {
        if (!e)
            e = sched_add(rbd->sched, id, len);
        entry_from_record(e, &rec, rbd->policy->awaiting_ms, now_ms());
        log_info("resync: %s is %s again after a write in doubt", id, rec.state == 'P' ? "pending" : "awaiting");
    } else if (e && !entry_has_waiters(e)) {
        entry_forget(e);
    }
    free(id);
    firing_kick();
}

/* With shards, an id in doubt that the schedule does not know is looked
 * up in every shard's hash first. */
static void resync_locate_cb(void *arg, redisReply *reply)
{
    char *id = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        store_mark_in_doubt(id, strlen(id));
        free(id);
        return;
    }
    if (reply->integer < 0 || !((rbd->shards_held >> reply->integer) & 1)) {
        free(id); /* nowhere, or in a shard another instance serves */
        return;
    }
    if (store_get((int)reply->integer, id, strlen(id), resync_reply_cb, id) != 0) {
        store_mark_in_doubt(id, strlen(id));
        free(id);
    }
}

static void resync_one(const char *id, void *arg)
{
    char *copy = xstrdup(id);
    struct entry *e = sched_find(rbd->sched, copy, strlen(copy));
    int rc = e || store_nshards() < 2 ? store_get(e ? entry_shard(e) : 0, copy, strlen(copy), resync_reply_cb, copy)
                                      : store_msgs_locate(copy, strlen(copy), resync_locate_cb, copy);
    if (rc != 0) {
        store_mark_in_doubt(copy, strlen(copy));
        free(copy);
    }
}

void schedule_resync(void)
{
    store_take_in_doubt(resync_one, NULL);
}
