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
 * The same listener serves the status page: web/status.html at / (built
 * into the binary) and the document it reads at /status.json.
 *
 * Every metric, and the status document's shape, is in docs/operations.md;
 * keep them in step.
 */
#include "metrics.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "config/addr.h"
#include "events/events.h"
#include "net/peer.h"
#include "proto/event.h"
#include "queue/policy.h"
#include "queue/sched.h"
#include "redis/redis_link.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "queue/shard.h"
#include "schedule/learned.h"
#include "schedule/lease.h"
#include "store/store.h"

#ifdef REBOUND_HAVE_MHD
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#endif

/* ---- what only Redis knows: groups, stream, suppressed list -------------- */

/* The consumer groups' lag and pending counts, the stream's length, the
 * suppressed list's size and the latest events live in Redis. A scrape must
 * never wait on Redis (a slow or absent Redis would stall Prometheus and
 * the status page with it), so a timer reads them every OBSERVE_EVERY_MS
 * into this cache and both pages answer from it: the figures are at most
 * that old. One round of reads is in flight at a time. */
#define OBSERVE_EVERY_MS 2000
#define LATEST_EVENTS 20

static struct {
    json_t *groups; /* [{name, consumers, pending, lag}], NULL until read */
    json_t *latest; /* the newest events, newest first, as subscribers get them */
    long long stream_len, suppressed; /* -1 until read */
    int in_flight;                    /* replies of the current round still to come */
    uv_timer_t timer;
    bool timer_on;
} obs = {.stream_len = -1, .suppressed = -1};

#ifdef REBOUND_HAVE_MHD /* the cache is filled only while the endpoint runs */
/* A field of a flat array of names and values (an XINFO GROUPS entry). */
static const redisReply *info_field(const redisReply *g, const char *name)
{
    if (!g || g->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < g->elements; i += 2) {
        const redisReply *k = g->element[i];
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) && strcmp(k->str, name) == 0)
            return g->element[i + 1];
    }
    return NULL;
}

static json_t *info_integer(const redisReply *v)
{
    if (v && v->type == REDIS_REPLY_INTEGER)
        return json_integer(v->integer);
    return json_null(); /* Redis cannot tell a group's lag after some trims: "lag" is nil */
}

static void groups_cb(void *arg, redisReply *reply)
{
    obs.in_flight--;
    if (!reply || !obs.timer_on)
        return; /* the link went down (keep the last figures), or the endpoint stopped */
    json_t *arr = json_array();
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *g = reply->element[i];
            const redisReply *name = info_field(g, "name");
            if (!name || name->type != REDIS_REPLY_STRING)
                continue;
            json_t *o = json_object();
            json_object_set_new(o, "name", json_stringn(name->str, name->len));
            json_object_set_new(o, "consumers", info_integer(info_field(g, "consumers")));
            /* the daemon's own count added: it reads the groups with NOACK */
            json_t *pend = info_integer(info_field(g, "pending"));
            if (json_is_integer(pend))
                json_integer_set(pend, json_integer_value(pend) + events_group_pending(name->str));
            json_object_set_new(o, "pending", pend);
            json_object_set_new(o, "lag", info_integer(info_field(g, "lag")));
            json_array_append_new(arr, o);
        }
    }
    /* An error reply is the stream not existing yet: no groups. */
    json_decref(obs.groups);
    obs.groups = arr;
}

static void count_cb(void *arg, redisReply *reply)
{
    obs.in_flight--;
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        *(long long *)arg = reply->integer;
}

/* Appends to arr the events of a burst's batch entry (proto/event.h),
 * newest first, while arr holds fewer than LATEST_EVENTS. */
static void latest_batch(json_t *arr, const char *eid, const char *v, size_t len)
{
    size_t pos;
    long long n = event_batch_open(v, len, &pos);
    if (n < 1)
        return;
    json_t *batch = json_array();
    const char *body;
    size_t blen;
    char id[48];
    for (long long k = 0; k < n && event_batch_next(v, len, &pos, &body, &blen); k++) {
        size_t ln;
        char *line = event_batch_eid(eid, n, k, id, sizeof id) ? event_line(id, body, blen, &ln) : NULL;
        json_t *ev = line ? json_loadb(line, ln, 0, NULL) : NULL;
        free(line);
        if (ev)
            json_array_insert_new(batch, 0, ev);
    }
    for (size_t i = 0; i < json_array_size(batch) && json_array_size(arr) < LATEST_EVENTS; i++)
        json_array_append(arr, json_array_get(batch, i));
    json_decref(batch);
}

