/*
 * Domain throttles across instances (schedule/domains.c with shards),
 * without Redis (tests/unit/daemon_stubs.c stands in for the store): the
 * share arithmetic and the merge rule against reference models, then one
 * instance's part end to end: its scaled threshold, the merge it sends and
 * the one event it writes, a throttle another instance set applied to its
 * retries, an early end seen by the poll, and the sender_alert claimed in
 * Redis before it is written.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/daemon.h"
#include "config/policy_load.h"
#include "daemon_stubs.h"
#include "queue/sched.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int rand_in(int lo, int hi)
{
    return lo + (int)(next_rand() % (uint64_t)(hi - lo + 1));
}

static int setup(void **state)
{
    char err[512];
    memset(rbd, 0, sizeof *rbd);
    rbd->policy = policy_load_file(REBOUND_SOURCE_DIR "/tests/fast-policy.json", err, sizeof err);
    if (!rbd->policy)
        fail_msg("%s", err);
    rbd->policy->backoff_ms = 60000; /* long enough to see it held */
    rbd->sched = sched_new();
    rbd->loop = uv_default_loop();
    rbd->cfg.fire_batch = 1000;
    rbd->cfg.stream_maxlen = 1000;
    rbd->cfg.shards = 4;
    rbd->cfg.lease_ttl_ms = 1000;
    stub_nshards = 4;
    rbd->shards_held = 0x1; /* one shard of four */
    snprintf(rbd->instance_id, sizeof rbd->instance_id, "me");
    rbd->loaded = true;
    firing_init();
    stubs_reset();
    return 0;
}

static int teardown(void **state)
{
    domains_share_stop();
    firing_stop();
    uv_run(rbd->loop, UV_RUN_NOWAIT);
    sched_free(rbd->sched);
    domains_free();
    policy_free(rbd->policy);
    stubs_reset();
    stub_nshards = 0;
    return 0;
}

/* ---- the share: reference models ---------------------------------------- */

/* The smallest t >= 1 with t * nshards >= x * owned: x scaled by the
 * share, rounded up, found by counting. */
static int64_t ref_scaled_up(int64_t x, int owned, int nshards)
{
    int64_t t = 1;
    while (t * nshards < x * owned)
        t++;
    return t;
}

static void test_share_scaling(void **state)
{
    /* one shard, or every shard: the policy's figures as they always were */
    assert_int_equal(domains_share_threshold(50, 1, 1), 50);
    assert_int_equal(domains_share_threshold(50, 4, 4), 50);
    assert_int_equal(domains_share_burst(200, 4, 4), 200);
    assert_int_equal(domains_share_interval_us(100, 1, 1), 10000);
    assert_int_equal(domains_share_interval_us(100, 24, 24), 10000);
    assert_int_equal(domains_share_interval_us(3, 1, 1), 333333);
    assert_int_equal(domains_share_interval_us(0, 1, 4), 0); /* no pace */

    for (int i = 0; i < 5000; i++) {
        int nshards = rand_in(2, 64), owned = rand_in(1, nshards - 1);
        int replies = rand_in(1, 100000), per_second = rand_in(1, 100000), burst = rand_in(1, 10000);
        uint32_t t = domains_share_threshold(replies, owned, nshards);
        assert_int_equal(t, ref_scaled_up(replies, owned, nshards));
        assert_int_equal(domains_share_burst(burst, owned, nshards), ref_scaled_up(burst, owned, nshards));
        /* the interval: the longest iv with iv * per_second * owned <=
         * 1e6 * nshards (the rate scaled by the share, never faster) */
        int64_t iv = domains_share_interval_us(per_second, owned, nshards);
        int64_t rate = (int64_t)per_second * owned, budget = INT64_C(1000000) * nshards;
        if (budget >= rate) {
            assert_true(iv * rate <= budget);
            assert_true((iv + 1) * rate > budget);
        } else {
            assert_int_equal(iv, 1);
        }
        /* instances that split the shards between them throttle at about
         * the policy's count together: at least it, at most one more each */
        int a = rand_in(1, nshards - 1), b = nshards - a;
        uint32_t sum = domains_share_threshold(replies, a, nshards) + domains_share_threshold(replies, b, nshards);
        assert_true(sum >= (uint32_t)replies && sum <= (uint32_t)replies + 2);
    }
}

/* ---- the merge rule: a reference model ---------------------------------- */

/* The model keeps every throttle merged; the back-off in force at now is
 * the latest until of the episode that began with the first merge made
 * while none was in force. */
struct model {
    int64_t untils[256];
    int n; /* the current episode's merges */
    int64_t since;
    int episodes;
};

