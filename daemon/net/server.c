#include "net/server.h"

#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/daemon.h"
#include "base/log.h"
#include "config/addr.h"
#include "net/conn.h"

static uv_tcp_t tcp_listener;
static uv_pipe_t unix_listener;
static bool have_tcp, have_unix;

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
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
        rbd->cfg.token[0] == '\0')
        log_warn("listen: %s is not loopback and no token is configured: anyone who can reach it can "
                 "change the schedule",
                 listen);
    log_info("listening on %s", listen);
    return 0;
}

static int start_unix(const char *path)
{
    struct stat st;
    /* A socket left by a previous run that died; never remove other files. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    uv_pipe_init(rbd->loop, &unix_listener, 0);
    have_unix = true;
    int rc = uv_pipe_bind(&unix_listener, path);
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

int server_start(void)
{
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
