#include "net/conn.h"

#include <stdlib.h>
#include <string.h>

#include "base/counters.h"
#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "proto/reply.h"
#include "proto/request.h"

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

static void conn_resume_cb(struct conn *c);
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
    return !c->closing && !c->close_after_flush && !reading_stopped_all && !reading_held &&
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
    while (conn_can_take(c)) {
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
        if (len == 0)
            continue; /* blank lines are keep-alives */
        hooks.on_line(c, line, len);
    }
    c->taking_ns = outer;
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
    conn_ref(c);
    process_lines(c);
    if (!c->closing && !conn_can_take(c) && !c->close_after_flush) {
        c->paused = true;
        uv_read_stop(&c->h.stream);
    }
    conn_unref(c);
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
    if (rbd->nconns > rbd->cfg.max_connections) {
        log_warn("conn: refusing a connection: %d open, the limit is %d", rbd->nconns - 1,
                 rbd->cfg.max_connections);
        rbd->conns_refused++;
        conn_reply_error(c, conn_slot(c), NULL, ERR_BUSY, "too many connections");
        c->close_after_flush = true;
        return 0;
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
