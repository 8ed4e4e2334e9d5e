/*
 * reboundd's configuration, driven by one table.
 *
 * Every option is one row of `options` below: its name in the file, its
 * type, where it lives in struct config, its default (written as text and
 * parsed by the same code that parses a command-line flag, so a default can
 * never be a value the parser would refuse), its bounds, whether a reload
 * may change it, and whether it is a secret. Defaults, the file loader,
 * config_set, config_validate, the dump and reload all walk that one table,
 * so adding an option is adding a row (and a field, and a paragraph in
 * docs/operations.md).
 *
 * The file is one flat JSON object. Keys starting with "_" are ignored so
 * that the shipped example can carry "_comment_<key>" strings next to each
 * key; any other unknown key is an error, because a misspelt option that is
 * silently ignored is worse than a daemon that refuses to start. jansson
 * keeps no source positions for values, so config/json_pos.h finds the
 * line and column of the key or value an error is about.
 *
 * Loading is all or nothing: the file is applied to a copy, and the copy
 * replaces the caller's config only when every key was accepted.
 */
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config/addr.h"
#include "config/duration.h"
#include "config/json_pos.h"

/* A config file is a few hundred bytes; this only stops a wrong path
 * (a log file, a device) from being read into memory whole. */
#define CONFIG_MAX_FILE (1024 * 1024)

enum opt_type {
    OPT_STRING,
    OPT_INT,      /* int or long long, by the field's width */
    OPT_SIZE,     /* size_t; an integer or "64KiB" */
    OPT_BOOL,
    OPT_MODE,     /* int; "0660" or 432 */
    OPT_DURATION, /* int64_t milliseconds; "5s" or an integer of ms */
    OPT_LEVEL,    /* char *, one of the log level names */
};

struct option {
    const char *name;
    enum opt_type type;
    size_t offset;
    size_t width;
    const char *def; /* as text; NULL: the default_policy argument */
    long long min, max;
    bool reloadable; /* a reload may change it without a restart */
    bool secret;     /* masked in the dump */
};

#define FIELD(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)

