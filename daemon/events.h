/*
 * Event delivery to subscribed connections through Redis consumer groups.
 *
 * Every event sits in the stream <prefix>events. Each subscription group is
 * a Redis consumer group on it; the daemon reads for the group (consumer
 * name "reboundd") and hands each event to one connection of the group.
 * An event counts as delivered only when a client acks its eid; events a
 * connection had not acked when it went away stay in the group's pending
 * list and go to the group's next connection (at-least-once), also across
 * daemon restarts.
 */
#ifndef REBOUND_DAEMON_EVENTS_H
#define REBOUND_DAEMON_EVENTS_H

#include <stdbool.h>

#include "proto/request.h"

struct conn;
struct slot;

void events_init(void);
void events_free(void);
/* Subscribes c to group (reply goes into slot). */
void events_subscribe(struct conn *c, struct slot *s, const struct request *r);
/* Acknowledges events for c's group. */
void events_ack(struct conn *c, struct slot *s, const struct request *r);
/* c is going away. */
void events_unsubscribe(struct conn *c);
/* New events were appended: read them for the groups that have readers. */
void events_notify(void);
/* c's output drained: it may take more events. */
void events_writable(struct conn *c);
/* Redis came back. */
void events_link_up(void);

#endif
