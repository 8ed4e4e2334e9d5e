/*
 * Stand-ins for the floors the middle of the daemon stands on, so that
 * schedule/ and ops/ are tested without Redis or a socket (Mosquitto's
 * *_stubs.c). The store records what it is asked to do and answers when
 * the test says so; events/ and the connection record what they get.
 * Everything here runs on the test's one thread.
 */
#include "daemon_stubs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct stubs stubs;

void stubs_reset(void)
{
    for (int i = 0; i < stubs.nreplies; i++)
        free(stubs.replies[i]);
    free(stubs.ids);
    memset(&stubs, 0, sizeof stubs);
    memset(&stub_cmds, 0, sizeof stub_cmds);
    stubs.ready = true;
}

/* ---- store/ ---------------------------------------------------------------- */

bool store_ready(void)
{
    return stubs.ready;
}

const char *store_last_error(void)
{
    return "stubbed down";
}

void store_init(void)
{
}

void store_free(void)
{
}

void store_flush(void)
{
}

int store_queue(const struct store_change *ch, store_done_cb done, void *arg)
{
    if (!stubs.ready || stubs.nwrites == STUBS_MAX)
        return -1;
    struct stub_write *w = &stubs.writes[stubs.nwrites++];
    snprintf(w->id, sizeof w->id, "%.*s", (int)ch->id_len, ch->id);
    w->mode = ch->mode;
    w->op = ch->op;
    w->attempt = ch->rec.attempt;
    w->due_ms = ch->rec.due_ms;
    w->nevents = ch->nevents;
    w->done = done;
    w->arg = arg;
    return 0;
}

void stubs_answer_write(int i, bool ok, long long result)
{
    struct stub_write *w = &stubs.writes[i];
    store_done_cb done = w->done;
    w->done = NULL;
    done(w->arg, ok, result);
}

void store_bounce_arg(char *buf, char action, bool counts, int64_t now, int code, int attempt,
                      const char *class_name, const char *enhanced, const char *campaign, const char *id,
                      size_t id_len)
{
    snprintf(buf, STORE_BOUNCE_ARG_MAX, "%c%c,%d,%s", action, counts ? 'c' : '-', code, class_name);
}

void store_mark_in_doubt(const char *id, size_t id_len)
{
}

void store_take_in_doubt(void (*fn)(const char *id, void *arg), void *arg)
{
}

redisReply *store_reply_retain(redisReply *reply)
{
    return reply;
}

void store_reply_release(redisReply *reply)
{
}

#define NOT_SENT(...)                                                                                          \
    {                                                                                                          \
        stubs.unsent++;                                                                                        \
        return -1;                                                                                             \
    }

int store_get(int shard, const char *id, size_t id_len, store_reply_cb cb, void *arg) NOT_SENT()
int store_get_with_rcpt(int shard, const char *id, size_t id_len, const char *rcpt, store_reply_cb cb, void *arg) NOT_SENT()
bool stub_record_loads;
static int record_command(const char *name, const char *first, size_t first_len, size_t n, store_reply_cb cb,
                          void *arg);

int store_msgs_len(int shard, store_reply_cb cb, void *arg)
{
    if (!stub_record_loads) {
        stubs.unsent++;
        return -1;
    }
    return record_command("msgs_len", NULL, 0, (size_t)shard, cb, arg);
}

int store_msgs_scan(int shard, const char *cursor, const char *count, store_reply_cb cb, void *arg)
{
    if (!stub_record_loads) {
        stubs.unsent++;
        return -1;
    }
    return record_command("msgs_scan", cursor, strlen(cursor), (size_t)shard, cb, arg);
}
int store_suppressed_page(const char *cursor, int count, store_reply_cb cb, void *arg) NOT_SENT()
int store_domains_read(store_reply_cb cb, void *arg) NOT_SENT()
int store_group_create(const char *group, store_reply_cb cb, void *arg) NOT_SENT()
int store_group_read(const char *group, const char *from, const char *count, store_reply_cb cb, void *arg) NOT_SENT()
int store_group_ack(const char *group, const char *const *ids, size_t n, store_reply_cb cb, void *arg) NOT_SENT()

void store_domain_forget(const char *name, size_t len)
{
}

/* learned timing (schedule/learned.c) */
int store_learned_scan(const char *cursor, const char *count, store_reply_cb cb, void *arg)
{
    if (!stub_record_loads) {
        stubs.unsent++;
        return -1;
    }
    return record_command("learned_scan", cursor, strlen(cursor), 0, cb, arg);
}
void store_learned_forget(const char *name, size_t len)
{
}

