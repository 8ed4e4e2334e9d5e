/*
 * rebound-bench: measures reboundd on the four workloads of
 * docs/performance.md, with plain sockets and one epoll loop, so that the
 * client costs as little CPU as possible next to the daemon and Redis on a
 * small machine.
 *
 *   w1  ingest: N bounce reports over C connections, P in flight on each;
 *       time until every report is acknowledged (so written to Redis),
 *       reports/s, latency p50/p99, Redis and reboundd memory per pending
 *       retry.
 *   w2  fire burst: N reports all due at one instant T (bounce field
 *       not_before = T); a subscriber acks in batches; time from T until
 *       the last retry event arrived, fires/s.
 *   w3  precision: N reports due evenly over spread-ms; lateness of each
 *       retry event (received - due_at), p50/p99/max.
 *   w4  scale: N pending retries; memory of reboundd and of Redis, and how
 *       long a restart takes to be ready (ping answers, stats.loaded true).
 *
 * It can start its own redis-server (--start-redis mem|aof|always, or a
 * comma-separated list of them to run side by side: a private temp
 * directory, a free loopback port, no RDB snapshots; AOF everysec, what
 * operators run, unless told otherwise) and its own reboundd
 * (--start-daemon PATH), fresh for each run, or measure running ones
 * (--tcp/--unix, --redis, --daemon-pid). Every wait has a deadline, and
 * children started here die with the bench (PR_SET_PDEATHSIG).
 *
 * The retry policy of a started daemon is derived from the shipped one
 * (config/policy.json) so that the classifier does its real work: for w1
 * and w4 the greylist class's first delay becomes 15-16 min (15 min with
 * up to 60 s jitter, the workload spec), for w2 and w3 every greylist delay
 * becomes 1 ms, so that a report's retry falls due exactly at its
 * not_before. `rebound-bench policy ingest|fire` prints either.
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "queue/shard.h"

#ifndef REBOUND_SOURCE_DIR
#define REBOUND_SOURCE_DIR "."
#endif

#define MAX_RUNS 15
#define MAX_CONNS 256
/* Instances a routed run talks to (the shard map's distinct owners). */
#define MAX_OWNERS 16
#define READ_CHUNK 65536

/* ---- options ------------------------------------------------------------ */

enum workload { W1, W2, W3, W4 };

struct opts {
    enum workload w;
    const char *wname;
    long long n;
    int conns;
    int pipeline;
    int runs;
    const char *tcp;        /* target HOST:PORT */
    const char *unix_path;  /* target socket */
    const char *redis;      /* HOST:PORT of the daemon's Redis */
    const char *start_redis; /* NULL, "mem", "aof" or "always": this run's */
    const char *modes[3];    /* --start-redis's list: the runs alternate between them */
    int nmodes;
    const char *start_daemon;
    const char *policy;
    const char *base_policy;
    const char *daemon_config;
    bool via_unix;          /* started daemon: talk over its Unix socket */
    long daemon_pid;
    long long spread_ms;
    long long lead_ms;      /* 0 = default */
    const char *group;
    int ack_batch;
    int ack_delay_ms;
    const char *json;
    const char *label;
    const char *id_prefix;
    int timeout_s;
    bool keep;
    bool cmdstats;          /* print Redis INFO commandstats after each run */
    bool via_target;        /* with shards: everything through the target, which relays */
};

static struct opts o;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* ---- time --------------------------------------------------------------- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Wall clock in microseconds: due times are epoch ms, so lateness is
 * measured on the wall clock the daemon uses too. */
static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void check_interrupted(void);

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    check_interrupted();
}

