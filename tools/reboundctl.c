/*
 * reboundctl: the command-line client of reboundd, for people and scripts.
 *
 * Every command but `classify` and `check-policy` opens one connection to
 * the daemon (TCP HOST:PORT, or a Unix socket when the address holds a '/'),
 * sends newline-delimited JSON requests (docs/protocol.md) and prints the
 * replies. Plain blocking-style POSIX I/O is enough for a client: the
 * socket is non-blocking only so that poll() can bound every wait with
 * --timeout and so that `send` can write requests and read replies at the
 * same time. That matters: a client that writes a long pipeline before
 * reading anything deadlocks against a server that stops reading a
 * connection whose replies are not being taken (reboundd does, past
 * max_inflight), so `send` keeps at most SEND_WINDOW requests unanswered.
 *
 * `classify` needs no daemon: it loads the policy once and answers each
 * NDJSON line of stdin with exactly the line the daemon's classify op would
 * send (the same request validation from proto/, the same classifier and
 * the same explanation), one output line per input line, errors included.
 * Output is flushed whenever input runs dry, so a script may also drive it
 * as a co-process, one line at a time.
 *
 * Output is JSON lines when stdout is not a terminal or with --json, and a
 * readable rendering on a terminal. Exit codes: 0 ok, 1 the daemon (or the
 * offline classifier) answered ok:false or the policy is invalid, 2 usage
 * error, 3 cannot connect, time-out or I/O error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config/duration.h"
#include "config/explain.h"
#include "config/policy_load.h"
#include "proto/frame.h"
#include "proto/reply.h"
#include "proto/request.h"
#include "queue/classify.h"

#ifndef REBOUND_VERSION
#define REBOUND_VERSION "unknown"
#endif
#ifndef REBOUND_DEFAULT_POLICY
#define REBOUND_DEFAULT_POLICY "/etc/rebound/policy.json"
#endif

#define EXIT_REPLY 1 /* an answer was ok:false */
#define EXIT_USAGE 2
#define EXIT_IO 3

#define DEFAULT_SERVER "127.0.0.1:7411"
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_GROUP "reboundctl"
/* Longest line read from the daemon or from stdin; far above anything the
 * daemon sends, it only bounds memory when the input is not NDJSON. */
#define MAX_LINE (64u * 1024 * 1024)
#define SEND_WINDOW 256
#define OUT_HIGH_WATER (1u << 20)

struct ctl {
    const char *server;
    const char *token;  /* NULL or "" = no auth */
    int64_t timeout_ms; /* for each wait on the daemon; 0 = forever */
    bool json;          /* JSON lines out */
    const char *cmd;    /* the command, for messages and --help */
};

struct client {
    int fd;
    struct frame in;
    const struct ctl *ctl;
};

static volatile sig_atomic_t interrupted;
/* tail's self-pipe: the signal handler writes to it, so an interrupt that
 * arrives just before poll() still wakes poll() up. */
static int sig_pipe[2] = {-1, -1};

/* ---- messages ------------------------------------------------------- */

