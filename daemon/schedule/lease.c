/*
 * The leases' lifecycle (lease.h). The schedule is in S shards (S = 1,
 * shard 0, in today's layout; cfg.shards with the sharded one), each with
 * a lease and an epoch of its own. One timer checks every lease_ttl/10,
 * and each shard goes through the same states:
 *
 *   standby  tries to acquire (SET NX PX and INCR of the epoch in one
 *            script, store/lease.c) while this instance holds fewer than
 *            its fair share, ceil(S / live instances); on success it reads
 *            the shard back (one shard at a time) and serves it once
 *            loaded; otherwise it learns the shard's owner, for relaying;
 *   owner    renews every lease_ttl/5, only while the value is still its
 *            own; a renewal that finds another value, or no renewal
 *            confirmed for lease_ttl - lease_ttl/5 (Redis unreachable, or
 *            this process paused), stops serving and firing the shard at
 *            once: the lease may be another's by then;
 *   fenced   also entered when Redis refuses a write as FENCED (the epoch
 *            moved: another instance acquired; with shards, every shard's
 *            lease is checked at once to find which). Nothing of the shard
 *            is served; once nothing of it is in flight its entries are
 *            dropped and it stands by, to be read afresh if it is ours
 *            again (what it had may be older than what the new owner
 *            wrote). A shard given up to stay within the fair share goes
 *            the same way but keeps its epoch until its writes in flight
 *            are answered, then releases the lease (shedding).
 *
 * The renewal's deadline is counted from when the last confirmed renewal
 * was sent, not answered, so it never outlives the lease in Redis. Each
 * instance also writes a heartbeat to <prefix>members every renewal
 * period and reads them all back: the live ones are the cluster op's
 * instances and the fair share's divisor.
 */
#include "schedule/lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "events/events.h"
#include "queue/shard.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "schedule/load.h"
#include "store/store.h"

#define MEMBERS_MAX 64
/* With shards, subscribers on any instance read the one event stream:
 * this often when nothing of this instance's own wakes them sooner. */
#define EVENTS_POLL_MS 20

struct member {
    char id[128], addr[128];
    int64_t at;
};

/* One shard's lease. */
struct shard_lease {
    enum lease_role role;
    long long epoch;
    char value[660]; /* ours while held: "<who> <epoch>" */
    char owner_id[300], owner_addr[300];
    unsigned gen;    /* bumped when the lease is lost: late answers are ignored */
    bool acquiring, renewing, reading, shedding, releasing;
    int64_t acquire_sent, renew_sent, renew_ok; /* renew_ok: when the last confirmed renewal was sent */
    int64_t last_read;
};

static struct {
    bool on;
    int nshards;
    const struct lease_hooks *hooks;
    uv_timer_t timer, poll;
    bool timer_open, poll_open;
    char who[620]; /* "<instance> <addr>" */
    bool released, served_once, members_seen;
    int loading; /* the shard being read back, or -1 */
    int first;   /* where this instance starts looking for free shards */
    int64_t last_beat;
    struct member members[MEMBERS_MAX];
    int nmembers;
    int releases_out;
    void (*release_done)(void);
    struct shard_lease sh[SHARD_MAX];
} L;

static void load_next(void);

static bool sharded(void)
{
    return L.nshards > 1;
}

static uint64_t bit(int k)
{
    return (uint64_t)1 << k;
}

/* A callback's argument: the shard and its generation when sent. */
static void *tag(int k)
{
    return (void *)(uintptr_t)(((uintptr_t)L.sh[k].gen << 8) | (uintptr_t)k);
}

static struct shard_lease *untag(void *arg, int *k)
{
    uintptr_t v = (uintptr_t)arg;
    *k = (int)(v & 0xff);
    if (*k >= L.nshards || (unsigned)(v >> 8) != L.sh[*k].gen)
        return NULL;
    return &L.sh[*k];
}

/* rbd's view, for everything that asks about the whole instance: the
 * one shard's role, or with shards the busiest role any shard has. */
