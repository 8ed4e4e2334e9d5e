/*
 * daemon/redis/cluster_nodes.c: key slots against the values a real
 * redis-server gives (CLUSTER KEYSLOT, Redis 7.0), the hash-tag rules, and
 * CLUSTER NODES answers of a cluster before and after a failover, during a
 * migration and with failed or address-less nodes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "redis/cluster_nodes.h"

static int slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

static void test_key_slot(void **state)
{
    (void)state;
    /* CLUSTER KEYSLOT of redis-server 7.0 */
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("somekey"), 11058);
    assert_int_equal(slot_of("123456789"), 12739); /* CRC16/XMODEM check value 0x31C3 */
    assert_int_equal(slot_of("{user1000}.following"), 3443);
    assert_int_equal(slot_of("rebound:"), 13255);
    assert_int_equal(slot_of("{rebound}:msg"), 7943);
    assert_int_equal(slot_of("{rebound}:"), 7943);
    assert_int_equal(slot_of("{}x"), 10595);     /* an empty tag: the whole key */
    assert_int_equal(slot_of("a{}b{c}"), 7353);  /* only the first '{' counts */
    assert_int_equal(slot_of("{rebound:s0}msg"), 8184);
    assert_int_equal(slot_of(""), 0);
    assert_int_equal(slot_of("{user1000}.followers"), slot_of("{user1000}.following"));
}

static void test_hash_tag(void **state)
{
    (void)state;
    assert_true(cluster_has_hash_tag("{rebound}:", 10));
    assert_true(cluster_has_hash_tag("x{a}y", 5));
    assert_false(cluster_has_hash_tag("rebound:", 8));
    assert_false(cluster_has_hash_tag("{}rebound", 9));
    assert_false(cluster_has_hash_tag("{rebound", 8));
    assert_false(cluster_has_hash_tag("a{}b{c}", 7));
}

/* Three primaries and their replicas, as redis-cli --cluster create
 * leaves them; then 7002 has failed and its replica 7005 took its slots
 * with a higher configuration epoch. */
static const char before[] =
    "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n"
    "b2 127.0.0.1:7001@17001 master - 0 1700000000000 2 connected 5461-10922\n"
    "c3 127.0.0.1:7002@17002 master - 0 1700000000000 3 connected 10923-16383\n"
    "d4 127.0.0.1:7003@17003 slave b2 0 1700000000000 2 connected\n"
    "e5 127.0.0.1:7004@17004 slave c3 0 1700000000000 3 connected\n"
    "f6 127.0.0.1:7005@17005 slave a1 0 1700000000000 1 connected\n";

static const char after[] =
    "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n"
    "b2 127.0.0.1:7001@17001 master - 0 1700000000000 2 connected 5461-10922\n"
    "c3 127.0.0.1:7002@17002 master,fail - 1700000000000 1700000000000 3 disconnected\n"
    "e5 127.0.0.1:7004@17004 master - 0 1700000000000 7 connected 10923-16383\n";

/* A stale seed that has not heard of the failover yet. */
static const char stale[] =
    "c3 127.0.0.1:7002@17002 master - 0 1700000000000 3 connected 10923-16383\n"
    "e5 127.0.0.1:7004@17004 myself,slave c3 0 1700000000000 3 connected\n";

static int primary(const char *text, int slot, char *host, int *port, long long *epoch)
{
    return cluster_nodes_primary(text, strlen(text), slot, host, 64, port, epoch);
}

static void test_nodes(void **state)
{
    (void)state;
    char host[64];
    int port = 0;
    long long epoch = 0;
    assert_int_equal(primary(before, 0, host, &port, &epoch), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 7000);
    assert_int_equal(primary(before, 7943, host, &port, &epoch), 0);
    assert_int_equal(port, 7001);
    assert_int_equal(epoch, 2);
    assert_int_equal(primary(before, 16383, host, &port, &epoch), 0);
    assert_int_equal(port, 7002);
    assert_int_equal(primary(after, 13255, host, &port, &epoch), 0);
    assert_int_equal(port, 7004);
    assert_int_equal(epoch, 7);
    /* The stale view names the old primary with its older epoch: the
     * caller compares epochs across seeds. */
    assert_int_equal(primary(stale, 13255, host, &port, &epoch), 0);
    assert_int_equal(port, 7002);
    assert_int_equal(epoch, 3);
}

static void test_nodes_edge(void **state)
{
    (void)state;
    char host[64];
    int port = 0;
    long long epoch = 0;
    /* single slots, a migration note, a hostname, IPv6, no trailing newline */
    const char text[] = "a1 10.0.0.1:6379@16379,redis-a master - 0 0 4 connected 17 100-200 [93->-b2]\n"
                        "b2 [::1]:6380@16380 master - 0 0 5 connected 93 [17-<-a1]";
    assert_int_equal(primary(text, 17, host, &port, &epoch), 0);
    assert_string_equal(host, "10.0.0.1");
    assert_int_equal(port, 6379);
    assert_int_equal(primary(text, 150, host, &port, &epoch), 0);
    assert_int_equal(primary(text, 93, host, &port, &epoch), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 6380);
    assert_int_equal(primary(text, 201, host, &port, &epoch), -1);
    /* a failed, a possibly failed (pfail still serves), an address-less and a handshaking node */
    const char odd[] = "a1 10.0.0.1:6379@16379 master,fail - 0 0 9 connected 0-100\n"
                       "b2 :0@0 master,noaddr - 0 0 9 connected 101-200\n"
                       "c3 10.0.0.3:6379@16379 master,fail? - 0 0 2 connected 201-300\n"
                       "d4 10.0.0.4:6379@16379 handshake - 0 0 0 connected\n"
                       "truncated line\n";
    assert_int_equal(primary(odd, 50, host, &port, &epoch), -1);
    assert_int_equal(primary(odd, 150, host, &port, &epoch), -1);
    assert_int_equal(primary(odd, 250, host, &port, &epoch), 0);
    assert_string_equal(host, "10.0.0.3");
    assert_int_equal(primary("", 0, host, &port, &epoch), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slot),
        cmocka_unit_test(test_hash_tag),
        cmocka_unit_test(test_nodes),
        cmocka_unit_test(test_nodes_edge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
