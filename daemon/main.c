/*
 * reboundd: the retry scheduler daemon. main() reads the configuration and
 * the policy, connects to Redis, reads the schedule back, then listens.
 * Everything runs on one libuv loop; signals are uv_signal_t handles, so
 * the loop, not a signal handler, acts on them.
 *
 * SIGHUP re-reads the config file (same flags on top) and the policy it
 * names, and applies both only when both are valid. A new policy whose
 * class list keeps every old class at its index replaces the old one at
 * once; requests in flight carry class indices, so a policy that reorders
 * or drops classes waits until they are answered (new requests are held
 * meanwhile, for about one Redis round trip).
 *
 * SIGTERM/SIGINT drain: stop accepting and reading, let the Redis writes in
 * flight come back and their replies go out, close Redis, exit 0.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "config/addr.h"
#include "config/config.h"
#include "config/policy_load.h"
#include "config/policy_path.h"
#include "events/events.h"
#include "metrics.h"
#include "net/conn.h"
#include "net/peer.h"
#include "net/server.h"
#include "notify.h"
#include "ops/ops.h"
#include "redis/redis_link.h"
#include "redis/sentinel_watch.h"
#include "schedule/domains.h"
#include "schedule/entry.h"
#include "schedule/firing.h"
#include "schedule/load.h"
#include "schedule/learned.h"
#include "schedule/lease.h"
#include "store/scripts.h"
#include "store/store.h"

/* The Sentinel watch, while the link has Sentinels (NULL otherwise). */
static struct sentinel_watch *watch;

/* Longest wait for replies to drain to clients at shutdown, once Redis has
 * answered the writes in flight. */
#define DRAIN_WRITES_MS 2000
/* A policy swap waits at most this long (beyond redis_timeout) for the
 * requests in flight; past it the swap happens anyway, with a warning. */
#define SWAP_WAIT_EXTRA_MS 2000
/* How often STATUS= is refreshed for systemd. */
#define STATUS_EVERY_MS 1000

static uv_prepare_t flush_prepare;
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t drain_timer, status_timer, swap_timer;
static int64_t drain_deadline, replies_deadline;
static int exit_code;

/* How the effective config is made, kept for reloads. */
static const char *config_path;
static struct {
    const char *name;
    const char *value;
} overrides[8];
static int noverrides;

/* A new policy waiting for the requests in flight (see the top). */
static struct policy *pending_policy;
static int64_t swap_deadline;
static uint64_t last_loaded_count;

/* The upward calls, wired here so that no floor names one above it (the
 * way libuv and hiredis take callbacks): a connection hands its lines to
 * ops/ and its subscriber to events/; an entry hands its waiting requests
 * back to ops/. */
static void wire_hooks(void)
{
    static const struct conn_hooks conn_hooks = {
        .on_line = ops_dispatch,
        .on_writable = events_writable,
        .on_close = events_unsubscribe,
    };
    static const struct entry_hooks entry_hooks = {.run_waiters = ops_run_waiters};
    conn_set_hooks(&conn_hooks);
    entry_set_hooks(&entry_hooks);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: reboundd [options]\n"
            "\n"
            "The rebound retry scheduler daemon: takes bounce reports over a socket, schedules\n"
            "retries per the policy, keeps everything in Redis, and emits events.\n"
            "\n"
            "  -c, --config FILE     configuration file (JSON; see docs/operations.md)\n"
            "  -t, --test            check the configuration and the policy, then exit\n"
            "  -v, --verbose         with -t: print the effective settings\n"
            "      --listen HOST:PORT  TCP address to listen on (\"\" for none; default 127.0.0.1:7411)\n"
            "      --unix PATH       Unix socket to listen on\n"
            "      --redis ADDR      Redis: HOST:PORT, redis://[user:pass@]host:port[/db] or a socket path\n"
            "      --policy FILE     policy file (default %s)\n"
            "      --log-level L     debug, info, warn or error\n"
            "      --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics (\"\" for none)\n"
            "      --dump-config     print the effective settings (file and flags) as JSON and exit\n"
            "      --version         print the version and exit\n"
            "  -h, --help            this help\n"
            "\n"
            "Signals: HUP reloads the config file and the policy, TERM or INT drain and stop.\n",
            policy_path_default(REBOUND_DEFAULT_POLICY));
}

