/*
 * The Redis connection as a state machine (see redis_link.h for the
 * states). This file is about who owns what while hiredis 0.14 tears a
 * context down under our feet, so the rules are written out here.
 *
 * One context at a time. link->ac is the live context or NULL. The first
 * party that learns the context is going away sets link->ac = NULL and
 * calls link_lost(); everybody else compares their ac with link->ac and
 * stays quiet when it differs. The parties are:
 *   - link_drop(): we decided (time-out, failed setup step, poll error,
 *     close while connecting). It detaches, then calls redisAsyncFree,
 *     which hiredis defers to the end of the current reply callback when
 *     called inside one.
 *   - cmd_reply_cb() with a NULL reply on the live context: hiredis is
 *     freeing it after a read/write error or EOF, and is about to give every
 *     other pending command a NULL reply too.
 *   - detach_cb(): the adapter's cleanup hook; the last word on every
 *     path (refused connect, clean disconnect after close, ...).
 * Detaching before any user callback sees the NULL reply means the state
 * is already DISCONNECTED (or DRAINING) inside that callback, so a callback
 * that sends again gets -1 instead of a command on a dying context.
 *
 * Exactly once. Every accepted command has a struct link_cmd that hiredis
 * holds as privdata; hiredis 0.14 calls each callback of a regular command
 * once, with a reply or with NULL from __redisAsyncFree. The subscribe
 * family and MONITOR break that rule in hiredis (callbacks kept in a dict,
 * called per message), so redis_link_command refuses them. The NOSCRIPT
 * fallback re-registers the same record for the EVAL and returns without
 * calling the user. The records also sit on an in-flight list (oldest
 * first, for the time-out and redis_link_inflight); whatever is still on
 * it when the link is finally closed, after hiredis is gone, is answered
 * with NULL there, so no path can lose a callback.
 *
 * Never free inside onConnect. hiredis 0.14 keeps using the context after
 * the connect callback returns, and redisAsyncFree is deferred only inside
 * reply callbacks. So onConnect only sends the setup commands (always at
 * least one, a PING when nothing else is needed): the transition to READY,
 * and any user code it runs, happens in a reply callback.
 *
 * One timer. It is armed for the earliest of: the reconnect time
 * (DISCONNECTED), the connect deadline (CONNECTING), the oldest in-flight
 * command's deadline (READY, DRAINING) and the drain deadline (DRAINING).
 * Sending a command only pulls the timer earlier, never later; a timer that
 * fires early (the command it was armed for has been answered) recomputes
 * and re-arms, which is cheaper than re-arming on every reply.
 *
 * For callers: timeout_ms <= 0 turns every time-out off (and close then
 * waits for every reply). A NOSCRIPT re-send goes to the end of the
 * pipeline, behind commands sent meanwhile. Host names are resolved by
 * hiredis with a blocking getaddrinfo at each connect: configure an address
 * or a name from /etc/hosts. A second redis_link_close is ignored.
 */
#include "redis/redis_link.h"

#include "base/histogram.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "redis/redis_uv.h"
#include "redis/cluster_nodes.h"
#include "redis/sentinel.h"

#include <ctype.h>
#include <hiredis/async.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define SHA_HEX 40

/* privdata tags of the setup commands; scripts are STEP_SCRIPT + index. */
enum { STEP_AUTH, STEP_SELECT, STEP_PING, STEP_ROLE, STEP_SCRIPT };

/* The most Sentinels a link asks, and how long each may take (the query
 * blocks the loop: redis/sentinel.c says why that is acceptable). */
#define SENTINELS_MAX 16
#define SENTINEL_TIMEOUT_MAX_MS 500

struct link_cmd {
    struct link_cmd *prev, *next; /* in link's in-flight list, oldest first */
    struct redis_link *link;
    link_reply_cb cb;
    void *privdata;
    uint64_t sent_at;    /* loop ms when the caller sent it; a NOSCRIPT retry keeps it */
    uint64_t sent_ns;    /* uv_hrtime() then, for the round-trip histogram */
    int script;          /* index into the scripts, or -1 for a plain command */
    bool eval_sent;      /* the NOSCRIPT fallback was used already */
    char *fmt;           /* scripts: the formatted EVALSHA, kept for the fallback */
    size_t fmt_len;
    size_t fmt_args;     /* offset in fmt of the first argument after the SHA */
};

struct redis_link {
    uv_loop_t *loop;
    uv_timer_t timer;
    uint64_t timer_due; /* loop ms the timer fires at, 0 when not armed */

    /* opts, with every string copied */
    char *host, *unix_path, *user, *password;
    int port, db;
    int64_t timeout_ms;
    char **scripts;
    int nscripts;
    char (*shas)[SHA_HEX + 1];
    char where[300];    /* "host:port" or the socket path, for logs */

    link_state_cb state_cb;
    void *state_arg;

    enum link_state state;
    bool started;
    bool closing;
    bool timer_closing;
    redisAsyncContext *ac; /* the live context or NULL */
    int adapters_open;     /* poll handles not yet closed */
    int setup_pending;     /* setup replies still expected while CONNECTING */
    bool setup_unsent;     /* hiredis refused a setup command: drop at the next tick */
    uint64_t connect_started;
    uint64_t reconnect_at;
    uint64_t drain_deadline;
    uint64_t backoff_ms;
    unsigned failures;     /* failed attempts since the last READY */
    uint64_t rng;

    struct link_cmd *head, *tail;
    size_t inflight;
    struct histogram *rtt; /* round trips of answered commands, or NULL */

    /* Sentinel discovery (nsentinels > 0): host and port are the master
     * they named last; ROLE confirms it at every connect. */
    struct server_addr *sentinels;
    int nsentinels;
    int sentinel_first; /* the Sentinel that answered last is asked first */
    char *master_name, *sentinel_password;
    uint64_t master_changes;
    long long master_epoch; /* the configuration epoch of the answer used */

