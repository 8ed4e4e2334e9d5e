/*
 * A client connection: reads request lines, hands them to ops, and writes
 * the replies back in request order (each request gets a slot when it is
 * read; a slot is filled when its answer is ready, possibly after a Redis
 * round trip; the filled prefix of the queue is written out).
 *
 * Back-pressure: with max_inflight unanswered requests, or too much unsent
 * output, the connection stops reading until the client catches up, so a
 * slow or hostile client cannot grow memory without bound.
 *
 * Lifetime: the connection is reference counted; requests in flight hold a
 * reference, so a reply for a client that went away lands harmlessly. The
 * memory is freed only after the handle's close callback and the last
 * reference.
 */
#ifndef REBOUND_DAEMON_CONN_H
#define REBOUND_DAEMON_CONN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "proto/frame.h"

struct slot;
struct subscriber;

struct conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    struct frame in;
    struct slot *head, *tail;
    int unanswered;
    int refs;
    bool closing;        /* uv_close called or about to be */
    bool close_after_flush;
    bool paused;         /* reading stopped for back-pressure */
    bool eof;            /* the client closed its side: answer what it sent, then close */
    char *out;           /* lines ready to send, written once per loop turn */
    size_t out_len, out_cap, out_hint;
    struct slot *free_slots; /* answered slots, for reuse */
    uint64_t taking_ns;  /* while lines are being taken: when that began, or 0 */
    struct conn *dirty_next; /* on the list of connections with output */
    bool dirty;
    bool authed;
    struct subscriber *sub; /* events/' state, set once the connection subscribed */
    struct conn *prev, *next; /* all connections */

    /* What a hostile client may cost (docs/operations.md, "Hostile
     * clients"); times are the loop's (uv_now, ms). */
    uint64_t born_ms;      /* accepted */
    uint64_t active_ms;    /* the last complete line, or born_ms */
    uint64_t partial_ms;   /* when the pending partial line began; 0 = none */
    uint64_t goodbye_ms;   /* told why it is closed; closed hard if it does not read it */
    int errors;            /* bad lines so far (error_limit) */
    int auth_fails;        /* refused auth attempts (auth_failures) */
    unsigned turn_lines;   /* lines taken this loop turn (the fairness budget) */
    size_t turn_bytes;     /* bytes read this loop turn */
    uint64_t turn;         /* the turn those two count */
    bool throttled;        /* over its budget: reading resumes next turn */
    bool is_pipe;
    bool keepalive;        /* TCP keep-alive on (a subscriber's quiet spells) */
    bool from_peer;        /* another instance relays its clients' requests on it (net/peer.c) */
    struct conn *throttled_next;
};

/* What a connection calls upward (registered by main.c, as libuv takes a
 * *_cb): net/ names no layer above it. Each is called on the loop thread. */
struct conn_hooks {
    /* A complete request line (without its newline, not empty); the reply
     * goes to conn_slot's slot, taken before this returns. */
    void (*on_line)(struct conn *c, const char *line, size_t len);
    /* A write finished on a connection with a subscriber (c->sub set):
     * room for more events. */
    void (*on_writable)(struct conn *c);
    /* The connection is closing and c->sub is set: let go of it. */
    void (*on_close)(struct conn *c);
};

/* Sets the hooks (copied); every one must be set before the first
 * connection is accepted. */
void conn_set_hooks(const struct conn_hooks *hooks);

/* Accepts a new connection on server. Returns 0 or -1. */
int conn_accept(uv_stream_t *server, bool is_pipe);

/* Reserves the reply slot for the next request. */
struct slot *conn_slot(struct conn *c);
/* Fills slot with line (malloc'd, ownership passes) and writes out whatever
 * is ready. Safe to call after the connection closed. */
void conn_reply(struct conn *c, struct slot *s, char *line, size_t len);
/* conn_reply for a line the caller keeps (copied; the caller may reuse its
 * buffer as soon as this returns). */
void conn_reply_copy(struct conn *c, struct slot *s, const char *line, size_t len);
/* Replies to the request in slot with the error code (an ERR_* of
 * proto/request.h) and message, echoing req when not NULL. The one error
 * reply of the daemon: it counts the error in /metrics by code, and in the
 * stats' `errors` unless it is `unavailable` or `not_found` (which are no
 * client's mistake). */
void conn_reply_error(struct conn *c, struct slot *s, json_t *req, const char *code, const char *msg);
/* A wrong token was refused on c (its error reply already given): after
 * auth_failures of them the connection is told why and closed. */
void conn_auth_failed(struct conn *c);
/* Writes an event line (malloc'd, ownership passes) right away. Returns 0,
 * or -1 when the connection is closing (line freed). */
int conn_send_event(struct conn *c, char *line, size_t len);
/* Bytes queued for writing and not yet sent. */
size_t conn_write_backlog(const struct conn *c);
/* Writes out what every connection has ready: one write per connection per
 * loop turn, however many replies and events a turn produced. Called once
 * per loop turn, before the loop waits for I/O. */
void conn_flush_output(void);

void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* Closes the connection (output not yet written is dropped). */
void conn_close(struct conn *c);
/* Closes every connection (shutdown). */
void conn_close_all(void);
/* Stops reading new requests on every connection (drain). */
void conn_stop_reading_all(void);
/* hold = true: every connection, present and future, stops taking new
 * requests (what is buffered waits); false: they all resume. Used to let
 * the requests in flight settle before a policy swap. */
void conn_hold_reading(bool hold);
/* Drain: half-closes every connection once its queued replies are written
 * (the client reads them, then EOF) and discards further input; each
 * connection closes when its client does. */
void conn_shutdown_all(void);

/* Per-connection limits, each from the config (read at every use, so a
 * reload applies to open connections): auth_timeout, line_timeout,
 * idle_timeout, error_limit, auth_failures; and a budget of lines and
 * bytes per connection per loop turn. */
/* Lines one connection may have taken in one loop turn before the others
 * get theirs: its further input waits for the next turn. */
#define CONN_TURN_LINES 1024
#define CONN_TURN_BYTES (256u << 10)
/* Connections refused so far because the descriptor limit, not
 * max_connections, was reached (also counted in conns_refused). */
extern uint64_t conn_refused_nofile;
/* How many client connections the descriptor limit leaves room for
 * (server_start sets it from RLIMIT_NOFILE; 0 = no such limit known). */
extern int conn_fd_room;

#endif
