/*
 * Receiving domains (domains.h says what is kept and why).
 *
 * Where an entry's domain lives. Every pending retry must know its domain
 * (firing asks "may this one go now?" for each), and there can be
 * millions, so each entry carries the domain's number (e->domain, 4
 * bytes) rather than a name; ENTRY_PLACED says the pace gave the entry its
 * due time, so it fires when it falls due without asking again.
 *
 * The back-off is lazy: when a domain is throttled nothing is moved; each
 * of its retries that falls due before the end of the back-off is handed
 * the next place after it (domain_pace_hold), so the held retries leave
 * in the order they fell due, one pace interval apart, and the work is
 * one heap update per retry. The ids of the held retries are remembered
 * (up to a bound) so that a delivered report, which ends the back-off
 * early, can move them all forward by the time saved.
 */
#define _GNU_SOURCE /* memmem, memrchr */
#include "schedule/domains.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/ascii.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/strmap.h"
#include "base/xmalloc.h"
#include "events/events.h"
#include "proto/event.h"
#include "queue/domain.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "schedule/lease.h"
#include "store/store.h"


#define DOMAINS_MAX (1u << 24)       /* numbers must fit the entry word on any platform */
#define DOMAIN_IDLE_MS (10 * 60 * 1000) /* forgotten this long after its last report, when nothing names it */
#define SWEEP_EVERY_MS 60000
#define TRACK_MAX 8                   /* throttling classes counted per domain */
#define ALERTS_MAX 8                  /* alerting classes remembered per domain */
#define HELD_MAX 100000               /* held ids remembered per domain for an early end */
#define TOP_PENDING 10

struct track {
    int class_idx;
    struct domain_window w;
};

struct alert {
    int class_idx;
    int64_t start;    /* the current alert window began (0: none) */
    uint64_t repeats; /* alerts not raised in it */
};

struct domain {
    uint32_t idx;
    uint32_t refs;    /* entries and requests naming it */
    uint64_t pending;
    int64_t last_seen;
    /* the back-off */
    int64_t since, until;   /* throttled while now < until */
    int64_t last_start;     /* the last throttle began (one per window) */
    uint32_t replies;       /* replies in the window when it began */
    char tclass[POLICY_NAME_MAX];
    bool writing;           /* the throttle's write is in flight */
    struct domain_pace pace;
    char **held;            /* ids given a place after the back-off */
    size_t nheld, cap_held;
    bool held_overflow;     /* more were held than remembered */
    struct track *track;
    int ntrack;
    struct alert *alerts;
    int nalerts;
    /* an operator's hold (the hold op): no retry fires while now < hold_until */
    int64_t hold_until, hold_since;
    size_t name_len;
    char name[];
};

static struct {
    struct domain **by_idx; /* [0] unused */
    uint32_t cap, next;     /* next: the lowest number never used */
    uint32_t *free_idx;
    uint32_t nfree, cap_free;
    struct strmap by_name;
    size_t count;
    int64_t last_sweep;
    bool ready;
} T;

void domains_init(void)
{
    memset(&T, 0, sizeof T);
    strmap_init(&T.by_name);
    T.next = 1;
    T.ready = true;
}

static void held_clear(struct domain *d)
{
    for (size_t i = 0; i < d->nheld; i++)
        free(d->held[i]);
    free(d->held);
    d->held = NULL;
    d->nheld = d->cap_held = 0;
    d->held_overflow = false;
}

static void domain_free(struct domain *d)
{
    held_clear(d);
    free(d->track);
    free(d->alerts);
    free(d);
}

void domains_free(void)
{
    if (!T.ready)
        return;
    for (uint32_t i = 1; i < T.next && i < T.cap; i++)
        if (T.by_idx[i])
            domain_free(T.by_idx[i]);
    free(T.by_idx);
    free(T.free_idx);
    strmap_free(&T.by_name);
    memset(&T, 0, sizeof T);
}

static struct domain *get(uint32_t d)
{
    return d && d < T.cap ? T.by_idx[d] : NULL;
}

static void forget(struct domain *d)
{
    strmap_del(&T.by_name, d->name);
    T.by_idx[d->idx] = NULL;
    if (T.nfree == T.cap_free) {
        T.cap_free = T.cap_free ? T.cap_free * 2 : 64;
        T.free_idx = xrealloc(T.free_idx, T.cap_free * sizeof *T.free_idx);
    }
    T.free_idx[T.nfree++] = d->idx;
    T.count--;
    domain_free(d);
}

/* Forgets the domains nothing needs any more; at most once a minute, so
 * the cost is one pass over the table per minute. */
static void sweep(int64_t now)
{
    if (now - T.last_sweep < SWEEP_EVERY_MS)
        return;
    T.last_sweep = now;
    for (uint32_t i = 1; i < T.next && i < T.cap; i++) {
        struct domain *d = T.by_idx[i];
        if (d && d->refs == 0 && d->pending == 0 && d->until <= now && !d->writing &&
            now - d->last_seen >= DOMAIN_IDLE_MS && d->hold_until <= now)
            forget(d);
    }
}

/* Lower-cases name into buf (at least 256 bytes); false when the name
 * cannot be a domain here (empty, too long, a NUL). */
static bool norm_name(const char *name, size_t len, char *buf)
{
    if (len == 0 || len > 255 || memchr(name, '\0', len))
        return false;
    ascii_lower(buf, name, len);
    buf[len] = '\0';
    return true;
}

