/*
 * The Redis store: what reboundd keeps in Redis and how it gets there.
 *
 * Keys (under the configured prefix, "rebound:" by default):
 *   <prefix>msg     hash, one field per known message id; the value is the
 *                   record "<S><due>,<attempt>,<class>,<first>\n<fragment>\n<history>"
 *                   where S is 'P' (retry pending) or 'A' (retry fired,
 *                   awaiting the outcome), fragment is the message's JSON
 *                   members for events, history a JSON array of bounces.
 *   <prefix>events  stream, the durable outbox of events (field "e").
 * Ids are only ever hash fields and script arguments, never key names.
 *
 * Writes that a client reply depends on are gathered into one batch per
 * loop turn and applied by one EVALSHA of scripts/apply.lua, so a burst of
 * reports costs a few round trips, not one each.
 */
#ifndef REBOUND_DAEMON_STORE_H
#define REBOUND_DAEMON_STORE_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Called once per queued write: ok is true when Redis confirmed it. */
typedef void (*store_done_cb)(void *arg, bool ok);

struct store_change {
    const char *id;
    size_t id_len;
    char mode;              /* 'S' set, 'D' delete, '-' events only */
    const char *header;     /* 'S' */
    const char *fragment;   /* 'S' */
    const char *hist_item;  /* 'S': one JSON array appended to the history */
    const char *const *events; /* event bodies */
    int nevents;
};

void store_init(void);
/* True when Redis is connected and ready for commands. */
bool store_ready(void);
void store_free(void);

/* Queues a change into the current batch (the strings are copied). Returns
 * 0, or -1 when Redis is not ready (done is not called). */
int store_queue(const struct store_change *ch, store_done_cb done, void *arg);
/* Sends the current batch, if any. Called once per loop turn. */
void store_flush(void);

/* Remembers an id whose write got no answer, for firing_resync. */
void store_mark_in_doubt(const char *id, size_t id_len);
/* Calls fn for each id in doubt and forgets them. */
void store_take_in_doubt(void (*fn)(const char *id, void *arg), void *arg);

typedef void (*store_reply_cb)(void *arg, redisReply *reply);
/* Fires the given ids (scripts/fire.lua). reply is NULL when Redis failed. */
int store_fire(const char *const *ids, const size_t *id_lens, int n, int64_t now, store_reply_cb cb, void *arg);
/* Reads one record (HGET). */
int store_get(const char *id, size_t id_len, store_reply_cb cb, void *arg);
/* Runs any command (argv form). */
int store_command(int argc, const char **argv, const size_t *lens, store_reply_cb cb, void *arg);

/* Parsed form of a record's header. Returns 0 or -1 if malformed. The
 * pointers point into rec. */
struct record {
    char state; /* 'P' or 'A' */
    int64_t due_ms, first_ms;
    int attempt;
    const char *class_name;
    size_t class_len;
    const char *fragment;
    size_t fragment_len;
    const char *history;
    size_t history_len;
};
int record_parse(const char *rec, size_t len, struct record *out);

#endif
