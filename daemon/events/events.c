#include "events/events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/daemon.h"
#include "base/log.h"
#include "base/strmap.h"
#include "base/xmalloc.h"
#include "net/conn.h"
#include "net/ratelog.h"
#include "proto/event.h"
#include "proto/reply.h"
#include "store/store.h"

/* Events a connection may hold unacknowledged: the bound on what a slow
 * subscriber costs in memory, and the flow control of delivery. */
#define SUB_UNACKED_MAX 1000
#define SUB_BACKLOG_MAX (1u << 20)
/* Entries per read of a group: a burst of retries is read in few round
 * trips; what the connections have no room for waits in memory (held). */
#define READ_COUNT_N 2000
/* The next read leaves while fewer than this many events are held, so the
 * connections have events to take while it is in flight. */
#define HELD_LOW 1000
/* An entry id <ms>-<seq> with room to spare. */
#define EID_MAX 48
/* Acks of entries not read yet a group remembers at most. */
#define AHEAD_MAX 10000

struct group;

struct subscriber {
    struct conn *conn;
    struct group *g;
    unsigned types;
    int unacked;
    bool closing; /* a send to it failed: the connection is going away */
    struct subscriber *next;
};

/*
 * An event read for a group and not yet handled: delivered to a
 * connection (sub) and not acked, or held until a connection has room.
 * The group is read with NOACK, so Redis keeps no pending list: these
 * are the group's pending events, kept with their bodies so that those a
 * leaving connection did not ack go to the next one from memory. They are
 * in stream order (reads of a group never overlap), so the oldest one
 * gives the group's mark: every entry before it is handled.
 */
struct ev {
    struct ev *prev, *next; /* the group's outstanding events, stream order */
    struct ev *hnext;       /* the held queue */
    struct subscriber *sub; /* NULL while held */
    size_t len;
    char eid[EID_MAX];
    char body[]; /* len bytes and a NUL: one allocation per event */
};

struct group {
    struct group *next;
    char *name;
    struct subscriber *subs;
    struct strmap out;            /* eid -> struct ev */
    struct ev *out_head, *out_tail;
    struct ev *held_head, *held_tail;
    size_t nheld;
    char last_read[EID_MAX];      /* the newest entry received this run */
    bool have_read;
    /* Ids acked before this run read them (after a start the group reads
     * again from its mark, and a client may ack what it got from the run
     * before first): skipped when they come. */
    struct strmap ahead;
    size_t nahead;
    bool mark_dirty;              /* handled events the mark does not cover yet */
    bool created;  /* attached (scripts/group.lua) since the last connect */
    bool busy;     /* a command for the group is in flight */
    bool more;     /* new events may be waiting */
    bool covered;  /* the fire batch just answered read all that is new */
    int fire_reads; /* fire batches in flight that read for the group */
    /* The bound on groups (max_groups, group_expiry) */
    int64_t seen_ms; /* epoch ms it last had a subscriber (kept in Redis) */
    int inflight;    /* acks in flight that name it: not freed before they land */
    bool listed;     /* in the last XINFO GROUPS */
    /* Batch entries (proto/event.h): where the last attach put the group.
     * A mark can fall inside a batch entry, which is then read again
     * whole: its events up to the floor were handled and are skipped. */
    char floor[EID_MAX];
    /* Entries the next read of the group asks for (0: READ_COUNT_N), fewer
     * when the stream holds batch entries, so that a read brings about
     * READ_COUNT_N events, not that many batches. */
    int read_n;
    /* The shards apart (store_spread): the newest entry read this run from
     * each shard's stream ("" none), event ids being "<shard>/<entry id>". */
    char (*shard_read)[EID_MAX];
    /* The shards apart: each shard's floor (the attach's position in that
     * shard's stream; "" none), as floor is for the one stream. */
    char (*shard_floor)[EID_MAX];
};

static struct group *groups;
static int ngroups;
/* The groups Redis already has were read (after each connect): until then
 * max_groups counts only those this run knows. */
static bool groups_loaded;
static uv_timer_t groups_timer;
static bool groups_timer_on;
static struct ratelog rl_groups, rl_expired;
static void groups_sweep_cb(uv_timer_t *t);

static void pump(struct group *g);

void events_init(void)
{
    groups = NULL;
    ngroups = 0;
    groups_loaded = false;
}

/* Forgets every outstanding event of g (the daemon stops, the group goes,
 * or the stream they came from is gone). */
static void out_free_all(struct group *g)
{
    struct ev *e = g->out_head;
    while (e) {
        struct ev *n = e->next;
        if (e->sub)
            e->sub->unacked--;
        free(e);
        e = n;
    }
    g->out_head = g->out_tail = NULL;
    g->held_head = g->held_tail = NULL;
    g->nheld = 0;
    strmap_free(&g->out);
    strmap_init(&g->out);
}