static void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errorf(const char *fmt, ...)
{
    va_list ap;
    fputs("reboundctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int usage_error(const struct ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const struct ctl *ctl, const char *fmt, ...)
{
    va_list ap;
    fputs("reboundctl: ", stderr);
    if (ctl->cmd)
        fprintf(stderr, "%s: ", ctl->cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (ctl->cmd)
        fprintf(stderr, "\nTry 'reboundctl %s --help'.\n", ctl->cmd);
    else
        fputs("\nTry 'reboundctl --help'.\n", stderr);
    return EXIT_USAGE;
}

/* ---- help ----------------------------------------------------------- */

static const char main_help[] =
    "Usage: reboundctl [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Talks to reboundd, the email retry scheduler, or (classify) tries SMTP\n"
    "replies against a policy file without a daemon.\n"
    "\n"
    "Commands:\n"
    "  bounce        report a failed delivery\n"
    "  delivered ID  report that a message got through\n"
    "  cancel ID     drop a pending retry, without an event\n"
    "  get ID        show what rebound knows about a message\n"
    "  suppressed    list the suppressed addresses (a page, or --all for export)\n"
    "  unsuppress ADDR  take an address off the suppressed list\n"
    "  domain NAME   show a receiving domain's state: pending, back-off, pace\n"
    "  stats         queue depth, due counts, events, Redis link\n"
    "  ping          check that the daemon answers\n"
    "  send [JSON]   send raw request lines (arguments, or NDJSON on stdin)\n"
    "  tail          follow events as they are emitted\n"
    "  classify      classify SMTP replies offline against a policy\n"
    "  check-policy FILE  validate a policy file\n"
    "  help [COMMAND]\n"
    "\n"
    "Options (also accepted after the command):\n"
    "  -s, --server ADDR  HOST:PORT, [IPv6]:PORT, or a Unix socket path (anything\n"
    "                     with a '/'); default $REBOUND_SERVER, else " DEFAULT_SERVER "\n"
    "      --token T      shared token, sent with the auth op first (default\n"
    "                     $REBOUND_TOKEN; prefer the variable: arguments are\n"
    "                     visible to other users)\n"
    "      --json         print JSON lines even on a terminal\n"
    "      --timeout D    give up waiting for the daemon after D (\"500ms\", \"30s\";\n"
    "                     0 = never); default 10s, never for tail\n"
    "  -h, --help         this help; 'reboundctl COMMAND --help' for a command\n"
    "      --version\n"
    "\n"
    "Output is JSON lines when stdout is not a terminal (or with --json).\n"
    "Exit status: 0 ok, 1 the answer was ok:false (not_found, bad_request, ...) or\n"
    "the policy is invalid, 2 usage error, 3 cannot connect, time-out or I/O error.\n";

static const char bounce_help[] =
    "Usage: reboundctl bounce --id ID --rcpt ADDR --code N [OPTIONS]\n"
    "\n"
    "Reports a failed delivery. The daemon classifies the reply, decides (retry,\n"
    "give_up, suppress), stores the decision in Redis and answers.\n"
    "\n"
    "  --id ID           message id (1-200 printable ASCII, no spaces)\n"
    "  --rcpt ADDR       recipient address\n"
    "  --code N          SMTP basic reply code (400..599)\n"
    "  --enhanced X.Y.Z  enhanced status code\n"
    "  --text T          the server's reply text\n"
    "  --campaign C      campaign, for the recipient's soft-bounce streak\n"
    "  --not-before T    earliest retry: epoch milliseconds, or +DURATION from now\n"
    "                    (\"+15m\")\n"
    "  --meta JSON       an object passed through to this message's events\n";

static const char delivered_help[] =
    "Usage: reboundctl delivered ID [--rcpt ADDR]\n"
    "\n"
    "Reports that message ID (or a retry of it) was delivered: drops its pending\n"
    "retry and resets the recipient's soft-bounce streak.\n";

static const char cancel_help[] = "Usage: reboundctl cancel ID\n"
                                  "\n"
                                  "Drops the pending retry of message ID. No event is emitted.\n";

static const char get_help[] = "Usage: reboundctl get ID\n"
                               "\n"
                               "Shows the state of message ID: class, attempts, history, next due time.\n";

static const char stats_help[] = "Usage: reboundctl stats\n"
                                 "\n"
                                 "Shows queue depth by class, retries due soon, events by type, the Redis\n"
                                 "link and uptime.\n";

static const char ping_help[] = "Usage: reboundctl ping\n"
                                "\n"
                                "Checks that the daemon answers. Exit status 0 when it does.\n";

static const char send_help[] =
    "Usage: reboundctl send [JSON...]\n"
    "\n"
    "Sends each argument as one request line, or with no argument every line of\n"
    "stdin (NDJSON), and prints every line the daemon sends back, as it is.\n"
    "Requests are pipelined (up to 256 unanswered); blank lines are skipped.\n"
    "Exit status 1 when any reply was ok:false.\n"
    "\n"
    "  reboundctl send '{\"op\":\"get\",\"id\":\"m1\"}'\n"
    "  reboundctl send < requests.ndjson > replies.ndjson\n";

static const char tail_help[] =
    "Usage: reboundctl tail [--group G] [--types T,T..] [--no-ack]\n"
    "\n"
    "Subscribes and prints events as they arrive, until interrupted. Each event\n"
    "is acknowledged after it was printed, so an event is printed at least once.\n"
    "Connections in one group share the events; each group sees all of them.\n"
    "\n"
    "  --group G     consumer group (default \"" DEFAULT_GROUP "\")\n"
    "  --types LIST  comma-separated: retry, give_up, suppress, sender_alert,\n"
    "                domain_throttled (default: all)\n"
    "  --no-ack      do not acknowledge: the group gets the events again later\n";

static const char classify_help[] =
    "Usage: reboundctl classify [--policy FILE] [--code N] [--enhanced X.Y.Z] [--text T]\n"
    "       reboundctl classify [--policy FILE] < replies.ndjson\n"
    "       reboundctl classify --check [--policy FILE]\n"
    "\n"
    "Classifies SMTP replies against a policy file, offline (no daemon), and\n"
    "prints what the daemon would do: class, action, the rule that matched and\n"
    "the retry windows. With --code, --enhanced or --text it classifies that one\n"
    "reply; otherwise it reads NDJSON lines {\"code\":..,\"enhanced\":..,\"text\":..}\n"
    "from stdin and writes exactly one JSON line per input line, in order (an\n"
    "invalid line gets {\"ok\":false,\"error\":{..}}; a \"req\" is echoed).\n"
    "Exit status 1 when any line was invalid.\n"
    "\n"
    "  --policy FILE  the policy (default " REBOUND_DEFAULT_POLICY ")\n"
    "  --check        only validate the policy (same as check-policy)\n";

static const char suppressed_help[] =
    "Usage: reboundctl suppressed [--count N] [--cursor C]\n"
    "       reboundctl suppressed --all\n"
    "\n"
    "Lists the suppressed addresses (hard_invalid, chronic_soft), a page at a\n"
    "time: the reply's cursor starts the next page; \"0\" means the list is done.\n"
    "An address may show up twice across pages if the list changed meanwhile.\n"
    "\n"
    "  --count N   addresses per page, a hint (1..1000, default 100)\n"
    "  --cursor C  the cursor of the previous page (default \"0\": the first)\n"
    "  --all       every address, one JSON line each {\"rcpt\",\"reason\",\"at\"},\n"
    "              for export to your platform's suppression list\n";

static const char unsuppress_help[] =
    "Usage: reboundctl unsuppress ADDR\n"
    "\n"
    "Takes ADDR off the suppressed list and resets its soft-bounce streak, so\n"
    "its bounces are retried again. \"found\" says whether it was suppressed.\n";

static const char domain_help[] =
    "Usage: reboundctl domain NAME\n"
    "\n"
    "Shows what reboundd knows about receiving domain NAME: retries pending for\n"
    "it, its back-off (class, since, until, retries held), the throttling\n"
    "replies counted in the current window, the pace, and its sender alerts.\n";

static const char check_policy_help[] =
    "Usage: reboundctl check-policy FILE\n"
    "\n"
    "Loads and validates a policy file. Exit status 0 when it is valid, 1 with\n"
    "the file, line, column and what is wrong when it is not.\n";

/* ---- small helpers -------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    if (!*s)
        return -1;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_timeout(const char *s, int64_t *ms)
{
    if (strcmp(s, "0") == 0) {
        *ms = 0;
        return 0;
    }
    return duration_parse(s, ms) == 0 && *ms >= 0 ? 0 : -1;
}

/* Sets key to the string value when value is not NULL. Returns -1 when it
 * is not valid UTF-8 (jansson refuses it). */
static int set_string(json_t *obj, const char *key, const char *value)
{
    if (!value)
        return 0;
    json_t *s = json_string(value);
    if (!s)
        return -1;
    return json_object_set_new(obj, key, s);
}

static bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

/* Writes a line and its '\n' to stdout. */
static void put_line(const char *s, size_t n)
{
    fwrite(s, 1, n, stdout);
    if (n == 0 || s[n - 1] != '\n')
        fputc('\n', stdout);
}

/* Flushes stdout; returns -1 (after saying so, unless the reader just went
 * away) when the output cannot be written. */
static int flush_out(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    if (errno != EPIPE)
        errorf("cannot write the output: %s", strerror(errno));
    return -1;
}

/* ---- rendering for a terminal --------------------------------------- */

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
        if (!r->key || !r->val) {
            errorf("out of memory");
            exit(EXIT_IO);
        }
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

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = malloc((size_t)n + 1);
    if (!s) {
        errorf("out of memory");
        exit(EXIT_IO);
    }
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
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
        /* Epoch milliseconds: due times and event times. */
        if ((strcmp(key, "at") == 0 || ends_with(key, "_at") || ends_with(key, "due")) && n > 100000000000LL)
            return format_time(n);
        if (ends_with(key, "_ms") && n >= 0) {
            char d[48];
            duration_format(n, d, sizeof d);
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
static void render_reply(json_t *reply)
{
    if (json_is_object(json_object_get(reply, "by_class")) && json_is_integer(json_object_get(reply, "pending"))) {
        render_stats(reply);
        return;
    }
    struct rows r = {0};
    flatten(&r, NULL, reply);
    if (r.n == 0)
        puts("ok");
    rows_print(&r, stdout);
}

static void render_error(json_t *reply)
{
    json_t *e = json_object_get(reply, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    errorf("%s: %s", code ? code : "error", msg ? msg : "(no message)");
}

/* An event on one line: "12:00:03 retry id=m1 rcpt=a@b class=greylist ...". */
static void render_event(json_t *ev)
{
    json_t *at = json_object_get(ev, "at");
    char when[32] = "";
    if (json_is_integer(at)) {
        time_t t = (time_t)(json_integer_value(at) / 1000);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%H:%M:%S", &tm);
    }
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
        else if (json_is_integer(v) && ends_with(k, "_at")) {
            time_t t = (time_t)(json_integer_value(v) / 1000);
            struct tm tm;
            char b[32];
            localtime_r(&t, &tm);
            strftime(b, sizeof b, "%H:%M:%S", &tm);
            s = strdup(b);
        } else
            s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        printf(" %s=%s", k, s ? s : "?");
        free(s);
    }
    putchar('\n');
}

/* ---- the connection ------------------------------------------------- */

/* Waits until fd is ready for events. Returns 1, 0 on time-out, or -1
 * (errno set; interrupted set when a signal ended the wait). */
static int wait_fd(int fd, short events, int64_t timeout_ms)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = sig_pipe[0], .events = POLLIN}};
    for (;;) {
        if (interrupted) {
            errno = EINTR;
            return -1;
        }
        int n = poll(p, sig_pipe[0] >= 0 ? 2 : 1, timeout_ms > 0 ? (int)(timeout_ms > INT32_MAX ? INT32_MAX : timeout_ms) : -1);
        if (n > 0 && p[0].revents)
            return 1;
        if (n == 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

static int connect_fd(int fd, const struct sockaddr *sa, socklen_t salen, int64_t timeout_ms)
{
    if (connect(fd, sa, salen) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EAGAIN && errno != EINTR)
        return -1;
    int n = wait_fd(fd, POLLOUT, timeout_ms);
    if (n == 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (n < 0)
        return -1;
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        return -1;
    if (soerr) {
        errno = soerr;
        return -1;
    }
    return 0;
}

static int new_socket(int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    return fd;
}

/* Connects to ctl->server. Returns the fd, or -1 after saying why. */
static int open_server(const struct ctl *ctl)
{
    const char *addr = ctl->server;
    if (strchr(addr, '/')) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(addr) >= sizeof sun.sun_path) {
            errorf("cannot connect to %s: the path is too long for a Unix socket", addr);
            return -1;
        }
        strcpy(sun.sun_path, addr);
        int fd = new_socket(AF_UNIX);
        if (fd < 0 || connect_fd(fd, (struct sockaddr *)&sun, sizeof sun, ctl->timeout_ms) < 0) {
            errorf("cannot connect to %s: %s", addr, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        return fd;
    }

    char host[256];
    const char *colon = strrchr(addr, ':');
    const char *port = colon ? colon + 1 : NULL;
    size_t hlen = colon ? (size_t)(colon - addr) : 0;
    if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']') {
        addr++;
        hlen -= 2;
    }
    if (!colon || hlen == 0 || hlen >= sizeof host || !*port) {
        errorf("bad server address \"%s\": expected HOST:PORT or a Unix socket path", ctl->server);
        return -1;
    }
    memcpy(host, addr, hlen);
    host[hlen] = '\0';

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        errorf("cannot connect to %s: %s", ctl->server, gai_strerror(gai));
        return -1;
    }
    int fd = -1, saved = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = new_socket(ai->ai_family);
        if (fd >= 0 && connect_fd(fd, ai->ai_addr, ai->ai_addrlen, ctl->timeout_ms) == 0)
            break;
        saved = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        errorf("cannot connect to %s: %s", ctl->server, strerror(saved));
    return fd;
}

/* Writes all of buf, waiting at most the time-out each time the socket is
 * full. Returns 0 or -1 after saying why. */
static int send_all(struct client *cl, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(cl->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR && !interrupted)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(cl->fd, POLLOUT, cl->ctl->timeout_ms);
            if (w > 0)
                continue;
            if (w == 0)
                errno = ETIMEDOUT;
        }
        if (!interrupted)
            errorf("cannot send to %s: %s", cl->ctl->server, strerror(errno));
        return -1;
    }
    return 0;
}

static int send_json(struct client *cl, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    if (!s) {
        errorf("cannot encode the request");
        return -1;
    }
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        errorf("out of memory");
        return -1;
    }
    line[n] = '\n';
    int rc = send_all(cl, line, n + 1);
    free(line);
    return rc;
}