/* Defaults, then the file (a relative policy path in it is relative to the
 * file), then the flags, validated. On failure cfg is freed and err says
 * why; the running daemon's config is never touched. */
static int build_config(struct config *cfg, char *err, size_t errlen)
{
    config_defaults(cfg, policy_path_default(REBOUND_DEFAULT_POLICY));
    if (config_path) {
        if (config_load_file(cfg, config_path, err, errlen) != 0)
            goto fail;
        config_resolve_paths(cfg, config_path);
    }
    for (int i = 0; i < noverrides; i++) {
        if (config_set(cfg, overrides[i].name, overrides[i].value, err, errlen) != 0)
            goto fail;
    }
    if (config_validate(cfg, err, errlen) != 0)
        goto fail;
    if (cfg->metrics_listen[0] && !metrics_http_available()) {
        snprintf(err, errlen, "metrics_listen: this reboundd was built without the metrics endpoint "
                              "(libmicrohttpd); set it to \"\"");
        goto fail;
    }
    return 0;
fail:
    config_free(cfg);
    return -1;
}

/* One line for systemctl status: what the daemon is doing right now. */
static void status_line(char *buf, size_t len)
{
    if (rbd->stopping)
        snprintf(buf, len, "stopping: %zu Redis writes in flight, %d connections",
                 rbd->link ? redis_link_inflight(rbd->link) : (size_t)0, rbd->nconns);
    else if (rbd->lease_role == LEASE_STANDBY || rbd->lease_role == LEASE_FENCED)
        snprintf(buf, len, "standing by (%s): the schedule is served by %s, %d connections", lease_role_name(),
                 lease_owner_addr()[0] ? lease_owner_addr() : "nobody yet", rbd->nconns);
    else if (!rbd->loaded && !store_ready())
        snprintf(buf, len, "waiting for Redis: %s",
                 rbd->link && redis_link_last_error(rbd->link)[0] ? redis_link_last_error(rbd->link) : "connecting");
    else if (!rbd->loaded)
        snprintf(buf, len, "loading the schedule from Redis: %llu messages read",
                 (unsigned long long)(rbd->npending + rbd->nawaiting));
    else
        snprintf(buf, len, "%llu pending, %llu awaiting, %d connections, Redis %s",
                 (unsigned long long)rbd->npending, (unsigned long long)rbd->nawaiting, rbd->nconns,
                 store_ready() ? "up" : "down");
}

static void status_cb(uv_timer_t *t)
{
    char buf[200];
    status_line(buf, sizeof buf);
    notify_status(buf);
    /* A long load is progress, not a hang: keep systemd's start time-out
     * from firing while messages keep coming in. */
    uint64_t count = rbd->npending + rbd->nawaiting;
    if (!rbd->loaded && count != last_loaded_count)
        notify_extend_timeout((uint64_t)STATUS_EVERY_MS * 1000 * 30);
    last_loaded_count = count;
}

static void on_link_state(struct redis_link *link, bool up, void *arg);

static void load_done_cb(void)
{
    /* A stop during the load: opening the listener now would keep the
     * loop alive. */
    if (rbd->loaded || rbd->stopping)
        return;
    rbd->loaded = true;
    if (server_start() != 0) {
        exit_code = 1;
        raise(SIGTERM);
        return;
    }
    log_info("ready: %llu pending, %llu awaiting", (unsigned long long)rbd->npending,
             (unsigned long long)rbd->nawaiting);
    notify_ready();
    status_cb(&status_timer);
    firing_kick();
    events_link_up();
}

/* With lease_ttl set (several reboundd on one Redis): the listeners open
 * at the first connect, so a standby answers (ping, cluster, stats, and
 * `unavailable` with the owner's address); the schedule is read back only
 * once the lease is ours (schedule/lease.c). */