void events_free(void)
{
    ngroups = 0;
    while (groups) {
        struct group *g = groups;
        groups = g->next;
        out_free_all(g);
        strmap_free(&g->out);
        strmap_free(&g->ahead);
        free(g->shard_read);
        free(g->shard_floor);
        free(g->name);
        free(g);
    }
}

static struct group *group_find(const char *name)
{
    for (struct group *g = groups; g; g = g->next)
        if (strcmp(g->name, name) == 0)
            return g;
    return NULL;
}

static struct group *group_new(const char *name)
{
    struct group *g = xcalloc(1, sizeof *g);
    g->name = xstrdup(name);
    strmap_init(&g->out);
    strmap_init(&g->ahead);
    g->next = groups;
    groups = g;
    ngroups++;
    return g;
}

/* Forgets g (no subscriber, nothing in flight for it). */
static void group_free(struct group *g)
{
    for (struct group **p = &groups; *p; p = &(*p)->next) {
        if (*p == g) {
            *p = g->next;
            break;
        }
    }
    ngroups--;
    out_free_all(g);
    strmap_free(&g->out);
    strmap_free(&g->ahead);
    free(g->shard_read);
    free(g->shard_floor);
    free(g->name);
    free(g);
}

static bool group_idle(const struct group *g)
{
    return !g->subs && !g->busy && g->fire_reads == 0 && g->inflight == 0;
}

static void group_seen(struct group *g)
{
    long long ms = now_ms();
    g->seen_ms = ms;
    const char *name = g->name;
    store_groups_seen(&name, &ms, 1);
}

static bool sub_has_room(const struct subscriber *s)
{
    return !s->closing && s->unacked < SUB_UNACKED_MAX && conn_write_backlog(s->conn) < SUB_BACKLOG_MAX;
}

/* The id just before eid: where a read must start to get eid again. */
static void eid_before(const char *eid, char *out, size_t cap)
{
    unsigned long long ms = 0, seq = 0;
    if (sscanf(eid, "%llu-%llu", &ms, &seq) != 2)
        ms = seq = 0;
    if (seq > 0)
        snprintf(out, cap, "%llu-%llu", ms, seq - 1);
    else if (ms > 0)
        snprintf(out, cap, "%llu-18446744073709551615", ms - 1);
    else
        snprintf(out, cap, "0-0");
}

/* Parses an entry id <ms>-<seq>; false for anything else. */
static bool eid_parse(const char *eid, unsigned long long *ms, unsigned long long *seq)
{
    char *end;
    if (*eid < '0' || *eid > '9')
        return false;
    *ms = strtoull(eid, &end, 10);
    if (*end != '-' || end[1] < '0' || end[1] > '9')
        return false;
    *seq = strtoull(end + 1, &end, 10);
    return *end == '\0';
}

/* Whether entry id a comes after b (b a valid id). */
static bool eid_after(const char *a, const char *b)
{
    unsigned long long am, as, bm, bs;
    if (!eid_parse(a, &am, &as) || !eid_parse(b, &bm, &bs))
        return false;
    return am > bm || (am == bm && as > bs);
}

/* An ack of eid, which g has not read in this run (yet): remembered when
 * a read may still bring it. */
static void ack_ahead(struct group *g, const char *eid)
{
    unsigned long long ms, seq;
    if (!eid_parse(eid, &ms, &seq) || strlen(eid) >= EID_MAX || g->nahead >= AHEAD_MAX)
        return; /* full: it comes again, at least once */
    if (g->have_read && !eid_after(eid, g->last_read))
        return; /* read and handled before */
    if (!strmap_get(&g->ahead, eid)) {
        strmap_put(&g->ahead, eid, g);
        g->nahead++;
    }
}

static void prune_ahead_cb(struct strmap *m, const char *key, void *value, void *arg)
{
    struct group *g = arg;
    if (!eid_after(key, g->last_read)) {
        strmap_del(m, key);
        g->nahead--;
    }
}

/* Forgets the acks ahead that the reads have passed without meeting. */
static void prune_ahead(struct group *g)
{
    if (g->nahead > 0 && g->have_read)
        strmap_foreach(&g->ahead, prune_ahead_cb, g);
}

/* g's mark now: every entry up to it is handled. Returns false when this
 * run has read nothing for g (the mark in Redis stands). */
static bool group_mark(const struct group *g, char *out, size_t cap)
{
    if (g->out_head) {
        eid_before(g->out_head->eid, out, cap);
        return true;
    }
    if (!g->have_read)
        return false;
    snprintf(out, cap, "%s", g->last_read);
    return true;
}

/* e is handled (acked, or nobody in the group wants it): it goes. */
static void ev_done(struct group *g, struct ev *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        g->out_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        g->out_tail = e->prev;
    strmap_del(&g->out, e->eid);
    if (e->sub)
        e->sub->unacked--;
    free(e);
    g->mark_dirty = true;
}