    /* Redis Cluster discovery (ncluster > 0): host and port are the primary
     * the seeds named last for cluster_slot, the slot of every key. */
    struct server_addr *cluster_seeds;
    int ncluster;
    int cluster_first; /* the seed that answered last is asked first */
    int cluster_slot;
    uint64_t redirects; /* MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY answers */

    void (*closed_cb)(void *arg);
    void *closed_arg;

    char last_error[256];
    char logged_error[256]; /* last connect failure logged at warn level */
};

static void timer_cb(uv_timer_t *timer);
static void link_rearm(struct redis_link *link);
static void link_connect(struct redis_link *link);
static void link_check_closed(struct redis_link *link);

static uint64_t link_now(const struct redis_link *link)
{
    return uv_now(link->loop);
}

static bool has_timeout(const struct redis_link *link)
{
    return link->timeout_ms > 0;
}

/* xorshift64*: jitter only, no need for quality or a shared libc state. */
static uint64_t link_random(struct redis_link *link)
{
    uint64_t x = link->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    link->rng = x;
    return x * 2685821657736338717ULL;
}

/* The context's error text: hiredis 0.14 keeps it in c.errstr, and in the
 * connect callback ac->err may still be 0 while the text is set. */
static const char *ctx_error(const redisAsyncContext *ac)
{
    return ac->c.errstr[0] ? ac->c.errstr : "connection closed";
}

static void set_error(struct redis_link *link, const char *fmt, va_list ap)
{
    vsnprintf(link->last_error, sizeof link->last_error, fmt, ap);
}

/* ---- timer -------------------------------------------------------------- */

static void timer_at(struct redis_link *link, uint64_t due)
{
    uint64_t now = link_now(link);
    link->timer_due = due;
    uv_timer_start(&link->timer, timer_cb, due > now ? due - now : 0, 0);
}

/* Pulls the timer earlier if due is before what it is armed for. */
static void timer_no_later_than(struct redis_link *link, uint64_t due)
{
    if (link->timer_closing)
        return;
    if (link->timer_due == 0 || due < link->timer_due)
        timer_at(link, due);
}

static uint64_t oldest_deadline(const struct redis_link *link)
{
    if (!link->head || !has_timeout(link))
        return 0;
    return link->head->sent_at + (uint64_t)link->timeout_ms;
}

