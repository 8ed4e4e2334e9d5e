/*
 * Line framing for the socket protocol: a growable input buffer that hands
 * out complete '\n'-terminated lines and refuses lines over a limit.
 */
#ifndef REBOUND_PROTO_FRAME_H
#define REBOUND_PROTO_FRAME_H

#include <stddef.h>

struct frame {
    char *buf;
    size_t len, cap, start; /* unconsumed bytes are buf[start, len) */
    size_t scanned;         /* bytes from start already known to hold no '\n' */
    size_t max_line;
};

void frame_init(struct frame *f, size_t max_line);
void frame_free(struct frame *f);

/* Space to read into: returns a pointer and sets *avail (at least want
 * bytes unless the line limit makes more useless). */
char *frame_space(struct frame *f, size_t want, size_t *avail);
/* Marks n bytes written into the space returned by frame_space. */
void frame_commit(struct frame *f, size_t n);

/* Returns 1 and sets *line and *len (without the '\n', a trailing '\r' also
 * stripped) for the next complete line; 0 when none is complete yet;
 * -1 when the pending line is longer than max_line (the connection should
 * get an error and be closed). The line stays valid until the next call. */
int frame_next(struct frame *f, const char **line, size_t *len);

#endif