/* Reads what the socket has into the frame. Returns bytes read, 0 at end
 * of stream, -1 on error (errno set). */
static ssize_t read_some(int fd, struct frame *f)
{
    size_t avail;
    char *p = frame_space(f, 65536, &avail);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, p, avail);
        if (n >= 0) {
            frame_commit(f, (size_t)n);
            return n;
        }
        if (errno != EINTR || interrupted)
            return -1;
    }
}

/* Waits for the next line from the daemon. timeout_ms 0 waits forever.
 * Returns 1 with the line, 0 when interrupted, -1 after saying why. */
static int read_line(struct client *cl, int64_t timeout_ms, const char **line, size_t *len)
{
    for (;;) {
        int r = frame_next(&cl->in, line, len);
        if (r == 1)
            return 1;
        if (r < 0) {
            errorf("the reply from %s is longer than %u bytes", cl->ctl->server, MAX_LINE);
            return -1;
        }
        int w = wait_fd(cl->fd, POLLIN, timeout_ms);
        if (w < 0 && interrupted)
            return 0;
        if (w == 0) {
            errorf("%s did not answer within %lld ms", cl->ctl->server, (long long)timeout_ms);
            return -1;
        }
        ssize_t n = w < 0 ? -1 : read_some(cl->fd, &cl->in);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0 && interrupted)
            return 0;
        if (n < 0) {
            errorf("cannot read from %s: %s", cl->ctl->server, strerror(errno));
            return -1;
        }
        if (n == 0) {
            errorf("%s closed the connection", cl->ctl->server);
            return -1;
        }
    }
}

/* Reads lines until a reply (a line with "ok"; events have none). Returns
 * the parsed reply, with the raw line in *raw and *rawlen (valid until the next
 * read), or NULL after saying why. */
static json_t *read_reply(struct client *cl, const char **raw, size_t *rawlen)
{
    for (;;) {
        const char *line;
        size_t len;
        if (read_line(cl, cl->ctl->timeout_ms, &line, &len) != 1)
            return NULL;
        json_error_t jerr;
        json_t *j = json_loadb(line, len, 0, &jerr);
        if (!j || !json_is_object(j)) {
            errorf("%s sent a line that is not a JSON object: %.*s", cl->ctl->server, (int)(len > 200 ? 200 : len),
                   line);
            json_decref(j);
            return NULL;
        }
        if (json_object_get(j, "ok")) {
            *raw = line;
            *rawlen = len;
            return j;
        }
        json_decref(j);
    }
}