static uint64_t min_due(uint64_t a, uint64_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

/* Arms the timer for exactly the next thing the state waits for. */
static void link_rearm(struct redis_link *link)
{
    if (link->timer_closing)
        return;
    uint64_t due = 0;
    if (link->closing) {
        if (link->ac)
            due = min_due(has_timeout(link) ? link->drain_deadline : 0, oldest_deadline(link));
    } else {
        switch (link->state) {
        case LINK_DISCONNECTED:
            if (link->started)
                due = link->reconnect_at;
            break;
        case LINK_CONNECTING:
            if (link->setup_unsent)
                due = link_now(link);
            else if (has_timeout(link))
                due = link->connect_started + (uint64_t)link->timeout_ms;
            break;
        case LINK_READY:
            due = oldest_deadline(link);
            break;
        case LINK_DRAINING:
        case LINK_CLOSED:
            break;
        }
    }
    if (due == 0) {
        link->timer_due = 0;
        uv_timer_stop(&link->timer);
    } else if (due != link->timer_due) {
        timer_at(link, due);
    }
}

/* ---- losing and dropping the connection --------------------------------- */

/* The live context is gone or going (link->ac is already NULL): record why,
 * leave READY/CONNECTING, schedule the reconnect, tell the owner. */
static void link_lost(struct redis_link *link, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void link_lost(struct redis_link *link, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(link, fmt, ap);
    va_end(ap);

    if (link->closing) {
        if (link->head)
            log_warn("redis: %s: closing with %zu commands in flight: %s", link->where, link->inflight,
                     link->last_error);
        link_rearm(link);
        link_check_closed(link);
        return;
    }

    bool was_up = link->state == LINK_READY;
    link->state = LINK_DISCONNECTED;
    uint64_t base = link->backoff_ms;
    uint64_t delay = base / 2 + link_random(link) % (base / 2 + 1);
    link->backoff_ms = base * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : base * 2;
    link->reconnect_at = link_now(link) + delay;

    if (was_up) {
        log_warn("redis: %s: connection lost: %s (%zu commands in flight, reconnecting)", link->where,
                 link->last_error, link->inflight);
        link->logged_error[0] = '\0';
    } else {
        link->failures++;
        /* A Redis that stays down would otherwise log every few seconds:
         * warn when the reason changes, debug for the repeats. */
        if (strcmp(link->logged_error, link->last_error) != 0) {
            log_warn("redis: %s: %s (retrying in %llu ms, with back-off)", link->where, link->last_error,
                     (unsigned long long)delay);
            snprintf(link->logged_error, sizeof link->logged_error, "%s", link->last_error);
        } else {
            log_debug("redis: %s: attempt %u failed: %s (retrying in %llu ms)", link->where, link->failures,
                      link->last_error, (unsigned long long)delay);
        }
    }
    link_rearm(link);
    if (was_up && link->state_cb)
        link->state_cb(link, false, link->state_arg);
}

/* We give up on the live context: detach it first so every callback that
 * hiredis now runs with NULL sees the new state, then free it. */
static void link_drop(struct redis_link *link, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void link_drop(struct redis_link *link, const char *fmt, ...)
{
    redisAsyncContext *ac = link->ac;
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);

    link->ac = NULL;
    link_lost(link, "%s", reason);
    if (ac)
        redisAsyncFree(ac);
}

/* ---- adapter hooks ------------------------------------------------------ */

static void poll_error_cb(redisAsyncContext *ac, int status, void *arg)
{
    struct redis_link *link = arg;
    if (ac != link->ac) {
        /* Not ours any more, yet hiredis holds it: free it all the same. */
        redisAsyncFree(ac);
        return;
    }
    link_drop(link, "socket error: %s", uv_strerror(status));
}

static void detach_cb(redisAsyncContext *ac, void *arg)
{
    struct redis_link *link = arg;
    if (ac != link->ac)
        return;
    link->ac = NULL;
    if (link->closing && ac->c.err == 0) {
        /* The clean disconnect redis_link_close asked for. */
        link_rearm(link);
        link_check_closed(link);
        return;
    }
    if (link->state == LINK_CONNECTING)
        link_lost(link, "connect failed: %s", ctx_error(ac));
    else
        link_lost(link, "%s", ctx_error(ac));
}

static void adapter_closed_cb(void *arg)
{
    struct redis_link *link = arg;
    link->adapters_open--;
    link_check_closed(link);
}

/* ---- reply objects ------------------------------------------------------ */

/*
 * hiredis builds every reply as a tree of malloc'd objects (a redisReply
 * and a string per element) and frees it node by node after the callback.
 * A fire batch, an XREADGROUP of 500 events or an HSCAN page of 2000
 * records is thousands of nodes: in a burst of due retries that was a
 * fifth of the daemon's time, and the frees of many small blocks made
 * glibc consolidate its free lists again and again. So the link gives its
 * reader its own object functions: the objects of one reply come from one
 * arena (a few large blocks), freed at once when hiredis frees the root.
 *
 * The objects are ordinary redisReply structs, so callers see no
 * difference. A callback may keep its reply past its return
 * (redis_link_reply_retain), e.g. to send the next request before working
 * through a large reply, so that Redis and the daemon work at once. The arena's header sits right before the root object: the
 * root is created first (its read task has no parent), children find it
 * through their tasks' parents, and hiredis only ever frees a root (after
 * the callbacks, or on a protocol error), never a child on its own.
 */

#define ARENA_FIRST 512        /* bytes after the header in the first block */
#define ARENA_BLOCK_MAX (1u << 20)

struct arena_block {
    struct arena_block *next;
};

struct reply_arena {
    int refs;                   /* hiredis's, plus redis_link_reply_retain's */
    char *cur;                  /* next free byte of the current block */
    size_t left;                /* bytes left in it */
    size_t next_size;           /* size of the next block */
    struct arena_block *blocks; /* blocks after the first, to free */
};

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static void *arena_alloc(struct reply_arena *a, size_t n)
{
    n = align8(n ? n : 1);
    if (n > a->left) {
        size_t size = a->next_size;
        if (size < n + sizeof(struct arena_block))
            size = n + sizeof(struct arena_block);
        struct arena_block *b = malloc(size);
        if (!b)
            return NULL;
        b->next = a->blocks;
        a->blocks = b;
        a->cur = (char *)b + align8(sizeof *b);
        a->left = size - align8(sizeof *b);
        if (a->next_size < ARENA_BLOCK_MAX)
            a->next_size *= 2;
    }
    void *p = a->cur;
    a->cur += n;
    a->left -= n;
    return p;
}

/* A new object for task: the root starts an arena; a child is hung into
 * its parent, as hiredis's own functions do. */
static redisReply *arena_object(const redisReadTask *task, int type, size_t extra, void **extra_out)
{
    redisReply *r;
    if (task->parent == NULL) {
        size_t need = align8(sizeof(struct reply_arena)) + align8(sizeof *r) + align8(extra);
        size_t size = need > ARENA_FIRST ? need : ARENA_FIRST;
        struct reply_arena *a = malloc(size);
        if (!a)
            return NULL;
        r = (redisReply *)((char *)a + align8(sizeof *a));
        a->cur = (char *)r + align8(sizeof *r);
        a->left = size - align8(sizeof *a) - align8(sizeof *r);
        a->next_size = 4096;
        a->blocks = NULL;
        a->refs = 1;
        *extra_out = extra ? arena_alloc(a, extra) : NULL;
    } else {
        const redisReadTask *root = task;
        while (root->parent)
            root = root->parent;
        struct reply_arena *a = (struct reply_arena *)((char *)root->obj - align8(sizeof *a));
        r = arena_alloc(a, sizeof *r);
        if (!r)
            return NULL;
        *extra_out = extra ? arena_alloc(a, extra) : NULL;
        if (extra && !*extra_out)
            return NULL;
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    memset(r, 0, sizeof *r);
    r->type = type;
    return r;
}

static void *arena_string(const redisReadTask *task, char *str, size_t len)
{
    void *buf;
    redisReply *r = arena_object(task, task->type, len + 1, &buf);
    if (!r || !buf)
        return NULL;
    memcpy(buf, str, len);
    ((char *)buf)[len] = '\0';
    r->str = buf;
    r->len = len;
    return r;
}

static void *arena_array(const redisReadTask *task, int elements)
{
    void *els;
    size_t n = elements > 0 ? (size_t)elements : 0;
    redisReply *r = arena_object(task, REDIS_REPLY_ARRAY, n * sizeof(redisReply *), &els);
    if (!r || (n && !els))
        return NULL;
    if (n)
        memset(els, 0, n * sizeof(redisReply *));
    r->element = els;
    r->elements = n;
    return r;
}

static void *arena_integer(const redisReadTask *task, long long value)
{
    void *unused;
    redisReply *r = arena_object(task, REDIS_REPLY_INTEGER, 0, &unused);
    if (r)
        r->integer = value;
    return r;
}

static void *arena_nil(const redisReadTask *task)
{
    void *unused;
    return arena_object(task, REDIS_REPLY_NIL, 0, &unused);
}

static void arena_free(void *root)
{
    if (!root)
        return;
    struct reply_arena *a = (struct reply_arena *)((char *)root - align8(sizeof *a));
    if (--a->refs > 0)
        return; /* retained: redis_link_reply_release frees it */
    struct arena_block *b = a->blocks;
    while (b) {
        struct arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}

redisReply *redis_link_reply_retain(redisReply *reply)
{
    struct reply_arena *a = (struct reply_arena *)((char *)reply - align8(sizeof *a));
    a->refs++;
    return reply;
}

void redis_link_reply_release(redisReply *reply)
{
    arena_free(reply);
}

static redisReplyObjectFunctions arena_functions = {
    .createString = arena_string,
    .createArray = arena_array,
    .createInteger = arena_integer,
    .createNil = arena_nil,
    .freeObject = arena_free,
};

/* The reader keeps up to this much unused buffer between replies rather
 * than freeing and growing it again for every large reply. */
#define READER_KEEP_BUF (1u << 20)

/* ---- commands ----------------------------------------------------------- */

static void cmd_unlink(struct redis_link *link, struct link_cmd *cmd)
{
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        link->head = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    else
        link->tail = cmd->prev;
    cmd->prev = cmd->next = NULL;
    link->inflight--;
}

static void cmd_append(struct redis_link *link, struct link_cmd *cmd)
{
    cmd->prev = link->tail;
    cmd->next = NULL;
    if (link->tail)
        link->tail->next = cmd;
    else
        link->head = cmd;
    link->tail = cmd;
    link->inflight++;
}

/* Takes cmd off the books, then calls the user: the callback may send,
 * close, or look at redis_link_inflight, and sees a consistent link. */
static void cmd_finish(struct redis_link *link, struct link_cmd *cmd, redisReply *reply)
{
    cmd_unlink(link, cmd);
    if (reply && link->rtt)
        histogram_observe(link->rtt, uv_hrtime() - cmd->sent_ns);
    link_reply_cb cb = cmd->cb;
    void *privdata = cmd->privdata;
    free(cmd->fmt);
    free(cmd);
    cb(link, reply, privdata);
}

/* The answers of a cluster node that no longer serves our slot (MOVED,
 * ASK: it moved or is moving; CLUSTERDOWN: the cluster lost it for now;
 * TRYAGAIN: a multi-key command during a migration; READONLY: a replica). */
static bool is_cluster_redirect(const redisReply *reply)
{
    static const char *const words[] = {"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "READONLY"};
    if (reply->type != REDIS_REPLY_ERROR || !reply->str)
        return false;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t n = strlen(words[i]);
        if (reply->len >= n && strncmp(reply->str, words[i], n) == 0)
            return true;
    }
    return false;
}

static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata);

/* Re-sends a script command as EVAL <source>, reusing the formatted
 * arguments after the SHA. Returns 0, or -1 when hiredis refused it (the
 * context is disconnecting). */
static int cmd_send_eval(struct redis_link *link, struct link_cmd *cmd, redisAsyncContext *ac)
{
    const char *src = link->scripts[cmd->script];
    size_t srclen = strlen(src);
    /* The array header of the EVALSHA is "*<n>\r\n"; EVAL has the same n. */
    const char *crlf = memchr(cmd->fmt, '\n', cmd->fmt_len);
    size_t header = crlf ? (size_t)(crlf - cmd->fmt) + 1 : 0;
    char head[64];
    int hn = snprintf(head, sizeof head, "$4\r\nEVAL\r\n$%zu\r\n", srclen);
    size_t tail = cmd->fmt_len - cmd->fmt_args;
    size_t len = header + (size_t)hn + srclen + 2 + tail;
    char *buf = xmalloc(len);
    char *p = buf;
    memcpy(p, cmd->fmt, header);
    p += header;
    memcpy(p, head, (size_t)hn);
    p += hn;
    memcpy(p, src, srclen);
    p += srclen;
    memcpy(p, "\r\n", 2);
    p += 2;
    memcpy(p, cmd->fmt + cmd->fmt_args, tail);
    int rc = redisAsyncFormattedCommand(ac, cmd_reply_cb, cmd, buf, len);
    free(buf);
    if (rc != REDIS_OK)
        return -1;
    cmd->eval_sent = true;
    return 0;
}

static bool is_noscript(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && reply->str && reply->len >= 8 && strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

static bool is_readonly(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && reply->str && reply->len >= 8 && strncmp(reply->str, "READONLY", 8) == 0;
}

static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct link_cmd *cmd = privdata;
    struct redis_link *link = cmd->link;
    redisReply *reply = r;

    if (reply == NULL && ac == link->ac) {
        /* hiredis is tearing the live context down (EOF, I/O error): the
         * first NULL reply is where we learn it. */
        link->ac = NULL;
        link_lost(link, "%s", ctx_error(ac));
    }
    if (reply && link->nsentinels > 0 && ac == link->ac && is_readonly(reply)) {
        /* The master we know was made a replica (a failover that kept it
         * alive): every later write would fail too, so drop the link and
         * ask the Sentinels again. The caller sees this error reply; the
         * commands behind it get NULL, in doubt, as on any drop. */
        link_drop(link, "READONLY: %s is a replica now: asking the Sentinels again", link->where);
    }
    if (reply && link->ncluster > 0 && ac == link->ac && is_cluster_redirect(reply)) {
        /* The slot is served elsewhere now (a failover, a migration) or
         * not at all for the moment: the seeds say where, at the next
         * connect. The caller sees this error, the commands behind it
         * NULL (in doubt), as on any drop; nothing is resent to the
         * named node, so no write can be applied twice. */
        link->redirects++;
        link_drop(link, "%.*s: asking the cluster where slot %d is", (int)(reply->len < 80 ? reply->len : 80),
                  reply->str, link->cluster_slot);
    }
    if (reply && cmd->script >= 0 && !cmd->eval_sent && is_noscript(reply)) {
        /* The script cache was flushed (SCRIPT FLUSH, a restart we did not
         * notice, a failover): send the source, the caller never knows. */
        if (ac == link->ac && cmd_send_eval(link, cmd, ac) == 0)
            return;
        reply = NULL;
    }
    cmd_finish(link, cmd, reply);
}

/* hiredis keeps the callbacks of these in a dict and calls them per
 * message, which breaks "exactly once"; unsolicited pushes would also trip
 * an assertion in hiredis 0.14. The link has no use for them. */
static bool is_refused_command(const char *name, size_t len)
{
    static const char *const refused[] = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe",
                                          "punsubscribe", "sunsubscribe", "monitor"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        if (strlen(refused[i]) == len && strncasecmp(name, refused[i], len) == 0)
            return true;
    }
    return false;
}

static struct link_cmd *cmd_new(struct redis_link *link, link_reply_cb cb, void *privdata, int script)
{
    struct link_cmd *cmd = xcalloc(1, sizeof *cmd);
    cmd->link = link;
    cmd->cb = cb;
    cmd->privdata = privdata;
    cmd->script = script;
    cmd->sent_at = link_now(link);
    cmd->sent_ns = uv_hrtime();
    return cmd;
}

static void cmd_accepted(struct redis_link *link, struct link_cmd *cmd)
{
    cmd_append(link, cmd);
    if (has_timeout(link))
        timer_no_later_than(link, cmd->sent_at + (uint64_t)link->timeout_ms);
}

static size_t put_uint(char *p, size_t v);
static size_t uint_len(size_t v);

/* Formats argv as one RESP array, in stack (cap bytes) when it fits, else
 * in a malloc'd buffer; returns it and its length in *len. hiredis's own
 * formatter spends most of its time in sdscatfmt, and a fire burst sends
 * a thousand commands at once. */
static char *format_argv(int argc, const char **argv, const size_t *argvlen, char *stack, size_t cap, size_t *len)
{
    size_t total = 1 + uint_len((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        size_t l = argvlen ? argvlen[i] : strlen(argv[i]);
        total += 1 + uint_len(l) + 2 + l + 2;
    }
    char *buf = total <= cap ? stack : xmalloc(total);
    char *p = buf;
    *p++ = '*';
    p += put_uint(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t l = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p += put_uint(p, l);
        *p++ = '\r';
        *p++ = '\n';
        if (l)
            memcpy(p, argv[i], l);
        p += l;
        *p++ = '\r';
        *p++ = '\n';
    }
    *len = (size_t)(p - buf);
    return buf;
}

int redis_link_command(struct redis_link *link, link_reply_cb cb, void *privdata, int argc, const char **argv,
                       const size_t *argvlen)
{
    if (link->state != LINK_READY || !link->ac || argc < 1 || !cb)
        return -1;
    size_t len0 = argvlen ? argvlen[0] : strlen(argv[0]);
    if (is_refused_command(argv[0], len0))
        return -1;
    char small[512];
    size_t fmt_len;
    char *fmt = format_argv(argc, argv, argvlen, small, sizeof small, &fmt_len);
    struct link_cmd *cmd = cmd_new(link, cb, privdata, -1);
    /* hiredis copies the command into its output buffer */
    int rc = redisAsyncFormattedCommand(link->ac, cmd_reply_cb, cmd, fmt, fmt_len);
    if (fmt != small)
        free(fmt);
    if (rc != REDIS_OK) {
        free(cmd);
        return -1;
    }
    cmd_accepted(link, cmd);
    return 0;
}

/* Writes v in decimal at p; returns the number of bytes. */
static size_t put_uint(char *p, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static size_t uint_len(size_t v)
{
    size_t n = 1;
    while (v >= 10)
        v /= 10, n++;
    return n;
}

/* Formats EVALSHA <sha> <nkeys> argv... as one RESP array, sized in one
 * pass and written in a second: a fire or apply batch has thousands of
 * arguments, and hiredis's formatter spends most of its time in sprintf.
 * Returns the malloc'd command, its length in *len and in *args_off the
 * offset of the first argument after the SHA (the NOSCRIPT fallback
 * reuses everything from there). */
static char *format_evalsha(const char *sha, int nkeys, int argc, const char **argv, const size_t *argvlen,
                            size_t *len, size_t *args_off)
{
    char nk[24];
    size_t nkl = put_uint(nk, (size_t)nkeys);
    size_t total = 1 + uint_len((size_t)argc + 3) + 2 + 13 + 5 + SHA_HEX + 2;
    total += 1 + uint_len(nkl) + 2 + nkl + 2;
    for (int i = 0; i < argc; i++) {
        size_t l = argvlen ? argvlen[i] : strlen(argv[i]);
        total += 1 + uint_len(l) + 2 + l + 2;
    }
    char *buf = xmalloc(total);
    char *p = buf;
    *p++ = '*';
    p += put_uint(p, (size_t)argc + 3);
    memcpy(p, "\r\n$7\r\nEVALSHA\r\n$40\r\n", 20);
    p += 20;
    memcpy(p, sha, SHA_HEX);
    p += SHA_HEX;
    *p++ = '\r';
    *p++ = '\n';
    *args_off = (size_t)(p - buf);
    *p++ = '$';
    p += put_uint(p, nkl);
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, nk, nkl);
    p += nkl;
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t l = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p += put_uint(p, l);
        *p++ = '\r';
        *p++ = '\n';
        if (l)
            memcpy(p, argv[i], l);
        p += l;
        *p++ = '\r';
        *p++ = '\n';
    }
    *len = (size_t)(p - buf);
    if (*len != total)
        fatal("redis: formatting a script call went wrong (%zu of %zu bytes)", *len, total);
    return buf;
}

int redis_link_script(struct redis_link *link, int script, link_reply_cb cb, void *privdata, int nkeys, int argc,
                      const char **argv, const size_t *argvlen)
{
    if (link->state != LINK_READY || !link->ac || !cb)
        return -1;
    if (script < 0 || script >= link->nscripts || nkeys < 0 || argc < nkeys || argc > INT_MAX - 3)
        return -1;

    size_t fmt_len, fmt_args;
    char *fmt = format_evalsha(link->shas[script], nkeys, argc, argv, argvlen, &fmt_len, &fmt_args);

    struct link_cmd *cmd = cmd_new(link, cb, privdata, script);
    cmd->fmt = fmt;
    cmd->fmt_len = fmt_len;
    cmd->fmt_args = fmt_args; /* after "*<n>" "$7 EVALSHA" "$40 <sha>": kept for EVAL */
    if (redisAsyncFormattedCommand(link->ac, cmd_reply_cb, cmd, fmt, fmt_len) != REDIS_OK) {
        free(fmt);
        free(cmd);
        return -1;
    }
    cmd_accepted(link, cmd);
    return 0;
}

/* ---- connecting --------------------------------------------------------- */

static void link_ready(struct redis_link *link)
{
    link->state = LINK_READY;
    link->backoff_ms = BACKOFF_MIN_MS;
    if (link->failures)
        log_info("redis: %s: connected (db %d, %d scripts loaded) after %u failed attempts", link->where, link->db,
                 link->nscripts, link->failures);
    else
        log_info("redis: %s: connected (db %d, %d scripts loaded)", link->where, link->db, link->nscripts);
    link->failures = 0;
    link->logged_error[0] = '\0';
    link_rearm(link);
    if (link->state_cb)
        link->state_cb(link, true, link->state_arg);
}

/* ROLE answers an array whose first element is "master", "slave" or
 * "sentinel". */
static bool role_is_master(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 && reply->element[0]->type == REDIS_REPLY_STRING &&
           strcmp(reply->element[0]->str, "master") == 0;
}

static void setup_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redis_link *link = ac->data;
    redisReply *reply = r;
    uintptr_t step = (uintptr_t)privdata;

    /* NULL: the context is going away; detach_cb or link_drop says why. */
    if (ac != link->ac || link->state != LINK_CONNECTING || reply == NULL)
        return;

    const char *what = step == STEP_AUTH     ? "AUTH"
                       : step == STEP_SELECT ? "SELECT"
                       : step == STEP_PING   ? "PING"
                       : step == STEP_ROLE   ? "ROLE"
                                             : "SCRIPT LOAD";
    if (reply->type == REDIS_REPLY_ERROR) {
        link_drop(link, "%s failed: %s", what, reply->str ? reply->str : "error");
        return;
    }
    if (step == STEP_ROLE && !role_is_master(reply)) {
        /* The Sentinels named a server that is not (or no longer) the
         * master: a failover is under way. The back-off paces the asking. */
        link_drop(link, "ROLE: %s is a %s, not a master: asking the %s again", link->where,
                  reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 && reply->element[0]->str
                      ? reply->element[0]->str
                      : "server",
                  link->ncluster > 0 ? "cluster" : "Sentinels");
        return;
    }
    if (step >= STEP_SCRIPT) {
        size_t i = step - STEP_SCRIPT;
        if (reply->type != REDIS_REPLY_STRING || reply->len != SHA_HEX) {
            link_drop(link, "SCRIPT LOAD of script %zu: unexpected reply", i);
            return;
        }
        memcpy(link->shas[i], reply->str, SHA_HEX);
        link->shas[i][SHA_HEX] = '\0';
    }
    if (--link->setup_pending == 0)
        link_ready(link);
}

static int setup_send(struct redis_link *link, redisAsyncContext *ac, uintptr_t step, int argc, const char **argv)
{
    if (redisAsyncCommandArgv(ac, setup_reply_cb, (void *)step, argc, argv, NULL) != REDIS_OK)
        return -1;
    link->setup_pending++;
    return 0;
}

static void connect_cb(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct redis_link *link = ac->data;
    /* A failure is handled in detach_cb, which hiredis calls right after. */
    if (status != REDIS_OK || ac != link->ac)
        return;

    int rc = 0;
    link->setup_pending = 0;
    if (link->password) {
        const char *argv[3] = {"AUTH", link->user ? link->user : link->password, link->password};
        rc |= setup_send(link, ac, STEP_AUTH, link->user ? 3 : 2, argv);
    }
    if (link->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", link->db);
        const char *argv[2] = {"SELECT", db};
        rc |= setup_send(link, ac, STEP_SELECT, 2, argv);
    }
    if (link->nsentinels > 0 || link->ncluster > 0) {
        const char *argv[1] = {"ROLE"};
        rc |= setup_send(link, ac, STEP_ROLE, 1, argv);
    }
    for (int i = 0; i < link->nscripts; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", link->scripts[i]};
        rc |= setup_send(link, ac, STEP_SCRIPT + (uintptr_t)i, 3, argv);
    }
    if (link->setup_pending == 0) {
        /* Never go READY here (see the top of the file): ask for a PONG. */
        const char *argv[1] = {"PING"};
        rc |= setup_send(link, ac, STEP_PING, 1, argv);
    }
    if (rc != 0) {
        /* Cannot free inside onConnect: let the timer drop it right away. */
        link->setup_unsent = true;
        timer_at(link, link_now(link));
    }
}

static void set_where(struct redis_link *link)
{
    if (link->unix_path)
        snprintf(link->where, sizeof link->where, "%s", link->unix_path);
    else
        snprintf(link->where, sizeof link->where, strchr(link->host, ':') ? "[%s]:%d" : "%s:%d", link->host,
                 link->port);
}

/* Asks the Sentinels where the master is now, or the cluster's seeds which
 * primary serves our slot, before every connect (never trust an address
 * from before a failure). Returns 0 with host and port set, or -1 when
 * none answered. */
static int link_resolve(struct redis_link *link, char *err, size_t errlen)
{
    struct master_claim claim;
    int64_t t = link->timeout_ms > 0 && link->timeout_ms < SENTINEL_TIMEOUT_MAX_MS ? link->timeout_ms
                                                                                   : SENTINEL_TIMEOUT_MAX_MS;
    int rc = link->nsentinels > 0
                 ? sentinel_get_master(link->sentinels, link->nsentinels, &link->sentinel_first, link->master_name,
                                       link->sentinel_password, t, &claim, err, errlen)
                 : cluster_get_primary(link->cluster_seeds, link->ncluster, &link->cluster_first, link->cluster_slot,
                                       link->user, link->password, t, &claim, err, errlen);
    if (rc != 0)
        return -1;
    link->master_epoch = claim.epoch;
    if (claim.port == link->port && strcmp(claim.host, link->host) == 0)
        return 0;
    char before[sizeof link->where];
    snprintf(before, sizeof before, "%s", link->where);
    free(link->host);
    link->host = xstrdup(claim.host);
    link->port = claim.port;
    set_where(link);
    link->master_changes++;
    if (link->nsentinels > 0)
        log_warn("redis: the Sentinels name %s as master \"%s\" (was %s)", link->where, link->master_name, before);
    else
        log_warn("redis: the cluster serves slot %d from %s (was %s)", link->cluster_slot, link->where, before);
    return 0;
}

static void link_connect(struct redis_link *link)
{
    link->state = LINK_CONNECTING;
    link->setup_unsent = false;
    link->connect_started = link_now(link);
    if (link->nsentinels > 0 || link->ncluster > 0) {
        char why[400];
        if (link_resolve(link, why, sizeof why) != 0) {
            link_lost(link, "%s: %s", link->nsentinels > 0 ? "sentinels" : "cluster", why);
            return;
        }
    }
    redisAsyncContext *ac =
        link->unix_path ? redisAsyncConnectUnix(link->unix_path) : redisAsyncConnect(link->host, link->port);
    if (ac == NULL)
        xmalloc_failed(sizeof *ac);
    if (ac->err) {
        char reason[200];
        snprintf(reason, sizeof reason, "%s", ctx_error(ac));
        redisAsyncFree(ac);
        link_lost(link, "connect failed: %s", reason);
        return;
    }
    ac->data = link;
    ac->c.reader->fn = &arena_functions;
    ac->c.reader->maxbuf = READER_KEEP_BUF;
    struct redis_uv_hooks hooks = {
        .error_cb = poll_error_cb,
        .detach_cb = detach_cb,
        .closed_cb = adapter_closed_cb,
        .arg = link,
    };
    if (redis_uv_attach(ac, link->loop, &hooks) != 0) {
        redisAsyncFree(ac);
        link_lost(link, "connect failed: cannot watch the socket");
        return;
    }
    link->adapters_open++;
    link->ac = ac;
    redisAsyncSetConnectCallback(ac, connect_cb);
    link_rearm(link);
}

static void timer_cb(uv_timer_t *timer)
{
    struct redis_link *link = timer->data;
    uint64_t now = link_now(link);
    link->timer_due = 0;

    uint64_t oldest = oldest_deadline(link);
    if (link->closing) {
        if (link->ac && has_timeout(link) && now >= link->drain_deadline)
            link_drop(link, "close: replies still missing after %lld ms", (long long)link->timeout_ms);
        else if (link->ac && oldest && now >= oldest)
            link_drop(link, "command timed out after %lld ms", (long long)link->timeout_ms);
    } else {
        switch (link->state) {
        case LINK_DISCONNECTED:
            if (link->started && now >= link->reconnect_at)
                link_connect(link);
            break;
        case LINK_CONNECTING:
            if (link->setup_unsent)
                link_drop(link, "cannot send the connection setup");
            else if (has_timeout(link) && now >= link->connect_started + (uint64_t)link->timeout_ms)
                link_drop(link, "connect timed out after %lld ms", (long long)link->timeout_ms);
            break;
        case LINK_READY:
            if (oldest && now >= oldest)
                link_drop(link, "command timed out after %lld ms", (long long)link->timeout_ms);
            break;
        case LINK_DRAINING:
        case LINK_CLOSED:
            break;
        }
    }
    link_rearm(link);
}

/* ---- life cycle --------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

struct redis_link *redis_link_new(uv_loop_t *loop, const struct redis_link_opts *opts, link_state_cb cb, void *arg)
{
    struct redis_link *link = xcalloc(1, sizeof *link);
    link->loop = loop;
    link->unix_path = dup_or_null(opts->unix_path);
    link->host = link->unix_path ? NULL : xstrdup(opts->host ? opts->host : "127.0.0.1");
    link->port = opts->port > 0 ? opts->port : 6379;
    link->user = opts->user && opts->user[0] ? xstrdup(opts->user) : NULL;
    link->password = opts->password && opts->password[0] ? xstrdup(opts->password) : NULL;
    link->db = opts->db;
    link->timeout_ms = opts->timeout_ms;
    link->nscripts = opts->nscripts > 0 ? opts->nscripts : 0;
    link->scripts = xcalloc((size_t)link->nscripts + 1, sizeof *link->scripts);
    link->shas = xcalloc((size_t)link->nscripts + 1, sizeof *link->shas);
    for (int i = 0; i < link->nscripts; i++)
        link->scripts[i] = xstrdup(opts->scripts[i]);
    set_where(link);
    if (opts->nsentinels > 0 && !link->unix_path) {
        link->sentinels = xcalloc(SENTINELS_MAX, sizeof *link->sentinels);
        for (int i = 0; i < opts->nsentinels && link->nsentinels < SENTINELS_MAX; i++) {
            if (server_parse_list(opts->sentinels[i], &link->sentinels[link->nsentinels], 1) == 1)
                link->nsentinels++;
            else
                log_warn("redis: ignoring the Sentinel address \"%s\"", opts->sentinels[i]);
        }
        link->master_name = xstrdup(opts->master_name && opts->master_name[0] ? opts->master_name : "mymaster");
        link->sentinel_password = dup_or_null(opts->sentinel_password && opts->sentinel_password[0]
                                                  ? opts->sentinel_password
                                                  : NULL);
    }
    if (opts->ncluster_seeds > 0 && !link->unix_path) {
        link->cluster_seeds = xcalloc(SENTINELS_MAX, sizeof *link->cluster_seeds);
        for (int i = 0; i < opts->ncluster_seeds && link->ncluster < SENTINELS_MAX; i++) {
            if (server_parse_list(opts->cluster_seeds[i], &link->cluster_seeds[link->ncluster], 1) == 1)
                link->ncluster++;
            else
                log_warn("redis: ignoring the cluster seed \"%s\"", opts->cluster_seeds[i]);
        }
        const char *key = opts->cluster_key ? opts->cluster_key : "";
        link->cluster_slot = cluster_key_slot(key, strlen(key));
    }
    link->state_cb = cb;
    link->state_arg = arg;
    link->state = LINK_DISCONNECTED;
    link->backoff_ms = BACKOFF_MIN_MS;
    link->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)link) | 1;
    uv_timer_init(loop, &link->timer);
    link->timer.data = link;
    return link;
}

void redis_link_start(struct redis_link *link)
{
    if (link->started || link->closing)
        return;
    link->started = true;
    link_connect(link);
}

enum link_state redis_link_state(const struct redis_link *link)
{
    return link->state;
}

const char *redis_link_last_error(const struct redis_link *link)
{
    return link->last_error;
}

const char *redis_link_where(const struct redis_link *link)
{
    return link->where;
}

int redis_link_cluster_slot(const struct redis_link *link)
{
    return link->ncluster > 0 ? link->cluster_slot : -1;
}

uint64_t redis_link_redirects(const struct redis_link *link)
{
    return link->redirects;
}

uint64_t redis_link_master_changes(const struct redis_link *link)
{
    return link->master_changes;
}

bool redis_link_sentinel_moved(struct redis_link *link, const char *host, int port, long long epoch)
{
    if (link->nsentinels == 0 || link->closing || epoch <= link->master_epoch)
        return false;
    if (port == link->port && strcmp(host, link->host) == 0) {
        link->master_epoch = epoch;
        return false;
    }
    if (link->state == LINK_READY || link->state == LINK_CONNECTING) {
        link_drop(link, "the Sentinels moved master \"%s\" to %s:%d (epoch %lld): asking them again",
                  link->master_name, host, port, epoch);
        return true;
    }
    if (link->state == LINK_DISCONNECTED && link->started) {
        /* Waiting out the back-off after the old master died: the new one
         * is known now, so connect without waiting further. */
        link->reconnect_at = link_now(link);
        link_rearm(link);
        return true;
    }
    return false;
}

