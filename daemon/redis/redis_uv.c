/*
 * hiredis 0.14 <-> libuv 1.44 adapter; see redis_uv.h for why it exists.
 *
 * Lifetime: the adapter (and its uv_poll_t) is created by redis_uv_attach
 * and lives until the poll's close callback. hiredis's cleanup hook only
 * detaches (ac = NULL) and starts the close, because it runs inside
 * redisFree's caller while the poll may still be referenced by a poll
 * callback further up the stack. Every hook and the poll callback check
 * `ac` before touching hiredis.
 */
#include "redis/redis_uv.h"

#include "base/xmalloc.h"

#include <stdlib.h>

struct redis_uv {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis freed the context */
    int events;            /* UV_READABLE | UV_WRITABLE hiredis asked for */
    struct redis_uv_hooks hooks;
};

static void poll_cb(uv_poll_t *handle, int status, int events);

/* Makes the poll watch exactly a->events. */
static void adapter_update(struct redis_uv *a, int events)
{
    if (a->ac == NULL || events == a->events)
        return;
    a->events = events;
    if (events)
        uv_poll_start(&a->poll, events, poll_cb);
    else
        uv_poll_stop(&a->poll);
}

static void add_read_cb(void *privdata)
{
    struct redis_uv *a = privdata;
    adapter_update(a, a->events | UV_READABLE);
}

static void del_read_cb(void *privdata)
{
    struct redis_uv *a = privdata;
    adapter_update(a, a->events & ~UV_READABLE);
}

static void add_write_cb(void *privdata)
{
    struct redis_uv *a = privdata;
    adapter_update(a, a->events | UV_WRITABLE);
}

static void del_write_cb(void *privdata)
{
    struct redis_uv *a = privdata;
    adapter_update(a, a->events & ~UV_WRITABLE);
}

static void close_cb(uv_handle_t *handle)
{
    struct redis_uv *a = handle->data;
    struct redis_uv_hooks hooks = a->hooks;
    free(a);
    if (hooks.closed_cb)
        hooks.closed_cb(hooks.arg);
}

/* hiredis is freeing the context: its fd is still open here and is closed
 * right after we return, so the poll must stop watching it now. */
static void cleanup_cb(void *privdata)
{
    struct redis_uv *a = privdata;
    redisAsyncContext *ac = a->ac;
    if (ac == NULL)
        return;
    a->ac = NULL;
    /* hiredis calls nothing after cleanup; make sure of it anyway. */
    ac->ev.data = NULL;
    ac->ev.addRead = ac->ev.delRead = NULL;
    ac->ev.addWrite = ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;
    uv_close((uv_handle_t *)&a->poll, close_cb);
    if (a->hooks.detach_cb)
        a->hooks.detach_cb(ac, a->hooks.arg);
}

static void poll_cb(uv_poll_t *handle, int status, int events)
{
    struct redis_uv *a = handle->data;
    redisAsyncContext *ac = a->ac;
    if (ac == NULL)
        return;

    if (status < 0) {
        /* libuv has already stopped this poll (POLLERR). Let hiredis read
         * the socket error so its own callbacks report it; a refused
         * connect surfaces as the connect callback with REDIS_ERR. */
        a->events = 0;
        if (!(ac->c.flags & REDIS_CONNECTED))
            redisAsyncHandleWrite(ac);
        else
            redisAsyncHandleRead(ac);
        /* Still attached: hiredis saw nothing wrong (e.g. a read that
         * returned EAGAIN), yet the poll is dead. The owner must drop it. */
        if (a->ac == ac && a->hooks.error_cb)
            a->hooks.error_cb(ac, status, a->hooks.arg);
        return;
    }

    if (events & UV_READABLE)
        redisAsyncHandleRead(ac);
    /* The read may have freed the context (EOF, or a callback that freed
     * it); a->ac says whether it is still there. Commands that the reply
     * callbacks just sent (the next page of a load, the next read of a
     * consumer group, the next fire batch) go out now rather than after
     * another turn of the loop: a->events holds UV_WRITABLE exactly while
     * hiredis has output waiting, and the socket is almost always
     * writable (if not, hiredis writes what fits and keeps waiting). */
    if (a->ac == ac && ((events & UV_WRITABLE) || ((a->events & UV_WRITABLE) && (ac->c.flags & REDIS_CONNECTED))))
        redisAsyncHandleWrite(ac);
}

int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop, const struct redis_uv_hooks *hooks)
{
    if (ac->ev.data != NULL)
        return -1;
    struct redis_uv *a = xcalloc(1, sizeof *a);
    if (uv_poll_init(loop, &a->poll, ac->c.fd) != 0) {
        free(a);
        return -1;
    }
    a->poll.data = a;
    a->ac = ac;
    if (hooks)
        a->hooks = *hooks;

    ac->ev.data = a;
    ac->ev.addRead = add_read_cb;
    ac->ev.delRead = del_read_cb;
    ac->ev.addWrite = add_write_cb;
    ac->ev.delWrite = del_write_cb;
    ac->ev.cleanup = cleanup_cb;
    return 0;
}