/* Writes g's mark if events were handled since the last write, with cb
 * (may be NULL) getting the HSET's reply. Returns 0, or -1 when nothing
 * was sent. Should Redis not take it, the events after the older mark
 * come again after a restart (at least once). */
static int spread_mark_flush(struct group *g, store_reply_cb cb, void *arg);

static int mark_flush(struct group *g, store_reply_cb cb, void *arg)
{
    if (store_spread())
        return spread_mark_flush(g, cb, arg);
    char mark[EID_MAX];
    if (!g->mark_dirty || !group_mark(g, mark, sizeof mark))
        return -1;
    if (store_group_mark(g->name, mark, cb, arg) != 0)
        return -1;
    g->mark_dirty = false;
    return 0;
}

enum route_result { ROUTED, HOLD };

/* Hands e to a connection of g, or finds nobody of the group wants it
 * (then it is handled, and freed). HOLD when every connection that wants
 * it is full, or there is none. */
static enum route_result route(struct group *g, struct ev *e)
{
    if (!g->subs)
        return HOLD;
    int type = event_body_type(e->body, e->len);
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
        ev_done(g, e);
        return ROUTED;
    }
    if (!pick)
        return HOLD;
    size_t n;
    char *line = event_line(e->eid, e->body, e->len, &n);
    if (!line) {
        log_warn("events: dropping malformed event %s", e->eid);
        ev_done(g, e);
        return ROUTED;
    }
    /* Counted as the connection's even if the send fails (it is closing):
     * its unsubscribe hands the event on. */
    e->sub = pick;
    pick->unacked++;
    if (conn_send_event(pick->conn, line, n) != 0)
        pick->closing = true;
    return ROUTED;
}

static void hold(struct group *g, struct ev *e)
{
    e->hnext = NULL;
    g->nheld++;
    if (g->held_tail)
        g->held_tail->hnext = e;
    else
        g->held_head = e;
    g->held_tail = e;
}

static void deliver_held(struct group *g)
{
    while (g->held_head) {
        struct ev *e = g->held_head;
        struct ev *next = e->hnext;
        if (route(g, e) == HOLD)
            return;
        g->held_head = next;
        g->nheld--;
        if (!g->held_head)
            g->held_tail = NULL;
    }
}

/* Takes one entry read for g (in stream order), routes or holds it. */
static void spread_note(struct group *g, const char *eid);
static int spread_split(const char *eid, const char **raw);

static void take(struct group *g, const char *eid, const char *body, size_t len)
{
    size_t elen = strlen(eid);
    if (elen < EID_MAX)
        memcpy(g->last_read, eid, elen + 1);
    g->have_read = true;
    spread_note(g, eid);
    if (elen >= EID_MAX || strmap_get(&g->out, eid))
        return; /* not an entry id; or read twice (a rewind): it is here already */
    if (g->nahead > 0 && strmap_del(&g->ahead, eid)) {
        g->nahead--;
        g->mark_dirty = true; /* acked before it came: handled */
        return;
    }
    struct ev *e = xmalloc(sizeof *e + len + 1);
    memset(e, 0, sizeof *e);
    memcpy(e->eid, eid, elen + 1);
    memcpy(e->body, body, len);
    e->body[len] = '\0';
    e->len = len;
    e->prev = g->out_tail;
    if (g->out_tail)
        g->out_tail->next = e;
    else
        g->out_head = e;
    g->out_tail = e;
    strmap_put(&g->out, e->eid, e);
    if (g->held_head || route(g, e) == HOLD)
        hold(g, e);
}

/* Takes one entry read for g: its event, or each event of a batch entry
 * (those up to the group's floor were handled before). Returns how many
 * events the entry holds. */
static long long take_entry(struct group *g, const char *eid, const char *v, size_t len)
{
    size_t pos;
    long long n = event_batch_open(v, len, &pos);
    if (n < 0) {
        take(g, eid, v, len);
        return 1;
    }
    /* With the shards apart the entry's id is "<shard>/<id>": the events'
     * ids keep the prefix, and the floor is the shard's own. */
    const char *raw = eid, *floor_id = g->floor;
    if (store_spread()) {
        int k = spread_split(eid, &raw);
        floor_id = k >= 0 && g->shard_floor ? g->shard_floor[k] : "";
        if (k < 0)
            raw = "";
    }
    unsigned long long ms, seq, fms = 0, fseq = 0;
    bool floor = floor_id[0] && eid_parse(floor_id, &fms, &fseq);
    if (!eid_parse(raw, &ms, &seq) || seq < (unsigned long long)(n - 1) || strlen(eid) >= EID_MAX) {
        log_warn("events: dropping malformed batch entry %s", eid);
        n = 0;
    }
    /* The events' ids share the entry's "[<shard>/]<ms>-": only the seq is
     * written per event (a burst is read at up to a few hundred thousand
     * events a second). */
    char id[EID_MAX];
    size_t head = n > 0 ? (size_t)(strchr(raw, '-') - eid) + 1 : 0;
    memcpy(id, eid, head);
    const char *body;
    size_t blen;
    for (long long k = 0; k < n && event_batch_next(v, len, &pos, &body, &blen); k++) {
        unsigned long long s = seq - (unsigned long long)(n - 1 - k);
        if (floor && (ms < fms || (ms == fms && s <= fseq)))
            continue;
        char digits[24], *q = digits + sizeof digits;
        *--q = '\0';
        do {
            *--q = (char)('0' + s % 10);
            s /= 10;
        } while (s);
        memcpy(id + head, q, (size_t)(digits + sizeof digits - q));
        take(g, id, body, blen);
    }
    /* The entry is read, whatever it held. */
    snprintf(g->last_read, sizeof g->last_read, "%s", eid);
    g->have_read = true;
    spread_note(g, eid);
    return n;
}