static void latest_cb(void *arg, redisReply *reply)
{
    obs.in_flight--;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || !obs.timer_on)
        return;
    json_t *arr = json_array();
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *en = reply->element[i];
        if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 || en->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *fv = en->element[1];
        const redisReply *batch = info_field(fv, "b");
        if (batch && batch->type == REDIS_REPLY_STRING) {
            latest_batch(arr, en->element[0]->str, batch->str, batch->len);
            continue;
        }
        const redisReply *body = info_field(fv, "e");
        if (!body || body->type != REDIS_REPLY_STRING)
            continue;
        size_t n;
        char *line = event_line(en->element[0]->str, body->str, body->len, &n);
        if (!line)
            continue;
        json_t *ev = json_loadb(line, n, 0, NULL);
        free(line);
        if (ev)
            json_array_append_new(arr, ev);
    }
    json_decref(obs.latest);
    obs.latest = arr;
}

/* Sends one round of reads, unless one is still out or Redis is down. */
static void observe_refresh(void)
{
    if (obs.in_flight || !store_ready())
        return;
    if (store_groups_info(groups_cb, NULL) == 0)
        obs.in_flight++;
    if (store_stream_len(count_cb, &obs.stream_len) == 0)
        obs.in_flight++;
    if (store_suppressed_len(count_cb, &obs.suppressed) == 0)
        obs.in_flight++;
    if (store_events_latest(LATEST_EVENTS, latest_cb, NULL) == 0)
        obs.in_flight++;
}

static void observe_timer_cb(uv_timer_t *t)
{
    observe_refresh();
}

static void observe_start(void)
{
    uv_timer_init(rbd->loop, &obs.timer);
    /* The first round soon after start, so a first scrape has figures. */
    uv_timer_start(&obs.timer, observe_timer_cb, 100, OBSERVE_EVERY_MS);
    uv_unref((uv_handle_t *)&obs.timer);
    obs.timer_on = true;
}

static void observe_stop(void)
{
    if (!obs.timer_on)
        return;
    obs.timer_on = false;
    uv_close((uv_handle_t *)&obs.timer, NULL);
    /* Replies still out find timer_on false and keep nothing. */
    json_decref(obs.groups);
    json_decref(obs.latest);
    obs.groups = obs.latest = NULL;
}
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

/* Firing lateness, domains, and what the observe timer last read from
 * Redis (a figure not read yet has its family and no sample). */
