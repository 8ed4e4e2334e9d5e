/*
 * The Redis store: what reboundd keeps in Redis and how it gets there.
 *
 * Keys (under the configured prefix, "rebound:" by default):
 *   <prefix>msg     hash, one field per known message id; the value is its
 *                   record (daemon/record.h says the format).
 *   <prefix>events  stream, the durable outbox of events (field "e").
 *   <prefix>rcpt    hash, one field per address (lower case) that soft-
 *                   bounced in a class counting toward the streak: its
 *                   streak record (scripts/apply.lua says the format).
 *   <prefix>suppressed  hash, one field per suppressed address:
 *                   "<reason>,<at>".
 *   <prefix>domains hash, one field per throttled domain:
 *                   "<class>,<until>,<since>".
 * Ids and addresses are only ever hash fields and script arguments, never
 * key names.
 *
 * Writes that a client reply depends on are gathered into one batch per
 * loop turn and applied by one EVALSHA of scripts/apply.lua, so a burst of
 * reports costs a few round trips, not one each. The common change, the
 * first retry of a message in a class that does not count toward the
 * recipient's streak, goes as a whole record in a section of its own that
 * the script writes with one HSET.
 */
#ifndef REBOUND_DAEMON_STORE_H
#define REBOUND_DAEMON_STORE_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Called once per queued write: ok is true when Redis confirmed it;
 * result is the script's answer for the change (STORE_* below, 0 when the
 * change had no op). */
typedef void (*store_done_cb)(void *arg, bool ok, long long result);

/* What a change does besides the message record (scripts/apply.lua). */
enum store_op {
    STORE_OP_NONE = 0,
    STORE_OP_BOUNCE = 'B',     /* key: the address; arg: see store_bounce_arg */
    STORE_OP_RESET = 'R',      /* delivered: key the address, or "" for the message's */
    STORE_OP_UNSUPPRESS = 'U', /* key: the address */
    STORE_OP_THROTTLE = 'T',   /* key: the domain; arg: "<class>,<until>,<since>" */
    STORE_OP_UNTHROTTLE = 'E', /* key: the domain */
    STORE_OP_LEARN = 'L',      /* key: the domain; arg: its learned state (learn_encode) */
};

/* Results of STORE_OP_BOUNCE. */
#define STORE_AS_DECIDED 0
#define STORE_SUPPRESSED_NOW 1 /* the streak suppressed the address: chronic_soft */
#define STORE_WAS_SUPPRESSED 2 /* the address was suppressed before */

struct store_change {
    /* The shard whose records it changes and whose lease fences it (0 in
     * the one-shard layout); STORE_SHARD_ANY for a change about no message
     * (a domain's throttle, learned timing): any shard this instance holds. */
    int shard;
    const char *id;         /* "" for a change about no message */
    size_t id_len;
    char mode;              /* 'S' set, 'D' delete, '-' events only, 'H' delete keeping the story
                               (the history op): see story */
    const char *fragment;   /* 'S', and STORE_OP_BOUNCE (for a suppress event) */
    /* 'S': the pending retry, and the bounce that is appended to the history */
    struct {
        int64_t due_ms, first_ms;
        int attempt;
        const char *class_name;
        int64_t at_ms; /* the bounce */
        int code;
        const char *enhanced;
    } rec;
    enum store_op op;
    const char *key;        /* the op's address or domain */
    const char *arg;        /* the op's arguments */
    const char *const *events; /* event bodies */
    int nevents;
    /* 'H': "<outcome>,<reason>" (outcome give_up, suppress, delivered);
     * rec.at_ms is when it ended, and with rec.class_name set, rec is the
     * bounce that ended it (first bounce, attempt, class, code) */
    const char *story;
};

/* Writes the argument of STORE_OP_BOUNCE into buf (at least
 * STORE_BOUNCE_ARG_MAX bytes): the decided action ('R', 'G' or 'S'),
 * whether the class counts toward the streak, the time, the reply's codes,
 * the retries made so far, the class, and the campaign (or, without one,
 * the message id: each message is then a campaign of its own). */