static const struct option options[] = {
    {"listen", OPT_STRING, FIELD(listen), "127.0.0.1:7411", 0, 0, false, false},
    {"unix_path", OPT_STRING, FIELD(unix_path), "", 0, 0, false, false},
    {"unix_mode", OPT_MODE, FIELD(unix_mode), "0660", 0, 0777, false, false},
    {"unix_group", OPT_STRING, FIELD(unix_group), "", 0, 0, false, false},
    {"redis", OPT_STRING, FIELD(redis), "127.0.0.1:6379", 0, 0, false, false},
    {"redis_user", OPT_STRING, FIELD(redis_user), "", 0, 0, false, false},
    {"redis_password", OPT_STRING, FIELD(redis_password), "", 0, 0, false, true},
    {"redis_db", OPT_INT, FIELD(redis_db), "0", 0, INT_MAX, false, false},
    {"redis_timeout", OPT_DURATION, FIELD(redis_timeout_ms), "5s", 1, 24LL * 3600 * 1000, true, false},
    {"prefix", OPT_STRING, FIELD(prefix), "rebound:", 0, 0, false, false},
    {"policy", OPT_STRING, FIELD(policy), NULL, 0, 0, true, false},
    {"max_line", OPT_SIZE, FIELD(max_line), "64KiB", 1, CONFIG_MAX_LINE_CAP, true, false},
    {"max_connections", OPT_INT, FIELD(max_connections), "1024", 1, 1000000, true, false},
    {"max_inflight", OPT_INT, FIELD(max_inflight), "1024", 1, 1000000, true, false},
    {"token", OPT_STRING, FIELD(token), "", 0, 0, true, true},
    {"metrics_listen", OPT_STRING, FIELD(metrics_listen), "", 0, 0, false, false},
    {"log_level", OPT_LEVEL, FIELD(log_level), "info", 0, 0, true, false},
    {"stream_maxlen", OPT_INT, FIELD(stream_maxlen), "1000000", 1, LLONG_MAX, true, false},
    {"fire_batch", OPT_INT, FIELD(fire_batch), "1000", 1, 100000, true, false},
    /* Hostile clients. Every time-out has a floor of 1 ms so that tests can
     * use short ones, and a ceiling; only idle_timeout may be 0 (off): a
     * sender may keep a pooled connection open between campaigns, but a
     * half-sent line or a missing auth is never legitimate for long. */
    {"auth_timeout", OPT_DURATION, FIELD(auth_timeout_ms), "10s", 1, 3600LL * 1000, true, false},
    {"line_timeout", OPT_DURATION, FIELD(line_timeout_ms), "30s", 1, 3600LL * 1000, true, false},
    {"idle_timeout", OPT_DURATION, FIELD(idle_timeout_ms), "60s", 0, 7LL * 86400 * 1000, true, false},
    {"error_limit", OPT_INT, FIELD(error_limit), "20", 1, 1000000, true, false},
    {"auth_failures", OPT_INT, FIELD(auth_failures), "3", 1, 1000, true, false},
    {"max_groups", OPT_INT, FIELD(max_groups), "100", 1, 100000, true, false},
    {"group_expiry", OPT_DURATION, FIELD(group_expiry_ms), "7d", 1, 365LL * 86400 * 1000, true, false},
    {"allow_remote_without_token", OPT_BOOL, FIELD(allow_remote_without_token), "false", 0, 0, true, false},
    {"history_retention", OPT_DURATION, FIELD(history_retention_ms), "7d", 0, 366LL * 24 * 3600 * 1000, true, false},
    /* high availability */
    {"redis_sentinels", OPT_STRING, FIELD(redis_sentinels), "", 0, 0, false, false},
    {"redis_master_name", OPT_STRING, FIELD(redis_master_name), "mymaster", 0, 0, false, false},
    {"redis_sentinel_password", OPT_STRING, FIELD(redis_sentinel_password), "", 0, 0, false, true},
    {"redis_cluster", OPT_STRING, FIELD(redis_cluster), "", 0, 0, false, false},
    {"wait_replicas", OPT_INT, FIELD(redis_min_replicas), "0", 0, 1000, false, false},
    {"redis_replica_timeout", OPT_DURATION, FIELD(redis_replica_timeout_ms), "1s", 1, 3600LL * 1000, false, false},
    {"instance_id", OPT_STRING, FIELD(instance_id), "", 0, 0, false, false},
    {"advertise", OPT_STRING, FIELD(advertise), "", 0, 0, false, false},
    /* several reboundd on one Redis: the lease on the schedule (0 = none) */
    {"lease_ttl", OPT_DURATION, FIELD(lease_ttl_ms), "0", 0, 3600LL * 1000, false, false},
    {"lease_forward", OPT_BOOL, FIELD(lease_forward), "true", 0, 0, true, false},
    /* shards of the schedule by recipient, each under a lease (0 = one) */
    {"shards", OPT_INT, FIELD(shards), "0", 0, 64, false, false},
};
#define NOPTIONS (sizeof options / sizeof options[0])

/* Names that command-line flags use for options whose key is longer. */
static const struct {
    const char *alias, *name;
} aliases[] = {
    {"unix", "unix_path"},
};

/* Keys renamed: the old name is still read, from a file too, as the new
 * one. Both in one file is an error unless they agree (which one was meant
 * cannot be guessed). */
static const struct {
    const char *old, *name;
} renamed[] = {
    {"redis_min_replicas", "wait_replicas"}, /* the and Redis's word */
};

static const char *renamed_to(const char *key)
{
    for (size_t i = 0; i < sizeof renamed / sizeof renamed[0]; i++)
        if (strcmp(key, renamed[i].old) == 0)
            return renamed[i].name;
    return NULL;
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static void *field(struct config *cfg, const struct option *o)
{
    return (char *)cfg + o->offset;
}

static const void *cfield(const struct config *cfg, const struct option *o)
{
    return (const char *)cfg + o->offset;
}

static char *dup_or_die(const char *s)
{
    char *d = strdup(s);
    if (!d) {
        fprintf(stderr, "rebound: out of memory\n");
        abort();
    }
    return d;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const struct option *option_find(const char *name)
{
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(name, aliases[i].alias) == 0)
            name = aliases[i].name;
    if (renamed_to(name))
        name = renamed_to(name);
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strcmp(name, options[i].name) == 0)
            return &options[i];
    return NULL;
}

