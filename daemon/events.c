#include "daemon/events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/conn.h"
#include "daemon/daemon.h"
#include "daemon/log.h"
#include "daemon/redis_link.h"
#include "daemon/store.h"
#include "daemon/strmap.h"
#include "daemon/xmalloc.h"
#include "proto/event.h"
#include "proto/reply.h"

/* Events a connection may hold unacknowledged: the bound on what a slow
 * subscriber costs in memory, and the flow control of delivery. */
#define SUB_UNACKED_MAX 1000
#define SUB_BACKLOG_MAX (1u << 20)
#define READ_COUNT "500"
#define READ_COUNT_N 500
#define CONSUMER "reboundd"

struct group;

struct subscriber {
    struct conn *conn;
    struct group *g;
    unsigned types;
    int unacked;
    struct subscriber *next;
};

/* Read from Redis but not yet deliverable (every wanting connection full). */
struct held {
    struct held *next;
    char *eid;
    char *body;
    size_t len;
};

struct group {
    struct group *next;
    char *name;
    struct subscriber *subs;
    struct strmap delivered; /* eid -> subscriber, until acked */
    struct held *held_head, *held_tail;
    bool created;  /* XGROUP CREATE done since the last connect */
    bool busy;     /* a command for the group is in flight */
    bool rescan;   /* re-read the group's pending list from cursor */
    bool more;     /* new events may be waiting */
    char cursor[48];
};

static struct group *groups;

static void pump(struct group *g);

void events_init(void)
{
    groups = NULL;
}

static void held_free_all(struct group *g)
{
    struct held *h = g->held_head;
    while (h) {
        struct held *n = h->next;
        free(h->eid);
        free(h->body);
        free(h);
        h = n;
    }
    g->held_head = g->held_tail = NULL;
}

void events_free(void)
{
    while (groups) {
        struct group *g = groups;
        groups = g->next;
        held_free_all(g);
        strmap_free(&g->delivered);
        free(g->name);
        free(g);
    }
}

static struct group *group_get(const char *name)
{
    for (struct group *g = groups; g; g = g->next)
        if (strcmp(g->name, name) == 0)
            return g;
    struct group *g = xcalloc(1, sizeof *g);
    g->name = xstrdup(name);
    strmap_init(&g->delivered);
    g->next = groups;
    groups = g;
    return g;
}

static bool sub_has_room(const struct subscriber *s)
{
    return s->unacked < SUB_UNACKED_MAX && conn_write_backlog(s->conn) < SUB_BACKLOG_MAX;
}

static void ignore_reply_cb(void *arg, redisReply *reply)
{
}

static void xack(struct group *g, const char *eid)
{
    const char *argv[] = {"XACK", rbd->key_events, g->name, eid};
    size_t lens[4];
    for (int i = 0; i < 4; i++)
        lens[i] = strlen(argv[i]);
    store_command(4, argv, lens, ignore_reply_cb, NULL);
}

/* Hands one event to a connection of g. Returns false when every
 * connection that wants it is full (hold it), true when delivered or not
 * wanted by anyone (then it is acknowledged for the group). */
static bool route(struct group *g, const char *eid, const char *body, size_t len)
{
    int type = event_body_type(body, len);
    unsigned bit = type >= 0 ? 1u << type : EV_ALL;
    bool wanted = false;
    struct subscriber *pick = NULL;
    for (struct subscriber *s = g->subs; s; s = s->next) {
        if (!(s->types & bit))
            continue;
        wanted = true;
        if (sub_has_room(s) && (!pick || s->unacked < pick->unacked))
            pick = s;
    }
    if (!wanted) {
        xack(g, eid);
        return true;
    }
    if (!pick)
        return false;
    size_t n;
    char *line = event_line(eid, body, len, &n);
    if (!line) {
        log_warn("events: dropping malformed event %s", eid);
        xack(g, eid);
        return true;
    }
    if (conn_send_event(pick->conn, line, n) == 0) {
        pick->unacked++;
        strmap_put(&g->delivered, eid, pick);
    }
    return true;
}

static void hold(struct group *g, const char *eid, const char *body, size_t len)
{
    struct held *h = xcalloc(1, sizeof *h);
    h->eid = xstrdup(eid);
    h->body = xstrndup(body, len);
    h->len = len;
    if (g->held_tail)
        g->held_tail->next = h;
    else
        g->held_head = h;
    g->held_tail = h;
}

