#include "net/conn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "net/ratelog.h"
#include "proto/reply.h"
#include "proto/request.h"

/* A connection told why it is closed gets this long to read it (it may be
 * a client that reads nothing) before it is closed anyway. */
#define GOODBYE_GRACE_MS 2000
/* An input buffer with nothing pending is freed after this long without a
 * line: an idle connection holds no buffer. */
#define BUFFER_IDLE_MS 1000
/* The error codes of a connection's last line (docs/protocol.md). */
#define ERR_TIMEOUT "timeout"
#define ERR_TOO_MANY_ERRORS "too_many_errors"

/* Stop reading while this much output waits for a slow reader. */
#define WRITE_BACKLOG_MAX (4u << 20)
/* The first output buffer of a loop turn is as large as the last turn's
 * output, within these bounds; it grows as needed. */
#define OUT_MIN (16u << 10)
#define OUT_HINT_MAX (1u << 20)

struct slot {
    struct slot *next;
    char *data;
    size_t len;
    bool ready;
    uint64_t born_ns; /* uv_hrtime() when the request was read */
};

struct write_req {
    uv_write_t req;
    struct conn *conn;
    uv_buf_t buf;
};

static struct conn *all_conns;
static struct conn *dirty_conns;
static bool reading_stopped_all;
static bool reading_held; /* conn_hold_reading */
static struct conn_hooks hooks;

uint64_t conn_refused_nofile;
int conn_fd_room;
/* The per-connection limits are checked by one sweep over the connections
 * (a timer per connection would cost a syscall per line to re-arm). */
static uv_timer_t sweep_timer;
static bool sweep_started;
/* Connections over their budget for this turn: read again next turn (the
 * idle handle keeps the loop from blocking while any waits). */
static uv_idle_t throttle_idle;
static struct conn *throttled_conns;
static uint64_t turn_counter;
static struct ratelog rl_refused, rl_protected, rl_timeout, rl_errors, rl_auth;

static void conn_resume_cb(struct conn *c);
static void conn_count_error(struct conn *c, const char *code);
static void conn_close_timers(void);
static void throttle(struct conn *c);
static void budget_turn(struct conn *c);
static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void write_out(struct conn *c);

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_set_hooks(const struct conn_hooks *h)
{
    hooks = *h;
}

static void conn_release(struct conn *c)
{
    struct slot *s = c->head;
    while (s) {
        struct slot *n = s->next;
        if (!s->ready)
            rbd->requests_waiting--;
        free(s->data);
        free(s);
        s = n;
    }
    while (c->free_slots) {
        struct slot *n = c->free_slots->next;
        free(c->free_slots);
        c->free_slots = n;
    }
    free(c->out);
    frame_free(&c->in);
    free(c);
}

void conn_unref(struct conn *c)
{
    if (--c->refs == 0)
        conn_release(c);
}

static void close_cb(uv_handle_t *h)
{
    struct conn *c = h->data;
    conn_unref(c);
}

void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->sub)
        hooks.on_close(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        all_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    rbd->nconns--;
    uv_close(&c->h.handle, close_cb);
}

void conn_close_all(void)
{
    while (all_conns)
        conn_close(all_conns);
    conn_close_timers();
}

void conn_stop_reading_all(void)
{
    reading_stopped_all = true;
    for (struct conn *c = all_conns; c; c = c->next)
        uv_read_stop(&c->h.stream);
}

size_t conn_write_backlog(const struct conn *c)
{
    return c->h.stream.write_queue_size + c->out_len;
}

void conn_hold_reading(bool hold)
{
    reading_held = hold;
    struct conn *c = all_conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        if (hold) {
            if (!c->paused && !c->close_after_flush) {
                c->paused = true;
                uv_read_stop(&c->h.stream);
            }
        } else {
            conn_resume_cb(c);
        }
    }
}

/* Input that arrives after a half-close is read and dropped: closing a
 * socket with unread input makes the kernel send a reset, which throws away
 * replies still in the send queue. */
static void discard_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char sink[65536];
    *buf = uv_buf_init(sink, sizeof sink);
}

static void discard_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0)
        conn_close(stream->data);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    free(req);
    if (status < 0 && !c->closing)
        conn_close(c);
    conn_unref(c);
}