static bool lease_listening;

static void lease_serving_cb(void)
{
    notify_ready();
    status_cb(&status_timer);
}

static void on_link_up_leased(void)
{
    if (!lease_listening && !rbd->stopping) {
        lease_listening = true;
        if (server_start() != 0) {
            exit_code = 1;
            raise(SIGTERM);
            return;
        }
        log_info("listening; the schedule is served by the lease's owner");
        notify_ready();
    }
    if (rbd->loaded) {
        schedule_resync();
        firing_kick();
        events_link_up();
    }
    lease_link_up();
}

/* The layout's shards, fixed at creation (<prefix>meta): an instance
 * configured with another number would read and write the wrong keys.
 * Checked with a lease (the setting that shares a Redis); one instance
 * alone starts as it always did. */
static bool layout_checked;

static void layout_cb(void *arg, redisReply *reply)
{
    if (!reply)
        return; /* the link dropped: asked again at the next connect */
    if (reply->type != REDIS_REPLY_INTEGER) {
        /* One schedule reads and writes what it always did: go on. A
         * sharded layout cannot be checked: wait for the next connect. */
        log_warn("shards: reading the layout failed (%s)%s", reply->type == REDIS_REPLY_ERROR ? reply->str : "?",
                 store_nshards() > 1 ? "; asking again at the next connect" : "");
        if (store_nshards() > 1)
            return;
        layout_checked = true;
        on_link_state(rbd->link, true, NULL);
        return;
    }
    long long want = store_nshards();
    if (reply->integer != want) {
        log_error("shards: this Redis holds a layout of %lld shard%s under prefix %s, and this instance is configured "
                  "with shards %d; refusing to start (set shards to %lld%s)",
                  reply->integer, reply->integer == 1 ? "" : "s", rbd->cfg.prefix, rbd->cfg.shards, reply->integer,
                  reply->integer == 1 ? " or 0" : "");
        exit_code = 1;
        raise(SIGTERM);
        return;
    }
    layout_checked = true;
    on_link_state(rbd->link, true, NULL);
}

static void on_link_state(struct redis_link *link, bool up, void *arg)
{
    if (!up)
        return;
    if (!layout_checked && rbd->cfg.lease_ttl_ms <= 0)
        layout_checked = true;
    if (!layout_checked) {
        if (store_meta_shards(store_nshards(), layout_cb, NULL) != 0)
            log_warn("shards: could not ask Redis for the layout; asking again at the next connect");
        return;
    }
    rbd->redis_connects++;
    if (rbd->cfg.lease_ttl_ms > 0) {
        on_link_up_leased();
        return;
    }
    if (!rbd->loaded) {
        schedule_load(load_done_cb);
        return;
    }
    schedule_resync();
    firing_kick();
    events_link_up();
}

static void flush_cb(uv_prepare_t *p)
{
    store_flush();
    conn_flush_output();
}

static bool same_class_layout(const struct policy *old, const struct policy *next)
{
    if (next->nclasses < old->nclasses)
        return false;
    for (int i = 0; i < old->nclasses; i++)
        if (strcmp(old->classes[i].name, next->classes[i].name) != 0)
            return false;
    return true;
}

static void policy_swap(struct policy *p)
{
    struct policy *old = rbd->policy;
    schedule_remap_classes(old, p);
    rbd->policy = p;
    rbd->policy_generation++;
    policy_free(old);
}

static void swap_timer_cb(uv_timer_t *t)
{
    if (!pending_policy) {
        uv_timer_stop(t);
        return;
    }
    if (rbd->requests_waiting > 0 && now_ms() < swap_deadline)
        return;
    if (rbd->requests_waiting > 0)
        log_warn("reload: %llu requests still unanswered; applying the new policy anyway",
                 (unsigned long long)rbd->requests_waiting);
    uv_timer_stop(t);
    policy_swap(pending_policy);
    pending_policy = NULL;
    log_info("reload: new class list in force; reading requests again");
    conn_hold_reading(false);
}

