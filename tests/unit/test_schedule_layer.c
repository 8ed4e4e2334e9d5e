/*
 * daemon/schedule/ without Redis (tests/unit/daemon_stubs.c stands in for
 * the store and events/): an entry's life and its counters, the assertion
 * that refuses a change while a write is in flight, a domain's pace, and
 * firing's choice of the script or the burst by the batch's size.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "config/policy_load.h"
#include "daemon_stubs.h"
#include "queue/sched.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "queue/shard.h"
#include "schedule/lease.h"
#include "schedule/load.h"

static int waiter_runs;

static void count_waiters(struct entry *e)
{
    waiter_runs++;
}

static int setup(void **state)
{
    char err[512];
    memset(rbd, 0, sizeof *rbd);
    rbd->policy = policy_load_file(REBOUND_SOURCE_DIR "/tests/fast-policy.json", err, sizeof err);
    if (!rbd->policy)
        fail_msg("%s", err);
    rbd->sched = sched_new();
    rbd->loop = uv_default_loop();
    rbd->cfg.fire_batch = 1000;
    rbd->cfg.stream_maxlen = 1000;
    rbd->loaded = true;
    static const struct entry_hooks hooks = {.run_waiters = count_waiters};
    entry_set_hooks(&hooks);
    firing_init(); /* and the domain table */
    stubs_reset();
    waiter_runs = 0;
    return 0;
}

static int teardown(void **state)
{
    firing_stop();
    uv_run(rbd->loop, UV_RUN_NOWAIT); /* the close callbacks */
    sched_free(rbd->sched);
    domains_free();
    policy_free(rbd->policy);
    stubs_reset();
    return 0;
}

static struct entry *pending(const char *id, const char *domain, int64_t due)
{
    struct entry *e = sched_add(rbd->sched, id, strlen(id));
    struct entry_facts f = {0, 1, due - 1000, domains_find(domain, strlen(domain), true, now_ms())};
    entry_become(e, ENTRY_PENDING, &f);
    sched_set_due(rbd->sched, e, due);
    return e;
}

static json_int_t domain_pending(const char *name)
{
    json_t *o = domains_json(name, strlen(name), now_ms());
    json_int_t n = json_integer_value(json_object_get(o, "pending"));
    json_decref(o);
    return n;
}

static void test_entry_life_and_counters(void **state)
{
    struct entry *e = pending("m1", "Example.org", now_ms() + 60000);
    assert_int_equal(rbd->npending, 1);
    assert_int_equal(rbd->pending_by_class[0], 1);
    assert_int_equal(domain_pending("example.org"), 1);

    entry_become(e, ENTRY_AWAITING, NULL); /* fired */
    assert_int_equal(e->state, ENTRY_AWAITING);
    assert_int_equal(rbd->npending, 0);
    assert_int_equal(rbd->pending_by_class[0], 0);
    assert_int_equal(rbd->nawaiting, 1);
    assert_int_equal(domain_pending("example.org"), 0);

    /* a later report retries it again, in another class */
    struct entry_facts f = {2, 2, e->first_ms, e->domain};
    entry_become(e, ENTRY_PENDING, &f);
    assert_int_equal(rbd->nawaiting, 0);
    assert_int_equal(rbd->pending_by_class[2], 1);
    assert_int_equal(e->attempt, 2);

    /* delivered: back to NEW, the waiters run, and nothing keeps it */
    entry_become(e, ENTRY_NEW, NULL);
    assert_int_equal(rbd->npending, 0);
    entry_settle(e);
    assert_int_equal(waiter_runs, 1);
    assert_null(sched_find(rbd->sched, "m1", 2));
    assert_int_equal(sched_count(rbd->sched), 0);
}

static void test_settle_keeps_a_retry(void **state)
{
    struct entry *e = pending("m2", "example.org", now_ms() + 60000);
    entry_settle(e);
    assert_int_equal(waiter_runs, 1);
    assert_ptr_equal(sched_find(rbd->sched, "m2", 2), e);
    entry_forget(e);
    assert_int_equal(rbd->npending, 0);
    assert_int_equal(domain_pending("example.org"), 0);
    assert_null(sched_find(rbd->sched, "m2", 2));
}

