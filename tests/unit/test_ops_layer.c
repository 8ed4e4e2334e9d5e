/*
 * daemon/ops/ without Redis or a socket (tests/unit/daemon_stubs.c stands
 * in for the store, events/ and the connection): the op table's dispatch,
 * a report written then answered, a request for the same id parked behind
 * the write in flight and run after it, a failed write, and a store that
 * is down.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/daemon.h"
#include "config/policy_load.h"
#include "daemon_stubs.h"
#include "ops/ops.h"
#include "queue/sched.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "schedule/learned.h"
#include "schedule/lease.h"

static struct conn conn;

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
    rbd->cfg.token = "";
    rbd->loaded = true;
    rbd->rng = 1;
    proto_limits_default(&rbd->limits);
    static const struct entry_hooks hooks = {.run_waiters = ops_run_waiters};
    entry_set_hooks(&hooks);
    firing_init();
    stubs_reset();
    memset(&conn, 0, sizeof conn);
    conn.authed = true;
    return 0;
}

static int teardown(void **state)
{
    firing_stop();
    uv_run(rbd->loop, UV_RUN_NOWAIT);
    sched_free(rbd->sched);
    domains_free();
    learned_free();
    policy_free(rbd->policy);
    stubs_reset();
    return 0;
}

static void send_line(const char *line)
{
    ops_dispatch(&conn, line, strlen(line));
}

static void assert_reply(int i, const char *part)
{
    assert_true(stubs.nreplies > i);
    if (!strstr(stubs.replies[i], part))
        fail_msg("reply %d \"%s\" does not hold \"%s\"", i, stubs.replies[i], part);
}

#define GREYLIST "\"code\":451,\"enhanced\":\"4.7.1\",\"text\":\"451 4.7.1 Greylisted, try again later\""

static void test_immediate_ops(void **state)
{
    send_line("{\"op\":\"ping\",\"req\":7}");
    assert_reply(0, "\"ok\":true");
    assert_reply(0, "\"req\":7");
    send_line("{\"op\":\"stats\"}");
    assert_reply(1, "\"pending\":0");
    send_line("{\"op\":\"subscribe\",\"group\":\"g\"}");
    assert_reply(2, "subscribed"); /* handed to events/ */
    send_line("{\"op\":\"bounce\"}");
    assert_reply(3, "error bad_request");
    assert_int_equal(conn.refs, 0);
    assert_int_equal(stubs.nwrites, 0);
}

/* cluster answers from memory: this instance, serving shard 0 of 1, under
 * the configured id and address (the shape the sharded version keeps). */
static void test_cluster(void **state)
{
    snprintf(rbd->instance_id, sizeof rbd->instance_id, "%s", "i-1");
    snprintf(rbd->advertise, sizeof rbd->advertise, "%s", "10.0.0.7:7411");
    send_line("{\"op\":\"cluster\",\"req\":3}");
    assert_reply(0, "\"ok\":true");
    assert_reply(0, "\"shards\":1");
    assert_reply(0, "\"instances\":[{\"id\":\"i-1\",\"addr\":\"10.0.0.7:7411\",\"shards\":[0]}]");
    assert_reply(0, "\"req\":3");
    assert_int_equal(stubs.nwrites, 0);
}

/* The groups op goes to events/, with the group to delete if named, and
 * its "delete" is validated as a group name. */
static void test_groups_op(void **state)
{
    send_line("{\"op\":\"groups\"}");
    assert_reply(0, "groups list");
    send_line("{\"op\":\"groups\",\"delete\":\"old-group\"}");
    assert_reply(1, "groups old-group");
    send_line("{\"op\":\"groups\",\"delete\":\"no spaces\"}");
    assert_reply(2, "error bad_request");
    send_line("{\"op\":\"groups\",\"delete\":\"\"}");
    assert_reply(3, "error bad_request");
    assert_int_equal(stubs.nwrites, 0);
}

/* A wrong token is counted against the connection (auth_failures); a
 * right one is not, and lets the other ops through. */
static void test_wrong_tokens_counted(void **state)
{
    rbd->cfg.token = "s3cret";
    conn.authed = false;
    send_line("{\"op\":\"auth\",\"token\":\"guess\"}");
    assert_reply(0, "error auth_required");
    send_line("{\"op\":\"stats\"}");
    assert_reply(1, "error auth_required");
    assert_int_equal(conn.auth_fails, 1);
    send_line("{\"op\":\"auth\",\"token\":\"s3cret\"}");
    assert_reply(2, "\"ok\":true");
    assert_int_equal(conn.auth_fails, 1);
    send_line("{\"op\":\"stats\"}");
    assert_reply(3, "\"pending\":0");
    rbd->cfg.token = "";
}

