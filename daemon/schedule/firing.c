#include "schedule/firing.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "events/events.h"
#include "proto/record.h"
#include "queue/policy.h"
#include "redis/redis_link.h"
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
/* Groups one fire batch reads for, at most. */
#define FIRE_GROUPS_MAX 16
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

/* What firing did to one entry of a batch. */
enum fire_outcome {
    FIRE_UNKNOWN,  /* Redis has no record of it (removed by hand) */
    FIRE_BEFORE,   /* it had fired before: awaiting already */
    FIRE_NOW,      /* fired: its retry event is in the stream */
};

struct fire_batch {
    int n;
    int ngroups;
    int read_count; /* COUNT of the groups' reads */
    int64_t now;
    struct entry **entries;
    int64_t *due;
    unsigned char *outcome; /* enum fire_outcome per entry */
    int *slot;              /* two-phase: the entry's XADD in the EXEC reply, or -1 */
    int nxadd;              /* two-phase: XADDs in the transaction */
    struct group *groups[FIRE_GROUPS_MAX];
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
    free(b->outcome);
    free(b->slot);
    free(b);
}

/* Ends a batch: ok says whether b->outcome holds Redis's answer; when not,
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
        if (b->outcome[i] == FIRE_UNKNOWN) {
            /* Redis no longer knows it (removed by hand): forget it. */
            entry_become(e, ENTRY_NEW, NULL);
        } else {
            if (b->outcome[i] == FIRE_NOW)
                fired++;
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

/* The fire script's answer is {fired, read_1, ..., read_g}; fired holds
 * two elements per id (scripts/fire.lua). */
static bool fire_reply_ok(const struct fire_batch *b, const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)b->ngroups + 1)
        return false;
    const redisReply *fired = reply->element[0];
    if (fired->type != REDIS_REPLY_ARRAY || fired->elements != 2 * (size_t)b->n)
        return false;
    for (int j = 1; j <= b->ngroups; j++)
        if (reply->element[j]->type != REDIS_REPLY_ARRAY && reply->element[j]->type != REDIS_REPLY_ERROR)
            return false;
    return true;
}

static void fire_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct fire_batch *b = arg;
    bool ok = fire_reply_ok(b, reply);
    if (reply && !ok)
        log_error("redis: fire script failed: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    for (int i = 0; ok && i < b->n; i++) {
        const redisReply *r = reply->element[0]->element[2 * i];
        b->outcome[i] = r->type == REDIS_REPLY_STRING ? FIRE_NOW
                        : r->type == REDIS_REPLY_INTEGER && r->integer == 0 ? FIRE_UNKNOWN
                                                                            : FIRE_BEFORE;
    }
    for (int j = 0; j < b->ngroups; j++)
        events_fire_read(b->groups[j], ok ? reply->element[1 + j] : NULL, ok ? reply->element[0] : NULL,
                         b->read_count);
    fire_finish(b, ok);
}

/*
 * A large batch fires in two steps, which cost Redis about half of what
 * the script costs it per retry (an XADD called from Lua is dear): HMGET
 * the records; then one MULTI ... EXEC that appends each pending record's
 * retry event, turns the records awaiting (one HSET) and trims the stream,
 * atomically. Between the two steps nothing else writes these records:
 * the daemon is their only writer, and an entry that fires is busy, so its
 * own writes wait. Events are appended ahead of the records' change, as in
 * the script.
 */

/* Allocates the argument arrays of an argc-argument command on the
 * message hash, with the command and the key filled in. */
static void msgs_command(const char *cmd, size_t argc, const char ***argv, size_t **lens)
{
    *argv = xmalloc(argc * sizeof **argv);
    *lens = xmalloc(argc * sizeof **lens);
    (*argv)[0] = cmd;
    (*lens)[0] = strlen(cmd);
    (*argv)[1] = rbd->key_msgs;
    (*lens)[1] = strlen(rbd->key_msgs);
}

/* Appends the retry event of id's pending record rec to *buf (at *len,
 * capacity *cap) and returns 0, or -1 when rec is not a pending record.
 * The one place in the daemon that reads a record to build its event
 * (scripts/fire.lua does the same for small batches). */
