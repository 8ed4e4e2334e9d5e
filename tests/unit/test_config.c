/* Unit tests of config/config.c: the option table, the file loader and its
 * error positions, flag overrides, validation and the masked dump. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"

#define DEFAULT_POLICY "/etc/rebound/policy.json"

/* Writes text to a new temporary file; returns its malloc'd path. */
static char *write_temp(const char *text)
{
    const char *dir = getenv("TMPDIR");
    if (!dir)
        dir = "/tmp";
    size_t n = strlen(dir) + sizeof "/test_config_XXXXXX";
    char *path = malloc(n);
    assert_non_null(path);
    snprintf(path, n, "%s/test_config_XXXXXX", dir);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

/* Loads text as a config file over the defaults. Returns the loader's
 * result; err gets its message with the temp path replaced by "F". */
static int load_text(struct config *cfg, const char *text, char *err, size_t errlen)
{
    char *path = write_temp(text);
    char raw[512] = "";
    int rc = config_load_file(cfg, path, raw, sizeof raw);
    size_t plen = strlen(path);
    if (strncmp(raw, path, plen) == 0)
        snprintf(err, errlen, "F%s", raw + plen);
    else
        snprintf(err, errlen, "%s", raw);
    unlink(path);
    free(path);
    return rc;
}

static int setup(void **state)
{
    struct config *cfg = calloc(1, sizeof *cfg);
    config_defaults(cfg, DEFAULT_POLICY);
    *state = cfg;
    return 0;
}

static int teardown(void **state)
{
    config_free(*state);
    free(*state);
    return 0;
}

static void test_defaults(void **state)
{
    struct config *cfg = *state;
    assert_string_equal(cfg->listen, "127.0.0.1:7411");
    assert_string_equal(cfg->unix_path, "");
    assert_int_equal(cfg->unix_mode, 0660);
    assert_string_equal(cfg->unix_group, "");
    assert_string_equal(cfg->redis, "127.0.0.1:6379");
    assert_string_equal(cfg->redis_user, "");
    assert_string_equal(cfg->redis_password, "");
    assert_int_equal(cfg->redis_db, 0);
    assert_string_equal(cfg->prefix, "rebound:");
    assert_string_equal(cfg->policy, DEFAULT_POLICY);
    assert_int_equal(cfg->max_line, 65536);
    assert_int_equal(cfg->max_connections, 1024);
    assert_int_equal(cfg->max_inflight, 1024);
    assert_string_equal(cfg->token, "");
    assert_string_equal(cfg->metrics_listen, "");
    assert_string_equal(cfg->log_level, "info");
    assert_true(cfg->stream_maxlen == 1000000);
    assert_int_equal(cfg->fire_batch, 1000);
    assert_true(cfg->redis_timeout_ms == 5000);
    assert_true(cfg->auth_timeout_ms == 10000);
    assert_true(cfg->line_timeout_ms == 30000);
    assert_true(cfg->idle_timeout_ms == 60000);
    assert_int_equal(cfg->error_limit, 20);
    assert_int_equal(cfg->auth_failures, 3);
    assert_int_equal(cfg->max_groups, 100);
    assert_true(cfg->group_expiry_ms == 7LL * 86400 * 1000);
    assert_false(cfg->allow_remote_without_token);

    char err[256] = "";
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
}

static void test_defaults_without_policy(void **state)
{
    struct config cfg;
    config_defaults(&cfg, NULL);
    assert_string_equal(cfg.policy, "");
    char err[256] = "";
    assert_int_equal(config_validate(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "policy"));
    config_free(&cfg);
}

static void test_good_file(void **state)
{
    struct config *cfg = *state;
    const char *text = "{\n"
                       "  \"_comment\": \"anything starting with _ is ignored\",\n"
                       "  \"_comment_listen\": \"TCP listener\",\n"
                       "  \"listen\": \"[::1]:7500\",\n"
                       "  \"unix_path\": \"/run/rebound/rebound.sock\",\n"
                       "  \"unix_mode\": \"0600\",\n"
                       "  \"unix_group\": \"mail\",\n"
                       "  \"redis\": \"redis://app:pw@10.0.0.5:6380/2\",\n"
                       "  \"redis_user\": \"app\",\n"
                       "  \"redis_password\": \"s3cret\",\n"
                       "  \"redis_db\": 3,\n"
                       "  \"redis_timeout\": \"1500ms\",\n"
                       "  \"prefix\": \"rb:\",\n"
                       "  \"policy\": \"/srv/policy.json\",\n"
                       "  \"max_line\": \"128KiB\",\n"
                       "  \"max_connections\": 50,\n"
                       "  \"max_inflight\": 64,\n"
                       "  \"token\": \"tok\",\n"
                       "  \"metrics_listen\": \"127.0.0.1:9411\",\n"
                       "  \"log_level\": \"warning\",\n"
                       "  \"stream_maxlen\": 5000000000,\n"
                       "  \"fire_batch\": 250\n"
                       "}\n";
    char err[512] = "";
    assert_int_equal(load_text(cfg, text, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_string_equal(cfg->listen, "[::1]:7500");
    assert_string_equal(cfg->unix_path, "/run/rebound/rebound.sock");
    assert_int_equal(cfg->unix_mode, 0600);
    assert_string_equal(cfg->unix_group, "mail");
    assert_string_equal(cfg->redis, "redis://app:pw@10.0.0.5:6380/2");
    assert_string_equal(cfg->redis_user, "app");
    assert_string_equal(cfg->redis_password, "s3cret");
    assert_int_equal(cfg->redis_db, 3);
    assert_true(cfg->redis_timeout_ms == 1500);
    assert_string_equal(cfg->prefix, "rb:");
    assert_string_equal(cfg->policy, "/srv/policy.json");
    assert_int_equal(cfg->max_line, 131072);
    assert_int_equal(cfg->max_connections, 50);
    assert_int_equal(cfg->max_inflight, 64);
    assert_string_equal(cfg->token, "tok");
    assert_string_equal(cfg->metrics_listen, "127.0.0.1:9411");
    assert_string_equal(cfg->log_level, "warn"); /* "warning" is stored as the canonical name */
    assert_true(cfg->stream_maxlen == 5000000000LL);
    assert_int_equal(cfg->fire_batch, 250);
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
}

static void test_partial_file_keeps_other_values(void **state)
{
    struct config *cfg = *state;
    char err[512];
    /* integer forms of mode, size and duration */
    assert_int_equal(load_text(cfg, "{\"unix_mode\": 432, \"max_line\": 2048, \"redis_timeout\": 250}", err,
                               sizeof err),
                     0);
    assert_int_equal(cfg->unix_mode, 0660);
    assert_int_equal(cfg->max_line, 2048);
    assert_true(cfg->redis_timeout_ms == 250);
    assert_string_equal(cfg->listen, "127.0.0.1:7411");
    assert_string_equal(cfg->policy, DEFAULT_POLICY);
    /* an empty object changes nothing */
    assert_int_equal(load_text(cfg, "{}", err, sizeof err), 0);
    assert_int_equal(cfg->max_line, 2048);
}

static void test_syntax_error_position(void **state)
{
    struct config *cfg = *state;
    char err[512];
    assert_int_equal(load_text(cfg, "{\n  \"listen\": \"a:1\",\n  \"x\": tru\n}\n", err, sizeof err), -1);
    assert_string_equal(err, "F:3:10: invalid token near 'tru'");
    assert_int_equal(load_text(cfg, "", err, sizeof err), -1);
    assert_true(strncmp(err, "F:1:1: ", 7) == 0);
}

static void test_duplicate_key(void **state)
{
    struct config *cfg = *state;
    char err[512];
    assert_int_equal(load_text(cfg, "{\n  \"listen\": \"a:1\",\n  \"listen\": \"b:2\"\n}\n", err, sizeof err), -1);
    assert_true(strncmp(err, "F:3:", 4) == 0);
    assert_non_null(strstr(err, "duplicate"));
    assert_non_null(strstr(err, "listen"));
    assert_string_equal(cfg->listen, "127.0.0.1:7411");
}

static void test_unknown_key_position(void **state)
{
    struct config *cfg = *state;
    char err[512];
    const char *text = "{\n"
                       "  \"listen\": \"127.0.0.1:1\",\n"
                       "    \"max_lines\": 5\n"
                       "}\n";
    assert_int_equal(load_text(cfg, text, err, sizeof err), -1);
    assert_string_equal(err, "F:3:5: unknown key \"max_lines\" (did you mean \"max_line\"?)");
    /* all or nothing: the good key before the bad one was not applied */
    assert_string_equal(cfg->listen, "127.0.0.1:7411");
    /* the flag alias "unix" is not a file key */
    assert_int_equal(load_text(cfg, "{\"unix\": \"/x\"}", err, sizeof err), -1);
    assert_string_equal(err, "F:1:2: unknown key \"unix\"");
}

static void test_wrong_type_position(void **state)
{
    struct config *cfg = *state;
    char err[512];
    const char *text = "{\n"
                       "  \"max_connections\": \"100\",\n"
                       "  \"listen\": \"x:1\"\n"
                       "}\n";
    assert_int_equal(load_text(cfg, text, err, sizeof err), -1);
    assert_string_equal(err, "F:2:22: \"max_connections\": expected an integer, not a string");

    assert_int_equal(load_text(cfg, "{\"listen\": 7411}", err, sizeof err), -1);
    assert_string_equal(err, "F:1:12: \"listen\": expected a string, not an integer");

    assert_int_equal(load_text(cfg, "{\n\"max_line\": 1.5}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:2:13: \"max_line\": expected a size", 35) == 0);
    assert_non_null(strstr(err, "not a number with a fraction"));

    assert_int_equal(load_text(cfg, "{\"unix_mode\": null}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:1:15: \"unix_mode\": expected a file mode", 40) == 0);

    assert_int_equal(load_text(cfg, "{\"redis_timeout\": [1]}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:1:19: \"redis_timeout\": expected a duration", 44) == 0);
    assert_non_null(strstr(err, "not an array"));
}

static void test_bad_value_position(void **state)
{
    struct config *cfg = *state;
    char err[512];
    assert_int_equal(load_text(cfg, "{\n  \"unix_mode\": \"0999\"\n}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:2:16: unix_mode: invalid value \"0999\"", 39) == 0);

    assert_int_equal(load_text(cfg, "{\"unix_mode\": 4096}", err, sizeof err), -1);
    assert_string_equal(err, "F:1:15: unix_mode: 010000 is out of range (0000..0777)");

    assert_int_equal(load_text(cfg, "{\"max_connections\": 0}", err, sizeof err), -1);
    assert_string_equal(err, "F:1:21: max_connections: 0 is out of range (1..1000000)");

    assert_int_equal(load_text(cfg, "{\"redis_timeout\": \"soon\"}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:1:19: redis_timeout: invalid value \"soon\"", 43) == 0);

    assert_int_equal(load_text(cfg, "{\"max_line\": \"64 apples\"}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:1:14: max_line: invalid value", 31) == 0);

    assert_int_equal(load_text(cfg, "{\"log_level\": \"loud\"}", err, sizeof err), -1);
    assert_true(strncmp(err, "F:1:15: log_level: invalid value \"loud\"", 39) == 0);
}

static void test_not_an_object(void **state)
{
    struct config *cfg = *state;
    char err[512];
    assert_int_equal(load_text(cfg, "\n  [1, 2]\n", err, sizeof err), -1);
    assert_string_equal(err, "F:2:3: the config must be a JSON object, not an array");
}

static void test_missing_file(void **state)
{
    struct config *cfg = *state;
    char err[512] = "";
    assert_int_equal(config_load_file(cfg, "/nonexistent/rebound.json", err, sizeof err), -1);
    assert_string_equal(err, "/nonexistent/rebound.json: No such file or directory");
}

static void test_config_set(void **state)
{
    struct config *cfg = *state;
    char err[256] = "";
    assert_int_equal(config_set(cfg, "listen", "0.0.0.0:7000", err, sizeof err), 0);
    assert_string_equal(cfg->listen, "0.0.0.0:7000");
    assert_int_equal(config_set(cfg, "unix", "/tmp/r.sock", err, sizeof err), 0);
    assert_string_equal(cfg->unix_path, "/tmp/r.sock");
    assert_int_equal(config_set(cfg, "unix_path", "/tmp/s.sock", err, sizeof err), 0);
    assert_string_equal(cfg->unix_path, "/tmp/s.sock");
    assert_int_equal(config_set(cfg, "redis", "redis://localhost:6390/1", err, sizeof err), 0);
    assert_string_equal(cfg->redis, "redis://localhost:6390/1");
    assert_int_equal(config_set(cfg, "policy", "/p.json", err, sizeof err), 0);
    assert_string_equal(cfg->policy, "/p.json");
    assert_int_equal(config_set(cfg, "unix_mode", "660", err, sizeof err), 0);
    assert_int_equal(cfg->unix_mode, 0660);
    assert_int_equal(config_set(cfg, "max_line", "1M", err, sizeof err), 0);
    assert_int_equal(cfg->max_line, 1 << 20);
    assert_int_equal(config_set(cfg, "redis_timeout", "2m", err, sizeof err), 0);
    assert_true(cfg->redis_timeout_ms == 120000);
    assert_int_equal(config_set(cfg, "fire_batch", "10", err, sizeof err), 0);
    assert_int_equal(cfg->fire_batch, 10);

    assert_int_equal(config_set(cfg, "fire_batch", "10x", err, sizeof err), -1);
    assert_non_null(strstr(err, "fire_batch"));
    assert_int_equal(cfg->fire_batch, 10);
    assert_int_equal(config_set(cfg, "fire_batch", "", err, sizeof err), -1);
    assert_int_equal(config_set(cfg, "fire_batch", "-5", err, sizeof err), -1);
    assert_string_equal(err, "fire_batch: -5 is out of range (1..100000)");
    assert_int_equal(config_set(cfg, "redis_db", "99999999999999999999", err, sizeof err), -1);
    assert_int_equal(config_set(cfg, "bogus", "1", err, sizeof err), -1);
    assert_string_equal(err, "unknown option \"bogus\"");
    assert_int_equal(config_set(cfg, "unix_mode", "0o660", err, sizeof err), -1);
    assert_int_equal(config_set(cfg, "max_line", "0", err, sizeof err), -1);
}

static json_t *dump_to_json(const struct config *cfg, char **text_out);

/* The keys that bound what one client may cost: their forms, their
 * bounds, the dump, and max_line's cap. */
static void test_hostile_client_keys(void **state)
{
    struct config *cfg = *state;
    char err[256] = "";
    assert_int_equal(load_text(cfg,
                               "{\"auth_timeout\": \"2s\", \"line_timeout\": 1500, \"idle_timeout\": \"0\",\n"
                               " \"error_limit\": 5, \"auth_failures\": 1, \"max_groups\": 7,\n"
                               " \"group_expiry\": \"1h30m\", \"allow_remote_without_token\": true,\n"
                               " \"max_line\": \"1MiB\"}",
                               err, sizeof err),
                     0);
    assert_true(cfg->auth_timeout_ms == 2000);
    assert_true(cfg->line_timeout_ms == 1500);
    assert_true(cfg->idle_timeout_ms == 0);
    assert_int_equal(cfg->error_limit, 5);
    assert_int_equal(cfg->auth_failures, 1);
    assert_int_equal(cfg->max_groups, 7);
    assert_true(cfg->group_expiry_ms == 5400000);
    assert_true(cfg->allow_remote_without_token);
    assert_int_equal(cfg->max_line, CONFIG_MAX_LINE_CAP);
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);

    json_t *j = dump_to_json(cfg, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "auth_timeout")), "2s");
    assert_string_equal(json_string_value(json_object_get(j, "line_timeout")), "1s500ms");
    assert_string_equal(json_string_value(json_object_get(j, "idle_timeout")), "0s");
    assert_string_equal(json_string_value(json_object_get(j, "group_expiry")), "1h30m");
    assert_int_equal(json_integer_value(json_object_get(j, "error_limit")), 5);
    assert_int_equal(json_integer_value(json_object_get(j, "auth_failures")), 1);
    assert_int_equal(json_integer_value(json_object_get(j, "max_groups")), 7);
    assert_true(json_is_true(json_object_get(j, "allow_remote_without_token")));
    json_decref(j);

    /* refused: each with its bound in the message, the value kept */
    static const struct {
        const char *name, *value, *msg;
    } bad[] = {
        {"auth_timeout", "0", "auth_timeout: 0 ms is out of range"},
        {"line_timeout", "0", "line_timeout: 0 ms is out of range"},
        {"auth_timeout", "2h", "out of range"},
        {"idle_timeout", "8d", "idle_timeout: 691200000 ms is out of range"},
        {"group_expiry", "0", "group_expiry: 0 ms is out of range"},
        {"group_expiry", "366d", "out of range"},
        {"error_limit", "0", "error_limit: 0 is out of range (1..1000000)"},
        {"auth_failures", "1001", "auth_failures: 1001 is out of range (1..1000)"},
        {"max_groups", "0", "max_groups: 0 is out of range (1..100000)"},
        {"allow_remote_without_token", "maybe", "expected true or false"},
        {"max_line", "1048577", "max_line: 1048577 is out of range (1..1048576)"},
        {"max_line", "1GiB", "out of range"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (config_set(cfg, bad[i].name, bad[i].value, err, sizeof err) != -1)
            fail_msg("%s=%s accepted", bad[i].name, bad[i].value);
        if (!strstr(err, bad[i].msg))
            fail_msg("%s=%s: \"%s\" lacks \"%s\"", bad[i].name, bad[i].value, err, bad[i].msg);
    }
    assert_true(cfg->auth_timeout_ms == 2000);
    assert_int_equal(cfg->max_line, CONFIG_MAX_LINE_CAP);
    assert_int_equal(load_text(cfg, "{\"max_line\": 1073741824}", err, sizeof err), -1);
    assert_non_null(strstr(err, "max_line: 1073741824 is out of range"));
    assert_int_equal(load_text(cfg, "{\"allow_remote_without_token\": \"yes\"}", err, sizeof err), -1);
    assert_non_null(strstr(err, "expected true or false"));

    /* command-line forms of the switch */
    assert_int_equal(config_set(cfg, "allow_remote_without_token", "no", err, sizeof err), 0);
    assert_false(cfg->allow_remote_without_token);

    /* all reloadable: the daemon checks them per connection */
    static const char *const names[] = {"auth_timeout", "line_timeout", "idle_timeout", "error_limit",
                                        "auth_failures", "max_groups", "group_expiry",
                                        "allow_remote_without_token"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_true(config_option_reloadable(names[i]));
}

/* config_load_text is config_load_file without the file. */
static void test_load_text(void **state)
{
    struct config *cfg = *state;
    char err[256] = "";
    static const char text[] = "{\"fire_batch\": 7, \"error_limit\": 9}garbage";
    assert_int_equal(config_load_text(cfg, text, strlen(text) - 7, "mem", err, sizeof err), 0);
    assert_int_equal(cfg->fire_batch, 7);
    assert_int_equal(cfg->error_limit, 9);
    assert_int_equal(config_load_text(cfg, text, strlen(text), "mem", err, sizeof err), -1);
    assert_true(strncmp(err, "mem:1:", 6) == 0);
    assert_int_equal(config_load_text(cfg, "{\"error_limit\": 0}", 18, "mem", err, sizeof err), -1);
    assert_string_equal(err, "mem:1:17: error_limit: 0 is out of range (1..1000000)");
    assert_int_equal(cfg->error_limit, 9);
}

static void test_validate(void **state)
{
    struct config *cfg = *state;
    char err[256];
    static const struct {
        const char *listen;
        int ok;
    } cases[] = {
        {"127.0.0.1:7411", 0}, {"localhost:1", 0}, {"[::1]:65535", 0}, {"", 0},
        {"127.0.0.1", -1},     {":7411", -1},      {"127.0.0.1:0", -1}, {"127.0.0.1:65536", -1},
        {"::1:7411", -1},      {"[::1:7411", -1},  {"h:+1", -1},       {"h: 1", -1},
        {"h:12ab", -1},        {"a b:1", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(config_set(cfg, "listen", cases[i].listen, err, sizeof err), 0);
        assert_int_equal(config_set(cfg, "unix_path", "/run/r.sock", err, sizeof err), 0);
        err[0] = '\0';
        int rc = config_validate(cfg, err, sizeof err);
        if (rc != cases[i].ok)
            fail_msg("listen \"%s\": validate returned %d (%s)", cases[i].listen, rc, err);
        if (rc)
            assert_true(strncmp(err, "listen: ", 8) == 0);
    }

    /* no listener at all */
    config_set(cfg, "listen", "", err, sizeof err);
    config_set(cfg, "unix_path", "", err, sizeof err);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "no connections"));
    config_set(cfg, "listen", "127.0.0.1:7411", err, sizeof err);

    config_set(cfg, "metrics_listen", "9100", err, sizeof err);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "metrics_listen: ", 16) == 0);
    config_set(cfg, "metrics_listen", "", err, sizeof err);

    config_set(cfg, "prefix", "", err, sizeof err);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "prefix: ", 8) == 0);
    config_set(cfg, "prefix", "a b", err, sizeof err);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    config_set(cfg, "prefix", "rebound:", err, sizeof err);

    config_set(cfg, "redis", "", err, sizeof err);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    config_set(cfg, "redis", "127.0.0.1:6379", err, sizeof err);

    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    config_set(cfg, "unix_path", longpath, err, sizeof err);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "unix_path: ", 11) == 0);
    config_set(cfg, "unix_path", "", err, sizeof err);

    /* a struct filled in by hand is checked against the table's bounds too */
    cfg->unix_mode = 01777;
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "unix_mode: ", 11) == 0);
    cfg->unix_mode = 0660;
    cfg->max_inflight = 0;
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "max_inflight: ", 14) == 0);
    cfg->max_inflight = 1;
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
}

