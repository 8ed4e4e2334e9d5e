/*
 * Relaying requests to another instance (several reboundd on one Redis: a
 * standby forwards what needs the schedule to the lease's owner). One
 * pipelined client connection per peer address, opened on first use,
 * authenticated with the configured token; replies come back in order and
 * fill the original connection's reply slots, so the client sees the
 * owner's reply as if this instance had answered.
 */
#ifndef REBOUND_DAEMON_PEER_H
#define REBOUND_DAEMON_PEER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "net/conn.h"

/* The req of the ping a peer connection opens with (it then marks the
 * connection from_peer on the receiving side). */
#define PEER_HELLO_REQ "rebound-peer"

/* Sends line (a request, without its newline) to the instance at addr
 * ("host:port") and answers slot s of c with its reply once it comes; req
 * (may be NULL) is echoed if the peer cannot answer (the reply is then
 * `unavailable`). Returns 0, or -1 when it cannot be relayed now (a bad
 * address, too many in flight): then nothing was sent and the caller
 * answers. */
int peer_forward(const char *addr, struct conn *c, struct slot *s, const char *line, size_t len, json_t *req);
/* Sends line to the instance at addr and calls cb with its reply line
 * (without the newline), or with NULL when it could not be reached or did
 * not answer in time; cb is called exactly once unless this returns -1
 * (nothing sent). The fan-out of an op to every instance (shards). */
int peer_ask(const char *addr, const char *line, size_t len, void (*cb)(void *arg, const char *line, size_t len),
             void *arg);
/* Requests relayed so far, and of those answered `unavailable` here
 * because the peer could not be reached or did not answer in time. */
uint64_t peer_forwarded(void);
uint64_t peer_failed(void);
/* Closes every peer connection (shutdown); requests still relayed are
 * answered `unavailable`. */
void peer_close_all(void);

#endif
