/*
 * Events as they travel: a body (a compact JSON object without "eid") is
 * what the Redis stream holds; the line a subscriber gets is the body with
 * the stream entry id inserted as "eid".
 */
#ifndef REBOUND_PROTO_EVENT_H
#define REBOUND_PROTO_EVENT_H

#include <jansson.h>
#include <stddef.h>

#include "proto/jbuf.h"
#include "proto/request.h"

/* The message part that every event about a message carries, encoded once
 * at bounce time and kept in the message's record: the members
 *   "id":..,"rcpt":..[,"campaign":..][,"meta":{..}]
 * without braces. Returns a malloc'd string and its length. */
char *event_msg_fragment(const char *id, const char *rcpt, const char *campaign, json_t *meta, size_t *len);
/* The same fragment appended to b (for a caller that reuses one buffer).
 * Returns false, with b failed, where event_msg_fragment returns NULL. */
bool event_msg_fragment_put(struct jbuf *b, const char *id, const char *rcpt, const char *campaign, json_t *meta);

/* Returns a malloc'd body {"type":..,"at":..,<fragment>,<extra members>}:
 * extra is an object (borrowed, may be NULL) whose members are appended. */
char *event_body(enum event_type type, long long at_ms, const char *fragment, json_t *extra, size_t *len);
/* The same body with the extra members already encoded: members holds
 * members_len bytes of ,"name":value pairs (or nothing), appended as they
 * are. Returns NULL when they do not start with a comma. */
char *event_body_text(enum event_type type, long long at_ms, const char *fragment, const char *members,
                      size_t members_len, size_t *len);

/* Returns the malloc'd line {"eid":"<eid>",<rest of body>}\n, or NULL if
 * body is not a JSON object text. */
char *event_line(const char *eid, const char *body, size_t body_len, size_t *len);

/* Returns the event type named in a body ("type":"..."), or -1. */
int event_body_type(const char *body, size_t body_len);

/*
 * The compact body of a `retry` event, which the stream holds in place of
 * its JSON (about half the bytes, so half of Redis's memory and AOF per
 * fired retry):
 *
 *   R<at>,<late>,<attempt>,<class>\n<who>
 *
 *   at       the event's "at", epoch ms in base 36 (digits 0-9a-z)
 *   late     at - due_at, in ms (may be negative)
 *   attempt  the attempt, class the class name ([A-Za-z0-9_-])
 *   who      the message's members as the record holds them
 *            (proto/record.h): either members JSON, which begins with '"',
 *            or <id>\n<rcpt> for a plain id and recipient
 *
 * event_line and event_body_type take either form, so a subscriber gets
 * the same line as from the JSON body, and entries written before this
 * form existed still read. store/scripts/fire.lua writes the same form.
 */
#define EVENT_RETRY_COMPACT_MAX 96 /* the form's bytes besides class and who */
/* Writes the compact body into out (room for EVENT_RETRY_COMPACT_MAX +
 * class_len + id_len + who_len bytes); returns its length. who is the
 * record's: id is written only when who is a plain recipient. */
size_t event_retry_compact(char *out, long long at_ms, long long due_ms, int attempt, const char *class_name,
                           size_t class_len, const char *id, size_t id_len, const char *who, size_t who_len);

/*
 * The compact form of any other body that event_body or event_body_text
 * wrote ({"type":"<t>","at":<at>[,<members>]}), which the store writes
 * to the stream in its place:
 *
 *   <letter><at>[,<members>]
 *
 *   letter   the type: r retry, g give_up, s suppress, a sender_alert,
 *            d domain_throttled
 *   at       epoch ms in base 36, as above
 *   members  the members as they were, each "<name>": of the names events
 *            use (id, rcpt, class, ...) replaced by one control byte,
 *            which compact JSON never holds raw; the closing brace goes
 *
 * The substitution is undone byte for byte, wherever a name was found.
 */
/* Writes the compact form of body into out (room for body_len bytes) and
 * returns its length, or 0 when body is not of that shape (then the body
 * is stored as it is). */
size_t event_compact(const char *body, size_t body_len, char *out);

/*
 * A batch entry: one stream entry that holds the events of a burst, so
 * that Redis appends, stores and writes to its AOF one entry per batch
 * instead of one per event (docs/performance.md). Its value (field "b") is
 *
 *   #<n>\n<len>:<body><len>:<body>...      n bodies, len in decimal
 *
 * and each event keeps an entry id of its own: the entry's id <ms>-<seq>
 * is the last event's, the events before it have <ms>-<seq - n + 1> up
 * to <ms>-<seq - 1> (the writer reserves the range above the stream's
 * last id, store/fire.c). No single body begins with '#'.
 */
#define EVENT_BATCH_MARK '#'
/* Whether an entry's value is a batch. */
#define event_is_batch(v, len) ((len) > 0 && (v)[0] == EVENT_BATCH_MARK)
/* Writes the head "#<n>\n" into out (room for 24 bytes); returns its length. */
size_t event_batch_head(char *out, long long n);
/* Writes an item's prefix "<len>:" into out (room for 24 bytes). */
size_t event_batch_item(char *out, size_t body_len);
/* Reads a batch value's head: returns the number of events and sets *pos
 * to the first item, or -1 when v is not a well-formed batch head. */
long long event_batch_open(const char *v, size_t len, size_t *pos);
/* The next body at *pos (advanced past it): returns false at the end or
 * on a malformed item (the rest is then skipped). */
bool event_batch_next(const char *v, size_t len, size_t *pos, const char **body, size_t *body_len);
/* The entry id of event k (0-based) of a batch of n whose entry id is
 * entry_eid, written into out (cap bytes, at least 48); false when
 * entry_eid is no <ms>-<seq> or its seq is below n - 1. */
bool event_batch_eid(const char *entry_eid, long long n, long long k, char *out, size_t cap);

#endif