static void sync_rbd(void)
{
    if (!sharded()) {
        rbd->lease_role = (int)L.sh[0].role;
        rbd->lease_epoch = L.sh[0].epoch;
        return;
    }
    enum lease_role r = LEASE_STANDBY;
    long long epoch = 0;
    for (int k = 0; k < L.nshards; k++) {
        const struct shard_lease *s = &L.sh[k];
        if (s->role == LEASE_OWNER || (s->role == LEASE_LOADING && r != LEASE_OWNER) ||
            (s->role == LEASE_FENCED && r == LEASE_STANDBY))
            r = s->role;
        if (s->epoch > epoch)
            epoch = s->epoch;
    }
    rbd->lease_role = (int)r;
    rbd->lease_epoch = epoch;
    rbd->loaded = rbd->shards_served != 0;
}

static void set_role(int k, enum lease_role r)
{
    L.sh[k].role = r;
    if (r == LEASE_OWNER)
        rbd->shards_served |= bit(k);
    else
        rbd->shards_served &= ~bit(k);
    /* held: loading or served; a shard being given up is neither (its
     * retries wait for the next owner), though its epoch is kept until its
     * writes in flight are answered */
    if (r == LEASE_OWNER || r == LEASE_LOADING)
        rbd->shards_held |= bit(k);
    else
        rbd->shards_held &= ~bit(k);
    sync_rbd();
}

int64_t lease_check_every(void)
{
    int64_t t = rbd->cfg.lease_ttl_ms / 10;
    return t < 10 ? 10 : t;
}

int64_t lease_renew_every(void)
{
    int64_t t = rbd->cfg.lease_ttl_ms / 5;
    return t < 20 ? 20 : t;
}

bool lease_serving(void)
{
    /* With shards every instance takes every request and routes it by
     * shard (ops/ops.c); lease_shard_serving says which it serves. */
    return rbd->lease_role == LEASE_NONE || rbd->lease_role == LEASE_OWNER || sharded();
}

bool lease_shard_serving(int k)
{
    if (!L.on)
        return true;
    return k >= 0 && k < L.nshards && L.sh[k].role == LEASE_OWNER;
}

const char *lease_shard_owner_addr(int k)
{
    return k >= 0 && k < L.nshards ? L.sh[k].owner_addr : "";
}

const char *lease_shard_owner_id(int k)
{
    return k >= 0 && k < L.nshards ? L.sh[k].owner_id : "";
}

int lease_shards(void)
{
    return L.on ? L.nshards : 1;
}

const char *lease_owner_addr(void)
{
    return L.sh[0].owner_addr;
}

const char *lease_owner_id(void)
{
    return L.sh[0].owner_id;
}

const char *lease_role_name(void)
{
    static const char *const names[] = {"none", "standby", "loading", "owner", "fenced"};
    unsigned r = (unsigned)rbd->lease_role;
    return r < sizeof names / sizeof names[0] ? names[r] : "?";
}

void lease_members(void (*fn)(const char *id, const char *addr, void *arg), void *arg)
{
    int64_t live = now_ms() - rbd->cfg.lease_ttl_ms;
    for (int i = 0; i < L.nmembers; i++)
        if (L.members[i].at >= live)
            fn(L.members[i].id, L.members[i].addr, arg);
}

/* Live instances, this one counted even before its heartbeat is read. */
static int live_members(void)
{
    int64_t live = now_ms() - rbd->cfg.lease_ttl_ms;
    int n = 0;
    bool me = false;
    for (int i = 0; i < L.nmembers; i++) {
        if (L.members[i].at < live)
            continue;
        n++;
        me = me || strcmp(L.members[i].id, rbd->instance_id) == 0;
    }
    return me ? n : n + 1;
}

/* "<id> <addr> <epoch>": the owner's id and address. */
static void owner_from(struct shard_lease *s, const char *v, size_t len)
{
    const char *sp1 = v ? memchr(v, ' ', len) : NULL;
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - v)) : NULL;
    if (!sp1 || !sp2) {
        s->owner_id[0] = s->owner_addr[0] = '\0';
        return;
    }
    snprintf(s->owner_id, sizeof s->owner_id, "%.*s", (int)(sp1 - v), v);
    snprintf(s->owner_addr, sizeof s->owner_addr, "%.*s", (int)(sp2 - sp1 - 1), sp1 + 1);
}

