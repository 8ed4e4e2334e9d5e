/*
 * The Redis link against a real redis-server that this program starts,
 * kills with SIGKILL and restarts on a free loopback port:
 *   1. nothing listening: the refusal is reported at once (the connect
 *      time-out is 10 s, so only the adapter's poll-error path can report
 *      it), the link keeps retrying, and becomes READY by itself once
 *      redis-server starts; a link closed while retrying closes cleanly;
 *      a wrong password never becomes READY and says why.
 *   2. commands and scripts round-trip (binary-safe); after SCRIPT FLUSH
 *      script calls still work through the EVAL fallback, each callback
 *      called once with the final reply; a nested, large reply is intact,
 *      and stays so after its callback when retained.
 *   3. SIGKILL with commands in flight: each callback gets NULL exactly
 *      once, with the link already down inside the callback; restart:
 *      READY again.
 *   4. a command time-out (DEBUG SLEEP 2 with timeout_ms 500): NULL reply,
 *      the link drops and reconnects (re-selecting its db).
 *   5. close with commands in flight: replies that come are delivered,
 *      the one that never comes gets NULL at the drain deadline, closed_cb
 *      runs once, and at the end uv_loop_close returns 0.
 * The redis-server child dies with this process (PR_SET_PDEATHSIG) even if
 * the test crashes; normally it is killed at exit.
 */
#include "redis/redis_link.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PASSWORD "rl-test-secret"

static int failures;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                  \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

