#include "net/server.h"

#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/daemon.h"
#include "base/log.h"
#include "config/addr.h"
#include "net/conn.h"
#include "net/ratelog.h"

/* Descriptors the daemon needs besides its clients': stdio, the loop's
 * own (epoll, signals, async, timerfd), listeners, Redis, the metrics
 * listener and its scrapes, and room to accept one more to refuse it. */
#define FD_OWN_NEED 64

static struct ratelog rl_accept;

static uv_tcp_t tcp_listener;
static uv_pipe_t unix_listener;
static bool have_tcp, have_unix;

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        /* Out of descriptors all the same (something besides the clients
         * holds them): libuv accepted and closed what was waiting with its
         * reserve descriptor. Counted, and logged at most once a period. */
        if (status == UV_EMFILE || status == UV_ENFILE) {
            rbd->conns_refused++;
            conn_refused_nofile++;
        }
        ratelog_warn(&rl_accept, "accept: %s", uv_strerror(status));
        return;
    }
    conn_accept(server, server == (uv_stream_t *)&unix_listener);
}

static int start_tcp(const char *listen)
{
    struct addr a;
    char why[200];
    struct sockaddr_storage addr;
    if (addr_parse_listen(listen, &a, why, sizeof why) != 0) {
        log_error("listen: %s", why);
        return -1;
    }
    const char *host = a.host;
    int port = a.port;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        log_error("listen: \"%s\" is not an IP address", host);
        return -1;
    }
    uv_tcp_init(rbd->loop, &tcp_listener);
    have_tcp = true;
    int rc = uv_tcp_bind(&tcp_listener, (struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&tcp_listener, 511, on_connection);
    if (rc != 0) {
        log_error("listen: %s: %s", listen, uv_strerror(rc));
        return -1;
    }
    if (strncmp(host, "127.", 4) != 0 && strcmp(host, "::1") != 0 && strcmp(host, "localhost") != 0 &&
        rbd->cfg.token[0] == '\0') {
        if (rbd->cfg.allow_remote_without_token)
            log_warn("listen: %s is not loopback and no token is configured: anyone who can reach it can "
                     "change the schedule (allow_remote_without_token)",
                     listen);
        else
            log_warn("listen: %s is not loopback and no token is configured: only loopback clients will "
                     "be served (protected mode; set a token)",
                     listen);
    }
    log_info("listening on %s", listen);
    return 0;
}

/* Whether something accepts connections on the Unix socket at path: a
 * live daemon, whose socket must not be taken over. */
static bool socket_answers(const char *path)
{
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof sa.sun_path)
        return false;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    /* EAGAIN: listening with a full backlog, alive all the same. */
    return rc == 0 || e == EAGAIN;
}

static int start_unix(const char *path)
{
    struct stat st;
    /* A socket left by a previous run that died; never remove other files,
     * nor the socket of a daemon that still answers on it. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        if (socket_answers(path)) {
            log_error("listen: %s: another process (a running reboundd?) answers on this socket; "
                      "not taking it over",
                      path);
            return -1;
        }
        unlink(path);
    }
    uv_pipe_init(rbd->loop, &unix_listener, 0);
    have_unix = true;
    /* Created owner-only: between bind() and chmod() nobody else may
     * connect; unix_mode then opens it as configured. */
    mode_t old = umask(0177);
    int rc = uv_pipe_bind(&unix_listener, path);
    umask(old);
    if (rc == 0 && chmod(path, (mode_t)rbd->cfg.unix_mode) != 0)
        log_warn("unix socket %s: chmod: %s", path, strerror(errno));
    if (rc == 0 && rbd->cfg.unix_group[0]) {
        struct group *gr = getgrnam(rbd->cfg.unix_group);
        if (!gr || chown(path, (uid_t)-1, gr->gr_gid) != 0)
            log_warn("unix socket %s: cannot give it group %s", path, rbd->cfg.unix_group);
    }
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&unix_listener, 511, on_connection);
    if (rc != 0) {
        log_error("listen: %s: %s", path, uv_strerror(rc));
        return -1;
    }
    log_info("listening on %s", path);
    return 0;
}

/* Raises the soft descriptor limit towards what max_connections needs and
 * tells the connections how many the limit leaves room for; says so when
 * that is fewer than max_connections. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)rbd->cfg.max_connections + FD_OWN_NEED;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rlim_t to = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        struct rlimit nl = {to, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
            rl.rlim_cur = to;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want) {
        conn_fd_room = 0;
        return;
    }
    conn_fd_room = rl.rlim_cur > FD_OWN_NEED ? (int)(rl.rlim_cur - FD_OWN_NEED) : 1;
    log_warn("the descriptor limit (RLIMIT_NOFILE %llu, hard %llu) is below max_connections %d + %d: at most %d "
             "clients; the others get busy (raise LimitNOFILE or ulimit -n)",
             (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, rbd->cfg.max_connections,
             FD_OWN_NEED, conn_fd_room);
}

int server_start(void)
{
    raise_nofile();
    if (rbd->cfg.listen[0] && start_tcp(rbd->cfg.listen) != 0)
        return -1;
    if (rbd->cfg.unix_path[0] && start_unix(rbd->cfg.unix_path) != 0)
        return -1;
    return 0;
}

void server_stop(void)
{
    if (have_tcp && !uv_is_closing((uv_handle_t *)&tcp_listener))
        uv_close((uv_handle_t *)&tcp_listener, NULL);
    if (have_unix && !uv_is_closing((uv_handle_t *)&unix_listener)) {
        uv_close((uv_handle_t *)&unix_listener, NULL);
        unlink(rbd->cfg.unix_path);
    }
}
