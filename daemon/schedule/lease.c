/*
 * The lease's lifecycle (lease.h). One timer checks every lease_ttl/10:
 *
 *   standby  tries to acquire (SET NX PX and INCR of the epoch in one
 *            script, store/lease.c); on success it reads the schedule back
 *            (schedule_load) and serves it once loaded;
 *   owner    renews every lease_ttl/5, only while the value is still its
 *            own; a renewal that finds another value, or no renewal
 *            confirmed for lease_ttl - lease_ttl/5 (Redis unreachable, or
 *            this process paused), stops serving and firing at once: the
 *            lease may be another's by then;
 *   fenced   also entered when Redis refuses a write as FENCED (the epoch
 *            moved: another instance acquired). Nothing is served; once
 *            nothing is in flight the in-memory schedule is dropped and the
 *            instance stands by, to read the schedule afresh if it owns it
 *            again (what it had may be older than what the new owner wrote).
 *
 * The renewal's deadline is counted from when the last confirmed renewal
 * was sent, not answered, so it never outlives the lease in Redis. Each
 * instance also writes a heartbeat to <prefix>members every renewal
 * period and reads them all back, for the cluster op.
 */
#include "schedule/lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/daemon.h"
#include "base/log.h"
#include "events/events.h"
#include "schedule/domains.h"
#include "schedule/firing.h"
#include "schedule/load.h"
#include "store/store.h"

#define MEMBERS_MAX 64

struct member {
    char id[128], addr[128];
    int64_t at;
};

static struct {
    bool on;
    const struct lease_hooks *hooks;
    uv_timer_t timer;
    bool timer_open;
    char who[620];   /* "<instance> <addr>" */
    char value[660]; /* ours while held: "<who> <epoch>" */
    char owner_id[300], owner_addr[300];
    unsigned gen;    /* bumped when the lease is lost: late answers are ignored */
    bool acquiring, renewing, released;
    int64_t acquire_sent, renew_sent, renew_ok; /* renew_ok: when the last confirmed renewal was sent */
    int64_t last_beat, last_read;
    struct member members[MEMBERS_MAX];
    int nmembers;
    void (*release_done)(void);
} L;

static void set_role(enum lease_role r)
{
    rbd->lease_role = (int)r;
}

static enum lease_role role(void)
{
    return (enum lease_role)rbd->lease_role;
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
    return role() == LEASE_NONE || role() == LEASE_OWNER;
}

const char *lease_owner_addr(void)
{
    return L.owner_addr;
}

const char *lease_owner_id(void)
{
    return L.owner_id;
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

/* "<id> <addr> <epoch>": the owner's id and address. */
static void owner_from(const char *v, size_t len)
{
    const char *sp1 = memchr(v, ' ', len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - v)) : NULL;
    if (!sp1 || !sp2) {
        L.owner_id[0] = L.owner_addr[0] = '\0';
        return;
    }
    snprintf(L.owner_id, sizeof L.owner_id, "%.*s", (int)(sp1 - v), v);
    snprintf(L.owner_addr, sizeof L.owner_addr, "%.*s", (int)(sp2 - sp1 - 1), sp1 + 1);
}

/* Stops serving: the lease is, or may be, another's. */
static void self_fence(const char *why)
{
    if (role() != LEASE_LOADING && role() != LEASE_OWNER)
        return;
    set_role(LEASE_FENCED);
    L.gen++;
    L.renewing = false;
    rbd->loaded = false; /* ops answer unavailable, firing stops */
    rbd->lease_epoch = 0;
    store_fence_set(0);
    rbd->lease_self_fenced++;
    L.owner_id[0] = L.owner_addr[0] = '\0';
    log_warn("lease: %s; not serving the schedule any more (standing by once nothing is in flight)", why);
}

void lease_fenced(void)
{
    self_fence("Redis refused a write as FENCED: another instance acquired the lease");
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
    set_role(LEASE_STANDBY);
    log_info("lease: schedule dropped; standing by");
}

static void loaded_cb(void)
{
    if (role() != LEASE_LOADING || rbd->stopping)
        return; /* lost meanwhile: the fenced state drops it */
    rbd->loaded = true;
    set_role(LEASE_OWNER);
    log_info("lease: serving the schedule (epoch %lld): %llu pending, %llu awaiting", rbd->lease_epoch,
             (unsigned long long)rbd->npending, (unsigned long long)rbd->nawaiting);
    firing_kick();
    events_link_up();
    if (L.hooks && L.hooks->serving)
        L.hooks->serving();
}

