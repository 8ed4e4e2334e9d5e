/* Encoding of replies: one compact JSON object and a '\n' per reply. */
#ifndef REBOUND_PROTO_REPLY_H
#define REBOUND_PROTO_REPLY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "proto/jbuf.h"

/* Returns a malloc'd line for a success reply: obj (stolen; NULL for an
 * empty one) with "ok":true and, when req is not NULL, "req" (borrowed)
 * added. *len gets its length including the '\n'. */
char *reply_ok(json_t *obj, json_t *req, size_t *len);

/* A success reply written member by member, without an object: reply_open
 * appends its start to b, with "ok":true and, when req is not NULL, "req"
 * (borrowed); the caller appends members, each as ,"name":value, with the
 * jbuf encoders and must not write "ok" or "req"; reply_end appends the
 * end of the line ("}\n"), and returns false when anything written to b
 * failed (then b holds no usable line). */
void reply_open(struct jbuf *b, json_t *req);
bool reply_end(struct jbuf *b);

/* Returns a malloc'd error line {"ok":false,"error":{"code","message"}},
 * with "req" echoed when not NULL. */
char *reply_error(json_t *req, const char *code, const char *message, size_t *len);

#endif
