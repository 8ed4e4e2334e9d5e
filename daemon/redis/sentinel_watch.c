/*
 * The watch (sentinel_watch.h says why): a uv_timer and one redis_link to
 * a Sentinel, with no scripts; the link brings its own reconnect, back-off
 * and exactly-once replies. At most one question is out at a time. When
 * the Sentinel it talks to stays unreachable for a few ticks, the watch
 * moves to the next one (the old link closes on its own).
 */
#include "redis/sentinel_watch.h"

#include "base/log.h"
#include "base/xmalloc.h"
#include "redis/redis_link.h"
#include "redis/sentinel.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WATCH_SENTINELS_MAX 16
/* Ticks without a usable link before trying the next Sentinel. */
#define WATCH_DOWN_TICKS 4

struct sentinel_watch {
    uv_timer_t timer;
    uv_loop_t *loop;
    struct redis_link *master;
    struct redis_link *link; /* to sentinels[current], or NULL */
    struct server_addr sentinels[WATCH_SENTINELS_MAX];
    int n, current;
    char *master_name, *password;
    int64_t timeout_ms;
    bool asking, closing;
    int down_ticks;
    int open; /* the timer and the links not yet closed */
    uint64_t moves;
};

static void watch_check_free(struct sentinel_watch *w)
{
    if (w->closing && w->open == 0) {
        free(w->master_name);
        free(w->password);
        free(w);
    }
}

static void link_closed_cb(void *arg)
{
    struct sentinel_watch *w = arg;
    w->open--;
    watch_check_free(w);
}

static void watch_connect(struct sentinel_watch *w)
{
    const struct server_addr *s = &w->sentinels[w->current];
    struct redis_link_opts o = {
        .host = s->host,
        .port = s->port,
        .password = w->password,
        .timeout_ms = w->timeout_ms,
    };
    w->link = redis_link_new(w->loop, &o, NULL, NULL);
    w->open++;
    w->down_ticks = 0;
    redis_link_start(w->link);
}

static void reply_cb(struct redis_link *link, redisReply *reply, void *privdata)
{
    struct sentinel_watch *w = privdata;
    w->asking = false;
    if (w->closing || link != w->link || !reply)
        return;
    char host[256];
    int port;
    long long epoch;
    if (sentinel_parse_master(reply, host, sizeof host, &port, &epoch) != 0)
        return;
    if (redis_link_sentinel_moved(w->master, host, port, epoch)) {
        w->moves++;
        log_warn("redis: Sentinel %s:%d: master \"%s\" moved to %s:%d (epoch %lld): following it",
                 w->sentinels[w->current].host, w->sentinels[w->current].port, w->master_name, host, port, epoch);
    }
}

static void tick_cb(uv_timer_t *t)
{
    struct sentinel_watch *w = t->data;
    if (w->closing)
        return;
    if (!redis_link_ready(w->link)) {
        if (++w->down_ticks >= WATCH_DOWN_TICKS && w->n > 1) {
            redis_link_close(w->link, link_closed_cb, w);
            w->current = (w->current + 1) % w->n;
            w->asking = false;
            watch_connect(w);
        }
        return;
    }
    w->down_ticks = 0;
    if (w->asking)
        return;
    const char *argv[3] = {"SENTINEL", "MASTER", w->master_name};
    if (redis_link_command(w->link, reply_cb, w, 3, argv, NULL) == 0)
        w->asking = true;
}

struct sentinel_watch *sentinel_watch_start(uv_loop_t *loop, struct redis_link *master,
                                            const struct redis_link_opts *opts, int64_t every_ms)
{
    if (opts->nsentinels <= 0 || every_ms <= 0)
        return NULL;
    struct sentinel_watch *w = xcalloc(1, sizeof *w);
    w->loop = loop;
    w->master = master;
    for (int i = 0; i < opts->nsentinels && w->n < WATCH_SENTINELS_MAX; i++)
        if (server_parse_list(opts->sentinels[i], &w->sentinels[w->n], 1) == 1)
            w->n++;
    if (w->n == 0) {
        free(w);
        return NULL;
    }
    w->master_name = xstrdup(opts->master_name && opts->master_name[0] ? opts->master_name : "mymaster");
    w->password = opts->sentinel_password && opts->sentinel_password[0] ? xstrdup(opts->sentinel_password) : NULL;
    /* A question that takes longer than a tick is as good as lost. */
    w->timeout_ms = every_ms * 2 < 1000 ? every_ms * 2 : 1000;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->open = 1;
    watch_connect(w);
    uv_timer_start(&w->timer, tick_cb, (uint64_t)every_ms, (uint64_t)every_ms);
    return w;
}

uint64_t sentinel_watch_moves(const struct sentinel_watch *w)
{
    return w ? w->moves : 0;
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct sentinel_watch *w = h->data;
    w->open--;
    watch_check_free(w);
}

void sentinel_watch_close(struct sentinel_watch *w)
{
    if (!w || w->closing)
        return;
    w->closing = true;
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, timer_closed_cb);
    if (w->link)
        redis_link_close(w->link, link_closed_cb, w);
}