/* The COUNT of g's next read: about READ_COUNT_N events, given the events
 * per entry of the last read (entries of them, events in all). */
static void read_size(struct group *g, size_t entries, long long events)
{
    if (entries == 0)
        return;
    long long per = events / (long long)entries;
    g->read_n = per > 1 ? (int)(READ_COUNT_N / per) + 1 : 0;
}

/* Rebuilds the held queue from the outstanding events, in stream order:
 * those of connection gone (may be NULL) are held again. */
static void requeue(struct group *g, const struct subscriber *gone)
{
    g->held_head = g->held_tail = NULL;
    g->nheld = 0;
    for (struct ev *e = g->out_head; e; e = e->next) {
        if (gone && e->sub == gone)
            e->sub = NULL;
        if (!e->sub)
            hold(g, e);
    }
}

static void read_done(struct group *g, redisReply *reply)
{
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
    long long nev = 0;
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
            if (fields->type != REDIS_REPLY_ARRAY || fields->elements < 2) {
                /* trimmed out of the stream: nothing to deliver */
                snprintf(g->last_read, sizeof g->last_read, "%s", eid);
                g->have_read = true;
                spread_note(g, eid);
                g->mark_dirty = true;
                continue;
            }
            redisReply *body = fields->element[1];
            nev += take_entry(g, eid, body->str, body->len);
        }
    }
    if (n >= (size_t)(g->read_n ? g->read_n : READ_COUNT_N))
        g->more = true;
    read_size(g, n, nev);
    prune_ahead(g);
    mark_flush(g, NULL, NULL);
    pump(g);
}

static void read_reply_cb(void *arg, redisReply *reply)
{
    read_done(arg, reply);
}

static void attach_reply_cb(void *arg, redisReply *reply)
{
    struct group *g = arg;
    g->busy = false;
    if (!reply)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
        log_warn("events: attaching group %s failed: %s", g->name,
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        return;
    }
    if (reply->element[0]->integer == 1 && g->have_read) {
        /* The group was gone, and with it the stream the events in
         * memory came from (Redis lost its data): they cannot be acked
         * any more, and new entries may have smaller ids. */
        out_free_all(g);
        strmap_free(&g->ahead);
        strmap_init(&g->ahead);
        g->nahead = 0;
        g->have_read = false;
        free(g->shard_read);
        g->shard_read = NULL;
        g->mark_dirty = false;
    }
    g->created = true;
    g->more = true;
    /* Reading goes on after this position (the group's mark after a start). */
    const redisReply *at = reply->element[1];
    unsigned long long ms, seq;
    g->floor[0] = '\0';
    if (at->type == REDIS_REPLY_STRING && at->len < EID_MAX && eid_parse(at->str, &ms, &seq))
        memcpy(g->floor, at->str, at->len + 1);
    if (store_spread() && at->type == REDIS_REPLY_STRING) {
        /* "<shard>/<id>,...": each shard's position */
        if (!g->shard_floor)
            g->shard_floor = xcalloc((size_t)store_nshards(), sizeof *g->shard_floor);
        for (int k = 0; k < store_nshards(); k++)
            store_spread_position(at->str, k, g->shard_floor[k], sizeof g->shard_floor[k]);
    }
    pump(g);
}

static bool any_room(const struct group *g)
{
    for (const struct subscriber *s = g->subs; s; s = s->next)
        if (sub_has_room(s))
            return true;
    return false;
}

static char *spread_position(const struct group *g);

static void pump(struct group *g)
{
    if (!g->subs || rbd->stopping)
        return;
    deliver_held(g);
    mark_flush(g, NULL, NULL);
    /* One read at a time, and none while a fire batch reads for the group:
     * entries must arrive in stream order. */
    if (g->busy || g->fire_reads > 0 || !store_ready())
        return;
    if (g->nheld >= HELD_LOW || (!g->held_head && !any_room(g)))
        return;
    if (!g->created) {
        /* Where this run left off, or after a start the group's mark. */
        char *from = spread_position(g);
        if (store_group_attach(g->name, from ? from : g->have_read ? g->last_read : "", attach_reply_cb, g) == 0)
            g->busy = true;
        free(from);
        return;
    }
    if (!g->more)
        return;
    char count[16];
    snprintf(count, sizeof count, "%d", g->read_n ? g->read_n : READ_COUNT_N);
    if (store_group_read(g->name, ">", count, read_reply_cb, g) == 0) {
        g->busy = true;
        g->more = false;
    }
}