/* Puts p in force now (returns true), or as soon as no request decided
 * under the old class indices is still waiting for Redis (false). */
static bool policy_install(struct policy *p)
{
    if (pending_policy) {
        policy_free(pending_policy); /* a newer reload supersedes it */
        pending_policy = NULL;
    }
    if (same_class_layout(rbd->policy, p) || rbd->requests_waiting == 0) {
        policy_swap(p);
        conn_hold_reading(false);
        return true;
    }
    pending_policy = p;
    swap_deadline = now_ms() + rbd->cfg.redis_timeout_ms + SWAP_WAIT_EXTRA_MS;
    log_info("reload: the class list changed; holding new requests until the %llu in flight are answered",
             (unsigned long long)rbd->requests_waiting);
    conn_hold_reading(true);
    uv_timer_start(&swap_timer, swap_timer_cb, 1, 1);
    return false;
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* The last step of shutdown: with Redis closed, close our own handles so
 * the loop ends and uv_loop_close can succeed. */
static void close_own_handles(void)
{
    conn_flush_output(); /* releases what the closed connections still held */
    close_if_open((uv_handle_t *)&flush_prepare);
    close_if_open((uv_handle_t *)&drain_timer);
    close_if_open((uv_handle_t *)&status_timer);
    close_if_open((uv_handle_t *)&swap_timer);
    lease_close();
    domains_share_stop(); /* the shared throttles' poll */
    peer_close_all();
    notify_close();
    events_stop();
    close_if_open((uv_handle_t *)&sig_term);
    close_if_open((uv_handle_t *)&sig_int);
    close_if_open((uv_handle_t *)&sig_hup);
}

static bool shard_links_close(void);

static void link_closed_cb(void *arg)
{
    if (shard_links_close())
        return; /* the last one closes the loop's own handles */
    close_own_handles();
}

static void drain_timer_cb(uv_timer_t *t)
{
    int64_t now = now_ms();
    /* Writes in flight get their answer (and their clients a reply) first. */
    if (rbd->link && store_inflight() > 0 && now < drain_deadline)
        return;
    /* Then every connection is half-closed behind its last reply, and we
     * wait for the clients to read to the end and close, unless one does
     * not within DRAIN_WRITES_MS. */
    /* Then the lease goes, so that a standby takes over at its next check
     * (its answer is waited for like a write). */
    static bool lease_given_up;
    if (rbd->cfg.lease_ttl_ms > 0 && !lease_given_up) {
        lease_given_up = true;
        lease_release(NULL);
        return;
    }
    if (!replies_deadline) {
        replies_deadline = now + DRAIN_WRITES_MS;
        conn_shutdown_all();
    }
    if (rbd->nconns > 0 && now < replies_deadline)
        return;
    uv_timer_stop(t);
    conn_close_all();
    if (rbd->link) {
        struct redis_link *link = rbd->link;
        rbd->link = NULL;
        sentinel_watch_close(watch);
        watch = NULL;
        redis_link_close(link, link_closed_cb, NULL);
    } else {
        close_own_handles();
    }
}

static void begin_shutdown(void)
{
    if (rbd->stopping)
        return;
    log_info("stopping: no new connections, finishing writes in flight");
    notify_stopping();
    store_flush();
    rbd->stopping = true;
    status_cb(&status_timer);
    metrics_stop();
    if (pending_policy) {
        uv_timer_stop(&swap_timer);
        policy_free(pending_policy);
        pending_policy = NULL;
    }
    server_stop();
    conn_stop_reading_all();
    firing_stop();
    drain_deadline = now_ms() + rbd->cfg.redis_timeout_ms;
    uv_timer_start(&drain_timer, drain_timer_cb, 10, 10);
}

struct reload_log {
    char applied[300], restart[300];
};

static void append_name(char *buf, size_t len, const char *name)
{
    size_t n = strlen(buf);
    snprintf(buf + n, len - n, "%s%s", n ? ", " : "", name);
}

static void reload_changed_cb(const char *name, bool applied, void *arg)
{
    struct reload_log *rl = arg;
    if (applied) {
        append_name(rl->applied, sizeof rl->applied, name);
    } else {
        append_name(rl->restart, sizeof rl->restart, name);
        log_warn("reload: %s changed; it takes effect at the next restart", name);
    }
}

/* SIGHUP: all or nothing. The config and the policy it names are read and
 * checked first; only if both are valid does anything change. */
static void reload(void)
{
    if (rbd->stopping)
        return;
    log_info("reload: reading %s and the policy", config_path ? config_path : "the flags");
    if (rbd->loaded)
        notify_reloading();
    char err[512];
    struct config next;
    struct policy *p = NULL;
    if (build_config(&next, err, sizeof err) != 0) {
        log_error("reload: refused, the running configuration and policy stay in force: %s", err);
        goto refused;
    }
    p = policy_load_file(next.policy, err, sizeof err);
    if (!p) {
        log_error("reload: refused, the running configuration and policy stay in force: %s", err);
        config_free(&next);
        goto refused;
    }
    struct reload_log rl = {"", ""};
    config_reload(&rbd->cfg, &next, reload_changed_cb, &rl);
    config_free(&next);
    log_set_level_name(rbd->cfg.log_level);
    if (rbd->link)
        redis_link_set_timeout(rbd->link, rbd->cfg.redis_timeout_ms);
    int nclasses = p->nclasses;
    size_t nrules = p->nrules;
    bool now = policy_install(p);
    rbd->reloads_ok++;
    log_info("reload: policy %s %s (%d classes, %zu rules); settings changed: %s%s%s", rbd->cfg.policy,
             now ? "in force" : "accepted, in force once the requests in flight are answered", nclasses, nrules,
             rl.applied[0] ? rl.applied : "none", rl.restart[0] ? "; waiting for a restart: " : "", rl.restart);
    if (rbd->loaded)
        notify_ready();
    return;
refused:
    rbd->reloads_failed++;
    if (rbd->loaded)
        notify_ready();
}

static void signal_cb(uv_signal_t *h, int signum)
{
    if (signum == SIGHUP)
        reload();
    else
        begin_shutdown();
}

/* What the command line asks for besides the config overrides. */
struct flags {
    bool test_only, verbose, dump_only;
};

/* Reads the command line into flags, config_path and overrides. Returns
 * -1 to go on, or the exit code (help, version, a bad flag). */
static int parse_flags(int argc, char **argv, struct flags *fl)
{
    enum { OPT_LISTEN = 256, OPT_UNIX, OPT_REDIS, OPT_POLICY, OPT_VERSION, OPT_LOG_LEVEL, OPT_DUMP, OPT_METRICS };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},  {"test", no_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'},       {"help", no_argument, NULL, 'h'},
        {"listen", required_argument, NULL, OPT_LISTEN}, {"unix", required_argument, NULL, OPT_UNIX},
        {"redis", required_argument, NULL, OPT_REDIS},   {"policy", required_argument, NULL, OPT_POLICY},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL}, {"version", no_argument, NULL, OPT_VERSION},
        {"dump-config", no_argument, NULL, OPT_DUMP},     {"metrics", required_argument, NULL, OPT_METRICS},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:tvh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            fl->test_only = true;
            break;
        case 'v':
            fl->verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("reboundd %s (systemd notify: %s, metrics endpoint: %s)\n", REBOUND_VERSION,
                   notify_compiled_in() ? "yes" : "no", metrics_http_available() ? "yes" : "no");
            return 0;
        case OPT_DUMP:
            fl->dump_only = true;
            break;
        case OPT_LISTEN:
            overrides[noverrides++] = (typeof(overrides[0])){"listen", optarg};
            break;
        case OPT_UNIX:
            overrides[noverrides++] = (typeof(overrides[0])){"unix_path", optarg};
            break;
        case OPT_REDIS:
            overrides[noverrides++] = (typeof(overrides[0])){"redis", optarg};
            break;
        case OPT_POLICY:
            overrides[noverrides++] = (typeof(overrides[0])){"policy", optarg};
            break;
        case OPT_LOG_LEVEL:
            overrides[noverrides++] = (typeof(overrides[0])){"log_level", optarg};
            break;
        case OPT_METRICS:
            overrides[noverrides++] = (typeof(overrides[0])){"metrics_listen", optarg};
            break;
        default:
            usage(stderr);
            return 2;
        }
        if (noverrides == (int)(sizeof overrides / sizeof overrides[0]))
            fatal("too many options");
    }
    if (optind < argc) {
        fprintf(stderr, "reboundd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* With Sentinels: how often the watch asks one of them where the master
 * is, while the link is up (redis/sentinel_watch.h). */
#define SENTINEL_WATCH_EVERY_MS 250

/* A comma-separated address list cut into at most 16 strings, in buf
 * (which the link's options then point into for the daemon's life).
 * Returns how many, or -1 when it does not fit. */
static int split_addresses(const char *list, char *buf, size_t size, const char **addrs)
{
    int n = 0;
    if (strlen(list) >= size)
        return -1;
    memcpy(buf, list, strlen(list) + 1);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == 16)
            return -1;
        addrs[n++] = tok;
    }
    return n;
}

