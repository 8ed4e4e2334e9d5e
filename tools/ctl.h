/*
 * What the files of reboundctl share. The program is split by
 * responsibility:
 *
 *   reboundctl.c    the command line: help texts, the command table, the
 *                   options every command accepts, main
 *   ctl_util.c      messages, argument parsing, writing stdout
 *   ctl_render.c    replies and events rendered for a person, the stats
 *                   summary
 *   ctl_client.c    the connection to reboundd: connect, authenticate,
 *                   request and reply, the pipelined send loop, Ctrl-C
 *   ctl_commands.c  the commands that talk to the daemon, tail included
 *   ctl_offline.c   classify and check-policy, which need no daemon
 *
 * Dependencies run one way: commands and offline use client, render and
 * util; client uses render (for a refused token) and util.
 */
#ifndef REBOUND_TOOLS_CTL_H
#define REBOUND_TOOLS_CTL_H

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/frame.h"

#ifndef REBOUND_DEFAULT_POLICY
#define REBOUND_DEFAULT_POLICY "/etc/rebound/policy.json"
#endif

#define EXIT_REPLY 1 /* an answer was ok:false */
#define EXIT_USAGE 2
#define EXIT_IO 3

#define DEFAULT_SERVER "127.0.0.1:7411"
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_GROUP "reboundctl"
/* Longest line read from the daemon or from stdin; far above anything the
 * daemon sends, it only bounds memory when the input is not NDJSON. */
#define MAX_LINE (64u * 1024 * 1024)
#define SEND_WINDOW 256
#define OUT_HIGH_WATER (1u << 20)

struct ctl {
    const char *server;
    const char *token;  /* NULL or "" = no auth */
    int64_t timeout_ms; /* for each wait on the daemon; 0 = forever */
    bool json;          /* JSON lines out */
    const char *cmd;    /* the command, for messages and --help */
};

struct client {
    int fd;
    char addr[256]; /* the instance connected to, for messages */
    struct frame in;
    const struct ctl *ctl;
};

/* ---- options (reboundctl.c) ------------------------------------------ */

enum {
    O_JSON = 1000,
    O_TOKEN,
    O_TIMEOUT,
    O_VERSION,
    O_ID,
    O_RCPT,
    O_CODE,
    O_ENHANCED,
    O_TEXT,
    O_CAMPAIGN,
    O_NOT_BEFORE,
    O_META,
    O_GROUP,
    O_TYPES,
    O_NO_ACK,
    O_POLICY,
    O_CHECK,
    O_ALL,
    O_CURSOR,
    O_COUNT,
    /* acting on the queue */
    O_DOMAIN,
    O_CLASS,
    O_STATE,
    O_DUE_BEFORE,
    O_DUE_AFTER,
    O_UNTIL,
};

#define COMMON_OPTIONS                                                                                       \
    {"server", required_argument, NULL, 's'}, {"json", no_argument, NULL, O_JSON},                          \
        {"token", required_argument, NULL, O_TOKEN}, {"timeout", required_argument, NULL, O_TIMEOUT},       \
        {"help", no_argument, NULL, 'h'}

/* The options that describe one SMTP reply, taken by bounce and classify. */
#define REPLY_OPTIONS                                                                                        \
    {"code", required_argument, NULL, O_CODE}, {"enhanced", required_argument, NULL, O_ENHANCED},           \
        {"text", required_argument, NULL, O_TEXT}

/* The options of a command that has only the common ones. */
extern const struct option common_only[];

/* The loop every command runs over its options. handle gets the options
 * of the command itself and returns 0 or an exit status; handle may be
 * NULL when longopts has only the common options. Returns -1 when the
 * options are fine (optind is at the first operand), otherwise the exit
 * status (help: 0). */
int parse_options(struct ctl *ctl, int argc, char **argv, const struct option *longopts,
                  int (*handle)(struct ctl *ctl, int c, const char *arg, void *state), void *state);

/* ---- messages, parsing, stdout (ctl_util.c) -------------------------- */

/* "reboundctl: " and the message on stderr. */
void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Says what is wrong with the command line and where help is. Returns
 * EXIT_USAGE. */