void events_subscribe(struct conn *c, struct slot *s, const struct request *r)
{
    if (c->sub) {
        if (strcmp(c->sub->g->name, r->group) != 0) {
            conn_reply_error(c, s, r->req, ERR_BAD_REQUEST, "this connection is already subscribed to another group");
            return;
        }
        c->sub->types = r->types;
    } else {
        struct group *g = group_find(r->group);
        if (!g && ngroups >= rbd->cfg.max_groups) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "%d consumer groups exist (max_groups); subscribe to one of them, or have the operator "
                     "delete one",
                     ngroups);
            ratelog_warn(&rl_groups, "events: refused a new consumer group: %d exist (max_groups)", ngroups);
            conn_reply_error(c, s, r->req, EVENTS_ERR_TOO_MANY_GROUPS, msg);
            return;
        }
        if (!g)
            g = group_new(r->group);
        group_seen(g);
        struct subscriber *sub = xcalloc(1, sizeof *sub);
        sub->conn = c;
        sub->g = g;
        sub->types = r->types;
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
    long long acked;
};

static void ack_reply_cb(void *arg, redisReply *reply)
{
    struct ack_ctx *a = arg;
    if (a->conn && (!reply || reply->type != REDIS_REPLY_INTEGER)) {
        conn_reply_error(a->conn, a->slot, a->req, ERR_UNAVAILABLE, "Redis did not confirm the ack; send it again");
    } else if (a->conn) {
        json_t *o = json_object();
        json_object_set_new(o, "acked", json_integer(a->acked));
        size_t n;
        char *line = reply_ok(o, a->req, &n);
        conn_reply(a->conn, a->slot, line, n);
    }
    a->g->inflight--;
    pump(a->g);
    json_decref(a->req);
    if (a->conn)
        conn_unref(a->conn);
    free(a);
}

void events_ack(struct conn *c, struct slot *s, const struct request *r)
{
    if (!c->sub) {
        conn_reply_error(c, s, r->req, ERR_BAD_REQUEST, "subscribe before acking events");
        return;
    }
    if (!store_ready()) {
        conn_reply_error(c, s, r->req, ERR_UNAVAILABLE, "Redis is not available; ack again later");
        return;
    }
    struct group *g = c->sub->g;
    size_t nids = json_array_size(r->ids);
    long long acked = 0;
    bool was_held = false;
    for (size_t i = 0; i < nids; i++) {
        const char *eid = json_string_value(json_array_get(r->ids, i));
        struct ev *e = eid ? strmap_get(&g->out, eid) : NULL;
        if (!e) {
            if (eid)
                ack_ahead(g, eid); /* acked before, or not read (again) yet */
            continue;
        }
        was_held |= !e->sub; /* held again after its connection left */
        ev_done(g, e);
        acked++;
    }
    if (was_held)
        requeue(g, NULL);
    /* The ack is answered once the mark that covers it is written; an ack
     * that moves no mark (an older event is still out) is durable as it
     * is: after a crash those events come again, at least once. */
    struct ack_ctx *a = xmalloc(sizeof *a);
    a->conn = c;
    a->slot = s;
    a->req = r->req ? json_incref(r->req) : NULL;
    a->g = g;
    a->acked = acked;
    conn_ref(c);
    g->inflight++;
    g->mark_dirty = true;
    if (mark_flush(g, ack_reply_cb, a) != 0) {
        /* Nothing to write (this run read nothing for the group yet). */
        json_t *o = json_object();
        json_object_set_new(o, "acked", json_integer(acked));
        size_t n;
        char *line = reply_ok(o, r->req, &n);
        conn_reply(c, s, line, n);
        g->inflight--;
        json_decref(a->req);
        conn_unref(c);
        free(a);
    }
    /* The room the ack made is used at once. */
    pump(g);
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
    /* Its unacked events are held again, in stream order, for the other
     * connections of the group or its next one. */
    if (sub->unacked > 0)
        requeue(g, sub);
    c->sub = NULL;
    free(sub);
    if (!g->subs)
        group_seen(g); /* group_expiry counts from now */
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
    events_groups_load();
    for (struct group *g = groups; g; g = g->next) {
        /* Reads whose answers the link lost moved the group on in Redis:
         * the attach puts it back where this run's reads ended. */
        g->created = false;
        g->busy = false;
        g->more = true;
        pump(g);
    }
}