/* Stops serving shard k: its lease is, or may be, another's. */
static void self_fence(int k, const char *why)
{
    struct shard_lease *s = &L.sh[k];
    if (s->role != LEASE_LOADING && s->role != LEASE_OWNER)
        return;
    s->gen++;
    s->renewing = false;
    s->shedding = false;
    s->epoch = 0;
    store_fence_set(k, 0);
    set_role(k, LEASE_FENCED);
    if (!sharded())
        rbd->loaded = false; /* ops answer unavailable, firing stops */
    rbd->lease_self_fenced++;
    s->owner_id[0] = s->owner_addr[0] = '\0';
    if (sharded())
        log_warn("lease: shard %d: %s; not serving it any more", k, why);
    else
        log_warn("lease: %s; not serving the schedule any more (standing by once nothing is in flight)", why);
}

static int64_t mono_ms(void);

void lease_fenced(void)
{
    if (!sharded()) {
        self_fence(0, "Redis refused a write as FENCED: another instance acquired the lease");
        return;
    }
    /* Which shard moved: every held shard's lease is checked now (a
     * renewal that finds another value or epoch fences that shard). */
    static int64_t logged;
    int64_t now = mono_ms();
    if (now - logged >= lease_renew_every()) {
        logged = now;
        log_warn("lease: Redis refused a write as FENCED; checking the lease of every shard held");
    }
    for (int k = 0; k < L.nshards; k++)
        L.sh[k].renew_sent = INT64_MIN / 2;
}

/* ---- dropping a shard's entries ---- */

struct drop_walk {
    int shard;
    bool busy;
    struct entry **list;
    size_t n, cap;
};

static void drop_visit(struct entry *e, void *arg)
{
    struct drop_walk *w = arg;
    if (entry_shard(e) != w->shard)
        return;
    if ((e->flags & (ENTRY_BUSY | ENTRY_FIRING)) || entry_has_waiters(e)) {
        w->busy = true;
        return;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 1024;
        w->list = xrealloc(w->list, w->cap * sizeof *w->list);
    }
    w->list[w->n++] = e;
}

/* Forgets shard k's entries when none of them is in flight; false when
 * one still is (tried again at the next check). */
static bool drop_shard_entries(int k)
{
    struct drop_walk w = {.shard = k};
    sched_foreach(rbd->sched, drop_visit, &w);
    if (!w.busy)
        for (size_t i = 0; i < w.n; i++)
            entry_forget(w.list[i]);
    free(w.list);
    return !w.busy;
}

/* A fenced instance with nothing in flight forgets the schedule it had. */
static void drop_schedule(void)
{
    sched_free(rbd->sched);
    rbd->sched = sched_new();
    rbd->npending = rbd->nawaiting = 0;
    memset(rbd->pending_by_class, 0, sizeof rbd->pending_by_class);
    domains_free();
    domains_init();
    firing_kick();
    set_role(0, LEASE_STANDBY);
    log_info("lease: schedule dropped; standing by");
}

/* ---- acquiring, loading, renewing ---- */

static void loaded_cb(int k)
{
    struct shard_lease *s = &L.sh[k];
    if (L.loading == k)
        L.loading = -1;
    if (s->role != LEASE_LOADING || rbd->stopping) {
        load_next(); /* lost meanwhile: the fenced state drops it */
        return;
    }
    set_role(k, LEASE_OWNER);
    rbd->loaded = true;
    if (sharded())
        log_info("lease: shard %d served (epoch %lld): %llu pending, %llu awaiting in all", k, s->epoch,
                 (unsigned long long)rbd->npending, (unsigned long long)rbd->nawaiting);
    else
        log_info("lease: serving the schedule (epoch %lld): %llu pending, %llu awaiting", s->epoch,
                 (unsigned long long)rbd->npending, (unsigned long long)rbd->nawaiting);
    firing_kick();
    if (!sharded() || !L.served_once) {
        events_link_up();
        if (L.hooks && L.hooks->serving)
            L.hooks->serving();
    }
    L.served_once = true;
    load_next();
}

static void loaded0_cb(void)
{
    loaded_cb(0);
}

/* Starts reading back the next shard acquired, one at a time (a shard
 * being read while another is served costs the served one nothing but
 * the loop's time). */
static void load_next(void)
{
    if (L.loading >= 0 || rbd->stopping)
        return;
    for (int k = 0; k < L.nshards; k++) {
        if (L.sh[k].role != LEASE_LOADING)
            continue;
        L.loading = k;
        if (!sharded())
            schedule_load(loaded0_cb);
        else
            schedule_load_shard(k, rbd->shards_served == 0, loaded_cb);
        return;
    }
}

