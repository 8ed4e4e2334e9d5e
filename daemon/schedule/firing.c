#include "schedule/firing.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

#include "base/counters.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "events/events.h"
#include "proto/record.h"
#include "queue/policy.h"
#include "queue/shard.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "store/scripts.h"
#include "store/store.h"

/* A sleep never lasts longer than this, so a wall-clock jump is noticed. */
#define MAX_SLEEP_MS 60000
/* Fire batches in flight at once: enough to keep Redis busy while the
 * daemon builds the next transaction (a large batch takes two round trips). */
#define MAX_BATCHES_IN_FLIGHT 4
/* How long an entry waits when its write is busy at its due time. */
#define BUSY_RETRY_MS 50
/* A batch this small goes as scripts/fire.lua, which also reads the new
 * events for the consumer groups that are caught up, so a retry reaches a
 * subscriber one round trip after it fell due. A larger one (a burst) goes
 * as a transaction (below), which costs Redis about half as much per
 * retry; the groups read its events with reads of their own, pipelined
 * behind the next batch. */
#define FIRE_READ_MAX 128
/* How many entries past its own events a fire batch reads for a group
 * (events of reports appended since the group last read). */
#define FIRE_READ_SLACK 256

/*
 * The wake-up. libuv's timers count whole milliseconds of a loop time
 * that is read once per turn, so a timer armed for a due millisecond ran
 * up to a millisecond or two late, and retries are due at exact wall-clock
 * milliseconds. On Linux a timerfd on the wall clock, armed for the due
 * instant itself, wakes the loop within the kernel's timer slack (50 µs);
 * it also follows a wall-clock jump by itself. Elsewhere a uv_timer_t does.
 */
static uv_timer_t timer;
#ifdef __linux__
static uv_poll_t tfd_poll;
static int tfd = -1;
static int64_t tfd_armed_ms = -1; /* the instant the timerfd is set for, or -1 */
#endif
static bool stopped;
static bool in_fire_due;
static int batches_in_flight;

struct fire_batch {
    struct store_fire f; /* first: the store's callback gets it back */
    int n;
    int ngroups;
    struct entry **entries;
    int64_t *due;
    struct group *groups[STORE_FIRE_GROUPS_MAX];
};

static void fire_due(void);

static void timer_cb(uv_timer_t *t)
{
    fire_due();
}

#ifdef __linux__
static void tfd_cb(uv_poll_t *p, int status, int events)
{
    uint64_t expirations;
    while (read(tfd, &expirations, sizeof expirations) < 0 && errno == EINTR)
        ;
    tfd_armed_ms = -1;
    fire_due();
}

static void tfd_close_cb(uv_handle_t *h)
{
    close(tfd);
    tfd = -1;
}

/* Arms the timerfd for the wall-clock instant at_ms (0: disarms).
 * Returns 0, or -1 when the timerfd failed (the uv_timer takes over). */
static int tfd_arm(int64_t at_ms)
{
    /* Armed for the same instant or earlier: leave it, an early wake-up
     * only re-arms. Reports are kicked one by one, and their retries are
     * mostly not the earliest, so this saves a system call per report. */
    if ((at_ms > 0 && tfd_armed_ms > 0 && tfd_armed_ms <= at_ms) || (at_ms == 0 && tfd_armed_ms < 0))
        return 0;
    struct itimerspec its = {0};
    if (at_ms > 0) {
        its.it_value.tv_sec = at_ms / 1000;
        its.it_value.tv_nsec = (at_ms % 1000) * 1000000;
    }
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0) {
        log_warn("firing: timerfd_settime failed (%s); using a libuv timer", strerror(errno));
        uv_close((uv_handle_t *)&tfd_poll, tfd_close_cb);
        return -1;
    }
    tfd_armed_ms = at_ms > 0 ? at_ms : -1;
    return 0;
}

static bool tfd_usable(void)
{
    return tfd >= 0 && !uv_is_closing((uv_handle_t *)&tfd_poll);
}
#endif

void firing_init(void)
{
    uv_timer_init(rbd->loop, &timer);
    stopped = false;
    batches_in_flight = 0;
#ifdef __linux__
    tfd_armed_ms = -1;
    tfd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd >= 0 && uv_poll_init(rbd->loop, &tfd_poll, tfd) != 0) {
        close(tfd);
        tfd = -1;
    }
    if (tfd >= 0)
        uv_poll_start(&tfd_poll, UV_READABLE, tfd_cb);
#endif
    domains_init();
}

void firing_stop(void)
{
    stopped = true;
    if (!uv_is_closing((uv_handle_t *)&timer))
        uv_close((uv_handle_t *)&timer, NULL);
#ifdef __linux__
    if (tfd >= 0 && !uv_is_closing((uv_handle_t *)&tfd_poll))
        uv_close((uv_handle_t *)&tfd_poll, tfd_close_cb);
#endif
}

