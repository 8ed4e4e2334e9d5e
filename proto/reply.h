/* Encoding of replies: one compact JSON object and a '\n' per reply. */
#ifndef REBOUND_PROTO_REPLY_H
#define REBOUND_PROTO_REPLY_H

#include <jansson.h>
#include <stddef.h>

/* Returns a malloc'd line for a success reply: obj (stolen; NULL for an
 * empty one) with "ok":true and, when req is not NULL, "req" (borrowed)
 * added. *len gets its length including the '\n'. */
char *reply_ok(json_t *obj, json_t *req, size_t *len);

/* Returns a malloc'd error line {"ok":false,"error":{"code","message"}},
 * with "req" echoed when not NULL. */
char *reply_error(json_t *req, const char *code, const char *message, size_t *len);

#endif