static void deliver_held(struct group *g)
{
    while (g->held_head) {
        struct held *h = g->held_head;
        if (!route(g, h->eid, h->body, h->len))
            return;
        g->held_head = h->next;
        if (!g->held_head)
            g->held_tail = NULL;
        free(h->eid);
        free(h->body);
        free(h);
    }
}

static void read_reply_cb(void *arg, redisReply *reply)
{
    struct group *g = arg;
    g->busy = false;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (reply && strncmp(reply->str, "NOGROUP", 7) == 0) {
            g->created = false; /* the stream or group vanished (Redis lost its data) */
            g->more = true;
            pump(g);
        } else if (reply) {
            log_warn("events: reading group %s failed: %s", g->name, reply->str);
        }
        return; /* pumped again when Redis is back */
    }
    size_t n = 0;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 && reply->element[0]->type == REDIS_REPLY_ARRAY &&
        reply->element[0]->elements == 2) {
        redisReply *entries = reply->element[0]->element[1];
        n = entries->elements;
        for (size_t i = 0; i < n; i++) {
            redisReply *en = entries->element[i];
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 || en->element[0]->type != REDIS_REPLY_STRING)
                continue;
            const char *eid = en->element[0]->str;
            redisReply *fields = en->element[1];
            if (g->rescan)
                snprintf(g->cursor, sizeof g->cursor, "%s", eid);
            if (fields->type != REDIS_REPLY_ARRAY || fields->elements < 2) {
                xack(g, eid); /* trimmed out of the stream: nothing to deliver */
                continue;
            }
            if (g->rescan && strmap_get(&g->delivered, eid))
                continue; /* still with a live connection */
            redisReply *body = fields->element[1];
            if (g->held_head || !route(g, eid, body->str, body->len))
                hold(g, eid, body->str, body->len);
        }
    }
    if (g->rescan) {
        if (n < READ_COUNT_N) {
            g->rescan = false;
            g->more = true;
        }
    } else if (n >= READ_COUNT_N) {
        g->more = true;
    }
    pump(g);
}

static void create_reply_cb(void *arg, redisReply *reply)
{
    struct group *g = arg;
    g->busy = false;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0) {
        log_warn("events: creating group %s failed: %s", g->name, reply->str);
        return;
    }
    g->created = true;
    pump(g);
}

static bool any_room(const struct group *g)
{
    for (const struct subscriber *s = g->subs; s; s = s->next)
        if (sub_has_room(s))
            return true;
    return false;
}

static void pump(struct group *g)
{
    if (!g->subs || g->busy || rbd->stopping || !store_ready())
        return;
    deliver_held(g);
    if (g->held_head || !any_room(g))
        return;
    if (!g->created) {
        /* A new group starts at the beginning of the retained stream, so
         * events emitted before the first subscribe are not lost. */
        const char *argv[] = {"XGROUP", "CREATE", rbd->key_events, g->name, "0", "MKSTREAM"};
        size_t lens[6];
        for (int i = 0; i < 6; i++)
            lens[i] = strlen(argv[i]);
        if (store_command(6, argv, lens, create_reply_cb, g) == 0)
            g->busy = true;
        return;
    }
    if (!g->rescan && !g->more)
        return;
    const char *from = g->rescan ? g->cursor : ">";
    if (!g->rescan)
        g->more = false;
    const char *argv[] = {"XREADGROUP", "GROUP", g->name, CONSUMER, "COUNT", READ_COUNT, "STREAMS", rbd->key_events,
                          from};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    if (store_command(9, argv, lens, read_reply_cb, g) == 0)
        g->busy = true;
}

static void reply_err(struct conn *c, struct slot *s, json_t *req, const char *code, const char *msg)
{
    size_t n;
    char *line = reply_error(req, code, msg, &n);
    conn_reply(c, s, line, n);
}