static double loadavg1(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* ---- children and the temp directory ------------------------------------ */

static pid_t redis_pid, daemon_pid;
static char tmpdir[256]; /* short, so every path built on it fits */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("rebound-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* Sends sig, waits up to timeout_ms, then SIGKILL. Returns ms waited. */
static int64_t stop_child(pid_t *pid, int sig, int timeout_ms)
{
    if (*pid <= 0)
        return 0;
    int64_t t0 = mono_ns();
    kill(*pid, sig);
    for (;;) {
        int st;
        pid_t r = waitpid(*pid, &st, WNOHANG);
        if (r == *pid || (r < 0 && errno == ECHILD))
            break;
        if ((mono_ns() - t0) / 1000000 > timeout_ms) {
            kill(*pid, SIGKILL);
            waitpid(*pid, &st, 0);
            break;
        }
        /* Not sleep_ms: this runs in cleanup(), also after an interrupt. */
        struct timespec ts = {0, 2000000L};
        nanosleep(&ts, NULL);
    }
    *pid = 0;
    return (mono_ns() - t0) / 1000000;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

static void cleanup(void)
{
    stop_child(&daemon_pid, SIGTERM, 10000);
    stop_child(&redis_pid, SIGTERM, 10000);
    if (tmpdir[0] && !o.keep)
        nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    else if (tmpdir[0])
        fprintf(stderr, "rebound-bench: kept %s\n", tmpdir);
    tmpdir[0] = '\0';
}

/* Set by SIGINT/SIGTERM; every wait checks it and leaves through die(),
 * whose exit() runs cleanup() and stops the children. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

static void check_interrupted(void)
{
    if (interrupted)
        die("interrupted by signal %d", (int)interrupted);
}

static void make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/rebound-bench.XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmpdir))
        die("mkdtemp: %s", strerror(errno));
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die("cannot find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts argv with stdout and stderr to logpath; the child dies with us. */
static pid_t spawn(char *const argv[], const char *logpath)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

static bool child_alive(pid_t pid)
{
    int st;
    return pid > 0 && waitpid(pid, &st, WNOHANG) == 0;
}

/* ---- blocking helpers: connect, Redis (RESP), daemon lines -------------- */

static int connect_tcp(const char *hostport, bool quiet)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        die("bad address \"%s\" (HOST:PORT)", hostport);
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &a.sin_addr) != 1)
        die("bad IPv4 address \"%s\"", host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (!quiet)
            fprintf(stderr, "rebound-bench: connect %s: %s\n", hostport, strerror(errno));
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int connect_unix(const char *path, bool quiet)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        die("socket path too long: %s", path);
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (!quiet)
            fprintf(stderr, "rebound-bench: connect %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* The daemon's address for this run. */
static char target_tcp[300], target_unix[PATH_MAX];

static int connect_daemon(bool quiet)
{
    return target_unix[0] ? connect_unix(target_unix, quiet) : connect_tcp(target_tcp, quiet);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one '\n'-terminated line into buf (NUL-terminated, the '\n'
 * dropped) within timeout_ms. Returns its length, or -1. Reads byte by
 * byte: only for the few set-up requests. */
static ssize_t read_line(int fd, char *buf, size_t size, int timeout_ms)
{
    size_t n = 0;
    int64_t deadline = mono_ns() + (int64_t)timeout_ms * 1000000;
    while (n + 1 < size) {
        struct pollfd p = {fd, POLLIN, 0};
        int left = (int)((deadline - mono_ns()) / 1000000);
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r <= 0)
            return -1;
        if (c == '\n') {
            buf[n] = '\0';
            return (ssize_t)n;
        }
        buf[n++] = c;
    }
    return -1;
}

/* One request line, one reply line. Returns 0 or -1. */
static int daemon_call(int fd, const char *req, char *reply, size_t size, int timeout_ms)
{
    if (write_all(fd, req, strlen(req)) != 0)
        return -1;
    return read_line(fd, reply, size, timeout_ms) < 0 ? -1 : 0;
}

/* Ready means: accepts a connection, answers ping, and stats says the
 * schedule is loaded. */
static bool daemon_ready(void)
{
    int fd = connect_daemon(true);
    if (fd < 0)
        return false;
    char line[8192];
    bool ok = daemon_call(fd, "{\"op\":\"ping\"}\n", line, sizeof line, 2000) == 0 && strstr(line, "\"ok\":true") &&
              daemon_call(fd, "{\"op\":\"stats\"}\n", line, sizeof line, 5000) == 0 &&
              strstr(line, "\"loaded\":true");
    close(fd);
    return ok;
}

/* Minimal RESP client: enough for PING, INFO, HLEN, DBSIZE. */
struct resp {
    char type;      /* '+', '-', ':', '$', '*' */
    long long num;  /* ':' value, '$' length, '*' count */
    char *str;      /* '+', '-', '$' (malloc'd) */
};

static int redis_fd = -1;

static int resp_readline(int fd, char *buf, size_t size)
{
    ssize_t n = read_line(fd, buf, size, 10000);
    if (n <= 0 || buf[n - 1] != '\r')
        return -1;
    buf[n - 1] = '\0';
    return 0;
}

static int read_exact(int fd, char *p, size_t n, int timeout_ms)
{
    int64_t deadline = mono_ns() + (int64_t)timeout_ms * 1000000;
    while (n > 0) {
        struct pollfd pf = {fd, POLLIN, 0};
        int left = (int)((deadline - mono_ns()) / 1000000);
        if (left <= 0 || poll(&pf, 1, left) <= 0)
            return -1;
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int resp_read(int fd, struct resp *r)
{
    char line[512];
    memset(r, 0, sizeof *r);
    if (resp_readline(fd, line, sizeof line) != 0)
        return -1;
    r->type = line[0];
    switch (line[0]) {
    case '+':
    case '-':
        r->str = strdup(line + 1);
        return 0;
    case ':':
        r->num = atoll(line + 1);
        return 0;
    case '$':
        r->num = atoll(line + 1);
        if (r->num < 0)
            return 0;
        r->str = malloc((size_t)r->num + 3);
        if (!r->str || read_exact(fd, r->str, (size_t)r->num + 2, 10000) != 0)
            return -1;
        r->str[r->num] = '\0';
        return 0;
    case '*':
        r->num = atoll(line + 1);
        for (long long i = 0; i < r->num; i++) {
            struct resp sub;
            if (resp_read(fd, &sub) != 0)
                return -1;
            free(sub.str);
        }
        return 0;
    default:
        return -1;
    }
}

/* Sends argv as a RESP array and reads the reply (caller frees r->str). */
static int redis_cmd(struct resp *r, int argc, const char **argv)
{
    if (redis_fd < 0) {
        redis_fd = connect_tcp(o.redis, true);
        if (redis_fd < 0)
            return -1;
    }
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
    if ((size_t)n >= sizeof buf || write_all(redis_fd, buf, (size_t)n) != 0 || resp_read(redis_fd, r) != 0) {
        close(redis_fd);
        redis_fd = -1;
        return -1;
    }
    return 0;
}

static void redis_disconnect(void)
{
    if (redis_fd >= 0)
        close(redis_fd);
    redis_fd = -1;
}

/* INFO memory's used_memory, or -1. */
static long long redis_used_memory(void)
{
    struct resp r;
    const char *argv[] = {"INFO", "memory"};
    if (redis_cmd(&r, 2, argv) != 0 || r.type != '$' || !r.str) {
        free(r.str);
        return -1;
    }
    const char *p = strstr(r.str, "used_memory:");
    long long v = p ? atoll(p + 12) : -1;
    free(r.str);
    return v;
}

static long long redis_int(int argc, const char **argv)
{
    struct resp r;
    if (redis_cmd(&r, argc, argv) != 0 || r.type != ':') {
        free(r.str);
        return -1;
    }
    return r.num;
}

/* VmRSS (or another field) of pid in KiB, or -1. */
static long long proc_status_kib(long pid, const char *field)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            v = atoll(line + fl + 1);
            break;
        }
    }
    fclose(f);
    return v;
}

/* CPU time (user + system) of pid in seconds, or NAN. */
static double proc_cpu_s(long pid)
{
    if (pid <= 0)
        return NAN;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name (which may hold spaces): state is
     * field 3, utime and stime are fields 14 and 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return NAN;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Redis's own CPU seconds (INFO cpu, main thread and children), or NAN. */
static double redis_cpu_s(void)
{
    struct resp r;
    const char *argv[] = {"INFO", "cpu"};
    if (redis_cmd(&r, 2, argv) != 0 || r.type != '$' || !r.str) {
        free(r.str);
        return NAN;
    }
    const char *u = strstr(r.str, "used_cpu_user:"), *sy = strstr(r.str, "used_cpu_sys:");
    double v = u && sy ? atof(u + 14) + atof(sy + 13) : NAN;
    free(r.str);
    return v;
}

/* Prints Redis's per-command counters (calls, CPU) since its start or its
 * last CONFIG RESETSTAT: where Redis spent its time. */
static void print_commandstats(void)
{
    struct resp r;
    const char *argv[] = {"INFO", "commandstats"};
    if (redis_cmd(&r, 2, argv) != 0 || r.type != '$' || !r.str) {
        free(r.str);
        return;
    }
    printf("  redis commandstats (calls, usec total, usec per call):\n");
    for (char *line = strtok(r.str, "\r\n"); line; line = strtok(NULL, "\r\n")) {
        long long calls, usec;
        double per;
        char name[64];
        if (sscanf(line, "cmdstat_%63[^:]:calls=%lld,usec=%lld,usec_per_call=%lf", name, &calls, &usec, &per) == 4)
            printf("    %-14s %10lld %12lld %10.2f\n", name, calls, usec, per);
    }
    free(r.str);
}

static long current_daemon_pid(void)
{
    return daemon_pid > 0 ? (long)daemon_pid : o.daemon_pid;
}

/* ---- the policies ------------------------------------------------------- */

/* Writes the policy for kind "ingest" (greylist first delay 15-16 min) or
 * "fire" (greylist delays 1 ms) derived from base to out. */
static void write_policy(const char *kind, const char *base, FILE *out)
{
    json_error_t jerr;
    json_t *root = json_load_file(base, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        die("%s:%d: %s", base, jerr.line, jerr.text);
    json_t *gl = json_object_get(json_object_get(root, "classes"), "greylist");
    json_t *delays = json_object_get(gl, "delays");
    if (!json_is_array(delays) || json_array_size(delays) == 0)
        die("%s: no classes.greylist.delays to adjust", base);
    if (strcmp(kind, "ingest") == 0) {
        json_array_set_new(delays, 0, json_pack("[ss]", "15m", "16m"));
    } else if (strcmp(kind, "fire") == 0) {
        for (size_t i = 0; i < json_array_size(delays); i++)
            json_array_set_new(delays, i, json_string("1ms"));
    } else {
        die("unknown policy kind \"%s\" (ingest or fire)", kind);
    }
    json_t *comment = json_string(strcmp(kind, "ingest") == 0
                                      ? "rebound-bench: the shipped policy, greylist's first delay 15 min + up to 60 s"
                                      : "rebound-bench: the shipped policy, greylist delays 1 ms (due = not_before)");
    json_object_set_new(gl, "comment", comment);
    if (json_dumpf(root, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0)
        die("cannot write the policy");
    fputc('\n', out);
    json_decref(root);
}

/* ---- starting Redis and the daemon -------------------------------------- */

static char redis_addr_buf[64];
static char *daemon_argv[24];
static char daemon_log[PATH_MAX];

static void start_redis(void)
{
    int port = free_port();
    char portbuf[16], dirbuf[PATH_MAX], logbuf[PATH_MAX + 16];
    snprintf(portbuf, sizeof portbuf, "%d", port);
    snprintf(dirbuf, sizeof dirbuf, "%s", tmpdir);
    snprintf(logbuf, sizeof logbuf, "%s/redis.log", tmpdir);
    bool aof = strcmp(o.start_redis, "mem") != 0;
    bool always = strcmp(o.start_redis, "always") == 0;
    char *argv[] = {"redis-server", "--port", portbuf, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                    aof ? "yes" : "no", "--appendfsync", always ? "always" : "everysec", "--dir", dirbuf, "--logfile", logbuf,
                    "--daemonize", "no", NULL};
    redis_pid = spawn(argv, logbuf);
    snprintf(redis_addr_buf, sizeof redis_addr_buf, "127.0.0.1:%d", port);
    o.redis = redis_addr_buf;
    int64_t deadline = mono_ns() + 10 * 1000000000LL;
    while (mono_ns() < deadline) {
        struct resp r;
        const char *ping[] = {"PING"};
        if (redis_cmd(&r, 1, ping) == 0) {
            bool pong = r.type == '+';
            free(r.str);
            if (pong)
                return;
        }
        if (!child_alive(redis_pid))
            die("redis-server exited at start; see %s", logbuf);
        sleep_ms(10);
    }
    die("redis-server did not answer in 10 s");
}

static void prepare_daemon(void)
{
    static char listen[64], unix_path[PATH_MAX], policy[PATH_MAX];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", free_port());
    snprintf(unix_path, sizeof unix_path, "%s/rebound.sock", tmpdir);
    snprintf(daemon_log, sizeof daemon_log, "%s/reboundd.log", tmpdir);
    if (o.policy) {
        snprintf(policy, sizeof policy, "%s", o.policy);
    } else {
        snprintf(policy, sizeof policy, "%s/policy.json", tmpdir);
        FILE *f = fopen(policy, "w");
        if (!f)
            die("%s: %s", policy, strerror(errno));
        write_policy(o.w == W2 || o.w == W3 ? "fire" : "ingest", o.base_policy, f);
        fclose(f);
    }
    int n = 0;
    daemon_argv[n++] = (char *)o.start_daemon;
    if (o.daemon_config) {
        daemon_argv[n++] = "-c";
        daemon_argv[n++] = (char *)o.daemon_config;
    }
    daemon_argv[n++] = "--listen";
    daemon_argv[n++] = listen;
    daemon_argv[n++] = "--unix";
    daemon_argv[n++] = unix_path;
    daemon_argv[n++] = "--redis";
    daemon_argv[n++] = (char *)o.redis;
    daemon_argv[n++] = "--policy";
    daemon_argv[n++] = policy;
    daemon_argv[n++] = "--log-level";
    daemon_argv[n++] = "warn";
    daemon_argv[n] = NULL;
    snprintf(target_tcp, sizeof target_tcp, "%s", listen);
    if (o.via_unix)
        snprintf(target_unix, sizeof target_unix, "%s", unix_path);
}

/* Starts the daemon and waits until it is ready. Returns ms to ready. */
static double start_daemon(int timeout_s)
{
    int64_t t0 = mono_ns();
    daemon_pid = spawn(daemon_argv, daemon_log);
    int64_t deadline = t0 + (int64_t)timeout_s * 1000000000LL;
    while (mono_ns() < deadline) {
        if (daemon_ready())
            return (double)(mono_ns() - t0) / 1e6;
        if (!child_alive(daemon_pid)) {
            daemon_pid = 0;
            die("reboundd exited at start; see %s (use --keep)", daemon_log);
        }
        sleep_ms(5);
    }
    die("reboundd was not ready within %d s", timeout_s);
}

/* ---- the client connections --------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap, off; /* unconsumed bytes are p[off, len) */
};

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->off > 0 && (b->off == b->len || b->off > b->cap / 2)) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + extra)
        cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p)
        die("out of memory");
    b->cap = cap;
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        buf_reserve(b, (size_t)(n > 0 ? n : 64) + 1);
    }
}