uint32_t domains_find(const char *name, size_t len, bool create, int64_t now)
{
    char buf[256];
    if (!T.ready || !norm_name(name, len, buf))
        return 0;
    struct domain *d = strmap_get(&T.by_name, buf);
    if (d) {
        d->last_seen = now;
        return d->idx;
    }
    if (!create)
        return 0;
    sweep(now);
    uint32_t idx;
    if (T.nfree) {
        idx = T.free_idx[--T.nfree];
    } else {
        if (T.next >= DOMAINS_MAX) {
            log_warn("domains: %u domains known, not tracking %s", T.next - 1, buf);
            return 0;
        }
        idx = T.next++;
    }
    if (idx >= T.cap) {
        uint32_t cap = T.cap ? T.cap * 2 : 256;
        T.by_idx = xrealloc(T.by_idx, cap * sizeof *T.by_idx);
        memset(T.by_idx + T.cap, 0, (cap - T.cap) * sizeof *T.by_idx);
        T.cap = cap;
    }
    d = xcalloc(1, sizeof *d + len + 1);
    memcpy(d->name, buf, len + 1);
    d->name_len = len;
    d->idx = idx;
    d->last_seen = now;
    T.by_idx[idx] = d;
    strmap_put(&T.by_name, d->name, d);
    T.count++;
    return idx;
}

uint32_t domains_of_rcpt(const char *rcpt, size_t len, bool create, int64_t now)
{
    const char *at = rcpt ? memrchr(rcpt, '@', len) : NULL;
    if (!at)
        return 0;
    return domains_find(at + 1, len - (size_t)(at + 1 - rcpt), create, now);
}

void domains_ref(uint32_t d)
{
    struct domain *dom = get(d);
    if (dom)
        dom->refs++;
}

void domains_unref(uint32_t d)
{
    struct domain *dom = get(d);
    if (dom && dom->refs)
        dom->refs--;
}

/* ---- the entry word --------------------------------------------------- */

/* The entry word's low ENTRY_DOMAIN_BITS are the domain's number, the
 * bits above it the entry's shard (0 in the one-shard layout): a shard
 * costs no byte per entry. DOMAINS_MAX stays below the split. */
#define ENTRY_DOMAIN_BITS 24
#define ENTRY_DOMAIN_MASK ((UINT32_C(1) << ENTRY_DOMAIN_BITS) - 1)

uint32_t entry_domain(const struct entry *e)
{
    return e->domain & ENTRY_DOMAIN_MASK;
}

int entry_shard(const struct entry *e)
{
    return (int)(e->domain >> ENTRY_DOMAIN_BITS);
}

void entry_set_shard(struct entry *e, int shard)
{
    e->domain = (e->domain & ENTRY_DOMAIN_MASK) | ((uint32_t)shard << ENTRY_DOMAIN_BITS);
}

static bool entry_placed(const struct entry *e)
{
    return (e->flags & ENTRY_PLACED) != 0;
}

static void entry_set_placed(struct entry *e, bool placed)
{
    if (!entry_domain(e))
        return;
    if (placed)
        e->flags |= ENTRY_PLACED;
    else
        e->flags &= (uint8_t)~ENTRY_PLACED;
}

void entry_set_domain(struct entry *e, uint32_t d)
{
    if (entry_domain(e) != d) {
        domains_unref(entry_domain(e));
        domains_ref(d);
    }
    e->domain = (e->domain & ~ENTRY_DOMAIN_MASK) | (d & ENTRY_DOMAIN_MASK);
    e->flags &= (uint8_t)~ENTRY_PLACED;
}

void domains_pending(uint32_t d, int delta)
{
    struct domain *dom = get(d);
    if (!dom)
        return;
    if (delta < 0 && dom->pending < (uint64_t)-delta)
        dom->pending = 0;
    else
        dom->pending += (uint64_t)(int64_t)delta;
}

/* ---- throttling -------------------------------------------------------- */

struct throttle_write {
    uint32_t d;
    int64_t since;
};

static void throttle_done_cb(void *arg, bool ok, long long result)
{
    struct throttle_write *w = arg;
    struct domain *d = get(w->d);
    if (d && d->since == w->since) {
        d->writing = false;
        if (!ok) {
            /* Not recorded, so not announced: undo it, and let the next
             * reply over the threshold try again. */
            log_warn("domains: the throttle of %s could not be written; lifted", d->name);
            d->until = 0;
            d->last_start = 0;
        }
    }
    if (ok) {
        rbd->events_emitted[EV_DOMAIN_THROTTLED]++;
        events_notify();
    }
    domains_unref(w->d);
    free(w);
}

/* The domain_throttled event of d's back-off as it stands (NULL when it
 * could not be encoded). */
static char *throttle_event(const struct domain *d, int64_t now)
{
    const struct policy *p = rbd->policy;
    json_t *extra = json_object();
    json_object_set_new(extra, "domain", json_string(d->name));
    json_object_set_new(extra, "class", json_string(d->tclass));
    json_object_set_new(extra, "until", json_integer(d->until));
    json_object_set_new(extra, "replies", json_integer(d->replies));
    json_object_set_new(extra, "window_ms", json_integer(p->throttle_window_ms));
    size_t n;
    char *body = event_body(EV_DOMAIN_THROTTLED, now, NULL, extra, &n);
    json_decref(extra);
    return body;
}

