/*
 * Following a failover while the old master still answers. A Redis link
 * asks the Sentinels at every connect, but a switchover (or a partition)
 * leaves the old master up and taking writes until the Sentinels demote
 * it, which they do at their next look at it, up to about 10 s later; the
 * writes it takes meanwhile are thrown away when it becomes a replica. So
 * while the link is up, a watch asks one Sentinel every `every_ms` over a
 * link of its own (asynchronously, never blocking the loop) where the
 * master is, and moves the link as soon as a newer configuration names
 * another server.
 */
#ifndef REBOUND_DAEMON_REDIS_SENTINEL_WATCH_H
#define REBOUND_DAEMON_REDIS_SENTINEL_WATCH_H

#include <stdint.h>
#include <uv.h>

struct redis_link;
struct redis_link_opts;
struct sentinel_watch;

/* Starts watching for the link `master` (opts are the ones it was made
 * with: their Sentinels, master name and Sentinel password). Returns NULL
 * when opts has no Sentinel. The watch must be closed before the link. */
struct sentinel_watch *sentinel_watch_start(uv_loop_t *loop, struct redis_link *master,
                                            const struct redis_link_opts *opts, int64_t every_ms);
/* Times the watch moved the link. */
uint64_t sentinel_watch_moves(const struct sentinel_watch *w);
/* Stops asking and frees the watch once its own link and timer are closed. */
void sentinel_watch_close(struct sentinel_watch *w);

#endif
