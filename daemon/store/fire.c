/*
 * Firing in Redis: pending records turn awaiting and their retry events
 * are appended to the stream in one atomic step, so a retry is emitted
 * once even if the daemon dies right after. Two ways, chosen by the caller
 * (schedule/firing.c) by the batch's size:
 *
 *   - scripts/fire.lua, which also reads the new events for the consumer
 *     groups that are caught up (a retry reaches its subscriber one round
 *     trip after it fell due);
 *   - a burst in two steps, about half of the script's cost in Redis per
 *     retry (below). Its first step asks the same script, in its prepare
 *     mode, for the events' bodies and the records' new state without
 *     writing: a retry event is built in one place, fire.lua's fire_record.
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/xmalloc.h"
#include "redis/redis_link.h"
#include "store/scripts.h"

/* The burst's own state, between its two steps. */
struct fire_priv {
    const char **ids; /* copies of the caller's arrays (the ids themselves are the entries') */
    size_t *lens;
    int *slot;        /* the entry's XADD in the EXEC reply, or -1 */
    int nxadd;        /* XADDs in the transaction */
};

/* The fire script's answer is {fired, read_1, ..., read_g}; fired holds
 * two elements per id (scripts/fire.lua). */
static bool fire_reply_ok(const struct store_fire *b, const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)b->ngroups + 1)
        return false;
    const redisReply *fired = reply->element[0];
    if (fired->type != REDIS_REPLY_ARRAY || fired->elements != 2 * (size_t)b->n)
        return false;
    for (int j = 1; j <= b->ngroups; j++)
        if (reply->element[j]->type != REDIS_REPLY_ARRAY && reply->element[j]->type != REDIS_REPLY_ERROR)
            return false;
    return true;
}

static void finish(struct store_fire *b, bool ok)
{
    struct fire_priv *p = b->priv;
    if (p) {
        free(p->slot);
        free(p->ids);
        free(p->lens);
        free(p);
        b->priv = NULL;
    }
    b->done(b, ok);
}

static void fire_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct store_fire *b = arg;
    bool ok = fire_reply_ok(b, reply);
    if (reply && !ok)
        log_error("redis: fire script failed: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    for (int i = 0; ok && i < b->n; i++) {
        const redisReply *r = reply->element[0]->element[2 * i];
        b->outcome[i] = r->type == REDIS_REPLY_STRING ? STORE_FIRE_NOW
                        : r->type == REDIS_REPLY_INTEGER && r->integer == 0 ? STORE_FIRE_UNKNOWN
                                                                            : STORE_FIRE_BEFORE;
    }
    b->fired = ok ? reply->element[0] : NULL;
    for (int j = 0; j < b->ngroups; j++)
        b->reads[j] = ok ? reply->element[1 + j] : NULL;
    finish(b, ok);
}

/*
 * A large batch fires in two steps, which cost Redis about half of what
 * the script costs it per retry (an XADD called from Lua is dear): the
 * script in prepare mode reads the records and answers each pending one's
 * event body and awaiting state, writing nothing; then one MULTI ... EXEC
 * that appends each pending record's
 * retry event, turns the records awaiting (one HSET) and trims the stream,
 * atomically. Between the two steps nothing else writes these records:
 * the daemon is their only writer, and an entry that fires is busy, so its
 * own writes wait. Events are appended ahead of the records' change, as in
 * the script.
 */

/* Allocates the argument arrays of an argc-argument command on the
 * message hash, with the command and the key filled in. */
static void msgs_command(const char *cmd, size_t argc, const char ***argv, size_t **lens)
{
    *argv = xmalloc(argc * sizeof **argv);
    *lens = xmalloc(argc * sizeof **lens);
    (*argv)[0] = cmd;
    (*lens)[0] = strlen(cmd);
    (*argv)[1] = rbd->key_msgs;
    (*lens)[1] = strlen(rbd->key_msgs);
}

static void queued_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
}