static void client_close(struct client *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
    frame_free(&cl->in);
}

/* Connects and authenticates. Returns 0, or an exit status after saying
 * why (EXIT_REPLY when the token was refused). */
static int client_open(struct client *cl, const struct ctl *ctl)
{
    cl->ctl = ctl;
    frame_init(&cl->in, MAX_LINE);
    cl->fd = open_server(ctl);
    if (cl->fd < 0)
        return EXIT_IO;
    if (!ctl->token || !ctl->token[0])
        return 0;
    json_t *auth = json_pack("{s:s,s:s}", "op", "auth", "token", ctl->token);
    int rc = send_json(cl, auth);
    json_decref(auth);
    if (rc < 0)
        return EXIT_IO;
    const char *raw;
    size_t len;
    json_t *reply = read_reply(cl, &raw, &len);
    if (!reply)
        return EXIT_IO;
    rc = 0;
    if (!json_is_true(json_object_get(reply, "ok"))) {
        render_error(reply);
        rc = EXIT_REPLY;
    }
    json_decref(reply);
    return rc;
}

/* One request, one reply, printed. Steals req. */
static int call_and_print(const struct ctl *ctl, json_t *req)
{
    struct client cl = {.fd = -1};
    int rc = client_open(&cl, ctl);
    if (rc == 0 && send_json(&cl, req) < 0)
        rc = EXIT_IO;
    json_decref(req);
    if (rc) {
        client_close(&cl);
        return rc;
    }
    const char *raw;
    size_t len;
    json_t *reply = read_reply(&cl, &raw, &len);
    if (!reply) {
        client_close(&cl);
        return EXIT_IO;
    }
    bool ok = json_is_true(json_object_get(reply, "ok"));
    if (ctl->json)
        put_line(raw, len);
    else if (ok)
        render_reply(reply);
    else
        render_error(reply);
    json_decref(reply);
    client_close(&cl);
    if (flush_out() < 0)
        return EXIT_IO;
    return ok ? 0 : EXIT_REPLY;
}

/* ---- option parsing shared by every command ------------------------- */

enum {
    O_JSON = 1000,
    O_TOKEN,
    O_TIMEOUT,
    O_VERSION,
    O_ID,
    O_RCPT,
    O_CODE,
    O_ENHANCED,
    O_TEXT,
    O_CAMPAIGN,
    O_NOT_BEFORE,
    O_META,
    O_GROUP,
    O_TYPES,
    O_NO_ACK,
    O_POLICY,
    O_CHECK,
    O_ALL,
    O_CURSOR,
    O_COUNT,
};

#define COMMON_OPTIONS                                                                                       \
    {"server", required_argument, NULL, 's'}, {"json", no_argument, NULL, O_JSON},                          \
        {"token", required_argument, NULL, O_TOKEN}, {"timeout", required_argument, NULL, O_TIMEOUT},       \
        {"help", no_argument, NULL, 'h'}

struct command {
    const char *name;
    int (*run)(struct ctl *ctl, int argc, char **argv);
    const char *help;
};

static const struct command *command_find(const char *name);

/* Handles an option every command accepts. Returns -1 when c is not one
 * of them, else 0 or an exit status to return at once (help: -2). */
static int common_option(struct ctl *ctl, int c, const char *arg, char **argv)
{
    switch (c) {
    case 's':
        ctl->server = arg;
        return 0;
    case O_JSON:
        ctl->json = true;
        return 0;
    case O_TOKEN:
        ctl->token = arg;
        return 0;
    case O_TIMEOUT:
        if (parse_timeout(arg, &ctl->timeout_ms) < 0)
            return usage_error(ctl, "--timeout: \"%s\" is not a duration (e.g. 500ms, 30s; 0 = never)", arg);
        return 0;
    case 'h': {
        const struct command *cmd = ctl->cmd ? command_find(ctl->cmd) : NULL;
        fputs(cmd ? cmd->help : main_help, stdout);
        return -2;
    }
    case '?':
        return usage_error(ctl, "unknown option or missing argument: %s", argv[optind - 1]);
    default:
        return -1;
    }
}

/* The loop every command runs over its options. handle gets the options
 * of the command itself and returns 0 or an exit status. Returns -1 when
 * the options are fine (optind is at the first operand), otherwise the
 * exit status (help: 0). */
static int parse_options(struct ctl *ctl, int argc, char **argv, const struct option *longopts,
                         int (*handle)(struct ctl *ctl, int c, const char *arg, void *state), void *state)
{
    optind = 0; /* glibc: start over, this is a new argument vector */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
        int rc = common_option(ctl, c, optarg, argv);
        if (rc == -2)
            return 0;
        if (rc > 0)
            return rc;
        if (rc == 0)
            continue;
        rc = handle ? handle(ctl, c, optarg, state) : usage_error(ctl, "unexpected option");
        if (rc)
            return rc;
    }
    return -1;
}

static const struct option common_only[] = {COMMON_OPTIONS, {0, 0, 0, 0}};

/* ---- commands that talk to the daemon -------------------------------- */

struct bounce_args {
    const char *id, *rcpt, *code, *enhanced, *text, *campaign, *not_before, *meta;
};

static int bounce_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct bounce_args *a = state;
    switch (c) {
    case O_ID:
        a->id = arg;
        break;
    case O_RCPT:
        a->rcpt = arg;
        break;
    case O_CODE:
        a->code = arg;
        break;
    case O_ENHANCED:
        a->enhanced = arg;
        break;
    case O_TEXT:
        a->text = arg;
        break;
    case O_CAMPAIGN:
        a->campaign = arg;
        break;
    case O_NOT_BEFORE:
        a->not_before = arg;
        break;
    case O_META:
        a->meta = arg;
        break;
    default:
        return usage_error(ctl, "unexpected option");
    }
    return 0;
}

