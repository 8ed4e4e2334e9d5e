/*
 * sd_notify for Type=notify units; see notify.h. Everything runs on the
 * loop thread. The watchdog is pinged from a loop timer, so a loop that
 * stalls (the failure the watchdog is for) stops the pings.
 */
#include "notify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"

#ifdef REBOUND_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static bool enabled;
static bool watchdog_on;
static uv_timer_t watchdog_timer;
static char last_status[256];

#ifdef REBOUND_HAVE_SYSTEMD
static void send_state(const char *state)
{
    int rc = sd_notify(0, state);
    if (rc < 0)
        log_debug("notify: sd_notify(\"%s\"): %s", state, strerror(-rc));
}

static void watchdog_cb(uv_timer_t *t)
{
    send_state("WATCHDOG=1");
}
#endif

void notify_init(uv_loop_t *loop)
{
#ifdef REBOUND_HAVE_SYSTEMD
    const char *sock = getenv("NOTIFY_SOCKET");
    enabled = sock && sock[0];
    uint64_t usec = 0;
    /* > 0 only when WATCHDOG_USEC is set (and WATCHDOG_PID, if set, is us). */
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        uint64_t every_ms = usec / 2000;
        if (every_ms == 0)
            every_ms = 1;
        uv_timer_init(loop, &watchdog_timer);
        uv_timer_start(&watchdog_timer, watchdog_cb, 0, every_ms);
        watchdog_on = true;
        log_info("notify: watchdog every %llu ms", (unsigned long long)every_ms);
    }
#else
    (void)loop;
    enabled = false;
#endif
}

bool notify_enabled(void)
{
    return enabled;
}

bool notify_compiled_in(void)
{
#ifdef REBOUND_HAVE_SYSTEMD
    return true;
#else
    return false;
#endif
}

void notify_ready(void)
{
#ifdef REBOUND_HAVE_SYSTEMD
    if (enabled)
        send_state("READY=1");
#endif
}

void notify_reloading(void)
{
#ifdef REBOUND_HAVE_SYSTEMD
    if (enabled)
        send_state("RELOADING=1");
#endif
}

void notify_stopping(void)
{
#ifdef REBOUND_HAVE_SYSTEMD
    if (enabled)
        send_state("STOPPING=1");
#endif
}

void notify_status(const char *status)
{
#ifdef REBOUND_HAVE_SYSTEMD
    if (!enabled || strcmp(status, last_status) == 0)
        return;
    snprintf(last_status, sizeof last_status, "%s", status);
    char buf[sizeof last_status + 8];
    snprintf(buf, sizeof buf, "STATUS=%s", last_status);
    send_state(buf);
#else
    (void)status;
    (void)last_status;
#endif
}

void notify_extend_timeout(uint64_t usec)
{
#ifdef REBOUND_HAVE_SYSTEMD
    if (!enabled)
        return;
    char buf[64];
    snprintf(buf, sizeof buf, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
    send_state(buf);
#else
    (void)usec;
#endif
}

void notify_close(void)
{
    if (watchdog_on && !uv_is_closing((uv_handle_t *)&watchdog_timer))
        uv_close((uv_handle_t *)&watchdog_timer, NULL);
}