static void acquire_cb(void *arg, redisReply *reply)
{
    int k;
    struct shard_lease *s = untag(arg, &k);
    if (!s)
        return;
    s->acquiring = false;
    if (s->role != LEASE_STANDBY || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *v = reply->element[1];
    owner_from(s, v->str, v->len);
    if (reply->element[0]->integer <= 0 || rbd->stopping || L.released)
        return;
    s->epoch = reply->element[0]->integer;
    snprintf(s->value, sizeof s->value, "%.*s", (int)v->len, v->str);
    store_fence_set(k, s->epoch);
    s->renew_ok = s->renew_sent = s->acquire_sent;
    rbd->lease_takeovers++;
    set_role(k, LEASE_LOADING);
    if (sharded())
        log_info("lease: shard %d acquired (epoch %lld); reading it back", k, s->epoch);
    else
        log_info("lease: acquired (epoch %lld); reading the schedule back", s->epoch);
    load_next();
}

static void renew_cb(void *arg, redisReply *reply)
{
    int k;
    struct shard_lease *s = untag(arg, &k);
    if (!s)
        return;
    s->renewing = false;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        s->renew_ok = s->renew_sent;
        return;
    }
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        self_fence(k, "the lease is not ours any more");
        return;
    }
    rbd->lease_renew_failures++;
}

/* A heartbeat this many TTLs old is an instance that is gone (with the
 * default instance_id, every start is a new one): an owner forgets it. */
#define MEMBER_FORGET_TTLS 30

static void members_cb(void *arg, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    int64_t gone = now_ms() - MEMBER_FORGET_TTLS * rbd->cfg.lease_ttl_ms;
    L.nmembers = 0;
    L.members_seen = true;
    for (size_t i = 0; i + 1 < reply->elements && L.nmembers < MEMBERS_MAX; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        const char *sp = memchr(v->str, ' ', v->len);
        if (!sp)
            continue;
        struct member *m = &L.members[L.nmembers++];
        snprintf(m->id, sizeof m->id, "%.*s", (int)k->len, k->str);
        snprintf(m->addr, sizeof m->addr, "%.*s", (int)(sp - v->str), v->str);
        m->at = strtoll(sp + 1, NULL, 10);
        if (m->at < gone && L.sh[0].role == LEASE_OWNER) {
            store_members_forget(m->id);
            L.nmembers--;
        }
    }
}

static void read_cb(void *arg, redisReply *reply)
{
    int k;
    struct shard_lease *s = untag(arg, &k);
    if (!s)
        return;
    s->reading = false;
    if (!reply || (s->role != LEASE_FENCED && s->role != LEASE_STANDBY))
        return;
    if (reply->type == REDIS_REPLY_STRING)
        owner_from(s, reply->str, reply->len);
    else if (reply->type == REDIS_REPLY_NIL)
        owner_from(s, NULL, 0);
}

/* Whether shard k's last known owner is another live instance: a shard
 * worth trying to acquire has none. */
static bool owner_live(const struct shard_lease *s)
{
    if (!s->owner_id[0] || strcmp(s->owner_id, rbd->instance_id) == 0)
        return false;
    int64_t live = now_ms() - rbd->cfg.lease_ttl_ms;
    for (int i = 0; i < L.nmembers; i++)
        if (L.members[i].at >= live && strcmp(L.members[i].id, s->owner_id) == 0)
            return true;
    return false;
}

static void try_acquire(int k, int64_t now)
{
    struct shard_lease *s = &L.sh[k];
    if (!rbd->stopping && !L.released && !s->acquiring && store_ready() &&
        store_lease_acquire(k, L.who, rbd->cfg.lease_ttl_ms, acquire_cb, tag(k)) == 0) {
        s->acquiring = true;
        s->acquire_sent = now;
    }
}

/* Learns who owns shard k (for relaying), once a renewal period. */
static void read_owner(int k, int64_t now)
{
    struct shard_lease *s = &L.sh[k];
    if (!s->reading && now - s->last_read >= lease_renew_every() && store_ready() &&
        store_lease_read(k, read_cb, tag(k)) == 0) {
        s->reading = true;
        s->last_read = now;
    }
}

static void release_cb(void *arg, redisReply *reply);

/* Shard k's entries, when none is in flight: dropped; a shard being shed
 * then gives its lease up. */