static json_t *dump_to_json(const struct config *cfg, char **text_out)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_dump(cfg, f);
    fclose(f);
    json_error_t jerr;
    json_t *j = json_loadb(buf, len, 0, &jerr);
    if (!j)
        fail_msg("dump is not JSON: %s\n%s", jerr.text, buf);
    if (text_out)
        *text_out = buf;
    else
        free(buf);
    return j;
}

static void test_dump_masks_secrets(void **state)
{
    struct config *cfg = *state;
    char err[256];
    json_t *j = dump_to_json(cfg, NULL);
    /* unset secrets show as "", so an operator can tell set from unset */
    assert_string_equal(json_string_value(json_object_get(j, "redis_password")), "");
    assert_string_equal(json_string_value(json_object_get(j, "token")), "");
    assert_string_equal(json_string_value(json_object_get(j, "unix_mode")), "0660");
    assert_string_equal(json_string_value(json_object_get(j, "redis_timeout")), "5s");
    assert_int_equal(json_integer_value(json_object_get(j, "max_line")), 65536);
    assert_int_equal(json_object_size(j), 39);
    json_decref(j);

    config_set(cfg, "redis_password", "hunter2", err, sizeof err);
    config_set(cfg, "token", "letmein", err, sizeof err);
    config_set(cfg, "redis", "redis://app:hunter2@db:6379/1", err, sizeof err);
    char *text;
    j = dump_to_json(cfg, &text);
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "letmein"));
    assert_string_equal(json_string_value(json_object_get(j, "redis_password")), "***");
    assert_string_equal(json_string_value(json_object_get(j, "token")), "***");
    assert_string_equal(json_string_value(json_object_get(j, "redis")), "redis://app:***@db:6379/1");
    free(text);
    json_decref(j);

    config_set(cfg, "redis", "redis://onlysecret@db", err, sizeof err);
    j = dump_to_json(cfg, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "redis")), "redis://***@db");
    json_decref(j);
}

