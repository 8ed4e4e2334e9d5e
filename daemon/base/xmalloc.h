/* Allocation that cannot fail: on OOM the daemon logs and aborts, so call
 * sites stay clean (a half-handled OOM in a scheduler is worse than a
 * restart, which loses nothing: Redis holds the state). */
#ifndef REBOUND_DAEMON_XMALLOC_H
#define REBOUND_DAEMON_XMALLOC_H

#include <stddef.h>

/* Logs that n bytes could not be had, and aborts: the one out-of-memory
 * exit, for the places that allocate through another library (a memstream,
 * hiredis). */
void xmalloc_failed(size_t n) __attribute__((noreturn));

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