static void test_report_then_parked_cancel(void **state)
{
    send_line("{\"op\":\"bounce\",\"id\":\"m1\",\"rcpt\":\"a@b.example\"," GREYLIST "}");
    /* written first, answered after */
    assert_int_equal(stubs.nwrites, 1);
    assert_int_equal(stubs.writes[0].mode, 'S');
    assert_int_equal(stubs.writes[0].attempt, 1);
    assert_int_equal(stubs.nreplies, 0);
    assert_int_equal(conn.refs, 1);
    struct entry *e = sched_find(rbd->sched, "m1", 2);
    assert_non_null(e);
    assert_true(e->flags & ENTRY_BUSY);

    /* the same id while its write is in flight waits for it */
    send_line("{\"op\":\"cancel\",\"id\":\"m1\"}");
    assert_int_equal(stubs.nwrites, 1);
    assert_int_equal(conn.refs, 2);

    stubs_answer_write(0, true, STORE_AS_DECIDED);
    assert_reply(0, "\"action\":\"retry\"");
    assert_int_equal(rbd->npending, 1);
    assert_int_equal(rbd->reports, 1);
    /* then the cancel ran, on the committed state */
    assert_int_equal(stubs.nwrites, 2);
    assert_int_equal(stubs.writes[1].mode, 'D');
    stubs_answer_write(1, true, 0);
    assert_reply(1, "\"found\":true");
    assert_int_equal(rbd->npending, 0);
    assert_null(sched_find(rbd->sched, "m1", 2));
    assert_int_equal(conn.refs, 0);
}

static void test_failed_write_changes_nothing(void **state)
{
    send_line("{\"op\":\"bounce\",\"id\":\"m2\",\"rcpt\":\"a@b.example\"," GREYLIST "}");
    assert_int_equal(stubs.nwrites, 1);
    stubs_answer_write(0, false, 0);
    assert_reply(0, "error unavailable");
    assert_int_equal(rbd->npending, 0);
    assert_int_equal(rbd->reports, 0);
    assert_null(sched_find(rbd->sched, "m2", 2));
    assert_int_equal(conn.refs, 0);
}

/* Acting on the queue: a bulk cancel writes a slice, then forgets the
 * entries; retry_now rewrites the record first, then moves the entry;
 * hold answers after its write; history asks the store. */
static void test_queue_ops(void **state)
{
    send_line("{\"op\":\"bounce\",\"id\":\"m1\",\"rcpt\":\"a@b.example\"," GREYLIST "}");
    send_line("{\"op\":\"bounce\",\"id\":\"m2\",\"rcpt\":\"a@c.example\"," GREYLIST "}");
    stubs_answer_write(0, true, STORE_AS_DECIDED);
    stubs_answer_write(1, true, STORE_AS_DECIDED);
    assert_int_equal(rbd->npending, 2);

    send_line("{\"op\":\"cancel\",\"domain\":\"b.example\"}");
    assert_int_equal(stub_cmds.n, 1);
    assert_string_equal(stub_cmds.c[0].name, "msgs_del");
    assert_int_equal(stub_cmds.c[0].n, 1);
    assert_string_equal(stub_cmds.c[0].first, "m1");
    struct entry *e = sched_find(rbd->sched, "m1", 2);
    assert_true(e->flags & ENTRY_BUSY);
    assert_int_equal(rbd->npending, 2); /* nothing changes before Redis answers */
    redisReply one = {.type = REDIS_REPLY_INTEGER, .integer = 1};
    stubs_answer_command(0, &one);
    assert_reply(2, "\"count\":1");
    assert_null(sched_find(rbd->sched, "m1", 2));
    assert_int_equal(rbd->npending, 1);

    e = sched_find(rbd->sched, "m2", 2);
    int64_t due = e->node.due_ms;
    send_line("{\"op\":\"retry_now\",\"id\":\"m2\"}");
    assert_string_equal(stub_cmds.c[1].name, "msgs_due_now");
    assert_int_equal(e->node.due_ms, due);
    redisReply *el[1] = {&one};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 1, .element = el};
    stubs_answer_command(1, &arr);
    assert_reply(3, "\"count\":1");
    assert_true(e->node.due_ms <= now_ms());

    send_line("{\"op\":\"hold\",\"domain\":\"C.example\"}");
    assert_string_equal(stub_cmds.c[2].name, "held_set");
    assert_string_equal(stub_cmds.c[2].first, "c.example");
    assert_false(domains_held(domains_find("c.example", 9, false, now_ms()), now_ms()));
    redisReply okr = {.type = REDIS_REPLY_INTEGER, .integer = 1};
    stubs_answer_command(2, &okr);
    assert_reply(4, "\"held\":{");
    assert_true(domains_held(domains_find("c.example", 9, false, now_ms()), now_ms()));

    send_line("{\"op\":\"history\",\"id\":\"m1\"}");
    assert_string_equal(stub_cmds.c[3].name, "history_get");
    redisReply nil = {.type = REDIS_REPLY_NIL};
    stubs_answer_command(3, &nil);
    assert_reply(5, "error not_found");

    send_line("{\"op\":\"release\",\"domain\":\"c.example\"}");
    stubs_answer_command(4, NULL); /* the link went down: nothing changes */
    assert_reply(6, "error unavailable");
    assert_true(domains_held(domains_find("c.example", 9, false, now_ms()), now_ms()));
    assert_int_equal(conn.refs, 0);
}