void firing_kick(void)
{
    if (rbd->stopping || stopped)
        return;
    struct entry *e = sched_next(rbd->sched);
    int64_t now = now_ms();
#ifdef __linux__
    if (tfd_usable()) {
        int64_t at = 0;
        if (e) {
            at = e->node.due_ms;
            if (at > now + MAX_SLEEP_MS)
                at = now + MAX_SLEEP_MS;
            if (at < 1)
                at = 1; /* 0 would disarm: anything in the past fires at once */
        }
        if (tfd_arm(at) == 0)
            return;
    }
#endif
    if (!e) {
        uv_timer_stop(&timer);
        return;
    }
    int64_t delay = e->node.due_ms - now;
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
        entry_settle(e);
        return;
    }
    entry_become(e, ENTRY_NEW, NULL);
    entry_settle(e);
}

static void fire_batch_free(struct fire_batch *b)
{
    free(b->entries);
    free(b->due);
    free(b->f.outcome);
    free(b);
}

/* Ends a batch: ok says whether b->f.outcome holds Redis's answer; when not,
 * nothing fired as far as we know. */
static void fire_finish(struct fire_batch *b, bool ok)
{
    batches_in_flight--;
    int64_t awaiting = rbd->policy->awaiting_ms;
    uint64_t fired = 0;
    for (int i = 0; i < b->n; i++) {
        struct entry *e = b->entries[i];
        e->flags &= ~(ENTRY_BUSY | ENTRY_FIRING);
        if (!ok) {
            /* Not fired as far as we know: due again once Redis is back. */
            if (!entry_scheduled(e))
                sched_set_due(rbd->sched, e, b->due[i]);
            entry_settle(e);
            continue;
        }
        if (b->f.outcome[i] == STORE_FIRE_UNKNOWN) {
            /* Redis no longer knows it (removed by hand): forget it. */
            entry_become(e, ENTRY_NEW, NULL);
        } else {
            if (b->f.outcome[i] == STORE_FIRE_NOW) {
                fired++;
                counters_lateness(b->f.now - b->due[i]);
            }
            entry_become(e, ENTRY_AWAITING, NULL);
            sched_set_due(rbd->sched, e, b->due[i] + awaiting);
        }
        entry_settle(e);
    }
    rbd->events_emitted[EV_RETRY] += fired;
    if (fired || b->ngroups)
        events_fired();
    fire_batch_free(b);
    /* The next batch leaves with this reply's read, not a loop turn later. */
    struct entry *next = sched_next(rbd->sched);
    if (!in_fire_due && next && next->node.due_ms <= now_ms())
        fire_due();
    else
        firing_kick();
}

/* The store's answer to a batch: the groups that read in the same call
 * take their reads (or learn that none came), then the entries move on. */
static void fired_cb(struct store_fire *f, bool ok)
{
    struct fire_batch *b = (struct fire_batch *)f;
    for (int j = 0; j < f->ngroups; j++)
        events_fire_read(b->groups[j], ok ? f->reads[j] : NULL, ok ? f->fired : NULL, f->read_count);
    fire_finish(b, ok);
}

/* Sends one fire batch: a small one through the fire script, a large one
 * as a burst (store/fire.c). Returns 0, or -1 when Redis is not ready
 * (then nothing was sent). */
static int fire_send(struct fire_batch *b, const char **ids, const size_t *lens, int64_t now)
{
    struct store_fire *f = &b->f;
    f->n = b->n;
    f->now = now;
    f->outcome = xcalloc((size_t)b->n, 1);
    f->done = fired_cb;
    if (b->n > FIRE_READ_MAX)
        return store_fire_burst(f, ids, lens);
    f->ngroups = b->ngroups;
    for (int j = 0; j < b->ngroups; j++)
        f->groups[j] = events_group_name(b->groups[j]);
    return store_fire_script(f, ids, lens);
}

/* The next due entry that may fire now, from the heap's front, or NULL;
 * the due ones that do not fire now (busy, expiring, held back by their
 * domain, in a shard this instance does not hold) count against
 * *skipped, up to budget. */
static struct entry *next_fireable(int64_t now, int *skipped, int budget)
{
    struct entry *e;
    while (*skipped < budget && (e = sched_pop_due(rbd->sched, now))) {
        if (e->flags & ENTRY_BUSY) {
            /* A write for it is in flight and will reschedule it. */
            sched_set_due(rbd->sched, e, now + BUSY_RETRY_MS);
            (*skipped)++;
            continue;
        }
        if (rbd->cfg.shards >= 2 && !((rbd->shards_held >> entry_shard(e)) & 1)) {
            /* Its shard was lost or given up: it goes with the shard. */
            sched_set_due(rbd->sched, e, now + 10 * BUSY_RETRY_MS);
            (*skipped)++;
            continue;
        }
        if (e->state == ENTRY_AWAITING) {
            (*skipped)++;
            struct store_change ch = {.shard = entry_shard(e), .id = e->id, .id_len = e->id_len, .mode = 'D'};
            e->flags |= ENTRY_BUSY;
            if (store_queue(&ch, expire_done_cb, e) != 0)
                expire_done_cb(e, false, 0);
            continue;
        }
        if (e->state != ENTRY_PENDING) {
            (*skipped)++;
            continue;
        }
        /* Its domain may be backed off, or its pace spent: then it
         * takes its place later (one heap update), and the domains
         * that are not held back keep firing. */
        int64_t later = domains_pace_entry(e, now);
        if (later) {
            sched_set_due(rbd->sched, e, later);
            (*skipped)++;
            continue;
        }
        e->flags |= ENTRY_BUSY | ENTRY_FIRING;
        return e;
    }
    return NULL;
}

