/*
 * The leases on the schedule: several reboundd on one Redis, one of them
 * owns the schedule and serves it, the others stand by and take over when
 * it dies (docs/operations.md, "High availability"; docs/architecture.md,
 * "The lease"). Without shards the whole schedule is one unit, shard 0 of
 * 1; with `shards` each shard has a lease and an epoch of its own, and the
 * instances share them (docs/architecture.md, "Shards").
 *
 * With lease_ttl 0 (the default) none of this runs: the role is
 * LEASE_NONE and the daemon serves as it always did.
 */
#ifndef REBOUND_DAEMON_LEASE_H
#define REBOUND_DAEMON_LEASE_H

#include <stdbool.h>
#include <stdint.h>

enum lease_role {
    LEASE_NONE,    /* lease_ttl 0: no lease, this instance serves */
    LEASE_STANDBY, /* another instance owns the schedule (or nobody yet) */
    LEASE_LOADING, /* the lease is ours, the schedule is being read back */
    LEASE_OWNER,   /* the lease is ours, the schedule is served and fired */
    LEASE_FENCED,  /* the lease was lost: nothing served or written, the
                      schedule is dropped once nothing is in flight */
};

/* What the top floor adds to a change of role (main.c: sd_notify). */
struct lease_hooks {
    void (*serving)(void); /* the schedule is loaded and served */
};

/* Starts the lease's timer when lease_ttl is set. */
void lease_init(const struct lease_hooks *hooks);
/* Stops the timer (shutdown). */
void lease_close(void);
/* Redis came up: acquire or renew at once rather than at the next check. */
void lease_link_up(void);
/* One check at time now (the timer's; the tests call it with their own
 * clock): renews, acquires, self-fences, drops a fenced schedule. */
void lease_tick(int64_t now);
/* Redis refused a write as FENCED: stop serving (store's hook). */
void lease_fenced(void);
/* Shutdown, after the drain: gives the lease up so that a standby takes
 * over at its next check. done (may be NULL) is called once Redis
 * answered or could not be asked. */
void lease_release(void (*done)(void));

/* True when this instance serves the schedule (always with no lease). */
bool lease_serving(void);
/* The owner's advertised address as last seen ("" unknown, or none). */
const char *lease_owner_addr(void);
/* The owner's instance id as last seen ("" unknown). */
const char *lease_owner_id(void);
/* "none", "standby", "loading", "owner", "fenced". */
const char *lease_role_name(void);
/* Calls fn for each instance whose heartbeat is younger than the lease's
 * TTL, as last read: id, address. */
void lease_members(void (*fn)(const char *id, const char *addr, void *arg), void *arg);

/* ---- shards (cfg.shards >= 2): a lease per shard ---- */
/* The shards: cfg.shards, or 1 (the whole schedule is shard 0). */
int lease_shards(void);
/* True when this instance serves shard k (loaded, its lease held); always
 * without a lease. */
bool lease_shard_serving(int k);
/* Shard k's owner as last seen: address and instance id ("" unknown). */
const char *lease_shard_owner_addr(int k);
const char *lease_shard_owner_id(int k);

/* The check's and renewal's periods (lease_ttl/10 and lease_ttl/5). */
int64_t lease_check_every(void);
int64_t lease_renew_every(void);

#endif