static void test_store_down(void **state)
{
    stubs.ready = false;
    send_line("{\"op\":\"bounce\",\"id\":\"m3\",\"rcpt\":\"a@b.example\"," GREYLIST "}");
    assert_reply(0, "error unavailable");
    send_line("{\"op\":\"unsuppress\",\"rcpt\":\"a@b.example\"}");
    assert_reply(1, "error unavailable");
    assert_int_equal(stubs.nwrites, 0);
    assert_int_equal(conn.refs, 0);
    assert_int_equal(rbd->errors, 0); /* unavailable is not the client's error */
}

/* Learned timing: a domain with the evidence gets its next greylisted
 * retry at the learned time (the reply and the entry say so), and a
 * delivered report queues the domain's new state right behind its own
 * change, in the same batch. */
static void test_learned_timing(void **state)
{
    uint32_t key = learn_class_key("greylist");
    int64_t now = now_ms();
    struct learn_domain *st = learned_touch("b.example", 9);
    for (int i = 0; i < 3; i++)
        learn_delivered(st, key, 1, 20, now);
    uint64_t before = learned_retries;

    send_line("{\"op\":\"bounce\",\"id\":\"m5\",\"rcpt\":\"a@B.example\"," GREYLIST "}");
    assert_int_equal(stubs.nwrites, 1); /* a first bounce teaches nothing: no state to write */
    stubs_answer_write(0, true, STORE_AS_DECIDED);
    assert_reply(0, "\"learned\":true");
    struct entry *e = sched_find(rbd->sched, "m5", 2);
    assert_non_null(e);
    assert_true(e->flags & ENTRY_LEARNED);
    assert_int_equal(learned_retries, before + 1);
    /* never sooner than the class's smallest delay (5 ms in the fast policy) */
    assert_true(e->node.due_ms >= now + 5);

    /* another domain has no state: the table's time */
    send_line("{\"op\":\"bounce\",\"id\":\"m6\",\"rcpt\":\"a@c.example\"," GREYLIST "}");
    stubs_answer_write(1, true, STORE_AS_DECIDED);
    assert_true(stubs.nreplies == 2 && !strstr(stubs.replies[1], "learned"));

    /* delivered while the retry is still pending teaches nothing: it came
     * before any retry; once the retry went, it does */
    send_line("{\"op\":\"delivered\",\"id\":\"m6\",\"rcpt\":\"a@c.example\"}");
    assert_int_equal(stubs.nwrites, 3);
    stubs_answer_write(2, true, 0);
    assert_null(learned_find("c.example", 9));
    sched_unset_due(rbd->sched, e);
    entry_become(e, ENTRY_AWAITING, NULL); /* as a fire does */
    send_line("{\"op\":\"delivered\",\"id\":\"m5\",\"rcpt\":\"a@b.example\"}");
    assert_int_equal(stubs.nwrites, 5);
    assert_int_equal(stubs.writes[3].op, STORE_OP_RESET);
    assert_int_equal(stubs.writes[4].op, STORE_OP_LEARN);
    stubs_answer_write(3, true, 0);
    stubs_answer_write(4, true, 0);
    struct learn_view v;
    learn_view(learned_find("b.example", 9), key, &v);
    assert_int_equal(v.delivered, 4);
    assert_int_equal(learned_count(), 1);
    assert_int_equal(conn.refs, 0);
}

/* The table stays within LEARNED_MAX_DOMAINS: past it, the domain whose
 * state changed least recently goes (in memory here, in Redis through
 * store_learned_forget), and a typical domain costs under 400 bytes. */
