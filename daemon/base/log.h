/* One-line logs on stderr ("reboundd[pid]: warn: ..."); journald adds the
 * time. When stderr is the journal (JOURNAL_STREAM names it), a line is
 * "<4>warn: ..." instead: the priority journald reads, and no identifier,
 * which journald adds itself. */
#ifndef REBOUND_DAEMON_LOG_H
#define REBOUND_DAEMON_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Returns 0, or -1 for an unknown level name. */
int log_set_level_name(const char *name);
void log_set_level(enum log_level level);
/* Decides again whether stderr is the journal (done at the first line; call
 * it after stderr was redirected). */
void log_detect_journal(void);
int log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs and exits(1): for start-up errors and broken invariants. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
