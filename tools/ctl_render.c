/*
 * reboundctl's output for a person, on a terminal: replies as aligned
 * "key  value" rows (nested objects flattened to dotted keys, epoch
 * milliseconds as local times, *_ms and *_s as durations), lists of records
 * (list's and suppressed's items, groups, a history) as tables, the stats
 * reply as a summary first, and events as one line each.
 *
 * What is a time is decided by the member's name (at, *_at, due, since,
 * until, last_seen, ...) and a value past 1973, so that counts are never
 * shown as dates; a reply member added later with such a name is humanized
 * without a change here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/duration.h"
#include "tools/ctl.h"

struct rows {
    char **key, **val;
    size_t n, cap;
};

static void rows_add(struct rows *r, const char *key, char *val)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->key = realloc(r->key, r->cap * sizeof *r->key);
        r->val = realloc(r->val, r->cap * sizeof *r->val);
        if (!r->key || !r->val)
            out_of_memory();
    }
    r->key[r->n] = strdup(key);
    r->val[r->n++] = val;
}

static void rows_print(struct rows *r, FILE *out)
{
    size_t w = 0;
    for (size_t i = 0; i < r->n; i++)
        if (strlen(r->key[i]) > w)
            w = strlen(r->key[i]);
    for (size_t i = 0; i < r->n; i++) {
        fprintf(out, "%-*s  %s\n", (int)w + 1, r->key[i], r->val[i]);
        free(r->key[i]);
        free(r->val[i]);
    }
    free(r->key);
    free(r->val);
    memset(r, 0, sizeof *r);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* "in 5m" / "3h ago", rounded to what a person needs. */
static void relative(int64_t delta_ms, char *buf, size_t len)
{
    int64_t a = delta_ms < 0 ? -delta_ms : delta_ms;
    char amount[32];
    if (a < 60000)
        snprintf(amount, sizeof amount, "%llds", (long long)(a / 1000));
    else if (a < 3600000)
        snprintf(amount, sizeof amount, "%lldm", (long long)(a / 60000));
    else if (a < 86400000)
        snprintf(amount, sizeof amount, "%lldh%02lldm", (long long)(a / 3600000), (long long)(a / 60000 % 60));
    else
        snprintf(amount, sizeof amount, "%lldd%lldh", (long long)(a / 86400000), (long long)(a / 3600000 % 24));
    snprintf(buf, len, delta_ms < 0 ? "%s ago" : "in %s", amount);
}

/* Whether a member of this name holds epoch milliseconds. */
static bool is_time_key(const char *key)
{
    static const char *const exact[] = {"at", "due", "since", "until", "now", "last_seen", "first_seen", NULL};
    static const char *const suffix[] = {"_at", "_due", "_since", "_until", "_before", "_after", NULL};
    for (int i = 0; exact[i]; i++)
        if (strcmp(key, exact[i]) == 0)
            return true;
    for (int i = 0; suffix[i]; i++)
        if (ends_with(key, suffix[i]))
            return true;
    return false;
}

/* Epoch milliseconds after 1973: below that it is a count, not a time. */
#define EPOCH_MS_MIN 100000000000LL

static char *format_time(int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    char when[64], rel[48];
    localtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    relative(ms - now_ms(), rel, sizeof rel);
    return xasprintf("%s.%03d (%s)", when, (int)(ms % 1000), rel);
}

static char *format_scalar(const char *key, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        return strdup(json_string_value(v));
    case JSON_INTEGER: {
        long long n = json_integer_value(v);
        if (is_time_key(key) && n > EPOCH_MS_MIN)
            return format_time(n);
        if ((ends_with(key, "_ms") || ends_with(key, "_s")) && n >= 0) {
            char d[48];
            duration_format(ends_with(key, "_s") ? n * 1000 : n, d, sizeof d);
            return strdup(d);
        }
        return xasprintf("%lld", n);
    }
    case JSON_REAL:
        return xasprintf("%g", json_real_value(v));
    case JSON_TRUE:
        return strdup("yes");
    case JSON_FALSE:
        return strdup("no");
    case JSON_NULL:
        return strdup("-");
    default:
        return json_dumps(v, JSON_COMPACT);
    }
}

static bool all_scalars(json_t *arr)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_is_object(v) || json_is_array(v)) return false;
    return true;
}

static void flatten(struct rows *r, const char *prefix, json_t *obj);

/* ---- tables: an array of records, one row each ------------------------- */

/* Whether v is a non-empty array of objects whose members are not arrays:
 * records a table shows better than dotted rows. */
static bool is_records(json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return false;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_object(e))
            return false;
        const char *k;
        json_t *m;
        json_object_foreach(e, k, m) if (json_is_array(m)) return false;
    }
    return true;
}

/* A table cell: like a row's value, but a time without its milliseconds
 * and an object as compact JSON, to keep the columns narrow. */