static const char *type_expectation(enum opt_type t)
{
    switch (t) {
    case OPT_STRING:
        return "a string";
    case OPT_INT:
        return "an integer";
    case OPT_SIZE:
        return "a size (an integer of bytes or a string such as \"64KiB\")";
    case OPT_BOOL:
        return "true or false";
    case OPT_MODE:
        return "a file mode (an octal string such as \"0660\" or an integer)";
    case OPT_DURATION:
        return "a duration (a string such as \"5s\" or an integer of milliseconds)";
    case OPT_LEVEL:
        return "a log level (\"debug\", \"info\", \"warn\" or \"error\")";
    }
    return "a value";
}

/* A parsed value, before it is stored: strings stay borrowed. */
struct value {
    long long n;
    const char *s;
};

static long long field_get_int(const struct config *cfg, const struct option *o)
{
    const void *p = cfield(cfg, o);
    switch (o->type) {
    case OPT_INT:
    case OPT_MODE:
        if (o->width == sizeof(long long))
            return *(const long long *)p;
        return *(const int *)p;
    case OPT_SIZE:
        return (long long)*(const size_t *)p;
    case OPT_BOOL:
        return *(const bool *)p;
    case OPT_DURATION:
        return *(const int64_t *)p;
    default:
        return 0;
    }
}

/* Stores a value that has been checked. Strings are copied. */
static void field_store(struct config *cfg, const struct option *o, const struct value *v)
{
    void *p = field(cfg, o);
    switch (o->type) {
    case OPT_STRING:
    case OPT_LEVEL: {
        char **sp = p;
        char *copy = dup_or_die(v->s);
        free(*sp);
        *sp = copy;
        break;
    }
    case OPT_INT:
    case OPT_MODE:
        if (o->width == sizeof(long long))
            *(long long *)p = v->n;
        else
            *(int *)p = (int)v->n;
        break;
    case OPT_SIZE:
        *(size_t *)p = (size_t)v->n;
        break;
    case OPT_BOOL:
        *(bool *)p = v->n != 0;
        break;
    case OPT_DURATION:
        *(int64_t *)p = v->n;
        break;
    }
}

static int check_bounds(const struct option *o, long long n, char *err, size_t errlen)
{
    if (o->type == OPT_STRING || o->type == OPT_LEVEL || o->type == OPT_BOOL)
        return 0;
    if (n >= o->min && n <= o->max)
        return 0;
    if (o->type == OPT_MODE)
        set_err(err, errlen, "%s: 0%03llo is out of range (0%03llo..0%03llo)", o->name, n, o->min, o->max);
    else if (o->type == OPT_DURATION) {
        char lo[32], hi[32];
        duration_format(o->min, lo, sizeof lo);
        duration_format(o->max, hi, sizeof hi);
        set_err(err, errlen, "%s: %lld ms is out of range (%s..%s)", o->name, n, lo, hi);
    } else
        set_err(err, errlen, "%s: %lld is out of range (%lld..%lld)", o->name, n, o->min, o->max);
    return -1;
}

/* Parses a decimal integer that must fill s. */
static int parse_ll(const char *s, int base, long long *out)
{
    if (!*s || isspace((unsigned char)*s) || *s == '+')
        return -1;
    errno = 0;
    char *end;
    long long n = strtoll(s, &end, base);
    if (errno || *end)
        return -1;
    *out = n;
    return 0;
}

/* "65536", "64k", "64KiB", "1M", "1GB": binary multiples throughout, as a
 * line or buffer limit is always meant in KiB. */
static int parse_size(const char *s, long long *out)
{
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned long long mult = 1;
    if (*end) {
        char u = (char)tolower((unsigned char)*end);
        const char *rest = end + 1;
        if (u == 'b' && !*rest)
            mult = 1;
        else if (u == 'k' || u == 'm' || u == 'g') {
            mult = u == 'k' ? 1ULL << 10 : u == 'm' ? 1ULL << 20 : 1ULL << 30;
            if (strcmp(rest, "") && strcasecmp(rest, "b") && strcasecmp(rest, "ib"))
                return -1;
        } else
            return -1;
    }
    if (n > (unsigned long long)LLONG_MAX / mult)
        return -1;
    *out = (long long)(n * mult);
    return 0;
}

