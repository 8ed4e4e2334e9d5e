#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_set_level_name(const char *name)
{
    for (int i = 0; i <= LOG_ERROR; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            min_level = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_set_level(enum log_level level)
{
    min_level = level;
}

int log_enabled(enum log_level level)
{
    return level >= min_level;
}

/* Syslog priorities of the levels (debug 7, info 6, warning 4, err 3). */
static const int level_priorities[] = {7, 6, 4, 3};

/* -1 until the first line decides: 1 when stderr is the journal. */
static int to_journal = -1;

/* systemd sets JOURNAL_STREAM to "<dev>:<inode>" of the stream it connects
 * to stderr; only when stderr still is that stream (not redirected by a
 * wrapper or the shell) does journald read the lines, so only then do they
 * carry a "<N>" priority prefix that journald turns into the priority, and
 * no "reboundd[pid]:", which journald records already (SYSLOG_IDENTIFIER,
 * _PID) and would show twice. */
static int stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_detect_journal(void)
{
    to_journal = stderr_is_journal();
}

static void vlog(enum log_level level, const char *fmt, va_list ap)
{
    /* One write per line so lines from a crash or a signal never interleave. */
    char line[2048];
    if (to_journal < 0)
        log_detect_journal();
    int n = to_journal ? snprintf(line, sizeof line, "<%d>%s: ", level_priorities[level], level_names[level])
                       : snprintf(line, sizeof line, "reboundd[%d]: %s: ", (int)getpid(), level_names[level]);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