void events_subscribe(struct conn *c, struct slot *s, const struct request *r)
{
    if (c->sub) {
        if (strcmp(c->sub->g->name, r->group) != 0) {
            reply_err(c, s, r->req, ERR_BAD_REQUEST, "this connection is already subscribed to another group");
            return;
        }
        c->sub->types = r->types;
    } else {
        struct group *g = group_get(r->group);
        struct subscriber *sub = xcalloc(1, sizeof *sub);
        sub->conn = c;
        sub->g = g;
        sub->types = r->types;
        if (!g->subs) {
            /* The group's pending list may hold events nobody acked. */
            g->rescan = true;
            snprintf(g->cursor, sizeof g->cursor, "0");
        }
        sub->next = g->subs;
        g->subs = sub;
        c->sub = sub;
        g->more = true;
    }
    json_t *o = json_object();
    json_object_set_new(o, "group", json_string(r->group));
    size_t n;
    char *line = reply_ok(o, r->req, &n);
    conn_reply(c, s, line, n);
    pump(c->sub->g);
}

struct ack_ctx {
    struct conn *conn;
    struct slot *slot;
    json_t *req;
    struct group *g;
};

static void ack_reply_cb(void *arg, redisReply *reply)
{
    struct ack_ctx *a = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        reply_err(a->conn, a->slot, a->req, ERR_UNAVAILABLE, "Redis did not confirm the ack; send it again");
    } else {
        json_t *o = json_object();
        json_object_set_new(o, "acked", json_integer(reply->integer));
        size_t n;
        char *line = reply_ok(o, a->req, &n);
        conn_reply(a->conn, a->slot, line, n);
    }
    pump(a->g);
    json_decref(a->req);
    conn_unref(a->conn);
    free(a);
}

void events_ack(struct conn *c, struct slot *s, const struct request *r)
{
    if (!c->sub) {
        reply_err(c, s, r->req, ERR_BAD_REQUEST, "subscribe before acking events");
        return;
    }
    if (!store_ready()) {
        reply_err(c, s, r->req, ERR_UNAVAILABLE, "Redis is not available; ack again later");
        return;
    }
    struct group *g = c->sub->g;
    size_t nids = json_array_size(r->ids);
    const char **argv = xmalloc((nids + 3) * sizeof *argv);
    size_t *lens = xmalloc((nids + 3) * sizeof *lens);
    argv[0] = "XACK";
    argv[1] = rbd->key_events;
    argv[2] = g->name;
    for (size_t i = 0; i < nids; i++) {
        const char *eid = json_string_value(json_array_get(r->ids, i));
        argv[3 + i] = eid;
        struct subscriber *owner = strmap_del(&g->delivered, eid);
        if (owner)
            owner->unacked--;
    }
    for (size_t i = 0; i < nids + 3; i++)
        lens[i] = strlen(argv[i]);
    struct ack_ctx *a = xmalloc(sizeof *a);
    a->conn = c;
    a->slot = s;
    a->req = r->req ? json_incref(r->req) : NULL;
    a->g = g;
    conn_ref(c);
    if (store_command((int)(nids + 3), argv, lens, ack_reply_cb, a) != 0) {
        reply_err(c, s, r->req, ERR_UNAVAILABLE, "Redis is not available; ack again later");
        json_decref(a->req);
        conn_unref(c);
        free(a);
    }
    free(argv);
    free(lens);
}

struct forget_ctx {
    struct subscriber *sub;
    int removed;
};

static void forget_sub_cb(struct strmap *m, const char *key, void *value, void *arg)
{
    struct forget_ctx *f = arg;
    if (value == f->sub) {
        strmap_del(m, key);
        f->removed++;
    }
}

void events_unsubscribe(struct conn *c)
{
    struct subscriber *sub = c->sub;
    struct group *g = sub->g;
    for (struct subscriber **p = &g->subs; *p; p = &(*p)->next) {
        if (*p == sub) {
            *p = sub->next;
            break;
        }
    }
    struct forget_ctx f = {sub, 0};
    strmap_foreach(&g->delivered, forget_sub_cb, &f);
    if (f.removed) {
        /* Its unacked events are still pending in Redis: hand them on. */
        g->rescan = true;
        snprintf(g->cursor, sizeof g->cursor, "0");
    }
    c->sub = NULL;
    free(sub);
    if (!g->subs)
        held_free_all(g); /* still pending in Redis; re-read on the next subscribe */
    pump(g);
}

void events_notify(void)
{
    for (struct group *g = groups; g; g = g->next) {
        if (!g->subs)
            continue;
        g->more = true;
        pump(g);
    }
}

void events_writable(struct conn *c)
{
    if (c->sub)
        pump(c->sub->g);
}

void events_link_up(void)
{
    for (struct group *g = groups; g; g = g->next) {
        g->created = false;
        g->busy = false;
        g->more = true;
        pump(g);
    }
}