static int parse_level(const char *s, const char **canon)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *canon = level_names[i];
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *canon = "warn";
        return 0;
    }
    return -1;
}

/* Parses the text form of a value (a flag, a default, or a JSON string for
 * the types that take one). The message names the option, not a position:
 * callers that know one prepend it. */
static int parse_text(const struct option *o, const char *s, struct value *v, char *err, size_t errlen)
{
    v->s = s;
    v->n = 0;
    switch (o->type) {
    case OPT_STRING:
        return 0;
    case OPT_LEVEL:
        if (parse_level(s, &v->s) == 0)
            return 0;
        break;
    case OPT_INT:
        if (parse_ll(s, 10, &v->n) == 0)
            return check_bounds(o, v->n, err, errlen);
        break;
    case OPT_SIZE:
        if (parse_size(s, &v->n) == 0)
            return check_bounds(o, v->n, err, errlen);
        break;
    case OPT_MODE: {
        /* Octal always, with or without the leading 0: a mode written
         * "660" means rw-rw----, never decimal 660. */
        bool digits = *s != '\0';
        for (const char *c = s; *c; c++)
            if (*c < '0' || *c > '7')
                digits = false;
        if (digits && parse_ll(s, 8, &v->n) == 0)
            return check_bounds(o, v->n, err, errlen);
        break;
    }
    case OPT_DURATION: {
        int64_t ms;
        if (duration_parse(s, &ms) == 0) {
            v->n = ms;
            return check_bounds(o, v->n, err, errlen);
        }
        break;
    }
    case OPT_BOOL:
        if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on") || !strcmp(s, "1")) {
            v->n = 1;
            return 0;
        }
        if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off") || !strcmp(s, "0")) {
            v->n = 0;
            return 0;
        }
        break;
    }
    set_err(err, errlen, "%s: invalid value \"%.64s\": expected %s", o->name, s, type_expectation(o->type));
    return -1;
}

/* redis_sentinels and redis_cluster may be written as a JSON array of "host:port" strings,
 * the natural form in a file; it is kept as the comma-separated text the
 * command line takes. The buffer is static: v->s is copied by field_store
 * before the next option is parsed. */
static int join_addresses(const char *name, json_t *j, struct value *v, char *err, size_t errlen)
{
    static char joined[4096];
    size_t n = 0, i;
    json_t *el;
    joined[0] = '\0';
    json_array_foreach(j, i, el) {
        if (!json_is_string(el))
            return -1;
        const char *s = json_string_value(el);
        size_t len = strlen(s);
        if (!len || strchr(s, ',') || n + len + 2 > sizeof joined) {
            set_err(err, errlen, "%s: each element must be a non-empty \"host:port\" (and all under 4 KiB)", name);
            return -2;
        }
        if (n)
            joined[n++] = ',';
        memcpy(joined + n, s, len + 1);
        n += len;
    }
    v->s = joined;
    return 0;
}

/* Converts a JSON value. Returns 0, -1 for a wrong JSON type, -2 for a
 * right type with a bad value (err filled in, without position). */
static int parse_json(const struct option *o, json_t *j, struct value *v, char *err, size_t errlen)
{
    v->s = NULL;
    v->n = 0;
    switch (o->type) {
    case OPT_STRING:
    case OPT_LEVEL:
        if (json_is_array(j) && (strcmp(o->name, "redis_sentinels") == 0 || strcmp(o->name, "redis_cluster") == 0))
            return join_addresses(o->name, j, v, err, errlen);
        if (!json_is_string(j))
            return -1;
        break;
    case OPT_BOOL:
        if (!json_is_boolean(j))
            return -1;
        v->n = json_is_true(j);
        return 0;
    case OPT_INT:
        if (!json_is_integer(j))
            return -1;
        v->n = json_integer_value(j);
        return check_bounds(o, v->n, err, errlen) ? -2 : 0;
    case OPT_SIZE:
    case OPT_MODE:
    case OPT_DURATION:
        if (json_is_integer(j)) {
            v->n = json_integer_value(j);
            return check_bounds(o, v->n, err, errlen) ? -2 : 0;
        }
        if (!json_is_string(j))
            return -1;
        break;
    }
    return parse_text(o, json_string_value(j), v, err, errlen) ? -2 : 0;
}