#define CHECK_INT(a, b)                                                                                                \
    do {                                                                                                               \
        long long a_ = (long long)(a), b_ = (long long)(b);                                                            \
        if (a_ != b_) {                                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, a_, b_);     \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                                                \
    do {                                                                                                               \
        const char *a_ = (a), *b_ = (b);                                                                               \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", __FILE__, __LINE__, #a, #b,          \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                                           \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

/* Fatal when the rest of the test depends on it. */
#define REQUIRE(cond)                                                                                                  \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);                                 \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

/* ---- the redis-server child --------------------------------------------- */

static pid_t redis_pid = -1;
static char redis_dir[256];
static char redis_log[300];

static void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

static void cleanup(void)
{
    redis_stop();
    if (redis_dir[0]) {
        unlink(redis_log);
        rmdir(redis_dir);
    }
}

static void redis_start(int port)
{
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execlp("redis-server", "redis-server", "--port", port_s, "--bind", "127.0.0.1", "--save", "", "--appendonly",
               "no", "--dir", redis_dir, "--daemonize", "no", "--logfile", redis_log, "--requirepass", PASSWORD,
               "--enable-debug-command", "yes", (char *)NULL);
        _exit(127);
    }
    redis_pid = pid;
}

static bool redis_server_found(void)
{
    const char *path = getenv("PATH");
    if (!path)
        return false;
    char *copy = strdup(path);
    bool found = false;
    for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        char file[4096];
        snprintf(file, sizeof file, "%s/redis-server", dir);
        found = access(file, X_OK) == 0;
    }
    free(copy);
    return found;
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(s >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    REQUIRE(bind(s, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(getsockname(s, (struct sockaddr *)&a, &len) == 0);
    close(s);
    return ntohs(a.sin_port);
}

/* ---- the loop ------------------------------------------------------------ */

static uv_loop_t loop;
static uv_timer_t tick; /* keeps UV_RUN_ONCE from blocking when the link is idle */

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

typedef bool (*pred_fn)(const void *arg);

static bool run_until(pred_fn pred, const void *arg, int ms)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + (uint64_t)ms;
    uv_timer_start(&tick, tick_cb, 5, 5);
    while (!(pred && pred(arg)) && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    return pred && pred(arg);
}

static void run_for(int ms)
{
    run_until(NULL, NULL, ms);
}

static bool is_ready(const void *arg)
{
    return redis_link_state(arg) == LINK_READY;
}

static bool has_error(const void *arg)
{
    return redis_link_last_error(arg)[0] != '\0';
}

static void closed_cb(void *arg)
{
    (*(int *)arg)++;
}

static bool flag_set(const void *arg)
{
    return *(const int *)arg > 0;
}

/* ---- callbacks ------------------------------------------------------------ */

struct states {
    int ups, downs;
};

static void state_cb(struct redis_link *link, bool up, void *arg)
{
    struct states *st = arg;
    /* The state is already the new one when the owner hears about it. */
    CHECK(redis_link_ready(link) == up);
    if (up)
        st->ups++;
    else
        st->downs++;
}

/* What one command's callback saw; copies, since the reply dies with the call. */
struct rec {
    int calls;
    int nulls;
    int type;
    long long integer;
    char str[256];
    size_t len;
    size_t elements;
    char elem[3][16];
    size_t elem_len[3];
    enum link_state state_in_cb;
    bool send_in_cb;     /* try a command from inside the callback */
    int send_rc;         /* what redis_link_command returned there */
    bool close_in_cb;    /* close the link from inside the callback */
    void (*closed_cb)(void *);
    void *closed_arg;
};

/* Keeps the whole reply (redis_link_reply_retain) for checks after the
 * callback; the caller releases it. */
static void keep_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    redisReply **out = privdata;
    *out = reply ? redis_link_reply_retain(reply) : NULL;
}

static bool kept(const void *arg)
{
    return *(redisReply *const *)arg != NULL;
}

static void rec_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct rec *r = privdata;
    r->calls++;
    r->state_in_cb = redis_link_state(link);
    if (!reply) {
        r->nulls++;
    } else {
        r->type = reply->type;
        r->integer = reply->integer;
        if (reply->str) {
            r->len = reply->len < sizeof r->str ? reply->len : sizeof r->str - 1;
            memcpy(r->str, reply->str, r->len);
            r->str[r->len] = '\0';
        }
        r->elements = reply->elements;
        for (size_t i = 0; i < reply->elements && i < 3; i++) {
            redisReply *e = reply->element[i];
            r->elem_len[i] = e->len < sizeof r->elem[i] ? e->len : sizeof r->elem[i];
            if (e->str)
                memcpy(r->elem[i], e->str, r->elem_len[i]);
        }
    }
    if (r->send_in_cb) {
        static struct rec sink;
        const char *argv[] = {"PING"};
        r->send_rc = redis_link_command(link, rec_cb, &sink, 1, argv, NULL);
    }
    if (r->close_in_cb)
        redis_link_close(link, r->closed_cb, r->closed_arg);
}

static bool rec_done(const void *arg)
{
    return ((const struct rec *)arg)->calls > 0;
}

struct recs {
    struct rec *r;
    int n;
};

static bool recs_done(const void *arg)
{
    const struct recs *rs = arg;
    for (int i = 0; i < rs->n; i++) {
        if (rs->r[i].calls == 0)
            return false;
    }
    return true;
}

static int send_cmd(struct redis_link *link, struct rec *r, int argc, const char **argv)
{
    memset(r, 0, sizeof *r);
    return redis_link_command(link, rec_cb, r, argc, argv, NULL);
}

/* Sends one command and waits for its reply. */
static struct rec call(struct redis_link *link, int argc, const char **argv)
{
    struct rec r;
    int rc = send_cmd(link, &r, argc, argv);
    CHECK_INT(rc, 0);
    if (rc == 0)
        CHECK(run_until(rec_done, &r, 3000));
    CHECK_INT(r.calls, 1);
    return r;
}

static struct rec call_script(struct redis_link *link, int script, int nkeys, int argc, const char **argv,
                              const size_t *lens)
{
    struct rec r;
    memset(&r, 0, sizeof r);
    int rc = redis_link_script(link, script, rec_cb, &r, nkeys, argc, argv, lens);
    CHECK_INT(rc, 0);
    if (rc == 0)
        CHECK(run_until(rec_done, &r, 3000));
    run_for(20); /* a second call would show up here */
    CHECK_INT(r.calls, 1);
    return r;
}

/* calls= of one command in INFO commandstats (0 when it never ran); the
 * reply is searched inside the callback, while it is alive. */
struct stat_query {
    const char *key;
    long long calls;
    int done;
};

static void stat_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    (void)link;
    struct stat_query *q = privdata;
    q->done++;
    if (reply && reply->type == REDIS_REPLY_STRING) {
        const char *p = strstr(reply->str, q->key);
        q->calls = p ? atoll(p + strlen(q->key)) : 0;
    } else {
        q->calls = -1;
    }
}