struct conn {
    int fd;
    int owner;           /* routed: the index of the instance it talks to */
    bool sub;            /* the subscriber connection */
    bool want_out;       /* EPOLLOUT armed */
    struct buf out, in;
    int inflight;
    int64_t *sent;       /* ring of send times (ns), pipeline slots */
    int head, count;
};

struct run {
    struct conn conns[MAX_CONNS + 1];
    int nconns;
    int ep;
    long long next;      /* next report number to send (1-based) */
    /* Routed straight to the shards' owners (see route_plan): each report's
     * owner, and each owner's next report to send; NULL when not routed. */
    unsigned char *owner_of;
    long long next_of[MAX_OWNERS];
    long long acked, errors;
    int64_t *lat;        /* per reply, ns */
    long long nlat;
    int64_t t_first_send, t_last_ack;
    int64_t t_first_send_wall_us, t_last_ack_wall_us;
    /* w2/w3 */
    int64_t due0_ms;     /* T (w2) or T0 (w3) */
    int64_t *recv_us;    /* per report: wall time the retry event arrived, 0 = not yet */
    int64_t *due_ms;     /* per report: the event's due_at */
    long long events, dupes, bad_events;
    char *ack_ids;       /* pending eids, JSON strings joined with ',' */
    size_t ack_len, ack_cap;
    int nack;
    int64_t ack_oldest;
    long long acks_sent;
    bool subscribed;
    char first_error[256];
};

static void conn_arm(struct run *r, struct conn *c, bool out)
{
    if (c->want_out == out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void conn_flush(struct run *r, struct conn *c)
{
    while (c->out.off < c->out.len) {
        ssize_t w = write(c->fd, c->out.p + c->out.off, c->out.len - c->out.off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w <= 0)
            die("write to reboundd: %s", strerror(errno));
        c->out.off += (size_t)w;
    }
    if (c->out.off == c->out.len)
        c->out.off = c->out.len = 0;
    conn_arm(r, c, c->out.off < c->out.len);
}

/* Report i's due time in w2/w3, epoch ms. */
static int64_t due_for(const struct run *r, long long i)
{
    if (o.w == W2)
        return r->due0_ms;
    return r->due0_ms + (int64_t)((i - 1) * o.spread_ms / o.n);
}

/* The next report connection c sends (1-based), 0 when its share is sent:
 * every report in order, or, routed, the next one its instance owns. */
static long long next_report(struct run *r, const struct conn *c)
{
    if (!r->owner_of)
        return r->next <= o.n ? r->next++ : 0;
    long long *i = &r->next_of[c->owner];
    while (*i <= o.n && r->owner_of[*i] != c->owner)
        ++*i;
    return *i <= o.n ? (*i)++ : 0;
}

/* Queues reports while this connection has room in its pipeline. */
static void conn_fill(struct run *r, struct conn *c)
{
    int64_t now = 0;
    bool any = false;
    while (c->inflight < o.pipeline) {
        long long i = next_report(r, c);
        if (i == 0)
            break;
        buf_reserve(&c->out, 256);
        if (o.w == W2 || o.w == W3)
            buf_printf(&c->out,
                       "{\"op\":\"bounce\",\"id\":\"%s%lld\",\"rcpt\":\"u%lld@d%lld.example\",\"code\":451,"
                       "\"enhanced\":\"4.7.1\",\"text\":\"greylisted\",\"not_before\":%lld}\n",
                       o.id_prefix, i, i, i % 1000, (long long)due_for(r, i));
        else
            buf_printf(&c->out,
                       "{\"op\":\"bounce\",\"id\":\"%s%lld\",\"rcpt\":\"u%lld@d%lld.example\",\"code\":451,"
                       "\"enhanced\":\"4.7.1\",\"text\":\"greylisted\"}\n",
                       o.id_prefix, i, i, i % 1000);
        if (!any) {
            now = mono_ns();
            if (!r->t_first_send) {
                r->t_first_send = now;
                r->t_first_send_wall_us = wall_us();
            }
            any = true;
        }
        c->sent[(c->head + c->count) % o.pipeline] = now;
        c->count++;
        c->inflight++;
    }
    if (any)
        conn_flush(r, c);
}

static void note_error(struct run *r, const char *line, size_t len)
{
    r->errors++;
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof r->first_error, "%.*s", (int)(len > 200 ? 200 : len), line);
}

static void on_reply(struct run *r, struct conn *c, const char *line, size_t len, int64_t now)
{
    if (c->count == 0) {
        note_error(r, line, len);
        return;
    }
    int64_t sent = c->sent[c->head];
    c->head = (c->head + 1) % o.pipeline;
    c->count--;
    c->inflight--;
    if (len < 11 || memcmp(line, "{\"ok\":true", 10) != 0)
        note_error(r, line, len);
    r->lat[r->nlat++] = now - sent;
    r->acked++;
    if (r->acked == o.n) {
        r->t_last_ack = now;
        r->t_last_ack_wall_us = wall_us();
    }
}

/* Parses the decimal at p (up to end); returns the value or -1. */
static long long scan_num(const char *p, const char *end)
{
    long long v = 0;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return v;
}

static void ack_flush(struct run *r, struct conn *c)
{
    if (r->nack == 0)
        return;
    buf_reserve(&c->out, r->ack_len + 32);
    buf_printf(&c->out, "{\"op\":\"ack\",\"ids\":[%.*s]}\n", (int)r->ack_len, r->ack_ids);
    r->ack_len = 0;
    r->nack = 0;
    r->acks_sent++;
    conn_flush(r, c);
}

/* An event line on the subscriber: note when report i's retry arrived and
 * queue its eid for the next ack. */
static void on_event(struct run *r, struct conn *c, const char *line, size_t len, int64_t now_us)
{
    const char *end = line + len;
    const char *eid = memmem(line, len, "\"eid\":\"", 7);
    const char *id = memmem(line, len, "\"id\":\"", 6);
    const char *due = memmem(line, len, "\"due_at\":", 9);
    const char *type = memmem(line, len, "\"type\":\"retry\"", 14);
    size_t plen = strlen(o.id_prefix);
    if (!eid || !id || !type) {
        r->bad_events++;
        return;
    }
    eid += 7;
    const char *eid_end = memchr(eid, '"', (size_t)(end - eid));
    if (!eid_end) {
        r->bad_events++;
        return;
    }
    size_t elen = (size_t)(eid_end - eid);
    if (r->ack_len + elen + 4 > r->ack_cap) {
        r->ack_cap = (r->ack_cap + elen + 4) * 2;
        r->ack_ids = realloc(r->ack_ids, r->ack_cap);
        if (!r->ack_ids)
            die("out of memory");
    }
    if (r->nack)
        r->ack_ids[r->ack_len++] = ',';
    r->ack_ids[r->ack_len++] = '"';
    memcpy(r->ack_ids + r->ack_len, eid, elen);
    r->ack_len += elen;
    r->ack_ids[r->ack_len++] = '"';
    if (r->nack++ == 0)
        r->ack_oldest = mono_ns();
    if (r->nack >= o.ack_batch)
        ack_flush(r, c);

    id += 6;
    if ((size_t)(end - id) <= plen || memcmp(id, o.id_prefix, plen) != 0) {
        r->bad_events++; /* not one of ours (an earlier run's event) */
        return;
    }
    const char *digits = id + plen, *q = digits;
    while (q < end && *q >= '0' && *q <= '9')
        q++;
    long long i = scan_num(digits, q);
    if (i < 1 || i > o.n || q >= end || *q != '"') {
        r->bad_events++;
        return;
    }
    if (r->recv_us[i]) {
        r->dupes++;
        return;
    }
    r->recv_us[i] = now_us;
    r->due_ms[i] = due ? scan_num(due + 9, end) : due_for(r, i);
    r->events++;
}

static void on_readable(struct run *r, struct conn *c)
{
    for (;;) {
        buf_reserve(&c->in, READ_CHUNK);
        ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n == 0)
            die("reboundd closed a connection%s%s", r->first_error[0] ? "; its first error reply: " : "",
                r->first_error);
        if (n < 0)
            die("read from reboundd: %s", strerror(errno));
        c->in.len += (size_t)n;
        int64_t now = mono_ns();
        int64_t now_us = c->sub ? wall_us() : 0;
        char *p = c->in.p + c->in.off, *end = c->in.p + c->in.len, *nl;
        while ((nl = memchr(p, '\n', (size_t)(end - p)))) {
            size_t len = (size_t)(nl - p);
            if (c->sub) {
                if (len >= 6 && memcmp(p, "{\"ok\":", 6) == 0) {
                    if (memcmp(p, "{\"ok\":true", 10) != 0)
                        note_error(r, p, len);
                    else if (!r->subscribed)
                        r->subscribed = true;
                } else {
                    on_event(r, c, p, len, now_us);
                }
            } else {
                on_reply(r, c, p, len, now);
            }
            p = nl + 1;
        }
        c->in.off = (size_t)(p - c->in.p);
    }
    if (!c->sub)
        conn_fill(r, c);
}

