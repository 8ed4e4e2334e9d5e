/*
 * The policy file loader: JSON text in, an immutable struct policy out
 * (the format is docs/policy.md).
 *
 * jansson parses; this file validates and converts. jansson keeps no
 * source positions, so every semantic error walks the source again with
 * json_pos_find along the path of the value at fault. The loader keeps that
 * path as a small stack while it descends, which also gives the message
 * its "classes.greylist.delays[1]" part.
 *
 * Strictness is the point: a policy decides when mail is retried and when
 * an address is suppressed, so a typo must be refused at start or reload
 * (where the old policy stays in force), never half-applied. Unknown keys
 * are errors, types are never coerced, and the first error stops the load.
 */
#include "config/policy_load.h"

#include <errno.h>
#include <jansson.h>
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/duration.h"
#include "config/json_pos.h"
#include "config/regex_size.h"

#define PATH_DEPTH 8
#define RULE_NAME_MAX 64
#define POLICY_FILE_MAX (16 * 1024 * 1024)
#define DURATION_HINT "(use e.g. 250ms, 5m, 4h, 3d)"

struct loader {
    const char *text;
    size_t len;
    const char *name;
    char *err;
    size_t errlen;
    const char *path[PATH_DEPTH];
    char index[PATH_DEPTH][24];
    int depth;
    uint64_t regex_positions; /* of every pattern so far: see REGEX_POLICY_MAX */
};

/* Budgets for the compiled size of the policy's regular expressions
 * (config/regex_size.h), in positions. The C library's compiler needs a
 * few hundred bytes per position while it builds (more under a memory
 * checker), so these keep a policy's load within a few megabytes and
 * milliseconds; a pattern that matches replies needs a few dozen. */
#define REGEX_PATTERN_MAX 4096
#define REGEX_POLICY_MAX 65536

struct code_range {
    int lo, hi;
};