static int cmd_bounce(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"id", required_argument, NULL, O_ID},
        {"rcpt", required_argument, NULL, O_RCPT},
        {"code", required_argument, NULL, O_CODE},
        {"enhanced", required_argument, NULL, O_ENHANCED},
        {"text", required_argument, NULL, O_TEXT},
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {"not-before", required_argument, NULL, O_NOT_BEFORE},
        {"meta", required_argument, NULL, O_META},
        {0, 0, 0, 0},
    };
    struct bounce_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, bounce_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    if (!a.id || !a.rcpt || !a.code)
        return usage_error(ctl, "--id, --rcpt and --code are required");
    long long code;
    if (parse_int(a.code, 0, 999, &code) < 0)
        return usage_error(ctl, "--code: \"%s\" is not an SMTP reply code", a.code);

    json_t *req = json_pack("{s:s,s:s,s:s,s:I}", "op", "bounce", "id", a.id, "rcpt", a.rcpt, "code", code);
    if (!req || set_string(req, "enhanced", a.enhanced) || set_string(req, "text", a.text) ||
        set_string(req, "campaign", a.campaign)) {
        json_decref(req);
        return usage_error(ctl, "the arguments must be valid UTF-8");
    }
    if (a.not_before) {
        long long nb;
        int64_t d;
        if (a.not_before[0] == '+' && duration_parse(a.not_before + 1, &d) == 0)
            nb = now_ms() + d;
        else if (parse_int(a.not_before, 1, INT64_MAX, &nb) < 0) {
            json_decref(req);
            return usage_error(ctl, "--not-before: \"%s\" is neither epoch milliseconds nor +DURATION",
                               a.not_before);
        }
        json_object_set_new(req, "not_before", json_integer(nb));
    }
    if (a.meta) {
        json_error_t jerr;
        json_t *meta = json_loads(a.meta, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(meta)) {
            json_decref(meta);
            json_decref(req);
            return usage_error(ctl, "--meta must be a JSON object%s%s", meta ? "" : ": ", meta ? "" : jerr.text);
        }
        json_object_set_new(req, "meta", meta);
    }
    return call_and_print(ctl, req);
}

static int rcpt_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    if (c != O_RCPT)
        return usage_error(ctl, "unexpected option");
    *(const char **)state = arg;
    return 0;
}

/* Commands with exactly one operand, the message id. */
static int id_command(struct ctl *ctl, int argc, char **argv, const char *op, bool with_rcpt)
{
    static const struct option with[] = {COMMON_OPTIONS, {"rcpt", required_argument, NULL, O_RCPT}, {0, 0, 0, 0}};
    const char *rcpt = NULL;
    int rc = parse_options(ctl, argc, argv, with_rcpt ? with : common_only, with_rcpt ? rcpt_opt : NULL, &rcpt);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the message ID is missing" : "one message ID only");
    json_t *req = json_pack("{s:s,s:s}", "op", op, "id", argv[optind]);
    if (!req)
        return usage_error(ctl, "the ID is not valid UTF-8");
    if (set_string(req, "rcpt", rcpt) < 0) {
        json_decref(req);
        return usage_error(ctl, "--rcpt is not valid UTF-8");
    }
    return call_and_print(ctl, req);
}

static int cmd_delivered(struct ctl *ctl, int argc, char **argv)
{
    return id_command(ctl, argc, argv, "delivered", true);
}

static int cmd_cancel(struct ctl *ctl, int argc, char **argv)
{
    return id_command(ctl, argc, argv, "cancel", false);
}

static int cmd_get(struct ctl *ctl, int argc, char **argv)
{
    return id_command(ctl, argc, argv, "get", false);
}

static int simple_command(struct ctl *ctl, int argc, char **argv, const char *op)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    return call_and_print(ctl, json_pack("{s:s}", "op", op));
}

static int cmd_stats(struct ctl *ctl, int argc, char **argv)
{
    return simple_command(ctl, argc, argv, "stats");
}

struct page_args {
    const char *cursor, *count;
    bool all;
};

static int page_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct page_args *a = state;
    switch (c) {
    case O_ALL:
        a->all = true;
        break;
    case O_CURSOR:
        a->cursor = arg;
        break;
    case O_COUNT:
        a->count = arg;
        break;
    default:
        return usage_error(ctl, "unexpected option");
    }
    return 0;
}

/* --all: every page on one connection, each address a JSON line. */
static int suppressed_all(const struct ctl *ctl, long long count)
{
    struct client cl = {.fd = -1};
    int rc = client_open(&cl, ctl);
    char *cursor = xasprintf("0");
    while (rc == 0) {
        json_t *req = json_pack("{s:s,s:s,s:I}", "op", "suppressed", "cursor", cursor, "count", count);
        rc = send_json(&cl, req) < 0 ? EXIT_IO : 0;
        json_decref(req);
        if (rc)
            break;
        const char *raw;
        size_t len;
        json_t *reply = read_reply(&cl, &raw, &len);
        if (!reply) {
            rc = EXIT_IO;
            break;
        }
        if (!json_is_true(json_object_get(reply, "ok"))) {
            render_error(reply);
            json_decref(reply);
            rc = EXIT_REPLY;
            break;
        }
        size_t i;
        json_t *item;
        json_array_foreach(json_object_get(reply, "items"), i, item)
        {
            char *line = json_dumps(item, JSON_COMPACT);
            if (line)
                put_line(line, strlen(line));
            free(line);
        }
        const char *next = json_string_value(json_object_get(reply, "cursor"));
        free(cursor);
        cursor = xasprintf("%s", next ? next : "0");
        json_decref(reply);
        if (flush_out() < 0)
            rc = EXIT_IO;
        if (strcmp(cursor, "0") == 0)
            break;
    }
    free(cursor);
    client_close(&cl);
    return rc;
}

static int cmd_suppressed(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"all", no_argument, NULL, O_ALL},
        {"cursor", required_argument, NULL, O_CURSOR},
        {"count", required_argument, NULL, O_COUNT},
        {0, 0, 0, 0},
    };
    struct page_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, page_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    long long count = a.all ? 1000 : 100;
    if (a.count && parse_int(a.count, 1, 1000, &count) < 0)
        return usage_error(ctl, "--count: \"%s\" is not a number 1..1000", a.count);
    if (a.all) {
        if (a.cursor)
            return usage_error(ctl, "--all starts at the beginning; leave out --cursor");
        return suppressed_all(ctl, count);
    }
    json_t *req = json_pack("{s:s,s:I}", "op", "suppressed", "count", count);
    if (a.cursor && set_string(req, "cursor", a.cursor) < 0) {
        json_decref(req);
        return usage_error(ctl, "--cursor is not valid UTF-8");
    }
    return call_and_print(ctl, req);
}

/* Commands whose one operand is the value of one field. */
static int operand_command(struct ctl *ctl, int argc, char **argv, const char *op, const char *field,
                           const char *what)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the %s is missing" : "one %s only", what);
    json_t *req = json_pack("{s:s}", "op", op);
    if (set_string(req, field, argv[optind]) < 0) {
        json_decref(req);
        return usage_error(ctl, "the %s is not valid UTF-8", what);
    }
    return call_and_print(ctl, req);
}

static int cmd_unsuppress(struct ctl *ctl, int argc, char **argv)
{
    return operand_command(ctl, argc, argv, "unsuppress", "rcpt", "address");
}