static bool shared(void);
static void share_merge(struct domain *d, int64_t now);

static void begin_throttle(struct domain *d, int class_idx, uint32_t replies, int64_t now)
{
    const struct policy *p = rbd->policy;
    d->since = now;
    d->until = now + p->backoff_ms;
    d->last_start = now;
    d->replies = replies;
    snprintf(d->tclass, sizeof d->tclass, "%s", p->classes[class_idx].name);
    held_clear(d);
    log_warn("domains: %s sent %u throttling replies (mostly %s) within %lld ms: backing off for %lld ms", d->name,
             replies, d->tclass, (long long)p->throttle_window_ms, (long long)p->backoff_ms);
    if (shared()) {
        share_merge(d, now);
        return;
    }

    char *body = throttle_event(d, now);
    char arg[96];
    snprintf(arg, sizeof arg, "%s,%lld,%lld", d->tclass, (long long)d->until, (long long)d->since);
    const char *events[1] = {body};
    struct store_change ch = {
        .id = "",
        .id_len = 0,
        .mode = '-',
        .op = STORE_OP_THROTTLE,
        .key = d->name,
        .arg = arg,
        .events = events,
        .nevents = body ? 1 : 0,
    };
    struct throttle_write *w = xmalloc(sizeof *w);
    w->d = d->idx;
    w->since = d->since;
    d->writing = true;
    domains_ref(d->idx);
    int rc = store_queue(&ch, throttle_done_cb, w);
    free(body);
    if (rc != 0)
        throttle_done_cb(w, false, 0);
}

static struct track *track_for(struct domain *d, int class_idx)
{
    for (int i = 0; i < d->ntrack; i++)
        if (d->track[i].class_idx == class_idx)
            return &d->track[i];
    if (!d->track)
        d->track = xcalloc(TRACK_MAX, sizeof *d->track);
    struct track *t;
    if (d->ntrack < TRACK_MAX) {
        t = &d->track[d->ntrack++];
    } else {
        t = &d->track[TRACK_MAX - 1]; /* more throttling classes than slots: the last is shared */
        domain_window_clear(&t->w);
    }
    t->class_idx = class_idx;
    return t;
}

static uint32_t share_threshold(void);

void domains_report(uint32_t di, int class_idx, int64_t now)
{
    const struct policy *p = rbd->policy;
    struct domain *d = get(di);
    if (!d || class_idx < 0 || class_idx >= p->nclasses || !p->classes[class_idx].throttles)
        return;
    d->last_seen = now;
    domain_window_add(&track_for(d, class_idx)->w, p->throttle_window_ms, now, 1);
    if (d->until > now || d->writing)
        return;
    /* One throttle per window: 1000 replies in a minute are one event. */
    if (d->last_start && now - d->last_start < p->throttle_window_ms)
        return;
    uint32_t sum = 0, most = 0;
    int top = class_idx;
    for (int i = 0; i < d->ntrack; i++) {
        uint32_t c = domain_window_count(&d->track[i].w, p->throttle_window_ms, now);
        sum += c;
        if (c > most) {
            most = c;
            top = d->track[i].class_idx;
        }
    }
    if (sum >= share_threshold())
        begin_throttle(d, top, sum, now);
}

static void unthrottle_done_cb(void *arg, bool ok, long long result)
{
    if (!ok)
        log_warn("domains: the end of a throttle could not be written; Redis keeps it until it runs out");
}

struct shift_ctx {
    uint32_t d;
    int64_t old_until, delta;
};

static bool entry_held_by(const struct entry *e, const struct shift_ctx *s)
{
    return entry_domain(e) == s->d && entry_placed(e) && e->state == ENTRY_PENDING && entry_scheduled(e) &&
           !(e->flags & ENTRY_BUSY) && e->node.due_ms >= s->old_until;
}

static void shift_one(struct entry *e, void *arg)
{
    const struct shift_ctx *s = arg;
    if (entry_held_by(e, s))
        sched_set_due(rbd->sched, e, e->node.due_ms - s->delta);
}

/* Ends d's back-off at now: its held retries move up by the time saved. */
static void end_early(struct domain *d, int64_t now)
{
    struct shift_ctx s = {d->idx, d->until, d->until - now};
    d->until = now;
    domain_pace_shift(&d->pace, s.delta);
    if (d->held_overflow) {
        sched_foreach(rbd->sched, shift_one, &s);
    } else {
        for (size_t i = 0; i < d->nheld; i++) {
            struct entry *e = sched_find(rbd->sched, d->held[i], strlen(d->held[i]));
            if (e)
                shift_one(e, &s);
        }
    }
    log_info("domains: %s delivers again: back-off ended %lld ms early, %zu held retries moved up", d->name,
             (long long)s.delta, d->nheld);
    held_clear(d);
    firing_kick();
}

void domains_delivered(uint32_t di, int64_t now)
{
    struct domain *d = get(di);
    if (!d)
        return;
    d->last_seen = now;
    if (d->until <= now)
        return;
    end_early(d, now);
    if (shared()) {
        /* The other instances see the end at their next poll. */
        if (store_throttle_end(d->name, d->since, now, NULL, NULL) != 0)
            unthrottle_done_cb(NULL, false, 0);
        return;
    }
    struct store_change ch = {.id = "", .id_len = 0, .mode = '-', .op = STORE_OP_UNTHROTTLE, .key = d->name};
    if (store_queue(&ch, unthrottle_done_cb, NULL) != 0)
        unthrottle_done_cb(NULL, false, 0);
}

