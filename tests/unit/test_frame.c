/*
 * Unit tests of proto/frame.c: random sets of lines, cut into random
 * chunks, must come out exactly as a plain split of the whole stream
 * would give them; CRLF handling; over-long lines are refused whatever
 * the chunking, as soon as they are certain to be too long; the buffer
 * stays bounded on an endless stream.
 */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/frame.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static size_t rnd_upto(size_t n) /* 0..n */
{
    return (size_t)(rnd() % (n + 1));
}

struct lines {
    char **s;
    size_t *len;
    size_t n, cap;
};

static void lines_add(struct lines *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->s = realloc(l->s, l->cap * sizeof *l->s);
        l->len = realloc(l->len, l->cap * sizeof *l->len);
    }
    l->s[l->n] = malloc(n + 1);
    memcpy(l->s[l->n], s, n);
    l->s[l->n][n] = '\0';
    l->len[l->n++] = n;
}

static void lines_free(struct lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
    free(l->len);
    memset(l, 0, sizeof *l);
}

/* The reference: split on '\n', drop one trailing '\r' per line; the
 * bytes after the last '\n' are not a line. */
static void reference_split(const char *buf, size_t n, struct lines *out)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (buf[i] != '\n')
            continue;
        size_t len = i - start;
        if (len > 0 && buf[i - 1] == '\r')
            len--;
        lines_add(out, buf + start, len);
        start = i + 1;
    }
}

/* Feeds stream through a frame in chunks of random sizes (1..max_chunk
 * bytes, each read asking frame_space for a random amount) and collects
 * the lines. Returns the offset at which frame_next first said -1, or
 * SIZE_MAX. */
static size_t feed(struct frame *f, const char *stream, size_t n, size_t max_chunk, struct lines *out)
{
    size_t off = 0;

    while (off < n) {
        size_t avail, want = 1 + rnd_upto(max_chunk - 1);
        char *p = frame_space(f, want, &avail);
        assert_non_null(p);
        assert_true(avail >= 1);
        size_t chunk = 1 + rnd_upto(max_chunk - 1);
        if (chunk > avail)
            chunk = avail;
        if (chunk > n - off)
            chunk = n - off;
        memcpy(p, stream + off, chunk);
        frame_commit(f, chunk);
        off += chunk;

        const char *line;
        size_t len;
        int rc;
        while ((rc = frame_next(f, &line, &len)) == 1) {
            assert_true(len <= f->max_line);
            lines_add(out, line, len);
        }
        if (rc == -1)
            return off;
        /* what was searched once is not searched again */
        assert_int_equal(f->scanned, f->len - f->start);
    }
    return SIZE_MAX;
}

static void assert_same_lines(const struct lines *got, const struct lines *want)
{
    assert_int_equal(got->n, want->n);
    for (size_t i = 0; i < got->n; i++) {
        if (got->len[i] != want->len[i] || memcmp(got->s[i], want->s[i], got->len[i]) != 0)
            fail_msg("line %zu differs: got %zu bytes, want %zu", i, got->len[i], want->len[i]);
    }
}

/* A random stream of lines of 0..max_line bytes (any byte but '\n'),
 * some ending in "\r\n", and maybe an unterminated tail. */
static char *random_stream(size_t max_line, size_t nlines, size_t *n)
{
    size_t cap = nlines * (max_line + 2) + max_line + 1, o = 0;
    char *s = malloc(cap);

    for (size_t i = 0; i < nlines; i++) {
        size_t len;
        switch (rnd() % 4) {
        case 0: len = 0; break;
        case 1: len = max_line; break;
        default: len = rnd_upto(max_line); break;
        }
        bool crlf = rnd() % 3 == 0;
        for (size_t k = 0; k < len; k++) {
            char c = (char)(rnd() % 256);
            if (c == '\n')
                c = 'n';
            s[o++] = c;
        }
        if (crlf)
            s[o++] = '\r';
        s[o++] = '\n';
    }
    if (rnd() % 2) {
        size_t tail = rnd_upto(max_line);
        for (size_t k = 0; k < tail; k++)
            s[o++] = 'x';
    }
    *n = o;
    return s;
}

