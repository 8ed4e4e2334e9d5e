#include "daemon/load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "daemon/domains.h"
#include "daemon/firing.h"
#include "daemon/log.h"
#include "daemon/ops.h"
#include "daemon/record.h"
#include "daemon/store.h"
#include "daemon/xmalloc.h"
#include "queue/policy.h"

static void (*load_done)(void);
static char load_cursor[32];
static uint64_t load_count;

static void load_page(void);

static int class_for(const char *name, size_t len)
{
    char buf[POLICY_NAME_MAX];
    if (len >= sizeof buf)
        return rbd->policy->temp_other;
    memcpy(buf, name, len);
    buf[len] = '\0';
    int i = policy_class_find(rbd->policy, buf);
    return i >= 0 ? i : rbd->policy->temp_other;
}

/* Makes e (new, or known and idle) say what its record says. */
static void entry_from_record(struct entry *e, const struct record *rec, int64_t awaiting)
{
    stats_entry_leave(e);
    entry_set_domain(e, domains_of_rcpt(rec->rcpt, rec->rcpt_len, true, now_ms()));
    e->class_idx = (uint8_t)class_for(rec->class_name, rec->class_len);
    e->attempt = (uint16_t)rec->attempt;
    e->first_ms = rec->first_ms;
    e->state = rec->state == 'P' ? ENTRY_PENDING : ENTRY_AWAITING;
    stats_entry_enter(e);
    sched_set_due(rbd->sched, e, rec->state == 'P' ? rec->due_ms : rec->due_ms + awaiting);
}

static void load_reply_cb(void *arg, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        log_warn("load: reading the schedule failed (%s); will retry when Redis is back",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
        return; /* firing_load is called again on reconnect */
    }
    redisReply *items = reply->element[1];
    int64_t awaiting = rbd->policy->awaiting_ms;
    for (size_t i = 0; i + 1 < items->elements; i += 2) {
        redisReply *k = items->element[i], *v = items->element[i + 1];
        struct record rec;
        if (k->len == 0 || k->len > 255 || record_parse(v->str, v->len, &rec) != 0) {
            log_warn("load: skipping a malformed record (%.*s)", (int)(k->len > 64 ? 64 : k->len), k->str);
            continue;
        }
        if (sched_find(rbd->sched, k->str, k->len))
            continue; /* HSCAN may return a field twice */
        entry_from_record(sched_add(rbd->sched, k->str, k->len), &rec, awaiting);
        load_count++;
    }
    snprintf(load_cursor, sizeof load_cursor, "%.*s", (int)reply->element[0]->len, reply->element[0]->str);
    if (strcmp(load_cursor, "0") == 0) {
        log_info("load: %llu messages read back from Redis (%llu pending, %llu awaiting)",
                 (unsigned long long)load_count, (unsigned long long)rbd->npending,
                 (unsigned long long)rbd->nawaiting);
        void (*done)(void) = load_done;
        load_done = NULL;
        /* Then the domain throttles, so that a restart honours them
         * before the first retry fires. */
        if (done)
            domains_load(done);
        return;
    }
    load_page();
}

static void load_page(void)
{
    const char *argv[] = {"HSCAN", rbd->key_msgs, load_cursor, "COUNT", "2000"};
    size_t lens[5];
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(argv[i]);
    if (store_command(5, argv, lens, load_reply_cb, NULL) != 0)
        log_warn("load: Redis went away; will resume when it is back");
}

void schedule_load(void (*done)(void))
{
    /* A fresh start, or a restart of a load that Redis interrupted: the
     * cursor of a dropped connection means nothing to a restarted server,
     * so begin again; entries read before are kept, duplicates skipped. */
    snprintf(load_cursor, sizeof load_cursor, "0");
    load_done = done;
    load_page();
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
        entry_from_record(e, &rec, rbd->policy->awaiting_ms);
        log_info("resync: %s is %s again after a write in doubt", id, rec.state == 'P' ? "pending" : "awaiting");
    } else if (e && !entry_has_waiters(e)) {
        stats_entry_leave(e);
        entry_forget(e);
    }
    free(id);
    firing_kick();
}

static void resync_one(const char *id, void *arg)
{
    char *copy = xstrdup(id);
    if (store_get(copy, strlen(copy), resync_reply_cb, copy) != 0) {
        store_mark_in_doubt(copy, strlen(copy));
        free(copy);
    }
}

void schedule_resync(void)
{
    store_take_in_doubt(resync_one, NULL);
}