static int fire(struct store_fire *f, const char **ids, bool burst)
{
    if (!stubs.ready || stubs.nfires == STUBS_MAX)
        return -1;
    stubs.fires[stubs.nfires].f = f;
    stubs.fires[stubs.nfires].burst = burst;
    stubs.fires[stubs.nfires].n = f->n;
    stubs.nfires++;
    return 0;
}

int store_fire_script(struct store_fire *f, const char **ids, const size_t *lens)
{
    return fire(f, ids, false);
}

int store_fire_burst(struct store_fire *f, const char **ids, const size_t *lens)
{
    return fire(f, ids, true);
}

void stubs_answer_fire(int i, bool ok, unsigned char outcome)
{
    struct store_fire *f = stubs.fires[i].f;
    memset(f->outcome, outcome, (size_t)f->n);
    f->fired = NULL;
    for (int j = 0; j < f->ngroups; j++)
        f->reads[j] = NULL;
    f->done(f, ok);
}

/* ---- events/ --------------------------------------------------------------- */

void events_notify(void)
{
    stubs.notified++;
}

void events_fired(void)
{
    stubs.fired_calls++;
}

int events_fire_groups(struct group **out, int max)
{
    return 0;
}

const char *events_group_name(const struct group *g)
{
    return "g";
}

void events_fire_read(struct group *g, const redisReply *read, const redisReply *fired, int count)
{
}

void events_subscribe(struct conn *c, struct slot *s, const struct request *r)
{
    conn_reply_copy(c, s, "subscribed", 10);
}

void events_ack(struct conn *c, struct slot *s, const struct request *r)
{
    conn_reply_copy(c, s, "acked", 5);
}

/* The groups op: says which it was asked (list, or delete NAME). */
void events_groups(struct conn *c, struct slot *s, const struct request *r)
{
    char line[96];
    int n = snprintf(line, sizeof line, "groups %s", r->group ? r->group : "list");
    conn_reply_copy(c, s, line, (size_t)n);
}

/* ---- net/ (the connection) ------------------------------------------------- */

struct slot *conn_slot(struct conn *c)
{
    return NULL;
}

void conn_reply(struct conn *c, struct slot *s, char *line, size_t len)
{
    if (stubs.nreplies < STUBS_MAX)
        stubs.replies[stubs.nreplies++] = line;
    else
        free(line);
}

void conn_reply_copy(struct conn *c, struct slot *s, const char *line, size_t len)
{
    char *copy = malloc(len + 1);
    memcpy(copy, line, len);
    copy[len] = '\0';
    conn_reply(c, s, copy, len);
}

void conn_reply_error(struct conn *c, struct slot *s, json_t *req, const char *code, const char *msg)
{
    char line[512];
    int n = snprintf(line, sizeof line, "error %s: %s", code, msg);
    conn_reply_copy(c, s, line, (size_t)n);
}

/* Counts the wrong tokens (the real one closes after auth_failures). */
void conn_auth_failed(struct conn *c)
{
    c->auth_fails++;
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    c->refs--;
}

/* ---- store/queue_ops.c ---------------------------------------------------- */

struct stub_commands stub_cmds;

static int record_command(const char *name, const char *first, size_t first_len, size_t n, store_reply_cb cb,
                          void *arg)
{
    if (!stubs.ready || stub_cmds.n >= STUBS_MAX)
        return -1;
    struct stub_command *c = &stub_cmds.c[stub_cmds.n++];
    c->name = name;
    c->n = n;
    snprintf(c->first, sizeof c->first, "%.*s", (int)first_len, first ? first : "");
    c->cb = cb;
    c->arg = arg;
    return 0;
}

void stubs_answer_command(int i, redisReply *reply)
{
    struct stub_command *c = &stub_cmds.c[i];
    store_reply_cb cb = c->cb;
    c->cb = NULL;
    if (cb)
        cb(c->arg, reply);
}

int store_held_set(const char *domain, int64_t until, int64_t since, store_reply_cb cb, void *arg)
{
    return record_command("held_set", domain, strlen(domain), 1, cb, arg);
}

int store_held_del(const char *domain, store_reply_cb cb, void *arg)
{
    return record_command("held_del", domain, strlen(domain), 1, cb, arg);
}

int store_held_read(store_reply_cb cb, void *arg)
{
    return record_command("held_read", NULL, 0, 0, cb, arg);
}

int store_msgs_get(int shard, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg)
{
    return record_command("msgs_get", ids[0], lens[0], n, cb, arg);
}

int store_msgs_del(int shard, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg)
{
    return record_command("msgs_del", ids[0], lens[0], n, cb, arg);
}

