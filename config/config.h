/*
 * reboundd's configuration: one option table (config.c) drives parsing of
 * the JSON config file, defaults, validation, the -t check and the dump of
 * effective settings. Flags given on the command line override the file.
 */
#ifndef REBOUND_CONFIG_CONFIG_H
#define REBOUND_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config {
    char *listen;          /* "HOST:PORT" for TCP, "" = no TCP; default "127.0.0.1:7411" */
    char *unix_path;       /* Unix socket path, "" = none; default "" (the systemd unit sets /run/rebound/rebound.sock) */
    int unix_mode;         /* default 0660 */
    char *unix_group;      /* "" = the daemon's group */
    char *redis;           /* "HOST:PORT", "redis://[user:pass@]host:port[/db]" or a Unix socket path; default "127.0.0.1:6379" */
    char *redis_user;      /* ACL user, "" = none */
    char *redis_password;  /* "" = none */
    int redis_db;          /* default 0 */
    char *prefix;          /* key prefix, default "rebound:" */
    char *policy;          /* policy file; default: the installed policy.json */
    size_t max_line;       /* default 65536 */
    int max_connections;   /* default 1024 */
    int max_inflight;      /* unanswered requests per connection, default 1024 */
    char *token;           /* shared token, "" = none */
    char *metrics_listen;  /* "HOST:PORT", "" = off */
    char *log_level;       /* "debug" | "info" | "warn" | "error", default "info" */
    long long stream_maxlen; /* approximate cap of the event stream, default 1000000 */
    int fire_batch;        /* retries fired per Redis round trip, default 1000 */
    int64_t redis_timeout_ms; /* connect and command time-out, default 5000 (file key "redis_timeout", a duration) */
    /* What one client may cost (docs/operations.md, "Hostile clients"):
     * durations in ms, 0 = no limit where the table allows it. */
    int64_t auth_timeout_ms;  /* a token is set and no valid auth yet; default 10 s */
    int64_t line_timeout_ms;  /* a started line that does not complete; default 30 s */
    int64_t idle_timeout_ms;  /* no request and not subscribed; default 60 s, 0 = never */
    int error_limit;          /* bad lines before the connection is closed; default 20 */
    int auth_failures;        /* wrong tokens before the connection is closed; default 3 */
    int max_groups;           /* consumer groups at most; default 100 */
    int64_t group_expiry_ms;  /* a group with no subscriber this long is deleted; default 7 d */
    bool allow_remote_without_token; /* serve non-loopback clients with no token set; default false */
    int64_t history_retention_ms; /* how long a finished message's story is kept, default 7 d; 0 = none */
    /* High availability (docs/operations.md): Redis behind Sentinels, and
     * replica acknowledgement of every write batch. */
    char *redis_sentinels;          /* "host:port,host:port,...", "" = no Sentinel (use `redis`) */
    char *redis_master_name;        /* the master's name in the Sentinels, default "mymaster" */
    char *redis_sentinel_password;  /* the Sentinels' own password, "" = none */
    char *redis_cluster;            /* Redis Cluster seeds "host:port,...", "" = no cluster */
    int redis_min_replicas;         /* wait_replicas (its old name, still read: redis_min_replicas): WAIT for this
                                       many replicas after each write batch, 0 = no WAIT */
    int64_t redis_replica_timeout_ms; /* WAIT's time-out, default 1000 (key "redis_replica_timeout") */
    char *instance_id;              /* this instance's name, "" = "<hostname>:<pid>" at start */
    char *advertise;                /* the address peers reach this instance at, "" = listen */
    /* Several reboundd on one Redis: one holds a lease on the schedule and
     * serves it, the others stand by (0 = no lease, one instance alone). */
    int64_t lease_ttl_ms;           /* the lease's time to live (key "lease_ttl"), default 0 */
    bool lease_forward;             /* a standby relays requests to the owner (else: unavailable + owner) */
    /* The schedule in shards by recipient, each with a lease of its own
     * (0 or 1 = one schedule, today's layout). Fixed at creation. */
    int shards;
};

/* The largest max_line accepted: with the default max_connections, 1,024
 * connections each holding a line this long is 1 GiB, and the longest valid
 * request (an ack of 10,000 ids) is about 250 KiB. */
#define CONFIG_MAX_LINE_CAP (1 << 20)

/* Fills cfg with the defaults (strings malloc'd). */
void config_defaults(struct config *cfg, const char *default_policy);
/* Loads path over the current values. Returns 0, or -1 with
 * "file:line:column: what is wrong" in err. */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);
/* The same for a file's text already in memory (len bytes, no NUL needed);
 * path only names it in messages. */
int config_load_text(struct config *cfg, const char *text, size_t len, const char *path, char *err, size_t errlen);
/* Sets one option by name from a string (for command-line flags). Returns
 * 0, or -1 with the reason in err. */
int config_set(struct config *cfg, const char *name, const char *value, char *err, size_t errlen);
/* Checks cross-field constraints. Returns 0 or -1 with err. */
int config_validate(const struct config *cfg, char *err, size_t errlen);
/* Writes the effective settings as JSON (secrets masked). */
void config_dump(const struct config *cfg, FILE *out);
/* Frees the strings of cfg (not cfg itself). */
void config_free(struct config *cfg);

/* For a reload: copies the options that may change at run time from next
 * into cur and returns how many changed. For every option whose value
 * differs, calls changed_cb (may be NULL) with applied = true when it was
 * copied, false when the change needs a restart (cur keeps its value).
 * next stays owned by the caller. */
int config_reload(struct config *cur, const struct config *next,
                  void (*changed_cb)(const char *name, bool applied, void *arg), void *arg);
/* True when the option called name may change on reload. */
bool config_option_reloadable(const char *name);

/* Makes a relative `policy` path relative to the directory of config_path
 * (the file it was read from), as an operator who writes "policy.json"
 * next to reboundd.json means. Absolute paths and a config_path without a
 * directory part are left as they are. Call right after config_load_file,
 * before flags are applied (a flag's relative path is relative to the
 * working directory). Returns 0. */
int config_resolve_paths(struct config *cfg, const char *config_path);
/* addr (a `redis` value) with any password in it replaced by "***", for
 * logs; written into buf, which is returned. */
const char *config_mask_address(const char *addr, char *buf, size_t len);
/* The option name closest to name (at most two edits away), or NULL: for
 * "did you mean" hints. */
const char *config_suggest(const char *name);

#endif