static long long command_calls(struct redis_link *link, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "cmdstat_%s:calls=", name);
    struct stat_query q = {key, -1, 0};
    const char *argv[] = {"INFO", "commandstats"};
    CHECK_INT(redis_link_command(link, stat_cb, &q, 2, argv, NULL), 0);
    CHECK(run_until(flag_set, &q.done, 3000));
    return q.calls;
}

/* ---- the tests ------------------------------------------------------------ */

static const char *const scripts[] = {
    "return redis.call('INCRBY', KEYS[1], ARGV[1])",
    "return redis.error_reply('BOOM')",
    "return {KEYS[1], ARGV[1], ARGV[2]}",
};

static struct redis_link_opts base_opts(int port, int64_t timeout_ms)
{
    struct redis_link_opts o = {
        .host = "127.0.0.1",
        .port = port,
        .password = PASSWORD,
        .timeout_ms = timeout_ms,
        .scripts = scripts,
        .nscripts = 3,
    };
    return o;
}

int main(void)
{
    if (!redis_server_found()) {
        if (getenv("REBOUND_REQUIRE_REDIS")) {
            fprintf(stderr, "redis-server not on PATH, and REBOUND_REQUIRE_REDIS is set\n");
            return 1;
        }
        fprintf(stderr, "redis-server not on PATH: skipped\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *tmp = getenv("TMPDIR");
    snprintf(redis_dir, sizeof redis_dir, "%s/rebound-link-XXXXXX", tmp && tmp[0] ? tmp : P_tmpdir);
    REQUIRE(mkdtemp(redis_dir) != NULL);
    snprintf(redis_log, sizeof redis_log, "%s/redis.log", redis_dir);
    atexit(cleanup);

    REQUIRE(uv_loop_init(&loop) == 0);
    uv_timer_init(&loop, &tick);


    /* 1. Nothing listening. */
    int port = free_port();
    struct states st_a = {0};
    struct redis_link_opts oa = base_opts(port, 10000);
    oa.user = "default"; /* AUTH user password (the ACL form) */
    struct redis_link *a = redis_link_new(&loop, &oa, state_cb, &st_a);
    CHECK_INT(redis_link_state(a), LINK_DISCONNECTED);
    CHECK_STR(redis_link_last_error(a), "");
    struct rec r0;
    const char *ping[] = {"PING"};
    CHECK_INT(send_cmd(a, &r0, 1, ping), -1);
    redis_link_start(a);
    CHECK(run_until(has_error, a, 2000));
    if (!strstr(redis_link_last_error(a), "refused"))
        fprintf(stderr, "last error: %s\n", redis_link_last_error(a));
    CHECK(strstr(redis_link_last_error(a), "refused") != NULL);
    run_for(600);
    CHECK(redis_link_state(a) == LINK_DISCONNECTED || redis_link_state(a) == LINK_CONNECTING);
    CHECK_INT(st_a.ups, 0);
    CHECK_INT(st_a.downs, 0);
    CHECK_INT(redis_link_inflight(a), 0);
    CHECK_INT(r0.calls, 0);

    /* A link closed while it waits to retry closes without any reply. */
    struct redis_link_opts od = base_opts(port, 10000);
    struct redis_link *d = redis_link_new(&loop, &od, NULL, NULL);
    redis_link_start(d);
    CHECK(run_until(has_error, d, 2000));
    int d_closed = 0;
    redis_link_close(d, closed_cb, &d_closed);
    CHECK(run_until(flag_set, &d_closed, 2000));
    CHECK_INT(d_closed, 1);

    redis_start(port);
    CHECK(run_until(is_ready, a, 8000));
    REQUIRE(redis_link_ready(a));
    CHECK_INT(st_a.ups, 1);
    CHECK_INT(st_a.downs, 0);

    /* A wrong password: refused with the reason, never READY. */
    struct redis_link_opts oe = base_opts(port, 2000);
    oe.password = "wrong";
    struct states st_e = {0};
    struct redis_link *e = redis_link_new(&loop, &oe, state_cb, &st_e);
    redis_link_start(e);
    CHECK(run_until(has_error, e, 2000));
    CHECK(strstr(redis_link_last_error(e), "AUTH failed") != NULL);
    run_for(200);
    CHECK_INT(st_e.ups, 0);
    int e_closed = 0;
    redis_link_close(e, closed_cb, &e_closed);
    CHECK(run_until(flag_set, &e_closed, 2000));

    /* 2. Commands and scripts. */
    {
        const char *set[] = {"SET", "rl:bin", "a\0b"};
        const size_t set_len[] = {3, 6, 3};
        struct rec r;
        memset(&r, 0, sizeof r);
        CHECK_INT(redis_link_command(a, rec_cb, &r, 3, set, set_len), 0);
        CHECK(run_until(rec_done, &r, 3000));
        CHECK_INT(r.type, REDIS_REPLY_STATUS);
        CHECK_STR(r.str, "OK");
        const char *get[] = {"GET", "rl:bin"};
        r = call(a, 2, get);
        CHECK_INT(r.type, REDIS_REPLY_STRING);
        CHECK_INT(r.len, 3);
        CHECK(memcmp(r.str, "a\0b", 3) == 0);

        /* Pipelined: counted in flight until answered, answered in order. */
        struct rec incr[3];
        const char *incr_argv[] = {"INCR", "rl:seq"};
        for (int i = 0; i < 3; i++)
            CHECK_INT(send_cmd(a, &incr[i], 2, incr_argv), 0);
        CHECK_INT(redis_link_inflight(a), 3);
        struct recs rs = {incr, 3};
        CHECK(run_until(recs_done, &rs, 3000));
        CHECK_INT(redis_link_inflight(a), 0);
        for (int i = 0; i < 3; i++) {
            CHECK_INT(incr[i].calls, 1);
            CHECK_INT(incr[i].integer, i + 1);
        }

        const char *s0[] = {"rl:cnt", "5"};
        r = call_script(a, 0, 1, 2, s0, NULL);
        CHECK_INT(r.type, REDIS_REPLY_INTEGER);
        CHECK_INT(r.integer, 5);
        r = call_script(a, 1, 0, 0, NULL, NULL);
        CHECK_INT(r.type, REDIS_REPLY_ERROR);
        CHECK(strstr(r.str, "BOOM") != NULL);
        const char *s2[] = {"rl:k", "x\0y", ""};
        const size_t s2_len[] = {4, 3, 0};
        r = call_script(a, 2, 1, 3, s2, s2_len);
        CHECK_INT(r.type, REDIS_REPLY_ARRAY);
        CHECK_INT(r.elements, 3);
        CHECK_INT(command_calls(a, "eval"), 0);

        const char *flush[] = {"SCRIPT", "FLUSH"};
        r = call(a, 2, flush);
        CHECK_STR(r.str, "OK");

        /* NOSCRIPT now: each call is re-sent as EVAL, the caller sees one reply. */
        r = call_script(a, 0, 1, 2, s0, NULL);
        CHECK_INT(r.type, REDIS_REPLY_INTEGER);
        CHECK_INT(r.integer, 10);
        CHECK_INT(command_calls(a, "eval"), 1);
        CHECK_STR(call(a, 2, flush).str, "OK");
        r = call_script(a, 2, 1, 3, s2, s2_len);
        CHECK_INT(r.type, REDIS_REPLY_ARRAY);
        CHECK_INT(r.elem_len[0], 4);
        CHECK(memcmp(r.elem[0], "rl:k", 4) == 0);
        CHECK_INT(r.elem_len[1], 3);
        CHECK(memcmp(r.elem[1], "x\0y", 3) == 0);
        CHECK_STR(call(a, 2, flush).str, "OK");
        r = call_script(a, 1, 0, 0, NULL, NULL);
        CHECK_INT(r.type, REDIS_REPLY_ERROR);
        CHECK(strstr(r.str, "BOOM") != NULL);
        CHECK_INT(command_calls(a, "eval"), 3);
        CHECK_INT(redis_link_inflight(a), 0);

        /* Reply trees (built in the link's own arena): nesting, nil, an
         * empty array, a status, a string larger than an arena block, and
         * thousands of elements, all intact after the callback returned
         * (retained), and after later replies came and went. */
        const char *tree[] = {"EVAL",
                              "local t = {} for i = 1, 5000 do t[i] = 'v' .. i end "
                              "return {1, {'a', false, {}}, string.rep('x', 70000), redis.status_reply('OK'), t}",
                              "0"};
        redisReply *kept_reply = NULL;
        CHECK_INT(redis_link_command(a, keep_cb, &kept_reply, 3, tree, NULL), 0);
        CHECK(run_until(kept, &kept_reply, 3000));
        CHECK_STR(call(a, 2, get).str, "a");
        redisReply *t = kept_reply;
        if (t && t->type == REDIS_REPLY_ARRAY && t->elements == 5) {
            CHECK_INT(t->element[0]->type, REDIS_REPLY_INTEGER);
            CHECK_INT(t->element[0]->integer, 1);
            redisReply *in = t->element[1];
            CHECK_INT(in->type, REDIS_REPLY_ARRAY);
            CHECK_INT(in->elements, 3);
            CHECK_STR(in->element[0]->str, "a");
            CHECK_INT(in->element[1]->type, REDIS_REPLY_NIL);
            CHECK_INT(in->element[2]->type, REDIS_REPLY_ARRAY);
            CHECK_INT(in->element[2]->elements, 0);
            CHECK_INT(t->element[2]->len, 70000);
            CHECK(t->element[2]->str[0] == 'x' && t->element[2]->str[69999] == 'x' &&
                  t->element[2]->str[70000] == '\0');
            CHECK_INT(t->element[3]->type, REDIS_REPLY_STATUS);
            CHECK_STR(t->element[3]->str, "OK");
            CHECK_INT(t->element[4]->elements, 5000);
            int wrong = 0;
            for (size_t i = 0; i < t->element[4]->elements; i++) {
                char want[32];
                snprintf(want, sizeof want, "v%zu", i + 1);
                wrong += strcmp(t->element[4]->element[i]->str, want) != 0;
            }
            CHECK_INT(wrong, 0);
        } else {
            CHECK(!"the reply tree has the wrong shape");
        }
        if (kept_reply)
            redis_link_reply_release(kept_reply);

        /* Refused without a callback: bad script index, nkeys > argc, the subscribe family. */
        struct rec never;
        memset(&never, 0, sizeof never);
        CHECK_INT(redis_link_script(a, 3, rec_cb, &never, 0, 0, NULL, NULL), -1);
        CHECK_INT(redis_link_script(a, 0, rec_cb, &never, 2, 1, s0, NULL), -1);
        const char *sub[] = {"SUBSCRIBE", "ch"};
        CHECK_INT(redis_link_command(a, rec_cb, &never, 2, sub, NULL), -1);
        const char *mon[] = {"monitor"};
        CHECK_INT(redis_link_command(a, rec_cb, &never, 1, mon, NULL), -1);
        run_for(50);
        CHECK_INT(never.calls, 0);
    }

    /* 3. SIGKILL with commands in flight. */
    {
        struct rec blk[3];
        const char *blpop[] = {"BLPOP", "rl:never", "0"};
        for (int i = 0; i < 3; i++) {
            CHECK_INT(send_cmd(a, &blk[i], 3, blpop), 0);
            blk[i].send_in_cb = true;
        }
        run_for(200); /* written and blocking in redis */
        CHECK_INT(redis_link_inflight(a), 3);
        redis_stop();
        struct recs rs = {blk, 3};
        CHECK(run_until(recs_done, &rs, 3000));
        run_for(300);
        for (int i = 0; i < 3; i++) {
            CHECK_INT(blk[i].calls, 1);
            CHECK_INT(blk[i].nulls, 1);
            CHECK(blk[i].state_in_cb != LINK_READY);
            CHECK_INT(blk[i].send_rc, -1);
        }
        CHECK_INT(redis_link_inflight(a), 0);
        CHECK_INT(st_a.downs, 1);
        CHECK(!redis_link_ready(a));
        CHECK(has_error(a));

        redis_start(port);
        CHECK(run_until(is_ready, a, 8000));
        CHECK_INT(st_a.ups, 2);
        struct rec r = call(a, 1, ping);
        CHECK_STR(r.str, "PONG");
        const char *s0[] = {"rl:cnt", "1"};
        r = call_script(a, 0, 1, 2, s0, NULL); /* fresh server: the key is gone */
        CHECK_INT(r.integer, 1);

        int a_closed = 0;
        redis_link_close(a, closed_cb, &a_closed);
        CHECK(run_until(flag_set, &a_closed, 3000));
        CHECK_INT(a_closed, 1);
        CHECK_INT(st_a.downs, 2);
    }

    /* 4. Command time-out. */
    {
        struct redis_link_opts ob = base_opts(port, 500);
        ob.password = PASSWORD; /* AUTH password (the legacy form) */
        ob.db = 1;
        ob.nscripts = 0;
        struct states st_b = {0};
        struct redis_link *b = redis_link_new(&loop, &ob, state_cb, &st_b);
        redis_link_start(b);
        CHECK(run_until(is_ready, b, 3000));
        const char *info[] = {"CLIENT", "INFO"};
        struct rec r = call(b, 2, info);
        CHECK(strstr(r.str, " db=1 ") != NULL);

        const char *sleep_argv[] = {"DEBUG", "SLEEP", "2"};
        struct rec slow;
        uv_update_time(&loop);
        uint64_t t0 = uv_now(&loop);
        CHECK_INT(send_cmd(b, &slow, 3, sleep_argv), 0);
        CHECK(run_until(rec_done, &slow, 3000));
        uint64_t took = uv_now(&loop) - t0;
        CHECK(took >= 450 && took < 1500);
        CHECK_INT(slow.calls, 1);
        CHECK_INT(slow.nulls, 1);
        CHECK(strstr(redis_link_last_error(b), "timed out") != NULL);
        CHECK_INT(st_b.downs, 1);

        CHECK(run_until(is_ready, b, 8000));
        CHECK_INT(st_b.ups, 2);
        r = call(b, 2, info);
        CHECK(strstr(r.str, " db=1 ") != NULL);
        CHECK_INT(slow.calls, 1);

        /* Closed from inside a reply callback. */
        int b_closed = 0;
        struct rec last;
        CHECK_INT(send_cmd(b, &last, 1, ping), 0);
        last.close_in_cb = true;
        last.closed_cb = closed_cb;
        last.closed_arg = &b_closed;
        CHECK(run_until(flag_set, &b_closed, 3000));
        CHECK_INT(last.calls, 1);
        CHECK_STR(last.str, "PONG");
        CHECK_INT(b_closed, 1);
    }

    /* 5. Close with commands in flight. */
    {
        struct redis_link_opts oc = base_opts(port, 1000);
        struct states st_c = {0};
        struct redis_link *c = redis_link_new(&loop, &oc, state_cb, &st_c);
        redis_link_start(c);
        CHECK(run_until(is_ready, c, 3000));

        struct rec p1, blk, sc;
        CHECK_INT(send_cmd(c, &p1, 1, ping), 0);
        p1.send_in_cb = true;
        memset(&sc, 0, sizeof sc);
        const char *s0[] = {"rl:cnt", "2"};
        CHECK_INT(redis_link_script(c, 0, rec_cb, &sc, 1, 2, s0, NULL), 0);
        /* Last: a blocked client runs nothing after it. */
        const char *blpop[] = {"BLPOP", "rl:never", "0"};
        CHECK_INT(send_cmd(c, &blk, 3, blpop), 0);
        CHECK_INT(redis_link_inflight(c), 3);

        int c_closed = 0;
        uv_update_time(&loop);
        uint64_t t0 = uv_now(&loop);
        redis_link_close(c, closed_cb, &c_closed);
        CHECK_INT(redis_link_state(c), LINK_DRAINING);
        CHECK_INT(st_c.downs, 1);
        CHECK_INT(send_cmd(c, &r0, 1, ping), -1);
        CHECK(run_until(flag_set, &c_closed, 4000));
        uint64_t took = uv_now(&loop) - t0;
        CHECK(took >= 900 && took < 2500);
        CHECK_INT(c_closed, 1);
        CHECK_INT(p1.calls, 1);
        CHECK_STR(p1.str, "PONG");
        CHECK_INT(p1.send_rc, -1);
        CHECK_INT(sc.calls, 1);
        CHECK_INT(sc.integer, 3);
        CHECK_INT(blk.calls, 1);
        CHECK_INT(blk.nulls, 1);
        CHECK_INT(r0.calls, 0);
        run_for(100);
        CHECK_INT(c_closed, 1);
        CHECK_INT(blk.calls, 1);
    }

    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);

    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("test_redis_link: all checks passed\n");
    return 0;
}
