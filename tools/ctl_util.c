/*
 * reboundctl's small helpers: messages on stderr, parsing of arguments,
 * writing stdout, and the end of an NDJSON input.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/duration.h"
#include "tools/ctl.h"

void errorf(const char *fmt, ...)
{
    va_list ap;
    fputs("reboundctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int usage_error(const struct ctl *ctl, const char *fmt, ...)
{
    va_list ap;
    fputs("reboundctl: ", stderr);
    if (ctl->cmd)
        fprintf(stderr, "%s: ", ctl->cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (ctl->cmd)
        fprintf(stderr, "\nTry 'reboundctl %s --help'.\n", ctl->cmd);
    else
        fputs("\nTry 'reboundctl --help'.\n", stderr);
    return EXIT_USAGE;
}

void out_of_memory(void)
{
    errorf("out of memory");
    exit(EXIT_IO);
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = malloc((size_t)n + 1);
    if (!s)
        out_of_memory();
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    if (!*s)
        return -1;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

bool reply_option(struct reply_args *a, int c, const char *arg)
{
    switch (c) {
    case O_CODE:
        a->code = arg;
        return true;
    case O_ENHANCED:
        a->enhanced = arg;
        return true;
    case O_TEXT:
        a->text = arg;
        return true;
    default:
        return false;
    }
}

int parse_code(const struct ctl *ctl, const char *arg, long long *code)
{
    if (parse_int(arg, 0, 999, code) < 0)
        return usage_error(ctl, "--code: \"%s\" is not an SMTP reply code", arg);
    return 0;
}

int parse_timeout(const char *s, int64_t *ms)
{
    if (strcmp(s, "0") == 0) {
        *ms = 0;
        return 0;
    }
    return duration_parse(s, ms) == 0 && *ms >= 0 ? 0 : -1;
}

int set_string(json_t *obj, const char *key, const char *value)
{
    if (!value)
        return 0;
    json_t *s = json_string(value);
    if (!s)
        return -1;
    return json_object_set_new(obj, key, s);
}

bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

void put_line(const char *s, size_t n)
{
    fwrite(s, 1, n, stdout);
    if (n == 0 || s[n - 1] != '\n')
        fputc('\n', stdout);
}

int flush_out(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    if (errno != EPIPE)
        errorf("cannot write the output: %s", strerror(errno));
    return -1;
}

int input_end_last_line(struct frame *f)
{
    if (f->len == f->start)
        return 0;
    size_t avail;
    char *p = frame_space(f, 1, &avail);
    if (!p) {
        errorf("out of memory");
        return -1;
    }
    *p = '\n';
    frame_commit(f, 1);
    return 1;
}