static void fenced_tick(int k, int64_t now)
{
    struct shard_lease *s = &L.sh[k];
    /* A load of the shard that is still reading would bring entries back
     * after the drop; one that Redis cut short never will. */
    bool reading = L.loading == k && schedule_loading();
    if (L.loading == k && !reading)
        L.loading = -1;
    if (!sharded()) {
        if (store_batch_empty() && store_inflight() == 0 && rbd->requests_waiting == 0 && !reading) {
            drop_schedule();
            try_acquire(0, now); /* and learn who owns it now */
        } else if (now - s->last_read >= lease_renew_every() && store_ready() &&
                   store_lease_read(0, read_cb, tag(0)) == 0) {
            s->last_read = now; /* meanwhile, tell clients where the owner is */
        }
        return;
    }
    if (reading || s->releasing || !drop_shard_entries(k))
        return;
    if (s->shedding && store_batch_empty()) {
        /* Everything written under the epoch is answered: give it up. */
        s->releasing = true;
        if (store_lease_release(k, s->value, release_cb, tag(k)) != 0)
            s->releasing = false;
        return;
    }
    if (s->shedding)
        return;
    set_role(k, LEASE_STANDBY);
    firing_kick();
    log_info("lease: shard %d dropped; standing by for it", k);
}

/* Gives up the shards above the fair share, the highest-numbered first:
 * new requests for them are answered `unavailable` (resend), what is in
 * flight is answered, then the lease is released for another to take. */
static void shed(int share)
{
    uint64_t held = rbd->shards_served;
    for (int k = 0; k < L.nshards; k++)
        if (L.sh[k].role == LEASE_LOADING || (L.sh[k].role == LEASE_FENCED && L.sh[k].shedding))
            held |= bit(k);
    uint64_t give = shard_excess(held, share) & rbd->shards_served;
    for (int k = 0; k < L.nshards; k++) {
        if (!(give & bit(k)))
            continue;
        struct shard_lease *s = &L.sh[k];
        s->shedding = true;
        s->renewing = false;
        set_role(k, LEASE_FENCED);
        rbd->shards_shed++;
        log_info("lease: shard %d: giving it up (fair share %d of %d shards)", k, share, L.nshards);
    }
}

void lease_tick(int64_t now)
{
    if (!L.on || L.released)
        return;
    int64_t renew_every = lease_renew_every();
    if (now - L.last_beat >= renew_every && store_ready()) {
        /* wall clock: the other instances compare it with theirs */
        char beat[400];
        snprintf(beat, sizeof beat, "%s %lld", rbd->advertise, (long long)now_ms());
        if (store_members_beat(rbd->instance_id, beat) == 0) {
            L.last_beat = now;
            store_members_read(members_cb, NULL);
        }
    }
    int share = shard_fair_share(L.nshards, live_members());
    if (sharded() && L.members_seen)
        shed(share);
    /* held, and asked for: an acquisition in flight counts as taken */
    int held = shard_count(rbd->shards_held);
    for (int k = 0; k < L.nshards; k++)
        held += L.sh[k].role == LEASE_STANDBY && L.sh[k].acquiring;
    for (int i = 0; i < L.nshards; i++) {
        int k = (L.first + i) % L.nshards;
        struct shard_lease *s = &L.sh[k];
        switch (s->role) {
        case LEASE_STANDBY:
            /* With shards, only up to the fair share, once the others'
             * heartbeats are known. */
            if (!sharded()) {
                try_acquire(k, now);
            } else if (s->acquiring) {
                ; /* counted above */
            } else if (L.members_seen && held < share && !owner_live(s)) {
                held++;
                try_acquire(k, now);
            } else {
                read_owner(k, now);
            }
            break;
        case LEASE_LOADING:
        case LEASE_OWNER:
            if (now >= s->renew_ok + rbd->cfg.lease_ttl_ms - renew_every) {
                self_fence(k, "the lease could not be renewed in time");
                break;
            }
            if (!s->renewing && now - s->renew_sent >= renew_every &&
                store_lease_renew(k, s->value, rbd->cfg.lease_ttl_ms, renew_cb, tag(k)) == 0) {
                s->renewing = true;
                s->renew_sent = now;
            }
            break;
        case LEASE_FENCED:
            fenced_tick(k, now);
            break;
        case LEASE_NONE:
            break;
        }
    }
}

/* The lease's own clock: monotonic, so that a wall-clock step can neither
 * stretch the renewal deadline past the lease's life in Redis nor cut it. */
static int64_t mono_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000);
}