/* ---- sender alerts ----------------------------------------------------- */

static struct alert *alert_for(struct domain *d, int class_idx)
{
    for (int i = 0; i < d->nalerts; i++)
        if (d->alerts[i].class_idx == class_idx)
            return &d->alerts[i];
    if (!d->alerts)
        d->alerts = xcalloc(ALERTS_MAX, sizeof *d->alerts);
    struct alert *a;
    if (d->nalerts < ALERTS_MAX) {
        a = &d->alerts[d->nalerts++];
    } else {
        a = &d->alerts[0]; /* the oldest window gives way */
        for (int i = 1; i < ALERTS_MAX; i++)
            if (d->alerts[i].start < a->start)
                a = &d->alerts[i];
    }
    memset(a, 0, sizeof *a);
    a->class_idx = class_idx;
    return a;
}

bool domains_alert_claim(uint32_t di, int class_idx, int64_t now, uint64_t *repeats)
{
    struct domain *d = get(di);
    int64_t window = rbd->policy->alert_window_ms;
    *repeats = 0;
    if (!d || window <= 0)
        return true;
    struct alert *a = alert_for(d, class_idx);
    if (a->start == 0 || now - a->start >= window || now < a->start) {
        *repeats = a->repeats;
        a->start = now;
        a->repeats = 0;
        return true;
    }
    a->repeats++;
    return false;
}

void domains_alert_unclaim(uint32_t di, int class_idx, uint64_t repeats)
{
    struct domain *d = get(di);
    /* With shards the alert was handed to domains_alert_shared, which
     * raises it whatever became of the report's write: the window stays
     * claimed. */
    if (!d || (shared() && rbd->policy->alert_window_ms > 0))
        return;
    for (int i = 0; i < d->nalerts; i++) {
        if (d->alerts[i].class_idx == class_idx) {
            d->alerts[i].start = 0;
            d->alerts[i].repeats += repeats;
            return;
        }
    }
}

/* ---- firing ------------------------------------------------------------ */

static int share_owned(void);

static int64_t pace_interval_us(void)
{
    return domains_share_interval_us(rbd->policy->pace_per_second, share_owned(), store_nshards());
}

int64_t domains_pace_entry(struct entry *e, int64_t now)
{
    struct domain *d = get(entry_domain(e));
    if (!d)
        return 0;
    /* Held by an operator: the retry waits for the hold's end, at exactly
     * hold_until, which is how domains_release finds it again. */
    if (d->hold_until > now)
        return d->hold_until;
    int64_t interval = pace_interval_us();
    if (d->until > now) {
        int64_t at = domain_pace_hold(&d->pace, d->until, interval);
        if (d->nheld < HELD_MAX) {
            if (d->nheld == d->cap_held) {
                d->cap_held = d->cap_held ? d->cap_held * 2 : 64;
                d->held = xrealloc(d->held, d->cap_held * sizeof *d->held);
            }
            d->held[d->nheld++] = xstrndup(e->id, e->id_len);
        } else {
            d->held_overflow = true;
        }
        entry_set_placed(e, true);
        return at;
    }
    if (d->nheld || d->held_overflow)
        held_clear(d); /* the back-off is over: nothing to move up any more */
    if (entry_placed(e)) {
        entry_set_placed(e, false);
        return 0;
    }
    int64_t at = domain_pace_take(&d->pace, now, interval,
                                  domains_share_burst(rbd->policy->pace_burst, share_owned(), store_nshards()));
    if (at)
        entry_set_placed(e, true);
    return at;
}

/* ---- loading the throttles --------------------------------------------- */

static void (*load_done)(void);
static void holds_load(void);

static void load_reply_cb(void *arg, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        log_warn("load: reading the domain throttles failed (%s); will retry when Redis is back",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
        return; /* schedule_load runs again on reconnect */
    }
    int64_t now = now_ms();
    size_t honoured = 0;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        char cls[POLICY_NAME_MAX];
        long long until, since;
        char val[128];
        snprintf(val, sizeof val, "%.*s", (int)v->len, v->str);
        if (sscanf(val, "%31[a-z0-9_],%lld,%lld", cls, &until, &since) != 3 || until <= now) {
            store_domain_forget(k->str, k->len);
            continue;
        }
        struct domain *d = get(domains_find(k->str, k->len, true, now));
        if (!d)
            continue;
        d->until = until;
        d->since = since;
        d->last_start = since;
        snprintf(d->tclass, sizeof d->tclass, "%s", cls);
        honoured++;
        log_info("load: %s is backed off until %lld (%s)", d->name, until, cls);
    }
    if (honoured)
        log_info("load: %zu domain throttles honoured", honoured);
    holds_load();
}

static void share_load(void);

void domains_load(void (*done)(void))
{
    load_done = done;
    if (shared()) {
        share_load();
        return;
    }
    if (store_domains_read(load_reply_cb, NULL) != 0)
        log_warn("load: Redis went away; will resume when it is back");
}

