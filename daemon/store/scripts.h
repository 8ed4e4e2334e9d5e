/* The Lua scripts the store runs, embedded at build time from
 * daemon/store/scripts/ (store/embed.cmake): no installed file can drift
 * from the binary. */
#ifndef REBOUND_DAEMON_SCRIPTS_H
#define REBOUND_DAEMON_SCRIPTS_H

/* Their numbers in redis_link_opts.scripts (the link loads each by SHA). */
enum script_id { SCRIPT_APPLY, SCRIPT_FIRE, SCRIPT_GET, SCRIPT__COUNT };

extern const char script_apply[];
extern const char script_fire[];
extern const char script_get[];

/* Run with EVAL, not loaded by SHA (rare: once per group per connect). */
extern const char script_group[];

#endif
