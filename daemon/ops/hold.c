/*
 * hold and release: an operator stops a receiving domain's retries for a
 * while (or until released) and lets them go again. The hold is written
 * to Redis first (<prefix>held, read back at start), then takes effect in
 * memory: firing asks the domain before each retry (domains_pace_entry).
 */
#include <stdio.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "ops/job.h"
#include "schedule/domains.h"
#include "store/store.h"

/* The domain as a client gave it, lower-cased as the domains table and
 * the held hash keep it; false when it cannot be a domain. */
static bool lower_name(const struct job *op, char *buf, size_t cap)
{
    const struct request *r = &op->req;
    if (r->domain_len == 0 || r->domain_len >= cap)
        return false;
    for (size_t i = 0; i < r->domain_len; i++) {
        char c = r->domain[i];
        buf[i] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    buf[r->domain_len] = '\0';
    return true;
}

static bool written(struct job *op, redisReply *reply)
{
    if (reply && reply->type != REDIS_REPLY_ERROR)
        return true;
    op_unavailable(op);
    op_finish(op);
    return false;
}

static void hold_done_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    if (!written(op, reply))
        return;
    int64_t now = now_ms();
    char name[256];
    lower_name(op, name, sizeof name);
    domains_hold(name, strlen(name), op->req.until, now, now);
    log_info("hold: %s held %s", name, op->req.until ? "until the time given" : "until released");
    json_t *o = domains_json(name, strlen(name), now);
    op_reply(op, o);
    op_finish(op);
}

void op_hold(struct job *op)
{
    char name[256];
    int64_t now = now_ms();
    if (!lower_name(op, name, sizeof name)) {
        op_error(op, ERR_BAD_REQUEST, "field 'domain' must be a host name");
        op_finish(op);
        return;
    }
    if (op->req.until && op->req.until <= now) {
        op_error(op, ERR_BAD_REQUEST, "field 'until' is in the past");
        op_finish(op);
        return;
    }
    if (!op_store_usable(op))
        return;
    if (store_held_set(name, op->req.until, now, hold_done_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}

static void release_done_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    if (!written(op, reply))
        return;
    int64_t now = now_ms();
    char name[256];
    lower_name(op, name, sizeof name);
    bool was = domains_held(domains_find(name, strlen(name), false, now), now);
    size_t moved = domains_release(name, strlen(name), now);
    log_info("release: %s released, %zu held retries due now", name, moved);
    json_t *o = json_object();
    json_object_set_new(o, "domain", json_string(name));
    json_object_set_new(o, "released", json_boolean(was || reply->integer > 0));
    json_object_set_new(o, "count", json_integer((json_int_t)moved));
    op_reply(op, o);
    op_finish(op);
}

void op_release(struct job *op)
{
    char name[256];
    if (!lower_name(op, name, sizeof name)) {
        op_error(op, ERR_BAD_REQUEST, "field 'domain' must be a host name");
        op_finish(op);
        return;
    }
    if (!op_store_usable(op))
        return;
    if (store_held_del(name, release_done_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}
