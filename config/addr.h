/*
 * The one parser of network addresses: a listener's "HOST:PORT" and the
 * Redis address (HOST[:PORT], redis://..., or a Unix socket path). The
 * config check, the listeners and the Redis link all read addresses through
 * it, so an address the config check accepts is one the daemon can use.
 * Pure: libc only, no allocation.
 */
#ifndef REBOUND_CONFIG_ADDR_H
#define REBOUND_CONFIG_ADDR_H

#include <stddef.h>

#define ADDR_HOST_MAX 256
#define ADDR_PATH_MAX 1024
#define ADDR_USER_MAX 256
#define ADDR_PASSWORD_MAX 1024
#define ADDR_REDIS_PORT 6379

struct addr {
    char host[ADDR_HOST_MAX];         /* IPv6 without its brackets; "" for a Unix socket */
    int port;                         /* 1..65535, or 0 for a Unix socket */
    char path[ADDR_PATH_MAX];         /* Unix socket path, or "" */
    char user[ADDR_USER_MAX];         /* redis:// ACL user, or "" */
    char password[ADDR_PASSWORD_MAX]; /* redis:// password, or "" for none */
    int db;                           /* redis:// database, or -1 when none is given */
};

/* Parses a listener's "HOST:PORT": HOST a name, an IPv4 address or
 * "[IPv6]" (an unbracketed IPv6 address is refused, as is a space or
 * control character in HOST); PORT 1..65535. Returns 0 with *a filled, or
 * -1 with the reason in err (which quotes s). */
int addr_parse_listen(const char *s, struct addr *a, char *err, size_t errlen);

/* Parses the Redis address: "HOST", "HOST:PORT", "[v6]", "[v6]:PORT",
 * "redis://[user[:password]@]host[:port][/db]" (user and password
 * %-decoded; "redis://secret@host" is a password alone, as redis-cli reads
 * it), or a path starting with '/' (a Unix socket). The port defaults to
 * 6379. Returns 0 with *a filled, or -1 with the reason in err. */
int addr_parse_redis(const char *s, struct addr *a, char *err, size_t errlen);

#endif
