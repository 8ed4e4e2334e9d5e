/*
 * history: a finished message's story. When a message ends (give_up,
 * suppress, delivered) its record is not just deleted: apply.lua moves it,
 * with the bounce that ended it, into <prefix>history, kept for
 * history_retention (the config key) and trimmed as later messages end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "ops/job.h"
#include "proto/record.h"
#include "store/store.h"

void history_change(struct store_change *ch, char *story, const char *outcome, const char *reason, int attempt,
                    int64_t first_ms, const char *class_name, int64_t at_ms, int code, const char *enhanced)
{
    snprintf(story, HISTORY_STORY_MAX, "%s,%s", outcome, reason);
    ch->mode = 'H';
    ch->story = story;
    ch->rec.at_ms = at_ms;
    ch->rec.first_ms = first_ms;
    ch->rec.attempt = attempt;
    ch->rec.class_name = class_name;
    ch->rec.code = code;
    ch->rec.enhanced = enhanced;
}

static void history_cb(void *arg, redisReply *reply)
{
    struct job *op = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        op_unavailable(op);
        op_finish(op);
        return;
    }
    const char *v = reply->type == REDIS_REPLY_STRING ? reply->str : NULL;
    const char *nl = v ? memchr(v, '\n', reply->len) : NULL;
    struct record rec;
    char outcome[32], reason[64];
    long long at;
    char line[128];
    if (nl && (size_t)(nl - v) < sizeof line) {
        memcpy(line, v, (size_t)(nl - v));
        line[nl - v] = '\0';
    } else {
        line[0] = '\0';
    }
    if (!nl || sscanf(line, "%31[a-z_],%63[a-z_],%lld", outcome, reason, &at) != 3 ||
        record_parse(nl + 1, reply->len - (size_t)(nl + 1 - v), &rec) != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "no finished message with this id in the history (kept %lld s after it ends)",
                 (long long)(rbd->cfg.history_retention_ms / 1000));
        op_error(op, ERR_NOT_FOUND, msg);
        op_finish(op);
        return;
    }
    json_t *o = record_json(&rec, op->req.id, op->req.id_len);
    json_object_del(o, "state");
    json_object_del(o, "due_at");
    json_object_set_new(o, "outcome", json_string(outcome));
    json_object_set_new(o, "reason", json_string(reason));
    json_object_set_new(o, "ended_at", json_integer(at));
    op_reply(op, o);
    op_finish(op);
}

void op_history(struct job *op)
{
    if (!op_store_usable(op))
        return;
    if (store_history_get(op->req.id, op->req.id_len, history_cb, op) != 0) {
        op_unavailable(op);
        op_finish(op);
    }
}