static void timer_cb(uv_timer_t *t)
{
    lease_tick(mono_ms());
}

static void poll_cb(uv_timer_t *t)
{
    if (!rbd->stopping && store_ready())
        events_notify();
}

void lease_init(const struct lease_hooks *hooks)
{
    memset(&L, 0, sizeof L);
    L.hooks = hooks;
    L.loading = -1;
    L.nshards = 1;
    rbd->shards_held = rbd->shards_served = 0;
    if (rbd->cfg.lease_ttl_ms <= 0) {
        L.sh[0].role = LEASE_NONE;
        sync_rbd();
        return;
    }
    L.on = true;
    L.nshards = store_nshards();
    for (int k = 0; k < L.nshards; k++) {
        L.sh[k].role = LEASE_STANDBY;
        L.sh[k].last_read = INT64_MIN / 2; /* the owners are asked at the first check */
    }
    if (sharded())
        L.last_beat = INT64_MIN / 2; /* the members too: the share needs them */
    sync_rbd();
    snprintf(L.who, sizeof L.who, "%s %s", rbd->instance_id, rbd->advertise);
    /* Instances start their search for free shards at different places,
     * so that starting together they do not all race for shard 0. */
    L.first = sharded() ? (int)(shard_crc16(rbd->instance_id, strlen(rbd->instance_id)) % (unsigned)L.nshards) : 0;
    if (rbd->loop) {
        uv_timer_init(rbd->loop, &L.timer);
        L.timer_open = true;
        uv_timer_start(&L.timer, timer_cb, (uint64_t)lease_check_every(), (uint64_t)lease_check_every());
        if (sharded()) {
            uv_timer_init(rbd->loop, &L.poll);
            L.poll_open = true;
            uv_timer_start(&L.poll, poll_cb, EVENTS_POLL_MS, EVENTS_POLL_MS);
        }
    }
}

void lease_close(void)
{
    if (L.timer_open && !uv_is_closing((uv_handle_t *)&L.timer))
        uv_close((uv_handle_t *)&L.timer, NULL);
    if (L.poll_open && !uv_is_closing((uv_handle_t *)&L.poll))
        uv_close((uv_handle_t *)&L.poll, NULL);
    L.timer_open = L.poll_open = false;
}

void lease_link_up(void)
{
    /* A load cut short by the drop starts over on the new connection. */
    if (L.loading >= 0) {
        L.loading = -1;
        load_next();
    }
    if (sharded() && L.served_once && !rbd->loaded)
        events_link_up(); /* subscribers here read every shard's events (main.c does it while serving) */
    lease_tick(mono_ms());
}

static void release_all_done(void)
{
    void (*done)(void) = L.release_done;
    L.release_done = NULL;
    if (done)
        done();
}

static void release_cb(void *arg, redisReply *reply)
{
    int k = (int)((uintptr_t)arg & 0xff);
    struct shard_lease *s = k < L.nshards ? &L.sh[k] : NULL;
    bool ok = reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    if (s && s->shedding && !L.released) {
        /* A shard given up for the fair share: another takes it now. */
        s->shedding = s->releasing = false;
        s->epoch = 0;
        store_fence_set(k, 0);
        s->gen++;
        set_role(k, LEASE_STANDBY);
        if (ok)
            log_info("lease: shard %d released", k);
        return;
    }
    if (ok && sharded())
        log_info("lease: shard %d released (epoch %lld)", k, s ? s->epoch : 0);
    else if (ok)
        log_info("lease: released (epoch %lld)", rbd->lease_epoch);
    if (L.releases_out > 0 && --L.releases_out == 0)
        release_all_done();
}

void lease_release(void (*done)(void))
{
    if (!L.on || L.released) {
        if (done)
            done();
        return;
    }
    L.released = true;
    store_members_forget(rbd->instance_id);
    L.release_done = done;
    L.releases_out = 1; /* until every release is sent */
    for (int k = 0; k < L.nshards; k++) {
        struct shard_lease *s = &L.sh[k];
        bool held = s->role == LEASE_LOADING || s->role == LEASE_OWNER || (s->role == LEASE_FENCED && s->shedding);
        s->gen++;
        if (held && store_lease_release(k, s->value, release_cb, (void *)(uintptr_t)k) == 0)
            L.releases_out++;
    }
    if (--L.releases_out == 0)
        release_all_done();
}
