#include "config/addr.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A decimal in [lo, hi] from s[0..n), digits only. Returns 0 or -1. */
static int parse_uint(const char *s, size_t n, long lo, long hi, int *out)
{
    if (n == 0 || n > 10)
        return -1;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* Copies s[0..n) into out (size outlen) with a NUL. Returns 0, or -1 when it does not fit. */
static int copy_out(char *out, size_t outlen, const char *s, size_t n)
{
    if (n >= outlen)
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static void addr_clear(struct addr *a)
{
    a->host[0] = a->path[0] = a->user[0] = a->password[0] = '\0';
    a->port = 0;
    a->db = -1;
}

int addr_parse_listen(const char *s, struct addr *a, char *err, size_t errlen)
{
    addr_clear(a);
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return fail(err, errlen, "\"%.100s\" is not HOST:PORT", s);
    const char *h = s;
    size_t hostlen = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hostlen < 3 || s[hostlen - 1] != ']')
            return fail(err, errlen, "\"%.100s\": an IPv6 address is written [ADDR]:PORT", s);
        h++;
        hostlen -= 2;
    } else if (memchr(s, ':', hostlen)) {
        return fail(err, errlen, "\"%.100s\": write an IPv6 address in brackets, [ADDR]:PORT", s);
    }
    for (const char *c = s; c < colon; c++) {
        if (*c <= ' ' || *c >= 0x7f)
            return fail(err, errlen, "\"%.100s\": the host contains a space or control character", s);
    }
    if (parse_uint(colon + 1, strlen(colon + 1), 1, 65535, &a->port) != 0)
        return fail(err, errlen, "\"%.100s\": the port must be 1..65535", s);
    if (copy_out(a->host, sizeof a->host, h, hostlen) != 0)
        return fail(err, errlen, "\"%.100s\": the host is too long", s);
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Copies s[0..n) into out decoding %XX. Returns 0, or -1 on a bad escape,
 * a decoded NUL, or no room. */
static int percent_decode(char *out, size_t outlen, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (j + 1 >= outlen)
            return -1;
        if (s[i] == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return 0;
}

/* "host", "host:port", "[v6]" or "[v6]:port" from s[0..n). */
static int redis_host_port(const char *s, size_t n, struct addr *a)
{
    const char *h = s;
    size_t hlen;
    const char *rest;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return -1;
        h = s + 1;
        hlen = (size_t)(close - h);
        rest = close + 1;
        if (rest < s + n && *rest != ':')
            return -1;
    } else {
        const char *colon = memchr(s, ':', n);
        hlen = colon ? (size_t)(colon - s) : n;
        rest = s + hlen;
    }
    if (hlen == 0)
        return -1;
    for (size_t i = 0; i < hlen; i++) {
        if (isspace((unsigned char)h[i]) || h[i] == '/' || h[i] == '@')
            return -1;
    }
    a->port = ADDR_REDIS_PORT;
    if (rest < s + n && parse_uint(rest + 1, (size_t)(s + n - rest - 1), 1, 65535, &a->port) != 0)
        return -1; /* rest points at ':' */
    return copy_out(a->host, sizeof a->host, h, hlen);
}

/* The part of a redis:// URL after the scheme. */
static int redis_url(const char *s, struct addr *a)
{
    const char *end = s + strlen(s);
    const char *slash = memchr(s, '/', (size_t)(end - s));
    const char *auth_end = slash ? slash : end;
    /* The last '@' before the path ends the user info (a password may hold
     * '@' only encoded, but be lenient). */
    const char *at = NULL;
    for (const char *p = s; p < auth_end; p++) {
        if (*p == '@')
            at = p;
    }
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (colon) {
            if (colon > s && percent_decode(a->user, sizeof a->user, s, (size_t)(colon - s)) != 0)
                return -1;
            if (percent_decode(a->password, sizeof a->password, colon + 1, (size_t)(at - colon - 1)) != 0)
                return -1;
        } else if (percent_decode(a->password, sizeof a->password, s, (size_t)(at - s)) != 0) {
            return -1; /* "redis://secret@host", as redis-cli reads it */
        }
        s = at + 1;
    }
    if (redis_host_port(s, (size_t)(auth_end - s), a) != 0)
        return -1;
    if (slash && slash + 1 < end && parse_uint(slash + 1, (size_t)(end - slash - 1), 0, 2147483647, &a->db) != 0)
        return -1;
    return 0;
}

int addr_parse_redis(const char *s, struct addr *a, char *err, size_t errlen)
{
    addr_clear(a);
    if (!s || !s[0])
        return fail(err, errlen, "the Redis address is empty");
    if (s[0] == '/') {
        if (copy_out(a->path, sizeof a->path, s, strlen(s)) != 0)
            return fail(err, errlen, "\"%.100s\": the socket path is too long", s);
        return 0;
    }
    static const char scheme[] = "redis://";
    int rc;
    if (strncasecmp(s, scheme, sizeof scheme - 1) == 0)
        rc = redis_url(s + sizeof scheme - 1, a);
    else if (strstr(s, "://"))
        return fail(err, errlen, "\"%.100s\": only redis:// is supported (no TLS)", s);
    else
        rc = redis_host_port(s, strlen(s), a);
    if (rc != 0) {
        addr_clear(a);
        return fail(err, errlen, "\"%.100s\" is not HOST[:PORT], redis://[user:password@]host[:port][/db] or a socket path", s);
    }
    return 0;
}