static void render_observed(FILE *f)
{
    static const int64_t bounds[LATENESS_NBOUNDS] = LATENESS_BOUNDS_MS;
    const char *name = "rebound_firing_lateness_seconds";
    family(f, name, "histogram", "Fire time minus due time of each retry fired.");
    uint64_t cum = 0;
    for (int i = 0; i < LATENESS_NBOUNDS; i++) {
        cum += lateness.buckets[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bounds[i] / 1e3, (unsigned long long)cum);
    }
    cum += lateness.buckets[LATENESS_NBOUNDS];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    fprintf(f, "%s_sum %.3f\n", name, (double)lateness.sum_ms / 1e3);
    fprintf(f, "%s_count %llu\n", name, (unsigned long long)lateness.count);

    json_t *dstats = domains_stats_json(now_ms());
    family(f, "rebound_domains_throttled", "gauge", "Receiving domains backed off now.");
    fprintf(f, "rebound_domains_throttled %zu\n", json_array_size(json_object_get(dstats, "throttled")));
    family(f, "rebound_domains_held", "gauge", "Receiving domains on hold.");
    fprintf(f, "rebound_domains_held %llu\n", (unsigned long long)domains_held_count(now_ms()));
    /* with shards: the domain throttles and alerts shared across instances */
    json_t *shared = json_object_get(dstats, "shared");
    if (shared) {
        family(f, "rebound_domains_shared_throttles_total", "counter",
               "Shared domain throttles: began here (announced), adopted from another instance, ended early elsewhere.");
        static const char *const how[] = {"began", "adopted", "ended"};
        for (size_t i = 0; i < sizeof how / sizeof how[0]; i++)
            fprintf(f, "rebound_domains_shared_throttles_total{how=\"%s\"} %lld\n", how[i],
                    (long long)json_integer_value(json_object_get(shared, how[i])));
        family(f, "rebound_domains_shared_polls_total", "counter", "Reads of the shared domain throttles, by result.");
        fprintf(f, "rebound_domains_shared_polls_total{result=\"ok\"} %lld\n",
                (long long)json_integer_value(json_object_get(shared, "polls")));
        fprintf(f, "rebound_domains_shared_polls_total{result=\"failed\"} %lld\n",
                (long long)json_integer_value(json_object_get(shared, "poll_failures")));
        family(f, "rebound_sender_alerts_shared_total", "counter",
               "sender_alert windows claimed across instances: raised here, or left to another instance's claim.");
        fprintf(f, "rebound_sender_alerts_shared_total{result=\"raised\"} %lld\n",
                (long long)json_integer_value(json_object_get(shared, "alerts_raised")));
        fprintf(f, "rebound_sender_alerts_shared_total{result=\"deduped\"} %lld\n",
                (long long)json_integer_value(json_object_get(shared, "alerts_deduped")));
    }
    json_decref(dstats);

    family(f, "rebound_suppressed_addresses", "gauge", "Addresses on the suppressed list.");
    if (obs.suppressed >= 0)
        fprintf(f, "rebound_suppressed_addresses %lld\n", obs.suppressed);
    family(f, "rebound_stream_length", "gauge", "Entries in the event stream.");
    if (obs.stream_len >= 0)
        fprintf(f, "rebound_stream_length %lld\n", obs.stream_len);

    family(f, "rebound_consumer_lag", "gauge", "Events in the stream not delivered to the consumer group yet, by group.");
    size_t i;
    json_t *g;
    json_array_foreach(obs.groups, i, g) {
        json_t *lag = json_object_get(g, "lag");
        if (json_is_integer(lag))
            sample_u64(f, "rebound_consumer_lag", "group", json_string_value(json_object_get(g, "name")),
                       (uint64_t)json_integer_value(lag));
    }
    family(f, "rebound_consumer_pending", "gauge",
           "Events delivered to the consumer group and not acknowledged yet, by group.");
    json_array_foreach(obs.groups, i, g) {
        json_t *pend = json_object_get(g, "pending");
        if (json_is_integer(pend))
            sample_u64(f, "rebound_consumer_pending", "group", json_string_value(json_object_get(g, "name")),
                       (uint64_t)json_integer_value(pend));
    }
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
    family(f, "rebound_redis_wait_batches_total", "counter",
           "Write batches followed by a WAIT for replicas (redis_min_replicas), by result.");
    sample_u64(f, "rebound_redis_wait_batches_total", "result", "ok", rbd->wait_batches - rbd->wait_short);
    sample_u64(f, "rebound_redis_wait_batches_total", "result", "short", rbd->wait_short);
    family(f, "rebound_redis_master_changes_total", "counter",
           "Times the Sentinels or the cluster's seeds named another server as the master (a failover followed).");
    fprintf(f, "rebound_redis_master_changes_total %llu\n",
            (unsigned long long)(rbd->link ? redis_link_master_changes(rbd->link) : 0));
    family(f, "rebound_redis_cluster_redirects_total", "counter",
           "Redis Cluster answers (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY) that sent the link back to the seeds.");
    fprintf(f, "rebound_redis_cluster_redirects_total %llu\n",
            (unsigned long long)(rbd->link ? redis_link_redirects(rbd->link) : 0));
    /* shards apart on a Redis Cluster: the links to the shards' slots */
    if (store_spread()) {
        family(f, "rebound_redis_shard_links_ready", "gauge",
               "Shards whose link to their slot's primary is ready (shards on a Redis Cluster).");
        fprintf(f, "rebound_redis_shard_links_ready %d\n", store_spread_ready_count());
        family(f, "rebound_redis_shard_link_moves_total", "counter",
               "Redirects and primary changes the shards' links followed (shards on a Redis Cluster).");
        fprintf(f, "rebound_redis_shard_link_moves_total %llu\n", (unsigned long long)store_spread_redirects());
    }
    /* several reboundd on one Redis: the lease (schedule/lease.c) */
    if (rbd->cfg.lease_ttl_ms > 0) {
        static const char *const roles[] = {"none", "standby", "loading", "owner", "fenced"};
        family(f, "rebound_lease_role", "gauge", "1 for this instance's role in the lease on the schedule.");
        for (int r = 1; r < 5; r++)
            fprintf(f, "rebound_lease_role{role=\"%s\"} %d\n", roles[r], rbd->lease_role == r ? 1 : 0);
        family(f, "rebound_lease_epoch", "gauge", "The lease epoch this instance holds (0: none).");
        fprintf(f, "rebound_lease_epoch %lld\n", rbd->lease_epoch);
        family(f, "rebound_lease_takeovers_total", "counter", "Times this instance acquired the lease.");
        fprintf(f, "rebound_lease_takeovers_total %llu\n", (unsigned long long)rbd->lease_takeovers);
        family(f, "rebound_lease_fenced_writes_total", "counter", "Writes Redis refused as FENCED (the lease moved).");
        fprintf(f, "rebound_lease_fenced_writes_total %llu\n", (unsigned long long)rbd->lease_fenced_writes);
        family(f, "rebound_lease_renew_failures_total", "counter", "Lease renewals that got no answer.");
        fprintf(f, "rebound_lease_renew_failures_total %llu\n", (unsigned long long)rbd->lease_renew_failures);
        family(f, "rebound_lease_self_fenced_total", "counter",
               "Times this instance stopped serving: the lease lost, or not renewed in time.");
        fprintf(f, "rebound_lease_self_fenced_total %llu\n", (unsigned long long)rbd->lease_self_fenced);
        family(f, "rebound_forwarded_requests_total", "counter",
               "Requests a standby relayed to the owner (lease_forward), by result: failed ones were answered "
               "unavailable here.");
        sample_u64(f, "rebound_forwarded_requests_total", "result", "relayed", peer_forwarded() - peer_failed());
        sample_u64(f, "rebound_forwarded_requests_total", "result", "failed", peer_failed());
    }
    /* shards (schedule/lease.c): per instance; unowned is as this one saw it */
    if (rbd->cfg.lease_ttl_ms > 0 && rbd->cfg.shards >= 2) {
        int unowned = 0;
        for (int k = 0; k < lease_shards(); k++)
            unowned += lease_shard_owner_id(k)[0] == '\0';
        family(f, "rebound_shards_owned", "gauge", "Shards this instance holds, by state: serving, or loading.");
        fprintf(f, "rebound_shards_owned{state=\"serving\"} %d\n", shard_count(rbd->shards_served));
        fprintf(f, "rebound_shards_owned{state=\"loading\"} %d\n",
                shard_count(rbd->shards_held & ~rbd->shards_served));
        family(f, "rebound_cluster_shards_unowned", "gauge", "Shards no instance is known to hold.");
        fprintf(f, "rebound_cluster_shards_unowned %d\n", unowned);
        family(f, "rebound_shards_forwarded_total", "counter", "Requests relayed to another shard's owner.");
        fprintf(f, "rebound_shards_forwarded_total %llu\n", (unsigned long long)rbd->shards_forwarded);
        family(f, "rebound_shards_shed_total", "counter", "Shards given up to stay within the fair share.");
        fprintf(f, "rebound_shards_shed_total %llu\n", (unsigned long long)rbd->shards_shed);
    }

    family(f, "rebound_connections", "gauge", "Open client connections.");
    fprintf(f, "rebound_connections %d\n", rbd->nconns);
    family(f, "rebound_connections_accepted_total", "counter", "Client connections accepted.");
    fprintf(f, "rebound_connections_accepted_total %llu\n", (unsigned long long)rbd->conns_accepted);
    family(f, "rebound_connections_refused_total", "counter",
           "Client connections refused because max_connections were open.");
    fprintf(f, "rebound_connections_refused_total %llu\n", (unsigned long long)rbd->conns_refused);

    family(f, "rebound_reloads_total", "counter",
           "SIGHUP reloads, by result: ok (applied) or refused (the old settings kept).");
    sample_u64(f, "rebound_reloads_total", "result", "ok", rbd->reloads_ok);
    sample_u64(f, "rebound_reloads_total", "result", "refused", rbd->reloads_failed);

    render_observed(f);
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

#ifdef REBOUND_HAVE_MHD
/* ---- /status.json (docs/operations.md, "Status page") --------------------- */

#define DUE_BUCKETS 24
#define DUE_BUCKET_MS 3600000LL
#define TOP_DOMAINS_MAX 50

struct due_hist {
    int64_t from;
    uint64_t overdue, later, buckets[DUE_BUCKETS];
};

static void due_bucket(struct entry *e, void *arg)
{
    struct due_hist *h = arg;
    if (e->state != ENTRY_PENDING)
        return;
    int64_t in = e->node.due_ms - h->from;
    if (in < 0)
        h->overdue++;
    else if (in / DUE_BUCKET_MS < DUE_BUCKETS)
        h->buckets[in / DUE_BUCKET_MS]++;
    else
        h->later++;
}

/* What falls due in each hour of the next day: one walk over the schedule,
 * as for the due counts of /metrics. */
static json_t *due_json(int64_t now)
{
    struct due_hist h = {.from = now};
    if (rbd->sched)
        sched_foreach(rbd->sched, due_bucket, &h);
    json_t *b = json_array();
    for (int i = 0; i < DUE_BUCKETS; i++)
        json_array_append_new(b, json_integer((json_int_t)h.buckets[i]));
    return json_pack("{sIsIsIsosI}", "from", (json_int_t)now, "bucket_ms", (json_int_t)DUE_BUCKET_MS, "overdue",
                     (json_int_t)h.overdue, "buckets", b, "later", (json_int_t)h.later);
}

/* An element of arr whose member "domain" is name, or NULL. */
static json_t *by_domain(json_t *arr, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *d = json_string_value(json_object_get(v, "domain"));
        if (d && strcmp(d, name) == 0)
            return v;
    }
    return NULL;
}