/* What -t prints can be loaded back and gives the same settings. */
static void test_dump_round_trip(void **state)
{
    struct config *cfg = *state;
    char err[512];
    config_set(cfg, "unix_mode", "0640", err, sizeof err);
    config_set(cfg, "redis_timeout", "90m", err, sizeof err);
    config_set(cfg, "max_line", "3000", err, sizeof err);
    config_set(cfg, "log_level", "debug", err, sizeof err);
    char *text;
    json_decref(dump_to_json(cfg, &text));

    struct config back;
    config_defaults(&back, "/other");
    assert_int_equal(load_text(&back, text, err, sizeof err), 0);
    free(text);
    assert_int_equal(back.unix_mode, 0640);
    assert_true(back.redis_timeout_ms == 90 * 60000);
    assert_int_equal(back.max_line, 3000);
    assert_string_equal(back.log_level, "debug");
    assert_string_equal(back.policy, DEFAULT_POLICY);
    config_free(&back);
}

struct changes {
    char names[8][32];
    bool applied[8];
    int n;
};

static void changed_cb(const char *name, bool applied, void *arg)
{
    struct changes *c = arg;
    assert_true(c->n < 8);
    snprintf(c->names[c->n], sizeof c->names[0], "%s", name);
    c->applied[c->n++] = applied;
}

