/*
 * A slab of small blocks: the memory of the schedule's entries.
 *
 * Why not malloc. An entry is about 60 bytes plus its id. glibc's malloc
 * adds an 8-byte header to every block and rounds it to 16 bytes, so a
 * 62-byte entry costs 80: at ten million entries that is 180 MB of the
 * daemon's gigabyte spent on headers and rounding. Here a block costs its
 * size rounded to 8 and nothing else.
 *
 * How. One class per rounded size (8, 16, .. SLAB_MAX_SIZE). A class carves
 * blocks off its current chunk, in address order, so that entries made one
 * after the other (a load from Redis) lie next to each other in memory; a
 * freed block goes on its class's free list, threaded through the blocks
 * themselves, and is handed out again before the chunk is carved further.
 * A class's chunks start at 4 KiB and double up to 1 MiB, so a class that
 * is rarely used costs little and a class that holds millions costs one
 * malloc per 1 MiB.
 *
 * What it gives up. A chunk is not given back while the slab lives, even
 * when every block in it is free: the memory a peak needed is kept for the
 * next peak, as the schedule's id table is. And a block is reused only by
 * the same rounded size; the ids of one sender are mostly of one length, so
 * entries mostly come in a handful of sizes.
 *
 * Under AddressSanitizer, free blocks and the uncarved rest of each chunk
 * are poisoned, so a use after free of an entry is still reported.
 */
#include "queue/slab.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SLAB_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define SLAB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SLAB_POISON(p, n) ((void)(p), (void)(n))
#define SLAB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SLAB_CLASSES (SLAB_MAX_SIZE / SLAB_ALIGN)
#define SLAB_FIRST_CHUNK 4096
#define SLAB_MAX_CHUNK (1u << 20)

struct slab_chunk {
    struct slab_chunk *next;
    size_t size;
};

struct slab_free_block {
    struct slab_free_block *next;
};

struct slab_class {
    struct slab_free_block *free; /* freed blocks of this size */
    char *cur, *end;              /* the uncarved rest of the current chunk */
    size_t next_chunk;            /* size of the next chunk, header included */
};

struct slab {
    struct slab_class classes[SLAB_CLASSES];
    struct slab_chunk *chunks; /* every chunk of every class, to free */
    size_t used, held;
};

static void slab_oom(size_t size)
{
    fprintf(stderr, "rebound: out of memory allocating a slab chunk of %zu bytes\n", size);
    abort();
}

static inline size_t slab_round(size_t size)
{
    return (size + SLAB_ALIGN - 1) & ~(size_t)(SLAB_ALIGN - 1);
}

static struct slab_class *slab_class_of(struct slab *sl, size_t rounded)
{
    if (rounded == 0 || rounded > SLAB_MAX_SIZE) {
        fprintf(stderr, "rebound: slab block of %zu bytes\n", rounded);
        abort();
    }
    return &sl->classes[rounded / SLAB_ALIGN - 1];
}

/* Returns a new empty slab (it allocates on the first block); aborts on
 * OOM. */
struct slab *slab_new(void)
{
    struct slab *sl = calloc(1, sizeof(*sl));

    if (!sl)
        slab_oom(sizeof(*sl));
    for (size_t i = 0; i < SLAB_CLASSES; i++)
        sl->classes[i].next_chunk = SLAB_FIRST_CHUNK;
    return sl;
}

/* Frees every chunk (so every block, given back or not) and the slab.
 * NULL is a no-op. */
void slab_destroy(struct slab *sl)
{
    if (!sl)
        return;
    struct slab_chunk *c = sl->chunks;
    while (c) {
        struct slab_chunk *next = c->next;
        SLAB_UNPOISON(c, c->size);
        free(c);
        c = next;
    }
    free(sl);
}

/* Starts a new chunk for class k, whose blocks are `rounded` bytes. What
 * was left of the previous chunk (less than one block) is abandoned. */
static void slab_grow(struct slab *sl, struct slab_class *k, size_t rounded)
{
    size_t head = slab_round(sizeof(struct slab_chunk));
    size_t size = k->next_chunk;

    if (size < head + rounded)
        size = head + rounded;
    struct slab_chunk *c = malloc(size);
    if (!c)
        slab_oom(size);
    c->next = sl->chunks;
    c->size = size;
    sl->chunks = c;
    sl->held += size;
    k->cur = (char *)c + head;
    k->end = (char *)c + size;
    SLAB_POISON(k->cur, (size_t)(k->end - k->cur));
    if (k->next_chunk < SLAB_MAX_CHUNK)
        k->next_chunk *= 2;
}

/* A block of at least size bytes, aligned to SLAB_ALIGN, with undefined
 * contents; size must be 1..SLAB_MAX_SIZE. Aborts on OOM. */
void *slab_alloc(struct slab *sl, size_t size)
{
    size_t rounded = slab_round(size);
    struct slab_class *k = slab_class_of(sl, rounded);
    void *p;

    if (k->free) {
        struct slab_free_block *b = k->free;
        SLAB_UNPOISON(b, rounded);
        k->free = b->next;
        p = b;
    } else {
        if ((size_t)(k->end - k->cur) < rounded)
            slab_grow(sl, k, rounded);
        p = k->cur;
        k->cur += rounded;
        SLAB_UNPOISON(p, rounded);
    }
    sl->used += rounded;
    return p;
}

/* Gives back p, which slab_alloc returned for the same size. */
void slab_free(struct slab *sl, void *p, size_t size)
{
    size_t rounded = slab_round(size);
    struct slab_class *k = slab_class_of(sl, rounded);
    struct slab_free_block *b = p;

    b->next = k->free;
    k->free = b;
    sl->used -= rounded;
    SLAB_POISON(b, rounded);
}

/* Bytes handed out and not given back, in rounded sizes. */
size_t slab_used(const struct slab *sl)
{
    return sl->used;
}

/* Bytes of chunks held, headers and uncarved rests included. */
size_t slab_held(const struct slab *sl)
{
    return sl->held;
}