static void test_random_chunkings(void **state)
{
    (void)state;
    static const size_t max_lines[] = {1, 2, 7, 64, 1000, 65536};
    for (size_t m = 0; m < sizeof max_lines / sizeof max_lines[0]; m++) {
        size_t max_line = max_lines[m];
        int rounds = max_line >= 65536 ? 20 : 200;
        for (int round = 0; round < rounds; round++) {
            size_t n, nlines = 1 + rnd_upto(max_line >= 65536 ? 20 : 300);
            char *stream = random_stream(max_line, nlines, &n);
            struct lines want = {0}, got = {0};
            struct frame f;
            static const size_t chunks[] = {1, 2, 3, 16, 100, 4096, 100000};

            reference_split(stream, n, &want);
            assert_int_equal(want.n, nlines);
            frame_init(&f, max_line);
            size_t bad = feed(&f, stream, n, chunks[rnd() % (sizeof chunks / sizeof chunks[0])], &got);
            assert_true(bad == SIZE_MAX);
            assert_same_lines(&got, &want);
            /* bounded: a maximal line with its "\r\n", times two at most
             * for the doubling */
            assert_true(f.cap <= 4096 || f.cap < 2 * (max_line + 2));
            frame_free(&f);
            lines_free(&want);
            lines_free(&got);
            free(stream);
        }
    }
}

static void test_crlf(void **state)
{
    (void)state;
    const char stream[] = "a\r\nb\n\r\n\n\r\rc\r\n\rd\ne\r";
    struct frame f;
    const char *line;
    size_t len, avail;

    frame_init(&f, 100);
    char *p = frame_space(&f, sizeof stream - 1, &avail);
    assert_true(avail >= sizeof stream - 1);
    memcpy(p, stream, sizeof stream - 1);
    frame_commit(&f, sizeof stream - 1);

    static const char *const want[] = {"a", "b", "", "", "\r\rc", "\rd"};
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(frame_next(&f, &line, &len), 1);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(line, want[i], len);
    }
    /* "e\r" waits for its '\n' */
    assert_int_equal(frame_next(&f, &line, &len), 0);
    p = frame_space(&f, 1, &avail);
    *p = '\n';
    frame_commit(&f, 1);
    assert_int_equal(frame_next(&f, &line, &len), 1);
    assert_int_equal(len, 1);
    assert_memory_equal(line, "e", 1);
    assert_int_equal(frame_next(&f, &line, &len), 0);
    frame_free(&f);
}

/* Feeds a stream whose line number `which` is too long and checks that -1
 * comes exactly when the line is certain to be too long, and not before. */
static void check_overlong(size_t max_line, size_t content, bool crlf, size_t max_chunk)
{
    struct lines got = {0};
    struct frame f;
    size_t n = 0;
    char *s = malloc(3 * (max_line + 2) + content + 8);

    /* a good line, then the long one, then another good line */
    memset(s, 'a', max_line);
    n = max_line;
    s[n++] = '\n';
    size_t long_start = n;
    memset(s + n, 'b', content);
    n += content;
    if (crlf)
        s[n++] = '\r';
    s[n++] = '\n';
    memcpy(s + n, "ok\n", 3);
    n += 3;

    frame_init(&f, max_line);
    size_t at = feed(&f, s, n, max_chunk, &got);
    /* certain once the line holds max_line + 2 bytes, or max_line + 1 of
     * which the last is not '\r' */
    size_t certain = long_start + max_line + 1;
    if (crlf && content == max_line)
        certain++; /* "bbb\r" could still be a max_line line ending "\r\n" */
    assert_true(at != SIZE_MAX);
    if (at < certain)
        fail_msg("max_line %zu content %zu: -1 at byte %zu, before it was certain at %zu", max_line, content, at,
                 certain);
    /* and no later than the chunk that brought the certain byte in */
    assert_true(at - certain < max_chunk);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.len[0], max_line);
    /* it stays -1 */
    const char *line;
    size_t len;
    assert_int_equal(frame_next(&f, &line, &len), -1);
    assert_int_equal(frame_next(&f, &line, &len), -1);
    frame_free(&f);
    lines_free(&got);
    free(s);
}