int events_fire_groups(struct group **out, int max)
{
    int n = 0;
    /* The shards apart: a fire batch writes one shard's stream, and a
     * group is read over all of them (store_spread_group_read). */
    if (rbd->stopping || store_spread())
        return 0;
    for (struct group *g = groups; g && n < max; g = g->next) {
        if (!g->subs || !g->created || g->busy || g->held_head || !any_room(g))
            continue;
        g->fire_reads++;
        g->more = false; /* the batch reads whatever is new */
        out[n++] = g;
    }
    return n;
}

const char *events_group_name(const struct group *g)
{
    return g->name;
}

void events_fire_read(struct group *g, const redisReply *read, const redisReply *fired, int count)
{
    g->fire_reads--;
    if (!read || read->type != REDIS_REPLY_ARRAY) {
        if (read)
            log_warn("events: reading group %s failed: %s", g->name, read->str);
        if (read && strncmp(read->str, "NOGROUP", 7) == 0)
            g->created = false; /* the stream or group vanished (Redis lost its data) */
        /* A failed script did not read (the read is its last step); a lost
         * reply is put right by the attach when the link is back. */
        g->more = true;
        return;
    }
    size_t taken = 0;
    for (size_t k = 0; k < read->elements; k++) {
        const redisReply *el = read->element[k];
        const char *eid, *body;
        size_t len;
        if (el->type == REDIS_REPLY_INTEGER) {
            /* An event the batch appended, by the position of its id. */
            size_t i = (size_t)el->integer - 1;
            if (el->integer < 1 || 2 * i + 1 >= fired->elements || fired->element[2 * i]->type != REDIS_REPLY_STRING)
                continue;
            eid = fired->element[2 * i]->str;
            body = fired->element[2 * i + 1]->str;
            len = fired->element[2 * i + 1]->len;
        } else if (el->type == REDIS_REPLY_STRING && k + 1 < read->elements &&
                   read->element[k + 1]->type == REDIS_REPLY_STRING) {
            eid = el->str;
            body = read->element[k + 1]->str;
            len = read->element[k + 1]->len;
            k++;
        } else {
            continue;
        }
        taken++;
        if (len == 0) {
            /* trimmed out of the stream: nothing to deliver */
            snprintf(g->last_read, sizeof g->last_read, "%s", eid);
            g->have_read = true;
            g->mark_dirty = true;
        } else {
            take_entry(g, eid, body, len);
        }
    }
    if (taken >= (size_t)count)
        g->more = true;
    else
        g->covered = true;
    prune_ahead(g);
    mark_flush(g, NULL, NULL);
}

void events_fired(void)
{
    for (struct group *g = groups; g; g = g->next) {
        if (!g->subs) {
            g->covered = false;
            continue;
        }
        if (!g->covered)
            g->more = true;
        g->covered = false;
        pump(g);
    }
}

/*
 * Bounded groups. Redis keeps a consumer group, and its pending list, until
 * it is destroyed: a subscriber naming a new group on every connection
 * would grow Redis's memory without end. So there are at most max_groups
 * (a new one past that is refused), and a group without a subscriber for
 * group_expiry is destroyed with its pending list by a periodic sweep. The
 * time a group last had a subscriber is kept in Redis (store_groups_seen),
 * so a restart does not reset its expiry.
 */

static int64_t sweep_period_ms(void)
{
    int64_t p = rbd->cfg.group_expiry_ms / 4;
    return p < 20 ? 20 : p > 60000 ? 60000 : p;
}

static void arm_sweep(void)
{
    if (!groups_timer_on) {
        groups_timer_on = true;
        uv_timer_init(rbd->loop, &groups_timer);
        uv_unref((uv_handle_t *)&groups_timer);
    }
    if (!uv_is_closing((uv_handle_t *)&groups_timer))
        uv_timer_start(&groups_timer, groups_sweep_cb, (uint64_t)sweep_period_ms(), 0);
}

static void seen_read_cb(void *arg, redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        struct group *g = group_find(k->str);
        if (!g)
            g = group_new(k->str);
        long long ms = strtoll(v->str, NULL, 10);
        if (ms > g->seen_ms)
            g->seen_ms = ms;
    }
}

/* Finds field name in one XINFO GROUPS entry (a flat array of pairs). */
static const redisReply *info_field(const redisReply *e, const char *name)
{
    if (e->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < e->elements; i += 2)
        if (e->element[i]->type == REDIS_REPLY_STRING && strcmp(e->element[i]->str, name) == 0)
            return e->element[i + 1];
    return NULL;
}