void conn_shutdown_all(void)
{
    for (struct conn *c = all_conns, *next; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        write_out(c); /* the half-close goes behind every reply */
        uv_shutdown_t *req = xmalloc(sizeof *req);
        req->data = c;
        conn_ref(c);
        if (uv_shutdown(req, &c->h.stream, shutdown_cb) < 0) {
            free(req);
            conn_unref(c);
            conn_close(c);
            continue;
        }
        uv_read_stop(&c->h.stream);
        uv_read_start(&c->h.stream, discard_alloc_cb, discard_read_cb);
    }
}

/* Closes a connection whose client has finished sending once every
 * request it sent is answered and written. */
static void finish_if_done(struct conn *c)
{
    if (!c->closing && c->eof && !c->head && conn_write_backlog(c) == 0)
        conn_close(c);
}

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->conn;
    free(w->buf.base);
    free(w);
    if (status < 0 && !c->closing) {
        log_debug("conn: write failed: %s", uv_strerror(status));
        conn_close(c);
    } else if (!c->closing && c->close_after_flush && !c->head && conn_write_backlog(c) == 0) {
        conn_close(c);
    } else if (!c->closing) {
        conn_resume_cb(c);
        if (c->sub)
            hooks.on_writable(c);
        finish_if_done(c);
    }
    conn_unref(c);
}

/* Hands buf (malloc'd, ownership passes) to libuv. */
static void write_buf(struct conn *c, char *buf, size_t n)
{
    struct write_req *w = xmalloc(sizeof *w);
    w->conn = c;
    w->buf = uv_buf_init(buf, (unsigned)n);
    conn_ref(c);
    int rc = uv_write(&w->req, &c->h.stream, &w->buf, 1, write_cb);
    if (rc < 0) {
        free(w->buf.base);
        free(w);
        conn_unref(c);
        conn_close(c);
    }
}

/* Output of a turn is copied into one buffer per connection: one
 * allocation and one contiguous write for hundreds of replies, instead of
 * an allocation and an iovec slot for each. */