void domains_policy_changed(void)
{
    /* Windows and alert slots are kept per class number, which a reload
     * may change: they start over (soft state). */
    for (uint32_t i = 1; i < T.next && i < T.cap; i++) {
        struct domain *d = T.by_idx[i];
        if (!d)
            continue;
        free(d->track);
        free(d->alerts);
        d->track = NULL;
        d->alerts = NULL;
        d->ntrack = d->nalerts = 0;
    }
}

/* ---- reports ----------------------------------------------------------- */

static json_t *hold_json(const struct domain *d, json_t *o)
{
    json_object_set_new(o, "since", json_integer(d->hold_since));
    if (d->hold_until != DOMAINS_HOLD_FOREVER)
        json_object_set_new(o, "until", json_integer(d->hold_until));
    return o;
}

static json_t *holds_json(int64_t now)
{
    json_t *a = json_array();
    for (uint32_t i = 1; i < T.next && i < T.cap; i++) {
        struct domain *d = T.by_idx[i];
        if (d && d->hold_until > now) {
            json_t *h = json_object();
            json_object_set_new(h, "domain", json_string(d->name));
            json_object_set_new(h, "pending", json_integer((json_int_t)d->pending));
            json_array_append_new(a, hold_json(d, h));
        }
    }
    return a;
}

/* held: the retries given a place after the back-off, while it lasts. */
static json_t *throttle_json(const struct domain *d, json_t *o, bool held)
{
    json_object_set_new(o, "class", json_string(d->tclass));
    json_object_set_new(o, "since", json_integer(d->since));
    json_object_set_new(o, "until", json_integer(d->until));
    if (held)
        json_object_set_new(o, "held", json_integer((json_int_t)d->nheld));
    return o;
}

json_t *domains_stats_json(int64_t now)
{
    json_t *o = json_object();
    json_t *throttled = json_array();
    struct domain *top[TOP_PENDING];
    int ntop = 0;
    for (uint32_t i = 1; i < T.next && i < T.cap; i++) {
        struct domain *d = T.by_idx[i];
        if (!d)
            continue;
        if (d->until > now) {
            json_t *t = json_object();
            json_object_set_new(t, "domain", json_string(d->name));
            json_array_append_new(throttled, throttle_json(d, t, true));
        }
        if (d->pending == 0)
            continue;
        /* insertion into a sorted top list: TOP_PENDING is small */
        int k;
        if (ntop < TOP_PENDING)
            k = ntop++;
        else if (top[TOP_PENDING - 1]->pending < d->pending)
            k = TOP_PENDING - 1;
        else
            continue;
        while (k > 0 && top[k - 1]->pending < d->pending) {
            top[k] = top[k - 1];
            k--;
        }
        top[k] = d;
    }
    json_t *arr = json_array();
    for (int i = 0; i < ntop; i++)
        json_array_append_new(arr, json_pack("{sssI}", "domain", top[i]->name, "pending", (json_int_t)top[i]->pending));
    json_object_set_new(o, "known", json_integer((json_int_t)T.count));
    json_object_set_new(o, "throttled", throttled);
    json_object_set_new(o, "top_pending", arr);
    json_object_set_new(o, "held", holds_json(now));
    json_t *sh = domains_share_json();
    if (sh)
        json_object_set_new(o, "shared", sh);
    return o;
}

json_t *domains_json(const char *name, size_t len, int64_t now)
{
    char buf[256];
    json_t *o = json_object();
    if (!norm_name(name, len, buf)) {
        json_object_set_new(o, "domain", json_stringn(name, len));
        json_object_set_new(o, "known", json_false());
        return o;
    }
    json_object_set_new(o, "domain", json_string(buf));
    struct domain *d = T.ready ? strmap_get(&T.by_name, buf) : NULL;
    json_object_set_new(o, "known", json_boolean(d != NULL));
    json_object_set_new(o, "pending", json_integer(d ? (json_int_t)d->pending : 0));
    json_object_set_new(o, "throttled", json_boolean(d && d->until > now));
    if (!d)
        return o;
    const struct policy *p = rbd->policy;
    if (d->hold_until > now)
        json_object_set_new(o, "held", hold_json(d, json_object()));
    if (d->since) {
        json_t *t = throttle_json(d, json_object(), d->until > now);
        json_object_set_new(t, "replies", json_integer(d->replies));
        json_object_set_new(o, d->until > now ? "throttle" : "last_throttle", t);
    }
    if (domain_pace_backlogged(&d->pace, now))
        json_object_set_new(o, "paced_until", json_integer((d->pace.tat_us + 999) / 1000));
    json_t *win = json_object();
    for (int i = 0; i < d->ntrack; i++) {
        int c = d->track[i].class_idx;
        if (c >= 0 && c < p->nclasses)
            json_object_set_new(win, p->classes[c].name,
                                json_integer(domain_window_count(&d->track[i].w, p->throttle_window_ms, now)));
    }
    json_object_set_new(o, "window", win);
    json_object_set_new(o, "window_ms", json_integer(p->throttle_window_ms));
    /* The policy's figure: what the instances back the domain off at
     * together (each counts its share of it: stats' domains.shared), so
     * the answer is the same whichever instance is asked. */
    json_object_set_new(o, "threshold", json_integer(p->throttle_replies));
    json_t *alerts = json_array();
    for (int i = 0; i < d->nalerts; i++) {
        const struct alert *a = &d->alerts[i];
        if (a->start == 0 || a->class_idx < 0 || a->class_idx >= p->nclasses)
            continue;
        json_array_append_new(alerts, json_pack("{sssIsI}", "class", p->classes[a->class_idx].name, "since",
                                                (json_int_t)a->start, "repeats", (json_int_t)a->repeats));
    }
    json_object_set_new(o, "alerts", alerts);
    json_object_set_new(o, "last_seen", json_integer(d->last_seen));
    return o;
}