/* One row of domains.top: its pending count with the held and throttled
 * marks, from the stats' throttled and (once holds exist) held lists. */
static json_t *domain_row(const char *name, json_int_t pending, json_t *throttled, json_t *held)
{
    json_t *o = json_pack("{sssI}", "domain", name, "pending", pending);
    json_t *h = by_domain(held, name);
    json_object_set_new(o, "held", json_boolean(h != NULL));
    json_t *until = h ? json_object_get(h, "until") : NULL;
    if (json_is_integer(until))
        json_object_set(o, "held_until", until);
    json_t *t = by_domain(throttled, name);
    json_object_set_new(o, "throttled", json_boolean(t != NULL));
    if (t) {
        json_t *tu = json_object_get(t, "until"), *tc = json_object_get(t, "class");
        if (tu)
            json_object_set(o, "throttled_until", tu);
        if (tc)
            json_object_set(o, "throttle_class", tc);
    }
    return o;
}

/* The pending count of a domain outside the top ten (domains_json). */
static json_int_t domain_pending(const char *name)
{
    json_t *d = domains_json(name, strlen(name), now_ms());
    json_int_t n = json_integer_value(json_object_get(d, "pending"));
    json_decref(d);
    return n;
}

static void add_marked(json_t *top, json_t *marked, json_t *throttled, json_t *held)
{
    size_t i;
    json_t *v;
    json_array_foreach(marked, i, v) {
        const char *name = json_string_value(json_object_get(v, "domain"));
        if (!name || by_domain(top, name) || json_array_size(top) >= TOP_DOMAINS_MAX)
            continue;
        json_array_append_new(top, domain_row(name, domain_pending(name), throttled, held));
    }
}