bool redis_link_reconnect_now(struct redis_link *link)
{
    if (link->closing || link->state != LINK_DISCONNECTED || !link->started)
        return false;
    link->reconnect_at = link_now(link);
    link_rearm(link);
    return true;
}

const char *redis_link_master_name(const struct redis_link *link)
{
    return link->master_name;
}

size_t redis_link_inflight(const struct redis_link *link)
{
    return link->inflight;
}

void redis_link_set_timeout(struct redis_link *link, int64_t timeout_ms)
{
    link->timeout_ms = timeout_ms;
    link_rearm(link);
}

void redis_link_set_rtt_histogram(struct redis_link *link, struct histogram *h)
{
    link->rtt = h;
}

static void link_free(struct redis_link *link)
{
    free(link->host);
    free(link->unix_path);
    free(link->user);
    free(link->password);
    for (int i = 0; i < link->nscripts; i++)
        free(link->scripts[i]);
    free(link->scripts);
    free(link->shas);
    free(link->sentinels);
    free(link->cluster_seeds);
    free(link->master_name);
    free(link->sentinel_password);
    free(link);
}

static void timer_closed_cb(uv_handle_t *handle)
{
    struct redis_link *link = handle->data;
    /* The owner may still read the link (last error) in closed_cb. */
    if (link->closed_cb)
        link->closed_cb(link->closed_arg);
    link_free(link);
}

