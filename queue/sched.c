/*
 * The schedule: every message rebound knows, found by id, and the ones with
 * a time to act, ordered by that time.
 *
 * Two indexes over one set of entries. Requests name a message by id
 * (bounce, delivered, cancel, get), so entries live in a hash table keyed by
 * id. The timer needs the earliest due time, so the entries that have one
 * are also in the heap (heap.c), which holds a pointer to the heap_node
 * embedded in each entry and keeps that node's index current. Cancel or
 * reschedule is then: find by id (O(1)), then heap_remove or heap_update on
 * the node, O(log n), with no search. "Scheduled?" is node.index !=
 * HEAP_NONE, so the heap is the only record of it and cannot disagree with a
 * flag.
 *
 * Why time is an argument. sched_pop_due(now) is told the time; it never
 * reads a clock. Due times are absolute Unix milliseconds because they are
 * persisted and must survive a restart, and the tests can run a week of
 * schedule in a millisecond. The daemon caps each sleep, so a wall-clock
 * jump is corrected soon; what fell due while the clock jumped simply fires.
 *
 * Memory, because this holds millions of messages. An entry is one block
 * of the schedule's slab (slab.c): the fixed fields (54 bytes on LP64) and
 * the id inline, NUL-terminated, with its length in a byte, rounded up to 8
 * bytes and with no allocator header, so an entry with an id of up to 9
 * bytes takes 64 bytes and one with a 36-byte id (a uuid) 96. The table is
 * an array of chain heads; the chain link is in the entry, so the table
 * costs one pointer per bucket and grows by doubling when there are as
 * many entries as buckets (load factor 1: chains average one entry, the
 * array stays at 8 to 16 bytes per entry). The heap adds 8 to 16 bytes per
 * scheduled entry. Hash values are not stored: they are recomputed when
 * the table grows, which is rare, rather than paid for in every entry.
 *
 * A load. At start the daemon reads every entry back from Redis, millions
 * of ids in no useful order, each a lookup (Redis may return an id twice)
 * and an add. It tells the schedule how many are coming (sched_reserve), so
 * neither the table nor the heap grows during the load; each id is hashed
 * and its chain walked once (sched_find_or_add), the bucket having been
 * fetched into the cache a few ids ahead (sched_prefetch); entries join the
 * heap unordered, and the daemon has them put in order a page at a time
 * (sched_settle) while Redis makes the next page (heap.c).
 *
 * Growth is incremental (as in Redis's dict). Doubling a table of eight
 * million chains in one go would stall the loop for a good part of a second
 * while events are due, so a growing table keeps both arrays for a while:
 * new entries go to the new one, and every add and remove moves a few old
 * chains over. There are as many adds to come before the next doubling as
 * there are old chains, so a move of at least one chain per add always
 * finishes in time. A lookup checks both arrays. The table never shrinks: the
 * memory a peak needed is kept for the next peak.
 *
 * The hash is not keyed. Ids come from the senders that rebound serves, which
 * are trusted to the point of deciding what is retried; a sender that wanted
 * to slow the daemon could do so more simply by sending a lot.
 */
#include "queue/sched.h"

#include "queue/slab.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHED_INITIAL_BUCKETS 64
#define SCHED_REHASH_STEP 8 /* old chains moved per add or remove while growing */
#define SCHED_NOT_REHASHING SIZE_MAX

struct sched_table {
    struct entry **buckets; /* NULL: this table is not in use */
    size_t mask;            /* buckets - 1; the count is a power of two */
};

struct sched {
    struct sched_table t[2]; /* t[1] is in use only while t[0] moves into it */
    size_t rehash_pos;       /* next t[0] chain to move, or SCHED_NOT_REHASHING */
    size_t count;
    struct heap heap;
    struct slab *slab; /* the entries' memory */
};

static void sched_oom(const char *what)
{
    fprintf(stderr, "rebound: out of memory allocating %s\n", what);
    abort();
}

static inline size_t entry_size(size_t id_len)
{
    return offsetof(struct entry, id) + id_len + 1;
}