static json_t *domains_status_json(int64_t now)
{
    json_t *st = domains_stats_json(now);
    json_t *throttled = json_object_get(st, "throttled"), *held = json_object_get(st, "held");
    json_t *top = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(st, "top_pending"), i, v) {
        const char *name = json_string_value(json_object_get(v, "domain"));
        if (name)
            json_array_append_new(top, domain_row(name, json_integer_value(json_object_get(v, "pending")),
                                                  throttled, held));
    }
    add_marked(top, held, throttled, held);
    add_marked(top, throttled, throttled, held);
    json_t *o = json_pack("{sOso}", "known", json_object_get(st, "known"), "top", top);
    json_decref(st);
    return o;
}

/* Builds the status document (compact JSON, malloc'd; *len its length).
 * Bounded work: one walk over the schedule, one over the domain table, and
 * the cache of Redis's figures; nothing waits on Redis. */
static char *status_render(size_t *len)
{
    int64_t now = now_ms();
    const struct policy *p = rbd->policy;
    json_t *o = json_object();
    json_object_set_new(o, "version", json_string(REBOUND_VERSION));
    json_object_set_new(o, "now", json_integer(now));
    json_object_set_new(o, "started_at", json_integer(rbd->started_ms));
    json_object_set_new(o, "loaded", json_boolean(rbd->loaded));
    json_object_set_new(o, "redis", json_string(store_ready() ? "up" : "down"));
    json_object_set_new(o, "connections", json_integer(rbd->nconns));
    json_t *by = json_object();
    for (int i = 0; p && i < p->nclasses; i++)
        json_object_set_new(by, p->classes[i].name, json_integer((json_int_t)rbd->pending_by_class[i]));
    json_object_set_new(o, "queue", json_pack("{sIsIso}", "pending", (json_int_t)rbd->npending, "awaiting",
                                              (json_int_t)rbd->nawaiting, "by_class", by));
    json_object_set_new(o, "due", due_json(now));
    json_object_set_new(o, "domains", domains_status_json(now));
    json_object_set_new(o, "groups", obs.groups ? json_copy(obs.groups) : json_array());
    json_t *emitted = json_object();
    for (int t = 0; t < EV__COUNT; t++)
        json_object_set_new(emitted, event_type_name((enum event_type)t),
                            json_integer((json_int_t)rbd->events_emitted[t]));
    json_object_set_new(o, "events", json_pack("{soso}", "emitted", emitted, "latest",
                                               obs.latest ? json_copy(obs.latest) : json_array()));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text)
        xmalloc_failed(0);
    *len = strlen(text);
    return text;
}