/* Sentinel discovery (config_validate has checked each address). */
static int sentinel_options(const struct config *cfg, struct redis_link_opts *lo)
{
    static char list[4096];
    static const char *addrs[16];
    int n = split_addresses(cfg->redis_sentinels, list, sizeof list, addrs);
    if (n < 0)
        return -1;
    lo->sentinels = addrs;
    lo->nsentinels = n;
    lo->master_name = cfg->redis_master_name;
    lo->sentinel_password = cfg->redis_sentinel_password[0] ? cfg->redis_sentinel_password : NULL;
    return 0;
}

/* Redis Cluster discovery; the slot is the prefix's (config_validate has
 * checked that it holds a hash tag, so every key is in that slot). */
static int cluster_options(const struct config *cfg, struct redis_link_opts *lo)
{
    static char list[4096];
    static const char *addrs[16];
    int n = split_addresses(cfg->redis_cluster, list, sizeof list, addrs);
    if (n < 0)
        return -1;
    lo->cluster_seeds = addrs;
    lo->ncluster_seeds = n;
    lo->cluster_key = cfg->prefix;
    return 0;
}

/* This instance's name and the address it tells others (the cluster op):
 * the configured ones, or hostname:pid and the listen address. */
static void set_identity(const struct config *cfg)
{
    if (cfg->instance_id[0]) {
        snprintf(rbd->instance_id, sizeof rbd->instance_id, "%s", cfg->instance_id);
    } else {
        char host[256] = "localhost";
        if (gethostname(host, sizeof host) != 0)
            snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        snprintf(rbd->instance_id, sizeof rbd->instance_id, "%s:%d", host, (int)getpid());
    }
    const char *adv = cfg->advertise[0] ? cfg->advertise : cfg->listen[0] ? cfg->listen : cfg->unix_path;
    snprintf(rbd->advertise, sizeof rbd->advertise, "%s", adv);
}