static int retry_body(char **buf, size_t *len, size_t *cap, const char *id, size_t id_len, const char *rec,
                      size_t rec_len, int64_t now)
{
    struct record r;
    if (rec_len < 1 || rec[0] != 'P' || record_parse(rec, rec_len, &r) != 0)
        return -1;
    /* The message's members for events: who, or the plain id and
     * recipient that who stands for (daemon/record.h). */
    char plain[512];
    const char *members = r.who;
    size_t members_len = r.who_len;
    if (r.who_len == 0 || r.who[0] != '"') {
        int m = snprintf(plain, sizeof plain, "\"id\":\"%.*s\",\"rcpt\":\"%.*s\"", (int)id_len, id, (int)r.who_len,
                         r.who);
        if (m < 0 || (size_t)m >= sizeof plain)
            return -1;
        members = plain;
        members_len = (size_t)m;
    }
    size_t need = members_len + r.class_len + 128;
    if (*len + need > *cap) {
        while (*len + need > *cap)
            *cap = *cap ? 2 * *cap : 65536;
        *buf = xrealloc(*buf, *cap);
    }
    int n = snprintf(*buf + *len, *cap - *len,
                     "{\"type\":\"retry\",\"at\":%lld,%.*s,\"class\":\"%.*s\",\"attempt\":%d,\"due_at\":%lld}",
                     (long long)now, (int)members_len, members, (int)r.class_len, r.class_name, r.attempt,
                     (long long)r.due_ms);
    if (n < 0 || (size_t)n >= *cap - *len)
        return -1;
    *len += (size_t)n;
    return 0;
}

static void queued_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
}

static void exec_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct fire_batch *b = arg;
    /* EXEC answers each command of the transaction: the XADDs, HSET, XTRIM. */
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == (size_t)b->nxadd + 2;
    if (reply && !ok)
        log_error("redis: fire transaction failed: %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    for (int i = 0; ok && i < b->n; i++) {
        if (b->slot[i] < 0)
            continue;
        const redisReply *r = reply->element[b->slot[i]];
        if (r->type != REDIS_REPLY_STRING) {
            /* The record turned awaiting all the same (a transaction does
             * not roll back): say so, the retry is not re-sent. */
            log_error("redis: appending a retry event failed: %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
            b->outcome[i] = FIRE_BEFORE;
        }
    }
    fire_finish(b, ok);
}

static void hmget_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct fire_batch *b = arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)b->n) {
        if (reply)
            log_error("redis: reading records to fire failed: %s",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        fire_finish(b, false);
        return;
    }
    char *bodies = NULL;
    size_t blen = 0, bcap = 0;
    size_t *boff = xmalloc((size_t)b->n * sizeof *boff), *bl = xmalloc((size_t)b->n * sizeof *bl);
    b->slot = xmalloc((size_t)b->n * sizeof *b->slot);
    b->nxadd = 0;
    for (int i = 0; i < b->n; i++) {
        redisReply *r = reply->element[i];
        b->slot[i] = -1;
        if (r->type != REDIS_REPLY_STRING) {
            b->outcome[i] = FIRE_UNKNOWN;
            continue;
        }
        size_t at = blen;
        if (retry_body(&bodies, &blen, &bcap, b->entries[i]->id, b->entries[i]->id_len, r->str, r->len, b->now) != 0) {
            if (r->len > 0 && r->str[0] == 'P')
                log_warn("firing: the record of %s is malformed; not fired", b->entries[i]->id);
            b->outcome[i] = FIRE_BEFORE;
            continue;
        }
        b->outcome[i] = FIRE_NOW;
        b->slot[i] = b->nxadd++;
        boff[i] = at;
        bl[i] = blen - at;
    }
    if (b->nxadd == 0) {
        free(bodies);
        free(boff);
        free(bl);
        fire_finish(b, true);
        return;
    }
    /* The record's new state is the old record with its first byte
     * changed: the reply's own text serves (the command is formatted
     * before this callback returns). */
    size_t hargc = 2 + 2 * (size_t)b->nxadd;
    const char **hargv;
    size_t *hlens;
    msgs_command("HSET", hargc, &hargv, &hlens);
    char maxlen[32];
    snprintf(maxlen, sizeof maxlen, "%lld", rbd->cfg.stream_maxlen);
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *trim[] = {"XTRIM", rbd->key_events, "MAXLEN", "~", maxlen};
    size_t trim_lens[5];
    for (int k = 0; k < 5; k++)
        trim_lens[k] = strlen(trim[k]);
    int rc = redis_link_command(rbd->link, queued_reply_cb, NULL, 1, multi, NULL);
    size_t h = 2;
    for (int i = 0; rc == 0 && i < b->n; i++) {
        if (b->slot[i] < 0)
            continue;
        const char *xargv[] = {"XADD", rbd->key_events, "*", "e", bodies + boff[i]};
        size_t xlens[] = {4, strlen(rbd->key_events), 1, 1, bl[i]};
        rc = redis_link_command(rbd->link, queued_reply_cb, NULL, 5, xargv, xlens);
        redisReply *r = reply->element[i];
        r->str[0] = 'A';
        hargv[h] = b->entries[i]->id;
        hlens[h++] = b->entries[i]->id_len;
        hargv[h] = r->str;
        hlens[h++] = r->len;
    }
    if (rc == 0)
        rc = redis_link_command(rbd->link, queued_reply_cb, NULL, (int)hargc, hargv, hlens);
    if (rc == 0)
        rc = redis_link_command(rbd->link, queued_reply_cb, NULL, 5, trim, trim_lens);
    if (rc == 0)
        rc = redis_link_command(rbd->link, exec_reply_cb, b, 1, exec, NULL);
    free(hargv);
    free(hlens);
    free(bodies);
    free(boff);
    free(bl);
    /* The link refuses commands only when it is down, and then it refuses
     * the first (MULTI) already; a transaction cut short never runs. */
    if (rc != 0)
        fire_finish(b, false);
}