/* ---- operator holds ---------------------------------------------------- */

struct release_ctx {
    uint32_t d;
    int64_t at, now;
    size_t moved;
};

static void release_one(struct entry *e, void *arg)
{
    struct release_ctx *r = arg;
    if (entry_domain(e) == r->d && e->state == ENTRY_PENDING && entry_scheduled(e) && !(e->flags & ENTRY_BUSY) &&
        e->node.due_ms == r->at) {
        sched_set_due(rbd->sched, e, r->now);
        r->moved++;
    }
}

uint32_t domains_hold(const char *name, size_t len, int64_t until, int64_t since, int64_t now)
{
    uint32_t di = domains_find(name, len, true, now);
    struct domain *d = get(di);
    if (!d)
        return 0;
    int64_t to = until ? until : DOMAINS_HOLD_FOREVER;
    /* Held again with another end: the retries waiting for the old end
     * are due now, and firing gives them the new one. */
    if (d->hold_until > now && d->hold_until != to && d->pending) {
        struct release_ctx r = {di, d->hold_until, now, 0};
        sched_foreach(rbd->sched, release_one, &r);
        firing_kick();
    }
    d->hold_until = to;
    d->hold_since = since;
    d->last_seen = now;
    return di;
}

size_t domains_release(const char *name, size_t len, int64_t now)
{
    char buf[256];
    if (!T.ready || !norm_name(name, len, buf))
        return 0;
    struct domain *d = strmap_get(&T.by_name, buf);
    if (!d || !d->hold_until)
        return 0;
    struct release_ctx r = {d->idx, d->hold_until, now, 0};
    d->hold_until = d->hold_since = 0;
    d->last_seen = now;
    /* The retries that fell due during the hold wait at exactly its end;
     * they are due now, and their domain's pace spaces them out again. */
    if (r.at > now && d->pending)
        sched_foreach(rbd->sched, release_one, &r);
    firing_kick();
    return r.moved;
}

bool domains_held(uint32_t di, int64_t now)
{
    struct domain *d = get(di);
    return d && d->hold_until > now;
}

uint64_t domains_held_count(int64_t now)
{
    uint64_t n = 0;
    for (uint32_t i = 1; i < T.next && i < T.cap; i++)
        if (T.by_idx[i] && T.by_idx[i]->hold_until > now)
            n++;
    return n;
}

static void holds_read_cb(void *arg, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        log_warn("load: reading the held domains failed (%s); will retry when Redis is back",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
        return; /* schedule_load runs again on reconnect */
    }
    int64_t now = now_ms();
    size_t held = 0;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        char val[64];
        long long until, since;
        snprintf(val, sizeof val, "%.*s", (int)v->len, v->str);
        if (sscanf(val, "%lld,%lld", &until, &since) != 2 || (until && until <= now)) {
            store_held_del(k->str, NULL, NULL); /* ran out while the daemon was down */
            continue;
        }
        if (domains_hold(k->str, k->len, until, since, now))
            held++;
    }
    if (held)
        log_info("load: %zu held domains", held);
    void (*done)(void) = load_done;
    load_done = NULL;
    if (done)
        done();
}

static void holds_load(void)
{
    if (store_held_read(holds_read_cb, NULL) != 0)
        log_warn("load: Redis went away; will resume when it is back");
}

void domains_entry_unplace(struct entry *e)
{
    entry_set_placed(e, false);
}

/* ---- names (learned timing) ---- */

const char *domains_name(uint32_t d)
{
    struct domain *x = d && d < T.cap ? T.by_idx[d] : NULL;
    return x ? x->name : NULL;
}

/* ---- throttles and alerts across instances (shards) -------------------
 *
 * With shards each instance sees only its own shards' reports, about
 * owned/S of a domain's replies, and sends about that share of its
 * retries: the threshold, the pace and its burst are scaled by the share,
 * so the instances together throttle and pace a domain as one daemon
 * would. The windows stay local (the KumoMTA lesson: share only the small
 * part); the decision is shared. An instance that passes its threshold
 * backs off at once and merges its throttle into one hash in Redis
 * (store/throttle.c: max of until); the instance whose merge began the
 * episode announces it (domain_throttled, once); every instance reads
 * the hash about once a second and holds its own retries of the domains
 * others backed off. A poll never waits in the way of anything: it is one
 * asynchronous command, and the next is not sent while one is out.
 *
 * Not fenced: the hash and the alert keys are every shard's, so no one
 * shard's epoch can vouch for a write to them (and in a Redis Cluster the
 * epoch is in another slot). A paused instance that wakes after losing
 * its shards can at worst merge a back-off its own replies justified (at
 * most the policy's backoff from its clock) or end one early; neither
 * moves a record or loses a report. The domain_throttled event itself
 * goes through the fenced write of one of its shards.
 */