/* The Redis link's options from the redis address (a URL's user, password
 * and db) and the redis_* options, which win. Returns 0, or -1 for an
 * address that does not parse. */
static int redis_options(const struct config *cfg, struct redis_link_opts *lo)
{
    /* static: the link's options point into it for the daemon's life */
    static struct addr raddr;
    static const char *scripts[SCRIPT__COUNT] = {[SCRIPT_APPLY] = script_apply, [SCRIPT_FIRE] = script_fire,
                                                 [SCRIPT_GET] = script_get};
    char err[200];
    if (addr_parse_redis(cfg->redis, &raddr, err, sizeof err) != 0)
        return -1;
    memset(lo, 0, sizeof *lo);
    lo->host = raddr.path[0] ? NULL : raddr.host;
    lo->port = raddr.port;
    lo->unix_path = raddr.path[0] ? raddr.path : NULL;
    lo->user = raddr.user[0] ? raddr.user : NULL;
    lo->password = raddr.password[0] ? raddr.password : NULL;
    if (raddr.db >= 0)
        lo->db = raddr.db;
    if (!lo->user && cfg->redis_user[0])
        lo->user = cfg->redis_user;
    if (!lo->password && cfg->redis_password[0])
        lo->password = cfg->redis_password;
    if (cfg->redis_db)
        lo->db = cfg->redis_db;
    lo->timeout_ms = cfg->redis_timeout_ms;
    lo->scripts = scripts;
    lo->nscripts = SCRIPT__COUNT;
    if (cfg->redis_sentinels[0] && sentinel_options(cfg, lo) != 0)
        return -1;
    if (cfg->redis_cluster[0] && cluster_options(cfg, lo) != 0)
        return -1;
    return 0;
}