/* ---- the HTTP endpoint ----------------------------------------------------- */

/* web/status.html, embedded at build time (web/embed.cmake). */
extern const char web_status_html[];
extern const size_t web_status_html_len;

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
        return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET here\n");
    size_t len;
    char *body;
    const char *ctype;
    if (strcmp(url, "/metrics") == 0) {
        body = metrics_render(&len);
        ctype = "text/plain; version=0.0.4; charset=utf-8";
    } else if (strcmp(url, "/status.json") == 0) {
        body = status_render(&len);
        ctype = "application/json";
    } else if (strcmp(url, "/") == 0) {
        struct MHD_Response *page = MHD_create_response_from_buffer(web_status_html_len, (void *)web_status_html,
                                                                    MHD_RESPMEM_PERSISTENT);
        if (!page)
            return MHD_NO;
        MHD_add_response_header(page, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
        enum MHD_Result prc = MHD_queue_response(conn, MHD_HTTP_OK, page);
        MHD_destroy_response(page);
        return prc;
    } else {
        return respond_text(conn, MHD_HTTP_NOT_FOUND,
                            "not found: the metrics are at /metrics, the status page at / (its data /status.json)\n");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    /* Both change from one second to the next. */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
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
    observe_start();
    if (!is_loopback((struct sockaddr *)&addr))
        log_warn("metrics: %s is not loopback: anyone who can reach it can read the queue's figures", hostport);
    log_info("metrics on http://%s/metrics, status page on http://%s/", hostport, hostport);
    return 0;
}

void metrics_stop(void)
{
    if (!http_on)
        return;
    http_on = false;
    observe_stop();
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
