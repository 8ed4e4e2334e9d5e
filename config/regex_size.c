/*
 * A one-pass measure of a POSIX extended regular expression's size after
 * its repetitions are copied out (config/regex_size.h). It tokenizes as
 * regcomp does for the constructs that change the count (escapes, bracket
 * expressions, groups, alternation, the four quantifiers) and treats
 * anything else as one position.
 */
#include "config/regex_size.h"

#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>

/* Deeper nesting is refused by regcomp long before this matters; past it
 * the groups are counted as if flattened, which only overestimates. */
#define MAX_DEPTH 64

struct level {
    uint64_t total; /* positions of what is closed at this level */
    uint64_t last;  /* of the last atom, the one a quantifier applies to */
};

static uint64_t add(uint64_t a, uint64_t b, uint64_t limit)
{
    return a > limit - b ? limit : a + b;
}

static uint64_t mul(uint64_t a, uint64_t b, uint64_t limit)
{
    if (a != 0 && b > limit / a)
        return limit;
    return a * b;
}

/* The end of a bracket expression that starts at p ('['), or p + 1 when it
 * does not close (regcomp then refuses the pattern). */
static const char *bracket_end(const char *p)
{
    const char *q = p + 1;
    if (*q == '^')
        q++;
    if (*q == ']') /* a leading ']' is a member, not the end */
        q++;
    while (*q != '\0' && *q != ']') {
        if (q[0] == '[' && (q[1] == ':' || q[1] == '.' || q[1] == '=')) {
            char kind = q[1];
            const char *r = q + 2;
            while (*r != '\0' && !(r[0] == kind && r[1] == ']'))
                r++;
            if (*r == '\0')
                return p + 1;
            q = r + 2;
            continue;
        }
        q++;
    }
    return *q == ']' ? q + 1 : p + 1;
}

/* Reads an interval "{m}", "{m,}", "{m,n}" or "{,n}" at p. Returns the end
 * and sets *times to how many copies it makes, or returns NULL when p does
 * not start a well-formed interval (it is then an ordinary character). */
static const char *interval(const char *p, uint64_t *times, uint64_t limit)
{
    uint64_t m = 0, n = 0;
    bool has_m = false, has_comma = false, has_n = false;
    const char *q = p + 1;
    for (; isdigit((unsigned char)*q); q++, has_m = true)
        m = add(mul(m, 10, limit), (uint64_t)(*q - '0'), limit);
    if (*q == ',') {
        has_comma = true;
        for (q++; isdigit((unsigned char)*q); q++, has_n = true)
            n = add(mul(n, 10, limit), (uint64_t)(*q - '0'), limit);
    }
    if (*q != '}' || (!has_m && !has_n))
        return NULL;
    if (!has_comma)
        *times = m;
    else if (!has_n)
        *times = add(m, 1, limit);
    else
        *times = n;
    return q + 1;
}

uint64_t regex_positions(const char *pattern, uint64_t cap)
{
    /* Counting saturates at limit, so every sum and product stays defined. */
    const uint64_t limit = cap < UINT64_MAX ? cap + 1 : cap;
    struct level stack[MAX_DEPTH + 1] = {{0, 0}};
    int depth = 0;
    const char *p = pattern;

    while (*p != '\0') {
        struct level *lv = &stack[depth];
        if (lv->total >= limit)
            return limit;
        uint64_t times;
        const char *end;
        switch (*p) {
        case '(':
            if (depth < MAX_DEPTH) {
                stack[++depth] = (struct level){0, 0};
            } else {
                lv->total = add(lv->total, 1, limit);
                lv->last = 1;
            }
            p++;
            continue;
        case ')':
            if (depth > 0) {
                uint64_t group = add(lv->total, 1, limit);
                depth--;
                stack[depth].total = add(stack[depth].total, group, limit);
                stack[depth].last = group;
            } else {
                lv->total = add(lv->total, 1, limit);
                lv->last = 1;
            }
            p++;
            continue;
        case '|':
            lv->last = 0;
            p++;
            continue;
        case '*':
        case '?':
            p++;
            continue;
        case '+':
            times = 2;
            end = p + 1;
            break;
        case '{':
            end = interval(p, &times, limit);
            if (end != NULL)
                break;
            lv->total = add(lv->total, 1, limit);
            lv->last = 1;
            p++;
            continue;
        case '[':
            lv->total = add(lv->total, 1, limit);
            lv->last = 1;
            p = bracket_end(p);
            continue;
        case '\\':
            lv->total = add(lv->total, 1, limit);
            lv->last = 1;
            p += p[1] != '\0' ? 2 : 1;
            continue;
        default:
            lv->total = add(lv->total, 1, limit);
            lv->last = 1;
            p++;
            continue;
        }
        /* A quantifier: the last atom counts `times` over instead of once. */
        uint64_t grown = mul(lv->last, times, limit);
        lv->total = add(lv->total - lv->last, grown, limit);
        lv->last = grown;
        p = end;
    }
    /* Groups left open (regcomp refuses them) still count. */
    while (depth > 0) {
        uint64_t group = add(stack[depth].total, 1, limit);
        depth--;
        stack[depth].total = add(stack[depth].total, group, limit);
    }
    return stack[0].total;
}

bool regex_has_backref(const char *pattern)
{
    for (const char *p = pattern; *p != '\0';) {
        if (*p == '[') {
            p = bracket_end(p);
        } else if (*p == '\\') {
            if (p[1] >= '1' && p[1] <= '9')
                return true;
            p += p[1] != '\0' ? 2 : 1;
        } else {
            p++;
        }
    }
    return false;
}