/* Opens connection c, to addr (HOST:PORT) or, when NULL, to the target. */
static void conn_open_at(struct run *r, struct conn *c, bool sub, const char *addr)
{
    memset(c, 0, sizeof *c);
    c->fd = addr ? connect_tcp(addr, false) : connect_daemon(false);
    if (c->fd < 0)
        die("cannot connect to reboundd at %s", addr ? addr : target_unix[0] ? target_unix : target_tcp);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->sub = sub;
    c->sent = calloc((size_t)o.pipeline, sizeof *c->sent);
    if (!c->sent)
        die("out of memory");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl: %s", strerror(errno));
}

static void conn_open(struct run *r, struct conn *c, bool sub)
{
    conn_open_at(r, c, sub, NULL);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c->out.p);
    free(c->in.p);
    free(c->sent);
}

/* Runs the loop until done() or the deadline; returns false on time-out. */
static bool loop_until(struct run *r, bool (*done)(const struct run *r), int64_t deadline_ns)
{
    struct epoll_event evs[MAX_CONNS + 1];
    struct conn *subc = r->nconns > 0 && r->conns[r->nconns - 1].sub ? &r->conns[r->nconns - 1] : NULL;
    while (!done(r)) {
        int64_t now = mono_ns();
        if (now >= deadline_ns)
            return false;
        int timeout = (int)((deadline_ns - now) / 1000000) + 1;
        if (subc && r->nack) {
            int64_t due = r->ack_oldest + (int64_t)o.ack_delay_ms * 1000000;
            if (now >= due) {
                ack_flush(r, subc);
                continue;
            }
            int t = (int)((due - now) / 1000000) + 1;
            if (t < timeout)
                timeout = t;
        }
        if (timeout > 100)
            timeout = 100;
        int n = epoll_wait(r->ep, evs, MAX_CONNS + 1, timeout);
        check_interrupted();
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(r, c);
            if (evs[k].events & EPOLLOUT)
                conn_flush(r, c);
        }
        if (daemon_pid > 0 && !child_alive(daemon_pid)) {
            daemon_pid = 0;
            die("reboundd died during the run; see its log (use --keep)");
        }
    }
    return true;
}

static bool all_acked(const struct run *r)
{
    return r->acked >= o.n;
}

static bool all_fired(const struct run *r)
{
    return r->events >= o.n;
}

static bool subscribed(const struct run *r)
{
    return r->subscribed || r->errors > 0;
}

/* ---- statistics --------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static int64_t pct(const int64_t *v, long long n, double p)
{
    if (n <= 0)
        return 0;
    long long k = (long long)(p / 100.0 * (double)n + 0.999999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

/* ---- results ------------------------------------------------------------ */

/* The figures of one run; NAN means "not measured". */
struct result {
    double load1;
    double wall_s, rate;
    double p50_ms, p99_ms, max_ms;
    double redis_bytes_per, daemon_bytes_per;
    double redis_mib, daemon_mib;       /* w4: totals after ingest */
    double first_ms, last_ms;           /* w2: after T */
    double ingest_slack_ms;             /* w2/w3: T - end of ingest */
    double restart_ms, stop_ms;         /* w4 */
    double daemon_us_per, redis_us_per; /* CPU per report (w1, w4), per fired retry (w2, w3) */
    double restart_cpu_ms;              /* w4: the restarted daemon's CPU until ready */
    double daemon_mib_restarted;        /* w4: RSS after the restart's load */
    double redis_mib_restarted;
    long long errors, dupes;
    bool valid;
};

static void result_init(struct result *res)
{
    double *d[] = {&res->wall_s, &res->rate, &res->p50_ms, &res->p99_ms, &res->max_ms, &res->redis_bytes_per,
                   &res->daemon_bytes_per, &res->redis_mib, &res->daemon_mib, &res->first_ms, &res->last_ms,
                   &res->ingest_slack_ms, &res->restart_ms, &res->stop_ms, &res->daemon_mib_restarted,
                   &res->redis_mib_restarted, &res->daemon_us_per, &res->redis_us_per, &res->restart_cpu_ms};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        *d[i] = NAN;
    res->errors = res->dupes = 0;
    res->valid = true;
}

/* ---- one run ------------------------------------------------------------ */

static void run_setup(void)
{
    if (o.start_redis || o.start_daemon)
        make_tmpdir();
    if (o.start_redis)
        start_redis();
    if (o.start_daemon) {
        prepare_daemon();
        start_daemon(o.timeout_s);
    } else {
        target_tcp[0] = target_unix[0] = '\0';
        if (o.unix_path)
            snprintf(target_unix, sizeof target_unix, "%s", o.unix_path);
        else
            snprintf(target_tcp, sizeof target_tcp, "%s", o.tcp ? o.tcp : "127.0.0.1:7411");
        if (!daemon_ready())
            die("reboundd at %s is not ready (ping, stats.loaded)", target_unix[0] ? target_unix : target_tcp);
    }
}

static void run_teardown(void)
{
    redis_disconnect();
    cleanup();
}