static void test_reload(void **state)
{
    struct config *cfg = *state;
    struct config next;
    char err[256];
    config_defaults(&next, DEFAULT_POLICY);
    config_set(&next, "log_level", "debug", err, sizeof err);
    config_set(&next, "listen", "127.0.0.1:9999", err, sizeof err);
    config_set(&next, "fire_batch", "7", err, sizeof err);
    assert_false(config_option_reloadable("listen"));
    assert_true(config_option_reloadable("log_level"));
    assert_false(config_option_reloadable("nope"));

    struct changes c = {.n = 0};
    assert_int_equal(config_reload(cfg, &next, changed_cb, &c), 2);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.names[0], "listen");
    assert_false(c.applied[0]);
    assert_string_equal(c.names[1], "log_level");
    assert_true(c.applied[1]);
    assert_string_equal(c.names[2], "fire_batch");
    assert_true(c.applied[2]);
    assert_string_equal(cfg->listen, "127.0.0.1:7411");
    assert_string_equal(cfg->log_level, "debug");
    assert_int_equal(cfg->fire_batch, 7);
    config_free(&next);
    /* the copy is a copy: cfg still owns a valid string */
    assert_string_equal(cfg->log_level, "debug");
}

static void test_resolve_paths(void **state)
{
    struct config *cfg = *state;
    char err[256];
    static const struct {
        const char *policy, *config_path, *want;
    } cases[] = {
        {"policy.json", "/etc/rebound/reboundd.json", "/etc/rebound/policy.json"},
        {"sub/p.json", "conf/reboundd.json", "conf/sub/p.json"},
        {"../p.json", "/etc/rebound/reboundd.json", "/etc/rebound/../p.json"},
        {"/abs/p.json", "/etc/rebound/reboundd.json", "/abs/p.json"},
        {"policy.json", "reboundd.json", "policy.json"}, /* same directory already */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(config_set(cfg, "policy", cases[i].policy, err, sizeof err), 0);
        assert_int_equal(config_resolve_paths(cfg, cases[i].config_path), 0);
        assert_string_equal(cfg->policy, cases[i].want);
    }
}