static void exec_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct store_fire *b = arg;
    struct fire_priv *p = b->priv;
    /* EXEC answers each command of the transaction: the XADDs, HSET, XTRIM. */
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == (size_t)p->nxadd + 2;
    if (reply && !ok)
        log_error("redis: fire transaction failed: %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    for (int i = 0; ok && i < b->n; i++) {
        if (p->slot[i] < 0)
            continue;
        const redisReply *r = reply->element[p->slot[i]];
        if (r->type != REDIS_REPLY_STRING) {
            /* The record turned awaiting all the same (a transaction does
             * not roll back): say so, the retry is not re-sent. */
            log_error("redis: appending a retry event failed: %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
            b->outcome[i] = STORE_FIRE_BEFORE;
        }
    }
    finish(b, ok);
}

/* The outcome of each id from the script's answer (out: two elements per
 * id), and each pending one's XADD slot in the transaction. */
static void burst_outcomes(struct store_fire *b, const redisReply *out)
{
    struct fire_priv *p = b->priv;
    p->slot = xmalloc((size_t)b->n * sizeof *p->slot);
    p->nxadd = 0;
    for (int i = 0; i < b->n; i++) {
        const redisReply *r = out->element[2 * i], *rec = out->element[2 * i + 1];
        p->slot[i] = -1;
        if (r->type == REDIS_REPLY_STRING && rec->type == REDIS_REPLY_STRING) {
            b->outcome[i] = STORE_FIRE_NOW;
            p->slot[i] = p->nxadd++;
        } else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0) {
            b->outcome[i] = STORE_FIRE_UNKNOWN;
        } else {
            if (r->type == REDIS_REPLY_INTEGER && r->integer == 2)
                log_warn("firing: the record of %.*s is malformed; not fired", (int)p->lens[i], p->ids[i]);
            b->outcome[i] = STORE_FIRE_BEFORE;
        }
    }
}

/* The transaction: MULTI, an XADD per event, one HSET of the records
 * turned awaiting, XTRIM, EXEC; the bodies and records are the script's
 * answer's own strings (a command is formatted before it is queued).
 * Returns 0, or -1 when the link refused a command (it refuses only when
 * down, and then the first, MULTI, already: a transaction cut short never
 * runs). */
static int burst_send(struct store_fire *b, const redisReply *out)
{
    struct fire_priv *p = b->priv;
    size_t hargc = 2 + 2 * (size_t)p->nxadd;
    const char **hargv;
    size_t *hlens;
    msgs_command("HSET", hargc, &hargv, &hlens);
    char maxlen[32];
    snprintf(maxlen, sizeof maxlen, "%lld", rbd->cfg.stream_maxlen);
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *trim[] = {"XTRIM", rbd->key_events, "MAXLEN", "~", maxlen};
    size_t trim_lens[5];
    for (int k = 0; k < 5; k++)
        trim_lens[k] = strlen(trim[k]);
    int rc = redis_link_command(rbd->link, queued_reply_cb, NULL, 1, multi, NULL);
    size_t h = 2;
    for (int i = 0; rc == 0 && i < b->n; i++) {
        if (p->slot[i] < 0)
            continue;
        const redisReply *body = out->element[2 * i], *rec = out->element[2 * i + 1];
        const char *xargv[] = {"XADD", rbd->key_events, "*", "e", body->str};
        size_t xlens[] = {4, strlen(rbd->key_events), 1, 1, body->len};
        rc = redis_link_command(rbd->link, queued_reply_cb, NULL, 5, xargv, xlens);
        hargv[h] = p->ids[i];
        hlens[h++] = p->lens[i];
        hargv[h] = rec->str;
        hlens[h++] = rec->len;
    }
    if (rc == 0)
        rc = redis_link_command(rbd->link, queued_reply_cb, NULL, (int)hargc, hargv, hlens);
    if (rc == 0)
        rc = redis_link_command(rbd->link, queued_reply_cb, NULL, 5, trim, trim_lens);
    if (rc == 0)
        rc = redis_link_command(rbd->link, exec_reply_cb, b, 1, exec, NULL);
    free(hargv);
    free(hlens);
    return rc;
}