/* Finishes the close once hiredis and every poll handle are gone. */
static void link_check_closed(struct redis_link *link)
{
    if (!link->closing || link->timer_closing || link->ac || link->adapters_open > 0)
        return;
    /* hiredis answered everything it held; anything left here was never
     * going to be answered. Keep the promise anyway. */
    while (link->head) {
        log_error("redis: %s: command left in flight at close", link->where);
        cmd_finish(link, link->head, NULL);
    }
    link->state = LINK_CLOSED;
    link->timer_closing = true;
    link->timer_due = 0;
    uv_timer_stop(&link->timer);
    uv_close((uv_handle_t *)&link->timer, timer_closed_cb);
}

void redis_link_close(struct redis_link *link, void (*closed_cb)(void *arg), void *arg)
{
    if (link->closing)
        return;
    bool was_up = link->state == LINK_READY;
    link->closing = true;
    link->closed_cb = closed_cb;
    link->closed_arg = arg;
    link->state = LINK_DRAINING;
    link->drain_deadline = link_now(link) + (uint64_t)(has_timeout(link) ? link->timeout_ms : 0);

    if (link->ac) {
        if (was_up) {
            log_info("redis: %s: closing (%zu commands in flight)", link->where, link->inflight);
            /* hiredis stops taking commands, waits for the replies of those
             * in flight, then disconnects (and frees, which reaches
             * detach_cb); inside a reply callback it only sets a flag. */
            redisAsyncDisconnect(link->ac);
        } else {
            link_drop(link, "closed while connecting");
        }
    }
    link_rearm(link);
    if (was_up && link->state_cb)
        link->state_cb(link, false, link->state_arg);
    link_check_closed(link);
}