#define STORE_BOUNCE_ARG_MAX 512
void store_bounce_arg(char *buf, char action, bool counts, int64_t now, int code, int attempt,
                      const char *class_name, const char *enhanced, const char *campaign, const char *id,
                      size_t id_len);

void store_init(void);
/* True when Redis is connected and ready for commands. */
bool store_ready(void);
void store_free(void);

/* Queues a change into the current batch (the strings are copied). Returns
 * 0, or -1 when Redis is not ready (done is not called). */
int store_queue(const struct store_change *ch, store_done_cb done, void *arg);
/* Sends the current batch, if any. Called once per loop turn. */
void store_flush(void);

/* Remembers an id whose write got no answer, for schedule_resync. */
void store_mark_in_doubt(const char *id, size_t id_len);
/* Calls fn for each id in doubt and forgets them. */
void store_take_in_doubt(void (*fn)(const char *id, void *arg), void *arg);

/* Called when a WAIT is met after one or more fell short
 * (redis_min_replicas): the ids those batches left in doubt are confirmed
 * now, and are re-read while the link stays up rather than at the next
 * reconnect. */
void store_set_doubt_hook(void (*fn)(void));

/* Why Redis is not usable ("" when it is, or was never tried). */
const char *store_last_error(void);

typedef void (*store_reply_cb)(void *arg, redisReply *reply);
/* Keeps a reply a store_reply_cb was given valid after the callback
 * returns; each retain needs one store_reply_release (redis_link.h has
 * the details). */
redisReply *store_reply_retain(redisReply *reply);
void store_reply_release(redisReply *reply);
/* Reads one record (HGET). */
int store_get(int shard, const char *id, size_t id_len, store_reply_cb cb, void *arg);
/* Reads a message's record with its recipient's streak and suppression
 * (scripts/get.lua), or, with id NULL, the recipient rcpt's alone. The
 * reply is an array {record, streak, suppression, address}. */
int store_get_with_rcpt(int shard, const char *id, size_t id_len, const char *rcpt, store_reply_cb cb, void *arg);
/* The number of message records (HLEN). */
int store_msgs_len(int shard, store_reply_cb cb, void *arg);
/* One page of the message records from cursor (HSCAN, count a hint): the
 * reply is {cursor, [field, value, ...]}. */
int store_msgs_scan(int shard, const char *cursor, const char *count, store_reply_cb cb, void *arg);
/* One page of the suppressed list from cursor (HSCAN) and its size (HLEN):
 * cb is called twice, once per reply, in that order. */
int store_suppressed_page(const char *cursor, int count, store_reply_cb cb, void *arg);
/* Every domain throttle (HGETALL): {domain, "<class>,<until>,<since>", ...}. */
int store_domains_read(store_reply_cb cb, void *arg);
/* Forgets a throttle that has run out (HDEL; the reply is not awaited). */
void store_domain_forget(const char *name, size_t len);

/* ---- acting on the queue (store/queue_ops.c) ----
 * <prefix>held  hash, one field per domain an operator holds (the hold
 *               op): "<until>,<since>", until 0 while held until released.
 * Bulk commands take at most STORE_BULK_MAX ids, so one never keeps Redis
 * from other clients for long. */
#define STORE_BULK_MAX 1000

/* Holds domain until `until` (epoch ms, 0: until released) since `since`
 * (HSET). */
int store_held_set(const char *domain, int64_t until, int64_t since, store_reply_cb cb, void *arg);
/* Releases domain (HDEL); cb may be NULL. */
int store_held_del(const char *domain, store_reply_cb cb, void *arg);
/* Every held domain (HGETALL): {domain, "<until>,<since>", ...}. */
int store_held_read(store_reply_cb cb, void *arg);
/* The records of n ids (HMGET, n <= STORE_BULK_MAX): an array of n
 * strings or nils. */
int store_msgs_get(int shard, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg);
/* The same, each id read from its own shard's hash (shards[i]). */
int store_msgs_get_each(const int *shards, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb,
                        void *arg);
