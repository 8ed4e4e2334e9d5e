/*
 * reboundctl's connection to reboundd: one socket (TCP HOST:PORT, or a Unix
 * socket when the address holds a '/'), newline-delimited JSON each way
 * (docs/protocol.md).
 *
 * Plain blocking-style POSIX I/O is enough for a client: the socket is
 * non-blocking only so that poll() can bound every wait with --timeout and
 * so that the pipelined send loop can write requests and read replies at
 * the same time. That matters: a client that writes a long pipeline before
 * reading anything deadlocks against a server that stops reading a
 * connection whose replies are not being taken (reboundd does, past
 * max_inflight), so client_pipeline keeps at most SEND_WINDOW requests
 * unanswered.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "queue/shard.h"
#include "tools/ctl.h"

static volatile sig_atomic_t interrupted;
/* The self-pipe: the signal handler writes to it, so an interrupt that
 * arrives just before poll() still wakes poll() up. */
static int sig_pipe[2] = {-1, -1};

/* Waits until fd is ready for events. Returns 1, 0 on time-out, or -1
 * (errno set; interrupted set when a signal ended the wait). */
static int wait_fd(int fd, short events, int64_t timeout_ms)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = sig_pipe[0], .events = POLLIN}};
    for (;;) {
        if (interrupted) {
            errno = EINTR;
            return -1;
        }
        int n = poll(p, sig_pipe[0] >= 0 ? 2 : 1, timeout_ms > 0 ? (int)(timeout_ms > INT32_MAX ? INT32_MAX : timeout_ms) : -1);
        if (n > 0 && p[0].revents)
            return 1;
        if (n == 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

static int connect_fd(int fd, const struct sockaddr *sa, socklen_t salen, int64_t timeout_ms)
{
    if (connect(fd, sa, salen) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EAGAIN && errno != EINTR)
        return -1;
    int n = wait_fd(fd, POLLOUT, timeout_ms);
    if (n == 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (n < 0)
        return -1;
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        return -1;
    if (soerr) {
        errno = soerr;
        return -1;
    }
    return 0;
}

static int new_socket(int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    return fd;
}

/* Connects to one address (HOST:PORT, [IPv6]:PORT or a socket path).
 * Returns the fd, or -1 after saying why. */
static int open_address(const char *addr, int64_t timeout_ms)
{
    const char *given = addr;
    if (strchr(addr, '/')) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(addr) >= sizeof sun.sun_path) {
            errorf("cannot connect to %s: the path is too long for a Unix socket", addr);
            return -1;
        }
        strcpy(sun.sun_path, addr);
        int fd = new_socket(AF_UNIX);
        if (fd < 0 || connect_fd(fd, (struct sockaddr *)&sun, sizeof sun, timeout_ms) < 0) {
            errorf("cannot connect to %s: %s", addr, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        return fd;
    }

    char host[256];
    const char *colon = strrchr(addr, ':');
    const char *port = colon ? colon + 1 : NULL;
    size_t hlen = colon ? (size_t)(colon - addr) : 0;
    if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']') {
        addr++;
        hlen -= 2;
    }
    if (!colon || hlen == 0 || hlen >= sizeof host || !*port) {
        errorf("bad server address \"%s\": expected HOST:PORT or a Unix socket path", given);
        return -1;
    }
    memcpy(host, addr, hlen);
    host[hlen] = '\0';

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        errorf("cannot connect to %s: %s", given, gai_strerror(gai));
        return -1;
    }
    int fd = -1, saved = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = new_socket(ai->ai_family);
        if (fd >= 0 && connect_fd(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms) == 0)
            break;
        saved = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        errorf("cannot connect to %s: %s", given, strerror(saved));
    return fd;
}

/* Writes all of buf, waiting at most the time-out each time the socket is
 * full. Returns 0 or -1 after saying why. */
static int send_all(struct client *cl, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(cl->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR && !interrupted)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(cl->fd, POLLOUT, cl->ctl->timeout_ms);
            if (w > 0)
                continue;
            if (w == 0)
                errno = ETIMEDOUT;
        }
        if (!interrupted)
            errorf("cannot send to %s: %s", cl->addr, strerror(errno));
        return -1;
    }
    return 0;
}