/* The node sits at the start of an 8-aligned entry; going through void *
 * says so to the compiler, which only knows the node as 4-aligned. */
static inline struct entry *entry_of(struct heap_node *n)
{
    void *p = (char *)n - offsetof(struct entry, node);
    return p;
}

static inline uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Eight bytes a step, then a full avalanche, so that the low bits that pick
 * the bucket depend on every byte of the id. Ids are often long and share
 * long prefixes (uuids, "<campaign>-<n>"), which a byte-at-a-time hash is
 * slow on and a weak one clusters. The value never leaves the process, so
 * the host's byte order does not matter. */
static uint64_t sched_hash(const char *id, size_t len)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)len * 0xbf58476d1ce4e5b9ULL);
    uint64_t w;

    while (len >= 8) {
        memcpy(&w, id, 8);
        h ^= w;
        h *= 0x94d049bb133111ebULL;
        h ^= h >> 31;
        id += 8;
        len -= 8;
    }
    if (len) {
        w = 0;
        memcpy(&w, id, len);
        h ^= w;
        h *= 0x94d049bb133111ebULL;
    }
    return fmix64(h);
}

static void table_alloc(struct sched_table *t, size_t nbuckets)
{
    t->buckets = calloc(nbuckets, sizeof(*t->buckets));
    if (!t->buckets)
        sched_oom("the id table");
    t->mask = nbuckets - 1;
}

static inline bool sched_rehashing(const struct sched *s)
{
    return s->rehash_pos != SCHED_NOT_REHASHING;
}

/* Moves up to n old chains (visiting at most 10 n empty ones) into the new
 * table, and retires the old table when it is empty. */
static void sched_rehash_step(struct sched *s, size_t n)
{
    size_t empty_visits = n * 10;

    if (!sched_rehashing(s))
        return;
    while (n > 0 && s->rehash_pos <= s->t[0].mask) {
        struct entry *e = s->t[0].buckets[s->rehash_pos];
        if (!e) {
            s->rehash_pos++;
            if (--empty_visits == 0)
                break;
            continue;
        }
        while (e) {
            struct entry *next = e->next;
            size_t b = sched_hash(e->id, e->id_len) & s->t[1].mask;
            e->next = s->t[1].buckets[b];
            s->t[1].buckets[b] = e;
            e = next;
        }
        s->t[0].buckets[s->rehash_pos++] = NULL;
        n--;
    }
    if (s->rehash_pos > s->t[0].mask) {
        free(s->t[0].buckets);
        s->t[0] = s->t[1];
        s->t[1].buckets = NULL;
        s->t[1].mask = 0;
        s->rehash_pos = SCHED_NOT_REHASHING;
    }
}

/* Returns a new empty schedule; aborts on OOM. Free it with sched_free. */
struct sched *sched_new(void)
{
    struct sched *s = calloc(1, sizeof(*s));

    if (!s)
        sched_oom("the schedule");
    table_alloc(&s->t[0], SCHED_INITIAL_BUCKETS);
    s->rehash_pos = SCHED_NOT_REHASHING;
    heap_init(&s->heap);
    s->slab = slab_new();
    return s;
}

/* Frees the schedule and every entry in it (not their waiters, which are
 * the daemon's). NULL is a no-op. */
void sched_free(struct sched *s)
{
    if (!s)
        return;
    free(s->t[0].buckets);
    free(s->t[1].buckets);
    heap_free(&s->heap);
    slab_destroy(s->slab); /* every entry at once */
    free(s);
}

static struct entry *chain_find(struct entry *e, const char *id, size_t id_len)
{
    for (; e; e = e->next)
        if (e->id_len == id_len && memcmp(e->id, id, id_len) == 0)
            return e;
    return NULL;
}

/* Returns the entry for id, or NULL. The schedule keeps owning it. */
struct entry *sched_find(const struct sched *s, const char *id, size_t id_len)
{
    uint64_t h;
    struct entry *e;