/* With shards (the target's `cluster` answer maps each shard to its
 * owner), reports go straight to their owners, o.conns connections to each,
 * as a platform's routing client would send them; --via-target sends
 * everything to the target, which relays. Fills owners with the distinct
 * owner addresses and r->owner_of; returns how many, 0 when not routed. */
static int route_plan(struct run *r, char owners[][64])
{
    if (o.via_target || target_unix[0])
        return 0;
    int fd = connect_daemon(false);
    if (fd < 0)
        die("cannot connect to reboundd at %s", target_tcp);
    static char line[1 << 16];
    int rc = daemon_call(fd, "{\"op\":\"cluster\"}\n", line, sizeof line, 5000);
    close(fd);
    json_t *j = rc == 0 ? json_loads(line, 0, NULL) : NULL;
    json_t *map = json_object_get(j, "map");
    int shards = (int)json_integer_value(json_object_get(j, "shards"));
    int nowners = 0, owner_of_shard[SHARD_MAX];
    for (int k = 0; k < shards && k < SHARD_MAX && json_is_array(map); k++) {
        const char *a = json_string_value(json_array_get(map, (size_t)k));
        if (!a || !a[0] || strlen(a) >= 64)
            die("shard %d has no owner in the cluster map; wait until every shard is served", k);
        int w = 0;
        while (w < nowners && strcmp(owners[w], a) != 0)
            w++;
        if (w == nowners) {
            if (nowners == MAX_OWNERS)
                die("more than %d instances own shards", MAX_OWNERS);
            snprintf(owners[nowners++], 64, "%s", a);
        }
        owner_of_shard[k] = w;
    }
    json_decref(j);
    if (shards < 2 || nowners == 0)
        return 0;
    r->owner_of = malloc((size_t)o.n + 1);
    if (!r->owner_of)
        die("out of memory");
    char rcpt[64];
    for (long long i = 1; i <= o.n; i++) {
        int len = snprintf(rcpt, sizeof rcpt, "u%lld@d%lld.example", i, i % 1000);
        r->owner_of[i] = (unsigned char)owner_of_shard[shard_of_rcpt(rcpt, (size_t)len, shards)];
    }
    fprintf(stderr, "rebound-bench: %d shards on %d instances: reports go straight to their owners\n", shards,
            nowners);
    return nowners;
}

static void ingest_open(struct run *r)
{
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    if (r->ep < 0)
        die("epoll_create1: %s", strerror(errno));
    char owners[MAX_OWNERS][64];
    int nowners = route_plan(r, owners);
    r->nconns = nowners > 0 ? o.conns * nowners : o.conns;
    if (r->nconns > MAX_CONNS)
        die("%d connections to each of %d instances: more than %d", o.conns, nowners, MAX_CONNS);
    for (int k = 0; k < r->nconns; k++) {
        conn_open_at(r, &r->conns[k], false, nowners > 0 ? owners[k % nowners] : NULL);
        r->conns[k].owner = nowners > 0 ? k % nowners : 0;
    }
    r->next = 1;
    for (int k = 0; k < MAX_OWNERS; k++)
        r->next_of[k] = 1;
    r->lat = malloc((size_t)o.n * sizeof *r->lat);
    if (!r->lat)
        die("out of memory");
}

static void run_close(struct run *r)
{
    for (int k = 0; k < r->nconns; k++)
        conn_close(&r->conns[k]);
    close(r->ep);
    free(r->owner_of);
    free(r->lat);
    free(r->recv_us);
    free(r->due_ms);
    free(r->ack_ids);
}

/* Sends all N reports and waits for every reply; fills wall, rate and
 * latencies. */
static void ingest(struct run *r, struct result *res)
{
    for (int k = 0; k < r->nconns; k++)
        if (!r->conns[k].sub)
            conn_fill(r, &r->conns[k]);
    int64_t deadline = mono_ns() + (int64_t)o.timeout_s * 1000000000LL;
    if (!loop_until(r, all_acked, deadline))
        die("time-out: %lld of %lld reports acknowledged after %d s", r->acked, o.n, o.timeout_s);
    res->wall_s = (double)(r->t_last_ack - r->t_first_send) / 1e9;
    res->rate = (double)o.n / res->wall_s;
    qsort(r->lat, (size_t)r->nlat, sizeof *r->lat, cmp_i64);
    res->p50_ms = (double)pct(r->lat, r->nlat, 50) / 1e6;
    res->p99_ms = (double)pct(r->lat, r->nlat, 99) / 1e6;
    res->max_ms = r->nlat ? (double)r->lat[r->nlat - 1] / 1e6 : NAN;
    res->errors = r->errors;
    if (r->errors) {
        fprintf(stderr, "rebound-bench: %lld error replies; the first: %s\n", r->errors, r->first_error);
        res->valid = false;
    }
}

static void run_w1(struct result *res)
{
    struct run *r = calloc(1, sizeof *r);
    if (!r)
        die("out of memory");
    long long mem0 = redis_used_memory();
    long long rss0 = proc_status_kib(current_daemon_pid(), "VmRSS");
    double dcpu0 = proc_cpu_s(current_daemon_pid()), rcpu0 = redis_cpu_s();
    ingest_open(r);
    ingest(r, res);
    res->daemon_us_per = (proc_cpu_s(current_daemon_pid()) - dcpu0) * 1e6 / (double)o.n;
    res->redis_us_per = (redis_cpu_s() - rcpu0) * 1e6 / (double)o.n;
    long long mem1 = redis_used_memory();
    long long rss1 = proc_status_kib(current_daemon_pid(), "VmRSS");
    if (mem0 >= 0 && mem1 >= 0)
        res->redis_bytes_per = (double)(mem1 - mem0) / (double)o.n;
    if (rss0 >= 0 && rss1 >= 0)
        res->daemon_bytes_per = (double)(rss1 - rss0) * 1024.0 / (double)o.n;
    if (mem1 >= 0)
        res->redis_mib = (double)mem1 / 1048576.0;
    if (rss1 >= 0)
        res->daemon_mib = (double)rss1 / 1024.0;
    if (o.w == W4) {
        const char *hlen[] = {"HLEN", "rebound:msg"};
        long long stored = redis_int(2, hlen);
        if (stored >= 0 && stored < o.n) {
            fprintf(stderr, "rebound-bench: only %lld records in Redis for %lld reports\n", stored, o.n);
            res->valid = false;
        }
    }
    run_close(r);
    free(r);
}

static void run_w4(struct result *res)
{
    if (!o.start_daemon)
        die("w4 restarts the daemon: it needs --start-daemon");
    run_w1(res);
    /* Kill, start again, time until ready. SIGTERM is the ordinary stop
     * (systemctl restart); it waits for nothing here, the queue is idle. */
    res->stop_ms = (double)stop_child(&daemon_pid, SIGTERM, 60000);
    res->restart_ms = start_daemon(o.timeout_s);
    res->restart_cpu_ms = proc_cpu_s(current_daemon_pid()) * 1000.0;
    long long rss = proc_status_kib(current_daemon_pid(), "VmRSS");
    long long mem = redis_used_memory();
    if (rss >= 0)
        res->daemon_mib_restarted = (double)rss / 1024.0;
    if (mem >= 0)
        res->redis_mib_restarted = (double)mem / 1048576.0;
}