int send_json(struct client *cl, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    if (!s) {
        errorf("cannot encode the request");
        return -1;
    }
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        errorf("out of memory");
        return -1;
    }
    line[n] = '\n';
    int rc = send_all(cl, line, n + 1);
    free(line);
    return rc;
}

/* Reads what fd (the socket, or stdin for send and classify) has into the
 * frame. Returns bytes read, 0 at end of stream, -1 on error (errno set). */
ssize_t read_some(int fd, struct frame *f)
{
    size_t avail;
    char *p = frame_space(f, 65536, &avail);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, p, avail);
        if (n >= 0) {
            frame_commit(f, (size_t)n);
            return n;
        }
        if (errno != EINTR || interrupted)
            return -1;
    }
}

/* Waits for the next line from the daemon. timeout_ms 0 waits forever.
 * Returns 1 with the line, 0 when interrupted, -1 after saying why. */
int read_line(struct client *cl, int64_t timeout_ms, const char **line, size_t *len)
{
    for (;;) {
        int r = frame_next(&cl->in, line, len);
        if (r == 1)
            return 1;
        if (r < 0) {
            errorf("the reply from %s is longer than %u bytes", cl->addr, MAX_LINE);
            return -1;
        }
        int w = wait_fd(cl->fd, POLLIN, timeout_ms);
        if (w < 0 && interrupted)
            return 0;
        if (w == 0) {
            errorf("%s did not answer within %lld ms", cl->addr, (long long)timeout_ms);
            return -1;
        }
        ssize_t n = w < 0 ? -1 : read_some(cl->fd, &cl->in);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0 && interrupted)
            return 0;
        if (n < 0) {
            errorf("cannot read from %s: %s", cl->addr, strerror(errno));
            return -1;
        }
        if (n == 0) {
            errorf("%s closed the connection", cl->addr);
            return -1;
        }
    }
}

/* Reads lines until a reply (a line with "ok"; events have none). Returns
 * the parsed reply, with the raw line in *raw and *rawlen (valid until the next
 * read), or NULL after saying why. */
json_t *read_reply(struct client *cl, const char **raw, size_t *rawlen)
{
    for (;;) {
        const char *line;
        size_t len;
        if (read_line(cl, cl->ctl->timeout_ms, &line, &len) != 1)
            return NULL;
        json_error_t jerr;
        json_t *j = json_loadb(line, len, 0, &jerr);
        if (!j || !json_is_object(j)) {
            errorf("%s sent a line that is not a JSON object: %.*s", cl->addr, (int)(len > 200 ? 200 : len),
                   line);
            json_decref(j);
            return NULL;
        }
        if (json_object_get(j, "ok")) {
            *raw = line;
            *rawlen = len;
            return j;
        }
        json_decref(j);
    }
}

int client_request(struct client *cl, json_t *req, json_t **reply, const char **raw, size_t *rawlen)
{
    if (send_json(cl, req) < 0)
        return EXIT_IO;
    *reply = read_reply(cl, raw, rawlen);
    return *reply ? 0 : EXIT_IO;
}

void client_close(struct client *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
    frame_free(&cl->in);
}

/* Sends the token, when there is one. Returns 0, or an exit status after
 * saying why (EXIT_REPLY when the token was refused). */
static int authenticate(struct client *cl)
{
    const struct ctl *ctl = cl->ctl;
    if (!ctl->token || !ctl->token[0])
        return 0;
    json_t *auth = json_pack("{s:s,s:s}", "op", "auth", "token", ctl->token);
    json_t *reply;
    const char *raw;
    size_t len;
    int rc = client_request(cl, auth, &reply, &raw, &len);
    json_decref(auth);
    if (rc)
        return rc;
    if (!json_is_true(json_object_get(reply, "ok"))) {
        render_error(reply);
        rc = EXIT_REPLY;
    }
    json_decref(reply);
    return rc;
}