int store_msgs_due_now(int shard, const char *const *ids, const size_t *lens, size_t n, int64_t due, store_reply_cb cb,
                       void *arg)
{
    return record_command("msgs_due_now", ids[0], lens[0], n, cb, arg);
}

int store_history_get(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    return record_command("history_get", id, id_len, 1, cb, arg);
}

/* ---- store/lease.c ------------------------------------------------------ */

long long stub_fence_epoch;
size_t stub_inflight;

int store_lease_acquire(int shard, const char *who, int64_t ttl_ms, store_reply_cb cb, void *arg)
{
    return record_command("store_lease_acquire", who, strlen(who), 0, cb, arg);
}

int store_lease_renew(int shard, const char *value, int64_t ttl_ms, store_reply_cb cb, void *arg)
{
    return record_command("store_lease_renew", value, strlen(value), 0, cb, arg);
}

int store_lease_release(int shard, const char *value, store_reply_cb cb, void *arg)
{
    return record_command("store_lease_release", value, strlen(value), 0, cb, arg);
}

int store_lease_read(int shard, store_reply_cb cb, void *arg)
{
    return record_command("store_lease_read", "", 0, 0, cb, arg);
}

int store_members_beat(const char *id, const char *value)
{
    return stubs.ready ? 0 : -1;
}

int store_members_forget(const char *id)
{
    return 0;
}

int stub_nshards;

int store_members_read(store_reply_cb cb, void *arg)
{
    /* with shards the test answers it: the live members make the share */
    if (stub_nshards > 1)
        return record_command("store_members_read", "", 0, 0, cb, arg);
    return stubs.ready ? 0 : -1;
}

void store_fence_set(int shard, long long epoch)
{
    stub_fence_epoch = epoch;
}

int store_nshards(void)
{
    return stub_nshards > 1 ? stub_nshards : 1;
}

int store_msgs_locate(const char *id, size_t id_len, store_reply_cb cb, void *arg)
{
    return record_command("msgs_locate", id, id_len, 1, cb, arg);
}

int store_msgs_get_each(const int *shards, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb,
                        void *arg)
{
    return record_command("msgs_get", ids[0], lens[0], n, cb, arg);
}

size_t store_inflight(void)
{
    return stub_inflight;
}

bool store_batch_empty(void)
{
    for (int i = 0; i < stubs.nwrites; i++)
        if (stubs.writes[i].done)
            return false;
    return true;
}

int stub_events_link_ups;

void events_link_up(void)
{
    stub_events_link_ups++;
}

/* ---- net/peer.c ---------------------------------------------------------- */

int stub_forwards;
int stub_forward_result = -1;

int peer_forward(const char *addr, struct conn *c, struct slot *s, const char *line, size_t len, json_t *req)
{
    stub_forwards++;
    return stub_forward_result;
}

uint64_t peer_forwarded(void)
{
    return (uint64_t)stub_forwards;
}

uint64_t peer_failed(void)
{
    return 0;
}

void peer_close_all(void)
{
}

int stub_asks;

int peer_ask(const char *addr, const char *line, size_t len, void (*cb)(void *arg, const char *line, size_t len),
             void *arg)
{
    stub_asks++;
    return -1;
}

/* ---- store/throttle.c: the shared throttles and alert windows -------------- */

/* first: "<domain> <value>" for a merge, "<domain> <since>" for an end,
 * "<class>:<domain>" for an alert claim; the test answers each. */
int store_throttle_merge(const char *domain, const char *value, int64_t now, store_reply_cb cb, void *arg)
{
    char f[256];
    int n = snprintf(f, sizeof f, "%s %s", domain, value);
    return record_command("throttle_merge", f, (size_t)n, 1, cb, arg);
}

int store_throttle_end(const char *domain, int64_t since, int64_t now, store_reply_cb cb, void *arg)
{
    char f[256];
    int n = snprintf(f, sizeof f, "%s %lld", domain, (long long)since);
    return record_command("throttle_end", f, (size_t)n, 1, cb, arg);
}

int store_throttle_poll(int64_t now, int64_t keep_ms, store_reply_cb cb, void *arg)
{
    return record_command("throttle_poll", "", 0, 0, cb, arg);
}

int store_alert_claim(const char *domain, const char *class_name, const char *who, int64_t ttl_ms, store_reply_cb cb,
                      void *arg)
{
    char f[256];
    int n = snprintf(f, sizeof f, "%s:%s", class_name, domain);
    return record_command("alert_claim", f, (size_t)n, 1, cb, arg);
}