static void info_load_cb(void *arg, redisReply *reply)
{
    if (!reply)
        return; /* the link went down: loaded again when it is back */
    for (struct group *g = groups; g; g = g->next)
        g->listed = false;
    /* An error is a stream that does not exist yet: no groups. */
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *name = info_field(reply->element[i], "name");
            if (!name || name->type != REDIS_REPLY_STRING)
                continue;
            struct group *g = group_find(name->str);
            if (!g)
                g = group_new(name->str);
            g->listed = true;
        }
    }
    for (struct group *g = groups, *next; g; g = next) {
        next = g->next;
        if (!g->listed && group_idle(g)) {
            /* Only in the hash: the group itself is gone (an older Redis
             * copy, or destroyed by hand). */
            store_group_destroy(g->name, NULL, NULL);
            group_free(g);
        } else if (!g->seen_ms) {
            /* A group from before its time was kept: expiry counts from now. */
            group_seen(g);
        }
    }
    groups_loaded = true;
    arm_sweep();
}

void events_groups_load(void)
{
    groups_loaded = false;
    if (store_groups_seen_read(seen_read_cb, NULL) == 0)
        store_groups_info(info_load_cb, NULL);
}

static void groups_sweep_cb(uv_timer_t *t)
{
    if (rbd->stopping)
        return;
    if (groups_loaded && store_ready()) {
        long long now = now_ms();
        /* Groups with subscribers are seen now: recorded, in one HSET. */
        const char **names = xmalloc((size_t)(ngroups ? ngroups : 1) * sizeof *names);
        long long *ms = xmalloc((size_t)(ngroups ? ngroups : 1) * sizeof *ms);
        size_t n = 0;
        for (struct group *g = groups, *next; g; g = next) {
            next = g->next;
            if (g->subs) {
                g->seen_ms = now;
                names[n] = g->name;
                ms[n++] = now;
            } else if (group_idle(g) && g->seen_ms && now - g->seen_ms >= rbd->cfg.group_expiry_ms) {
                ratelog_warn(&rl_expired,
                             "events: deleting consumer group %s with its pending list: no subscriber for "
                             "group_expiry",
                             g->name);
                store_group_destroy(g->name, NULL, NULL);
                group_free(g);
            }
        }
        store_groups_seen(names, ms, n);
        free(names);
        free(ms);
    }
    arm_sweep();
}

long long events_group_pending(const char *name)
{
    const struct group *g = group_find(name);
    long long n = 0;
    for (const struct subscriber *s = g ? g->subs : NULL; s; s = s->next)
        n += s->unacked;
    return n;
}

void events_stop(void)
{
    if (groups_timer_on && !uv_is_closing((uv_handle_t *)&groups_timer))
        uv_close((uv_handle_t *)&groups_timer, NULL);
}

struct groups_ctx {
    struct conn *conn;
    struct slot *slot;
    json_t *req;
    char *deleting; /* the group being deleted, or NULL for the list */
};

static void groups_ctx_free(struct groups_ctx *a)
{
    json_decref(a->req);
    conn_unref(a->conn);
    free(a->deleting);
    free(a);
}

static void groups_list_cb(void *arg, redisReply *reply)
{
    struct groups_ctx *a = arg;
    if (!reply) {
        conn_reply_error(a->conn, a->slot, a->req, ERR_UNAVAILABLE, "Redis did not answer; ask again");
        groups_ctx_free(a);
        return;
    }
    json_t *list = json_array();
    long long now = now_ms();
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *e = reply->element[i];
            const redisReply *name = info_field(e, "name"), *pending = info_field(e, "pending"),
                             *lag = info_field(e, "lag");
            if (!name || name->type != REDIS_REPLY_STRING)
                continue;
            const struct group *g = group_find(name->str);
            int consumers = 0;
            for (const struct subscriber *s = g ? g->subs : NULL; s; s = s->next)
                consumers++;
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(name->str));
            json_object_set_new(o, "consumers", json_integer(consumers));
            /* Read with NOACK, a group's pending events are the daemon's
             * (delivered, not acked); a pending list in Redis is one an
             * earlier version left, until the group is attached. */
            json_object_set_new(o, "pending",
                                json_integer(events_group_pending(name->str) +
                                             (pending && pending->type == REDIS_REPLY_INTEGER ? pending->integer : 0)));
            /* lag: entries not yet read by the group (Redis 7; null when
             * Redis cannot tell) */
            json_object_set_new(o, "lag",
                                lag && lag->type == REDIS_REPLY_INTEGER ? json_integer(lag->integer) : json_null());
            if (g && !g->subs && g->seen_ms)
                json_object_set_new(o, "idle_ms", json_integer(now - g->seen_ms));
            json_array_append_new(list, o);
        }
    }
    json_t *o = json_object();
    json_object_set_new(o, "groups", list);
    json_object_set_new(o, "max_groups", json_integer(rbd->cfg.max_groups));
    size_t n;
    char *line = reply_ok(o, a->req, &n);
    conn_reply(a->conn, a->slot, line, n);
    groups_ctx_free(a);
}