/* A change while a write about the entry is in flight would decide on
 * state Redis has not confirmed: the test builds abort. */
static void test_change_while_busy_aborts(void **state)
{
#ifdef NDEBUG
    skip();
#else
    struct entry *e = pending("m3", "example.org", now_ms() + 60000);
    e->flags |= ENTRY_BUSY;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) /* the assertion's message is expected */
            _exit(2);
        entry_become(e, ENTRY_AWAITING, NULL);
        _exit(0); /* not reached while the check holds */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    e->flags &= (uint8_t)~ENTRY_BUSY;
    entry_become(e, ENTRY_AWAITING, NULL); /* allowed once the write is answered */
    assert_int_equal(rbd->nawaiting, 1);
#endif
}

/* The fast policy paces a domain at 100 a second with a burst of 200: the
 * first 200 due at one instant go at once, the rest get places 10 ms apart. */
static void test_domain_pace(void **state)
{
    int64_t now = now_ms();
    int64_t last = 0;
    int at_once = 0;
    for (int i = 0; i < 300; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        struct entry *e = pending(id, "paced.example", now);
        int64_t later = domains_pace_entry(e, now);
        if (later == 0) {
            at_once++;
            assert_int_equal(i, at_once - 1); /* the burst comes first */
            continue;
        }
        assert_true(later > now);
        if (last)
            assert_int_equal(later - last, 10);
        last = later;
    }
    assert_int_equal(at_once, 200);
    assert_true(last - now >= 99 * 10 && last - now <= 101 * 10);
}

/* An operator's hold: a held domain's due retries wait for exactly the
 * hold's end (another domain's do not); release makes them due now, and
 * they take the pace again (no place kept from before). */
static void test_domain_hold_and_release(void **state)
{
    int64_t now = now_ms();
    assert_int_equal(domains_held_count(now), 0);
    uint32_t d = domains_hold("Held.example", 12, 0, now, now);
    assert_true(d != 0);
    assert_true(domains_held(d, now));
    assert_int_equal(domains_held_count(now), 1);
    struct entry *held[3];
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "h%d", i);
        held[i] = pending(id, "held.example", now);
        int64_t later = domains_pace_entry(held[i], now);
        assert_int_equal(later, DOMAINS_HOLD_FOREVER);
        sched_set_due(rbd->sched, held[i], later);
    }
    struct entry *free_one = pending("f0", "free.example", now);
    assert_int_equal(domains_pace_entry(free_one, now), 0);
    json_t *st = domains_stats_json(now);
    json_t *h = json_object_get(st, "held");
    assert_int_equal(json_array_size(h), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(h, 0), "domain")), "held.example");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(h, 0), "pending")), 3);
    json_decref(st);

    /* held again with an end: the waiting retries move to it */
    domains_hold("held.example", 12, now + 5000, now, now);
    for (int i = 0; i < 3; i++) {
        assert_true(held[i]->node.due_ms <= now_ms());
        int64_t later = domains_pace_entry(held[i], now);
        assert_int_equal(later, now + 5000);
        sched_set_due(rbd->sched, held[i], later);
    }
    assert_int_equal(domains_release("HELD.example", 12, now), 3);
    assert_false(domains_held(d, now));
    assert_int_equal(domains_held_count(now), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(held[i]->node.due_ms, now);
        assert_int_equal(domains_pace_entry(held[i], now), 0); /* within the burst */
    }
    assert_int_equal(domains_release("held.example", 12, now), 0);
    /* a hold that has run out holds nothing */
    domains_hold("gone.example", 12, now + 10, now, now);
    assert_true(domains_held(domains_find("gone.example", 12, false, now), now));
    assert_false(domains_held(domains_find("gone.example", 12, false, now + 10), now + 10));
}