static const char *json_type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

/* Copies key into buf for a message: printable ASCII, at most 64 bytes. */
static const char *printable(const char *key, char *buf, size_t buflen)
{
    size_t n = 0;
    for (const char *c = key; *c && n + 1 < buflen && n < 64; c++)
        buf[n++] = (*c >= 0x20 && *c < 0x7f) ? *c : '?';
    buf[n] = '\0';
    return buf;
}

static void free_strings(struct config *cfg)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (options[i].type == OPT_STRING || options[i].type == OPT_LEVEL) {
            char **sp = field(cfg, &options[i]);
            free(*sp);
            *sp = NULL;
        }
    }
}

/* A deep copy, so a failed load leaves the original untouched. */
static void config_copy(struct config *dst, const struct config *src)
{
    *dst = *src;
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (options[i].type == OPT_STRING || options[i].type == OPT_LEVEL) {
            char **sp = field(dst, &options[i]);
            *sp = dup_or_die(*sp ? *sp : "");
        }
    }
}

void config_defaults(struct config *cfg, const char *default_policy)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option *o = &options[i];
        const char *def = o->def ? o->def : (default_policy ? default_policy : "");
        struct value v;
        char err[256];
        if (parse_text(o, def, &v, err, sizeof err) != 0) {
            /* The table is wrong: a broken build, not a user error. */
            fprintf(stderr, "rebound: bad default in the option table: %s\n", err);
            abort();
        }
        field_store(cfg, o, &v);
    }
}

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= CONFIG_MAX_FILE) {
                set_err(err, errlen, "%s: larger than %d bytes, not a config file", path, CONFIG_MAX_FILE);
                goto fail;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                set_err(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                set_err(err, errlen, "%s: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
    }
    fclose(f);
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    size_t len;
    char *text = read_file(path, &len, err, errlen);
    if (!text)
        return -1;
    int rc = config_load_text(cfg, text, len, path, err, errlen);
    free(text);
    return rc;
}

int config_load_text(struct config *cfg, const char *text, size_t len, const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        set_err(err, errlen, "%s:%d:%d: %s", path, jerr.line < 1 ? 1 : jerr.line, jerr.column < 1 ? 1 : jerr.column,
                jerr.text);
        return -1;
    }
    int rc = -1;
    int line, col;
    char kbuf[80];
    if (!json_is_object(root)) {
        json_pos_find(text, len, NULL, 0, &line, &col);
        set_err(err, errlen, "%s:%d:%d: the config must be a JSON object, not %s", path, line, col,
                json_type_name(root));
        goto out;
    }

    struct config next;
    config_copy(&next, cfg);
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (key[0] == '_')
            continue; /* comments: "_comment_listen": "..." */
        const struct option *o = option_find(key);
        if (o && renamed_to(key) && json_object_get(root, o->name)) {
            struct value nv, ov;
            char why[256];
            if (parse_json(o, json_object_get(root, o->name), &nv, why, sizeof why) == 0 &&
                parse_json(o, val, &ov, why, sizeof why) == 0 && nv.n != ov.n) {
                const char *p[1] = {key};
                json_pos_find(text, len, p, 1, &line, &col);
                set_err(err, errlen, "%s:%d:%d: \"%s\" is the old name of \"%s\", and the two differ: give one",
                        path, line, col, key, o->name);
                goto fail_next;
            }
        }
        if (!o || (strcmp(o->name, key) != 0 && !renamed_to(key))) {
            char kpath[300];
            snprintf(kpath, sizeof kpath, "~%s", key);
            const char *p[1] = {kpath};
            json_pos_find(text, len, p, 1, &line, &col);
            const char *hint = config_suggest(key);
            if (hint)
                set_err(err, errlen, "%s:%d:%d: unknown key \"%s\" (did you mean \"%s\"?)", path, line, col,
                        printable(key, kbuf, sizeof kbuf), hint);
            else
                set_err(err, errlen, "%s:%d:%d: unknown key \"%s\"", path, line, col,
                        printable(key, kbuf, sizeof kbuf));
            goto fail_next;
        }
        struct value v;
        char why[256];
        int r = parse_json(o, val, &v, why, sizeof why);
        if (r != 0) {
            const char *p[1] = {key};
            json_pos_find(text, len, p, 1, &line, &col);
            if (r == -1)
                set_err(err, errlen, "%s:%d:%d: \"%s\": expected %s, not %s", path, line, col, o->name,
                        type_expectation(o->type), json_type_name(val));
            else
                set_err(err, errlen, "%s:%d:%d: %s", path, line, col, why);
            goto fail_next;
        }
        field_store(&next, o, &v);
    }
    free_strings(cfg);
    *cfg = next;
    rc = 0;
    goto out;
