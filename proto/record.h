/*
 * A message's record: the value of its field in <prefix>msg, written by
 * the store and the scripts, read back at start and by `get`.
 *
 *   <state><due>,<attempt>,<class>,<first>\n<who>\n<history>
 *
 *   state    'P': a retry is pending; 'A': it fired, the outcome is awaited
 *   due      when the retry is (or was) due, in ms after first
 *   attempt  retries scheduled so far
 *   class    the class of the last bounce
 *   first    the first bounce, epoch ms
 *   who      the recipient alone, when the message's id and recipient are
 *            plain (printable ASCII without '"' or '\') and it has no
 *            campaign or meta; otherwise the message's members for events,
 *            compact JSON without braces ("id":..,"rcpt":..,...), which
 *            always begins with '"'
 *   history  the bounces, oldest first, separated by ';', each
 *            <at>,<code>,<enhanced>,<class> with at in ms after first
 *
 * Every retry is pending in this hash, so its size is Redis's memory per
 * pending retry: the common record (a greylisted first bounce) is about 75
 * bytes, which keeps it in the allocator's 80-byte class.
 *
 * Records of earlier versions, with due and history times as epoch ms and
 * the history as a JSON array ([[at,code,"enhanced","class"],...]), are
 * still read; a bounce rewrites them in this form.
 */
#ifndef REBOUND_PROTO_RECORD_H
#define REBOUND_PROTO_RECORD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest header and history item record_header and record_item write. */
#define RECORD_HEADER_MAX 96
#define RECORD_ITEM_MAX 96

/* Writes "<state><due-first>,<attempt>,<class>,<first>"; returns its length. */
size_t record_header(char *buf, char state, int64_t due_ms, int attempt, const char *class_name, int64_t first_ms);
/* Writes one history item; returns its length. */
size_t record_item(char *buf, int64_t at_ms, int64_t first_ms, int code, const char *enhanced,
                   const char *class_name);
/* The who line for a message whose event members are `members` (as
 * event_msg_fragment wrote them): the recipient alone when the members
 * are just a plain id and recipient, else the members. */
void record_who(const char *id, size_t id_len, const char *rcpt, const char *members, const char **who,
                size_t *who_len);

/* A parsed record; the pointers point into the text parsed. */
struct record {
    char state; /* 'P' or 'A' */
    int64_t due_ms, first_ms; /* epoch ms */
    int attempt;
    const char *class_name;
    size_t class_len;
    const char *who; /* as stored: see above */
    size_t who_len;
    const char *rcpt; /* the recipient, as in who (JSON-escaped in members) */
    size_t rcpt_len;
    const char *history;
    size_t history_len;
};
/* Returns 0, or -1 when rec is not a record. */
int record_parse(const char *rec, size_t len, struct record *out);

/* What `get` shows of a record: the message's members (id, rcpt, campaign,
 * meta), state, class, attempt, first_at, due_at and history. */
json_t *record_json(const struct record *rec, const char *id, size_t id_len);

/* Parsed form of a recipient's streak record (scripts/apply.lua); the
 * pointers point into rec. Returns 0 or -1 if malformed. */
struct rcpt_record {
    int64_t streak, first_ms, last_ms, soft;
    const char *classes; /* "a|b" */
    size_t classes_len;
    const char *campaign; /* "c<campaign>" or "m<message id>" */
    size_t campaign_len;
};
int rcpt_record_parse(const char *rec, size_t len, struct rcpt_record *out);

#endif