/* The loop's own handles: the flush before each wait, the drain, status
 * and swap timers, sd_notify, and the signals. */
static void start_loop_handles(void)
{
    uv_prepare_init(rbd->loop, &flush_prepare);
    uv_prepare_start(&flush_prepare, flush_cb);
    uv_timer_init(rbd->loop, &drain_timer);
    uv_timer_init(rbd->loop, &status_timer);
    uv_timer_init(rbd->loop, &swap_timer);
    notify_init(rbd->loop);
    if (notify_enabled())
        uv_timer_start(&status_timer, status_cb, 0, STATUS_EVERY_MS);
    uv_signal_init(rbd->loop, &sig_term);
    uv_signal_init(rbd->loop, &sig_int);
    uv_signal_init(rbd->loop, &sig_hup);
    uv_signal_start(&sig_term, signal_cb, SIGTERM);
    uv_signal_start(&sig_int, signal_cb, SIGINT);
    uv_signal_start(&sig_hup, signal_cb, SIGHUP);
}

/* ---- the shards on several Redis Cluster primaries ----------------------
 * rbd->link serves the cluster-wide keys ({<prefix>}...); each shard has a
 * link of its own to its slot's primary (store_link), which finds that
 * primary through the seeds, follows MOVED, ASK, TRYAGAIN, CLUSTERDOWN and
 * READONLY for that slot alone, and so after a failover of one primary
 * reconnects to the promoted replica while the other shards' links go on.
 * A link per shard rather than per primary: each already knows how to
 * find and re-find its one slot, and a failover then touches exactly the
 * shards that moved (docs/architecture.md says what it costs). */
static int shard_links_open;

static void on_shard_link_state(struct redis_link *link, bool up, void *arg)
{
    (void)arg;
    /* Before the cluster-wide link checked the layout nothing runs yet;
     * afterwards a shard's link back is a connect like the one link's:
     * ids in doubt re-read, firing and the groups' reads resumed, a load
     * cut short started again. */
    if (!up || rbd->stopping || !rbd->link)
        return;
    /* The others waiting out a back-off most likely lost the same primary,
     * which the seeds now know the successor of: no need to wait. */
    for (int k = 0; k < store_nshards(); k++) {
        struct redis_link *l = store_spread_link(k);
        if (l && l != link)
            redis_link_reconnect_now(l);
    }
    if (!layout_checked)
        return;
    rbd->redis_connects++;
    on_link_up_leased();
}

static void shard_links_start(const struct redis_link_opts *base)
{
    for (int k = 0; k < store_nshards(); k++) {
        struct redis_link_opts lo = *base;
        lo.cluster_key = store_msgs_key(k);
        struct redis_link *l = redis_link_new(rbd->loop, &lo, on_shard_link_state, NULL);
        redis_link_set_rtt_histogram(l, &rbd->redis_rtt);
        store_spread_set_link(k, l);
        redis_link_start(l);
        shard_links_open++;
    }
    log_info("shards: %d shards apart on the cluster's primaries, a link to each shard's slot", store_nshards());
}