static void test_suggest(void **state)
{
    assert_string_equal(config_suggest("max_conections"), "max_connections");
    assert_string_equal(config_suggest("listne"), "listen");
    assert_string_equal(config_suggest("redis_passwd"), "redis_password");
    assert_string_equal(config_suggest("max_lines"), "max_line");
    assert_null(config_suggest("unix"));
    assert_null(config_suggest("completely_different"));
    assert_null(config_suggest(""));
}

static void test_mask_address(void **state)
{
    char buf[128];
    assert_string_equal(config_mask_address("redis://u:pw@h:1/2", buf, sizeof buf), "redis://u:***@h:1/2");
    assert_string_equal(config_mask_address("redis://pw@h", buf, sizeof buf), "redis://***@h");
    assert_string_equal(config_mask_address("127.0.0.1:6379", buf, sizeof buf), "127.0.0.1:6379");
    assert_string_equal(config_mask_address("/run/redis/redis.sock", buf, sizeof buf), "/run/redis/redis.sock");
}

/* docs/operations.md marks every key a reload applies with "(reload)", and
 * no other: the table and the option table say the same. */
static char *slurp(const char *path);
static void test_docs_mark_reloadable_keys(void **state)
{
    struct config *cfg = *state;
    char *doc = slurp(REBOUND_SOURCE_DIR "/docs/operations.md");
    json_t *full = dump_to_json(cfg, NULL);
    const char *key;
    json_t *val;
    json_object_foreach(full, key, val) {
        char row[80];
        snprintf(row, sizeof row, "\n| `%s` |", key);
        const char *start = strstr(doc, row);
        if (!start)
            fail_msg("docs/operations.md has no table row for %s", key);
        const char *end = strchr(start + 1, '\n');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        char *line = strndup(start, len);
        bool marked = strstr(line, "**(reload)**") != NULL;
        if (marked != config_option_reloadable(key))
            fail_msg("docs/operations.md: %s is %s reloadable, but its row says %s", key,
                     config_option_reloadable(key) ? "" : "not", marked ? "it is" : "nothing");
        free(line);
    }
    json_decref(full);
    free(doc);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(f);
    fclose(m);
    return buf;
}