/* Connects to addr (length n) and authenticates. */
static int open_at(struct client *cl, const struct ctl *ctl, const char *addr, size_t n)
{
    cl->ctl = ctl;
    frame_init(&cl->in, MAX_LINE);
    snprintf(cl->addr, sizeof cl->addr, "%.*s", (int)n, addr);
    cl->fd = open_address(cl->addr, ctl->timeout_ms);
    if (cl->fd < 0)
        return EXIT_IO;
    return authenticate(cl);
}

int client_open(struct client *cl, const struct ctl *ctl)
{
    /* -s may list several instances of one deployment: any of them answers
     * (it relays what it does not own), so the first that connects is used. */
    int rc = EXIT_IO;
    for (const char *p = ctl->server;;) {
        size_t n = strcspn(p, ",");
        if (n > 0) {
            rc = open_at(cl, ctl, p, n);
            if (rc != EXIT_IO)
                return rc;
            client_close(cl);
        }
        if (!p[n])
            return rc;
        p += n + 1;
    }
}

/* The address an instance's `cluster` answer gives for the owner of rcpt's
 * shard (docs/protocol.md, cluster), or NULL when it names none. */
static const char *owner_in_map(json_t *cluster, const char *rcpt)
{
    json_int_t shards = json_integer_value(json_object_get(cluster, "shards"));
    json_t *map = json_object_get(cluster, "map");
    if (shards >= 2 && json_is_array(map)) {
        int k = shard_of_rcpt(rcpt, strlen(rcpt), (int)shards);
        return json_string_value(json_array_get(map, (size_t)k));
    }
    return json_string_value(json_object_get(json_object_get(cluster, "owner"), "addr"));
}

/* Moves cl to addr when it is another instance and answers; otherwise cl
 * stays where it is (that instance relays). */
static void move_to(struct client *cl, const char *addr)
{
    if (!addr || !addr[0] || strcmp(addr, cl->addr) == 0)
        return;
    struct client direct = {.fd = -1};
    if (open_at(&direct, cl->ctl, addr, strlen(addr)) == 0) {
        client_close(cl);
        *cl = direct;
    } else {
        client_close(&direct);
    }
}

void client_route(struct client *cl, const char *rcpt)
{
    json_t *req = json_pack("{s:s}", "op", "cluster"), *reply = NULL;
    const char *raw;
    size_t len;
    if (client_request(cl, req, &reply, &raw, &len) == 0 && json_is_true(json_object_get(reply, "ok")))
        move_to(cl, owner_in_map(reply, rcpt));
    json_decref(req);
    json_decref(reply);
}