static void acquire_cb(void *arg, redisReply *reply)
{
    if ((unsigned)(uintptr_t)arg != L.gen)
        return;
    L.acquiring = false;
    if (role() != LEASE_STANDBY || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *v = reply->element[1];
    owner_from(v->str, v->len);
    if (reply->element[0]->integer <= 0 || rbd->stopping)
        return;
    rbd->lease_epoch = reply->element[0]->integer;
    snprintf(L.value, sizeof L.value, "%.*s", (int)v->len, v->str);
    store_fence_set(rbd->lease_epoch);
    L.renew_ok = L.renew_sent = L.acquire_sent;
    rbd->lease_takeovers++;
    set_role(LEASE_LOADING);
    log_info("lease: acquired (epoch %lld); reading the schedule back", rbd->lease_epoch);
    schedule_load(loaded_cb);
}

static void renew_cb(void *arg, redisReply *reply)
{
    if ((unsigned)(uintptr_t)arg != L.gen)
        return;
    L.renewing = false;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        L.renew_ok = L.renew_sent;
        return;
    }
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        self_fence("the lease is not ours any more");
        return;
    }
    rbd->lease_renew_failures++;
}

/* A heartbeat this many TTLs old is an instance that is gone (with the
 * default instance_id, every start is a new one): the owner forgets it. */
#define MEMBER_FORGET_TTLS 30

static void members_cb(void *arg, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    int64_t gone = now_ms() - MEMBER_FORGET_TTLS * rbd->cfg.lease_ttl_ms;
    L.nmembers = 0;
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
        if (m->at < gone && role() == LEASE_OWNER) {
            store_members_forget(m->id);
            L.nmembers--;
        }
    }
}

static void read_cb(void *arg, redisReply *reply)
{
    if (role() == LEASE_FENCED && reply && reply->type == REDIS_REPLY_STRING)
        owner_from(reply->str, reply->len);
}

static void try_acquire(int64_t now)
{
    if (!rbd->stopping && !L.acquiring && store_ready() &&
        store_lease_acquire(L.who, rbd->cfg.lease_ttl_ms, acquire_cb, (void *)(uintptr_t)L.gen) == 0) {
        L.acquiring = true;
        L.acquire_sent = now;
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
    switch (role()) {
    case LEASE_STANDBY:
        try_acquire(now);
        break;
    case LEASE_LOADING:
    case LEASE_OWNER:
        if (now >= L.renew_ok + rbd->cfg.lease_ttl_ms - renew_every) {
            self_fence("the lease could not be renewed in time");
            break;
        }
        if (!L.renewing && now - L.renew_sent >= renew_every &&
            store_lease_renew(L.value, rbd->cfg.lease_ttl_ms, renew_cb, (void *)(uintptr_t)L.gen) == 0) {
            L.renewing = true;
            L.renew_sent = now;
        }
        break;
    case LEASE_FENCED:
        if (store_batch_empty() && store_inflight() == 0 && rbd->requests_waiting == 0) {
            drop_schedule();
            try_acquire(now); /* and learn who owns it now */
        } else if (now - L.last_read >= renew_every && store_ready() && store_lease_read(read_cb, NULL) == 0) {
            L.last_read = now; /* meanwhile, tell clients where the owner is */
        }
        break;
    case LEASE_NONE:
        break;
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

void lease_init(const struct lease_hooks *hooks)
{
    memset(&L, 0, sizeof L);
    L.hooks = hooks;
    if (rbd->cfg.lease_ttl_ms <= 0) {
        set_role(LEASE_NONE);
        return;
    }
    L.on = true;
    set_role(LEASE_STANDBY);
    snprintf(L.who, sizeof L.who, "%s %s", rbd->instance_id, rbd->advertise);
    if (rbd->loop) {
        uv_timer_init(rbd->loop, &L.timer);
        L.timer_open = true;
        uv_timer_start(&L.timer, timer_cb, (uint64_t)lease_check_every(), (uint64_t)lease_check_every());
    }
}

void lease_close(void)
{
    if (L.timer_open && !uv_is_closing((uv_handle_t *)&L.timer))
        uv_close((uv_handle_t *)&L.timer, NULL);
    L.timer_open = false;
}

void lease_link_up(void)
{
    /* A load cut short by the drop starts over on the new connection. */
    if (role() == LEASE_LOADING)
        schedule_load(loaded_cb);
    lease_tick(mono_ms());
}

static void release_cb(void *arg, redisReply *reply)
{
    void (*done)(void) = L.release_done;
    L.release_done = NULL;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        log_info("lease: released (epoch %lld)", rbd->lease_epoch);
    if (done)
        done();
}

void lease_release(void (*done)(void))
{
    bool held = role() == LEASE_LOADING || role() == LEASE_OWNER;
    if (!L.on || L.released) {
        if (done)
            done();
        return;
    }
    L.released = true;
    L.gen++;
    store_members_forget(rbd->instance_id);
    L.release_done = done;
    if (!held || store_lease_release(L.value, release_cb, NULL) != 0) {
        L.release_done = NULL;
        if (done)
            done();
    }
}