static void batch_put(struct fire_batch *b, struct entry *e, const char **ids, size_t *lens)
{
    b->entries[b->n] = e;
    b->due[b->n] = e->node.due_ms;
    ids[b->n] = e->id;
    lens[b->n] = e->id_len;
    b->n++;
}

/* Fills b with up to max due entries that may fire now. */
static void fill_batch(struct fire_batch *b, int max, int64_t now, const char **ids, size_t *lens, int *skipped,
                       int budget)
{
    struct entry *e;
    while (b->n < max && (e = next_fireable(now, skipped, budget)))
        batch_put(b, e, ids, lens);
}

static struct fire_batch *fire_batch_new(int max)
{
    struct fire_batch *b = xcalloc(1, sizeof *b);
    b->entries = xmalloc((size_t)max * sizeof *b->entries);
    b->due = xmalloc((size_t)max * sizeof *b->due);
    return b;
}

/* Sends b (n entries): the small ones read for the caught-up groups. */
static int fire_go(struct fire_batch *b, const char **ids, const size_t *lens, int64_t now)
{
    int n = b->n;
    if (n <= FIRE_READ_MAX) {
        b->f.read_count = n + FIRE_READ_SLACK;
        b->ngroups = events_fire_groups(b->groups, STORE_FIRE_GROUPS_MAX);
    }
    batches_in_flight++;
    if (fire_send(b, ids, lens, now) != 0) {
        fired_cb(&b->f, false);
        return 0;
    }
    return n;
}

/* With shards: up to fire_batch due entries a round, sent as one batch
 * per shard, each fenced by its shard's epoch. */
static void fire_due_sharded(int64_t now)
{
    int skipped = 0, skip_budget = 4 * rbd->cfg.fire_batch;
    int max = rbd->cfg.fire_batch;
    int nshards = store_nshards();
    while (batches_in_flight < MAX_BATCHES_IN_FLIGHT) {
        struct fire_batch *by[SHARD_MAX] = {0};
        const char **ids[SHARD_MAX] = {0};
        size_t *lens[SHARD_MAX] = {0};
        int total = 0;
        struct entry *e;
        while (total < max && (e = next_fireable(now, &skipped, skip_budget))) {
            int k = entry_shard(e);
            if (!by[k]) {
                by[k] = fire_batch_new(max);
                by[k]->f.shard = k;
                ids[k] = xmalloc((size_t)max * sizeof *ids[k]);
                lens[k] = xmalloc((size_t)max * sizeof *lens[k]);
            }
            batch_put(by[k], e, ids[k], lens[k]);
            total++;
        }
        for (int k = 0; k < nshards; k++) {
            if (by[k])
                fire_go(by[k], ids[k], lens[k], now);
            free(ids[k]);
            free(lens[k]);
        }
        if (total < max)
            break;
    }
}

static void fire_due(void)
{
    if (!rbd->loaded || rbd->stopping || stopped || !store_ready())
        return; /* kicked again when Redis is back */
    in_fire_due = true;
    int64_t now = now_ms();
    /* Due entries that do not fire now (held back by their domain, busy,
     * expiring) are bounded per turn too: a domain with a million held
     * retries must not stall the loop while it hands out their places. */
    int skipped = 0, skip_budget = 4 * rbd->cfg.fire_batch;
    int max = rbd->cfg.fire_batch;
    const char **ids = NULL;
    size_t *lens = NULL;
    if (rbd->cfg.shards >= 2) {
        fire_due_sharded(now);
        max = 0;
    }
    while (max && batches_in_flight < MAX_BATCHES_IN_FLIGHT) {
        struct fire_batch *b = fire_batch_new(max);
        if (!ids) {
            ids = xmalloc((size_t)max * sizeof *ids);
            lens = xmalloc((size_t)max * sizeof *lens);
        }
        fill_batch(b, max, now, ids, lens, &skipped, skip_budget);
        int n = b->n;
        if (n > 0) {
            n = fire_go(b, ids, lens, now);
        } else {
            fire_batch_free(b);
        }
        if (n < max)
            break;
    }
    free(ids);
    free(lens);
    in_fire_due = false;
    if (batches_in_flight < MAX_BATCHES_IN_FLIGHT)
        firing_kick();
}