bool client_follow_owner(struct client *cl, json_t *reply)
{
    json_t *err = json_object_get(reply, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    if (!code || strcmp(code, "unavailable") != 0)
        return false;
    const char *owner = json_string_value(json_object_get(reply, "owner"));
    if (!owner || !owner[0] || strcmp(owner, cl->addr) == 0)
        return false;
    char was[sizeof cl->addr];
    memcpy(was, cl->addr, sizeof was);
    move_to(cl, owner);
    return strcmp(was, cl->addr) != 0;
}

/* Both directions are serviced by one poll loop; the source is read only
 * while the window has room, so neither side can outrun the other. */
int client_pipeline(struct client *cl, struct frame *src, bool src_eof, int src_fd)
{
    char *out = NULL;
    size_t outlen = 0, outoff = 0, outcap = 0;
    long long queued = 0, answered = 0;
    bool any_error = false, src_done = false;
    int rc = 0;
    for (;;) {
        /* Take requests from the source while the window allows. */
        while (!src_done && queued - answered < SEND_WINDOW && outlen - outoff < OUT_HIGH_WATER) {
            const char *line;
            size_t len;
            int r = frame_next(src, &line, &len);
            if (r < 0) {
                errorf("an input line is longer than %u bytes", MAX_LINE);
                rc = EXIT_IO;
                goto done;
            }
            if (r == 0) {
                if (!src_eof)
                    break;
                r = input_end_last_line(src);
                if (r < 0) {
                    rc = EXIT_IO;
                    goto done;
                }
                if (r == 0) {
                    src_done = true;
                    break;
                }
                continue;
            }
            if (is_blank(line, len))
                continue;
            if (outoff > 0 && outoff == outlen)
                outoff = outlen = 0;
            if (outlen + len + 1 > outcap) {
                size_t cap = outcap ? outcap : 65536;
                while (cap < outlen + len + 1)
                    cap *= 2;
                char *n = realloc(out, cap);
                if (!n) {
                    errorf("out of memory");
                    rc = EXIT_IO;
                    goto done;
                }
                out = n;
                outcap = cap;
            }
            memcpy(out + outlen, line, len);
            out[outlen + len] = '\n';
            outlen += len + 1;
            queued++;
        }
        if (src_done && outoff == outlen && answered >= queued)
            break;

        struct pollfd fds[2] = {{.fd = cl->fd, .events = POLLIN}, {.fd = src_fd, .events = POLLIN}};
        if (outoff < outlen)
            fds[0].events |= POLLOUT;
        bool want_src = !src_eof && queued - answered < SEND_WINDOW && outlen - outoff < OUT_HIGH_WATER;
        if (flush_out() < 0) {
            rc = EXIT_IO;
            goto done;
        }
        int64_t t = answered < queued ? cl->ctl->timeout_ms : 0;
        int n = poll(fds, want_src ? 2 : 1, t > 0 ? (int)(t > INT32_MAX ? INT32_MAX : t) : -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            errorf("poll: %s", strerror(errno));
            rc = EXIT_IO;
            goto done;
        }
        if (n == 0) {
            errorf("%s did not answer within %lld ms (%lld of %lld requests answered)", cl->addr,
                   (long long)cl->ctl->timeout_ms, answered, queued);
            rc = EXIT_IO;
            goto done;
        }
        if (want_src && fds[1].revents) {
            ssize_t r = read_some(src_fd, src);
            if (r == 0)
                src_eof = true;
            else if (r < 0 && errno != EAGAIN && errno != EINTR) {
                errorf("cannot read stdin: %s", strerror(errno));
                rc = EXIT_IO;
                goto done;
            }
        }
        if (fds[0].revents & POLLOUT) {
            ssize_t w = send(cl->fd, out + outoff, outlen - outoff, MSG_NOSIGNAL);
            if (w > 0)
                outoff += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                errorf("cannot send to %s: %s", cl->addr, strerror(errno));
                rc = EXIT_IO;
                goto done;
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read_some(cl->fd, &cl->in);
            if (r < 0 && errno != EAGAIN && errno != EINTR) {
                errorf("cannot read from %s: %s", cl->addr, strerror(errno));
                rc = EXIT_IO;
                goto done;
            }
            const char *line;
            size_t len;
            int fr;
            while ((fr = frame_next(&cl->in, &line, &len)) == 1) {
                put_line(line, len);
                json_t *j = json_loadb(line, len, 0, NULL);
                json_t *ok = json_object_get(j, "ok");
                if (ok) {
                    answered++;
                    if (!json_is_true(ok))
                        any_error = true;
                }
                json_decref(j);
            }
            if (fr < 0) {
                errorf("a reply from %s is longer than %u bytes", cl->addr, MAX_LINE);
                rc = EXIT_IO;
                goto done;
            }
            if (r == 0) {
                if (answered < queued || !src_done) {
                    errorf("%s closed the connection (%lld of %lld requests answered)", cl->addr, answered,
                           queued);
                    rc = EXIT_IO;
                }
                goto done;
            }
        }
    }
done:
    if (flush_out() < 0 && rc == 0)
        rc = EXIT_IO;
    free(out);
    if (rc)
        return rc;
    return any_error ? EXIT_REPLY : 0;
}

static void interrupt_cb(int sig)
{
    (void)sig;
    int saved = errno;
    interrupted = 1;
    if (sig_pipe[1] >= 0 && write(sig_pipe[1], "", 1) < 0) {
        /* full: a wake-up is already pending */
    }
    errno = saved;
}

int client_catch_interrupts(void)
{
    if (pipe(sig_pipe) < 0 || fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK) < 0 ||
        fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK) < 0) {
        errorf("pipe: %s", strerror(errno));
        return -1;
    }
    struct sigaction sa = {.sa_handler = interrupt_cb};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return 0;
}

bool client_interrupted(void)
{
    return interrupted != 0;
}