/* The shipped example holds every option at its default (but unix_path), each with a
 * "_comment_<key>", and docs/operations.md names every option: adding a row
 * to the table without the rest fails here. */
static void test_example_and_docs_cover_every_option(void **state)
{
    struct config *cfg = *state;
    char err[512] = "";
    const char *example = REBOUND_SOURCE_DIR "/config/reboundd.example.json";
    struct config ex;
    config_defaults(&ex, "/elsewhere");
    if (config_load_file(&ex, example, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(config_validate(&ex, err, sizeof err), 0);

    json_t *dflt = dump_to_json(cfg, NULL);
    json_t *got = dump_to_json(&ex, NULL);
    /* the policy default depends on the install prefix; the socket is the
     * one key the shipped file sets, for the unit's RuntimeDirectory; the
     * rest must match */
    json_object_del(dflt, "policy");
    json_object_del(got, "policy");
    assert_string_equal(json_string_value(json_object_get(got, "unix_path")), "/run/rebound/rebound.sock");
    json_object_del(dflt, "unix_path");
    json_object_del(got, "unix_path");
    if (!json_equal(dflt, got)) {
        char *a = json_dumps(dflt, JSON_COMPACT), *b = json_dumps(got, JSON_COMPACT);
        fail_msg("example differs from the defaults:\n%s\n%s", a, b);
    }
    json_decref(got);
    config_free(&ex);

    json_error_t jerr;
    json_t *raw = json_load_file(example, 0, &jerr);
    assert_non_null(raw);
    char *doc = slurp(REBOUND_SOURCE_DIR "/docs/operations.md");
    json_t *full = dump_to_json(cfg, NULL);
    const char *key;
    json_t *val;
    json_object_foreach(full, key, val) {
        char ck[64], dk[64];
        snprintf(dk, sizeof dk, "`%s`", key);
        if (!strstr(doc, dk))
            fail_msg("docs/operations.md does not mention %s", dk);
        snprintf(ck, sizeof ck, "_comment_%s", key);
        if (!json_is_string(json_object_get(raw, ck)))
            fail_msg("example has no %s", ck);
        if (!json_object_get(raw, key))
            fail_msg("example has no %s", key);
    }
    free(doc);
    json_decref(full);
    json_decref(raw);
    json_decref(dflt);
}

/* The high-availability keys: Sentinels as a JSON array or a string,
 * and the checks that keep a WAIT or a Sentinel address from failing only
 * at run time. */
static void test_ha_keys(void **state)
{
    struct config *cfg = *state;
    char err[512] = "";
    const char *text = "{\"redis_sentinels\": [\"127.0.0.1:26379\", \"[::1]:26380\"],\n"
                       " \"redis_master_name\": \"mail\", \"redis_sentinel_password\": \"sp\",\n"
                       " \"redis_min_replicas\": 1, \"redis_replica_timeout\": \"250ms\",\n"
                       " \"instance_id\": \"a1\", \"advertise\": \"10.0.0.7:7411\"}";
    assert_int_equal(load_text(cfg, text, err, sizeof err), 0);
    assert_string_equal(cfg->redis_sentinels, "127.0.0.1:26379,[::1]:26380");
    assert_string_equal(cfg->redis_master_name, "mail");
    assert_int_equal(cfg->redis_min_replicas, 1);
    assert_true(cfg->redis_replica_timeout_ms == 250);
    assert_string_equal(cfg->instance_id, "a1");
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
    json_t *j = dump_to_json(cfg, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "redis_sentinel_password")), "***");
    json_decref(j);

    /* a WAIT as long as the link's time-out would drop the link */
    assert_int_equal(config_set(cfg, "redis_replica_timeout", "5s", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_replica_timeout"));
    assert_int_equal(config_set(cfg, "redis_replica_timeout", "1s", err, sizeof err), 0);

    assert_int_equal(config_set(cfg, "redis_sentinels", "127.0.0.1:26379,nope", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_sentinels"));
    assert_int_equal(config_set(cfg, "redis_sentinels", "127.0.0.1:26379", err, sizeof err), 0);
    assert_int_equal(config_set(cfg, "redis_master_name", "", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_master_name"));

    /* an element that is not a string is a type error at its position */
    assert_int_equal(load_text(cfg, "{\"redis_sentinels\": [26379]}", err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_sentinels"));
}

/* wait_replicas and its old name: one field; the old name is still read
 * from a file and a flag; both in one file only when they agree. */
static void test_wait_replicas_renamed(void **state)
{
    struct config *cfg = *state;
    char err[512] = "";
    assert_int_equal(load_text(cfg, "{\"wait_replicas\": 2}", err, sizeof err), 0);
    assert_int_equal(cfg->redis_min_replicas, 2);
    assert_int_equal(load_text(cfg, "{\"redis_min_replicas\": 3}", err, sizeof err), 0);
    assert_int_equal(cfg->redis_min_replicas, 3);
    assert_int_equal(load_text(cfg, "{\"wait_replicas\": 1, \"redis_min_replicas\": 1}", err, sizeof err), 0);
    assert_int_equal(cfg->redis_min_replicas, 1);
    assert_int_equal(load_text(cfg, "{\"redis_min_replicas\": 2, \"wait_replicas\": 1}", err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_min_replicas"));
    assert_non_null(strstr(err, "wait_replicas"));
    assert_int_equal(cfg->redis_min_replicas, 1); /* a refused file changes nothing */
    assert_int_equal(config_set(cfg, "redis_min_replicas", "4", err, sizeof err), 0);
    assert_int_equal(cfg->redis_min_replicas, 4);
    assert_int_equal(config_set(cfg, "wait_replicas", "0", err, sizeof err), 0);
    assert_int_equal(cfg->redis_min_replicas, 0);
    json_t *j = dump_to_json(cfg, NULL);
    assert_non_null(json_object_get(j, "wait_replicas"));
    assert_null(json_object_get(j, "redis_min_replicas"));
    json_decref(j);
}

/* Redis Cluster seeds: an array or a string, never with Sentinels, and
 * only with a prefix whose hash tag keeps every key in one slot of db 0. */
static void test_cluster_keys(void **state)
{
    struct config *cfg = *state;
    char err[512] = "";
    const char *text = "{\"redis_cluster\": [\"127.0.0.1:7000\", \"127.0.0.1:7001\"], \"prefix\": \"{rebound}:\"}";
    assert_int_equal(load_text(cfg, text, err, sizeof err), 0);
    assert_string_equal(cfg->redis_cluster, "127.0.0.1:7000,127.0.0.1:7001");
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);

    assert_int_equal(config_set(cfg, "prefix", "rebound:", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "prefix: with redis_cluster it needs a hash tag"));
    assert_non_null(strstr(err, "\"{rebound:}\""));
    assert_int_equal(config_set(cfg, "prefix", "{}rebound:", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_int_equal(config_set(cfg, "prefix", "app:{rebound}:", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);

    assert_int_equal(config_set(cfg, "redis_db", "2", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_db: must be 0 with redis_cluster"));
    assert_int_equal(config_set(cfg, "redis_db", "0", err, sizeof err), 0);

    assert_int_equal(config_set(cfg, "redis_sentinels", "127.0.0.1:26379", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "not both"));
    assert_int_equal(config_set(cfg, "redis_sentinels", "", err, sizeof err), 0);

    assert_int_equal(config_set(cfg, "redis_cluster", "127.0.0.1:7000,:", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_cluster"));
    assert_int_equal(load_text(cfg, "{\"redis_cluster\": [7000]}", err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_cluster"));
}

/* Shards apart on a Redis Cluster: shards with redis_cluster need no
 * hash tag in the prefix (each shard's keys get one of their own) and
 * still refuse braces in it, and a lease. */
static void test_cluster_shards(void **state)
{
    struct config *cfg = *state;
    char err[512] = "";
    const char *text = "{\"redis_cluster\": [\"127.0.0.1:7000\"], \"shards\": 24, \"lease_ttl\": \"10s\"}";
    assert_int_equal(load_text(cfg, text, err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
    assert_int_equal(cfg->shards, 24);
    assert_int_equal(config_set(cfg, "prefix", "{rebound}:", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "prefix: no braces with shards"));
    assert_int_equal(config_set(cfg, "prefix", "rebound:", err, sizeof err), 0);
    assert_int_equal(config_set(cfg, "lease_ttl", "0", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "shards: needs lease_ttl"));
    assert_int_equal(config_set(cfg, "lease_ttl", "10s", err, sizeof err), 0);
    /* without shards the one-slot rule stands */
    assert_int_equal(config_set(cfg, "shards", "0", err, sizeof err), 0);
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "prefix: with redis_cluster it needs a hash tag"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test(test_defaults_without_policy),
        cmocka_unit_test_setup_teardown(test_good_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_file_keeps_other_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_error_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_type_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_value_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_an_object, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_client_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_masks_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_example_and_docs_cover_every_option, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resolve_paths, setup, teardown),
        cmocka_unit_test(test_suggest),
        cmocka_unit_test(test_mask_address),
        cmocka_unit_test_setup_teardown(test_docs_mark_reloadable_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ha_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_replicas_renamed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_shards, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