static void test_overlong(void **state)
{
    (void)state;
    static const size_t max_lines[] = {1, 5, 100, 65536};
    for (size_t m = 0; m < sizeof max_lines / sizeof max_lines[0]; m++) {
        size_t ml = max_lines[m];
        for (int round = 0; round < 20; round++) {
            size_t extra = 1 + rnd_upto(ml > 1000 ? 5000 : 3 * ml);
            size_t chunk = 1 + rnd_upto(ml > 1000 ? 70000 : 2 * ml + 3);
            check_overlong(ml, ml + extra, rnd() % 2, chunk);
            check_overlong(ml, ml + 1, rnd() % 2, chunk);
        }
    }
}

/* A line of exactly max_line bytes passes, with "\n" and with "\r\n",
 * whatever the chunking; one byte more does not. */
static void test_exact_limit(void **state)
{
    (void)state;
    for (int round = 0; round < 200; round++) {
        size_t ml = 1 + rnd_upto(300);
        for (int crlf = 0; crlf < 2; crlf++) {
            for (int over = 0; over < 2; over++) {
                size_t content = ml + (size_t)over;
                char *s = malloc(content + 2);
                memset(s, 'z', content);
                size_t n = content;
                if (crlf)
                    s[n++] = '\r';
                s[n++] = '\n';
                struct frame f;
                struct lines got = {0};
                frame_init(&f, ml);
                size_t at = feed(&f, s, n, 1 + rnd_upto(ml + 3), &got);
                if (over) {
                    assert_true(at != SIZE_MAX);
                    assert_int_equal(got.n, 0);
                } else {
                    assert_true(at == SIZE_MAX);
                    assert_int_equal(got.n, 1);
                    assert_int_equal(got.len[0], ml);
                }
                frame_free(&f);
                lines_free(&got);
                free(s);
            }
        }
    }
}

/* An endless stream of short lines in reads that never end on a line
 * boundary: the buffer must stay small (compaction works). */
static void test_bounded_on_endless_stream(void **state)
{
    (void)state;
    struct frame f;
    const char *pattern = "{\"op\":\"ping\"}\n{\"op\":\"stats\",\"req\":12345}\r\n";
    size_t plen = strlen(pattern), pos = 0, lines = 0;

    frame_init(&f, 65536);
    for (int i = 0; i < 200000; i++) {
        size_t avail;
        /* reads of the pattern's length, out of step with it: no read
         * ever ends on a line end, so the buffer never simply empties */
        size_t want = i == 0 ? 5 : plen;
        char *p = frame_space(&f, want, &avail);
        /* consumed bytes are dropped once they pass half the buffer */
        assert_true(f.start <= f.cap / 2);
        size_t chunk = want < avail ? want : avail;
        for (size_t k = 0; k < chunk; k++)
            p[k] = pattern[pos++ % plen];
        frame_commit(&f, chunk);
        const char *line;
        size_t len;
        int rc;
        while ((rc = frame_next(&f, &line, &len)) == 1) {
            assert_true(len == 13 || len == 26);
            assert_int_equal(line[0], '{');
            assert_int_equal(line[len - 1], '}');
            lines++;
        }
        assert_int_equal(rc, 0);
    }
    assert_true(f.cap <= 8192);
    assert_true(lines >= 2 * 200000 - 2);
    frame_free(&f);
}

/* frame_space gives at least what is asked while that could still be
 * part of a line within the limit, and always at least one byte. */
static void test_space(void **state)
{
    (void)state;
    struct frame f;
    size_t avail;
    char *p;

    frame_init(&f, 1000000);
    p = frame_space(&f, 300000, &avail);
    assert_non_null(p);
    assert_true(avail >= 300000);
    frame_free(&f);

    /* with a small limit, a huge want is cut to what a line can use */
    frame_init(&f, 10);
    p = frame_space(&f, 1u << 30, &avail);
    assert_non_null(p);
    assert_true(avail >= 12);
    assert_true(f.cap < (1u << 20));
    frame_free(&f);

    /* an empty frame has nothing to give */
    const char *line;
    size_t len;
    frame_init(&f, 10);
    assert_int_equal(frame_next(&f, &line, &len), 0);
    frame_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_chunkings),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_exact_limit),
        cmocka_unit_test(test_bounded_on_endless_stream),
        cmocka_unit_test(test_space),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