/* Deletes the records of n ids (HDEL, n <= STORE_BULK_MAX); the reply is
 * how many there were. */
int store_msgs_del(int shard, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb, void *arg);
/* Makes the pending retries of n ids (n <= STORE_BULK_MAX) due at `due`
 * in their records, in one atomic step; records that are not pending are
 * left alone. The reply is an array of n integers: 1 rewritten, 0 not. */
int store_msgs_due_now(int shard, const char *const *ids, const size_t *lens, size_t n, int64_t due, store_reply_cb cb,
                       void *arg);

/* A finished message's story (HGET of <prefix>history; apply.lua's mode
 * 'H' writes it): "<outcome>,<reason>,<at>\n<record>", or nil. */
int store_history_get(const char *id, size_t id_len, store_reply_cb cb, void *arg);

/* ---- firing (store/fire.c) ---- */

/* What firing did to one id. */
enum store_fire_outcome {
    STORE_FIRE_UNKNOWN, /* Redis has no record of it (removed by hand) */
    STORE_FIRE_BEFORE,  /* it had fired before: awaiting already (or its record is malformed) */
    STORE_FIRE_NOW,     /* fired: its retry event is in the stream */
};
#define STORE_FIRE_GROUPS_MAX 16

/* One fire batch. The caller fills the first part, keeps the struct alive
 * until done is called (exactly once, unless the send returned -1), and
 * may free it in done. */
struct store_fire {
    int shard;              /* the ids' shard (0 in the one-shard layout) */
    int n;                  /* ids */
    int64_t now;            /* the events' time */
    unsigned char *outcome; /* n bytes: enum store_fire_outcome per id, set when done says ok */
    /* script only: the consumer groups that read their new entries in the
     * same call, and how many entries each reads */
    int ngroups;
    const char *groups[STORE_FIRE_GROUPS_MAX];
    int read_count;
    /* ok false: nothing fired as far as is known */
    void (*done)(struct store_fire *f, bool ok);
    /* script only, valid during done when ok: the script's fired array
     * (two elements per id) and each group's read (or an error reply) */
    const redisReply *fired;
    const redisReply *reads[STORE_FIRE_GROUPS_MAX];
    void *priv; /* the store's */
};

/* Fires the n ids (pending records; their entries stay busy until done)
 * through scripts/fire.lua. Returns 0, or -1 when Redis is not ready
 * (nothing sent, done not called). */
int store_fire_script(struct store_fire *f, const char **ids, const size_t *lens);
/* The same as a burst: HMGET of the records, then one MULTI/EXEC with an
 * XADD per pending record, one HSET of them all and one XTRIM. No group
 * reads (ngroups must be 0). */
int store_fire_burst(struct store_fire *f, const char **ids, const size_t *lens);

/* The stream's consumer groups. The daemon reads as one consumer. */
#define STORE_CONSUMER "reboundd"
/* Creates group at the start of the stream (XGROUP CREATE ... MKSTREAM). */
int store_group_create(const char *group, store_reply_cb cb, void *arg);
/* Reads up to count entries for group from `from` (">" for new ones, or an
 * id to re-read its pending entries) (XREADGROUP). */
int store_group_read(const char *group, const char *from, const char *count, store_reply_cb cb, void *arg);
/* Acknowledges n entry ids of group (XACK); cb may be NULL when the reply
 * does not matter. */
int store_group_ack(const char *group, const char *const *ids, size_t n, store_reply_cb cb, void *arg);

/* ---- what operators see (read by metrics.c for /metrics and /status.json) ---- */

/* The event stream's consumer groups (XINFO GROUPS): an array of maps
 * (name, consumers, pending, lag, ...), or an error reply while the stream
 * does not exist yet. */
int store_groups_info(store_reply_cb cb, void *arg);
/* The event stream's length (XLEN). */
int store_stream_len(store_reply_cb cb, void *arg);
/* The number of suppressed addresses (HLEN). */
int store_suppressed_len(store_reply_cb cb, void *arg);
/* The count newest entries of the event stream, newest first (XREVRANGE):
 * {{id, {"e", body}}, ...}. */
