/*
 * Line framing. Bytes are read straight into the buffer (frame_space,
 * frame_commit) and lines are handed out as pointers into it, so a line is
 * never copied. Three rules keep it cheap and bounded:
 *
 * - `scanned` remembers how far the pending partial line has been searched
 *   for '\n', so a long line arriving in many small reads is scanned once,
 *   not once per read.
 * - Consumed bytes are dropped by moving the pending tail to the front,
 *   but only when the consumed part passes half the buffer (or when the
 *   space asked for is missing): each byte is moved O(1) times on average.
 * - A pending line that can no longer fit the limit is reported as soon as
 *   that is certain, before its '\n' arrives, and the buffer never grows
 *   beyond what one line of the maximum length needs plus one read.
 */
#include "proto/frame.h"

#include <stdlib.h>
#include <string.h>

#define FRAME_MIN_CAP 4096

void frame_init(struct frame *f, size_t max_line)
{
    memset(f, 0, sizeof *f);
    f->max_line = max_line;
}

void frame_free(struct frame *f)
{
    free(f->buf);
    memset(f, 0, sizeof *f);
}

static void frame_compact(struct frame *f)
{
    size_t pending = f->len - f->start;

    if (f->start == 0)
        return;
    if (pending > 0)
        memmove(f->buf, f->buf + f->start, pending);
    f->start = 0;
    f->len = pending;
}

/*
 * Returns where to read to, and in *avail how many bytes fit there. The
 * pointer is valid until the next frame_* call. Returns NULL (and 0) only
 * when memory runs out. Gives fewer than want bytes only when the pending
 * partial line is so long that want more bytes could not complete a line
 * within the limit anyway (at least 1 byte is always given).
 */
char *frame_space(struct frame *f, size_t want, size_t *avail)
{
    size_t pending = f->len - f->start;
    size_t useful = f->max_line + 2 > pending ? f->max_line + 2 - pending : 1; /* line + "\r\n" */

    if (want > useful)
        want = useful;
    if (want == 0)
        want = 1;
    if (f->start == f->len)
        f->start = f->len = 0;
    else if (f->start > f->cap / 2 || f->cap - f->len < want)
        frame_compact(f);
    if (f->cap - f->len < want) {
        size_t cap = f->cap ? f->cap : FRAME_MIN_CAP;
        while (cap - f->len < want)
            cap *= 2;
        char *p = realloc(f->buf, cap);
        if (p == NULL) {
            *avail = 0;
            return NULL;
        }
        f->buf = p;
        f->cap = cap;
    }
    *avail = f->cap - f->len;
    return f->buf + f->len;
}

void frame_commit(struct frame *f, size_t n)
{
    f->len += n;
}

int frame_next(struct frame *f, const char **line, size_t *len)
{
    size_t pending = f->len - f->start;
    char *nl = NULL;

    if (pending > f->scanned)
        nl = memchr(f->buf + f->start + f->scanned, '\n', pending - f->scanned);
    if (nl == NULL) {
        f->scanned = pending;
        /* The line will be at least pending bytes, or pending - 1 if the
         * last one is the '\r' of a "\r\n". */
        if (pending > f->max_line + 1 ||
            (pending == f->max_line + 1 && f->buf[f->len - 1] != '\r'))
            return -1;
        return 0;
    }

    char *s = f->buf + f->start;
    size_t n = (size_t)(nl - s);
    if (n > 0 && s[n - 1] == '\r')
        n--;
    if (n > f->max_line) {
        /* Left in place: every later call answers -1 again. */
        f->scanned = (size_t)(nl - s);
        return -1;
    }
    *line = s;
    *len = n;
    f->start += (size_t)(nl - s) + 1;
    f->scanned = 0;
    return 1;
}
