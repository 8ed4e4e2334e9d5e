/*
 * Telling systemd how the daemon is doing (sd_notify, Type=notify):
 * READY=1 once the schedule is loaded and the listeners are up, STATUS=
 * lines with loading progress and queue depth, RELOADING=1 / READY=1
 * around a reload, STOPPING=1 when the drain starts, and WATCHDOG=1 pings
 * from the loop when the unit sets WatchdogSec=.
 *
 * Built on libsystemd's sd_notify when the build found it
 * (REBOUND_SYSTEMD); without it every function here does nothing. Outside
 * systemd (no $NOTIFY_SOCKET) they do nothing either, cheaply.
 */
#ifndef REBOUND_DAEMON_NOTIFY_H
#define REBOUND_DAEMON_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* Reads the environment and, when the service manager asked for a
 * watchdog, starts pinging it from loop at half its interval. */
void notify_init(uv_loop_t *loop);
/* True when a service manager listens ($NOTIFY_SOCKET is set and the build
 * has libsystemd). */
bool notify_enabled(void);
/* True when the build has sd_notify at all. */
bool notify_compiled_in(void);

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
/* Sends STATUS=status, unless it is the same as the last one sent. */
void notify_status(const char *status);
/* Asks for usec more to finish starting (EXTEND_TIMEOUT_USEC). */
void notify_extend_timeout(uint64_t usec);
/* Stops the watchdog and closes its handle (shutdown). */
void notify_close(void);

#endif