static int cmd_domain(struct ctl *ctl, int argc, char **argv)
{
    return operand_command(ctl, argc, argv, "domain", "domain", "domain name");
}

static int cmd_ping(struct ctl *ctl, int argc, char **argv)
{
    return simple_command(ctl, argc, argv, "ping");
}

/* send: requests from the arguments or stdin, replies printed as they
 * come. Both directions are serviced by one poll loop, with at most
 * SEND_WINDOW requests unanswered. */
static int cmd_send(struct ctl *ctl, int argc, char **argv)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;

    struct frame src;
    frame_init(&src, MAX_LINE);
    bool src_eof = false;
    if (optind < argc) {
        for (int i = optind; i < argc; i++) {
            size_t n = strlen(argv[i]), avail;
            char *p = frame_space(&src, n + 1, &avail);
            if (!p || avail < n + 1) {
                frame_free(&src);
                errorf("out of memory");
                return EXIT_IO;
            }
            memcpy(p, argv[i], n);
            p[n] = '\n';
            frame_commit(&src, n + 1);
        }
        src_eof = true;
    }

    struct client cl = {.fd = -1};
    rc = client_open(&cl, ctl);
    if (rc) {
        client_close(&cl);
        frame_free(&src);
        return rc;
    }

    char *out = NULL;
    size_t outlen = 0, outoff = 0, outcap = 0;
    long long queued = 0, answered = 0;
    bool any_error = false, src_done = false;
    rc = 0;
    for (;;) {
        /* Take requests from the source while the window allows. */
        while (!src_done && queued - answered < SEND_WINDOW && outlen - outoff < OUT_HIGH_WATER) {
            const char *line;
            size_t len;
            int r = frame_next(&src, &line, &len);
            if (r < 0) {
                errorf("an input line is longer than %u bytes", MAX_LINE);
                rc = EXIT_IO;
                goto done;
            }
            if (r == 0) {
                if (!src_eof)
                    break;
                if (src.len == src.start) {
                    src_done = true;
                    break;
                }
                /* A last line without its '\n'. */
                size_t avail;
                char *p = frame_space(&src, 1, &avail);
                if (!p) {
                    errorf("out of memory");
                    rc = EXIT_IO;
                    goto done;
                }
                *p = '\n';
                frame_commit(&src, 1);
                continue;
            }
            if (is_blank(line, len))
                continue;
            if (outoff > 0 && outoff == outlen)
                outoff = outlen = 0;
            if (outlen + len + 1 > outcap) {
                size_t cap = outcap ? outcap : 65536;
                while (cap < outlen + len + 1)
                    cap *= 2;
                char *n = realloc(out, cap);
                if (!n) {
                    errorf("out of memory");
                    rc = EXIT_IO;
                    goto done;
                }
                out = n;
                outcap = cap;
            }
            memcpy(out + outlen, line, len);
            out[outlen + len] = '\n';
            outlen += len + 1;
            queued++;
        }
        if (src_done && outoff == outlen && answered >= queued)
            break;

        struct pollfd fds[2] = {{.fd = cl.fd, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
        if (outoff < outlen)
            fds[0].events |= POLLOUT;
        bool want_stdin = !src_eof && queued - answered < SEND_WINDOW && outlen - outoff < OUT_HIGH_WATER;
        if (flush_out() < 0) {
            rc = EXIT_IO;
            goto done;
        }
        int64_t t = answered < queued ? ctl->timeout_ms : 0;
        int n = poll(fds, want_stdin ? 2 : 1, t > 0 ? (int)(t > INT32_MAX ? INT32_MAX : t) : -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            errorf("poll: %s", strerror(errno));
            rc = EXIT_IO;
            goto done;
        }
        if (n == 0) {
            errorf("%s did not answer within %lld ms (%lld of %lld requests answered)", ctl->server,
                   (long long)ctl->timeout_ms, answered, queued);
            rc = EXIT_IO;
            goto done;
        }
        if (want_stdin && fds[1].revents) {
            ssize_t r = read_some(STDIN_FILENO, &src);
            if (r == 0)
                src_eof = true;
            else if (r < 0 && errno != EAGAIN && errno != EINTR) {
                errorf("cannot read stdin: %s", strerror(errno));
                rc = EXIT_IO;
                goto done;
            }
        }
        if (fds[0].revents & POLLOUT) {
            ssize_t w = send(cl.fd, out + outoff, outlen - outoff, MSG_NOSIGNAL);
            if (w > 0)
                outoff += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                errorf("cannot send to %s: %s", ctl->server, strerror(errno));
                rc = EXIT_IO;
                goto done;
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read_some(cl.fd, &cl.in);
            if (r < 0 && errno != EAGAIN && errno != EINTR) {
                errorf("cannot read from %s: %s", ctl->server, strerror(errno));
                rc = EXIT_IO;
                goto done;
            }
            const char *line;
            size_t len;
            int fr;
            while ((fr = frame_next(&cl.in, &line, &len)) == 1) {
                put_line(line, len);
                json_t *j = json_loadb(line, len, 0, NULL);
                json_t *ok = json_object_get(j, "ok");
                if (ok) {
                    answered++;
                    if (!json_is_true(ok))
                        any_error = true;
                }
                json_decref(j);
            }
            if (fr < 0) {
                errorf("a reply from %s is longer than %u bytes", ctl->server, MAX_LINE);
                rc = EXIT_IO;
                goto done;
            }
            if (r == 0) {
                if (answered < queued || !src_done) {
                    errorf("%s closed the connection (%lld of %lld requests answered)", ctl->server, answered,
                           queued);
                    rc = EXIT_IO;
                }
                goto done;
            }
        }
    }
done:
    if (flush_out() < 0 && rc == 0)
        rc = EXIT_IO;
    free(out);
    frame_free(&src);
    client_close(&cl);
    if (rc)
        return rc;
    return any_error ? EXIT_REPLY : 0;
}

struct tail_args {
    const char *group;
    const char *types;
    bool no_ack;
};

static int tail_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct tail_args *a = state;
    if (c == O_GROUP)
        a->group = arg;
    else if (c == O_TYPES)
        a->types = arg;
    else if (c == O_NO_ACK)
        a->no_ack = true;
    else
        return usage_error(ctl, "unexpected option");
    return 0;
}

static void on_signal(int sig)
{
    int saved = errno;
    interrupted = 1;
    if (sig_pipe[1] >= 0 && write(sig_pipe[1], "", 1) < 0) {
        /* full: a wake-up is already pending */
    }
    errno = saved;
}