/* The script's answer in prepare mode: {out}, two elements per id. */
static void prepare_reply_cb(struct redis_link *link, redisReply *reply, void *arg)
{
    struct store_fire *b = arg;
    struct fire_priv *p = b->priv;
    const redisReply *out = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 ? reply->element[0] : NULL;
    if (!out || out->type != REDIS_REPLY_ARRAY || out->elements != 2 * (size_t)b->n) {
        if (reply)
            log_error("redis: reading records to fire failed: %s",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        finish(b, false);
        return;
    }
    burst_outcomes(b, out);
    int rc = p->nxadd ? burst_send(b, out) : 0;
    if (rc != 0)
        finish(b, false);
    else if (p->nxadd == 0)
        finish(b, true); /* nothing was pending any more */
}

/* The numbers among the script's arguments, as text. */
struct script_numbers {
    char now[32], maxlen[32], count[32], ngroups[32];
};

/* The script's arguments for the batch's ids and the groups named
 * (ngroups, or -1 for prepare mode): argv and argl malloc'd, freed by the
 * caller; they point into num, ids and b. Returns argc. */
static int script_args(const struct store_fire *b, int ngroups, const char **ids, const size_t *lens,
                       struct script_numbers *num, const char ***argv_out, size_t **argl_out)
{
    char *now_s = num->now, *maxlen = num->maxlen, *count = num->count, *ng = num->ngroups;
    snprintf(now_s, sizeof num->now, "%lld", (long long)b->now);
    snprintf(maxlen, sizeof num->maxlen, "%lld", rbd->cfg.stream_maxlen);
    snprintf(count, sizeof num->count, "%d", b->read_count);
    snprintf(ng, sizeof num->ngroups, "%d", ngroups);
    int head = 2 + 5 + (ngroups > 0 ? ngroups : 0);
    int argc = head + b->n;
    const char **argv = xmalloc((size_t)argc * sizeof *argv);
    size_t *argl = xmalloc((size_t)argc * sizeof *argl);
    argv[0] = rbd->key_msgs;
    argv[1] = rbd->key_events;
    argv[2] = now_s;
    argv[3] = maxlen;
    argv[4] = STORE_CONSUMER;
    argv[5] = count;
    argv[6] = ng;
    for (int j = 0; j < ngroups; j++)
        argv[7 + j] = b->groups[j];
    for (int i = 0; i < head; i++)
        argl[i] = strlen(argv[i]);
    memcpy(argv + head, ids, (size_t)b->n * sizeof *ids);
    memcpy(argl + head, lens, (size_t)b->n * sizeof *lens);
    *argv_out = argv;
    *argl_out = argl;
    return argc;
}

int store_fire_burst(struct store_fire *b, const char **ids, const size_t *lens)
{
    if (!store_ready())
        return -1;
    struct fire_priv *p = xcalloc(1, sizeof *p);
    /* Kept for the second step: the callers' arrays do not last. */
    p->ids = xmalloc((size_t)b->n * sizeof *p->ids);
    p->lens = xmalloc((size_t)b->n * sizeof *p->lens);
    memcpy(p->ids, ids, (size_t)b->n * sizeof *ids);
    memcpy(p->lens, lens, (size_t)b->n * sizeof *lens);
    b->priv = p;
    const char **argv;
    size_t *argl;
    struct script_numbers num;
    int argc = script_args(b, -1, ids, lens, &num, &argv, &argl);
    int rc = redis_link_script(rbd->link, SCRIPT_FIRE, prepare_reply_cb, b, 2, argc, argv, argl);
    free(argv);
    free(argl);
    if (rc != 0) {
        free(p->ids);
        free(p->lens);
        free(p);
        b->priv = NULL;
    }
    return rc;
}

int store_fire_script(struct store_fire *b, const char **ids, const size_t *lens)
{
    if (!store_ready())
        return -1;
    const char **argv;
    size_t *argl;
    struct script_numbers num;
    int argc = script_args(b, b->ngroups, ids, lens, &num, &argv, &argl);
    int rc = redis_link_script(rbd->link, SCRIPT_FIRE, fire_reply_cb, b, 2, argc, argv, argl);
    free(argv);
    free(argl);
    return rc;
}
