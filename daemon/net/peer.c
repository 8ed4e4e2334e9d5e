/*
 * Peer connections (peer.h). A peer is the owner's address as the lease
 * names it; a handful at most exist at once (the owner changes rarely), and
 * one idle for PEER_IDLE_MS is closed. Requests relayed on a peer wait in a
 * FIFO: the peer answers in request order, so each reply line fills the
 * oldest. A peer that fails (connect refused, reset, no answer within
 * redis_timeout) answers everything it holds `unavailable`, safe to resend,
 * and is closed; the next request opens a new one.
 */
#include "net/peer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "config/addr.h"
#include "proto/request.h"

/* One per owner: with shards, every other instance, and this one for
 * the fanned-out ops it asks itself. */
#define PEERS_MAX 16
#define PEER_PENDING_MAX 100000 /* relayed and not answered, per peer */
#define PEER_IDLE_MS 10000
#define PEER_TICK_MS 250
#define PEER_LINE_MAX (1 << 20)

struct pending {
    /* peer_ask's: called with the reply line, or NULL when none came */
    void (*cb)(void *arg, const char *line, size_t len);
    void *arg;
    struct conn *c; /* NULL: the auth line's reply, swallowed (or cb's) */
    struct slot *s;
    json_t *req;
    uint64_t sent_ms;
    struct pending *next;
};

struct peer {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t timer;
    char addr[300];
    bool connected, failed;
    int handles_open;
    struct pending *head, *tail;
    size_t npending;
    char *out; /* lines waiting for the connection */
    size_t out_len, out_cap;
    char *in;
    size_t in_len, in_cap;
    uint64_t last_used;
};

static struct peer *peers[PEERS_MAX];
static uint64_t nforwarded, nfailed;

uint64_t peer_forwarded(void)
{
    return nforwarded;
}

uint64_t peer_failed(void)
{
    return nfailed;
}

