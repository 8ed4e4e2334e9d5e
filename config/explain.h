/*
 * The answer to "what would you do with this reply?": the JSON object that
 * the classify op and `reboundctl classify` both print.
 */
#ifndef REBOUND_CONFIG_EXPLAIN_H
#define REBOUND_CONFIG_EXPLAIN_H

#include <jansson.h>

#include "queue/classify.h"

/* Returns a new object: {"class","action","rule","code","enhanced",
 * "alert","counts_streak","stated_wait_ms"?,"forecast":[{"attempt","after_min_ms","after_max_ms"}..],
 * "give_up_after_ms"} (see docs/protocol.md, op classify). */
json_t *explain_classification(const struct policy *p, const struct classification *c);

#endif