static void groups_delete_cb(void *arg, redisReply *reply)
{
    struct groups_ctx *a = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        conn_reply_error(a->conn, a->slot, a->req, ERR_UNAVAILABLE, "Redis did not confirm the delete; send it again");
    } else if (reply->integer == 0) {
        conn_reply_error(a->conn, a->slot, a->req, ERR_NOT_FOUND, "no such consumer group");
    } else {
        json_t *o = json_object();
        json_object_set_new(o, "deleted", json_string(a->deleting));
        size_t n;
        char *line = reply_ok(o, a->req, &n);
        conn_reply(a->conn, a->slot, line, n);
    }
    groups_ctx_free(a);
}

void events_groups(struct conn *c, struct slot *s, const struct request *r)
{
    if (!store_ready()) {
        conn_reply_error(c, s, r->req, ERR_UNAVAILABLE, "Redis is not available; ask again later");
        return;
    }
    struct groups_ctx *a = xcalloc(1, sizeof *a);
    a->conn = c;
    a->slot = s;
    a->req = r->req ? json_incref(r->req) : NULL;
    conn_ref(c);
    int rc;
    if (r->group) {
        struct group *g = group_find(r->group);
        if (g && g->subs) {
            conn_reply_error(c, s, r->req, ERR_BAD_REQUEST,
                             "the group has subscribers: it is deleted once they are gone");
            groups_ctx_free(a);
            return;
        }
        if (g && !group_idle(g)) {
            conn_reply_error(c, s, r->req, ERR_UNAVAILABLE, "the group has a command in flight; send it again");
            groups_ctx_free(a);
            return;
        }
        a->deleting = xstrdup(r->group);
        rc = store_group_destroy(r->group, groups_delete_cb, a);
        if (rc == 0 && g)
            group_free(g);
    } else {
        rc = store_groups_info(groups_list_cb, a);
    }
    if (rc != 0) {
        conn_reply_error(c, s, r->req, ERR_UNAVAILABLE, "Redis is not available; ask again later");
        groups_ctx_free(a);
    }
}

/* ---- the shards apart: a group over every shard's stream ----------------
 * Event ids are "<shard>/<entry id>" (store/spread.c), and each shard's
 * events arrive in its stream's order, so a group keeps per shard the
 * newest entry read, and its mark is per shard: before its oldest event
 * still out, else the newest read. Acks route by the id itself (the
 * outstanding events are found by their qualified id). An ack of an event
 * not read yet is not remembered ahead (ack_ahead wants a plain id): it
 * comes again, at least once. */

/* The shard of a qualified id and where its entry id starts, or -1. */
static int spread_split(const char *eid, const char **raw)
{
    char *end;
    long k = strtol(eid, &end, 10);
    if (end == eid || *end != '/' || k < 0 || k >= store_nshards())
        return -1;
    *raw = end + 1;
    return (int)k;
}

static void spread_note(struct group *g, const char *eid)
{
    const char *raw;
    int k;
    if (!store_spread() || (k = spread_split(eid, &raw)) < 0)
        return;
    if (!g->shard_read)
        g->shard_read = xcalloc((size_t)store_nshards(), sizeof *g->shard_read);
    snprintf(g->shard_read[k], sizeof g->shard_read[k], "%s", raw);
}

/* "<k>/<id>,..." for the shards read this run (the attach's start: the
 * others from their marks), or NULL when not apart or nothing was read. */
static char *spread_position(const struct group *g)
{
    if (!store_spread() || !g->shard_read)
        return NULL;
    int n = store_nshards();
    char *out = xmalloc((size_t)n * (EID_MAX + 8) + 1);
    size_t len = 0;
    for (int k = 0; k < n; k++)
        if (g->shard_read[k][0])
            len += (size_t)sprintf(out + len, "%s%d/%s", len ? "," : "", k, g->shard_read[k]);
    out[len] = '\0';
    return out;
}

static int spread_mark_flush(struct group *g, store_reply_cb cb, void *arg)
{
    if (!g->mark_dirty || !g->shard_read)
        return -1;
    int n = store_nshards();
    bool *seen = xcalloc((size_t)n, sizeof *seen);
    char *mark = xmalloc((size_t)n * (EID_MAX + 8) + 1);
    size_t len = 0;
    /* the oldest event still out of each shard: the outstanding list is
     * in read order, which is each shard's stream order */
    for (struct ev *e = g->out_head; e; e = e->next) {
        const char *raw;
        int k = spread_split(e->eid, &raw);
        if (k < 0 || seen[k])
            continue;
        seen[k] = true;
        char before[EID_MAX];
        eid_before(raw, before, sizeof before);
        len += (size_t)sprintf(mark + len, "%s%d/%s", len ? "," : "", k, before);
    }
    for (int k = 0; k < n; k++)
        if (!seen[k] && g->shard_read[k][0])
            len += (size_t)sprintf(mark + len, "%s%d/%s", len ? "," : "", k, g->shard_read[k]);
    mark[len] = '\0';
    int rc = len ? store_group_mark(g->name, mark, cb, arg) : -1;
    free(seen);
    free(mark);
    if (rc == 0)
        g->mark_dirty = false;
    return rc;
}
