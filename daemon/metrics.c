/*
 * Prometheus metrics (text exposition format 0.0.4) over HTTP.
 *
 * The endpoint runs on the daemon's own loop: libmicrohttpd in its
 * "external epoll" mode hands us one epoll descriptor, which a uv_poll_t
 * watches; when it is readable, or when the time-out MHD asks for expires
 * (a uv_timer_t), MHD_run() does the HTTP work without blocking. So the
 * request handler runs on the loop thread like everything else and reads
 * struct daemon directly: no copy, no lock, and a scrape always sees one
 * consistent state. The price is that rendering happens on the loop; it is
 * a few microseconds per series, plus one walk over the schedule for the
 * due counts (stats_due, which the stats op uses too).
 *
 * Every metric is listed in docs/operations.md; keep the two in step.
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "config/addr.h"
#include "queue/policy.h"
#include "queue/sched.h"
#include "redis/redis_link.h"
#include "schedule/entry.h"
#include "schedule/learned.h"
#include "store/store.h"

#ifdef REBOUND_HAVE_MHD
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#endif

/* ---- rendering ----------------------------------------------------------- */

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the text format wants (\\, \", \n). */
static void label_value(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f), fputc(*s, f);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static void sample_u64(FILE *f, const char *name, const char *label, const char *value, uint64_t n)
{
    fputs(name, f);
    if (label) {
        fprintf(f, "{%s=", label);
        label_value(f, value);
        fputc('}', f);
    }
    fprintf(f, " %llu\n", (unsigned long long)n);
}

static void histogram_render(FILE *f, const char *name, const char *help, const struct histogram *h)
{
    static const uint64_t bounds[HISTOGRAM_NBOUNDS] = HISTOGRAM_BOUNDS;
    family(f, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < HISTOGRAM_NBOUNDS; i++) {
        cum += h->buckets[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bounds[i] / 1e9, (unsigned long long)cum);
    }
    cum += h->buckets[HISTOGRAM_NBOUNDS];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    fprintf(f, "%s_sum %.9f\n", name, (double)h->sum_ns / 1e9);
    fprintf(f, "%s_count %llu\n", name, (unsigned long long)h->count);
}

char *metrics_render(size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        xmalloc_failed(0);
    const struct policy *p = rbd->policy;

    family(f, "rebound_build_info", "gauge", "Always 1; the labels say which reboundd this is.");
    fprintf(f, "rebound_build_info{version=\"%s\"} 1\n", REBOUND_VERSION);
    family(f, "rebound_start_time_seconds", "gauge", "When reboundd started, in seconds since the Unix epoch.");
    fprintf(f, "rebound_start_time_seconds %.3f\n", (double)rbd->started_ms / 1000.0);
    family(f, "rebound_loaded", "gauge", "1 once the schedule has been read back from Redis at start.");
    fprintf(f, "rebound_loaded %d\n", rbd->loaded ? 1 : 0);

    family(f, "rebound_pending", "gauge", "Retries scheduled and not yet fired, by class.");
    for (int i = 0; p && i < p->nclasses; i++)
        sample_u64(f, "rebound_pending", "class", p->classes[i].name, rbd->pending_by_class[i]);
    family(f, "rebound_awaiting", "gauge", "Retries fired whose outcome the sender has not reported yet.");
    fprintf(f, "rebound_awaiting %llu\n", (unsigned long long)rbd->nawaiting);
    struct due_counts w = entry_due_counts(now_ms());
    family(f, "rebound_due", "gauge", "Pending retries due within the next minute, hour or day (overdue ones included).");
    sample_u64(f, "rebound_due", "within", "minute", w.minute);
    sample_u64(f, "rebound_due", "within", "hour", w.hour);
    sample_u64(f, "rebound_due", "within", "day", w.day);

    family(f, "rebound_events_total", "counter", "Events emitted (written to the event stream), by type.");
    for (int t = 0; t < EV__COUNT; t++)
        sample_u64(f, "rebound_events_total", "type", event_type_name((enum event_type)t), rbd->events_emitted[t]);
    family(f, "rebound_reports_total", "counter", "Bounce reports accepted: written to Redis and answered.");
    fprintf(f, "rebound_reports_total %llu\n", (unsigned long long)rbd->reports);
    family(f, "rebound_reports_by_class_total", "counter", "Bounce reports accepted, by class and action.");
    for (int i = 0; i < counters.nreports; i++) {
        for (int a = 0; a < COUNTERS_NACTIONS; a++) {
            fputs("rebound_reports_by_class_total{class=", f);
            label_value(f, counters.reports[i].name);
            fprintf(f, ",action=\"%s\"} %llu\n", action_name((enum action)a),
                    (unsigned long long)counters.reports[i].n[a]);
        }
    }

    histogram_render(f, "rebound_request_duration_seconds",
                     "Time from reading a request line to its reply being ready (Redis write included).",
                     &rbd->request_latency);
    family(f, "rebound_requests_in_flight", "gauge", "Requests read and not answered yet, all connections.");
    fprintf(f, "rebound_requests_in_flight %llu\n", (unsigned long long)rbd->requests_waiting);
    family(f, "rebound_errors_total", "counter", "Error replies sent to clients, by error code.");
    for (int i = 0; i < counters.nerrors; i++)
        sample_u64(f, "rebound_errors_total", "code", counters.errors[i].code, counters.errors[i].n);
    if (counters.error_other)
        sample_u64(f, "rebound_errors_total", "code", "other", counters.error_other);

    histogram_render(f, "rebound_redis_roundtrip_seconds", "Time from sending a command to Redis to its reply.",
                     &rbd->redis_rtt);
    family(f, "rebound_redis_up", "gauge", "1 when the Redis link is connected and ready.");
    fprintf(f, "rebound_redis_up %d\n", store_ready() ? 1 : 0);
    family(f, "rebound_redis_commands_in_flight", "gauge", "Commands sent to Redis and not answered yet.");
    fprintf(f, "rebound_redis_commands_in_flight %llu\n",
            (unsigned long long)(rbd->link ? redis_link_inflight(rbd->link) : 0));
    family(f, "rebound_redis_connects_total", "counter", "Times the Redis link became ready (the first included).");
    fprintf(f, "rebound_redis_connects_total %llu\n", (unsigned long long)rbd->redis_connects);

    family(f, "rebound_connections", "gauge", "Open client connections.");
    fprintf(f, "rebound_connections %d\n", rbd->nconns);
    family(f, "rebound_connections_accepted_total", "counter", "Client connections accepted.");
    fprintf(f, "rebound_connections_accepted_total %llu\n", (unsigned long long)rbd->conns_accepted);
    family(f, "rebound_connections_refused_total", "counter",
           "Client connections refused because max_connections were open.");
    fprintf(f, "rebound_connections_refused_total %llu\n", (unsigned long long)rbd->conns_refused);

    family(f, "rebound_reloads_total", "counter", "SIGHUP reloads, by result: applied, or refused (old settings kept).");
    sample_u64(f, "rebound_reloads_total", "result", "ok", rbd->reloads_ok);
    sample_u64(f, "rebound_reloads_total", "result", "refused", rbd->reloads_failed);

    /* learned timing (schedule/learned.h) */
    family(f, "rebound_learned_domains", "gauge", "Receiving domains with learned timing kept in memory.");
    fprintf(f, "rebound_learned_domains %llu\n", (unsigned long long)learned_count());
    family(f, "rebound_learned_memory_bytes", "gauge", "Memory held by the learned timing of every domain.");
    fprintf(f, "rebound_learned_memory_bytes %llu\n", (unsigned long long)learned_memory());
    family(f, "rebound_learned_retries_total", "counter", "Retries scheduled at a domain's learned time instead of the table's.");
    fprintf(f, "rebound_learned_retries_total %llu\n", (unsigned long long)learned_retries);

    if (fclose(f) != 0 || !buf)
        xmalloc_failed(0);
    *len = n;
    return buf;
}

/* ---- the HTTP endpoint ----------------------------------------------------- */

#ifdef REBOUND_HAVE_MHD

static struct MHD_Daemon *mhd;
static uv_poll_t mhd_poll;
static uv_timer_t mhd_timer;
static bool http_on;

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_debug("metrics: http: %s", line);
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_data_size,
                               void **con_cls)
{
    static int first_call_marker;
    /* MHD calls once with the headers, then with the body, if any. */
    if (*con_cls == NULL) {
        *con_cls = &first_call_marker;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* a body on a GET means nothing here */
        return MHD_YES;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET /metrics here\n");
    if (strcmp(url, "/metrics") != 0)
        return respond_text(conn, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n");
    size_t len;
    char *body = metrics_render(&len);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

static void mhd_timer_cb(uv_timer_t *t);

/* Runs MHD's pending work and arms the timer for the next thing it waits
 * for: 0 when it still has ready connections (its epoll is edge-triggered,
 * so they will not wake our poll again), a connection time-out, or none. */
static void mhd_step(void)
{
    MHD_run(mhd);
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(mhd, &to) == MHD_YES)
        uv_timer_start(&mhd_timer, mhd_timer_cb, (uint64_t)to, 0);
    else
        uv_timer_stop(&mhd_timer);
}

static void mhd_timer_cb(uv_timer_t *t)
{
    mhd_step();
}

static void mhd_poll_cb(uv_poll_t *p, int status, int events)
{
    if (status < 0)
        log_debug("metrics: poll: %s", uv_strerror(status));
    mhd_step();
}

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return false;
}

int metrics_start(const char *hostport, char *err, size_t errlen)
{
    struct addr a;
    char why[200];
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    if (addr_parse_listen(hostport, &a, why, sizeof why) != 0) {
        snprintf(err, errlen, "metrics_listen: %s", why);
        return -1;
    }
    const char *host = a.host;
    int port = a.port;
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0) {
        if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
            snprintf(err, errlen, "metrics_listen: \"%s\" is not an IP address", host);
            return -1;
        }
        flags |= MHD_USE_IPv6;
    }
    mhd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR,
                           (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
                           MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger,
                           NULL, MHD_OPTION_END);
    if (!mhd) {
        snprintf(err, errlen, "metrics_listen: cannot listen on %s (address in use, or not ours?)", hostport);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        MHD_stop_daemon(mhd);
        mhd = NULL;
        snprintf(err, errlen, "metrics_listen: libmicrohttpd has no epoll descriptor");
        return -1;
    }
    uv_poll_init(rbd->loop, &mhd_poll, info->epoll_fd);
    uv_timer_init(rbd->loop, &mhd_timer);
    uv_poll_start(&mhd_poll, UV_READABLE, mhd_poll_cb);
    http_on = true;
    if (!is_loopback((struct sockaddr *)&addr))
        log_warn("metrics: %s is not loopback: anyone who can reach it can read the queue's figures", hostport);
    log_info("metrics on http://%s/metrics", hostport);
    return 0;
}

void metrics_stop(void)
{
    if (!http_on)
        return;
    http_on = false;
    /* Off libuv's epoll before MHD closes the descriptor. */
    uv_close((uv_handle_t *)&mhd_poll, NULL);
    uv_close((uv_handle_t *)&mhd_timer, NULL);
    MHD_stop_daemon(mhd);
    mhd = NULL;
}

bool metrics_http_available(void)
{
    return true;
}

#else /* !REBOUND_HAVE_MHD */

int metrics_start(const char *hostport, char *err, size_t errlen)
{
    snprintf(err, errlen, "metrics_listen: this reboundd was built without libmicrohttpd (REBOUND_METRICS=OFF)");
    return -1;
}

void metrics_stop(void)
{
}

bool metrics_http_available(void)
{
    return false;
}

#endif