static int64_t model_until(const struct model *m)
{
    int64_t u = 0;
    for (int i = 0; i < m->n; i++)
        if (m->untils[i] > u)
            u = m->untils[i];
    return u;
}

static void test_merge_rule(void **state)
{
    for (int run = 0; run < 200; run++) {
        struct model m = {0};
        struct domains_throttle stored;
        bool have = false;
        int64_t now = 1000000;
        int began = 0;
        for (int step = 0; step < 200; step++) {
            now += rand_in(0, 3000);
            struct domains_throttle mine = {.until = now + rand_in(1, 5000), .since = now};
            snprintf(mine.cls, sizeof mine.cls, "c%d", rand_in(0, 2));
            bool in_force = m.n > 0 && model_until(&m) > now;
            int64_t before = in_force ? model_until(&m) : 0;
            if (!in_force) {
                m.n = 0;
                m.since = now;
                m.episodes++;
            }
            if (m.n < 256)
                m.untils[m.n++] = mine.until;
            int r = domains_throttle_merge(&stored, &have, &mine, now);
            if (!in_force)
                assert_int_equal(r, DOMAINS_MERGE_BEGAN);
            else if (mine.until > before)
                assert_int_equal(r, DOMAINS_MERGE_LENGTHENED);
            else
                assert_int_equal(r, DOMAINS_MERGE_COVERED);
            began += r == DOMAINS_MERGE_BEGAN;
            assert_true(have);
            assert_int_equal(stored.until, model_until(&m));
            assert_int_equal(stored.since, m.since); /* an early end names the episode by it */
        }
        assert_int_equal(began, m.episodes); /* one announcement per episode */
    }
}

/* ---- one instance's part ------------------------------------------------- */

static struct entry *pending(const char *id, const char *domain, int64_t due)
{
    struct entry *e = sched_add(rbd->sched, id, strlen(id));
    struct entry_facts f = {0, 1, due - 1000, domains_find(domain, strlen(domain), true, now_ms())};
    entry_become(e, ENTRY_PENDING, &f);
    sched_set_due(rbd->sched, e, due);
    return e;
}

static int find_command(const char *name, int from)
{
    for (int i = from; i < stub_cmds.n; i++)
        if (strcmp(stub_cmds.c[i].name, name) == 0)
            return i;
    return -1;
}

static int count_commands(const char *name)
{
    int n = 0;
    for (int i = 0; i < stub_cmds.n; i++)
        n += strcmp(stub_cmds.c[i].name, name) == 0;
    return n;
}

/* {result, value}: throttle.lua's answer to a merge. */
static void answer_merge(int i, long long result, const char *value)
{
    redisReply r = {.type = REDIS_REPLY_INTEGER, .integer = result};
    redisReply v = {.type = REDIS_REPLY_STRING, .str = (char *)value, .len = strlen(value)};
    redisReply *el[2] = {&r, &v};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = el};
    stubs_answer_command(i, &arr);
}

/* The poll's answer: n pairs of domain and value. */
static void answer_poll(int i, const char *const *kv, size_t n)
{
    redisReply items[16];
    redisReply *el[16];
    for (size_t k = 0; k < 2 * n; k++) {
        memset(&items[k], 0, sizeof items[k]);
        items[k].type = REDIS_REPLY_STRING;
        items[k].str = (char *)kv[k];
        items[k].len = strlen(kv[k]);
        el[k] = &items[k];
    }
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2 * n, .element = el};
    stubs_answer_command(i, &arr);
}

static int class_named(const char *name)
{
    for (int i = 0; i < rbd->policy->nclasses; i++)
        if (strcmp(rbd->policy->classes[i].name, name) == 0)
            return i;
    fail_msg("no class %s", name);
    return -1;
}

static void report(const char *domain, int n, int64_t now)
{
    uint32_t d = domains_find(domain, strlen(domain), true, now);
    for (int i = 0; i < n; i++)
        domains_report(d, class_named("rate_limit"), now);
}

