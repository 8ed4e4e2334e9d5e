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

struct entry {
    struct heap_node node; /* node.due_ms is the due time */
    int64_t first_ms;      /* first bounce */
    void *waiters;         /* owned by the daemon; sched never touches it */
    struct entry *next;    /* hash chain */
    uint32_t domain;       /* owned by the daemon: the recipient domain's number, 0 = none */
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
/* Unschedules and frees e. e->waiters must be NULL (the caller's job). */
void sched_remove(struct sched *s, struct entry *e);

/* Schedules e at due_ms, or moves it there if it already was scheduled. */
void sched_set_due(struct sched *s, struct entry *e, int64_t due_ms);
/* Takes e off the heap (it stays known by id). No-op if not scheduled. */
void sched_unset_due(struct sched *s, struct entry *e);
static inline bool entry_scheduled(const struct entry *e) { return e->node.index != HEAP_NONE; }

/* The scheduled entry with the earliest due time, or NULL. */
struct entry *sched_next(const struct sched *s);
/* If the earliest entry is due at or before now_ms, takes it off the heap
 * and returns it; otherwise NULL. The entry stays known by id. */
struct entry *sched_pop_due(struct sched *s, int64_t now_ms);

size_t sched_count(const struct sched *s);     /* entries known */
size_t sched_scheduled(const struct sched *s); /* entries on the heap */

/* Calls fn for every entry (in no particular order). fn must not add or
 * remove entries. */
void sched_foreach(const struct sched *s, void (*fn)(struct entry *e, void *arg), void *arg);

#endif