static char *format_cell(const char *key, json_t *v)
{
    if (json_is_integer(v) && is_time_key(key) && json_integer_value(v) > EPOCH_MS_MIN) {
        int64_t ms = json_integer_value(v);
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        char when[32], rel[48];
        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
        relative(ms - now_ms(), rel, sizeof rel);
        return xasprintf("%s (%s)", when, rel);
    }
    char *s = json_is_object(v) || json_is_array(v) ? json_dumps(v, JSON_COMPACT) : format_scalar(key, v);
    /* A line break or tab in a value (a server's reply text) would break
     * the row. */
    for (char *p = s; p && *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    return s;
}

/* Display width of UTF-8 text: its code points (no wide characters in
 * what the daemon sends but addresses, where they are rare). */
static size_t text_width(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Prints records as a table: one column per member (in the order they first
 * appear), upper-case headers, numbers right-aligned, "-" for a member a
 * record lacks. */
static void print_table(FILE *out, json_t *records)
{
    size_t nrec = json_array_size(records), ncol = 0, cap = 8;
    const char **cols = malloc(cap * sizeof *cols);
    if (!cols)
        out_of_memory();
    size_t i;
    json_t *rec;
    json_array_foreach(records, i, rec) {
        const char *k;
        json_t *m;
        json_object_foreach(rec, k, m) {
            size_t c = 0;
            while (c < ncol && strcmp(cols[c], k) != 0)
                c++;
            if (c < ncol)
                continue;
            if (ncol == cap) {
                cap *= 2;
                cols = realloc(cols, cap * sizeof *cols);
                if (!cols)
                    out_of_memory();
            }
            cols[ncol++] = k;
        }
    }
    char **cell = calloc(nrec * ncol + 1, sizeof *cell);
    size_t *width = calloc(ncol + 1, sizeof *width);
    bool *numeric = calloc(ncol + 1, sizeof *numeric);
    if (!cell || !width || !numeric)
        out_of_memory();
    for (size_t c = 0; c < ncol; c++) {
        width[c] = strlen(cols[c]);
        numeric[c] = true;
    }
    json_array_foreach(records, i, rec) {
        for (size_t c = 0; c < ncol; c++) {
            json_t *m = json_object_get(rec, cols[c]);
            char *s = m ? format_cell(cols[c], m) : strdup("-");
            if (!s)
                out_of_memory();
            if (m && !json_is_number(m))
                numeric[c] = false;
            if (m && json_is_integer(m) && is_time_key(cols[c]) && json_integer_value(m) > EPOCH_MS_MIN)
                numeric[c] = false;
            if (text_width(s) > width[c])
                width[c] = text_width(s);
            cell[i * ncol + c] = s;
        }
    }
    for (size_t c = 0; c < ncol; c++) {
        char *h = strdup(cols[c]);
        if (!h)
            out_of_memory();
        for (char *p = h; *p; p++)
            *p = *p == '_' ? ' ' : (char)((*p >= 'a' && *p <= 'z') ? *p - 32 : *p);
        fprintf(out, "%s%*s%s", c ? "  " : "", numeric[c] ? (int)(width[c] - strlen(h)) : 0, "", h);
        if (!numeric[c] && c + 1 < ncol)
            fprintf(out, "%*s", (int)(width[c] - strlen(h)), "");
        free(h);
    }
    fputc('\n', out);
    for (size_t r = 0; r < nrec; r++) {
        for (size_t c = 0; c < ncol; c++) {
            const char *s = cell[r * ncol + c];
            int pad = (int)(width[c] - text_width(s));
            if (numeric[c])
                fprintf(out, "%s%*s%s", c ? "  " : "", pad, "", s);
            else
                fprintf(out, "%s%s%*s", c ? "  " : "", s, c + 1 < ncol ? pad : 0, "");
            free(cell[r * ncol + c]);
        }
        fputc('\n', out);
    }
    free(cell);
    free(width);
    free(numeric);
    free(cols);
}

static void flatten_value(struct rows *r, const char *key, const char *leaf, json_t *v)
{
    if (json_is_object(v)) {
        if (json_object_size(v) == 0)
            rows_add(r, key, strdup("-"));
        flatten(r, key, v);
    } else if (json_is_array(v) && strcmp(leaf, "forecast") == 0) {
        /* The classify forecast: one row per retry window. */
        size_t i;
        json_t *w;
        if (json_array_size(v) == 0)
            rows_add(r, key, strdup("no retries"));
        json_array_foreach(v, i, w) {
            char lo[48], hi[48], k[64];
            duration_format(json_integer_value(json_object_get(w, "after_min_ms")), lo, sizeof lo);
            duration_format(json_integer_value(json_object_get(w, "after_max_ms")), hi, sizeof hi);
            snprintf(k, sizeof k, "retry %lld", (long long)json_integer_value(json_object_get(w, "attempt")));
            rows_add(r, k, strcmp(lo, hi) ? xasprintf("after %s .. %s", lo, hi) : xasprintf("after %s", lo));
        }
    } else if (json_is_array(v) && all_scalars(v)) {
        size_t i;
        json_t *e;
        char *joined = strdup("");
        json_array_foreach(v, i, e) {
            char *s = format_scalar(leaf, e);
            char *n = xasprintf("%s%s%s", joined, i ? ", " : "", s);
            free(s);
            free(joined);
            joined = n;
        }
        rows_add(r, key, json_array_size(v) ? joined : (free(joined), strdup("-")));
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            char *k = xasprintf("%s[%zu]", key, i);
            flatten_value(r, k, leaf, e);
            free(k);
        }
    } else {
        rows_add(r, key, format_scalar(leaf, v));
    }
}

static void flatten(struct rows *r, const char *prefix, json_t *obj)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        if (!prefix && (strcmp(k, "ok") == 0 || strcmp(k, "req") == 0))
            continue;
        char *key = prefix ? xasprintf("%s.%s", prefix, k) : strdup(k);
        flatten_value(r, key, k, v);
        free(key);
    }
}

