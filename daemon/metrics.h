/*
 * Prometheus metrics: the text exposition served at GET /metrics
 * (libmicrohttpd, run on the daemon's libuv loop: no thread, so the handler
 * reads struct daemon and base/counters.h directly and needs no lock). It
 * sits on the top floor: it reads every layer, and no layer calls it.
 */
#ifndef REBOUND_DAEMON_METRICS_H
#define REBOUND_DAEMON_METRICS_H

#include <stdbool.h>
#include <stddef.h>

/* Writes the whole exposition (text format 0.0.4) into a malloc'd buffer;
 * *len gets its length. Never fails (aborts on OOM). */
char *metrics_render(size_t *len);

/* Starts the HTTP endpoint on "HOST:PORT" (the metrics_listen option) on
 * rbd->loop: /metrics, the status page at / and its /status.json, and the
 * timer that reads the figures only Redis has (consumer groups, stream
 * length, suppressed list, latest events) every 2 s. Returns 0, or -1 with
 * the reason in err. */
int metrics_start(const char *hostport, char *err, size_t errlen);
/* Stops the endpoint and closes its handles (no-op when not started). */
void metrics_stop(void);
/* True when the build has the HTTP endpoint (libmicrohttpd). */
bool metrics_http_available(void);

#endif