fail_next:
    free_strings(&next);
out:
    json_decref(root);
    return rc;
}

int config_set(struct config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    const struct option *o = option_find(name);
    if (!o) {
        set_err(err, errlen, "unknown option \"%.64s\"", name);
        return -1;
    }
    struct value v;
    if (parse_text(o, value, &v, err, errlen) != 0)
        return -1;
    field_store(cfg, o, &v);
    return 0;
}

/* "HOST:PORT" as the listeners read it (config/addr.h). */
static int check_hostport(const char *name, const char *s, char *err, size_t errlen)
{
    struct addr a;
    char why[200];
    if (addr_parse_listen(s, &a, why, sizeof why) != 0) {
        set_err(err, errlen, "%s: %s", name, why);
        return -1;
    }
    return 0;
}

/* A comma-separated list of at most 16 addresses, each parsing as a
 * listener's HOST:PORT does. */
static int check_address_list(const char *name, const char *list, char *err, size_t errlen)
{
    const char *p = list;
    int n = 0;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char one[ADDR_HOST_MAX + 16];
        if (len == 0 || len >= sizeof one) {
            set_err(err, errlen, "%s: an empty or overlong address in \"%.200s\"", name, list);
            return -1;
        }
        memcpy(one, p, len);
        one[len] = '\0';
        if (check_hostport(name, one, err, errlen) != 0)
            return -1;
        n++;
        p += len + (comma ? 1 : 0);
    }
    if (n > 16) {
        set_err(err, errlen, "%s: at most 16 addresses", name);
        return -1;
    }
    return 0;
}

/* Whether prefix holds a non-empty {hash tag}: Redis Cluster then keeps
 * every key that starts with it in one slot. */
static bool has_hash_tag(const char *prefix)
{
    const char *open = strchr(prefix, '{');
    const char *close = open ? strchr(open + 1, '}') : NULL;
    return close != NULL && close > open + 1;
}

/* The high-availability keys: every Sentinel and cluster seed address
 * must parse, a name is needed to ask the Sentinels about, and in a
 * cluster every key must fall in one slot of database 0. */