/* Runs the loop until the stub store saw n fires (at most 2 s). */
static void run_until_fires(int n)
{
    for (int i = 0; i < 2000 && stubs.nfires < n; i++) {
        uv_run(rbd->loop, UV_RUN_NOWAIT);
        if (stubs.nfires < n)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    assert_int_equal(stubs.nfires, n);
}

static void test_firing_script_then_burst(void **state)
{
    int64_t due = now_ms() - 10;
    uint64_t late_before = lateness.count;
    struct entry *small[50];
    for (int i = 0; i < 50; i++) {
        char id[16], dom[32];
        snprintf(id, sizeof id, "s%d", i);
        snprintf(dom, sizeof dom, "d%d.example", i);
        small[i] = pending(id, dom, due);
    }
    firing_kick();
    run_until_fires(1);
    /* a small batch goes through the fire script, its entries busy */
    assert_false(stubs.fires[0].burst);
    assert_int_equal(stubs.fires[0].n, 50);
    assert_true(small[0]->flags & ENTRY_BUSY);
    stubs_answer_fire(0, true, STORE_FIRE_NOW);
    assert_int_equal(rbd->npending, 0);
    assert_int_equal(rbd->nawaiting, 50);
    assert_int_equal(small[49]->state, ENTRY_AWAITING);
    assert_false(small[49]->flags & (ENTRY_BUSY | ENTRY_FIRING));
    assert_int_equal(stubs.fired_calls, 1);
    assert_int_equal(rbd->events_emitted[EV_RETRY], 50);
    /* each retry fired counts its lateness: due 10 ms before the batch left */
    assert_int_equal(lateness.count - late_before, 50);
    assert_true(lateness.sum_ms >= 50 * 10);
    assert_int_equal(lateness.buckets[0] + lateness.buckets[1], 0);

    /* 300 at once: one batch, as a burst */
    for (int i = 0; i < 300; i++) {
        char id[16], dom[32];
        snprintf(id, sizeof id, "b%d", i);
        snprintf(dom, sizeof dom, "e%d.example", i);
        pending(id, dom, due);
    }
    firing_kick();
    run_until_fires(2);
    assert_true(stubs.fires[1].burst);
    assert_int_equal(stubs.fires[1].n, 300);
    /* Redis went away before it answered: nothing fired, every one is due
     * again, and none is sent while Redis is down */
    stubs.ready = false;
    stubs_answer_fire(1, false, STORE_FIRE_NOW);
    assert_int_equal(stubs.nfires, 2);
    assert_int_equal(rbd->npending, 300);
    assert_int_equal(rbd->nawaiting, 50);
    assert_int_equal(rbd->events_emitted[EV_RETRY], 50);
    assert_int_equal(lateness.count - late_before, 50); /* nothing fired, nothing observed */
    struct entry *b0 = sched_find(rbd->sched, "b0", 2);
    assert_non_null(b0);
    assert_int_equal(b0->state, ENTRY_PENDING);
    assert_true(entry_scheduled(b0));
}

/* ---- the lease's state machine (schedule/lease.c) ---- */

static redisReply *int_reply(long long v)
{
    static redisReply r[8];
    static int k;
    redisReply *x = &r[k++ % 8];
    memset(x, 0, sizeof *x);
    x->type = REDIS_REPLY_INTEGER;
    x->integer = v;
    return x;
}

/* {epoch, value}: the acquire script's answer. */
static void answer_acquire(int i, long long epoch, const char *value)
{
    redisReply e = {.type = REDIS_REPLY_INTEGER, .integer = epoch};
    redisReply v = {.type = REDIS_REPLY_STRING, .str = (char *)value, .len = strlen(value)};
    redisReply *el[2] = {&e, &v};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = el};
    assert_string_equal(stub_cmds.c[i].name, "store_lease_acquire");
    stubs_answer_command(i, &arr);
}