#define SHARE_POLL_MS 1000
#define SHARE_KEEP_MS 10000 /* an early end stays readable this long */

static struct {
    uv_timer_t *timer;
    bool polling;
    uint64_t polls, poll_failures, adopted, ended, alerts_raised, alerts_deduped, merges_begun;
} S;

static bool shared(void)
{
    return store_nshards() > 1;
}

static int share_owned(void)
{
    int n = __builtin_popcountll(rbd->shards_held);
    return n > 0 ? n : store_nshards(); /* none held yet: nothing to scale */
}

uint32_t domains_share_threshold(int replies, int owned, int nshards)
{
    if (replies <= 0)
        return 0;
    if (nshards <= 1 || owned <= 0 || owned >= nshards)
        return (uint32_t)replies;
    int64_t t = ((int64_t)replies * owned + nshards - 1) / nshards; /* rounded up */
    return t > 0 ? (uint32_t)t : 1;
}

int64_t domains_share_interval_us(int per_second, int owned, int nshards)
{
    if (per_second <= 0)
        return 0;
    if (nshards <= 1 || owned <= 0 || owned > nshards)
        owned = nshards = 1;
    /* per_second * owned / nshards a second: the interval grows by nshards/owned */
    int64_t iv = INT64_C(1000000) * nshards / ((int64_t)per_second * owned);
    return iv > 0 ? iv : 1;
}

int domains_share_burst(int burst, int owned, int nshards)
{
    if (burst <= 0 || nshards <= 1 || owned <= 0 || owned >= nshards)
        return burst;
    int64_t b = ((int64_t)burst * owned + nshards - 1) / nshards;
    return b > 0 ? (int)b : 1;
}

static uint32_t share_threshold(void)
{
    return domains_share_threshold(rbd->policy->throttle_replies, shared() ? share_owned() : 1, store_nshards());
}

int domains_throttle_merge(struct domains_throttle *stored, bool *have, const struct domains_throttle *mine,
                           int64_t now)
{
    if (!*have || stored->until <= now) {
        *stored = *mine;
        *have = true;
        return DOMAINS_MERGE_BEGAN;
    }
    if (mine->until > stored->until) {
        stored->until = mine->until;
        return DOMAINS_MERGE_LENGTHENED;
    }
    return DOMAINS_MERGE_COVERED;
}

static bool parse_throttle(const char *v, size_t len, struct domains_throttle *t)
{
    char val[128];
    long long until, since;
    if (len >= sizeof val)
        return false;
    memcpy(val, v, len);
    val[len] = '\0';
    char cls[POLICY_NAME_MAX];
    if (sscanf(val, "%31[a-z0-9_],%lld,%lld", cls, &until, &since) != 3)
        return false;
    snprintf(t->cls, sizeof t->cls, "%s", cls);
    t->until = until;
    t->since = since;
    return true;
}

static void share_event_done_cb(void *arg, bool ok, long long result)
{
    enum event_type *type = arg;
    if (ok) {
        rbd->events_emitted[*type]++;
        events_notify();
    }
    free(type);
}

/* Writes one event body (events only, under one of this instance's
 * shards, so fenced like any write of it). */
static void share_emit(enum event_type type, const char *body)
{
    if (!body)
        return;
    const char *events[1] = {body};
    struct store_change ch = {.shard = STORE_SHARD_ANY, .id = "", .id_len = 0, .mode = '-', .events = events,
                              .nevents = 1};
    enum event_type *t = xmalloc(sizeof *t);
    *t = type;
    if (store_queue(&ch, share_event_done_cb, t) != 0) {
        log_warn("domains: an event could not be written (Redis went away)");
        free(t);
    }
}