static void out_append(struct conn *c, const char *data, size_t len)
{
    if (len == 0)
        return;
    if (c->out_cap - c->out_len < len) {
        size_t cap = c->out_cap ? c->out_cap * 2 : c->out_hint > OUT_MIN ? c->out_hint : OUT_MIN;
        while (cap - c->out_len < len)
            cap *= 2;
        c->out = xrealloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    if (!c->dirty) {
        c->dirty = true;
        conn_ref(c); /* the dirty list holds a reference */
        c->dirty_next = dirty_conns;
        dirty_conns = c;
    }
}

static void write_out(struct conn *c)
{
    if (c->out_len == 0 || c->closing)
        return;
    char *buf = c->out;
    size_t n = c->out_len;
    c->out_hint = n < OUT_HINT_MAX ? n : OUT_HINT_MAX;
    c->out = NULL;
    c->out_len = c->out_cap = 0;
    write_buf(c, buf, n);
}

void conn_flush_output(void)
{
    turn_counter++;
    while (dirty_conns) {
        struct conn *c = dirty_conns;
        dirty_conns = c->dirty_next;
        c->dirty = false;
        c->dirty_next = NULL;
        write_out(c);
        conn_unref(c);
    }
}

static void slot_release(struct conn *c, struct slot *s)
{
    s->next = c->free_slots;
    c->free_slots = s;
}

static void flush_ready(struct conn *c)
{
    while (c->head && c->head->ready) {
        struct slot *s = c->head;
        c->head = s->next;
        if (!c->head)
            c->tail = NULL;
        out_append(c, s->data, s->len);
        free(s->data);
        slot_release(c, s);
        c->unanswered--;
    }
}

struct slot *conn_slot(struct conn *c)
{
    /* Slots are reused: a pipelining client goes through one per request. */
    struct slot *s = c->free_slots;
    if (s) {
        c->free_slots = s->next;
        memset(s, 0, sizeof *s);
    } else {
        s = xcalloc(1, sizeof *s);
    }
    if (c->tail)
        c->tail->next = s;
    else
        c->head = s;
    c->tail = s;
    c->unanswered++;
    s->born_ns = c->taking_ns ? c->taking_ns : uv_hrtime();
    rbd->requests_waiting++;
    return s;
}

static void slot_answered(struct slot *s)
{
    if (!s->ready) {
        histogram_observe(&rbd->request_latency, uv_hrtime() - s->born_ns);
        rbd->requests_waiting--;
    }
    s->ready = true;
}

void conn_reply(struct conn *c, struct slot *s, char *line, size_t len)
{
    slot_answered(s);
    s->data = line;
    s->len = len;
    if (c->closing)
        return; /* freed with the connection */
    flush_ready(c);
    conn_resume_cb(c);
}

void conn_reply_copy(struct conn *c, struct slot *s, const char *line, size_t len)
{
    if (c->closing || s != c->head) {
        /* Answered out of order (or to nobody): keep a copy until its turn. */
        char *copy = xmalloc(len ? len : 1);
        memcpy(copy, line, len);
        conn_reply(c, s, copy, len);
        return;
    }
    /* The common case, the oldest request answered: straight to the output
     * (before anything below may reuse the caller's buffer). */
    slot_answered(s);
    out_append(c, line, len);
    c->head = s->next;
    if (!c->head)
        c->tail = NULL;
    slot_release(c, s);
    c->unanswered--;
    flush_ready(c);
    conn_resume_cb(c);
}

void conn_reply_error(struct conn *c, struct slot *s, json_t *req, const char *code, const char *msg)
{
    size_t n;
    char *line = reply_error(req, code, msg, &n);
    if (strcmp(code, ERR_UNAVAILABLE) != 0 && strcmp(code, ERR_NOT_FOUND) != 0)
        rbd->errors++;
    counters_error(code);
    conn_reply(c, s, line, n);
    conn_count_error(c, code);
}

int conn_send_event(struct conn *c, char *line, size_t len)
{
    if (c->closing) {
        free(line);
        return -1;
    }
    out_append(c, line, len);
    free(line);
    return 0;
}

static bool conn_can_take(const struct conn *c)
{
    return !c->closing && !c->close_after_flush && !c->throttled && !reading_stopped_all && !reading_held &&
           c->unanswered < rbd->cfg.max_inflight && conn_write_backlog(c) < WRITE_BACKLOG_MAX;
}

/* Runs the requests already buffered, as far as back-pressure allows. */
static void process_lines(struct conn *c)
{
    const char *line;
    size_t len;
    /* The lines taken in one go were all there at the same moment: one
     * clock reading serves for every request's start. */
    uint64_t outer = c->taking_ns;
    c->taking_ns = uv_hrtime();
    budget_turn(c);
    while (conn_can_take(c)) {
        /* Checked before the line is taken, not after: a reply given at
         * once resumes this connection from inside on_line, and those
         * nested takes must count against the same budget. */
        if (c->turn_lines >= CONN_TURN_LINES) {
            throttle(c);
            break;
        }
        int r = frame_next(&c->in, &line, &len);
        if (r == 0)
            break;
        if (r < 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "request line longer than %zu bytes; closing the connection",
                     rbd->cfg.max_line);
            /* Before the reply: replying resumes processing, which must not
             * meet the same line again. */
            c->close_after_flush = true;
            uv_read_stop(&c->h.stream);
            conn_reply_error(c, conn_slot(c), NULL, ERR_TOO_LARGE, msg);
            if (!c->head && conn_write_backlog(c) == 0)
                conn_close(c);
            break;
        }
        c->partial_ms = 0;
        c->active_ms = uv_now(rbd->loop);
        c->turn_lines++;
        if (len == 0)
            continue; /* blank lines are keep-alives */
        hooks.on_line(c, line, len);
    }
    c->taking_ns = outer;
    /* A line started and not finished: line_timeout counts from its first
     * byte (a slowloris client's trickle does not restart it). */
    if (c->in.len == c->in.start)
        c->partial_ms = 0;
    else if (!c->partial_ms && c->in.scanned == c->in.len - c->in.start)
        c->partial_ms = uv_now(rbd->loop);
}