static void test_learned_bound(void **state)
{
    char name[64];
    uint64_t evicted = learned_evicted;
    for (int i = 0; i < LEARNED_MAX_DOMAINS; i++) {
        int n = snprintf(name, sizeof name, "d%07d.example", i);
        assert_non_null(learned_touch(name, (size_t)n));
    }
    assert_int_equal(learned_count(), LEARNED_MAX_DOMAINS);
    assert_true(learned_memory() / learned_count() < 400);
    assert_non_null(learned_touch("d0000000.example", 16)); /* changed again: now the newest */
    for (int i = 0; i < 10; i++) {
        int n = snprintf(name, sizeof name, "new%d.example", i);
        assert_non_null(learned_touch(name, (size_t)n));
    }
    assert_int_equal(learned_count(), LEARNED_MAX_DOMAINS);
    assert_int_equal(learned_evicted, evicted + 10);
    assert_non_null(learned_find("d0000000.example", 16));
    assert_null(learned_find("d0000001.example", 16));
    assert_null(learned_find("d0000010.example", 16));
    assert_non_null(learned_find("d0000011.example", 16));
    assert_non_null(learned_find("new9.example", 12));
}

/* With a lease (lease_ttl), an instance that does not serve the schedule
 * answers what needs it `unavailable` with the owner's address, writes
 * nothing, and still answers ping, stats, classify and cluster. */
static void test_standby_answers_with_owner(void **state)
{
    rbd->cfg.lease_ttl_ms = 1000;
    snprintf(rbd->instance_id, sizeof rbd->instance_id, "%s", "b");
    snprintf(rbd->advertise, sizeof rbd->advertise, "%s", "10.0.0.8:7411");
    lease_init(NULL);
    lease_tick(0);
    redisReply e = {.type = REDIS_REPLY_INTEGER, .integer = 0};
    redisReply v = {.type = REDIS_REPLY_STRING, .str = "a 10.0.0.7:7411 3", .len = 17};
    redisReply *el[2] = {&e, &v};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = el};
    stubs_answer_command(stub_cmds.n - 1, &arr);
    send_line("{\"op\":\"bounce\",\"id\":\"m1\",\"rcpt\":\"u@example.com\"," GREYLIST ",\"req\":1}");
    assert_reply(0, "\"code\":\"unavailable\"");
    assert_reply(0, "\"owner\":\"10.0.0.7:7411\"}");
    assert_reply(0, "\"req\":1");
    send_line("{\"op\":\"get\",\"id\":\"m1\"}");
    assert_reply(1, "\"owner\":\"10.0.0.7:7411\"");
    send_line("{\"op\":\"ping\"}");
    assert_reply(2, "\"ok\":true");
    send_line("{\"op\":\"cluster\"}");
    assert_reply(3, "\"role\":\"standby\"");
    assert_reply(3, "\"owner\":{\"id\":\"a\",\"addr\":\"10.0.0.7:7411\"}");
    send_line("{\"op\":\"stats\"}");
    assert_reply(4, "\"lease\":{");
    assert_int_equal(stubs.nwrites, 0);
    assert_null(sched_find(rbd->sched, "m1", 2));
    assert_int_equal(stub_forwards, 0);

    /* lease_forward: relayed to the owner, whose reply will fill the slot */
    rbd->cfg.lease_forward = true;
    stub_forward_result = 0;
    send_line("{\"op\":\"get\",\"id\":\"m1\"}");
    assert_int_equal(stub_forwards, 1);
    assert_int_equal(stubs.nreplies, 5); /* none here */
    /* not what is bound to this connection */
    send_line("{\"op\":\"subscribe\",\"group\":\"g\"}");
    assert_int_equal(stub_forwards, 1);
    assert_reply(5, "\"owner\":\"10.0.0.7:7411\"");
    /* not what another instance relayed here: no request goes round */
    send_line("{\"op\":\"ping\",\"req\":\"rebound-peer\"}");
    assert_true(conn.from_peer);
    send_line("{\"op\":\"get\",\"id\":\"m1\"}");
    assert_int_equal(stub_forwards, 1);
    assert_reply(7, "\"code\":\"unavailable\"");
    /* nor when the peer cannot take it */
    conn.from_peer = false;
    stub_forward_result = -1;
    send_line("{\"op\":\"get\",\"id\":\"m1\"}");
    assert_int_equal(stub_forwards, 2);
    assert_reply(8, "\"owner\":\"10.0.0.7:7411\"");
    stub_forwards = 0;
    rbd->cfg.lease_forward = false;
    lease_close();
    rbd->cfg.lease_ttl_ms = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_immediate_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_groups_op, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_tokens_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_report_then_parked_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster, setup, teardown),
        cmocka_unit_test_setup_teardown(test_standby_answers_with_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_learned_timing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_learned_bound, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