    if (id_len > UINT8_MAX)
        return NULL;
    h = sched_hash(id, id_len);
    e = chain_find(s->t[0].buckets[h & s->t[0].mask], id, id_len);
    if (!e && sched_rehashing(s))
        e = chain_find(s->t[1].buckets[h & s->t[1].mask], id, id_len);
    return e;
}

/* Makes the table ready for one more entry: a rehash step, and the start
 * of a doubling when the table is full. */
static void sched_make_room(struct sched *s)
{
    sched_rehash_step(s, SCHED_REHASH_STEP);
    if (!sched_rehashing(s) && s->count >= s->t[0].mask + 1) {
        table_alloc(&s->t[1], (s->t[0].mask + 1) * 2);
        s->rehash_pos = 0;
        sched_rehash_step(s, SCHED_REHASH_STEP);
    }
}

/* A new entry for id with hash h, linked into the table new entries go
 * to. */
static struct entry *sched_link_new(struct sched *s, uint64_t h, const char *id, size_t id_len)
{
    struct sched_table *t = sched_rehashing(s) ? &s->t[1] : &s->t[0];
    struct entry *e = slab_alloc(s->slab, entry_size(id_len));
    size_t b = h & t->mask;

    e->node.due_ms = 0;
    e->node.seq = 0;
    e->node.index = HEAP_NONE;
    e->domain = 0;
    e->first_ms = 0;
    e->waiters = NULL;
    e->attempt = 0;
    e->class_idx = 0;
    e->state = ENTRY_NEW;
    e->flags = 0;
    e->id_len = (uint8_t)id_len;
    memcpy(e->id, id, id_len);
    e->id[id_len] = '\0';
    e->next = t->buckets[b];
    t->buckets[b] = e;
    s->count++;
    return e;
}

static void sched_check_id_len(size_t id_len)
{
    if (id_len > UINT8_MAX) {
        fprintf(stderr, "rebound: sched_add of an id of %zu bytes\n", id_len);
        abort();
    }
}

/* Adds the entry for id, which must not exist (id_len <= 255): state
 * ENTRY_NEW, not scheduled, every other field zero. The schedule owns it
 * until sched_remove. Aborts on OOM. */
struct entry *sched_add(struct sched *s, const char *id, size_t id_len)
{
    sched_check_id_len(id_len);
    sched_make_room(s);
    return sched_link_new(s, sched_hash(id, id_len), id, id_len);
}

/* Returns the entry for id, adding it as sched_add does when there is none
 * (*added says which). Aborts on OOM or an id over 255 bytes. */
struct entry *sched_find_or_add(struct sched *s, const char *id, size_t id_len, bool *added)
{
    uint64_t h;
    struct entry *e;

    sched_check_id_len(id_len);
    sched_make_room(s);
    h = sched_hash(id, id_len);
    e = chain_find(s->t[0].buckets[h & s->t[0].mask], id, id_len);
    if (!e && sched_rehashing(s))
        e = chain_find(s->t[1].buckets[h & s->t[1].mask], id, id_len);
    *added = e == NULL;
    return e ? e : sched_link_new(s, h, id, id_len);
}

/* Grows the table so that n entries fit without a doubling (as an
 * incremental rehash, like any doubling; a rehash already under way is
 * finished first, at once), and the heap to n slots. */
void sched_reserve(struct sched *s, size_t n)
{
    size_t want = SCHED_INITIAL_BUCKETS;

    while (want < n && want <= SIZE_MAX / 4)
        want *= 2;
    while (sched_rehashing(s))
        sched_rehash_step(s, SIZE_MAX / 16);
    if (want > s->t[0].mask + 1) {
        table_alloc(&s->t[1], want);
        s->rehash_pos = 0;
        sched_rehash_step(s, SCHED_REHASH_STEP);
    }
    heap_reserve(&s->heap, n);
}

/* Fetches the bucket that a lookup of id starts from (in the table new
 * entries go to). */
void sched_prefetch(const struct sched *s, const char *id, size_t id_len)
{
    const struct sched_table *t = sched_rehashing(s) ? &s->t[1] : &s->t[0];

    __builtin_prefetch(&t->buckets[sched_hash(id, id_len) & t->mask]);
}