static int check_ha(const struct config *cfg, char *err, size_t errlen)
{
    if (cfg->redis_sentinels[0]) {
        if (!cfg->redis_master_name[0]) {
            set_err(err, errlen, "redis_master_name: must not be empty when redis_sentinels is set");
            return -1;
        }
        if (check_address_list("redis_sentinels", cfg->redis_sentinels, err, errlen) != 0)
            return -1;
    }
    if (cfg->redis_cluster[0]) {
        if (cfg->redis_sentinels[0]) {
            set_err(err, errlen, "redis_cluster: set either redis_cluster or redis_sentinels, not both");
            return -1;
        }
        if (check_address_list("redis_cluster", cfg->redis_cluster, err, errlen) != 0)
            return -1;
        if (cfg->redis_db != 0) {
            set_err(err, errlen, "redis_db: must be 0 with redis_cluster (a cluster has only database 0)");
            return -1;
        }
        /* With shards each shard's keys get a hash tag of their own. */
        if (cfg->shards < 2 && !has_hash_tag(cfg->prefix)) {
            set_err(err, errlen, "prefix: with redis_cluster it needs a hash tag so that every key is in one slot, "
                    "e.g. \"{%.100s}\" in place of \"%.100s\"", cfg->prefix, cfg->prefix);
            return -1;
        }
    }
    if (cfg->redis_min_replicas > 0 && cfg->redis_replica_timeout_ms >= cfg->redis_timeout_ms) {
        set_err(err, errlen, "redis_replica_timeout: must be shorter than redis_timeout (a WAIT would time the link out)");
        return -1;
    }
    if (cfg->advertise[0] && check_hostport("advertise", cfg->advertise, err, errlen) != 0)
        return -1;
    /* The lease is renewed every ttl/5 and checked every ttl/10: below
     * 100 ms those turns would be shorter than a loaded machine's jitter. */
    if (cfg->lease_ttl_ms > 0 && cfg->lease_ttl_ms < 100) {
        set_err(err, errlen, "lease_ttl: 0 (no lease) or at least 100ms");
        return -1;
    }
    /* Shards are leased one by one; braces in the prefix would make every
     * shard's hash tag the prefix's. */
    if (cfg->shards >= 2 && cfg->lease_ttl_ms <= 0) {
        set_err(err, errlen, "shards: needs lease_ttl (each shard is owned under a lease)");
        return -1;
    }
    if (cfg->shards >= 2 && (strchr(cfg->prefix, '{') || strchr(cfg->prefix, '}'))) {
        set_err(err, errlen, "prefix: no braces with shards (each shard's keys get a hash tag of their own)");
        return -1;
    }
    return 0;
}

int config_validate(const struct config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option *o = &options[i];
        if (o->type == OPT_STRING || o->type == OPT_LEVEL) {
            const char *const *sp = cfield(cfg, o);
            if (!*sp) {
                set_err(err, errlen, "%s: not set", o->name);
                return -1;
            }
            continue;
        }
        if (check_bounds(o, field_get_int(cfg, o), err, errlen) != 0)
            return -1;
    }
    if (cfg->listen[0] && check_hostport("listen", cfg->listen, err, errlen) != 0)
        return -1;
    if (cfg->metrics_listen[0] && check_hostport("metrics_listen", cfg->metrics_listen, err, errlen) != 0)
        return -1;
    if (!cfg->listen[0] && !cfg->unix_path[0]) {
        set_err(err, errlen, "listen and unix_path are both empty: the daemon would accept no connections");
        return -1;
    }
    /* sockaddr_un.sun_path is 108 bytes on Linux, including the NUL. */
    if (strlen(cfg->unix_path) > 107) {
        set_err(err, errlen, "unix_path: longer than 107 bytes, the limit of a Unix socket address");
        return -1;
    }
    if (!cfg->redis[0]) {
        set_err(err, errlen, "redis: must not be empty");
        return -1;
    }
    if (!cfg->prefix[0]) {
        set_err(err, errlen, "prefix: must not be empty (the keys would mix with everything else in the database)");
        return -1;
    }
    for (const char *c = cfg->prefix; *c; c++) {
        if (*c <= ' ' || *c >= 0x7f) {
            set_err(err, errlen, "prefix: only printable ASCII without spaces");
            return -1;
        }
    }
    if (!cfg->policy[0]) {
        set_err(err, errlen, "policy: no policy file given");
        return -1;
    }
    const char *canon;
    if (parse_level(cfg->log_level, &canon) != 0) {
        set_err(err, errlen, "log_level: \"%.32s\" is not one of debug, info, warn, error", cfg->log_level);
        return -1;
    }
    if (check_ha(cfg, err, errlen) != 0)
        return -1;
    return 0;
}

/* "redis://user:secret@host" -> "redis://user:***@host": a password in the
 * address is as secret as redis_password. Returns a new reference. */
static json_t *masked_redis_address(const char *addr)
{
    const char *scheme = strstr(addr, "://");
    const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    if (!at)
        return json_string(addr);
    const char *userinfo = scheme + 3;
    const char *colon = memchr(userinfo, ':', (size_t)(at - userinfo));
    const char *secret = colon ? colon + 1 : userinfo; /* "redis://secret@host" is a password too */
    size_t head = (size_t)(secret - addr);
    size_t tail = strlen(at);
    char *buf = malloc(head + 3 + tail + 1);
    if (!buf)
        return json_string("***");
    memcpy(buf, addr, head);
    memcpy(buf + head, "***", 3);
    memcpy(buf + head + 3, at, tail + 1);
    json_t *j = json_string(buf);
    free(buf);
    return j;
}

