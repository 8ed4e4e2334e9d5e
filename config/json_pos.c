/*
 * A small JSON scanner that tracks line and column, for error messages.
 *
 * It only has to walk text that jansson already accepted (or, for syntax
 * errors, it is not asked), so it is lenient where that costs nothing: it
 * skips scalars up to the next delimiter without checking them. Columns
 * count characters, not bytes (UTF-8 continuation bytes do not advance the
 * column), which is how jansson counts them in its own error positions.
 */
#include "config/json_pos.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct scan {
    const char *p, *end;
    int line, col;
};

/* Keys longer than this never match a path element. */
#define KEY_MAX 512

static void adv(struct scan *s)
{
    unsigned char c = (unsigned char)*s->p++;

    if (c == '\n') {
        s->line++;
        s->col = 1;
    } else if ((c & 0xC0) != 0x80) {
        s->col++;
    }
}

static bool at_end(const struct scan *s) { return s->p >= s->end; }

static void skip_ws(struct scan *s)
{
    while (!at_end(s) && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        adv(s);
}

static int hex4(const struct scan *s, const char *p, unsigned *out)
{
    unsigned v = 0;

    if (s->end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_byte(char *buf, size_t *n, bool *overflow, unsigned char c)
{
    if (*n + 1 >= KEY_MAX) {
        *overflow = true;
        return;
    }
    buf[(*n)++] = (char)c;
}

static void put_utf8(char *buf, size_t *n, bool *overflow, uint32_t cp)
{
    if (cp < 0x80) {
        put_byte(buf, n, overflow, (unsigned char)cp);
    } else if (cp < 0x800) {
        put_byte(buf, n, overflow, (unsigned char)(0xC0 | (cp >> 6)));
        put_byte(buf, n, overflow, (unsigned char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        put_byte(buf, n, overflow, (unsigned char)(0xE0 | (cp >> 12)));
        put_byte(buf, n, overflow, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
        put_byte(buf, n, overflow, (unsigned char)(0x80 | (cp & 0x3F)));
    } else {
        put_byte(buf, n, overflow, (unsigned char)(0xF0 | (cp >> 18)));
        put_byte(buf, n, overflow, (unsigned char)(0x80 | ((cp >> 12) & 0x3F)));
        put_byte(buf, n, overflow, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
        put_byte(buf, n, overflow, (unsigned char)(0x80 | (cp & 0x3F)));
    }
}

/* Reads a string starting at its opening quote and leaves s after the
 * closing one. With buf, decodes it (escapes resolved, NUL-terminated);
 * *overflow is set when it did not fit. Returns 0, or -1 on bad text. */
static int scan_string(struct scan *s, char *buf, bool *overflow)
{
    size_t n = 0;

    adv(s); /* the opening quote */
    while (!at_end(s)) {
        char c = *s->p;
        if (c == '"') {
            adv(s);
            if (buf != NULL)
                buf[n] = '\0';
            return 0;
        }
        if (c != '\\') {
            if (buf != NULL)
                put_byte(buf, &n, overflow, (unsigned char)c);
            adv(s);
            continue;
        }
        adv(s);
        if (at_end(s))
            return -1;
        c = *s->p;
        adv(s);
        uint32_t cp;
        switch (c) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (hex4(s, s->p, &u) < 0)
                return -1;
            for (int i = 0; i < 4; i++)
                adv(s);
            cp = u;
            /* A high surrogate followed by an escaped low one is one
             * character; a lone surrogate is kept as is (it never
             * equals a path element anyway). */
            if (u >= 0xD800 && u <= 0xDBFF && s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' &&
                hex4(s, s->p + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                for (int i = 0; i < 6; i++)
                    adv(s);
                cp = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            break;
        }
        default:
            return -1;
        }
        if (buf != NULL)
            put_utf8(buf, &n, overflow, cp);
    }
    return -1;
}

static int skip_value(struct scan *s, int nest);

static int skip_container(struct scan *s, char close, int nest)
{
    bool is_object = close == '}';

    if (nest > 1000)
        return -1;
    adv(s);
    skip_ws(s);
    if (!at_end(s) && *s->p == close) {
        adv(s);
        return 0;
    }
    for (;;) {
        skip_ws(s);
        if (is_object) {
            if (at_end(s) || *s->p != '"' || scan_string(s, NULL, NULL) < 0)
                return -1;
            skip_ws(s);
            if (at_end(s) || *s->p != ':')
                return -1;
            adv(s);
        }
        if (skip_value(s, nest + 1) < 0)
            return -1;
        skip_ws(s);
        if (at_end(s))
            return -1;
        if (*s->p == close) {
            adv(s);
            return 0;
        }
        if (*s->p != ',')
            return -1;
        adv(s);
    }
}

/* Skips one value (leading white space included). Returns 0 or -1. */
static int skip_value(struct scan *s, int nest)
{
    skip_ws(s);
    if (at_end(s))
        return -1;
    switch (*s->p) {
    case '{':
        return skip_container(s, '}', nest);
    case '[':
        return skip_container(s, ']', nest);
    case '"':
        return scan_string(s, NULL, NULL);
    default: {
        const char *start = s->p;
        while (!at_end(s) && strchr(",]} \t\r\n", *s->p) == NULL)
            adv(s);
        return s->p > start ? 0 : -1;
    }
    }
}

/* Parses "[n]" into *idx. Returns 0, or -1 when elem is not an index. */
static int parse_index(const char *elem, size_t *idx)
{
    char *endp;

    if (elem[0] != '[' || elem[1] < '0' || elem[1] > '9')
        return -1;
    unsigned long long v = strtoull(elem + 1, &endp, 10);
    if (endp[0] != ']' || endp[1] != '\0')
        return -1;
    *idx = (size_t)v;
    return 0;
}

/* Moves s to the value (or, for "~key" as the last element, the key) of
 * the member named by elem in the object s is at. Returns 1 when it stopped
 * at a key, 0 at a value, -1 when not found. */
static int enter_object(struct scan *s, const char *elem, bool last)
{
    bool want_key = elem[0] == '~';
    const char *name = want_key ? elem + 1 : elem;
    char key[KEY_MAX];

    adv(s);
    for (;;) {
        skip_ws(s);
        if (at_end(s) || *s->p != '"')
            return -1;
        struct scan key_at = *s;
        bool overflow = false;
        if (scan_string(s, key, &overflow) < 0)
            return -1;
        bool match = !overflow && strcmp(key, name) == 0;
        skip_ws(s);
        if (at_end(s) || *s->p != ':')
            return -1;
        adv(s);
        if (match) {
            if (want_key && last) {
                *s = key_at;
                return 1;
            }
            return 0;
        }
        if (skip_value(s, 0) < 0)
            return -1;
        skip_ws(s);
        if (at_end(s) || *s->p != ',')
            return -1; /* '}' or garbage: the key is not there */
        adv(s);
    }
}

static int enter_array(struct scan *s, const char *elem)
{
    size_t want;

    if (parse_index(elem, &want) < 0)
        return -1;
    adv(s);
    for (size_t i = 0;; i++) {
        skip_ws(s);
        if (at_end(s) || *s->p == ']')
            return -1;
        if (i == want)
            return 0;
        if (skip_value(s, 0) < 0)
            return -1;
        skip_ws(s);
        if (at_end(s) || *s->p != ',')
            return -1;
        adv(s);
    }
}

/* Finds the value (or key, "~key") at path. Returns 0 with *line and *col
 * 1-based, or -1 with both set to 1. text need not be NUL-terminated. */
int json_pos_find(const char *text, size_t len, const char *const *path, int depth, int *line, int *col)
{
    struct scan s = {text, text + len, 1, 1};

    *line = 1;
    *col = 1;
    if (text == NULL)
        return -1;
    for (int i = 0; i < depth; i++) {
        int r;
        skip_ws(&s);
        if (at_end(&s) || path[i] == NULL)
            return -1;
        if (*s.p == '{')
            r = enter_object(&s, path[i], i == depth - 1);
        else if (*s.p == '[')
            r = enter_array(&s, path[i]);
        else
            r = -1;
        if (r < 0)
            return -1;
        if (r == 1)
            break;
    }
    skip_ws(&s);
    if (at_end(&s))
        return -1;
    *line = s.line;
    *col = s.col;
    return 0;
}