int store_events_latest(int count, store_reply_cb cb, void *arg);
/* The groups' upkeep (events/: max_groups, group_expiry, the groups op;
 * the list itself is store_groups_info above). */
/* HGETALL of <prefix>groups: each group's last time with a subscriber. */
int store_groups_seen_read(store_reply_cb cb, void *arg);
/* Records that each of n groups had a subscriber at ms[i] (one HSET; the
 * reply does not matter: the next sweep records it again). */
int store_groups_seen(const char *const *names, const long long *ms, size_t n);
/* Deletes group and its pending list (XGROUP DESTROY) and its time in
 * <prefix>groups; cb (may be NULL) gets XGROUP DESTROY's reply. */
int store_group_destroy(const char *group, store_reply_cb cb, void *arg);
/* Consumer groups read with NOACK: what a group has handled is its mark,
 * an entry id up to which every event is acknowledged (or skipped). */
/* Puts group where the next read (">") starts (scripts/group.lua): from
 * "" after a start (the group's mark), or from the last entry the daemon
 * received for it; creates a missing group at the stream's start. The
 * reply is {created, position}. */
int store_group_attach(const char *group, const char *from, store_reply_cb cb, void *arg);
/* Writes group's mark (one HSET; cb may be NULL). */
int store_group_mark(const char *group, const char *mark, store_reply_cb cb, void *arg);

/* ---- learned timing (schedule/learned.c) ---- */

/* One page of the learned states from cursor (HSCAN of <prefix>learned,
 * count a hint): the reply is {cursor, [domain, state, ...]}. */
int store_learned_scan(const char *cursor, const char *count, store_reply_cb cb, void *arg);
/* Forgets a domain's learned state (HDEL; the reply is not awaited): the
 * daemon let it go to stay within its bound. */
void store_learned_forget(const char *name, size_t len);
/* ---- the lease on the schedule and its fencing (store/lease.c) ----
 * <prefix>lease    "<instance> <addr> <epoch>" with a TTL: the owner
 * <prefix>epoch    the fencing token, incremented by every acquisition
 * <prefix>members  hash, instance id -> "<addr> <at ms>": heartbeats
 * With lease_ttl set, every write carries the epoch held and Redis refuses
 * it with an error starting "FENCED" once the counter moved on. */

/* Makes the lease's keys (only with lease_ttl set: without them nothing
 * is fenced). */
void store_lease_init(void);
void store_lease_free(void);
/* True when writes are fenced (lease_ttl set). */
bool store_fencing(void);
/* The epoch writes carry from now on (0: none held, every write refused). */
void store_fence_set(int shard, long long epoch);
/* fn is called for every write Redis refused as fenced. */
void store_set_fenced_hook(void (*fn)(void));
/* Acquires the lease for who ("<instance> <addr>") for ttl_ms unless it is
 * held: the reply is {epoch, value}, epoch 0 with the holder's value when
 * another holds it. */
int store_lease_acquire(int shard, const char *who, int64_t ttl_ms, store_reply_cb cb, void *arg);
/* Extends the lease by ttl_ms if its value is still `value`: 1, else 0. */
int store_lease_renew(int shard, const char *value, int64_t ttl_ms, store_reply_cb cb, void *arg);
/* Deletes the lease if its value is still `value`: 1, else 0. */
int store_lease_release(int shard, const char *value, store_reply_cb cb, void *arg);
/* The lease's value (GET), nil when nobody holds it. */
int store_lease_read(int shard, store_reply_cb cb, void *arg);
/* Records this instance's heartbeat (HSET; the reply is not awaited). */
int store_members_beat(const char *id, const char *value);
/* Forgets an instance's heartbeat (HDEL; the reply is not awaited). */
int store_members_forget(const char *id);
/* Every heartbeat (HGETALL): {id, "<addr> <at ms>", ...}. */
int store_members_read(store_reply_cb cb, void *arg);
/* Commands sent to Redis and not answered yet. */
size_t store_inflight(void);
/* True when no change is queued for the next write batch. */
bool store_batch_empty(void);