static void shard_link_closed_cb(void *arg)
{
    (void)arg;
    if (--shard_links_open == 0)
        close_own_handles();
}

/* Closes the shards' links; true when one was open (the last to close
 * closes the loop's own handles). */
static bool shard_links_close(void)
{
    bool any = false;
    for (int k = 0; k < store_nshards(); k++) {
        struct redis_link *l = store_spread_link(k);
        if (!l)
            continue;
        store_spread_set_link(k, NULL);
        any = true;
        redis_link_close(l, shard_link_closed_cb, NULL);
    }
    return any;
}

int main(int argc, char **argv)
{
    struct flags fl = {0};
    char err[512];
    int code = parse_flags(argc, argv, &fl);
    if (code >= 0)
        return code;

    struct config *cfg = &rbd->cfg;
    if (build_config(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "reboundd: %s\n", err);
        return 1;
    }
    if (fl.dump_only) {
        config_dump(cfg, stdout);
        config_free(cfg);
        return 0;
    }
    if (log_set_level_name(cfg->log_level) != 0) {
        fprintf(stderr, "reboundd: unknown log level \"%s\"\n", cfg->log_level);
        return 1;
    }
    rbd->policy = policy_load_file(cfg->policy, err, sizeof err);
    if (!rbd->policy) {
        fprintf(stderr, "reboundd: %s\n", err);
        return 1;
    }
    struct redis_link_opts lo;
    if (redis_options(cfg, &lo) != 0) {
        fprintf(stderr, "reboundd: bad Redis address \"%s\"\n", cfg->redis);
        return 1;
    }
    if (fl.test_only) {
        if (fl.verbose)
            config_dump(cfg, stdout);
        printf("reboundd: configuration and policy %s OK (%d classes, %zu rules)\n", cfg->policy,
               rbd->policy->nclasses, rbd->policy->nrules);
        policy_free(rbd->policy);
        config_free(cfg);
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    rbd->loop = uv_default_loop();
    /* First, so that a port taken fails the start before anything else
     * has begun. */
    if (cfg->metrics_listen[0] && metrics_start(cfg->metrics_listen, err, sizeof err) != 0) {
        fprintf(stderr, "reboundd: %s\n", err);
        uv_loop_close(rbd->loop);
        policy_free(rbd->policy);
        config_free(cfg);
        return 1;
    }
    rbd->sched = sched_new();
    rbd->started_ms = now_ms();
    rbd->rng = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    if (!rbd->rng)
        rbd->rng = 1;
    proto_limits_default(&rbd->limits);

    wire_hooks();
    store_init();
    store_set_doubt_hook(schedule_resync);
    events_init();
    firing_init();
    start_loop_handles();

    set_identity(cfg);
    static const struct lease_hooks lease_hooks = {.serving = lease_serving_cb};
    store_set_fenced_hook(lease_fenced);
    lease_init(&lease_hooks);
    rbd->link = redis_link_new(rbd->loop, &lo, on_link_state, NULL);
    redis_link_set_rtt_histogram(rbd->link, &rbd->redis_rtt);
    char shown[300];
    log_info("reboundd %s starting: Redis %s, policy %s", REBOUND_VERSION,
             config_mask_address(cfg->redis, shown, sizeof shown), cfg->policy);
    redis_link_start(rbd->link);
    watch = sentinel_watch_start(rbd->loop, rbd->link, &lo, SENTINEL_WATCH_EVERY_MS);
    if (store_spread())
        shard_links_start(&lo);

    uv_run(rbd->loop, UV_RUN_DEFAULT);

    store_free();
    /* After the store: the writes it fails let go of their domains. */
    domains_free();
    learned_free();
    events_free();
    int rc = uv_loop_close(rbd->loop);
    if (rc != 0)
        log_warn("shutdown: the loop still had handles (%s)", uv_strerror(rc));
    sched_free(rbd->sched);
    policy_free(rbd->policy);
    config_free(cfg);
    log_info("stopped");
    return exit_code;
}
