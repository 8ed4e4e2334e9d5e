/*
 * reboundd: the retry scheduler daemon. main() reads the configuration and
 * the policy, connects to Redis, reads the schedule back, then listens.
 * Everything runs on one libuv loop; signals are uv_signal_t handles, so
 * the loop, not a signal handler, acts on them.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "config/policy_load.h"
#include "daemon/conn.h"
#include "daemon/daemon.h"
#include "daemon/events.h"
#include "daemon/firing.h"
#include "daemon/log.h"
#include "daemon/redis_link.h"
#include "daemon/server.h"
#include "daemon/store.h"
#include "daemon/xmalloc.h"

/* Longest wait for replies to drain to clients at shutdown. */
#define DRAIN_WRITES_MS 2000

static struct daemon the_daemon;
struct daemon *rbd = &the_daemon;

static uv_prepare_t flush_prepare;
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t drain_timer;
static int64_t drain_deadline;
static int exit_code;

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
            "      --version         print the version and exit\n"
            "  -h, --help            this help\n",
            REBOUND_DEFAULT_POLICY);
}

static void on_link_state(struct redis_link *link, bool up, void *arg);

static void load_done_cb(void)
{
    if (rbd->loaded)
        return;
    rbd->loaded = true;
    if (server_start() != 0) {
        exit_code = 1;
        raise(SIGTERM);
        return;
    }
    log_info("ready: %llu pending, %llu awaiting", (unsigned long long)rbd->npending,
             (unsigned long long)rbd->nawaiting);
    firing_kick();
    events_link_up();
}

static void on_link_state(struct redis_link *link, bool up, void *arg)
{
    if (!up)
        return;
    if (!rbd->loaded) {
        firing_load(load_done_cb);
        return;
    }
    firing_resync();
    firing_kick();
    events_link_up();
}

static void flush_cb(uv_prepare_t *p)
{
    store_flush();
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
    close_if_open((uv_handle_t *)&flush_prepare);
    close_if_open((uv_handle_t *)&drain_timer);
    close_if_open((uv_handle_t *)&sig_term);
    close_if_open((uv_handle_t *)&sig_int);
    close_if_open((uv_handle_t *)&sig_hup);
}

static void link_closed_cb(void *arg)
{
    close_own_handles();
}