/* w2 and w3: subscribe, ingest with not_before, then collect the events. */
static void run_fire(struct result *res)
{
    struct run *r = calloc(1, sizeof *r);
    if (!r)
        die("out of memory");
    r->recv_us = calloc((size_t)o.n + 1, sizeof *r->recv_us);
    r->due_ms = calloc((size_t)o.n + 1, sizeof *r->due_ms);
    if (!r->recv_us || !r->due_ms)
        die("out of memory");
    ingest_open(r);
    struct conn *sc = &r->conns[r->nconns++];
    conn_open(r, sc, true);
    buf_reserve(&sc->out, 256);
    buf_printf(&sc->out, "{\"op\":\"subscribe\",\"group\":\"%s\",\"types\":[\"retry\"]}\n", o.group);
    conn_flush(r, sc);
    if (!loop_until(r, subscribed, mono_ns() + 10 * 1000000000LL) || r->errors)
        die("subscribe failed: %s", r->first_error[0] ? r->first_error : "no reply");

    long long lead = o.lead_ms > 0 ? o.lead_ms : 2000 + o.n / 8;
    r->due0_ms = wall_us() / 1000 + lead;
    ingest(r, res);
    int64_t t_due_us = r->due0_ms * 1000;
    res->ingest_slack_ms = (double)(t_due_us - r->t_last_ack_wall_us) / 1000.0;
    if (res->ingest_slack_ms < 500) {
        fprintf(stderr, "rebound-bench: ingest ended %.0f ms before the due instant (< 500 ms): run invalid; "
                        "raise --lead-ms\n", res->ingest_slack_ms);
        res->valid = false;
    }
    double dcpu0 = proc_cpu_s(current_daemon_pid()), rcpu0 = redis_cpu_s();
    int64_t last_due_ms = o.w == W2 ? r->due0_ms : due_for(r, o.n);
    int64_t wait_ns = (last_due_ms * 1000 - wall_us()) * 1000 + (int64_t)o.timeout_s * 1000000000LL;
    if (!loop_until(r, all_fired, mono_ns() + wait_ns)) {
        fprintf(stderr, "rebound-bench: time-out: %lld of %lld retry events after %d s past the due time\n", r->events,
                o.n, o.timeout_s);
        res->valid = false;
    }
    /* Ack the tail so a next run on the same daemon starts clean. */
    ack_flush(r, sc);
    if (r->events > 0) {
        res->daemon_us_per = (proc_cpu_s(current_daemon_pid()) - dcpu0) * 1e6 / (double)r->events;
        res->redis_us_per = (redis_cpu_s() - rcpu0) * 1e6 / (double)r->events;
    }

    res->dupes = r->dupes;
    if (r->bad_events)
        fprintf(stderr, "rebound-bench: %lld events that were not this run's retries\n", r->bad_events);
    int64_t *late = malloc(((size_t)o.n + 1) * sizeof *late);
    if (!late)
        die("out of memory");
    long long nl = 0;
    int64_t first = INT64_MAX, last = INT64_MIN;
    for (long long i = 1; i <= o.n; i++) {
        if (!r->recv_us[i])
            continue;
        int64_t l = r->recv_us[i] - r->due_ms[i] * 1000;
        late[nl++] = l;
        if (r->recv_us[i] < first)
            first = r->recv_us[i];
        if (r->recv_us[i] > last)
            last = r->recv_us[i];
    }
    qsort(late, (size_t)nl, sizeof *late, cmp_i64);
    if (o.w == W2 && nl > 0) {
        res->first_ms = (double)(first - t_due_us) / 1000.0;
        res->last_ms = (double)(last - t_due_us) / 1000.0;
        res->rate = res->last_ms > 0 ? (double)nl / (res->last_ms / 1000.0) : NAN;
    }
    if (nl > 0) {
        res->p50_ms = (double)pct(late, nl, 50) / 1000.0;
        res->p99_ms = (double)pct(late, nl, 99) / 1000.0;
        res->max_ms = (double)late[nl - 1] / 1000.0;
    }
    free(late);
    run_close(r);
    free(r);
}

/* ---- output ------------------------------------------------------------- */