int usage_error(const struct ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Says "out of memory" and exits with EXIT_IO. */
void out_of_memory(void) __attribute__((noreturn));

/* A malloc'd formatted string; exits when out of memory. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The wall clock in Unix milliseconds. */
int64_t now_ms(void);

/* Parses a decimal integer within [lo, hi] into *out. Returns 0 or -1. */
int parse_int(const char *s, long long lo, long long hi, long long *out);

/* The arguments of REPLY_OPTIONS, NULL when not given. */
struct reply_args {
    const char *code, *enhanced, *text;
};

/* Takes option c into a when it is one of REPLY_OPTIONS. Returns whether
 * it was. */
bool reply_option(struct reply_args *a, int c, const char *arg);

/* Parses --code's argument into *code. Returns 0, or EXIT_USAGE after
 * saying why. */
int parse_code(const struct ctl *ctl, const char *arg, long long *code);

/* Parses a --timeout: "0" (never) or a duration. Returns 0 or -1. */
int parse_timeout(const char *s, int64_t *ms);

/* Sets key to the string value when value is not NULL. Returns -1 when it
 * is not valid UTF-8 (jansson refuses it). */
int set_string(json_t *obj, const char *key, const char *value);

/* Whether s[0..n) holds only spaces, tabs and '\r'. */
bool is_blank(const char *s, size_t n);

/* Writes a line and its '\n' (unless it ends with one) to stdout. */
void put_line(const char *s, size_t n);

/* Flushes stdout; returns -1 (after saying so, unless the reader just went
 * away) when the output cannot be written. */
int flush_out(void);

/* At the end of an input read into f: returns 0 when nothing is left, 1
 * after giving a last line that has no '\n' its '\n' (frame_next then
 * returns it), or -1 after saying "out of memory". */
int input_end_last_line(struct frame *f);

/* ---- rendering for a person (ctl_render.c) --------------------------- */

/* An ok reply as aligned "key  value" lines on stdout; a stats reply as
 * its summary. */
void render_reply(json_t *reply);

/* An error reply as "reboundctl: code: message" on stderr. */
void render_error(json_t *reply);

/* An event on one line on stdout. */
void render_event(json_t *ev);

/* Prints an answer: the line raw[0..len) as it is with --json, otherwise
 * reply (its parsed form, borrowed) rendered. Returns whether it was ok. */
bool render_answer(const struct ctl *ctl, const char *raw, size_t len, json_t *reply);

/* ---- the connection (ctl_client.c) ----------------------------------- */

/* Connects to ctl->server (the first of a comma-separated list that
 * answers) and authenticates with ctl->token. cl is then open even when
 * this fails: close it with client_close. Returns 0, or an exit status
 * after saying why (EXIT_REPLY when the token was refused). */
int client_open(struct client *cl, const struct ctl *ctl);

/* Moves an open cl straight to the instance that owns rcpt's shard, as
 * the `cluster` op maps it; stays where it is when that cannot be done
 * (the instance it is on relays). */
void client_route(struct client *cl, const char *rcpt);

/* When reply is `unavailable` naming another instance as the owner, moves
 * cl there. Returns whether it moved (the request is then worth sending
 * once more: an unavailable request wrote nothing). */
bool client_follow_owner(struct client *cl, json_t *reply);

/* Closes the connection and frees what it holds; idempotent. */
void client_close(struct client *cl);

/* Sends obj (borrowed) as one line. Returns 0 or -1 after saying why. */
int send_json(struct client *cl, json_t *obj);

/* Sends req (borrowed) and reads its reply into *reply, with the raw line
 * in *raw and *rawlen (valid until the next read). Returns 0, or EXIT_IO
 * after saying why (nothing said when interrupted). */
int client_request(struct client *cl, json_t *req, json_t **reply, const char **raw, size_t *rawlen);

/* Reads lines until a reply (a line with "ok"; events have none). Returns
 * the parsed reply, with the raw line in *raw and *rawlen (valid until the
 * next read), or NULL after saying why (nothing said when interrupted). */
json_t *read_reply(struct client *cl, const char **raw, size_t *rawlen);

/* Waits for the next line from the daemon. timeout_ms 0 waits forever.
 * Returns 1 with the line, 0 when interrupted, -1 after saying why. */
int read_line(struct client *cl, int64_t timeout_ms, const char **line, size_t *len);

/* Reads what fd has into the frame. Returns bytes read, 0 at end of
 * stream, -1 on error (errno set). */
ssize_t read_some(int fd, struct frame *f);

/* Sends the request lines of src, and those read from src_fd until its end
 * unless src_eof, with at most SEND_WINDOW unanswered, and prints every
 * line the daemon sends. Returns 0, EXIT_REPLY when a reply was ok:false,
 * or EXIT_IO after saying why. */
int client_pipeline(struct client *cl, struct frame *src, bool src_eof, int src_fd);

/* Makes SIGINT and SIGTERM end the current and every later wait on the
 * daemon instead of the program. Returns 0 or -1 after saying why. */
int client_catch_interrupts(void);

/* Whether SIGINT or SIGTERM arrived since client_catch_interrupts. */
bool client_interrupted(void);

/* ---- commands: argc/argv start at the command's name; each returns the
 * exit status ------------------------------------------------------------ */

/* ctl_commands.c: they talk to the daemon. */
int cmd_bounce(struct ctl *ctl, int argc, char **argv);
int cmd_delivered(struct ctl *ctl, int argc, char **argv);
int cmd_cancel(struct ctl *ctl, int argc, char **argv);
int cmd_get(struct ctl *ctl, int argc, char **argv);
int cmd_suppressed(struct ctl *ctl, int argc, char **argv);
int cmd_unsuppress(struct ctl *ctl, int argc, char **argv);
int cmd_domain(struct ctl *ctl, int argc, char **argv);
/* acting on the queue */
int cmd_list(struct ctl *ctl, int argc, char **argv);
int cmd_retry_now(struct ctl *ctl, int argc, char **argv);
int cmd_hold(struct ctl *ctl, int argc, char **argv);
int cmd_release(struct ctl *ctl, int argc, char **argv);
int cmd_history(struct ctl *ctl, int argc, char **argv);
int cmd_stats(struct ctl *ctl, int argc, char **argv);
int cmd_groups(struct ctl *ctl, int argc, char **argv);
int cmd_ping(struct ctl *ctl, int argc, char **argv);
int cmd_send(struct ctl *ctl, int argc, char **argv);
int cmd_tail(struct ctl *ctl, int argc, char **argv);

/* ctl_offline.c: no daemon needed. */
int cmd_classify(struct ctl *ctl, int argc, char **argv);
int cmd_check_policy(struct ctl *ctl, int argc, char **argv);

#endif