/* The last command sent, which must be `name`. */
static int last_command(const char *name)
{
    assert_true(stub_cmds.n > 0);
    assert_string_equal(stub_cmds.c[stub_cmds.n - 1].name, name);
    return stub_cmds.n - 1;
}

static void test_lease_state_machine(void **state)
{
    rbd->loaded = false;
    rbd->cfg.lease_ttl_ms = 1000; /* renew every 200, check every 100 */
    snprintf(rbd->instance_id, sizeof rbd->instance_id, "me");
    snprintf(rbd->advertise, sizeof rbd->advertise, "127.0.0.1:7001");
    lease_init(NULL);
    assert_int_equal(rbd->lease_role, LEASE_STANDBY);
    assert_false(lease_serving());
    assert_int_equal(lease_renew_every(), 200);
    assert_int_equal(lease_check_every(), 100);

    /* held by another: stand by, and know where it is */
    lease_tick(0);
    int a = last_command("store_lease_acquire");
    assert_string_equal(stub_cmds.c[a].first, "me 127.0.0.1:7001");
    lease_tick(50); /* one acquire at a time */
    assert_int_equal(last_command("store_lease_acquire"), a);
    answer_acquire(a, 0, "other 10.0.0.2:7001 4");
    assert_int_equal(rbd->lease_role, LEASE_STANDBY);
    assert_string_equal(lease_owner_addr(), "10.0.0.2:7001");
    assert_string_equal(lease_owner_id(), "other");

    /* free: ours, with a new epoch that every write now carries */
    lease_tick(100);
    a = last_command("store_lease_acquire");
    answer_acquire(a, 5, "me 127.0.0.1:7001 5");
    assert_int_equal(rbd->lease_role, LEASE_LOADING);
    assert_int_equal(rbd->lease_epoch, 5);
    assert_int_equal(stub_fence_epoch, 5);
    assert_int_equal(rbd->lease_takeovers, 1);
    assert_string_equal(lease_owner_addr(), "127.0.0.1:7001");
    assert_false(lease_serving()); /* not before the schedule is read back */

    /* renewed every 200 ms with our own value */
    lease_tick(200);
    assert_string_equal(stub_cmds.c[stub_cmds.n - 1].name, "store_lease_acquire"); /* not yet */
    lease_tick(300);
    int r = last_command("store_lease_renew");
    assert_string_equal(stub_cmds.c[r].first, "me 127.0.0.1:7001 5");
    stubs_answer_command(r, int_reply(1)); /* valid until 300 + 1000 */
    /* two renewals lost (Redis unreachable) */
    lease_tick(500);
    stubs_answer_command(last_command("store_lease_renew"), NULL);
    lease_tick(700);
    stubs_answer_command(last_command("store_lease_renew"), NULL);
    assert_int_equal(rbd->lease_renew_failures, 2);
    lease_tick(1000);
    int late = last_command("store_lease_renew");
    assert_int_equal(rbd->lease_role, LEASE_LOADING);
    /* the deadline: the last confirmed renewal's send + ttl - renew period */
    lease_tick(1100);
    assert_int_equal(rbd->lease_role, LEASE_FENCED);
    assert_int_equal(rbd->lease_self_fenced, 1);
    assert_int_equal(stub_fence_epoch, 0);
    assert_false(rbd->loaded);
    /* a renewal answered after the fence changes nothing */
    stubs_answer_command(late, int_reply(1));
    assert_int_equal(rbd->lease_role, LEASE_FENCED);

    /* fenced: the schedule is dropped only once nothing is in flight */
    struct entry *e = sched_add(rbd->sched, "x1", 2);
    assert_non_null(e);
    stub_inflight = 1;
    int before = stub_cmds.n;
    lease_tick(1200);
    assert_int_equal(rbd->lease_role, LEASE_FENCED);
    assert_int_equal(sched_count(rbd->sched), 1);
    stub_inflight = 0;
    lease_tick(1300);
    assert_int_equal(rbd->lease_role, LEASE_STANDBY);
    assert_int_equal(sched_count(rbd->sched), 0);
    assert_true(stub_cmds.n > before);
    a = last_command("store_lease_acquire"); /* at once: who owns it now */
    answer_acquire(a, 6, "me 127.0.0.1:7001 6");
    assert_int_equal(rbd->lease_role, LEASE_LOADING);
    assert_int_equal(rbd->lease_takeovers, 2);

    /* a renewal that finds another value: fenced at once */
    lease_tick(1500);
    stubs_answer_command(last_command("store_lease_renew"), int_reply(0));
    assert_int_equal(rbd->lease_role, LEASE_FENCED);
    assert_int_equal(rbd->lease_self_fenced, 2);
    lease_tick(1600);
    assert_int_equal(rbd->lease_role, LEASE_STANDBY);
    answer_acquire(last_command("store_lease_acquire"), 7, "me 127.0.0.1:7001 7");

    /* Redis refused a write as FENCED (the store's hook) */
    lease_fenced();
    assert_int_equal(rbd->lease_role, LEASE_FENCED);
    lease_fenced(); /* once is enough */
    assert_int_equal(rbd->lease_self_fenced, 3);

    /* shutdown: a standby has nothing to give up */
    lease_tick(1700);
    assert_int_equal(rbd->lease_role, LEASE_STANDBY);
    int n = stub_cmds.n;
    lease_release(NULL);
    assert_int_equal(stub_cmds.n, n);
    lease_tick(1800); /* released: no more acquisitions */
    assert_int_equal(stub_cmds.n, n);
    lease_close();
    uv_run(rbd->loop, UV_RUN_NOWAIT); /* the timer's close */

    /* no lease: the daemon serves, nothing is sent */
    rbd->cfg.lease_ttl_ms = 0;
    lease_init(NULL);
    assert_int_equal(rbd->lease_role, LEASE_NONE);
    assert_true(lease_serving());
    lease_tick(5000);
    assert_int_equal(stub_cmds.n, n);
}