static double median_of(const struct result *res, int n, size_t offset)
{
    double v[MAX_RUNS];
    int k = 0;
    for (int i = 0; i < n; i++) {
        double x = *(const double *)((const char *)&res[i] + offset);
        if (!isnan(x))
            v[k++] = x;
    }
    if (k == 0)
        return NAN;
    qsort(v, (size_t)k, sizeof v[0], cmp_double);
    return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

#define MED(field) median_of(res, n, offsetof(struct result, field))

static void fmt_num(char *buf, size_t size, double v, int decimals)
{
    if (isnan(v))
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.*f", decimals, v);
}

static const char *mode_name(void)
{
    if (!o.start_redis)
        return "external";
    return strcmp(o.start_redis, "aof") == 0      ? "aof-everysec"
           : strcmp(o.start_redis, "always") == 0 ? "aof-always"
                                                  : "no-persistence";
}

struct column {
    const char *title;
    size_t offset; /* of a double in struct result */
    int decimals;
};

#define COL(t, field, d) {t, offsetof(struct result, field), d}

static const struct column cols_w1[] = {
    COL("reports/s", rate, 0),          COL("wall s", wall_s, 3),           COL("p50 ms", p50_ms, 2),
    COL("p99 ms", p99_ms, 2),           COL("redis B/ret", redis_bytes_per, 0),
    COL("daemon B/ret", daemon_bytes_per, 0), COL("daemon us/op", daemon_us_per, 2),
    COL("redis us/op", redis_us_per, 2), COL("load", load1, 2),
};
static const struct column cols_w2[] = {
    COL("first ms", first_ms, 1),       COL("last ms", last_ms, 1),         COL("fires/s", rate, 0),
    COL("late p50", p50_ms, 1),         COL("slack ms", ingest_slack_ms, 0), COL("daemon us/ev", daemon_us_per, 2),
    COL("redis us/ev", redis_us_per, 2), COL("load", load1, 2),
};
static const struct column cols_w3[] = {
    COL("p50 ms", p50_ms, 2),           COL("p99 ms", p99_ms, 2),           COL("max ms", max_ms, 2),
    COL("slack ms", ingest_slack_ms, 0), COL("daemon us/ev", daemon_us_per, 2), COL("redis us/ev", redis_us_per, 2),
    COL("load", load1, 2),
};
static const struct column cols_w4[] = {
    COL("ingest/s", rate, 0),           COL("redis MiB", redis_mib, 1),     COL("daemon MiB", daemon_mib, 1),
    COL("redis B/ret", redis_bytes_per, 0), COL("daemon B/ret", daemon_bytes_per, 0),
    COL("restart ms", restart_ms, 0),   COL("restart cpu ms", restart_cpu_ms, 0),
    COL("MiB restarted", daemon_mib_restarted, 1), COL("load", load1, 2),
};

static const struct column *columns(size_t *n)
{
    switch (o.w) {
    case W1:
        *n = sizeof cols_w1 / sizeof cols_w1[0];
        return cols_w1;
    case W2:
        *n = sizeof cols_w2 / sizeof cols_w2[0];
        return cols_w2;
    case W3:
        *n = sizeof cols_w3 / sizeof cols_w3[0];
        return cols_w3;
    default:
        *n = sizeof cols_w4 / sizeof cols_w4[0];
        return cols_w4;
    }
}

static void print_row(const char *name, const struct result *x)
{
    size_t n;
    const struct column *c = columns(&n);
    printf("%-*s", o.nmodes > 1 ? 14 : 7, name);
    for (size_t i = 0; i < n; i++) {
        char v[32];
        fmt_num(v, sizeof v, *(const double *)((const char *)x + c[i].offset), c[i].decimals);
        printf(" %*s", (int)strlen(c[i].title) > 9 ? (int)strlen(c[i].title) : 9, v);
    }
    putchar('\n');
}

static void print_header(void)
{
    size_t n;
    const struct column *c = columns(&n);
    printf("%s  n=%lld  conns=%d  pipeline=%d  redis=%s%s  via=%s\n", o.wname, o.n, o.conns, o.pipeline, mode_name(),
           o.nmodes > 1 ? " (and the other modes, alternately)" : "", target_unix[0] ? "unix" : "tcp");
    printf("%-*s", o.nmodes > 1 ? 14 : 7, "run");
    for (size_t i = 0; i < n; i++)
        printf(" %*s", (int)strlen(c[i].title) > 9 ? (int)strlen(c[i].title) : 9, c[i].title);
    putchar('\n');
}

static void json_num(FILE *f, const char *name, double v)
{
    if (isnan(v))
        fprintf(f, ",\"%s\":null", name);
    else
        fprintf(f, ",\"%s\":%.3f", name, v);
}

static void write_json(FILE *f, const char *run, const struct result *x)
{
    time_t t = time(NULL);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    fprintf(f, "{\"system\":\"rebound\",\"workload\":\"%s\",\"run\":\"%s\",\"label\":\"%s\",\"mode\":\"%s\","
               "\"n\":%lld,\"conns\":%d,\"pipeline\":%d,\"via\":\"%s\",\"date\":\"%s\",\"valid\":%s,"
               "\"errors\":%lld,\"dupes\":%lld",
            o.wname, run, o.label ? o.label : "", mode_name(), o.n, o.conns, o.pipeline,
            target_unix[0] ? "unix" : "tcp", when, x->valid ? "true" : "false", x->errors, x->dupes);
    json_num(f, "load1", x->load1);
    json_num(f, "wall_s", x->wall_s);
    json_num(f, o.w == W2 ? "fires_per_s" : "reports_per_s", x->rate);
    json_num(f, o.w == W1 || o.w == W4 ? "latency_p50_ms" : "lateness_p50_ms", x->p50_ms);
    json_num(f, o.w == W1 || o.w == W4 ? "latency_p99_ms" : "lateness_p99_ms", x->p99_ms);
    json_num(f, o.w == W1 || o.w == W4 ? "latency_max_ms" : "lateness_max_ms", x->max_ms);
    json_num(f, "redis_bytes_per_retry", x->redis_bytes_per);
    json_num(f, "daemon_bytes_per_retry", x->daemon_bytes_per);
    json_num(f, "redis_used_mib", x->redis_mib);
    json_num(f, "daemon_rss_mib", x->daemon_mib);
    json_num(f, "first_fire_after_due_ms", x->first_ms);
    json_num(f, "last_fire_after_due_ms", x->last_ms);
    json_num(f, "ingest_slack_ms", x->ingest_slack_ms);
    json_num(f, "stop_ms", x->stop_ms);
    json_num(f, "restart_ready_ms", x->restart_ms);
    json_num(f, "daemon_rss_mib_after_restart", x->daemon_mib_restarted);
    json_num(f, "redis_used_mib_after_restart", x->redis_mib_restarted);
    json_num(f, "daemon_cpu_us_per_op", x->daemon_us_per);
    json_num(f, "redis_cpu_us_per_op", x->redis_us_per);
    json_num(f, "restart_cpu_ms", x->restart_cpu_ms);
    fputs("}\n", f);
}

/* The median of each figure over n runs into m. */
static void median_result(struct result *m, const struct result *res, int n)
{
    result_init(m);
    m->load1 = MED(load1), m->wall_s = MED(wall_s), m->rate = MED(rate), m->p50_ms = MED(p50_ms);
    m->p99_ms = MED(p99_ms), m->max_ms = MED(max_ms), m->redis_bytes_per = MED(redis_bytes_per);
    m->daemon_bytes_per = MED(daemon_bytes_per), m->redis_mib = MED(redis_mib), m->daemon_mib = MED(daemon_mib);
    m->first_ms = MED(first_ms), m->last_ms = MED(last_ms), m->ingest_slack_ms = MED(ingest_slack_ms);
    m->restart_ms = MED(restart_ms), m->stop_ms = MED(stop_ms);
    m->daemon_mib_restarted = MED(daemon_mib_restarted), m->redis_mib_restarted = MED(redis_mib_restarted);
    m->daemon_us_per = MED(daemon_us_per), m->redis_us_per = MED(redis_us_per);
    m->restart_cpu_ms = MED(restart_cpu_ms);
    for (int k = 0; k < n; k++) {
        m->errors += res[k].errors;
        m->dupes += res[k].dupes;
        m->valid = m->valid && res[k].valid;
    }
}

/* The modes' medians (or single runs, stride apart in r) side by side,
 * each against no persistence when it is one of them (else the first):
 * what persistence costs, in one table. */
static void print_side_by_side(const struct result *r, int stride)
{
    size_t n;
    const struct column *c = columns(&n);
    int base = 0;
    for (int mi = 0; mi < o.nmodes; mi++)
        if (strcmp(o.modes[mi], "mem") == 0)
            base = mi;
    o.start_redis = o.modes[base];
    printf("\n%-22s", "side by side");
    for (int mi = 0; mi < o.nmodes; mi++) {
        o.start_redis = o.modes[mi];
        printf(" %15s", mode_name());
        if (mi != base)
            printf(" %8s", "x");
    }
    putchar('\n');
    for (size_t i = 0; i < n; i++) {
        printf("%-22s", c[i].title);
        double ref = *(const double *)((const char *)&r[base * stride] + c[i].offset);
        for (int mi = 0; mi < o.nmodes; mi++) {
            double v = *(const double *)((const char *)&r[mi * stride] + c[i].offset);
            char buf[32];
            fmt_num(buf, sizeof buf, v, c[i].decimals);
            printf(" %15s", buf);
            if (mi != base) {
                fmt_num(buf, sizeof buf, ref != 0 && !isnan(ref) ? v / ref : NAN, 2);
                printf(" %8s", buf);
            }
        }
        putchar('\n');
    }
    o.start_redis = o.modes[0];
}

/* ---- main --------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rebound-bench w1|w2|w3|w4 [options]\n"
            "       rebound-bench policy ingest|fire [--base-policy FILE]\n"
            "\n"
            "Target (one of):\n"
            "  --start-daemon PATH   start this reboundd (fresh for every run)\n"
            "  --tcp HOST:PORT       a running reboundd (default 127.0.0.1:7411); with shards,\n"
            "                        each report goes straight to its shard's owner (the\n"
            "                        cluster op's map), --conns connections to each\n"
            "  --via-target          with shards: send everything to --tcp, which relays\n"
            "  --unix PATH           a running reboundd's Unix socket\n"
            "Redis (one of):\n"
            "  --start-redis MODES   start a private redis-server: mem (appendonly no), aof (yes +\n"
            "                        appendfsync everysec, the default with --start-daemon), always\n"
            "                        (yes + appendfsync always); a list (aof,mem) runs the modes\n"
            "                        alternately, --runs times each, and prints them side by side\n"
            "  --redis HOST:PORT     the Redis the daemon uses (for INFO memory)\n"
            "Workload:\n"
            "  --n N                 reports (w1 200000, w2 100000, w3 20000, w4 1000000)\n"
            "  --conns C             client connections (4)\n"
            "  --pipeline P          requests in flight per connection (64)\n"
            "  --spread-ms MS        w3: due times spread over MS (10000)\n"
            "  --lead-ms MS          w2/w3: due instant after the ingest start (2000 + N/8)\n"
            "  --runs R              repeat R times and print the median (fresh Redis and daemon when started)\n"
            "Other:\n"
            "  --via-unix            talk to a started daemon over its Unix socket instead of TCP\n"
            "  --policy FILE         policy for a started daemon (default: derived, see 'policy')\n"
            "  --base-policy FILE    the policy to derive from (default config/policy.json)\n"
            "  --daemon-config FILE  -c FILE for a started daemon\n"
            "  --daemon-pid PID      a running daemon's pid, for its RSS\n"
            "  --group NAME          w2/w3 consumer group (bench)\n"
            "  --ack-batch K         w2/w3: ack every K events (200) or after --ack-delay-ms (5)\n"
            "  --id-prefix S         message ids are S<i> (m)\n"
            "  --json FILE           append one JSON object per run and one for the median\n"
            "  --label TEXT          put TEXT in the JSON\n"
            "  --timeout-s S         per phase (300)\n"
            "  --commandstats        print Redis's per-command calls and CPU after each run\n"
            "  --keep                keep the temp directory (logs, AOF)\n");
}

int main(int argc, char **argv)
{
    enum {
        OPT_N = 256, OPT_CONNS, OPT_PIPELINE, OPT_TCP, OPT_UNIX, OPT_REDIS, OPT_START_REDIS, OPT_START_DAEMON,
        OPT_POLICY, OPT_BASE_POLICY, OPT_DAEMON_CONFIG, OPT_DAEMON_PID, OPT_SPREAD, OPT_LEAD, OPT_RUNS, OPT_GROUP,
        OPT_ACK_BATCH, OPT_ACK_DELAY, OPT_JSON, OPT_LABEL, OPT_ID_PREFIX, OPT_TIMEOUT, OPT_KEEP, OPT_VIA_UNIX,
        OPT_CMDSTATS, OPT_VIA_TARGET,
    };
    static const struct option longopts[] = {
        {"n", required_argument, NULL, OPT_N},
        {"conns", required_argument, NULL, OPT_CONNS},
        {"pipeline", required_argument, NULL, OPT_PIPELINE},
        {"tcp", required_argument, NULL, OPT_TCP},
        {"via-target", no_argument, NULL, OPT_VIA_TARGET},
        {"unix", required_argument, NULL, OPT_UNIX},
        {"redis", required_argument, NULL, OPT_REDIS},
        {"start-redis", required_argument, NULL, OPT_START_REDIS},
        {"start-daemon", required_argument, NULL, OPT_START_DAEMON},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"base-policy", required_argument, NULL, OPT_BASE_POLICY},
        {"daemon-config", required_argument, NULL, OPT_DAEMON_CONFIG},
        {"daemon-pid", required_argument, NULL, OPT_DAEMON_PID},
        {"spread-ms", required_argument, NULL, OPT_SPREAD},
        {"lead-ms", required_argument, NULL, OPT_LEAD},
        {"runs", required_argument, NULL, OPT_RUNS},
        {"group", required_argument, NULL, OPT_GROUP},
        {"ack-batch", required_argument, NULL, OPT_ACK_BATCH},
        {"ack-delay-ms", required_argument, NULL, OPT_ACK_DELAY},
        {"json", required_argument, NULL, OPT_JSON},
        {"label", required_argument, NULL, OPT_LABEL},
        {"id-prefix", required_argument, NULL, OPT_ID_PREFIX},
        {"timeout-s", required_argument, NULL, OPT_TIMEOUT},
        {"keep", no_argument, NULL, OPT_KEEP},
        {"via-unix", no_argument, NULL, OPT_VIA_UNIX},
        {"commandstats", no_argument, NULL, OPT_CMDSTATS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    o.wname = argv[1];
    o.conns = 4;
    o.pipeline = 64;
    o.runs = 1;
    o.spread_ms = 10000;
    o.group = "bench";
    o.ack_batch = 200;
    o.ack_delay_ms = 5;
    o.id_prefix = "m";
    o.timeout_s = 300;
    o.base_policy = REBOUND_SOURCE_DIR "/config/policy.json";
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    bool policy_only = strcmp(argv[1], "policy") == 0;
    if (strcmp(argv[1], "w1") == 0)
        o.w = W1, o.n = 200000;
    else if (strcmp(argv[1], "w2") == 0)
        o.w = W2, o.n = 100000;
    else if (strcmp(argv[1], "w3") == 0)
        o.w = W3, o.n = 20000;
    else if (strcmp(argv[1], "w4") == 0)
        o.w = W4, o.n = 1000000;
    else if (!policy_only)
        die("unknown workload \"%s\" (w1, w2, w3, w4, policy)", argv[1]);
    optind = policy_only ? 3 : 2;
    if (policy_only && argc < 3)
        die("usage: rebound-bench policy ingest|fire [--base-policy FILE]");
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_N: o.n = atoll(optarg); break;
        case OPT_CONNS: o.conns = atoi(optarg); break;
        case OPT_PIPELINE: o.pipeline = atoi(optarg); break;
        case OPT_TCP: o.tcp = optarg; break;
        case OPT_VIA_TARGET: o.via_target = true; break;
        case OPT_UNIX: o.unix_path = optarg; break;
        case OPT_REDIS: o.redis = optarg; break;
        case OPT_START_REDIS: o.start_redis = optarg; break;
        case OPT_START_DAEMON: o.start_daemon = optarg; break;
        case OPT_POLICY: o.policy = optarg; break;
        case OPT_BASE_POLICY: o.base_policy = optarg; break;
        case OPT_DAEMON_CONFIG: o.daemon_config = optarg; break;
        case OPT_DAEMON_PID: o.daemon_pid = atol(optarg); break;
        case OPT_SPREAD: o.spread_ms = atoll(optarg); break;
        case OPT_LEAD: o.lead_ms = atoll(optarg); break;
        case OPT_RUNS: o.runs = atoi(optarg); break;
        case OPT_GROUP: o.group = optarg; break;
        case OPT_ACK_BATCH: o.ack_batch = atoi(optarg); break;
        case OPT_ACK_DELAY: o.ack_delay_ms = atoi(optarg); break;
        case OPT_JSON: o.json = optarg; break;
        case OPT_LABEL: o.label = optarg; break;
        case OPT_ID_PREFIX: o.id_prefix = optarg; break;
        case OPT_TIMEOUT: o.timeout_s = atoi(optarg); break;
        case OPT_KEEP: o.keep = true; break;
        case OPT_VIA_UNIX: o.via_unix = true; break;
        case OPT_CMDSTATS: o.cmdstats = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc)
        die("unexpected argument \"%s\"", argv[optind]);
    if (policy_only) {
        write_policy(argv[2], o.base_policy, stdout);
        return 0;
    }
    if (o.n < 1 || o.conns < 1 || o.conns > MAX_CONNS || o.pipeline < 1 || o.pipeline > 1000 || o.runs < 1 ||
        o.runs > MAX_RUNS || o.spread_ms < 0 || o.ack_batch < 1 || o.ack_batch > 10000 || o.timeout_s < 1)
        die("an option is out of range (see --help)");
    /* What operators run, unless told: AOF everysec. */
    if (!o.start_redis && !o.redis && o.start_daemon)
        o.start_redis = "aof";
    if (o.start_redis) {
        static char list[64];
        snprintf(list, sizeof list, "%s", o.start_redis);
        for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (strcmp(t, "mem") != 0 && strcmp(t, "aof") != 0 && strcmp(t, "always") != 0)
                die("--start-redis takes mem, aof or always, or a comma-separated list of them");
            if (o.nmodes == 3)
                die("--start-redis: at most three modes");
            o.modes[o.nmodes++] = t;
        }
        if (o.nmodes == 0)
            die("--start-redis takes mem, aof or always");
        o.start_redis = o.modes[0];
    } else {
        o.modes[0] = NULL;
        o.nmodes = 1;
    }
    if (!o.start_redis && !o.redis)
        die("say which Redis: --start-redis mem|aof, or --redis HOST:PORT");
    if (o.start_redis && !o.start_daemon)
        die("--start-redis needs --start-daemon (a running daemon would not use that Redis)");
    if (strlen(o.id_prefix) > 100 || strpbrk(o.id_prefix, "\" \\"))
        die("--id-prefix must be printable without spaces, quotes or backslashes");

    atexit(cleanup);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    FILE *jf = NULL;
    if (o.json && !(jf = fopen(o.json, "a")))
        die("%s: %s", o.json, strerror(errno));

    /* With several modes the runs alternate between them (mem, aof, mem,
     * aof, ...), so that a change of the machine's load falls on each. */
    static struct result res[3][MAX_RUNS];
    struct result med[3];
    const char *base_prefix = o.id_prefix;
    char prefix[128];
    for (int k = 0; k < o.runs * o.nmodes; k++) {
        int mi = k % o.nmodes, ri = k / o.nmodes;
        struct result *r = &res[mi][ri];
        o.start_redis = o.modes[mi];
        result_init(r);
        if (!o.start_daemon && o.runs > 1) {
            /* The same daemon: fresh ids, or the reports are duplicates. */
            snprintf(prefix, sizeof prefix, "r%d-%s", k + 1, base_prefix);
            o.id_prefix = prefix;
        }
        r->load1 = loadavg1();
        run_setup();
        if (k == 0)
            print_header();
        if (o.w == W1)
            run_w1(r);
        else if (o.w == W4)
            run_w4(r);
        else
            run_fire(r);
        char name[32];
        snprintf(name, sizeof name, "%d%s%s%s", ri + 1, r->valid ? "" : "*", o.nmodes > 1 ? " " : "",
                 o.nmodes > 1 ? o.modes[mi] : "");
        print_row(name, r);
        if (o.cmdstats)
            print_commandstats();
        fflush(stdout);
        if (jf) {
            write_json(jf, name, r);
            fflush(jf);
        }
        run_teardown();
    }
    for (int mi = 0; o.runs > 1 && mi < o.nmodes; mi++) {
        struct result *res_m = res[mi], *m = &med[mi];
        int n = o.runs;
        o.start_redis = o.modes[mi];
        median_result(m, res_m, n);
        char name[32];
        snprintf(name, sizeof name, "median%s%s%s", m->valid ? "" : "*", o.nmodes > 1 ? " " : "",
                 o.nmodes > 1 ? o.modes[mi] : "");
        print_row(name, m);
        if (jf)
            write_json(jf, "median", m);
    }
    if (o.nmodes > 1)
        print_side_by_side(o.runs > 1 ? med : &res[0][0], o.runs > 1 ? 1 : MAX_RUNS);
    if (jf)
        fclose(jf);
    return 0;
}