/* Sends one fire batch: a small one as scripts/fire.lua, a large one in
 * two steps (above). Returns 0, or -1 when Redis is not ready (then
 * nothing was sent). */
static int fire_send(struct fire_batch *b, const char **ids, const size_t *lens, int64_t now)
{
    if (!store_ready())
        return -1;
    b->now = now;
    b->outcome = xcalloc((size_t)b->n, 1);
    if (b->n > FIRE_READ_MAX) {
        size_t argc = 2 + (size_t)b->n;
        const char **argv;
        size_t *argl;
        msgs_command("HMGET", argc, &argv, &argl);
        memcpy(argv + 2, ids, (size_t)b->n * sizeof *ids);
        memcpy(argl + 2, lens, (size_t)b->n * sizeof *lens);
        int rc = redis_link_command(rbd->link, hmget_reply_cb, b, (int)argc, argv, argl);
        free(argv);
        free(argl);
        return rc;
    }
    char now_s[32], maxlen[32], count[32], ngroups[32];
    snprintf(now_s, sizeof now_s, "%lld", (long long)now);
    snprintf(maxlen, sizeof maxlen, "%lld", rbd->cfg.stream_maxlen);
    snprintf(count, sizeof count, "%d", b->read_count);
    snprintf(ngroups, sizeof ngroups, "%d", b->ngroups);
    int head = 2 + 5 + b->ngroups;
    int argc = head + b->n;
    const char **argv = xmalloc((size_t)argc * sizeof *argv);
    size_t *argl = xmalloc((size_t)argc * sizeof *argl);
    argv[0] = rbd->key_msgs;
    argv[1] = rbd->key_events;
    argv[2] = now_s;
    argv[3] = maxlen;
    argv[4] = EVENTS_CONSUMER;
    argv[5] = count;
    argv[6] = ngroups;
    for (int j = 0; j < b->ngroups; j++)
        argv[7 + j] = events_group_name(b->groups[j]);
    for (int i = 0; i < head; i++)
        argl[i] = strlen(argv[i]);
    memcpy(argv + head, ids, (size_t)b->n * sizeof *ids);
    memcpy(argl + head, lens, (size_t)b->n * sizeof *lens);
    int rc = redis_link_script(rbd->link, SCRIPT_FIRE, fire_reply_cb, b, 2, argc, argv, argl);
    free(argv);
    free(argl);
    return rc;
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
    while (batches_in_flight < MAX_BATCHES_IN_FLIGHT) {
        struct fire_batch *b = xcalloc(1, sizeof *b);
        b->entries = xmalloc((size_t)max * sizeof *b->entries);
        b->due = xmalloc((size_t)max * sizeof *b->due);
        if (!ids) {
            ids = xmalloc((size_t)max * sizeof *ids);
            lens = xmalloc((size_t)max * sizeof *lens);
        }
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
            if (n <= FIRE_READ_MAX) {
                b->read_count = n + FIRE_READ_SLACK;
                b->ngroups = events_fire_groups(b->groups, FIRE_GROUPS_MAX);
            }
            batches_in_flight++;
            if (fire_send(b, ids, lens, now) != 0) {
                fire_reply_cb(NULL, NULL, b);
                n = 0;
            }
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
