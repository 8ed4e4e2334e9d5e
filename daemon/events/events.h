/*
 * Event delivery to subscribed connections through Redis consumer groups.
 *
 * Every event sits in the stream <prefix>events. Each subscription group is
 * a Redis consumer group on it; the daemon reads for the group (consumer
 * name "reboundd", with NOACK: Redis keeps no pending entry per event) and
 * hands each event to one connection of the group. An event counts as
 * delivered only when a client acks its eid; events a connection had not
 * acked when it went away are kept in memory and go to the group's next
 * connection. Across a daemon restart or crash, the group's mark in Redis
 * (written with the acks: every entry up to it is handled) is where
 * reading starts again, so what was read and not acked comes again
 * (at-least-once).
 */
#ifndef REBOUND_DAEMON_EVENTS_H
#define REBOUND_DAEMON_EVENTS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>

#include "proto/request.h"

struct conn;
struct slot;
struct group;

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

/*
 * A small fire batch also reads the new entries of the stream for the
 * groups that are caught up (scripts/fire.lua), so its retries reach the
 * subscribers without a read of their own.
 */
/* Puts into out (at most max) the groups a fire batch may read for: those
 * with room, nothing held and no read of their own in flight. Each counts
 * as having a read in flight until events_fire_read. Returns how many. */
int events_fire_groups(struct group **out, int max);
/* g's name, for the script's arguments. */
const char *events_group_name(const struct group *g);
/* What the batch read for g: read is the script's answer for g, fired its
 * first element (the batch's event ids and bodies), count the COUNT of
 * the read; read NULL when the batch failed. */
void events_fire_read(struct group *g, const redisReply *read, const redisReply *fired, int count);
/* A fire batch appended events: the groups that did not read all of them
 * in the batch look for them. */
void events_fired(void);

/* Bounded groups (docs/operations.md, "Hostile clients"). */
/* The error code of a subscribe that would make a group past max_groups. */
#define EVENTS_ERR_TOO_MANY_GROUPS "too_many_groups"
/* Reads the groups Redis has and when each last had a subscriber, then
 * sweeps every group_expiry/4 for those to delete (called on each
 * connect, by events_link_up). */
void events_groups_load(void);
/* The groups op: r->group NULL lists the groups (name, consumers,
 * pending, lag); otherwise deletes that group with its pending list,
 * refused while it has subscribers. Replies into s. */
void events_groups(struct conn *c, struct slot *s, const struct request *r);
/* Events of the group named name delivered to its connections and not
 * acked: its pending count (the groups are read with NOACK, so Redis's
 * own count is only of a pending list an earlier version left). */
long long events_group_pending(const char *name);
/* Closes the sweep's timer (shutdown). */
void events_stop(void);

#endif
