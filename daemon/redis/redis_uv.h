/*
 * rebound's own glue between a hiredis 0.14 redisAsyncContext and libuv.
 *
 * hiredis drives I/O through five hooks (add/del read, add/del write,
 * cleanup); this adapter backs them with one uv_poll_t on the context's
 * socket. It exists because the adapter packaged with hiredis 0.14 drops
 * the error status libuv 1.44 passes to the poll callback when the socket
 * reports POLLERR: libuv then stops the poll, so a refused connect or a
 * reset is never seen and the context hangs until some time-out.
 *
 * Here a poll error is first handed to hiredis (redisAsyncHandleWrite while
 * connecting, so the connect callback fires with the socket's error text;
 * redisAsyncHandleRead once connected, so the read fails and hiredis
 * disconnects). If the context survives that, the owner's error_cb is
 * called, because the poll is dead and nothing else would ever wake it.
 *
 * The uv_poll_t and the adapter's memory are freed only in the poll's close
 * callback, which runs after hiredis has freed the context.
 */
#ifndef REBOUND_DAEMON_REDIS_UV_H
#define REBOUND_DAEMON_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

struct redis_uv_hooks {
    /* The poll failed (status is a negative libuv error) and hiredis did
     * not drop the context. Called from the poll callback, outside any
     * hiredis callback, so the owner may redisAsyncFree(ac) here; it must
     * drop the context one way or another. May be NULL. */
    void (*error_cb)(redisAsyncContext *ac, int status, void *arg);
    /* hiredis is freeing the context (from its cleanup hook, after every
     * pending reply callback ran with NULL). ac and ac->errstr are still
     * readable; issuing commands on it is not allowed. May be NULL. */
    void (*detach_cb)(redisAsyncContext *ac, void *arg);
    /* The poll handle is closed and the adapter's memory freed: nothing of
     * this attachment is left in the loop. May be NULL. */
    void (*closed_cb)(void *arg);
    void *arg;
};

/* Attaches ac to loop. Call it before redisAsyncSetConnectCallback (which
 * asks for the first write event). hooks is copied. Returns 0, or -1 when
 * ac already has an adapter or the poll cannot be initialised (then
 * nothing is attached and no hook will be called). */
int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop, const struct redis_uv_hooks *hooks);

#endif
