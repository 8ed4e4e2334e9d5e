/*
 * config/addr.c: the listener's HOST:PORT and the Redis address, each with
 * a table of addresses it must take apart and a table it must refuse.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config/addr.h"

static void test_listen_good(void **state)
{
    static const struct {
        const char *in, *host;
        int port;
    } good[] = {
        {"127.0.0.1:7411", "127.0.0.1", 7411},
        {"localhost:1", "localhost", 1},
        {"[::1]:65535", "::1", 65535},
        {"mx.example.org:80", "mx.example.org", 80},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct addr a;
        char err[200] = "";
        if (addr_parse_listen(good[i].in, &a, err, sizeof err) != 0)
            fail_msg("\"%s\" refused: %s", good[i].in, err);
        assert_string_equal(a.host, good[i].host);
        assert_int_equal(a.port, good[i].port);
        assert_string_equal(a.path, "");
    }
}

static void test_listen_bad(void **state)
{
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"", "is not HOST:PORT"},
        {"7411", "is not HOST:PORT"},
        {":7411", "is not HOST:PORT"},
        {"host:", "the port must be 1..65535"},
        {"host:0", "the port must be 1..65535"},
        {"host:65536", "the port must be 1..65535"},
        {"host:12x", "the port must be 1..65535"},
        {"host:+1", "the port must be 1..65535"},
        {"::1:7411", "in brackets"},
        {"[]:7411", "is written [ADDR]:PORT"},
        {"[::1:7411", "is written [ADDR]:PORT"},
        {"my host:7411", "space or control"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct addr a;
        char err[200] = "";
        if (addr_parse_listen(bad[i].in, &a, err, sizeof err) != -1)
            fail_msg("\"%s\" accepted", bad[i].in);
        if (!strstr(err, bad[i].why))
            fail_msg("\"%s\": \"%s\" does not say \"%s\"", bad[i].in, err, bad[i].why);
    }
}

static void test_redis_good(void **state)
{
    struct addr a;
    char err[200];
    assert_int_equal(addr_parse_redis("10.0.0.5:6380", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "10.0.0.5");
    assert_int_equal(a.port, 6380);
    assert_true(!a.path[0] && !a.user[0] && !a.password[0] && a.db == -1);

    assert_int_equal(addr_parse_redis("cache", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "cache");
    assert_int_equal(a.port, 6379);

    assert_int_equal(addr_parse_redis("redis://app:p%40ss@cache.example:7000", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "cache.example");
    assert_int_equal(a.port, 7000);
    assert_string_equal(a.user, "app");
    assert_string_equal(a.password, "p@ss");
    assert_int_equal(a.db, -1);

    assert_int_equal(addr_parse_redis("REDIS://:secret@[::1]/3", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 6379);
    assert_string_equal(a.user, "");
    assert_string_equal(a.password, "secret");
    assert_int_equal(a.db, 3);

    assert_int_equal(addr_parse_redis("redis://secret@h", &a, err, sizeof err), 0);
    assert_string_equal(a.password, "secret");
    assert_string_equal(a.user, "");

    assert_int_equal(addr_parse_redis("/run/redis/redis.sock", &a, err, sizeof err), 0);
    assert_string_equal(a.path, "/run/redis/redis.sock");
    assert_string_equal(a.host, "");
    assert_int_equal(a.port, 0);
}

static void test_redis_bad(void **state)
{
    static const char *bad[] = {"",           "host:",          "host:0",        "host:70000",
                                "host:12x",   "rediss://h:1",   "redis://h:1/x", "redis://h:1/1?x=1",
                                "redis://u:%zz@h", "[::1",      ":6379",         "redis://",
                                "redis://u:%00@h", "my host",   "a@b:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct addr a;
        char err[200] = "";
        if (addr_parse_redis(bad[i], &a, err, sizeof err) != -1)
            fail_msg("accepted bad address \"%s\"", bad[i]);
        assert_true(err[0] != '\0');
        assert_true(!a.host[0] && !a.path[0] && !a.user[0] && !a.password[0]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_good),
        cmocka_unit_test(test_listen_bad),
        cmocka_unit_test(test_redis_good),
        cmocka_unit_test(test_redis_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