static void drain_timer_cb(uv_timer_t *t)
{
    /* Writes in flight get their answer (and their clients a reply) first. */
    if (rbd->link && redis_link_inflight(rbd->link) > 0 && now_ms() < drain_deadline)
        return;
    uv_timer_stop(t);
    conn_close_all();
    if (rbd->link) {
        struct redis_link *link = rbd->link;
        rbd->link = NULL;
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
    store_flush();
    rbd->stopping = true;
    server_stop();
    conn_stop_reading_all();
    firing_stop();
    uv_prepare_stop(&flush_prepare);
    drain_deadline = now_ms() + DRAIN_WRITES_MS + rbd->cfg.redis_timeout_ms;
    uv_timer_start(&drain_timer, drain_timer_cb, 10, 10);
}

static void reload_policy(void)
{
    char err[512];
    struct policy *p = policy_load_file(rbd->cfg.policy, err, sizeof err);
    if (!p) {
        log_error("reload: keeping the current policy: %s", err);
        return;
    }
    struct policy *old = rbd->policy;
    firing_remap_classes(old, p);
    rbd->policy = p;
    policy_free(old);
    log_info("reload: policy %s loaded (%d classes, %zu rules)", rbd->cfg.policy, p->nclasses, p->nrules);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    if (signum == SIGHUP)
        reload_policy();
    else
        begin_shutdown();
}

static char *make_key(const char *prefix, const char *name)
{
    size_t a = strlen(prefix), b = strlen(name);
    char *k = xmalloc(a + b + 1);
    memcpy(k, prefix, a);
    memcpy(k + a, name, b + 1);
    return k;
}

int main(int argc, char **argv)
{
    enum { OPT_LISTEN = 256, OPT_UNIX, OPT_REDIS, OPT_POLICY, OPT_VERSION, OPT_LOG_LEVEL };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},  {"test", no_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'},       {"help", no_argument, NULL, 'h'},
        {"listen", required_argument, NULL, OPT_LISTEN}, {"unix", required_argument, NULL, OPT_UNIX},
        {"redis", required_argument, NULL, OPT_REDIS},   {"policy", required_argument, NULL, OPT_POLICY},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL}, {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    bool test_only = false, verbose = false;
    struct {
        const char *name;
        const char *value;
    } overrides[8];
    int noverrides = 0;
    char err[512];
    int ch;
    while ((ch = getopt_long(argc, argv, "c:tvh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("reboundd %s\n", REBOUND_VERSION);
            return 0;
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

    struct config *cfg = &rbd->cfg;
    config_defaults(cfg, REBOUND_DEFAULT_POLICY);
    if (config_path && config_load_file(cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "reboundd: %s\n", err);
        return 1;
    }
    for (int i = 0; i < noverrides; i++) {
        if (config_set(cfg, overrides[i].name, overrides[i].value, err, sizeof err) != 0) {
            fprintf(stderr, "reboundd: %s\n", err);
            return 1;
        }
    }
    if (config_validate(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "reboundd: %s\n", err);
        return 1;
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
    struct redis_link_opts lo = {0};
    char *rhost = NULL, *rpath = NULL, *ruser = NULL, *rpass = NULL;
    if (redis_link_parse_address(cfg->redis, &lo, &rhost, &rpath, &ruser, &rpass) != 0) {
        fprintf(stderr, "reboundd: bad Redis address \"%s\"\n", cfg->redis);
        return 1;
    }
    if (test_only) {
        if (verbose)
            config_dump(cfg, stdout);
        printf("reboundd: configuration and policy %s OK (%d classes, %zu rules)\n", cfg->policy,
               rbd->policy->nclasses, rbd->policy->nrules);
        policy_free(rbd->policy);
        config_free(cfg);
        free(rhost), free(rpath), free(ruser), free(rpass);
        return 0;
    }
    if (!lo.user && cfg->redis_user[0])
        lo.user = cfg->redis_user;
    if (!lo.password && cfg->redis_password[0])
        lo.password = cfg->redis_password;
    if (cfg->redis_db)
        lo.db = cfg->redis_db;
    lo.timeout_ms = cfg->redis_timeout_ms;
    const char *scripts[SCRIPT__COUNT] = {[SCRIPT_APPLY] = script_apply, [SCRIPT_FIRE] = script_fire};
    lo.scripts = scripts;
    lo.nscripts = SCRIPT__COUNT;

    signal(SIGPIPE, SIG_IGN);
    rbd->loop = uv_default_loop();
    rbd->sched = sched_new();
    rbd->started_ms = now_ms();
    rbd->rng = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    if (!rbd->rng)
        rbd->rng = 1;
    proto_limits_default(&rbd->limits);
    rbd->key_msgs = make_key(cfg->prefix, "msg");
    rbd->key_events = make_key(cfg->prefix, "events");

    store_init();
    events_init();
    firing_init();
    uv_prepare_init(rbd->loop, &flush_prepare);
    uv_prepare_start(&flush_prepare, flush_cb);
    uv_timer_init(rbd->loop, &drain_timer);
    uv_signal_init(rbd->loop, &sig_term);
    uv_signal_init(rbd->loop, &sig_int);
    uv_signal_init(rbd->loop, &sig_hup);
    uv_signal_start(&sig_term, signal_cb, SIGTERM);
    uv_signal_start(&sig_int, signal_cb, SIGINT);
    uv_signal_start(&sig_hup, signal_cb, SIGHUP);

    rbd->link = redis_link_new(rbd->loop, &lo, on_link_state, NULL);
    log_info("reboundd %s starting: Redis %s, policy %s", REBOUND_VERSION, cfg->redis, cfg->policy);
    redis_link_start(rbd->link);

    uv_run(rbd->loop, UV_RUN_DEFAULT);

    store_free();
    events_free();
    int rc = uv_loop_close(rbd->loop);
    if (rc != 0)
        log_warn("shutdown: the loop still had handles (%s)", uv_strerror(rc));
    sched_free(rbd->sched);
    policy_free(rbd->policy);
    free(rbd->key_msgs);
    free(rbd->key_events);
    free(rhost), free(rpath), free(ruser), free(rpass);
    config_free(cfg);
    log_info("stopped");
    return exit_code;
}