/* ---- shards (docs/architecture.md, "Shards") ----
 * With shards S >= 2 the records, the lease and the epoch are per shard,
 * each under its shard's hash tag (queue/shard.h: shard_tag):
 *   {<tag k>}msg, {<tag k>}lease, {<tag k>}epoch
 * and <prefix>meta (hash) holds "shards", fixed at creation. Everything
 * else (events, rcpt, suppressed, domains, held, history, learned,
 * members) stays one key for all shards: on one Redis a script may touch
 * any key, and only ownership needs the split. With S < 2, shard 0's keys
 * are today's <prefix>msg, <prefix>lease, <prefix>epoch. */
#define STORE_SHARD_ANY (-1)
/* The shards of the layout: cfg.shards when >= 2, else 1. */
int store_nshards(void);
/* Shard k's message hash. */
const char *store_msgs_key(int shard);
/* Answers the layout's number of shards (an integer): the one recorded
 * in <prefix>meta, else 1 where <prefix>msg holds records of the one-shard
 * layout, else nshards, recorded when it is 2 or more. */
int store_meta_shards(int nshards, store_reply_cb cb, void *arg);
/* Which shard holds id's record: an integer, the first shard whose hash
 * has it, or -1 when none does (one script over every shard's hash). */
int store_msgs_locate(const char *id, size_t id_len, store_reply_cb cb, void *arg);

/* The store's own (store.c, fire.c, queue_ops.c): */
/* True (and counted, and the hook told) when reply is a FENCED refusal. */
bool store_fenced_reply(const redisReply *reply);
/* Counts a write refused as fenced and tells the hook. */
void store_fenced_now(void);
/* Adds the fence to a script call: the epoch key after the script's nkeys
 * keys, the epoch as the last argument (argv and lens need room for two
 * more). The scripts' prologue checks it. */
void store_fence_args(int shard, const char **argv, size_t *lens, int *nkeys, int *argc);
/* A command (argv[1] its key) wrapped to run only while the epoch is ours:
 * new arrays in *out and *out_lens (the caller frees them), their count
 * returned. */
int store_fence_wrap(int shard, int argc, const char *const *argv, const size_t *lens, const char ***out, size_t **out_lens);
/* The epoch counter's key, and the epoch writes carry ("0": none held). */
const char *store_fence_key(int shard);
const char *store_fence_epoch(int shard);
/* "{<shard k's hash tag>}<name>" (freed by the caller). */
char *store_shard_key(int k, const char *name);
/* The first shard whose epoch this instance holds (0 when none): where a
 * change about no message is fenced. */
int store_shard_any(void);
/* ---- domain throttles shared by the instances (store/throttle.c) ----
 * Only with shards (S >= 2); cluster-wide keys under a hash tag of their
 * own, each touched alone (never in a multi-slot script), not fenced:
 *   {<prefix>domains}throttle  hash, domain -> "<class>,<until>,<since>"
 *   {<prefix>domains}alert:<class>:<domain>  string with a TTL: the
 *                   instance that raised the window's sender_alert
 * scripts/throttle.lua says the merge rule. */
/* Merges this instance's throttle ("<class>,<until>,<since>") of domain
 * into the shared hash: the reply is {result, value in force}, result 2
 * began (announce it), 1 lengthened, 0 covered by one in force. */
int store_throttle_merge(const char *domain, const char *value, int64_t now, store_reply_cb cb, void *arg);
/* Ends the episode of domain that began at since, if it is in force (the
 * domain delivers again): 1 ended, 0 not. cb may be NULL. */
int store_throttle_end(const char *domain, int64_t since, int64_t now, store_reply_cb cb, void *arg);
/* Every shared throttle, flat {domain, value, ...}; those ended more than
 * keep_ms ago are deleted first. */
int store_throttle_poll(int64_t now, int64_t keep_ms, store_reply_cb cb, void *arg);
/* Claims the sender_alert window of (domain, class) for who: SET NX PX
 * ttl_ms. The reply is status OK when this claim won, nil when another
 * instance holds the window. */