/* Fetches the first entry of the chain that a lookup of id walks: the
 * entry a lookup of an absent id compares with, a cache miss otherwise. */
void sched_prefetch_chain(const struct sched *s, const char *id, size_t id_len)
{
    const struct sched_table *t = sched_rehashing(s) ? &s->t[1] : &s->t[0];
    const struct entry *e = t->buckets[sched_hash(id, id_len) & t->mask];

    if (e)
        __builtin_prefetch(e);
}

static bool table_unlink(struct sched_table *t, uint64_t h, struct entry *e)
{
    struct entry **pp;

    if (!t->buckets)
        return false;
    for (pp = &t->buckets[h & t->mask]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            return true;
        }
    }
    return false;
}

/* Unschedules, unlinks and frees e, which must be in s. e->waiters must be
 * NULL: they are the caller's to settle first. */
void sched_remove(struct sched *s, struct entry *e)
{
    uint64_t h = sched_hash(e->id, e->id_len);

    if (entry_scheduled(e))
        heap_remove(&s->heap, &e->node);
    if (!table_unlink(&s->t[0], h, e) && !table_unlink(&s->t[1], h, e)) {
        fprintf(stderr, "rebound: sched_remove of an entry not in the schedule\n");
        abort();
    }
    s->count--;
    slab_free(s->slab, e, entry_size(e->id_len));
    sched_rehash_step(s, 1);
}

/* Schedules e at due_ms, or moves it there if it already was: either way
 * it goes behind entries already due at the same time. Aborts on OOM. */
void sched_set_due(struct sched *s, struct entry *e, int64_t due_ms)
{
    heap_update(&s->heap, &e->node, due_ms);
}

/* Takes e off the heap; it stays known by id. No-op if not scheduled. */
void sched_unset_due(struct sched *s, struct entry *e)
{
    if (entry_scheduled(e))
        heap_remove(&s->heap, &e->node);
}

/* The scheduled entry with the earliest due time (first scheduled among
 * equals), or NULL. It stays scheduled. */
struct entry *sched_next(struct sched *s)
{
    struct heap_node *n = heap_min(&s->heap);

    return n ? entry_of(n) : NULL;
}

/* Orders what was scheduled since the last operation that needed the
 * order. */
void sched_settle(struct sched *s)
{
    heap_settle(&s->heap);
}

/* If the earliest entry is due at or before now_ms, unschedules and returns
 * it (it stays known by id); otherwise NULL. */
struct entry *sched_pop_due(struct sched *s, int64_t now_ms)
{
    struct heap_node *n = heap_min(&s->heap);

    if (!n || n->due_ms > now_ms)
        return NULL;
    heap_remove(&s->heap, n);
    return entry_of(n);
}

/* Entries known by id. */
size_t sched_count(const struct sched *s)
{
    return s->count;
}

/* Entries on the heap. */
size_t sched_scheduled(const struct sched *s)
{
    return heap_len(&s->heap);
}

/* Bytes of the entries' blocks (not the table or the heap). */
size_t sched_entry_bytes(const struct sched *s)
{
    return slab_used(s->slab);
}

static void table_foreach(const struct sched_table *t, void (*fn)(struct entry *e, void *arg), void *arg)
{
    if (!t->buckets)
        return;
    for (size_t i = 0; i <= t->mask; i++) {
        struct entry *e = t->buckets[i];
        while (e) {
            /* Read the link first: fn may change the entry's fields. */
            struct entry *next = e->next;
            fn(e, arg);
            e = next;
        }
    }
}

/* Calls fn(e, arg) once for every entry, in no particular order. fn may
 * change entries and schedule or unschedule them, but must not add or
 * remove entries. */
void sched_foreach(const struct sched *s, void (*fn)(struct entry *e, void *arg), void *arg)
{
    table_foreach(&s->t[0], fn, arg);
    table_foreach(&s->t[1], fn, arg);
}
