/*
 * Parsing and validation of one request line (newline-delimited JSON, see
 * docs/protocol.md). Pure: jansson and libc only.
 */
#ifndef REBOUND_PROTO_REQUEST_H
#define REBOUND_PROTO_REQUEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum op {
    OP_BOUNCE,
    OP_DELIVERED,
    OP_CANCEL,
    OP_GET,
    OP_CLASSIFY,
    OP_STATS,
    OP_SUBSCRIBE,
    OP_ACK,
    OP_PING,
    OP_AUTH,
    OP_UNSUPPRESS,
    OP_SUPPRESSED,
    OP_DOMAIN,
    /* acting on the queue (docs/protocol.md, "Acting on the queue") */
    OP_LIST,
    OP_RETRY_NOW,
    OP_HOLD,
    OP_RELEASE,
    OP_HISTORY,
    OP_CLUSTER, /* high availability: the instances and their shards */
    OP_GROUPS, /* the consumer groups: list, or delete one ("delete") */
    OP__COUNT
};

/* Event types, as a bit each in request.types. */
enum event_type {
    EV_RETRY,
    EV_GIVE_UP,
    EV_SUPPRESS,
    EV_SENDER_ALERT,
    EV_DOMAIN_THROTTLED,
    EV__COUNT
};
#define EV_ALL ((1u << EV__COUNT) - 1)

struct proto_limits {
    size_t max_id;       /* 200 */
    size_t max_rcpt;     /* 320 */
    size_t max_text;     /* 4096 */
    size_t max_meta;     /* 4096, as compact JSON */
    size_t max_campaign; /* 200 */
    size_t max_group;    /* 64 */
    size_t max_ack_ids;  /* 10000 */
};
void proto_limits_default(struct proto_limits *lim);

/* The largest integer magnitude a request may hold anywhere (2^53 - 1,
 * the largest a double holds exactly, as RFC 7493 asks): anything larger
 * is refused with bad_request. */
#define PROTO_INT_MAX ((json_int_t)9007199254740991LL)

/* Error codes of replies: static strings, one of these. */
#define ERR_BAD_REQUEST "bad_request"
#define ERR_UNKNOWN_OP "unknown_op"
#define ERR_TOO_LARGE "too_large"
#define ERR_NOT_FOUND "not_found"
#define ERR_UNAVAILABLE "unavailable"
#define ERR_BUSY "busy"
#define ERR_AUTH "auth_required"
#define ERR_INTERNAL "internal"

struct proto_error {
    const char *code;   /* ERR_* */
    char message[256];
};

/* A parsed request. Every pointer lives until request_free: borrowed from
 * root, or, for a line the fast path took (flat, no escapes), from strings
 * in `copies` or in the caller's buffer (then root is NULL, and req and
 * ids, if any, are owned on their own).
 * Absent optional strings are NULL, absent numbers 0. */
struct request {
    enum op op;
    json_t *root;
    char *copies;         /* fast path: the string values, NUL-terminated */
    json_t *req;          /* the "req" value to echo, or NULL */
    const char *id;       /* bounce, delivered, cancel, get (or rcpt) */
    size_t id_len;
    const char *rcpt;     /* bounce, unsuppress (required), delivered (optional), get (instead of id) */
    size_t rcpt_len;
    int code;             /* bounce (required), classify (optional): 200..599 */
    const char *enhanced; /* "X.Y.Z", validated */
    const char *text;
    const char *campaign;
    int64_t not_before;   /* epoch ms, 0 when absent */
    json_t *meta;         /* an object, or NULL */
    const char *group;    /* subscribe */
    unsigned types;       /* subscribe: EV_* bits, EV_ALL when absent */
    json_t *ids;          /* ack: an array of strings */
    const char *token;    /* auth */
    const char *domain;   /* domain: a host name, validated */
    size_t domain_len;
    const char *cursor;   /* suppressed: where the page starts, decimal digits ("0": the first page) */
    int count;            /* suppressed: addresses per page (a hint), 1..1000 */
    /* acting on the queue: list's filters (domain and campaign above too),
     * hold's until; cancel and retry_now take id, domain or campaign */
    const char *class_name; /* list: a class name */
    size_t class_len;
    int state;              /* list: 0 any, 'P' pending, 'A' awaiting */
    int64_t due_before;     /* list: epoch ms, 0 when absent */
    int64_t due_after;
    int64_t until;          /* hold: epoch ms, 0 = until released */
};

/* Parses and validates one line (without its '\n'). Returns 0, or -1 with
 * err filled in; on error out->req is still set when the line was a JSON
 * object with a "req", so the error reply can echo it. Call request_free
 * on every path. */
int request_parse(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                  struct proto_error *err);
/* request_parse that puts the fast path's string copies in buf (cap
 * bytes) when they fit, instead of a block of their own: buf must stay
 * as it is until request_free (a caller that parses into memory it
 * reuses saves an allocation per request). */
int request_parse_buf(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                      struct proto_error *err, char *buf, size_t cap);
void request_free(struct request *r);
/* request_parse without its fast path: every line through jansson. The
 * reference that the fast path is tested against; same contract. */
int request_parse_json(const char *line, size_t len, const struct proto_limits *lim, struct request *out,
                       struct proto_error *err);

const char *op_name(enum op op);
const char *event_type_name(enum event_type t);
/* Returns the event type called name, or -1. */
int event_type_parse(const char *name);

/* Replaces in place, with '?', every byte of the NUL-terminated s that is
 * not part of valid UTF-8, and every ASCII control character, so that text
 * quoting client input can go into a JSON reply or a log line. Returns s. */
char *proto_text_sanitize(char *s);

#endif
