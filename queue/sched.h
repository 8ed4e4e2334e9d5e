/*
 * The schedule: every message rebound knows, by id (a hash table), and the
 * ones with a time to act, ordered by that time (heap.h). The daemon keeps
 * this in memory and rebuilds it from Redis at start; Redis stays the truth.
 *
 * An entry is one message. Its state says what its due time means:
 *   ENTRY_PENDING   a retry is scheduled: at due_ms the `retry` event fires.
 *   ENTRY_AWAITING  the retry fired; we wait for the sender's outcome
 *                   (another bounce = next attempt, delivered, cancel).
 *                   At due_ms (first bounce + awaiting time) it is forgotten.
 * ENTRY_BUSY is a flag: a write for this entry is in flight to Redis, and
 * further requests for it wait (the daemon parks them on `waiters`).
 */
#ifndef REBOUND_QUEUE_SCHED_H
#define REBOUND_QUEUE_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/heap.h"

enum entry_state {
    ENTRY_NEW = 0, /* only while its first write is in flight */
    ENTRY_PENDING = 1,
    ENTRY_AWAITING = 2,
};

#define ENTRY_BUSY 0x01u
#define ENTRY_FIRING 0x02u /* in a fire batch whose write is in flight */
#define ENTRY_PLACED 0x04u /* the daemon's domain pace gave it its due time */
#define ENTRY_LEARNED 0x08u /* its pending retry's time came from the domain's learned timing */

struct entry {
    struct heap_node node; /* node.due_ms is the due time; 20 bytes, 4-aligned */
    uint32_t domain;       /* owned by the daemon: the recipient domain's number, 0 = none */
    int64_t first_ms;      /* first bounce */
    void *waiters;         /* owned by the daemon; sched never touches it */
    struct entry *next;    /* hash chain */
    uint16_t attempt;      /* retries scheduled so far; PENDING: the number of the one due */
    uint8_t class_idx;
    uint8_t state;         /* enum entry_state */
    uint8_t flags;         /* ENTRY_* flags */
    uint8_t id_len;
    char id[];             /* NUL-terminated, at most 255 bytes */
};

struct sched;

/* Returns a new empty schedule; aborts on OOM. */
struct sched *sched_new(void);
/* Frees the schedule and every entry in it. */
void sched_free(struct sched *s);

/* The entry for id, or NULL. */
struct entry *sched_find(const struct sched *s, const char *id, size_t id_len);
/* Adds a new entry for id (which must not exist, id_len <= 255), state
 * ENTRY_NEW, not scheduled. The schedule owns it. */
struct entry *sched_add(struct sched *s, const char *id, size_t id_len);
/* The entry for id, added as sched_add does (*added set) if there was
 * none: one hash and one walk of the chain for both. */
struct entry *sched_find_or_add(struct sched *s, const char *id, size_t id_len, bool *added);
/* Unschedules and frees e. e->waiters must be NULL (the caller's job). */
void sched_remove(struct sched *s, struct entry *e);
/* Makes room for n entries in all, known and scheduled, so that adding up
 * to n grows neither the id table nor the heap (a load whose size is known
 * beforehand). Aborts on OOM. */
void sched_reserve(struct sched *s, size_t n);
/* Start fetching into the cache what a lookup of id will read: the bucket,
 * then (once the bucket is in the cache) the first entry of its chain. A
 * loop over many ids calls the first some ids ahead and the second about
 * half as far ahead. Hints only: they change nothing. */
void sched_prefetch(const struct sched *s, const char *id, size_t id_len);
void sched_prefetch_chain(const struct sched *s, const char *id, size_t id_len);

/* Schedules e at due_ms, or moves it there if it already was scheduled. */
void sched_set_due(struct sched *s, struct entry *e, int64_t due_ms);
/* Takes e off the heap (it stays known by id). No-op if not scheduled. */
void sched_unset_due(struct sched *s, struct entry *e);
static inline bool entry_scheduled(const struct entry *e) { return e->node.index != HEAP_NONE; }

/* The scheduled entry with the earliest due time, or NULL. */
struct entry *sched_next(struct sched *s);
/* Puts the entries scheduled since the last call in order now rather than
 * at the next sched_next (see heap.c): a load calls it after each page, while
 * it waits for the next one, so that the last page is ready at once. */
void sched_settle(struct sched *s);
/* If the earliest entry is due at or before now_ms, takes it off the heap
 * and returns it; otherwise NULL. The entry stays known by id. */
struct entry *sched_pop_due(struct sched *s, int64_t now_ms);

size_t sched_count(const struct sched *s);     /* entries known */
size_t sched_scheduled(const struct sched *s); /* entries on the heap */
size_t sched_entry_bytes(const struct sched *s); /* memory of the entries themselves */

/* Calls fn for every entry (in no particular order). fn must not add or
 * remove entries. */
void sched_foreach(const struct sched *s, void (*fn)(struct entry *e, void *arg), void *arg);

#endif
