#include "daemon/firing.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "daemon/domains.h"
#include "daemon/events.h"
#include "daemon/log.h"
#include "daemon/ops.h"
#include "daemon/redis_link.h"
#include "daemon/store.h"
#include "daemon/xmalloc.h"
#include "queue/policy.h"

/* A sleep never lasts longer than this, so a wall-clock jump is noticed. */
#define MAX_SLEEP_MS 60000
/* Fire batches in flight at once: enough to hide a round trip. */
#define MAX_BATCHES_IN_FLIGHT 2
/* How long an entry waits when its write is busy at its due time. */
#define BUSY_RETRY_MS 50

static uv_timer_t timer;
static int batches_in_flight;

struct fire_batch {
    int n;
    struct entry **entries;
    int64_t *due;
};

static void timer_cb(uv_timer_t *t);

void firing_init(void)
{
    uv_timer_init(rbd->loop, &timer);
    batches_in_flight = 0;
    domains_init();
}

void firing_stop(void)
{
    if (!uv_is_closing((uv_handle_t *)&timer))
        uv_close((uv_handle_t *)&timer, NULL);
}

void firing_kick(void)
{
    if (rbd->stopping || uv_is_closing((uv_handle_t *)&timer))
        return;
    struct entry *e = sched_next(rbd->sched);
    if (!e) {
        uv_timer_stop(&timer);
        return;
    }
    int64_t delay = e->node.due_ms - now_ms();
    if (delay < 0)
        delay = 0;
    if (delay > MAX_SLEEP_MS)
        delay = MAX_SLEEP_MS;
    uv_timer_start(&timer, timer_cb, (uint64_t)delay, 0);
}

static void expire_done_cb(void *arg, bool ok, long long result)
{
    struct entry *e = arg;
    e->flags &= ~ENTRY_BUSY;
    if (!ok) {
        /* Try again later; forgetting is never urgent. */
        sched_set_due(rbd->sched, e, now_ms() + 1000);
        ops_run_waiters(e);
        return;
    }
    stats_entry_leave(e);
    e->state = ENTRY_NEW;
    ops_run_waiters(e);
    if (e->state == ENTRY_NEW && !(e->flags & ENTRY_BUSY) && !entry_has_waiters(e))
        entry_forget(e);
}

static void fire_reply_cb(void *arg, redisReply *reply)
{
    struct fire_batch *b = arg;
    batches_in_flight--;
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == (size_t)b->n;
    if (reply && !ok)
        log_error("redis: fire script failed: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    int64_t awaiting = rbd->policy->awaiting_ms;
    uint64_t fired = 0;
    for (int i = 0; i < b->n; i++) {
        struct entry *e = b->entries[i];
        e->flags &= ~(ENTRY_BUSY | ENTRY_FIRING);
        if (!ok) {
            /* Not fired as far as we know: due again once Redis is back. */
            if (!entry_scheduled(e))
                sched_set_due(rbd->sched, e, b->due[i]);
            ops_run_waiters(e);
            continue;
        }
        redisReply *r = reply->element[i];
        if (r->type == REDIS_REPLY_INTEGER && r->integer == 0) {
            /* Redis no longer knows it (removed by hand): forget it. */
            stats_entry_leave(e);
            e->state = ENTRY_NEW;
        } else {
            if (r->type == REDIS_REPLY_STRING)
                fired++;
            stats_entry_leave(e);
            e->state = ENTRY_AWAITING;
            stats_entry_enter(e);
            sched_set_due(rbd->sched, e, b->due[i] + awaiting);
        }
        ops_run_waiters(e);
        if (e->state == ENTRY_NEW && !(e->flags & ENTRY_BUSY) && !entry_has_waiters(e))
            entry_forget(e);
    }
    rbd->events_emitted[EV_RETRY] += fired;
    free(b->entries);
    free(b->due);
    free(b);
    if (fired)
        events_notify();
    firing_kick();
}

static void timer_cb(uv_timer_t *t)
{
    if (!rbd->loaded || rbd->stopping || !store_ready())
        return; /* kicked again when Redis is back */
    int64_t now = now_ms();
    /* Due entries that do not fire now (held back by their domain, busy,
     * expiring) are bounded per turn too: a domain with a million held
     * retries must not stall the loop while it hands out their places. */
    int skipped = 0, skip_budget = 4 * rbd->cfg.fire_batch;
    while (batches_in_flight < MAX_BATCHES_IN_FLIGHT) {
        int max = rbd->cfg.fire_batch;
        struct fire_batch *b = xcalloc(1, sizeof *b);
        b->entries = xmalloc((size_t)max * sizeof *b->entries);
        b->due = xmalloc((size_t)max * sizeof *b->due);
        const char **ids = xmalloc((size_t)max * sizeof *ids);
        size_t *lens = xmalloc((size_t)max * sizeof *lens);
        struct entry *e;
        while (b->n < max && skipped < skip_budget && (e = sched_pop_due(rbd->sched, now))) {
            if (e->flags & ENTRY_BUSY) {
                /* A write for it is in flight and will reschedule it. */
                sched_set_due(rbd->sched, e, now + BUSY_RETRY_MS);
                skipped++;
                continue;
            }
            if (e->state == ENTRY_AWAITING) {
                skipped++;
                struct store_change ch = {.id = e->id, .id_len = e->id_len, .mode = 'D'};
                e->flags |= ENTRY_BUSY;
                if (store_queue(&ch, expire_done_cb, e) != 0)
                    expire_done_cb(e, false, 0);
                continue;
            }
            if (e->state != ENTRY_PENDING) {
                skipped++;
                continue;
            }
            /* Its domain may be backed off, or its pace spent: then it
             * takes its place later (one heap update), and the domains
             * that are not held back keep firing. */
            int64_t later = domains_pace_entry(e, now);
            if (later) {
                sched_set_due(rbd->sched, e, later);
                skipped++;
                continue;
            }
            e->flags |= ENTRY_BUSY | ENTRY_FIRING;
            b->entries[b->n] = e;
            b->due[b->n] = e->node.due_ms;
            ids[b->n] = e->id;
            lens[b->n] = e->id_len;
            b->n++;
        }
        int n = b->n;
        if (n > 0) {
            batches_in_flight++;
            if (store_fire(ids, lens, n, now, fire_reply_cb, b) != 0) {
                fire_reply_cb(b, NULL);
                n = 0;
            }
        } else {
            free(b->entries);
            free(b->due);
            free(b);
        }
        free(ids);
        free(lens);
        if (n < max)
            break;
    }
    if (batches_in_flight < MAX_BATCHES_IN_FLIGHT)
        firing_kick();
}