static void share_merge_cb(void *arg, redisReply *reply)
{
    struct throttle_write *w = arg;
    struct domain *d = get(w->d);
    struct domains_throttle t;
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
              reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[1]->type == REDIS_REPLY_STRING &&
              parse_throttle(reply->element[1]->str, reply->element[1]->len, &t);
    if (d && d->since == w->since) {
        d->writing = false;
        if (!ok) {
            /* Not shared, so not announced: lifted, as a throttle that
             * could not be written is with one daemon. */
            log_warn("domains: the throttle of %s could not be shared (%s); lifted", d->name,
                     reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
            d->until = 0;
            d->last_start = 0;
        } else {
            /* The episode in force is the shared one: its end, and the
             * since by which an early end names it. */
            d->until = t.until;
            d->since = t.since;
            snprintf(d->tclass, sizeof d->tclass, "%s", t.cls);
            if (reply->element[0]->integer == DOMAINS_MERGE_BEGAN) {
                S.merges_begun++;
                char *body = throttle_event(d, now_ms());
                share_emit(EV_DOMAIN_THROTTLED, body);
                free(body);
            } else {
                log_info("domains: %s was already backed off by another instance, until %lld", d->name,
                         (long long)t.until);
            }
        }
    }
    domains_unref(w->d);
    free(w);
}

static void share_merge(struct domain *d, int64_t now)
{
    char value[96];
    snprintf(value, sizeof value, "%s,%lld,%lld", d->tclass, (long long)d->until, (long long)d->since);
    struct throttle_write *w = xmalloc(sizeof *w);
    w->d = d->idx;
    w->since = d->since;
    d->writing = true;
    domains_ref(d->idx);
    if (store_throttle_merge(d->name, value, now, share_merge_cb, w) != 0)
        share_merge_cb(w, NULL);
}

int domains_shared_apply(const char *name, size_t len, const char *value, size_t vlen, int64_t now)
{
    char buf[256];
    struct domains_throttle t;
    if (!T.ready || !norm_name(name, len, buf) || !parse_throttle(value, vlen, &t))
        return 0;
    struct domain *d = strmap_get(&T.by_name, buf);
    if (!d || d->writing)
        return 0; /* none of its retries here; or our own merge will say */
    if (t.until > now && t.until > d->until) {
        bool fresh = d->until <= now;
        d->until = t.until;
        if (fresh || d->since != t.since) {
            d->since = t.since;
            d->last_start = t.since;
            d->replies = 0;
            snprintf(d->tclass, sizeof d->tclass, "%s", t.cls);
        }
        if (fresh) {
            held_clear(d);
            log_info("domains: %s backed off by another instance until %lld (%s)", d->name, (long long)t.until,
                     t.cls);
        }
        S.adopted++;
        return DOMAINS_APPLIED_ADOPTED;
    }
    if (d->until > now && t.until < d->until && t.since == d->since) {
        end_early(d, t.until > now ? t.until : now);
        S.ended++;
        return DOMAINS_APPLIED_ENDED;
    }
    return 0;
}

static void share_poll_cb(void *arg, redisReply *reply)
{
    S.polling = false;
    void (*done)(void) = arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        S.poll_failures++;
        if (done) {
            log_warn("load: reading the shared domain throttles failed (%s); will retry when Redis is back",
                     reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
            return; /* schedule_load runs again on reconnect */
        }
        return;
    }
    S.polls++;
    int64_t now = now_ms();
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        /* At load, as a single daemon does with its throttles: the domain
         * is known from now on, so a report for it finds it backed off. */
        if (done)
            domains_find(k->str, k->len, true, now);
        domains_shared_apply(k->str, k->len, v->str, v->len, now);
    }
    if (done)
        done();
}

void domains_share_tick(int64_t now)
{
    /* Only an instance with shards has retries to hold; one poll out at
     * a time, so a slow Redis gets one command a second at most. */
    if (!shared() || S.polling || !rbd->shards_held || !store_ready() || rbd->stopping)
        return;
    S.polling = true;
    if (store_throttle_poll(now, SHARE_KEEP_MS, share_poll_cb, NULL) != 0)
        S.polling = false;
}

static void share_timer_cb(uv_timer_t *t)
{
    domains_share_tick(now_ms());
}

static void share_load(void)
{
    if (!S.timer && rbd->loop) {
        S.timer = xmalloc(sizeof *S.timer);
        uv_timer_init(rbd->loop, S.timer);
        uv_timer_start(S.timer, share_timer_cb, SHARE_POLL_MS, SHARE_POLL_MS);
    }
    if (store_throttle_poll(now_ms(), SHARE_KEEP_MS, share_poll_cb, (void *)holds_load) != 0)
        log_warn("load: Redis went away; will resume when it is back");
}

static void share_timer_closed(uv_handle_t *h)
{
    free(h);
}

void domains_share_stop(void)
{
    if (!S.timer)
        return;
    uv_close((uv_handle_t *)S.timer, share_timer_closed);
    S.timer = NULL;
}

struct alert_claim {
    char *body;
    enum event_type type;
};

static void alert_claim_cb(void *arg, redisReply *reply)
{
    struct alert_claim *a = arg;
    if (reply && reply->type == REDIS_REPLY_STATUS) {
        S.alerts_raised++;
        share_emit(EV_SENDER_ALERT, a->body);
    } else if (reply && reply->type == REDIS_REPLY_NIL) {
        S.alerts_deduped++; /* another instance raised this window's */
    } else {
        log_warn("domains: a sender_alert could not be claimed (%s); not raised",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
    }
    free(a->body);
    free(a);
}

bool domains_alert_shared(uint32_t di, int class_idx, const char *body)
{
    struct domain *d = get(di);
    const struct policy *p = rbd->policy;
    if (!shared() || !d || !body || p->alert_window_ms <= 0 || class_idx < 0 || class_idx >= p->nclasses)
        return false;
    struct alert_claim *a = xmalloc(sizeof *a);
    a->body = xstrdup(body);
    if (store_alert_claim(d->name, p->classes[class_idx].name, rbd->instance_id, p->alert_window_ms, alert_claim_cb,
                          a) != 0) {
        /* Redis is away: the report's own write fails too and is resent;
         * this instance's window is given back so the resend claims it. */
        free(a->body);
        free(a);
        for (int i = 0; i < d->nalerts; i++)
            if (d->alerts[i].class_idx == class_idx)
                d->alerts[i].start = 0;
    }
    return true;
}

json_t *domains_share_json(void)
{
    if (!shared())
        return NULL;
    return json_pack("{sisIsIsIsIsIsIsI}", "owned", share_owned(), "polls",
                     (json_int_t)S.polls, "poll_failures", (json_int_t)S.poll_failures, "adopted",
                     (json_int_t)S.adopted, "ended", (json_int_t)S.ended, "began", (json_int_t)S.merges_begun,
                     "alerts_raised", (json_int_t)S.alerts_raised, "alerts_deduped", (json_int_t)S.alerts_deduped);
}
