/*
 * What the op handlers share (inside ops/ only): the job a request is
 * parsed into and lives in until its reply, the handler table's row, and
 * the helpers every handler replies and finishes through.
 */
#ifndef REBOUND_DAEMON_OPS_JOB_H
#define REBOUND_DAEMON_OPS_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "proto/request.h"
#include "queue/classify.h"
#include "queue/decide.h"
#include "queue/sched.h"

struct conn;
struct slot;
struct store_change;

/* A request from parse to reply. While an entry has a write in flight,
 * later requests for the same id wait on it (in order), so every decision
 * is made on committed state. */
struct job {
    struct job *next; /* next waiter on the same entry */
    struct conn *conn;
    struct slot *slot;
    struct request req;
    struct entry *e; /* per-message ops: the id's entry when the handler starts (or NULL) */
    int64_t old_due; /* e's due time before the op, to restore on failure */
    bool was_scheduled;
    struct decision d;
    struct classification cls;
    int prior_attempt;   /* bounce: retries made before this report */
    uint32_t domain;     /* the recipient's domain (a reference is held), or 0 */
    bool alert_claimed;  /* bounce: this report raises the window's sender_alert */
    uint64_t alert_repeats;
    int nevents;
    enum event_type event_types[3];
    char copies[192]; /* the request's strings, when they fit */
    /* shards (ops/ops.c): the shard the op is about (0 in the one-shard
     * layout), and while its shard is looked up in Redis, its line */
    int shard;
    char *line;
    size_t line_len;
};

/* One row of the op table (ops.c). */
struct op_handler {
    void (*run)(struct job *op);
    /* Waits behind a write in flight for the same id (when the request
     * has an id); run then finds the id's entry in op->e. */
    bool per_message;
    /* Answers after Redis: the job (and a reference to its connection)
     * outlives the dispatch, and run ends it with op_finish on every path.
     * Otherwise run replies before it returns and the dispatcher ends the
     * job. */
    bool needs_store;
};

/* The handlers, one file per family. */
void op_bounce(struct job *op);      /* bounce.c */
void op_drop(struct job *op);        /* drop.c: delivered, cancel */
void op_get(struct job *op);         /* recipient.c */
void op_unsuppress(struct job *op);  /* recipient.c */
void op_suppressed(struct job *op);  /* recipient.c */
void op_ping(struct job *op);        /* info.c */
void op_auth(struct job *op);        /* info.c */
void op_classify(struct job *op);    /* info.c */
void op_stats(struct job *op);       /* info.c */
void op_domain(struct job *op);      /* info.c */

/* Learned timing (bounce.c): queues domain `name`'s learned state (len
 * bytes, lower case) into the current write batch, behind the report that
 * changed it, so both are applied in one atomic step. */
struct learn_domain;
void op_learn_write(const char *name, size_t len, const struct learn_domain *st);
void op_subscribe(struct job *op);   /* subscribe.c */
void op_ack(struct job *op);         /* subscribe.c */
/* acting on the queue */
void op_list(struct job *op);        /* list.c */
void op_retry_now(struct job *op);   /* retry_now.c */
void op_hold(struct job *op);        /* hold.c: hold */
void op_release(struct job *op);     /* hold.c: release */
/* retry_now.c: cancel or retry_now of every message of a domain or a
 * campaign, in bounded slices (drop.c hands cancel's bulk form here). */
void op_bulk(struct job *op);
/* history.c */
void op_history(struct job *op);
/* Makes ch (a message that ends: give_up, suppress, delivered) keep the
 * message's story in the history: mode 'H', with the outcome and reason
 * written into story (HISTORY_STORY_MAX bytes, alive until ch is queued)
 * and, when class_name is set, the bounce that ended it. */
#define HISTORY_STORY_MAX 96
void history_change(struct store_change *ch, char *story, const char *outcome, const char *reason, int attempt,
                    int64_t first_ms, const char *class_name, int64_t at_ms, int code, const char *enhanced);
void op_cluster(struct job *op);     /* cluster.c */
void op_groups(struct job *op);      /* groups.c */
/* fanout.c (shards): whether r is asked of every instance and merged
 * (list, stats, hold, release, the bulk retry_now and cancel), and doing
 * so: c's slot s gets the merged reply. */
bool ops_fans_out(const struct request *r);
void ops_fan_out(struct conn *c, struct slot *s, const struct request *r, const char *line, size_t len);

/* Replies obj (owned, may be NULL) as the request's success. */
void op_reply(const struct job *op, json_t *obj);
/* Replies an error (conn_reply_error: counted in /metrics). */
void op_error(const struct job *op, const char *code, const char *msg);
/* Replies `unavailable`, saying why Redis cannot be used. */
void op_unavailable(struct job *op);
/* Whether Redis can take the op's write; when not, replies unavailable
 * and finishes op. */
bool op_store_usable(struct job *op);
/* Ends a needs_store job: drops its domain and connection references and
 * frees or keeps it for reuse. */
void op_finish(struct job *op);
/* The entry's write is answered: drop it (when drop) back to NEW, run
 * what waited on it, and forget it if nothing keeps it. */
void op_settle(struct entry *e, bool drop);

#endif