static int cmd_tail(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"group", required_argument, NULL, O_GROUP},
        {"types", required_argument, NULL, O_TYPES},
        {"no-ack", no_argument, NULL, O_NO_ACK},
        {0, 0, 0, 0},
    };
    struct tail_args a = {.group = DEFAULT_GROUP};
    int rc = parse_options(ctl, argc, argv, opts, tail_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);

    json_t *sub = json_pack("{s:s,s:s}", "op", "subscribe", "group", a.group);
    if (!sub)
        return usage_error(ctl, "--group is not valid UTF-8");
    if (a.types) {
        json_t *types = json_array();
        char *copy = strdup(a.types), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (event_type_parse(t) < 0) {
                rc = usage_error(ctl,
                                 "--types: unknown event type \"%s\" (retry, give_up, suppress, sender_alert, "
                                 "domain_throttled)",
                                 t);
                free(copy);
                json_decref(types);
                json_decref(sub);
                return rc;
            }
            json_array_append_new(types, json_string(t));
        }
        free(copy);
        if (json_array_size(types) == 0) {
            json_decref(types);
            json_decref(sub);
            return usage_error(ctl, "--types: name at least one event type");
        }
        json_object_set_new(sub, "types", types);
    }

    /* Ctrl-C is the normal end of tail: it ends the wait for the next
     * event, and the command exits 0. */
    if (pipe(sig_pipe) < 0 || fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK) < 0 ||
        fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK) < 0) {
        errorf("pipe: %s", strerror(errno));
        return EXIT_IO;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct client cl = {.fd = -1};
    rc = client_open(&cl, ctl);
    if (rc == 0 && send_json(&cl, sub) < 0)
        rc = EXIT_IO;
    json_decref(sub);
    const char *raw;
    size_t len;
    json_t *reply = rc ? NULL : read_reply(&cl, &raw, &len);
    if (!rc && !reply)
        rc = interrupted ? 0 : EXIT_IO;
    if (reply && !json_is_true(json_object_get(reply, "ok"))) {
        if (ctl->json)
            put_line(raw, len);
        render_error(reply);
        rc = EXIT_REPLY;
    }
    json_decref(reply);
    if (rc || interrupted) {
        client_close(&cl);
        flush_out();
        return rc;
    }
    if (!ctl->json)
        fprintf(stderr, "reboundctl: following events as group \"%s\" on %s (Ctrl-C to stop)\n", a.group,
                ctl->server);

    while (!interrupted) {
        const char *line;
        size_t n;
        if (flush_out() < 0) {
            rc = EXIT_IO;
            break;
        }
        int r = read_line(&cl, 0, &line, &n);
        if (r == 0)
            break;
        if (r < 0) {
            rc = EXIT_IO;
            break;
        }
        json_t *j = json_loadb(line, n, 0, NULL);
        if (!json_is_object(j)) {
            json_decref(j);
            continue;
        }
        json_t *ok = json_object_get(j, "ok");
        if (ok) {
            /* The answer to an ack. */
            if (!json_is_true(ok))
                render_error(j);
            json_decref(j);
            continue;
        }
        if (ctl->json)
            put_line(line, n);
        else
            render_event(j);
        /* Acknowledge only what the reader has really got. */
        if (flush_out() < 0) {
            json_decref(j);
            rc = EXIT_IO;
            break;
        }
        json_t *eid = json_object_get(j, "eid");
        if (!a.no_ack && json_is_string(eid)) {
            json_t *ack = json_pack("{s:s,s:[O]}", "op", "ack", "ids", eid);
            int s = send_json(&cl, ack);
            json_decref(ack);
            if (s < 0) {
                json_decref(j);
                rc = interrupted ? 0 : EXIT_IO;
                break;
            }
        }
        json_decref(j);
    }
    client_close(&cl);
    return rc;
}

/* ---- offline: classify and check-policy ----------------------------- */

/* Answers one input line with the line the daemon's classify op would
 * send. Never fails: an invalid line gets an error line. *ok says which. */
static char *classify_line(const struct policy *p, const struct proto_limits *lim, const char *line, size_t len,
                           bool *ok, size_t *outlen)
{
    char msg[300];
    json_error_t jerr;
    *ok = false;
    if (is_blank(line, len))
        return reply_error(NULL, ERR_BAD_REQUEST, "empty line: expected a JSON object", outlen);
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(msg, sizeof msg, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        return reply_error(NULL, ERR_BAD_REQUEST, msg, outlen);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return reply_error(NULL, ERR_BAD_REQUEST, "expected a JSON object {\"code\",\"enhanced\",\"text\"}", outlen);
    }
    /* The daemon's own validation, so that offline and online answers
     * cannot differ: the line becomes a classify request. */
    json_object_set_new(root, "op", json_string("classify"));
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        return reply_error(NULL, ERR_INTERNAL, "cannot encode the line", outlen);
    struct request r;
    struct proto_error perr;
    char *out;
    if (request_parse(text, strlen(text), lim, &r, &perr) != 0) {
        out = reply_error(r.req, perr.code, perr.message, outlen);
    } else {
        struct classification c;
        classify_reply(p, r.code, r.enhanced, r.text, &c);
        out = reply_ok(explain_classification(p, &c), r.req, outlen);
        *ok = out != NULL;
    }
    request_free(&r);
    free(text);
    if (!out) {
        errorf("out of memory");
        exit(EXIT_IO);
    }
    return out;
}

static int classify_stream(const struct policy *p)
{
    struct proto_limits lim;
    proto_limits_default(&lim);
    struct frame in;
    frame_init(&in, MAX_LINE);
    bool eof = false, any_error = false;
    int rc = 0;
    if (isatty(STDIN_FILENO))
        fputs("reboundctl: reading NDJSON lines {\"code\",\"enhanced\",\"text\"} from stdin (Ctrl-D ends)\n",
              stderr);
    for (;;) {
        const char *line;
        size_t len;
        int r = frame_next(&in, &line, &len);
        if (r == 1) {
            bool ok;
            size_t n;
            char *out = classify_line(p, &lim, line, len, &ok, &n);
            fwrite(out, 1, n, stdout);
            free(out);
            any_error |= !ok;
            continue;
        }
        if (r < 0) {
            errorf("an input line is longer than %u bytes", MAX_LINE);
            rc = EXIT_IO;
            break;
        }
        if (eof) {
            if (in.len == in.start)
                break;
            size_t avail;
            char *sp = frame_space(&in, 1, &avail);
            if (!sp) {
                errorf("out of memory");
                rc = EXIT_IO;
                break;
            }
            *sp = '\n'; /* the last line had no '\n' */
            frame_commit(&in, 1);
            continue;
        }
        /* About to wait for input: whoever feeds us line by line must
         * see the answers so far. */
        if (flush_out() < 0) {
            rc = EXIT_IO;
            break;
        }
        ssize_t got = read_some(STDIN_FILENO, &in);
        if (got < 0) {
            errorf("cannot read stdin: %s", strerror(errno));
            rc = EXIT_IO;
            break;
        }
        eof = got == 0;
    }
    frame_free(&in);
    if (flush_out() < 0 && rc == 0)
        rc = EXIT_IO;
    return rc ? rc : any_error ? EXIT_REPLY : 0;
}