static void test_lease_release_on_shutdown(void **state)
{
    rbd->cfg.lease_ttl_ms = 2000;
    snprintf(rbd->instance_id, sizeof rbd->instance_id, "me");
    snprintf(rbd->advertise, sizeof rbd->advertise, "127.0.0.1:7001");
    lease_init(NULL);
    lease_tick(0);
    answer_acquire(last_command("store_lease_acquire"), 1, "me 127.0.0.1:7001 1");
    assert_int_equal(rbd->lease_role, LEASE_LOADING);
    lease_release(NULL);
    int r = last_command("store_lease_release");
    assert_string_equal(stub_cmds.c[r].first, "me 127.0.0.1:7001 1"); /* only if still ours */
    stubs_answer_command(r, int_reply(1));
    lease_close();
}

/* Commands named `name` sent since index from. */
static int count_since(const char *name, int from)
{
    int n = 0;
    for (int i = from; i < stub_cmds.n; i++)
        n += strcmp(stub_cmds.c[i].name, name) == 0;
    return n;
}

/* Answers the members read with live heartbeats of the ids given. */
static void answer_members(int i, const char *const *ids, int n)
{
    redisReply el[16], *els[16];
    char vals[8][64];
    for (int k = 0; k < n; k++) {
        snprintf(vals[k], sizeof vals[k], "127.0.0.1:%d %lld", 7001 + k, (long long)now_ms());
        el[2 * k] = (redisReply){.type = REDIS_REPLY_STRING, .str = (char *)ids[k], .len = strlen(ids[k])};
        el[2 * k + 1] = (redisReply){.type = REDIS_REPLY_STRING, .str = vals[k], .len = strlen(vals[k])};
    }
    for (int k = 0; k < 2 * n; k++)
        els[k] = &el[k];
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = (size_t)(2 * n), .element = els};
    assert_string_equal(stub_cmds.c[i].name, "store_members_read");
    stubs_answer_command(i, &arr);
}