static void test_threshold_scaled_and_one_event(void **state)
{
    int64_t now = now_ms();
    assert_true(rbd->policy->classes[class_named("rate_limit")].throttles);
    /* one shard of four sees a quarter of the replies: 50 -> 13 */
    struct entry *e = pending("a1", "shared.example", now);
    report("shared.example", 12, now);
    assert_int_equal(count_commands("throttle_merge"), 0);
    assert_int_equal(domains_pace_entry(e, now), 0);
    report("shared.example", 1, now);
    int m = find_command("throttle_merge", 0);
    assert_true(m >= 0);
    char want[128];
    snprintf(want, sizeof want, "shared.example rate_limit,%lld,%lld", (long long)(now + 60000), (long long)now);
    assert_string_equal(stub_cmds.c[m].first, want);
    /* held at once, before Redis answered */
    assert_true(domains_pace_entry(e, now) >= now + 60000);
    int writes = stubs.nwrites;
    answer_merge(m, DOMAINS_MERGE_BEGAN, want + strlen("shared.example "));
    /* this instance began the episode: it writes the one event */
    assert_int_equal(stubs.nwrites, writes + 1);
    assert_int_equal(stubs.writes[writes].nevents, 1);
    assert_int_equal(stubs.writes[writes].mode, '-');
    stubs_answer_write(writes, true, 0);
    assert_int_equal(rbd->events_emitted[EV_DOMAIN_THROTTLED], 1);

    /* another domain, already backed off by another instance, longer: no
     * event, and this instance holds until the shared end */
    struct entry *o = pending("b1", "other.example", now);
    report("other.example", 13, now);
    m = find_command("throttle_merge", m + 1);
    assert_true(m >= 0);
    char theirs[96];
    snprintf(theirs, sizeof theirs, "congestion,%lld,%lld", (long long)(now + 90000), (long long)(now - 500));
    writes = stubs.nwrites;
    answer_merge(m, DOMAINS_MERGE_COVERED, theirs);
    assert_int_equal(stubs.nwrites, writes);
    assert_int_equal(rbd->events_emitted[EV_DOMAIN_THROTTLED], 1);
    json_t *j = domains_json("other.example", 13, now);
    json_t *t = json_object_get(j, "throttle");
    assert_int_equal(json_integer_value(json_object_get(t, "until")), now + 90000);
    assert_int_equal(json_integer_value(json_object_get(t, "since")), now - 500);
    assert_string_equal(json_string_value(json_object_get(t, "class")), "congestion");
    assert_int_equal(json_integer_value(json_object_get(j, "threshold")), 50); /* the policy's, for all */
    json_decref(j);
    assert_true(domains_pace_entry(o, now + 1) >= now + 90000);

    /* a merge Redis did not take is lifted, as one daemon's unwritten one */
    report("third.example", 13, now);
    m = find_command("throttle_merge", m + 1);
    stubs_answer_command(m, NULL);
    j = domains_json("third.example", 13, now);
    assert_false(json_is_true(json_object_get(j, "throttled")));
    json_decref(j);
}

static void test_poll_applies_and_ends(void **state)
{
    int64_t now = now_ms();
    struct entry *e = pending("p1", "polled.example", now);
    assert_int_equal(domains_pace_entry(e, now), 0);
    sched_set_due(rbd->sched, e, now + 30000); /* fired once, bounced again: due later */
    domains_share_tick(now);
    int p = find_command("throttle_poll", 0);
    assert_true(p >= 0);
    domains_share_tick(now); /* one poll out at a time */
    assert_int_equal(count_commands("throttle_poll"), 1);
    char v1[96], v2[96];
    snprintf(v1, sizeof v1, "rate_limit,%lld,%lld", (long long)(now + 20000), (long long)(now - 100));
    snprintf(v2, sizeof v2, "rate_limit,%lld,%lld", (long long)(now + 20000), (long long)(now - 100));
    const char *kv[] = {"polled.example", v1, "unknown.example", v2};
    answer_poll(p, kv, 2);
    /* a domain with retries here is held; one without is not made up */
    struct entry *e2 = pending("p2", "polled.example", now);
    int64_t at = domains_pace_entry(e2, now);
    assert_true(at >= now + 20000);
    sched_set_due(rbd->sched, e2, at); /* as firing does */
    json_t *j = domains_json("unknown.example", 15, now);
    assert_false(json_is_true(json_object_get(j, "known")));
    json_decref(j);
    j = domains_share_json();
    assert_int_equal(json_integer_value(json_object_get(j, "adopted")), 1);
    assert_int_equal(json_integer_value(json_object_get(j, "owned")), 1);
    json_decref(j);

    /* the same episode ended early elsewhere (the domain delivered): the
     * held retry moves up */
    domains_share_tick(now + 1000);
    p = find_command("throttle_poll", p + 1);
    assert_true(p >= 0);
    snprintf(v1, sizeof v1, "rate_limit,%lld,%lld", (long long)(now + 1000), (long long)(now - 100));
    const char *ended[] = {"polled.example", v1};
    answer_poll(p, ended, 1);
    assert_int_equal(e2->node.due_ms, at - 19000); /* moved up by the time saved */
    assert_int_equal(e->node.due_ms, now + 30000); /* not one the back-off held */
    j = domains_json("polled.example", 14, now + 1000);
    assert_false(json_is_true(json_object_get(j, "throttled")));
    json_decref(j);

    /* an instance with no shard polls nothing */
    rbd->shards_held = 0;
    int before = stub_cmds.n;
    domains_share_tick(now + 2000);
    assert_int_equal(stub_cmds.n, before);
}