static json_t *dump_value(const struct config *cfg, const struct option *o)
{
    if (o->type == OPT_STRING || o->type == OPT_LEVEL) {
        const char *s = *(const char *const *)cfield(cfg, o);
        if (!s)
            return json_null();
        if (o->secret && s[0])
            return json_string("***");
        if (strcmp(o->name, "redis") == 0)
            return masked_redis_address(s);
        return json_string(s);
    }
    long long n = field_get_int(cfg, o);
    char buf[64];
    switch (o->type) {
    case OPT_BOOL:
        return json_boolean(n);
    case OPT_MODE:
        snprintf(buf, sizeof buf, "0%03llo", n);
        return json_string(buf);
    case OPT_DURATION:
        duration_format(n, buf, sizeof buf);
        return json_string(buf);
    default:
        return json_integer(n);
    }
}

void config_dump(const struct config *cfg, FILE *out)
{
    json_t *obj = json_object();
    for (size_t i = 0; i < NOPTIONS; i++)
        json_object_set_new(obj, options[i].name, dump_value(cfg, &options[i]));
    json_dumpf(obj, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', out);
    json_decref(obj);
}

static bool option_differs(const struct config *a, const struct config *b, const struct option *o)
{
    if (o->type == OPT_STRING || o->type == OPT_LEVEL) {
        const char *sa = *(const char *const *)cfield(a, o);
        const char *sb = *(const char *const *)cfield(b, o);
        return strcmp(sa ? sa : "", sb ? sb : "") != 0;
    }
    return field_get_int(a, o) != field_get_int(b, o);
}

int config_reload(struct config *cur, const struct config *next,
                  void (*changed_cb)(const char *name, bool applied, void *arg), void *arg)
{
    int applied = 0;
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option *o = &options[i];
        if (!option_differs(cur, next, o))
            continue;
        if (o->reloadable) {
            struct value v = {0, NULL};
            if (o->type == OPT_STRING || o->type == OPT_LEVEL) {
                const char *s = *(const char *const *)cfield(next, o);
                v.s = s ? s : "";
            } else
                v.n = field_get_int(next, o);
            field_store(cur, o, &v);
            applied++;
        }
        if (changed_cb)
            changed_cb(o->name, o->reloadable, arg);
    }
    return applied;
}

bool config_option_reloadable(const char *name)
{
    const struct option *o = option_find(name);
    return o && o->reloadable;
}

int config_resolve_paths(struct config *cfg, const char *config_path)
{
    const char *slash = strrchr(config_path, '/');
    if (!slash || !cfg->policy || !cfg->policy[0] || cfg->policy[0] == '/')
        return 0;
    size_t dirlen = (size_t)(slash - config_path) + 1; /* with the slash */
    size_t plen = strlen(cfg->policy);
    char *joined = malloc(dirlen + plen + 1);
    if (!joined) {
        fprintf(stderr, "rebound: out of memory\n");
        abort();
    }
    memcpy(joined, config_path, dirlen);
    memcpy(joined + dirlen, cfg->policy, plen + 1);
    free(cfg->policy);
    cfg->policy = joined;
    return 0;
}

const char *config_mask_address(const char *addr, char *buf, size_t len)
{
    json_t *j = masked_redis_address(addr);
    snprintf(buf, len, "%s", json_is_string(j) ? json_string_value(j) : "***");
    json_decref(j);
    return buf;
}

/* Levenshtein distance, capped: anything above cap is reported as cap + 1. */
static size_t edit_distance(const char *a, const char *b, size_t cap)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return cap + 1;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb] > cap ? cap + 1 : row[lb];
}

const char *config_suggest(const char *name)
{
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < NOPTIONS; i++) {
        size_t d = edit_distance(name, options[i].name, 2);
        if (d < best_d) {
            best_d = d;
            best = options[i].name;
        }
    }
    return best;
}

void config_free(struct config *cfg)
{
    if (cfg)
        free_strings(cfg);
}