/* With shards: nothing is acquired before the members are known; then up
 * to the fair share (4 shards, 2 live instances: 2), each shard its own
 * lease and epoch; a third of the instances gone, the share grows and the
 * rest is taken; a renewal refused fences that shard alone. */
static void test_lease_shards(void **state)
{
    rbd->loaded = false;
    rbd->cfg.lease_ttl_ms = 1000;
    rbd->cfg.shards = 4;
    stub_nshards = 4;
    snprintf(rbd->instance_id, sizeof rbd->instance_id, "me");
    snprintf(rbd->advertise, sizeof rbd->advertise, "127.0.0.1:7001");
    lease_init(NULL);
    assert_int_equal(lease_shards(), 4);
    assert_true(lease_serving()); /* every op is taken, and routed by shard */
    for (int k = 0; k < 4; k++)
        assert_false(lease_shard_serving(k));

    lease_tick(0);
    assert_int_equal(count_since("store_lease_acquire", 0), 0);
    assert_int_equal(count_since("store_lease_read", 0), 4); /* who owns what */
    int m = -1;
    for (int i = 0; i < stub_cmds.n; i++)
        if (strcmp(stub_cmds.c[i].name, "store_members_read") == 0)
            m = i;
    const char *two[] = {"me", "other"};
    answer_members(m, two, 2);

    int from = stub_cmds.n;
    lease_tick(100);
    assert_int_equal(count_since("store_lease_acquire", from), 2);
    char value[64];
    for (int i = from, e = 1; i < stub_cmds.n; i++) {
        if (strcmp(stub_cmds.c[i].name, "store_lease_acquire") != 0)
            continue;
        snprintf(value, sizeof value, "me 127.0.0.1:7001 %d", e);
        answer_acquire(i, e++, value);
    }
    assert_int_equal(shard_count(rbd->shards_held), 2);
    assert_int_equal(rbd->lease_role, LEASE_LOADING);
    assert_int_equal(rbd->lease_takeovers, 2);
    from = stub_cmds.n;
    lease_tick(150); /* at the share: no more */
    assert_int_equal(count_since("store_lease_acquire", from), 0);

    /* the other instance is gone: the share is all four */
    lease_tick(200);
    m = -1;
    for (int i = from; i < stub_cmds.n; i++)
        if (strcmp(stub_cmds.c[i].name, "store_members_read") == 0)
            m = i;
    assert_true(m >= 0);
    const char *one[] = {"me"};
    answer_members(m, one, 1);
    from = stub_cmds.n;
    lease_tick(250);
    assert_int_equal(count_since("store_lease_acquire", from), 2);
    for (int i = from, e = 7; i < stub_cmds.n; i++)
        if (strcmp(stub_cmds.c[i].name, "store_lease_acquire") == 0) {
            snprintf(value, sizeof value, "me 127.0.0.1:7001 %d", e);
            answer_acquire(i, e++, value);
        }
    assert_int_equal(rbd->shards_held, 0xf);

    /* Redis refused a write as FENCED: every held shard's lease is checked
     * at once; the one renewal that finds another value fences that shard */
    from = stub_cmds.n;
    lease_fenced();
    lease_tick(260);
    assert_int_equal(count_since("store_lease_renew", from), 4);
    int fenced = -1;
    for (int i = from; i < stub_cmds.n; i++)
        if (strcmp(stub_cmds.c[i].name, "store_lease_renew") == 0)
            stubs_answer_command(i, int_reply(fenced < 0 ? (fenced = i, 0) : 1));
    assert_int_equal(shard_count(rbd->shards_held), 3);
    assert_int_equal(rbd->lease_self_fenced, 1);
    lease_release(NULL);
    assert_int_equal(count_since("store_lease_release", from), 3);
    lease_close();
    uv_run(rbd->loop, UV_RUN_NOWAIT);
    rbd->cfg.shards = 0;
    stub_nshards = 0;
    rbd->cfg.lease_ttl_ms = 0;
}

/* ---- loading shards one after the other (schedule/load.c) ---- */

static int shard_loads[4];