static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n > *cap) {
        while (*len + n > *cap)
            *cap = *cap ? *cap * 2 : 4096;
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

static void peer_free_cb(uv_handle_t *h)
{
    struct peer *p = h->data;
    if (--p->handles_open > 0)
        return;
    free(p->out);
    free(p->in);
    free(p);
}

/* Answers everything p holds `unavailable` and closes it. */
static void peer_fail(struct peer *p, const char *why)
{
    if (p->failed)
        return;
    p->failed = true;
    for (int i = 0; i < PEERS_MAX; i++)
        if (peers[i] == p)
            peers[i] = NULL;
    if (p->npending)
        log_warn("peer %s: %s; %zu relayed requests answered unavailable", p->addr, why, p->npending);
    char msg[400];
    snprintf(msg, sizeof msg, "the owner of the schedule at %s could not be reached (%s); resend", p->addr, why);
    struct pending *q = p->head;
    while (q) {
        struct pending *next = q->next;
        if (q->c) {
            nfailed++;
            conn_reply_error(q->c, q->s, q->req, ERR_UNAVAILABLE, msg);
            conn_unref(q->c);
        } else if (q->cb) {
            nfailed++;
            q->cb(q->arg, NULL, 0);
        }
        json_decref(q->req);
        free(q);
        q = next;
    }
    p->head = p->tail = NULL;
    p->npending = 0;
    uv_close((uv_handle_t *)&p->tcp, peer_free_cb);
    uv_close((uv_handle_t *)&p->timer, peer_free_cb);
}

struct peer_write {
    uv_write_t req;
    char *data;
};

static void write_cb(uv_write_t *req, int status)
{
    struct peer_write *w = (struct peer_write *)req;
    struct peer *p = req->data;
    free(w->data);
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        peer_fail(p, uv_strerror(status));
}

/* Writes what is waiting, once connected. */
static void peer_flush(struct peer *p)
{
    if (!p->connected || p->failed || p->out_len == 0)
        return;
    struct peer_write *w = xmalloc(sizeof *w);
    w->data = p->out;
    w->req.data = p;
    uv_buf_t buf = uv_buf_init(p->out, (unsigned)p->out_len);
    p->out = NULL;
    p->out_len = p->out_cap = 0;
    int rc = uv_write(&w->req, (uv_stream_t *)&p->tcp, &buf, 1, write_cb);
    if (rc < 0) {
        free(w->data);
        free(w);
        peer_fail(p, uv_strerror(rc));
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct peer *p = h->data;
    if (p->in_cap - p->in_len < 65536) {
        p->in_cap = p->in_cap ? p->in_cap * 2 : 65536;
        p->in = xrealloc(p->in, p->in_cap);
    }
    *buf = uv_buf_init(p->in + p->in_len, (unsigned)(p->in_cap - p->in_len));
}

/* One reply line from the peer: the oldest request's answer. */
static void take_reply(struct peer *p, const char *line, size_t len)
{
    struct pending *q = p->head;
    if (!q) {
        peer_fail(p, "a reply nobody asked for");
        return;
    }
    p->head = q->next;
    if (!p->head)
        p->tail = NULL;
    p->npending--;
    if (q->c) {
        char *copy = xmalloc(len + 1);
        memcpy(copy, line, len);
        copy[len] = '\n';
        conn_reply(q->c, q->s, copy, len + 1);
        conn_unref(q->c);
    } else if (q->cb) {
        q->cb(q->arg, line, len);
    }
    json_decref(q->req);
    free(q);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct peer *p = s->data;
    if (n < 0) {
        peer_fail(p, n == UV_EOF ? "it closed the connection" : uv_strerror((int)n));
        return;
    }
    p->in_len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < p->in_len && !p->failed; i++) {
        if (p->in[i] != '\n')
            continue;
        take_reply(p, p->in + start, i - start);
        start = i + 1;
    }
    if (p->failed)
        return;
    memmove(p->in, p->in + start, p->in_len - start);
    p->in_len -= start;
    if (p->in_len > PEER_LINE_MAX)
        peer_fail(p, "a reply line too long");
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct peer *p = req->data;
    if (p->failed)
        return;
    if (status < 0) {
        peer_fail(p, uv_strerror(status));
        return;
    }
    p->connected = true;
    uv_tcp_nodelay(&p->tcp, 1);
    uv_read_start((uv_stream_t *)&p->tcp, alloc_cb, read_cb);
    peer_flush(p);
}

static void timer_cb(uv_timer_t *t)
{
    struct peer *p = t->data;
    uint64_t now = uv_now(rbd->loop);
    if (p->head && now - p->head->sent_ms > (uint64_t)rbd->cfg.redis_timeout_ms)
        peer_fail(p, "no answer in time");
    else if (!p->head && now - p->last_used > PEER_IDLE_MS)
        peer_fail(p, "idle");
}

static void push(struct peer *p, struct conn *c, struct slot *s, json_t *req)
{
    struct pending *q = xcalloc(1, sizeof *q);
    q->c = c;
    q->s = s;
    q->req = req ? json_incref(req) : NULL;
    q->sent_ms = uv_now(rbd->loop);
    if (p->tail)
        p->tail->next = q;
    else
        p->head = q;
    p->tail = q;
    p->npending++;
    if (c)
        conn_ref(c);
}

static struct peer *peer_open(const char *addr)
{
    struct addr a;
    char err[200];
    if (addr_parse_listen(addr, &a, err, sizeof err) != 0 || a.path[0])
        return NULL;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(a.host, a.port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(a.host, a.port, (struct sockaddr_in6 *)&ss) != 0)
        return NULL;
    int slot = -1;
    for (int i = 0; i < PEERS_MAX && slot < 0; i++)
        if (!peers[i])
            slot = i;
    if (slot < 0)
        peer_fail(peers[0], "replaced by a newer owner"), slot = 0;
    struct peer *p = xcalloc(1, sizeof *p);
    snprintf(p->addr, sizeof p->addr, "%s", addr);
    uv_tcp_init(rbd->loop, &p->tcp);
    uv_timer_init(rbd->loop, &p->timer);
    p->tcp.data = p->timer.data = p->creq.data = p;
    p->handles_open = 2;
    peers[slot] = p;
    uv_timer_start(&p->timer, timer_cb, PEER_TICK_MS, PEER_TICK_MS);
    int rc = uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&ss, connect_cb);
    if (rc < 0) {
        peer_fail(p, uv_strerror(rc));
        return NULL;
    }
    /* Says "a peer": the other side never relays these requests further,
     * so two instances with stale views of the owner cannot bounce a
     * request between them. */
    static const char hello[] = "{\"op\":\"ping\",\"req\":\"" PEER_HELLO_REQ "\"}\n";
    append(&p->out, &p->out_len, &p->out_cap, hello, sizeof hello - 1);
    push(p, NULL, NULL, NULL);
    if (rbd->cfg.token && rbd->cfg.token[0]) {
        json_t *auth = json_pack("{ssss}", "op", "auth", "token", rbd->cfg.token);
        char *line = auth ? json_dumps(auth, JSON_COMPACT) : NULL;
        json_decref(auth);
        if (line) {
            append(&p->out, &p->out_len, &p->out_cap, line, strlen(line));
            append(&p->out, &p->out_len, &p->out_cap, "\n", 1);
            push(p, NULL, NULL, NULL);
            free(line);
        }
    }
    return p;
}

static struct peer *peer_for(const char *addr)
{
    struct peer *p = NULL;
    for (int i = 0; i < PEERS_MAX && !p; i++)
        if (peers[i] && strcmp(peers[i]->addr, addr) == 0)
            p = peers[i];
    if (!p)
        p = peer_open(addr);
    if (!p || p->npending >= PEER_PENDING_MAX)
        return NULL;
    return p;
}

int peer_ask(const char *addr, const char *line, size_t len, void (*cb)(void *arg, const char *line, size_t len),
             void *arg)
{
    struct peer *p = peer_for(addr);
    if (!p)
        return -1;
    append(&p->out, &p->out_len, &p->out_cap, line, len);
    append(&p->out, &p->out_len, &p->out_cap, "\n", 1);
    push(p, NULL, NULL, NULL);
    p->tail->cb = cb;
    p->tail->arg = arg;
    p->last_used = uv_now(rbd->loop);
    peer_flush(p);
    return 0;
}

int peer_forward(const char *addr, struct conn *c, struct slot *s, const char *line, size_t len, json_t *req)
{
    struct peer *p = peer_for(addr);
    if (!p)
        return -1;
    append(&p->out, &p->out_len, &p->out_cap, line, len);
    append(&p->out, &p->out_len, &p->out_cap, "\n", 1);
    push(p, c, s, req);
    p->last_used = uv_now(rbd->loop);
    nforwarded++;
    peer_flush(p);
    return 0;
}

void peer_close_all(void)
{
    for (int i = 0; i < PEERS_MAX; i++)
        if (peers[i])
            peer_fail(peers[i], "shutting down");
}