static void conn_resume_cb(struct conn *c)
{
    if (c->closing)
        return;
    if (conn_can_take(c)) {
        conn_ref(c);
        process_lines(c);
        if (!c->closing && conn_can_take(c) && c->paused && !c->eof) {
            c->paused = false;
            uv_read_start(&c->h.stream, alloc_cb, read_cb);
        }
        conn_unref(c);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    size_t avail;
    char *p = frame_space(&c->in, 65536, &avail);
    *buf = uv_buf_init(p, (unsigned)avail);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    if (nread == UV_EOF) {
        /* A half-close (as `nc -N` or a script's shutdown does): the
         * requests already sent still get their replies. */
        c->eof = true;
        uv_read_stop(&c->h.stream);
        conn_ref(c);
        process_lines(c);
        finish_if_done(c);
        conn_unref(c);
        return;
    }
    if (nread < 0) {
        log_debug("conn: read error: %s", uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    frame_commit(&c->in, (size_t)nread);
    budget_turn(c);
    c->turn_bytes += (size_t)nread;
    conn_ref(c);
    process_lines(c);
    if (!c->closing && !c->throttled && !c->close_after_flush && c->turn_bytes >= CONN_TURN_BYTES)
        throttle(c);
    if (!c->closing && !conn_can_take(c) && !c->close_after_flush) {
        c->paused = true;
        uv_read_stop(&c->h.stream);
    }
    conn_unref(c);
}

/* Starts a new loop turn's budget for c if its counts are an earlier
 * turn's. */
static void budget_turn(struct conn *c)
{
    if (c->turn != turn_counter) {
        c->turn = turn_counter;
        c->turn_lines = 0;
        c->turn_bytes = 0;
    }
}

static void throttle_idle_cb(uv_idle_t *h)
{
    struct conn *list = throttled_conns;
    throttled_conns = NULL;
    while (list) {
        struct conn *c = list;
        list = c->throttled_next;
        c->throttled_next = NULL;
        c->throttled = false;
        c->turn = turn_counter;
        c->turn_lines = 0;
        c->turn_bytes = 0;
        conn_resume_cb(c); /* may throttle it again, onto the new list */
        conn_unref(c);
    }
    if (!throttled_conns)
        uv_idle_stop(h);
}

/* c used its budget for this turn: its buffered lines and its socket wait
 * for the next turn, so the other connections' input is read first. */
static void throttle(struct conn *c)
{
    if (c->throttled || c->closing)
        return;
    c->throttled = true;
    c->paused = true;
    uv_read_stop(&c->h.stream);
    conn_ref(c);
    c->throttled_next = throttled_conns;
    throttled_conns = c;
    if (!uv_is_active((uv_handle_t *)&throttle_idle))
        uv_idle_start(&throttle_idle, throttle_idle_cb);
}

/* Tells the client why (one error line behind the replies it is owed) and
 * closes the connection once that is written, or after GOODBYE_GRACE_MS
 * for a client that does not read. */
static void conn_goodbye(struct conn *c, const char *code, const char *msg)
{
    if (c->closing || c->close_after_flush)
        return;
    /* Before the reply: replying resumes processing, which must stop. */
    c->close_after_flush = true;
    c->goodbye_ms = uv_now(rbd->loop);
    uv_read_stop(&c->h.stream);
    size_t n;
    char *line = reply_error(NULL, code, msg, &n);
    counters_error(code);
    conn_reply(c, conn_slot(c), line, n);
    if (!c->closing && !c->head && conn_write_backlog(c) == 0)
        conn_close(c);
}

/* Counts an error reply against the connection's limits: wrong tokens (and
 * requests before auth) against auth_failures, bad lines against
 * error_limit. Errors that are no client's mistake do not count. */
static void conn_count_error(struct conn *c, const char *code)
{
    if (c->closing || c->close_after_flush)
        return;
    char msg[160];
    if (strcmp(code, ERR_BAD_REQUEST) == 0 || strcmp(code, ERR_UNKNOWN_OP) == 0 || strcmp(code, ERR_AUTH) == 0) {
        if (++c->errors < rbd->cfg.error_limit)
            return;
        ratelog_warn(&rl_errors, "conn: closing a connection after %d bad requests", c->errors);
        snprintf(msg, sizeof msg, "%d bad requests (error_limit); closing the connection", c->errors);
        conn_goodbye(c, ERR_TOO_MANY_ERRORS, msg);
    }
}

void conn_auth_failed(struct conn *c)
{
    if (c->closing || c->close_after_flush)
        return;
    if (++c->auth_fails < rbd->cfg.auth_failures)
        return;
    ratelog_warn(&rl_auth, "conn: closing a connection after %d wrong tokens (auth_failures)", c->auth_fails);
    char msg[160];
    snprintf(msg, sizeof msg, "%d wrong tokens (auth_failures); closing the connection", c->auth_fails);
    conn_goodbye(c, ERR_AUTH, msg);
}

/* Gives back the input buffer of a connection that has nothing pending,
 * and shrinks the one of a partial line to what it holds. */
static void trim_input(struct conn *c)
{
    struct frame *f = &c->in;
    size_t pending = f->len - f->start;
    if (pending == 0) {
        free(f->buf);
        f->buf = NULL;
        f->len = f->cap = f->start = f->scanned = 0;
        return;
    }
    size_t want = 4096;
    while (want < pending)
        want *= 2;
    if (f->cap <= want)
        return;
    if (f->start)
        memmove(f->buf, f->buf + f->start, pending);
    f->start = 0;
    f->len = pending;
    char *p = realloc(f->buf, want);
    if (p) {
        f->buf = p;
        f->cap = want;
    }
}

/* The sweep's period: a quarter of the shortest time-out in force, so a
 * connection is closed at most 25% late, between 5 ms and 1 s. */
static uint64_t sweep_period(void)
{
    int64_t t = rbd->cfg.line_timeout_ms;
    if (rbd->cfg.token[0] && rbd->cfg.auth_timeout_ms < t)
        t = rbd->cfg.auth_timeout_ms;
    if (rbd->cfg.idle_timeout_ms > 0 && rbd->cfg.idle_timeout_ms < t)
        t = rbd->cfg.idle_timeout_ms;
    t /= 4;
    return t < 5 ? 5 : t > 1000 ? 1000 : (uint64_t)t;
}

static void sweep_cb(uv_timer_t *t)
{
    uint64_t now = uv_now(rbd->loop);
    const struct config *cfg = &rbd->cfg;
    for (struct conn *c = all_conns, *next; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        /* While we owe it answers, its partial line waits on us (reading
         * may be paused for back-pressure): line_timeout counts from the
         * last answer. */
        if (c->partial_ms && c->unanswered > 0)
            c->partial_ms = now;
        if (c->close_after_flush) {
            /* Told why, or refused: a client that does not read its last
             * line does not keep the slot. */
            if (!c->goodbye_ms)
                c->goodbye_ms = now;
            else if (now - c->goodbye_ms >= GOODBYE_GRACE_MS)
                conn_close(c);
            continue;
        }
        if (cfg->token[0] && !c->authed && now - c->born_ms >= (uint64_t)cfg->auth_timeout_ms) {
            ratelog_warn(&rl_timeout, "conn: closing a connection: no valid auth within auth_timeout");
            conn_goodbye(c, ERR_TIMEOUT, "no valid auth within auth_timeout; closing the connection");
        } else if (c->partial_ms && now - c->partial_ms >= (uint64_t)cfg->line_timeout_ms) {
            ratelog_warn(&rl_timeout, "conn: closing a connection: a request line did not end within line_timeout");
            conn_goodbye(c, ERR_TIMEOUT, "a request line did not end within line_timeout; closing the connection");
        } else if (cfg->idle_timeout_ms > 0 && !c->sub && c->unanswered == 0 && !c->partial_ms && !c->eof &&
                   now - c->active_ms >= (uint64_t)cfg->idle_timeout_ms) {
            /* Quiet clients are normal (a pool): logged at debug only. */
            log_debug("conn: closing an idle connection");
            conn_goodbye(c, ERR_TIMEOUT, "no request within idle_timeout; closing the connection");
        }
        if (c->closing || c->close_after_flush)
            continue;
        /* A subscriber may be quiet for hours: it is never closed for
         * that, and TCP keep-alive finds a peer that went away. */
        if (c->sub && !c->keepalive && !c->is_pipe) {
            uv_tcp_keepalive(&c->h.tcp, 1, 60);
            c->keepalive = true;
        }
        if (c->in.cap > 0 && now - c->active_ms >= BUFFER_IDLE_MS &&
            (c->in.len == c->in.start || c->in.cap > 4096))
            trim_input(c);
    }
    uv_timer_start(t, sweep_cb, sweep_period(), 0);
}

static void start_sweep(void)
{
    if (sweep_started)
        return;
    sweep_started = true;
    uv_timer_init(rbd->loop, &sweep_timer);
    uv_unref((uv_handle_t *)&sweep_timer);
    uv_timer_start(&sweep_timer, sweep_cb, sweep_period(), 0);
    uv_idle_init(rbd->loop, &throttle_idle);
}

static bool is_loopback(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return true;
        return memcmp(in6->sin6_addr.s6_addr, mapped, 12) == 0 && in6->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

/* Refuses c at once with one error line: written straight to the socket
 * and the descriptor closed in the same turn, so a flood of connections
 * past the limit does not hold descriptors (and none is reset silently). */
static void refuse_now(struct conn *c, const char *code, const char *msg)
{
    size_t n;
    char *line = reply_error(NULL, code, msg, &n);
    uv_buf_t b = uv_buf_init(line, (unsigned)n);
    uv_try_write(&c->h.stream, &b, 1);
    free(line);
    counters_error(code);
    rbd->conns_refused++;
    conn_close(c);
}

static void conn_close_timers(void)
{
    if (!sweep_started)
        return;
    if (!uv_is_closing((uv_handle_t *)&sweep_timer))
        uv_close((uv_handle_t *)&sweep_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&throttle_idle))
        uv_close((uv_handle_t *)&throttle_idle, NULL);
    while (throttled_conns) {
        struct conn *c = throttled_conns;
        throttled_conns = c->throttled_next;
        conn_unref(c);
    }
}

int conn_accept(uv_stream_t *server, bool is_pipe)
{
    struct conn *c = xcalloc(1, sizeof *c);
    int rc = is_pipe ? uv_pipe_init(rbd->loop, &c->h.pipe, 0) : uv_tcp_init(rbd->loop, &c->h.tcp);
    if (rc < 0) {
        free(c);
        return -1;
    }
    c->refs = 1; /* dropped in close_cb */
    c->h.handle.data = c;
    frame_init(&c->in, rbd->cfg.max_line);
    c->authed = rbd->cfg.token[0] == '\0';
    c->next = all_conns;
    if (all_conns)
        all_conns->prev = c;
    all_conns = c;
    rbd->nconns++;
    rbd->conns_accepted++;
    if (uv_accept(server, &c->h.stream) < 0) {
        conn_close(c);
        return -1;
    }
    start_sweep();
    c->is_pipe = is_pipe;
    c->born_ms = c->active_ms = uv_now(rbd->loop);
    if (rbd->nconns > rbd->cfg.max_connections) {
        ratelog_warn(&rl_refused, "conn: refusing a connection: %d open, the limit is %d (max_connections)",
                     rbd->nconns - 1, rbd->cfg.max_connections);
        refuse_now(c, ERR_BUSY, "too many connections");
        return 0;
    }
    if (conn_fd_room > 0 && rbd->nconns > conn_fd_room) {
        ratelog_warn(&rl_refused, "conn: refusing a connection: %d open, the descriptor limit leaves room for %d",
                     rbd->nconns - 1, conn_fd_room);
        conn_refused_nofile++;
        refuse_now(c, ERR_BUSY, "too many connections");
        return 0;
    }
    if (!is_pipe && !rbd->cfg.token[0] && !rbd->cfg.allow_remote_without_token) {
        struct sockaddr_storage peer;
        int len = sizeof peer;
        if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&peer, &len) == 0 && !is_loopback(&peer)) {
            ratelog_warn(&rl_protected, "conn: refusing a non-loopback client: no token is set "
                                        "(protected mode; see allow_remote_without_token)");
            refuse_now(c, ERR_AUTH,
                       "protected mode: no token is configured, so only loopback clients are served");
            return 0;
        }
    }
    if (!is_pipe)
        uv_tcp_nodelay(&c->h.tcp, 1);
    if (reading_stopped_all) {
        conn_close(c);
        return 0;
    }
    uv_read_start(&c->h.stream, alloc_cb, read_cb);
    return 0;
}