/* ---- stats for a person: a summary first, then whatever else it says --- */

struct class_count {
    const char *name;
    long long n;
};

static int class_count_cmp(const void *a, const void *b)
{
    const struct class_count *x = a, *y = b;
    if (x->n != y->n)
        return x->n < y->n ? 1 : -1;
    return strcmp(x->name, y->name);
}

static long long int_field(json_t *obj, const char *key)
{
    return (long long)json_integer_value(json_object_get(obj, key));
}

/* "retry 3, give_up 0, ...": an object of counts on one line. */
static char *counts_line(json_t *obj)
{
    char *line = strdup("");
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        char *n = xasprintf("%s%s%s %lld", line, line[0] ? ", " : "", k, (long long)json_integer_value(v));
        free(line);
        line = n;
    }
    return line;
}

static void render_stats(json_t *reply)
{
    json_t *rest = json_deep_copy(reply);
    struct rows r = {0};
    rows_add(&r, "queue", xasprintf("%lld pending, %lld awaiting their outcome", int_field(reply, "pending"),
                                    int_field(reply, "awaiting")));
    json_object_del(rest, "pending");
    json_object_del(rest, "awaiting");
    json_t *due = json_object_get(reply, "due");
    if (json_is_object(due)) {
        rows_add(&r, "due", xasprintf("%lld within a minute, %lld within an hour, %lld within a day",
                                      int_field(due, "minute"), int_field(due, "hour"), int_field(due, "day")));
        json_object_del(rest, "due");
    }
    /* Pending by class, largest first; the classes with none in one line. */
    json_t *by = json_object_get(reply, "by_class");
    size_t nclasses = json_object_size(by), nzero = 0, n = 0;
    struct class_count *cc = calloc(nclasses ? nclasses : 1, sizeof *cc);
    const char *k;
    json_t *v;
    json_object_foreach(by, k, v) {
        if (json_integer_value(v) == 0)
            nzero++;
        else
            cc[n++] = (struct class_count){k, (long long)json_integer_value(v)};
    }
    qsort(cc, n, sizeof *cc, class_count_cmp);
    for (size_t i = 0; i < n; i++)
        rows_add(&r, i ? "" : "pending by class", xasprintf("%-20s %lld", cc[i].name, cc[i].n));
    if (nzero)
        rows_add(&r, n ? "" : "pending by class", xasprintf("(%zu other classes: none)", nzero));
    free(cc);
    json_object_del(rest, "by_class");
    json_t *domains = json_object_get(reply, "domains");
    json_t *top = json_object_get(domains, "top_pending");
    json_t *thr = json_object_get(domains, "throttled");
    if (json_is_array(top) && json_is_array(thr)) {
        size_t i;
        json_t *d;
        json_array_foreach(top, i, d) {
            const char *name = json_string_value(json_object_get(d, "domain"));
            rows_add(&r, i ? "" : "top domains", xasprintf("%-20s %lld", name ? name : "?", int_field(d, "pending")));
        }
        json_array_foreach(thr, i, d) {
            const char *name = json_string_value(json_object_get(d, "domain"));
            const char *cls = json_string_value(json_object_get(d, "class"));
            char *until = format_scalar("until", json_object_get(d, "until"));
            rows_add(&r, i ? "" : "throttled", xasprintf("%s (%s) until %s, %lld held", name ? name : "?",
                                                         cls ? cls : "?", until, int_field(d, "held")));
            free(until);
        }
        json_t *rest_domains = json_object_get(rest, "domains");
        json_object_del(rest_domains, "top_pending");
        json_object_del(rest_domains, "throttled");
        if (json_object_size(rest_domains) == 1 && json_is_integer(json_object_get(rest_domains, "known"))) {
            rows_add(&r, "domains known", xasprintf("%lld", int_field(rest_domains, "known")));
            json_object_del(rest, "domains");
        }
    }
    json_t *events = json_object_get(reply, "events");
    if (json_is_object(events)) {
        rows_add(&r, "events emitted", counts_line(events));
        json_object_del(rest, "events");
    }
    rows_add(&r, "reports", xasprintf("%lld accepted, %lld errors", int_field(reply, "reports"),
                                      int_field(reply, "errors")));
    json_object_del(rest, "reports");
    json_object_del(rest, "errors");
    json_t *up = json_object_get(reply, "uptime_s");
    if (json_is_integer(up)) {
        char d[48];
        duration_format((int64_t)json_integer_value(up) * 1000, d, sizeof d);
        rows_add(&r, "uptime", strdup(d));
        json_object_del(rest, "uptime_s");
    }
    flatten(&r, NULL, rest); /* redis, loaded, connections, and anything newer */
    json_decref(rest);
    rows_print(&r, stdout);
}