static void test_delivered_ends_the_shared_episode(void **state)
{
    int64_t now = now_ms();
    pending("d1", "ends.example", now);
    report("ends.example", 13, now);
    int m = find_command("throttle_merge", 0);
    char theirs[96];
    snprintf(theirs, sizeof theirs, "rate_limit,%lld,%lld", (long long)(now + 60000), (long long)(now - 7));
    answer_merge(m, DOMAINS_MERGE_LENGTHENED, theirs);
    uint32_t d = domains_find("ends.example", 12, false, now);
    domains_delivered(d, now + 5);
    int e = find_command("throttle_end", 0);
    assert_true(e >= 0);
    char want[64];
    snprintf(want, sizeof want, "ends.example %lld", (long long)(now - 7)); /* the episode's since */
    assert_string_equal(stub_cmds.c[e].first, want);
}

static void test_alert_claimed_once(void **state)
{
    int64_t now = now_ms();
    uint32_t d = domains_find("alert.example", 13, true, now);
    uint64_t repeats;
    assert_true(domains_alert_claim(d, 1, now, &repeats));
    assert_true(domains_alert_shared(d, 1, "{\"event\":\"sender_alert\"}"));
    int c = find_command("alert_claim", 0);
    assert_true(c >= 0);
    char want[128];
    snprintf(want, sizeof want, "%s:alert.example", rbd->policy->classes[1].name);
    assert_string_equal(stub_cmds.c[c].first, want);
    int writes = stubs.nwrites;
    redisReply okr = {.type = REDIS_REPLY_STATUS, .str = "OK", .len = 2};
    stubs_answer_command(c, &okr);
    assert_int_equal(stubs.nwrites, writes + 1); /* this instance won the window: it writes it */
    stubs_answer_write(writes, true, 0);
    assert_int_equal(rbd->events_emitted[EV_SENDER_ALERT], 1);

    /* another instance holds the window: nothing written */
    assert_true(domains_alert_shared(d, 2, "{\"event\":\"sender_alert\"}"));
    c = find_command("alert_claim", c + 1);
    redisReply nil = {.type = REDIS_REPLY_NIL};
    writes = stubs.nwrites;
    stubs_answer_command(c, &nil);
    assert_int_equal(stubs.nwrites, writes);
    json_t *j = domains_share_json();
    assert_int_equal(json_integer_value(json_object_get(j, "alerts_deduped")), 1);
    json_decref(j);
    /* a failed report does not give the window back: the alert went */
    domains_alert_unclaim(d, 1, 0);
    assert_false(domains_alert_claim(d, 1, now + 1, &repeats));

    /* Redis away: nothing claimed, so this instance's window is given
     * back and the resent report claims it again */
    uint32_t d2 = domains_find("away.example", 12, true, now);
    assert_true(domains_alert_claim(d2, 1, now, &repeats));
    stubs.ready = false;
    assert_true(domains_alert_shared(d2, 1, "{}"));
    stubs.ready = true;
    assert_true(domains_alert_claim(d2, 1, now + 1, &repeats));

    /* one shard: not shared, the caller writes the alert with its report */
    rbd->cfg.shards = 0;
    stub_nshards = 0;
    assert_false(domains_alert_shared(d, 1, "{}"));
}

static void test_pace_scaled(void **state)
{
    /* 100 a second with a burst of 200, one shard of four: 25 a second
     * (40 ms apart) after a burst of 50 */
    int64_t now = now_ms();
    int at_once = 0;
    int64_t last = 0;
    for (int i = 0; i < 60; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%d", i);
        struct entry *e = pending(id, "paced.example", now);
        int64_t later = domains_pace_entry(e, now);
        if (later == 0) {
            at_once++;
            continue;
        }
        if (last)
            assert_int_equal(later - last, 40);
        last = later;
    }
    assert_int_equal(at_once, 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_share_scaling),
        cmocka_unit_test(test_merge_rule),
        cmocka_unit_test_setup_teardown(test_threshold_scaled_and_one_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poll_applies_and_ends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivered_ends_the_shared_episode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alert_claimed_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pace_scaled, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