static int check_policy(const struct ctl *ctl, const char *path)
{
    char err[1024] = "";
    struct policy *p = policy_load_file(path, err, sizeof err);
    if (!p) {
        if (ctl->json) {
            char *line = reply_error(NULL, "bad_policy", err, NULL);
            if (line)
                fputs(line, stdout);
            free(line);
        }
        errorf("%s", err);
        flush_out();
        return EXIT_REPLY;
    }
    if (ctl->json) {
        json_t *o = json_pack("{s:s,s:i,s:I}", "policy", path, "classes", p->nclasses, "rules", (json_int_t)p->nrules);
        char *line = reply_ok(o, NULL, NULL);
        if (line)
            fputs(line, stdout);
        free(line);
    } else
        printf("%s: ok, %d classes, %zu rules\n", path, p->nclasses, p->nrules);
    policy_free(p);
    return flush_out() < 0 ? EXIT_IO : 0;
}

struct classify_args {
    const char *policy, *code, *enhanced, *text, *req;
    bool check;
};

static int classify_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct classify_args *a = state;
    switch (c) {
    case O_POLICY:
        a->policy = arg;
        break;
    case O_CODE:
        a->code = arg;
        break;
    case O_ENHANCED:
        a->enhanced = arg;
        break;
    case O_TEXT:
        a->text = arg;
        break;
    case O_CHECK:
        a->check = true;
        break;
    default:
        return usage_error(ctl, "unexpected option");
    }
    return 0;
}

static int cmd_classify(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"policy", required_argument, NULL, O_POLICY},
        {"code", required_argument, NULL, O_CODE},
        {"enhanced", required_argument, NULL, O_ENHANCED},
        {"text", required_argument, NULL, O_TEXT},
        {"check", no_argument, NULL, O_CHECK},
        {0, 0, 0, 0},
    };
    struct classify_args a = {.policy = REBOUND_DEFAULT_POLICY};
    int rc = parse_options(ctl, argc, argv, opts, classify_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    bool single = a.code || a.enhanced || a.text;
    if (a.check && single)
        return usage_error(ctl, "--check takes no reply to classify");
    if (a.check)
        return check_policy(ctl, a.policy);

    json_t *one = NULL;
    if (single) {
        one = json_object();
        if (a.code) {
            long long code;
            if (parse_int(a.code, 0, 999, &code) < 0) {
                json_decref(one);
                return usage_error(ctl, "--code: \"%s\" is not an SMTP reply code", a.code);
            }
            json_object_set_new(one, "code", json_integer(code));
        }
        if (a.enhanced)
            json_object_set_new(one, "enhanced", json_string(a.enhanced));
        if (a.text) {
            json_t *t = json_string(a.text);
            if (!t) {
                json_decref(one);
                return usage_error(ctl, "--text is not valid UTF-8");
            }
            json_object_set_new(one, "text", t);
        }
    }

    char err[1024] = "";
    struct policy *p = policy_load_file(a.policy, err, sizeof err);
    if (!p) {
        json_decref(one);
        errorf("%s", err);
        return EXIT_REPLY;
    }
    if (!single) {
        rc = classify_stream(p);
        policy_free(p);
        return rc;
    }

    struct proto_limits lim;
    proto_limits_default(&lim);
    char *text = json_dumps(one, JSON_COMPACT);
    json_decref(one);
    bool ok;
    size_t n;
    char *line = classify_line(p, &lim, text, strlen(text), &ok, &n);
    free(text);
    policy_free(p);
    if (ctl->json)
        fwrite(line, 1, n, stdout);
    else {
        json_t *j = json_loadb(line, n, 0, NULL);
        if (ok)
            render_reply(j);
        else
            render_error(j);
        json_decref(j);
    }
    free(line);
    if (flush_out() < 0)
        return EXIT_IO;
    return ok ? 0 : EXIT_REPLY;
}

static int cmd_check_policy(struct ctl *ctl, int argc, char **argv)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the policy FILE is missing" : "one policy FILE only");
    return check_policy(ctl, argv[optind]);
}

static int cmd_help(struct ctl *ctl, int argc, char **argv);

static const struct command commands[] = {
    {"bounce", cmd_bounce, bounce_help},
    {"delivered", cmd_delivered, delivered_help},
    {"cancel", cmd_cancel, cancel_help},
    {"get", cmd_get, get_help},
    {"suppressed", cmd_suppressed, suppressed_help},
    {"unsuppress", cmd_unsuppress, unsuppress_help},
    {"domain", cmd_domain, domain_help},
    {"stats", cmd_stats, stats_help},
    {"ping", cmd_ping, ping_help},
    {"send", cmd_send, send_help},
    {"tail", cmd_tail, tail_help},
    {"classify", cmd_classify, classify_help},
    {"check-policy", cmd_check_policy, check_policy_help},
    {"help", cmd_help, main_help},
};

static const struct command *command_find(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int cmd_help(struct ctl *ctl, int argc, char **argv)
{
    if (argc <= 1) {
        fputs(main_help, stdout);
        return 0;
    }
    const struct command *cmd = command_find(argv[1]);
    if (!cmd) {
        ctl->cmd = NULL;
        return usage_error(ctl, "unknown command \"%s\"", argv[1]);
    }
    fputs(cmd->help, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct ctl ctl = {
        .server = getenv("REBOUND_SERVER"),
        .token = getenv("REBOUND_TOKEN"),
        .timeout_ms = DEFAULT_TIMEOUT_MS,
        .json = !isatty(STDOUT_FILENO),
    };
    if (!ctl.server || !ctl.server[0])
        ctl.server = DEFAULT_SERVER;

    static const struct option opts[] = {COMMON_OPTIONS, {"version", no_argument, NULL, O_VERSION}, {0, 0, 0, 0}};
    opterr = 0;
    int c;
    /* '+': stop at the command; what follows belongs to it. */
    while ((c = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
        if (c == O_VERSION) {
            printf("reboundctl %s\n", REBOUND_VERSION);
            return 0;
        }
        int rc = common_option(&ctl, c, optarg, argv);
        if (rc == -2)
            return 0;
        if (rc > 0)
            return rc;
    }
    if (optind >= argc)
        return usage_error(&ctl, "no command given");
    const struct command *cmd = command_find(argv[optind]);
    if (!cmd)
        return usage_error(&ctl, "unknown command \"%s\"", argv[optind]);
    ctl.cmd = cmd->name;
    return cmd->run(&ctl, argc - optind, argv + optind);
}
