/*
 * Small fixed-size blocks for objects that exist by the million (schedule
 * entries): sizes rounded up to 8 bytes, carved from large chunks, with no
 * header per block. Freed blocks are reused by later blocks of the same
 * rounded size; chunks are given back only when the slab is destroyed.
 */
#ifndef REBOUND_QUEUE_SLAB_H
#define REBOUND_QUEUE_SLAB_H

#include <stddef.h>

#define SLAB_ALIGN 8
#define SLAB_MAX_SIZE 512 /* largest block; larger requests abort */

struct slab;

/* Returns a new empty slab; aborts on OOM. */
struct slab *slab_new(void);
/* Frees every chunk, so every block still allocated, and the slab. NULL is
 * a no-op. */
void slab_destroy(struct slab *sl);

/* A block of at least size bytes (1..SLAB_MAX_SIZE), aligned to
 * SLAB_ALIGN, contents undefined. Aborts on OOM. */
void *slab_alloc(struct slab *sl, size_t size);
/* Gives back p, from slab_alloc with the same size. */
void slab_free(struct slab *sl, void *p, size_t size);

/* Bytes of blocks handed out and not freed (rounded sizes), and bytes of
 * chunks held. */
size_t slab_used(const struct slab *sl);
size_t slab_held(const struct slab *sl);

#endif