static void *alloc_or_die(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (p == NULL) {
        fputs("policy_load: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *strdup_or_die(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = alloc_or_die(n);
    memcpy(d, s, n);
    return d;
}

static void path_push(struct loader *L, const char *key)
{
    if (L->depth >= PATH_DEPTH)
        abort(); /* the format nests less deeply than this */
    L->path[L->depth++] = key;
}

static void path_push_index(struct loader *L, size_t i)
{
    if (L->depth >= PATH_DEPTH)
        abort();
    snprintf(L->index[L->depth], sizeof(L->index[0]), "[%zu]", i);
    L->path[L->depth] = L->index[L->depth];
    L->depth++;
}

static void path_pop(struct loader *L) { L->depth--; }

static void path_format(const struct loader *L, char *buf, size_t buflen)
{
    size_t off = 0;

    buf[0] = '\0';
    for (int i = 0; i < L->depth && off < buflen; i++) {
        const char *sep = (i == 0 || L->path[i][0] == '[') ? "" : ".";
        int w = snprintf(buf + off, buflen - off, "%s%s", sep, L->path[i]);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

/* Writes "name:line:col: path: message" into the caller's buffer. With
 * at_key, the position is that of the last path element's key rather than
 * its value (for unknown and misplaced keys). */
__attribute__((format(printf, 3, 4))) static void fail(struct loader *L, bool at_key, const char *fmt, ...)
{
    const char *pos_path[PATH_DEPTH];
    char *tilde = NULL;
    char msg[512], where[256];
    int line, col;
    va_list ap;

    memcpy(pos_path, L->path, sizeof(pos_path[0]) * (size_t)L->depth);
    if (at_key && L->depth > 0 && L->path[L->depth - 1][0] != '[') {
        const char *key = L->path[L->depth - 1];
        tilde = alloc_or_die(strlen(key) + 2);
        tilde[0] = '~';
        strcpy(tilde + 1, key);
        pos_path[L->depth - 1] = tilde;
    }
    json_pos_find(L->text, L->len, pos_path, L->depth, &line, &col);
    free(tilde);

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    path_format(L, where, sizeof(where));
    if (L->errlen == 0)
        return;
    if (where[0] != '\0')
        snprintf(L->err, L->errlen, "%s:%d:%d: %s: %s", L->name, line, col, where, msg);
    else
        snprintf(L->err, L->errlen, "%s:%d:%d: %s", L->name, line, col, msg);
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "something else";
}

/* Refuses any key of obj not in allowed (NULL-terminated): typos must not
 * be silently ignored. "comment" is always allowed, as JSON has no
 * comments. */
static int check_keys(struct loader *L, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v) {
        bool ok = strcmp(key, "comment") == 0;
        for (int i = 0; !ok && allowed[i] != NULL; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (ok)
            continue;
        char list[256];
        size_t off = 0;
        list[0] = '\0';
        for (int i = 0; allowed[i] != NULL && off < sizeof(list); i++) {
            int w = snprintf(list + off, sizeof(list) - off, "%s%s", i ? ", " : "", allowed[i]);
            if (w < 0)
                break;
            off += (size_t)w;
        }
        path_push(L, key);
        fail(L, true, "unknown key \"%s\" (expected %s)", key, list);
        path_pop(L);
        return -1;
    }
    return 0;
}

static int want_type(struct loader *L, const json_t *v, json_type t, const char *what)
{
    if (json_typeof(v) == t || (t == JSON_TRUE && json_is_boolean(v)))
        return 0;
    fail(L, false, "expected %s, got %s", what, type_name(v));
    return -1;
}

/* A comment is a string or an array of strings, and nothing else. */
static int check_comment(struct loader *L, json_t *obj)
{
    json_t *c = json_object_get(obj, "comment");
    size_t i;
    json_t *e;
    int rc = 0;

    if (c == NULL)
        return 0;
    path_push(L, "comment");
    if (json_is_array(c)) {
        json_array_foreach(c, i, e) {
            if (!json_is_string(e)) {
                path_push_index(L, i);
                rc = want_type(L, e, JSON_STRING, "a string");
                path_pop(L);
                break;
            }
        }
    } else {
        rc = want_type(L, c, JSON_STRING, "a string or an array of strings");
    }
    path_pop(L);
    return rc;
}

/* The value at the current path as a duration. */
static int duration_value(struct loader *L, const json_t *v, bool signed_ok, int64_t *out)
{
    int64_t ms;

    if (!json_is_string(v)) {
        fail(L, false, "expected a duration such as \"5m\", got %s", type_name(v));
        return -1;
    }
    const char *s = json_string_value(v);
    if ((signed_ok ? duration_parse_signed(s, &ms) : duration_parse(s, &ms)) < 0) {
        fail(L, false, "bad duration \"%s\" %s", s, DURATION_HINT);
        return -1;
    }
    if (ms > POLICY_LOAD_MAX_DURATION_MS || ms < -POLICY_LOAD_MAX_DURATION_MS) {
        fail(L, false, "duration \"%s\" is too long (at most 3650d)", s);
        return -1;
    }
    *out = ms;
    return 0;
}

/* An optional duration member; min_ms is the least value allowed. */
static int get_duration(struct loader *L, json_t *obj, const char *key, int64_t min_ms, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    int64_t ms;
    int rc = 0;

    if (v == NULL)
        return 0;
    path_push(L, key);
    if (duration_value(L, v, false, &ms) < 0) {
        rc = -1;
    } else if (ms < min_ms) {
        char b[32];
        duration_format(min_ms, b, sizeof(b));
        fail(L, false, "must be at least %s", b);
        rc = -1;
    } else {
        *out = ms;
    }
    path_pop(L);
    return rc;
}

static int get_int(struct loader *L, json_t *obj, const char *key, int lo, int hi, int *out)
{
    json_t *v = json_object_get(obj, key);
    int rc = 0;

    if (v == NULL)
        return 0;
    path_push(L, key);
    if (want_type(L, v, JSON_INTEGER, "an integer") < 0) {
        rc = -1;
    } else if (json_integer_value(v) < lo || json_integer_value(v) > hi) {
        fail(L, false, "%lld is out of range (%d..%d)", (long long)json_integer_value(v), lo, hi);
        rc = -1;
    } else {
        *out = (int)json_integer_value(v);
    }
    path_pop(L);
    return rc;
}

static int get_bool(struct loader *L, json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    int rc = 0;

    if (v == NULL)
        return 0;
    path_push(L, key);
    if (want_type(L, v, JSON_TRUE, "true or false") < 0)
        rc = -1;
    else
        *out = json_is_true(v);
    path_pop(L);
    return rc;
}

static bool class_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > POLICY_NAME_MAX - 1 || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

static int action_value(struct loader *L, const json_t *v, enum action *out)
{
    static const enum action all[] = {ACTION_RETRY, ACTION_GIVE_UP, ACTION_SUPPRESS};

    if (want_type(L, v, JSON_STRING, "retry, give_up or suppress") < 0)
        return -1;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(json_string_value(v), action_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    fail(L, false, "bad action \"%s\" (use retry, give_up or suppress)", json_string_value(v));
    return -1;
}

static const char *const per_code_keys[] = {"4xx", "5xx", NULL};

/* "action": one string for both, or {"4xx": .., "5xx": ..} with both. */
static int parse_action(struct loader *L, json_t *cls, struct policy_class *c)
{
    json_t *v = json_object_get(cls, "action");
    int rc = -1;

    if (v == NULL) {
        fail(L, false, "\"action\" is required (retry, give_up or suppress)");
        return -1;
    }
    path_push(L, "action");
    if (json_is_object(v)) {
        json_t *a4 = json_object_get(v, "4xx"), *a5 = json_object_get(v, "5xx");
        if (check_keys(L, v, per_code_keys) < 0)
            goto out;
        if (a4 == NULL || a5 == NULL) {
            fail(L, false, "give both \"4xx\" and \"5xx\" (or one string for both)");
            goto out;
        }
        path_push(L, "4xx");
        rc = action_value(L, a4, &c->action_4xx);
        path_pop(L);
        if (rc < 0)
            goto out;
        path_push(L, "5xx");
        rc = action_value(L, a5, &c->action_5xx);
        path_pop(L);
    } else if (json_is_string(v)) {
        rc = action_value(L, v, &c->action_4xx);
        c->action_5xx = c->action_4xx;
    } else {
        fail(L, false, "expected retry, give_up or suppress, or {\"4xx\": .., \"5xx\": ..}, got %s", type_name(v));
    }
out:
    path_pop(L);
    return rc;
}

/* "alert": one boolean for both, or {"4xx": bool, "5xx": bool} (a missing
 * one is false). */
static int parse_alert(struct loader *L, json_t *cls, struct policy_class *c)
{
    json_t *v = json_object_get(cls, "alert");
    int rc = 0;

    if (v == NULL)
        return 0;
    path_push(L, "alert");
    if (json_is_object(v)) {
        rc = check_keys(L, v, per_code_keys);
        if (rc == 0)
            rc = get_bool(L, v, "4xx", &c->alert_4xx);
        if (rc == 0)
            rc = get_bool(L, v, "5xx", &c->alert_5xx);
    } else if (json_is_boolean(v)) {
        c->alert_4xx = c->alert_5xx = json_is_true(v);
    } else {
        fail(L, false, "expected true, false or {\"4xx\": .., \"5xx\": ..}, got %s", type_name(v));
        rc = -1;
    }
    path_pop(L);
    return rc;
}

static int parse_step(struct loader *L, const json_t *v, struct policy_step *st)
{
    if (json_is_string(v)) {
        if (duration_value(L, v, false, &st->lo_ms) < 0)
            return -1;
        st->hi_ms = st->lo_ms;
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) != 2) {
        fail(L, false, "expected a duration (\"30m\") or a window [\"5m\", \"30m\"], got %s",
             json_is_array(v) ? "an array that is not of two" : type_name(v));
        return -1;
    }
    for (size_t i = 0; i < 2; i++) {
        path_push_index(L, i);
        int rc = duration_value(L, json_array_get(v, i), false, i == 0 ? &st->lo_ms : &st->hi_ms);
        path_pop(L);
        if (rc < 0)
            return -1;
    }
    if (st->hi_ms < st->lo_ms) {
        fail(L, false, "the window ends before it starts (write [low, high])");
        return -1;
    }
    return 0;
}

static int parse_delays(struct loader *L, json_t *cls, struct policy_class *c)
{
    json_t *v = json_object_get(cls, "delays"), *e;
    size_t i;
    int rc = 0;

    path_push(L, "delays");
    if (want_type(L, v, JSON_ARRAY, "an array of delays") < 0) {
        rc = -1;
    } else if (json_array_size(v) == 0 || json_array_size(v) > POLICY_MAX_STEPS) {
        fail(L, false, "give 1 to %d delays", POLICY_MAX_STEPS);
        rc = -1;
    } else {
        json_array_foreach(v, i, e) {
            path_push_index(L, i);
            rc = parse_step(L, e, &c->steps[i]);
            path_pop(L);
            if (rc < 0)
                break;
        }
        c->nsteps = (int)json_array_size(v);
    }
    path_pop(L);
    return rc;
}

/* "jitter": "20%" or a window of signed durations ["-30s", "2m"]. */
static int parse_jitter(struct loader *L, json_t *cls, struct policy_class *c)
{
    json_t *v = json_object_get(cls, "jitter");
    int rc = -1;

    if (v == NULL)
        return 0;
    path_push(L, "jitter");
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        long pct = strtol(s, &end, 10);
        if (s[0] < '0' || s[0] > '9' || end[0] != '%' || end[1] != '\0' || errno != 0 || pct > 100)
            fail(L, false, "bad jitter \"%s\" (use a whole percentage 0%%..100%%, or a window [\"-30s\", \"30s\"])", s);
        else {
            c->jitter_pct = (int)pct;
            rc = 0;
        }
    } else if (json_is_array(v) && json_array_size(v) == 2) {
        rc = 0;
        for (size_t i = 0; i < 2 && rc == 0; i++) {
            path_push_index(L, i);
            rc = duration_value(L, json_array_get(v, i), true, i == 0 ? &c->jitter_lo_ms : &c->jitter_hi_ms);
            path_pop(L);
        }
        if (rc == 0 && c->jitter_hi_ms < 0) {
            path_push_index(L, 1);
            fail(L, false, "the high end of a jitter window cannot be negative");
            path_pop(L);
            rc = -1;
        } else if (rc == 0 && c->jitter_hi_ms < c->jitter_lo_ms) {
            fail(L, false, "the window ends before it starts (write [low, high])");
            rc = -1;
        }
    } else {
        fail(L, false, "expected a percentage (\"20%%\") or a window [\"0s\", \"60s\"], got %s",
             json_is_array(v) ? "an array that is not of two" : type_name(v));
    }
    path_pop(L);
    return rc;
}

/* A whole percentage "N%" (0..100) at the current path; what names the
 * setting in the message. Returns 0, or -1 after fail(). */
static int percent_value(struct loader *L, const json_t *v, const char *what, int *out)
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    char *end;
    long pct;

    if (s == NULL) {
        fail(L, false, "expected a percentage such as \"10%%\", got %s", type_name(v));
        return -1;
    }
    errno = 0;
    pct = strtol(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || end[0] != '%' || end[1] != '\0' || errno != 0 || pct > 100) {
        fail(L, false, "bad %s \"%s\" (use a whole percentage 0%%..100%%)", what, s);
        return -1;
    }
    *out = (int)pct;
    return 0;
}

static const char *const learn_keys[] = {"enabled", "min_evidence", "margin", "jitter", "forget_after", NULL};

/* "learn": {"enabled", "min_evidence", "margin", "jitter", "forget_after"}
 * (docs/policy.md). An object present means enabled unless it says
 * otherwise; the defaults are what the shipped greylist class uses. */
static int parse_learn(struct loader *L, json_t *cls, struct policy_class *c)
{
    json_t *v = json_object_get(cls, "learn"), *m;
    struct policy_learn *lc = &c->learn;
    int rc = -1;

    if (v == NULL)
        return 0;
    path_push(L, "learn");
    if (want_type(L, v, JSON_OBJECT, "an object") < 0 || check_keys(L, v, learn_keys) < 0 || check_comment(L, v) < 0)
        goto out;
    lc->enabled = true;
    lc->min_evidence = 3;
    lc->margin_pct = 10;
    lc->jitter_pct = 10;
    lc->forget_ms = 7LL * 86400 * 1000;
    if (get_bool(L, v, "enabled", &lc->enabled) < 0 ||
        get_int(L, v, "min_evidence", 1, 1000, &lc->min_evidence) < 0 ||
        get_duration(L, v, "forget_after", 0, &lc->forget_ms) < 0)
        goto out;
    if ((m = json_object_get(v, "margin")) != NULL) {
        path_push(L, "margin");
        int bad;
        if (json_is_string(m) && strchr(json_string_value(m), '%') != NULL) {
            bad = percent_value(L, m, "margin", &lc->margin_pct);
            lc->margin_ms = 0;
        } else {
            bad = duration_value(L, m, false, &lc->margin_ms);
            lc->margin_pct = 0;
        }
        path_pop(L);
        if (bad < 0)
            goto out;
    }
    if ((m = json_object_get(v, "jitter")) != NULL) {
        path_push(L, "jitter");
        int bad = percent_value(L, m, "jitter", &lc->jitter_pct);
        path_pop(L);
        if (bad < 0)
            goto out;
    }
    rc = 0;
out:
    path_pop(L);
    return rc;
}

static const char *const class_keys[] = {"action", "alert", "delays", "jitter", "max_attempts", "max_age",
                                         "counts_streak", "learn", NULL};
/* Settings that only mean something for a class that retries. */
static const char *const retry_only_keys[] = {"delays", "jitter", "max_attempts", "max_age", "learn", NULL};

static int parse_class(struct loader *L, const char *name, json_t *v, struct policy_class *c)
{
    if (!class_name_ok(name)) {
        fail(L, true, "bad class name \"%s\" (a-z, 0-9 and _, starting with a letter, at most %d characters)", name,
             POLICY_NAME_MAX - 1);
        return -1;
    }
    if (want_type(L, v, JSON_OBJECT, "an object") < 0 || check_keys(L, v, class_keys) < 0 ||
        check_comment(L, v) < 0)
        return -1;
    snprintf(c->name, sizeof(c->name), "%s", name);
    if (parse_action(L, v, c) < 0 || parse_alert(L, v, c) < 0 || get_bool(L, v, "counts_streak", &c->counts_streak) < 0)
        return -1;

    if (c->action_4xx != ACTION_RETRY && c->action_5xx != ACTION_RETRY) {
        for (int i = 0; retry_only_keys[i] != NULL; i++) {
            if (json_object_get(v, retry_only_keys[i]) == NULL)
                continue;
            path_push(L, retry_only_keys[i]);
            fail(L, true, "only allowed in a class whose action is retry");
            path_pop(L);
            return -1;
        }
        return 0;
    }
    if (json_object_get(v, "delays") == NULL) {
        fail(L, false, "\"delays\" is required in a class whose action is retry");
        return -1;
    }
    if (parse_delays(L, v, c) < 0 || parse_jitter(L, v, c) < 0 ||
        get_int(L, v, "max_attempts", 1, POLICY_LOAD_MAX_ATTEMPTS, &c->max_attempts) < 0 ||
        get_duration(L, v, "max_age", 1, &c->max_age_ms) < 0 || parse_learn(L, v, c) < 0)
        return -1;
    return 0;
}

static int parse_classes(struct loader *L, json_t *root, struct policy *p)
{
    json_t *classes = json_object_get(root, "classes"), *v;
    const char *name;
    int rc = 0;

    if (classes == NULL) {
        fail(L, false, "\"classes\" is required");
        return -1;
    }
    path_push(L, "classes");
    if (want_type(L, classes, JSON_OBJECT, "an object of classes") < 0) {
        rc = -1;
    } else if (json_object_size(classes) > POLICY_MAX_CLASSES) {
        fail(L, false, "too many classes (at most %d)", POLICY_MAX_CLASSES);
        rc = -1;
    } else {
        json_object_foreach(classes, name, v) {
            path_push(L, name);
            rc = parse_class(L, name, v, &p->classes[p->nclasses]);
            path_pop(L);
            if (rc < 0)
                break;
            p->nclasses++;
        }
    }
    path_pop(L);
    return rc;
}

static const char *const limits_keys[] = {"max_attempts", "max_age", "awaiting", NULL};
static const char *const streak_keys[] = {"preset", "campaigns", "chronic_span", "chronic_attempts", NULL};

/* Streak presets, so that "suppress like Klaviyo" is one line. The big
 * platforms count soft bounces in a row; here one campaign ending in
 * give-up is one soft bounce for the address. */
static const struct {
    const char *name;
    int campaigns;
} streak_presets[] = {
    {"default", 3},
    {"klaviyo", 7},
    {"mailchimp", 15},
};

static int parse_limits(struct loader *L, json_t *root, struct policy *p)
{
    json_t *v = json_object_get(root, "limits");
    int rc = -1;

    if (v == NULL)
        return 0;
    path_push(L, "limits");
    if (want_type(L, v, JSON_OBJECT, "an object") == 0 && check_keys(L, v, limits_keys) == 0 &&
        get_int(L, v, "max_attempts", 1, POLICY_LOAD_MAX_ATTEMPTS, &p->max_attempts) == 0 &&
        get_duration(L, v, "max_age", 1, &p->max_age_ms) == 0 && get_duration(L, v, "awaiting", 1, &p->awaiting_ms) == 0)
        rc = 0;
    path_pop(L);
    return rc;
}

/* "preset": sets the defaults that the other streak keys may override. */
static int parse_streak_preset(struct loader *L, json_t *streak, struct policy *p)
{
    json_t *v = json_object_get(streak, "preset");
    int rc = -1;

    if (v == NULL)
        return 0;
    path_push(L, "preset");
    if (want_type(L, v, JSON_STRING, "a preset name (default, klaviyo, mailchimp)") == 0) {
        for (size_t i = 0; i < sizeof(streak_presets) / sizeof(streak_presets[0]); i++) {
            if (strcmp(json_string_value(v), streak_presets[i].name) == 0) {
                p->streak_campaigns = streak_presets[i].campaigns;
                rc = 0;
            }
        }
        if (rc < 0)
            fail(L, false, "unknown preset \"%s\" (use default, klaviyo or mailchimp)", json_string_value(v));
    }
    path_pop(L);
    return rc;
}

static int parse_streak(struct loader *L, json_t *root, struct policy *p)
{
    json_t *v = json_object_get(root, "streak");
    int rc = -1;

    if (v == NULL)
        return 0;
    path_push(L, "streak");
    if (want_type(L, v, JSON_OBJECT, "an object") == 0 && check_keys(L, v, streak_keys) == 0 &&
        parse_streak_preset(L, v, p) == 0 && get_int(L, v, "campaigns", 1, 1000, &p->streak_campaigns) == 0 &&
        get_duration(L, v, "chronic_span", 1, &p->chronic_span_ms) == 0 &&
        get_int(L, v, "chronic_attempts", 1, 1000, &p->chronic_attempts) == 0)
        rc = 0;
    path_pop(L);
    return rc;
}

/* The value at the current path names a class; returns its index or -1. */
static int class_ref(struct loader *L, const struct policy *p, const json_t *v)
{
    if (want_type(L, v, JSON_STRING, "a class name") < 0)
        return -1;
    int idx = policy_class_find(p, json_string_value(v));
    if (idx < 0)
        fail(L, false, "unknown class \"%s\" (not defined under \"classes\")", json_string_value(v));
    return idx;
}

static int parse_fallback(struct loader *L, json_t *root, struct policy *p)
{
    json_t *fb = json_object_get(root, "fallback");
    static const char *const defaults[] = {"temp_other", "hard_other"};
    int *slots[] = {&p->temp_other, &p->hard_other};

    if (fb != NULL) {
        path_push(L, "fallback");
        int rc = want_type(L, fb, JSON_OBJECT, "an object") < 0 || check_keys(L, fb, per_code_keys) < 0 ? -1 : 0;
        for (int i = 0; i < 2 && rc == 0; i++) {
            json_t *v = json_object_get(fb, per_code_keys[i]);
            if (v == NULL)
                continue;
            path_push(L, per_code_keys[i]);
            *slots[i] = class_ref(L, p, v);
            if (*slots[i] < 0)
                rc = -1;
            path_pop(L);
        }
        path_pop(L);
        if (rc < 0)
            return -1;
    }
    for (int i = 0; i < 2; i++) {
        if (*slots[i] >= 0)
            continue;
        *slots[i] = policy_class_find(p, defaults[i]);
        if (*slots[i] >= 0)
            continue;
        path_push(L, "classes");
        fail(L, false,
             "no class \"%s\" for %s replies that no rule matches (define it, or name another in "
             "\"fallback\": {\"%s\": ..})",
             defaults[i], per_code_keys[i], per_code_keys[i]);
        path_pop(L);
        return -1;
    }
    return 0;
}

/* One code: 421 (exact), "4xx" (400-499) or "45x" (450-459). */
static int code_value(struct loader *L, const json_t *v, struct code_range *r)
{
    if (json_is_integer(v)) {
        json_int_t c = json_integer_value(v);
        if (c < 200 || c > 599) {
            fail(L, false, "code %lld is out of range (200..599)", (long long)c);
            return -1;
        }
        r->lo = r->hi = (int)c;
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strlen(s) == 3 && s[0] >= '2' && s[0] <= '5' && s[2] == 'x') {
            if (s[1] == 'x') {
                r->lo = (s[0] - '0') * 100;
                r->hi = r->lo + 99;
                return 0;
            }
            if (s[1] >= '0' && s[1] <= '9') {
                r->lo = (s[0] - '0') * 100 + (s[1] - '0') * 10;
                r->hi = r->lo + 9;
                return 0;
            }
        }
        fail(L, false, "bad code \"%s\" (use a number like 421, or \"4xx\", \"45x\")", s);
        return -1;
    }
    fail(L, false, "expected a code (421, \"4xx\", \"45x\") or an array of them, got %s", type_name(v));
    return -1;
}

static int range_cmp(const void *a, const void *b)
{
    const struct code_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* "code": one code or a non-empty array of them, turned into sorted
 * disjoint ranges. A missing code is one range {0, 0} (any code). Returns
 * the number of ranges in *out (malloc'd), or -1. */
static int parse_codes(struct loader *L, json_t *rule, struct code_range **out)
{
    json_t *v = json_object_get(rule, "code"), *e;
    struct code_range *r;
    size_t i, n;
    int rc = 0;

    if (v == NULL) {
        *out = alloc_or_die(sizeof(**out));
        return 1;
    }
    path_push(L, "code");
    n = json_is_array(v) ? json_array_size(v) : 1;
    r = alloc_or_die(n * sizeof(*r));
    if (json_is_array(v)) {
        if (n == 0) {
            fail(L, false, "an empty array of codes matches nothing");
            rc = -1;
        }
        json_array_foreach(v, i, e) {
            path_push_index(L, i);
            rc = json_is_array(e) ? (fail(L, false, "expected a code, got an array"), -1) : code_value(L, e, &r[i]);
            path_pop(L);
            if (rc < 0)
                break;
        }
    } else {
        rc = code_value(L, v, &r[0]);
    }
    path_pop(L);
    if (rc < 0) {
        free(r);
        return -1;
    }
    qsort(r, n, sizeof(*r), range_cmp);
    size_t m = 0;
    for (i = 0; i < n; i++) {
        if (m > 0 && r[i].lo <= r[m - 1].hi + 1) {
            if (r[i].hi > r[m - 1].hi)
                r[m - 1].hi = r[i].hi;
        } else {
            r[m++] = r[i];
        }
    }
    *out = r;
    return (int)m;
}

/* Checks an enhanced code or prefix: "X.Y.Z" with X in 2, 4, 5 and Y, Z of
 * 1-3 digits; a prefix ends in '*' after any leading part of that
 * ("4.*", "4.7.*", "4.7.5*"). */
static bool enhanced_ok(const char *s, bool *prefix, size_t *fixed)
{
    size_t n = strlen(s);
    int part = 0, digits = 0;

    *prefix = n > 0 && s[n - 1] == '*';
    *fixed = *prefix ? n - 1 : n;
    if (*fixed == 0 || *fixed >= 16 - 1 || (s[0] != '2' && s[0] != '4' && s[0] != '5'))
        return false;
    for (size_t i = 0; i < *fixed; i++) {
        if (s[i] == '.') {
            if (digits == 0 || part == 2)
                return false;
            part++;
            digits = 0;
        } else if (s[i] >= '0' && s[i] <= '9') {
            if (++digits > (part == 0 ? 1 : 3))
                return false;
        } else {
            return false;
        }
    }
    /* Exact codes have all three parts; a prefix may stop anywhere. */
    return *prefix || (part == 2 && digits > 0);
}

static int parse_enhanced(struct loader *L, json_t *rule, struct policy_rule *r)
{
    json_t *v = json_object_get(rule, "enhanced");
    int rc = 0;

    if (v == NULL)
        return 0;
    path_push(L, "enhanced");
    if (want_type(L, v, JSON_STRING, "an enhanced code such as \"5.7.26\" or \"4.7.*\"") < 0) {
        rc = -1;
    } else if (!enhanced_ok(json_string_value(v), &r->enhanced_prefix, &r->enhanced_len)) {
        fail(L, false, "bad enhanced code \"%s\" (use e.g. \"5.7.26\", or a prefix \"4.7.*\", \"4.7.5*\")",
             json_string_value(v));
        rc = -1;
    } else {
        snprintf(r->enhanced, sizeof(r->enhanced), "%s", json_string_value(v));
        if (!r->enhanced_prefix)
            r->enhanced_len = strlen(r->enhanced);
    }
    path_pop(L);
    return rc;
}

static void texts_free(struct policy_text *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(t[i].pattern);
        if (t[i].regex != NULL) {
            regfree(t[i].regex);
            free(t[i].regex);
        }
    }
    free(t);
}

/* One text matcher from the string at the current path. */
static int text_value(struct loader *L, const json_t *v, struct policy_text *t)
{
    if (want_type(L, v, JSON_STRING, "a text (\"mailbox full\" or \"/regex/\")") < 0)
        return -1;
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    if (n == 0) {
        fail(L, false, "an empty text matches everything");
        return -1;
    }
    if (n >= 2 && s[0] == '/' && s[n - 1] == '/') {
        if (n == 2) {
            fail(L, false, "an empty regular expression matches everything");
            return -1;
        }
        t->pattern = alloc_or_die(n - 1);
        memcpy(t->pattern, s + 1, n - 2);
        t->is_regex = true;
        if (regex_has_backref(t->pattern)) {
            fail(L, false, "regular expression \"%s\" has a back-reference (\\1 to \\9): matching one "
                 "takes time exponential in the reply's length", s);
            return -1;
        }
        uint64_t size = regex_positions(t->pattern, REGEX_PATTERN_MAX);
        if (size > REGEX_PATTERN_MAX) {
            fail(L, false, "regular expression \"%s\" is too large once its repetitions are counted out "
                 "(more than %d positions; write x{2,5} rather than nesting repetitions)", s, REGEX_PATTERN_MAX);
            return -1;
        }
        L->regex_positions += size;
        if (L->regex_positions > REGEX_POLICY_MAX) {
            fail(L, false, "regular expression \"%s\" takes the policy's expressions past %d positions "
                 "once their repetitions are counted out", s, REGEX_POLICY_MAX);
            return -1;
        }
        regex_t *re = alloc_or_die(sizeof(*re));
        int e = regcomp(re, t->pattern, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        if (e != 0) {
            char why[128];
            regerror(e, re, why, sizeof(why));
            free(re);
            fail(L, false, "bad regular expression \"%s\": %s", s, why);
            return -1;
        }
        t->regex = re;
        return 0;
    }
    /* Lowered here once, so the classifier lowers only the reply. ASCII
     * only: UTF-8 bytes are left as they are. */
    t->pattern = strdup_or_die(s);
    for (char *c = t->pattern; *c != '\0'; c++) {
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    }
    return 0;
}

static int parse_texts(struct loader *L, json_t *rule, struct policy_text **out, size_t *nout)
{
    json_t *v = json_object_get(rule, "text"), *e;
    struct policy_text *t;
    size_t i, n;
    int rc = 0;

    *out = NULL;
    *nout = 0;
    if (v == NULL)
        return 0;
    path_push(L, "text");
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n == 0) {
            fail(L, false, "an empty array of texts matches nothing");
            path_pop(L);
            return -1;
        }
        t = alloc_or_die(n * sizeof(*t));
        json_array_foreach(v, i, e) {
            path_push_index(L, i);
            rc = text_value(L, e, &t[i]);
            path_pop(L);
            if (rc < 0)
                break;
        }
    } else {
        n = 1;
        t = alloc_or_die(sizeof(*t));
        rc = text_value(L, v, t);
    }
    path_pop(L);
    if (rc < 0) {
        texts_free(t, n); /* the ones not reached are zeroed */
        return -1;
    }
    *out = t;
    *nout = n;
    return 0;
}

static const char *const rule_keys[] = {"name", "class", "code", "enhanced", "text", "guard", "reason", NULL};

/* "reason": what a suppression decided by this rule is called. */
static int parse_reason(struct loader *L, json_t *rule, struct policy_rule *r)
{
    json_t *v = json_object_get(rule, "reason");
    int rc = 0;

    if (v == NULL)
        return 0;
    path_push(L, "reason");
    if (want_type(L, v, JSON_STRING, "a string") < 0) {
        rc = -1;
    } else if (strcmp(json_string_value(v), "hard_invalid") == 0) {
        r->reason = RULE_REASON_UNKNOWN;
    } else if (strcmp(json_string_value(v), "disabled") == 0) {
        r->reason = RULE_REASON_DISABLED;
    } else {
        fail(L, false, "unknown reason \"%s\" (use hard_invalid or disabled)", json_string_value(v));
        rc = -1;
    }
    path_pop(L);
    return rc;
}

/* Parses rules[idx] and appends it to p, once per disjoint code range: a
 * rule "code": [421, 450, 451] becomes two policy rules (421 and 450-451)
 * with the same name and conditions, one after the other, so that file
 * order is kept and the classifier needs no list of codes. */
static int parse_rule(struct loader *L, size_t idx, json_t *v, struct policy *p, size_t *cap)
{
    struct policy_rule base;
    struct code_range *ranges = NULL;
    char name[RULE_NAME_MAX + 1];
    json_t *cls;
    int nranges;

    memset(&base, 0, sizeof(base));
    if (want_type(L, v, JSON_OBJECT, "a rule object") < 0 || check_keys(L, v, rule_keys) < 0 || check_comment(L, v) < 0)
        return -1;

    json_t *jn = json_object_get(v, "name");
    if (jn != NULL) {
        path_push(L, "name");
        int bad = want_type(L, jn, JSON_STRING, "a string");
        if (bad == 0 && (json_string_length(jn) == 0 || json_string_length(jn) > RULE_NAME_MAX)) {
            fail(L, false, "a rule name has 1 to %d characters", RULE_NAME_MAX);
            bad = -1;
        }
        for (size_t i = 0; bad == 0 && i < p->nrules; i++) {
            if (strcmp(p->rules[i].name, json_string_value(jn)) == 0) {
                fail(L, false, "duplicate rule name \"%s\"", json_string_value(jn));
                bad = -1;
            }
        }
        path_pop(L);
        if (bad < 0)
            return -1;
        snprintf(name, sizeof(name), "%s", json_string_value(jn));
    } else {
        snprintf(name, sizeof(name), "rule#%zu", idx);
    }

    cls = json_object_get(v, "class");
    if (cls == NULL) {
        fail(L, false, "\"class\" is required");
        return -1;
    }
    path_push(L, "class");
    base.class_idx = class_ref(L, p, cls);
    path_pop(L);
    if (base.class_idx < 0)
        return -1;
    if (json_object_get(v, "code") == NULL && json_object_get(v, "enhanced") == NULL &&
        json_object_get(v, "text") == NULL) {
        fail(L, false, "a rule needs at least one of \"code\", \"enhanced\", \"text\" (it would match every reply)");
        return -1;
    }
    if (parse_enhanced(L, v, &base) < 0 || get_bool(L, v, "guard", &base.guard) < 0 || parse_reason(L, v, &base) < 0)
        return -1;
    /* A guard is tried against replies that already matched something;
     * without words of its own it would only restate a code. */
    if (base.guard && json_object_get(v, "text") == NULL) {
        path_push(L, "guard");
        fail(L, false, "a guard rule needs \"text\"");
        path_pop(L);
        return -1;
    }
    nranges = parse_codes(L, v, &ranges);
    if (nranges < 0)
        return -1;

    for (int k = 0; k < nranges; k++) {
        struct policy_rule r = base;
        if (parse_texts(L, v, &r.texts, &r.ntexts) < 0) {
            free(ranges);
            return -1;
        }
        r.code_lo = ranges[k].lo;
        r.code_hi = ranges[k].hi;
        r.name = strdup_or_die(name);
        if (p->nrules == *cap) {
            *cap = *cap ? 2 * *cap : 16;
            struct policy_rule *grown = realloc(p->rules, *cap * sizeof(*grown));
            if (grown == NULL) {
                fputs("policy_load: out of memory\n", stderr);
                abort();
            }
            p->rules = grown;
        }
        p->rules[p->nrules++] = r;
    }
    free(ranges);
    return 0;
}

static int parse_rules(struct loader *L, json_t *root, struct policy *p)
{
    json_t *rules = json_object_get(root, "rules"), *v;
    size_t i, cap = 0;
    int rc = 0;

    if (rules == NULL)
        return 0;
    path_push(L, "rules");
    if (want_type(L, rules, JSON_ARRAY, "an array of rules") < 0) {
        rc = -1;
    } else {
        json_array_foreach(rules, i, v) {
            path_push_index(L, i);
            rc = parse_rule(L, i, v, p, &cap);
            path_pop(L);
            if (rc < 0)
                break;
        }
    }
    path_pop(L);
    return rc;
}

static const char *const domains_keys[] = {"throttle", "pace", "alert_window", NULL};
static const char *const throttle_keys[] = {"classes", "replies", "window", "backoff", NULL};
static const char *const pace_keys[] = {"per_second", "burst", NULL};

/* "throttle.classes": the classes whose replies count toward backing off a
 * domain. Without the key, rate_limit, reputation_block and congestion, as
 * far as the policy defines them. */
static int parse_throttle_classes(struct loader *L, json_t *throttle, struct policy *p)
{
    static const char *const defaults[] = {"rate_limit", "reputation_block", "congestion"};
    json_t *v = throttle ? json_object_get(throttle, "classes") : NULL, *e;
    size_t i;
    int rc = 0;

    if (v == NULL) {
        for (i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
            int idx = policy_class_find(p, defaults[i]);
            if (idx >= 0)
                p->classes[idx].throttles = true;
        }
        return 0;
    }
    path_push(L, "classes");
    if (want_type(L, v, JSON_ARRAY, "an array of class names") < 0) {
        rc = -1;
    } else {
        json_array_foreach(v, i, e) {
            path_push_index(L, i);
            int idx = class_ref(L, p, e);
            path_pop(L);
            if (idx < 0) {
                rc = -1;
                break;
            }
            p->classes[idx].throttles = true;
        }
    }
    path_pop(L);
    return rc;
}

static int parse_domains(struct loader *L, json_t *root, struct policy *p)
{
    json_t *v = json_object_get(root, "domains"), *t = NULL, *pace;
    int rc = -1;

    if (v == NULL)
        return parse_throttle_classes(L, NULL, p);
    path_push(L, "domains");
    if (want_type(L, v, JSON_OBJECT, "an object") < 0 || check_keys(L, v, domains_keys) < 0 ||
        get_duration(L, v, "alert_window", 0, &p->alert_window_ms) < 0)
        goto out;
    t = json_object_get(v, "throttle");
    if (t != NULL) {
        path_push(L, "throttle");
        int trc = want_type(L, t, JSON_OBJECT, "an object") < 0 || check_keys(L, t, throttle_keys) < 0 ||
                          get_int(L, t, "replies", 1, 1000000, &p->throttle_replies) < 0 ||
                          get_duration(L, t, "window", 1, &p->throttle_window_ms) < 0 ||
                          get_duration(L, t, "backoff", 1, &p->backoff_ms) < 0
                      ? -1
                      : 0;
        path_pop(L);
        if (trc < 0)
            goto out;
    }
    pace = json_object_get(v, "pace");
    if (pace != NULL) {
        path_push(L, "pace");
        int prc = want_type(L, pace, JSON_OBJECT, "an object") < 0 || check_keys(L, pace, pace_keys) < 0 ||
                          get_int(L, pace, "per_second", 0, 1000000, &p->pace_per_second) < 0 ||
                          get_int(L, pace, "burst", 1, 1000000, &p->pace_burst) < 0
                      ? -1
                      : 0;
        path_pop(L);
        if (prc < 0)
            goto out;
    }
    if (t != NULL) {
        path_push(L, "throttle");
        int crc = parse_throttle_classes(L, t, p);
        path_pop(L);
        if (crc < 0)
            goto out;
    } else if (parse_throttle_classes(L, NULL, p) < 0) {
        goto out;
    }
    rc = 0;
out:
    path_pop(L);
    return rc;
}

static const char *const top_keys[] = {"limits", "streak", "fallback", "classes", "rules", "domains", NULL};

/* Loads a policy from text (need not be NUL-terminated). name stands for
 * the file in messages. Returns a new policy the caller frees with
 * policy_free, or NULL with "name:line:col: path: what" in err. */
struct policy *policy_load_string(const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    struct loader L = {.text = text, .len = len, .name = name, .err = err, .errlen = errlen};
    json_error_t jerr;
    json_t *root;
    struct policy *p;

    if (errlen > 0)
        err[0] = '\0';
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        snprintf(err, errlen, "%s:%d:%d: %s", name, jerr.line > 0 ? jerr.line : 1, jerr.column > 0 ? jerr.column : 1,
                 jerr.text);
        return NULL;
    }

    p = alloc_or_die(sizeof(*p));
    p->max_attempts = 8;
    p->max_age_ms = 72LL * 3600 * 1000;
    p->awaiting_ms = -1;
    p->streak_campaigns = 3;
    p->chronic_span_ms = 30LL * 86400 * 1000;
    p->chronic_attempts = 5;
    p->throttle_replies = 50;
    p->throttle_window_ms = 60LL * 1000;
    p->backoff_ms = 30LL * 60 * 1000;
    p->pace_per_second = 100;
    p->pace_burst = 200;
    p->alert_window_ms = 3600LL * 1000;
    p->temp_other = p->hard_other = -1;

    if (want_type(&L, root, JSON_OBJECT, "an object") < 0 || check_keys(&L, root, top_keys) < 0 ||
        check_comment(&L, root) < 0 || parse_classes(&L, root, p) < 0 || parse_limits(&L, root, p) < 0 ||
        parse_streak(&L, root, p) < 0 || parse_fallback(&L, root, p) < 0 || parse_domains(&L, root, p) < 0 ||
        parse_rules(&L, root, p) < 0) {
        json_decref(root);
        policy_free(p);
        return NULL;
    }
    if (p->awaiting_ms < 0)
        p->awaiting_ms = p->max_age_ms;
    json_decref(root);
    return p;
}

/* Reads path and loads it as above; messages name the file as given. */
struct policy *policy_load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t len = 0, cap = 64 * 1024;
    struct policy *p;

    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    buf = alloc_or_die(cap);
    for (;;) {
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
        if (len == cap) {
            if (cap >= POLICY_FILE_MAX) {
                snprintf(err, errlen, "%s: larger than %d bytes", path, POLICY_FILE_MAX);
                free(buf);
                fclose(f);
                return NULL;
            }
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (grown == NULL) {
                fputs("policy_load: out of memory\n", stderr);
                abort();
            }
            buf = grown;
        }
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    p = policy_load_string(buf, len, path, err, errlen);
    free(buf);
    return p;
}