static void shard_loaded(int shard)
{
    shard_loads[shard]++;
}

/* A reply of the given type with n elements (allocated; freed with it). */
static redisReply *mk(int type, size_t n)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = type;
    r->elements = n;
    r->element = n ? calloc(n, sizeof *r->element) : NULL;
    return r;
}

static void mk_free_all(redisReply *r)
{
    for (size_t i = 0; i < r->elements; i++)
        mk_free_all(r->element[i]);
    free(r->element);
    free(r->str);
    free(r);
}

/* {"0", []}: the last page of a scan. */
static redisReply *last_page(void)
{
    redisReply *r = mk(REDIS_REPLY_ARRAY, 2);
    r->element[0] = mk(REDIS_REPLY_STRING, 0);
    r->element[0]->str = strdup("0");
    r->element[0]->len = 1;
    r->element[1] = mk(REDIS_REPLY_ARRAY, 0);
    return r;
}

static redisReply *answered[64];
static int nanswered;

/* Answers every recorded command of that name from index from on with an
 * empty answer of its kind; returns how many. */
static int answer_all(const char *name, int from)
{
    int n = 0;
    for (int i = from; i < stub_cmds.n; i++) {
        if (strcmp(stub_cmds.c[i].name, name) != 0 || !stub_cmds.c[i].cb)
            continue;
        redisReply *r = strcmp(name, "msgs_len") == 0 ? mk(REDIS_REPLY_INTEGER, 0)
                        : strcmp(name, "msgs_scan") == 0 || strcmp(name, "learned_scan") == 0
                            ? last_page()
                            : mk(REDIS_REPLY_ARRAY, 0);
        stubs_answer_command(i, r);
        answered[nanswered++] = r; /* the load keeps its pages until its turn ends */
        n++;
    }
    return n;
}

static void test_load_restarted_while_reading_extras(void **state)
{
    /* A shard's load reads the throttles and learned timing after its
     * records; a load started meanwhile (the link came back) must own the
     * callback: the old reads' answer must not hand over the old shard as
     * loaded, taking the new one's completion with it (the new shard was
     * then never served). */
    rbd->cfg.shards = 4;
    stub_nshards = 4;
    stub_record_loads = true;
    memset(shard_loads, 0, sizeof shard_loads);

    schedule_load_shard(1, true, shard_loaded);
    assert_true(answer_all("msgs_scan", 0) > 0);
    answer_all("msgs_len", 0);
    uv_run(rbd->loop, UV_RUN_NOWAIT); /* the pages taken in: the extras begin */
    int old_extras = stub_cmds.n;
    assert_int_equal(strcmp(stub_cmds.c[old_extras - 1].name, "throttle_poll"), 0);

    int from = stub_cmds.n;
    schedule_load_shard(2, true, shard_loaded);
    /* the old extras answer now: throttles, holds, learned timing */
    answer_all("throttle_poll", 0);
    answer_all("held_read", 0);
    answer_all("learned_scan", 0);
    assert_int_equal(shard_loads[1], 0);
    assert_int_equal(shard_loads[2], 0);

    /* the new load's own pages and extras: shard 2 is loaded, once */
    assert_true(answer_all("msgs_scan", from) > 0);
    answer_all("msgs_len", from);
    uv_run(rbd->loop, UV_RUN_NOWAIT);
    answer_all("throttle_poll", from);
    answer_all("held_read", from);
    answer_all("learned_scan", from);
    assert_int_equal(shard_loads[2], 1);
    assert_int_equal(shard_loads[1], 0);

    domains_share_stop();
    uv_run(rbd->loop, UV_RUN_NOWAIT);
    while (nanswered > 0)
        mk_free_all(answered[--nanswered]);
    stub_record_loads = false;
    stub_nshards = 0;
    rbd->cfg.shards = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_entry_life_and_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_keeps_a_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_while_busy_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_pace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_hold_and_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_firing_script_then_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_state_machine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_release_on_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_restarted_while_reading_extras, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