/* An ok reply as aligned "key  value" lines. */
void render_reply(json_t *reply)
{
    if (json_is_object(json_object_get(reply, "by_class")) && json_is_integer(json_object_get(reply, "pending"))) {
        render_stats(reply);
        return;
    }
    /* Members that are lists of records become tables after the other
     * rows; an empty list says so in a row of its own. */
    json_t *rest = json_deep_copy(reply);
    json_t *tables = json_object();
    if (!rest || !tables)
        out_of_memory();
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(rest, tmp, k, v) {
        if (strcmp(k, "forecast") == 0)
            continue;
        if (is_records(v)) {
            json_object_set(tables, k, v);
            json_object_del(rest, k);
        } else if (json_is_array(v) && json_array_size(v) == 0 &&
                   (strcmp(k, "items") == 0 || strcmp(k, "groups") == 0)) {
            json_object_set_new(rest, k, json_string("none"));
        }
    }
    struct rows r = {0};
    flatten(&r, NULL, rest);
    json_decref(rest);
    if (r.n == 0 && json_object_size(tables) == 0)
        puts("ok");
    /* A listing's items need no name; other tables are named after the
     * rows (get's history, domain's alerts). */
    size_t nrows = r.n;
    rows_print(&r, stdout);
    json_object_foreach(tables, k, v) {
        if (strcmp(k, "items") == 0 && json_object_size(tables) == 1) {
            if (nrows)
                putchar('\n');
        } else if (nrows || json_object_size(tables) > 1) {
            printf("\n%s:\n", k);
        }
        print_table(stdout, v);
    }
    json_decref(tables);
}

void render_error(json_t *reply)
{
    json_t *e = json_object_get(reply, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    errorf("%s: %s", code ? code : "error", msg ? msg : "(no message)");
}

/* The local time of day of epoch milliseconds ms, "12:00:03". */
static void clock_time(json_int_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, len, "%H:%M:%S", &tm);
}

/* An event on one line: "12:00:03 retry id=m1 rcpt=a@b class=greylist ...". */
void render_event(json_t *ev)
{
    json_t *at = json_object_get(ev, "at");
    char when[32] = "";
    if (json_is_integer(at))
        clock_time(json_integer_value(at), when, sizeof when);
    const char *type = json_string_value(json_object_get(ev, "type"));
    printf("%s %s", when, type ? type : "?");
    const char *k;
    json_t *v;
    json_object_foreach(ev, k, v) {
        if (!strcmp(k, "type") || !strcmp(k, "at") || !strcmp(k, "eid"))
            continue;
        char *s;
        if (json_is_string(v) && !strpbrk(json_string_value(v), " \t\"="))
            s = strdup(json_string_value(v));
        else if (json_is_integer(v) && is_time_key(k) && json_integer_value(v) > EPOCH_MS_MIN) {
            char b[32];
            clock_time(json_integer_value(v), b, sizeof b);
            s = strdup(b);
        } else if (json_is_integer(v) && ends_with(k, "_ms") && json_integer_value(v) >= 0) {
            char d[48];
            duration_format(json_integer_value(v), d, sizeof d);
            s = strdup(d);
        } else
            s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        printf(" %s=%s", k, s ? s : "?");
        free(s);
    }
    putchar('\n');
}

bool render_answer(const struct ctl *ctl, const char *raw, size_t len, json_t *reply)
{
    bool ok = json_is_true(json_object_get(reply, "ok"));
    if (ctl->json)
        put_line(raw, len);
    else if (ok)
        render_reply(reply);
    else
        render_error(reply);
    return ok;
}