int store_alert_claim(const char *domain, const char *class_name, const char *who, int64_t ttl_ms, store_reply_cb cb,
                      void *arg);
/* ---- shards on several Redis Cluster primaries (store/spread.c) ----
 * With shards >= 2 and redis_cluster, every key a write for a message
 * touches is under its shard's hash tag ({<tag k>}msg, events, rcpt,
 * suppressed, history, history_at, groupmarks, lease, epoch), and the keys
 * about no message under one cluster-wide tag ({<prefix>}domains, held,
 * learned, members, meta, groups). Each shard's commands go over the link
 * to its slot's primary; the cluster-wide ones over rbd->link. */
enum spread_name {
    SPREAD_EVENTS,
    SPREAD_RCPT,
    SPREAD_SUPP,
    SPREAD_DOMAINS, /* in a shard's slot only so apply.lua's keys share it: never written */
    SPREAD_HISTORY,
    SPREAD_HISTORY_AT,
    SPREAD_LEARNED, /* as SPREAD_DOMAINS */
    SPREAD_MARKS,
    SPREAD__COUNT,
};
struct redis_link;
/* True when the shards live apart: shards >= 2 with redis_cluster. */
bool store_spread(void);
/* Makes (and frees) the per-shard key names (store_init, store_free). */
void store_spread_init(void);
void store_spread_free(void);
/* Shard k's key of that name; the one key of the name without the split
 * (or for a shard out of range). */
const char *store_spread_key(int shard, enum spread_name name);
/* A key about no message: "{<prefix>}name" when the shards live apart,
 * else "<prefix>name" (freed by the caller). */
char *store_global_key(const char *name);
/* main.c hands over the link of each shard's slot (NULL: none yet). */
void store_spread_set_link(int shard, struct redis_link *link);
struct redis_link *store_spread_link(int shard);
/* The link shard's commands go over: its own when the shards live
 * apart, else the one link (also for shard < 0: the cluster-wide keys). */
struct redis_link *store_link(int shard);
/* True when shard's link is ready. */
bool store_shard_ready(int shard);
/* Any link ready (store_ready when the shards live apart). */
bool store_spread_any_ready(void);
/* Commands in flight over the shards' own links. */
size_t store_spread_inflight(void);
/* Shards whose link is ready. */
int store_spread_ready_count(void);
/* Redirects and primary changes the shards' links followed. */
uint64_t store_spread_redirects(void);
/* Reads over every shard, one command each, answered once all answered
 * (the same replies as their one-Redis forms; never retained by the
 * callers): */
int store_spread_locate(const char *id, size_t id_len, store_reply_cb cb, void *arg);
int store_spread_history_get(const char *id, size_t id_len, store_reply_cb cb, void *arg);
/* cmd (HLEN, XLEN) of every shard's key of that name, summed. */
int store_spread_sum(const char *cmd, enum spread_name name, store_reply_cb cb, void *arg);
int store_spread_get_each(const int *shards, const char *const *ids, const size_t *lens, size_t n, store_reply_cb cb,
                          void *arg);
/* The suppressed list a shard after another: the cursor is
 * "<shard>.<cursor>". */
int store_spread_suppressed_page(const char *cursor, int count, store_reply_cb cb, void *arg);
/* Consumer groups over every shard's stream: event ids "<shard>/<id>",
 * a group's position or mark a list "<shard>/<id>,..." (a shard it does
 * not name: from its mark). */
int store_spread_group_attach(const char *group, const char *from, store_reply_cb cb, void *arg);
/* Shard k's position in a list "<shard>/<id>,..." ("" when not named). */
void store_spread_position(const char *list, int k, char *out, size_t cap);
int store_spread_group_read(const char *group, const char *count, store_reply_cb cb, void *arg);
int store_spread_group_mark(const char *group, const char *mark, store_reply_cb cb, void *arg);
int store_spread_group_destroy(const char *group, store_reply_cb cb, void *arg);
/* XINFO GROUPS of shard 0's stream, each group's lag summed over every
 * shard's (nil when one cannot tell). */
int store_spread_groups_info(store_reply_cb cb, void *arg);
#endif
