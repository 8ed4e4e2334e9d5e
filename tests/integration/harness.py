"""Integration test harness: a throwaway redis-server, the real reboundd and
a line-protocol client, all bounded in time and cleaned up on every path.

Environment:
  REBOUND_BUILD_DIR    where reboundd was built (default: ../../build); when
                       set (as ctest does), a missing reboundd fails the tests
                       instead of skipping them
  REBOUND_SOURCE_DIR   the source tree (default: two levels above this file)
  REBOUND_FAST_POLICY  another policy file to use instead of
                       tests/fast-policy.json
  REBOUND_KEEP_LOGS    set to keep the temp directories (logs, AOF) afterwards
  REBOUND_REQUIRE_REDIS  set to fail, not skip, when redis-server is missing
                       (scripts/test.sh sets it)

Nothing here waits without a deadline: every read has a time-out, and every
child process is killed when its owner is stopped or the test ends.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("REBOUND_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
BUILD_DIR = os.environ.get("REBOUND_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")

DEFAULT_POLICY = os.path.join(SOURCE_DIR, "config", "policy.json")
FAST_POLICY = os.environ.get("REBOUND_FAST_POLICY") or os.path.join(SOURCE_DIR, "tests", "fast-policy.json")

KEEP_LOGS = bool(os.environ.get("REBOUND_KEEP_LOGS"))


def now_ms():
    return int(time.time() * 1000)


_ports_given = set()


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now, and that
    this process has not handed out before (the kernel may offer a port
    again as soon as it is released: two servers started one after the
    other would then be given the same one)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    return port


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value (returned) or raises
    TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # the condition may fail while things start
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s (last error: %r)" % (timeout, what, last_exc))
        time.sleep(interval)


def run_on_terminal(argv, timeout=10, env=None):
    """Runs argv with stdout on a pseudo-terminal (stdin empty, stderr a
    pipe), for tools that print differently to a person; returns (exit
    status, output with "\r\n" as "\n", stderr). Bounded by timeout."""
    import pty
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        elif p.poll() is not None:
            break
    os.close(master)
    rc = p.wait(timeout)
    err = p.stderr.read().decode()
    p.stderr.close()
    return rc, out.decode().replace("\r\n", "\n"), err


def _die_with_parent():
    """preexec_fn for children: on Linux, have the kernel SIGKILL them when
    the test process dies without cleaning up (e.g. killed on a time-out),
    so no redis-server or reboundd outlives its test."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _popen(args, **kw):
    if sys.platform.startswith("linux"):
        kw["preexec_fn"] = _die_with_parent
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)


def _stop_process(proc, sig=signal.SIGTERM, timeout=10.0):
    """Sends sig, waits up to timeout, then SIGKILL. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# ---------------------------------------------------------------------------
# RESP (Redis serialization protocol), version 2: enough for tests.

class RedisError(Exception):
    """An error reply from Redis (-ERR ...)."""


def resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, (int, float)):
            b = str(a).encode()
        else:
            raise TypeError("cannot send %r to Redis" % (a,))
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespParser:
    """Incremental parser: feed() bytes, then next() gives one complete
    value or raises IndexError when more bytes are needed. Bulk strings are
    decoded as UTF-8 (with surrogates for invalid bytes); errors come back
    as RedisError instances (not raised, so a pipeline keeps its order)."""

    def __init__(self):
        self.buf = bytearray()
        self.start = 0  # buf[start:] is unparsed

    def feed(self, data):
        if self.start:
            del self.buf[:self.start]
            self.start = 0
        self.buf += data

    def next(self):
        v, pos = self._parse(self.start)
        self.start = pos
        return v

    def _line(self, pos):
        end = self.buf.find(b"\r\n", pos)
        if end < 0:
            raise IndexError
        return self.buf[pos:end], end + 2

    def _parse(self, pos):
        if pos >= len(self.buf):
            raise IndexError
        t = bytes(self.buf[pos:pos + 1])
        line, pos = self._line(pos + 1)
        if t == b"+":
            return bytes(line).decode("utf-8", "surrogateescape"), pos
        if t == b"-":
            return RedisError(bytes(line).decode("utf-8", "surrogateescape")), pos
        if t == b":":
            return int(line), pos
        if t == b"$":
            n = int(line)
            if n < 0:
                return None, pos
            if len(self.buf) < pos + n + 2:
                raise IndexError
            return bytes(self.buf[pos:pos + n]).decode("utf-8", "surrogateescape"), pos + n + 2
        if t == b"*":
            n = int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                v, pos = self._parse(pos)
                items.append(v)
            return items, pos
        raise ValueError("bad RESP type byte %r" % t)


class RespConnection:
    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.parser = RespParser()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _read_one(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self.parser.next()
            except IndexError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Redis")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.parser.feed(data)

    def pipeline(self, commands):
        """Sends every command, returns the replies in order (RedisError
        instances for error replies)."""
        self.sock.settimeout(self.timeout)
        self.sock.sendall(b"".join(resp_encode(c) for c in commands))
        return [self._read_one() for _ in commands]

    def cmd(self, *args):
        v = self.pipeline([args])[0]
        if isinstance(v, RedisError):
            raise v
        return v


# ---------------------------------------------------------------------------

class _ChildInTempDir:
    """A child process with its own temporary directory and log file: the
    shared part of RedisServer and Daemon (subclasses set dir, log_path and
    kill9)."""

    def read_log(self, missing):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return missing

    def cleanup(self):
        self.kill9()
        if not KEEP_LOGS:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


class RedisServer(_ChildInTempDir):
    """A redis-server on 127.0.0.1:<free port> in its own temp directory.
    With appendonly=True it writes an AOF (fsync every second), so restart()
    on the same port and directory brings the data back."""

    def __init__(self, appendonly=False, start=True, extra_args=()):
        self.appendonly = appendonly
        self.extra_args = list(extra_args)  # more redis-server options, e.g. cluster mode
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rebound-redis-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None
        self._conn = None
        if start:
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise

    def start(self, timeout=10.0):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server already running")
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", self.log_path,
            "--databases", "16",
        ] + self.extra_args
        self.proc = _popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def pong():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))
            c = RespConnection(self.port, timeout=1.0)
            try:
                return c.cmd("PING") == "PONG"
            finally:
                c.close()

        deadline = time.monotonic() + timeout
        while True:
            try:
                if pong():
                    break
            except RuntimeError:
                raise
            except (OSError, ConnectionError, TimeoutError, RedisError):
                pass  # not up yet, or still loading the AOF
            if time.monotonic() >= deadline:
                self.kill9()
                raise TimeoutError("redis-server did not answer PING in %.0fs:\n%s" % (timeout, self.log_tail()))
            time.sleep(0.02)
        return self

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _drop_conn(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop(self, timeout=10.0):
        """SIGTERM (Redis writes and fsyncs its AOF), then wait."""
        self._drop_conn()
        return _stop_process(self.proc, signal.SIGTERM, timeout)

    def kill9(self):
        self._drop_conn()
        return _stop_process(self.proc, signal.SIGKILL, 5.0)

    def restart(self):
        """Stops gracefully and starts again on the same port and directory."""
        self.stop()
        return self.start()

    def cmd(self, *args):
        """One command over a kept connection; raises RedisError on an error
        reply. Reconnects once if the server was restarted meanwhile."""
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = RespConnection(self.port)
            try:
                return self._conn.cmd(*args)
            except (ConnectionError, OSError):
                self._drop_conn()
                if attempt:
                    raise

    def pipeline(self, commands):
        if self._conn is None:
            self._conn = RespConnection(self.port)
        return self._conn.pipeline(commands)

    def log_tail(self, n=40):
        return "".join(self.read_log("(no redis log)").splitlines(keepends=True)[-n:])



# ---------------------------------------------------------------------------

def reboundd_path():
    return os.path.join(BUILD_DIR, "reboundd")


def have_reboundd():
    return os.access(reboundd_path(), os.X_OK)


class DaemonError(Exception):
    pass


class Daemon(_ChildInTempDir):
    """reboundd listening on 127.0.0.1:<free port> and on a Unix socket in
    its own temp directory, talking to `redis`. stderr goes to a log file
    (see log_text(); DaemonTestCase prints it when a test fails)."""

    def __init__(self, redis, policy=None, extra_args=(), start=True, wait_ready=True):
        self.redis = redis
        self.policy = policy or FAST_POLICY
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rebound-d-")
        self.unix_path = os.path.join(self.dir, "rebound.sock")
        self.log_path = os.path.join(self.dir, "reboundd.log")
        self.proc = None
        self.starts = 0
        if start:
            try:
                self.start(wait_ready=wait_ready)
            except BaseException:
                self.cleanup()
                raise

    @property
    def tcp_addr(self):
        return ("127.0.0.1", self.port)

    def argv(self):
        return [reboundd_path(),
                "--listen", "127.0.0.1:%d" % self.port,
                "--unix", self.unix_path,
                "--redis", self.redis.addr,
                "--policy", self.policy] + self.extra_args

    def start(self, wait_ready=True, timeout=10.0):
        if not have_reboundd():
            raise DaemonError("reboundd not built at %s" % reboundd_path())
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError("reboundd already running")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(("---- start %d: %s\n" % (self.starts, " ".join(self.argv()))).encode())
        log.flush()
        try:
            self.proc = _popen(self.argv(), stdout=log, stderr=log)
        finally:
            log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=10.0):
        """Waits until the daemon answers ping on TCP."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError("reboundd exited with %s during start:\n%s" % (self.proc.returncode,
                                                                                  self.log_text()))
            try:
                with Client(self.tcp_addr, timeout=1.0) as c:
                    r = c.request({"op": "ping"})
                    if r.get("ok") is True:
                        return
                    last = r
            except (OSError, ConnectionError, TimeoutError, ValueError) as e:
                last = e
            time.sleep(0.02)
        raise DaemonError("reboundd did not answer ping in %.0fs (last: %r):\n%s" % (timeout, last, self.log_text()))

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        return _stop_process(self.proc, signal.SIGKILL, 5.0)

    def term(self, timeout=10.0):
        """SIGTERM and wait; returns the exit code (SIGKILL after timeout)."""
        return _stop_process(self.proc, signal.SIGTERM, timeout)

    def restart(self, wait_ready=True):
        self.term()
        return self.start(wait_ready=wait_ready)

    def client(self, unix=False, timeout=5.0):
        return Client(self.unix_path if unix else self.tcp_addr, timeout=timeout)

    def log_text(self):
        return self.read_log("(no reboundd log)")



# ---------------------------------------------------------------------------

class Client:
    """One connection speaking the line protocol. addr is (host, port) for
    TCP or a path for the Unix socket. Replies are objects with "ok";
    anything else that arrives (events) is queued for events()."""

    def __init__(self, addr, timeout=5.0):
        self.timeout = timeout
        if isinstance(addr, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(addr)
            except OSError:
                s.close()
                raise
            self.sock = s
        else:
            self.sock = socket.create_connection(addr, timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0  # buf[pos:] is unread
        self.eof = False
        self.event_queue = []
        self.closed = False

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- low level

    def _take_line(self):
        """The next complete buffered line (bytes, no '\\n'), or None."""
        i = self.buf.find(b"\n", self.pos)
        if i < 0:
            if self.pos:
                del self.buf[:self.pos]
                self.pos = 0
            return None
        line = bytes(self.buf[self.pos:i])
        self.pos = i + 1
        return line

    def raw(self, data):
        """Sends bytes as they are."""
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def send(self, obj):
        self.raw(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _fill(self, deadline):
        """Reads more bytes into buf. Returns False on time-out; sets eof
        (and returns True) when the peer closed or reset the connection."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return False
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
        else:
            self.buf += data
        return True

    def read_line(self, timeout=None):
        """Returns the next line (bytes, without '\\n'), or None at EOF.
        Raises TimeoutError when none arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            line = self._take_line()
            if line is not None:
                return line
            if self.eof:
                return None
            if not self._fill(deadline):
                raise TimeoutError("no complete line within the time-out (have %d bytes)" % len(self.buf))

    def read_obj(self, timeout=None):
        line = self.read_line(timeout)
        if line is None:
            raise ConnectionError("connection closed by reboundd")
        return json.loads(line)

    def read_reply(self, timeout=None):
        """The next reply; events that come first are queued."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            obj = self.read_obj(max(0.0, deadline - time.monotonic()))
            if isinstance(obj, dict) and "ok" in obj:
                return obj
            self.event_queue.append((time.time(), obj))

    def wait_closed(self, timeout=None):
        """True when the peer closes the connection in time (lines that come
        first are discarded), False on time-out."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                if self.read_line(max(0.0, deadline - time.monotonic())) is None:
                    return True
        except TimeoutError:
            return False

    # -- requests

    def request(self, obj, timeout=None):
        self.send(obj)
        return self.read_reply(timeout)

    def pipeline(self, objs, window=None, timeout=None, on_reply=None):
        """Sends every request and returns the replies in order. Sending and
        reading interleave, so the peer's output never backs up into us.
        window caps the requests sent but not yet answered (None: no cap).
        on_reply(index, reply) is called as each reply arrives. timeout is
        the longest wait for progress."""
        payloads = [json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objs]
        step = self.timeout if timeout is None else timeout
        replies = []
        next_send = 0
        out = b""
        self.sock.setblocking(False)
        try:
            deadline = time.monotonic() + step
            while len(replies) < len(payloads):
                limit = len(payloads) if window is None else min(len(payloads), len(replies) + window)
                if not out and next_send < limit:
                    # batch what the window allows, up to about 256 KiB
                    chunk = []
                    size = 0
                    while next_send < limit and size < 262144:
                        chunk.append(payloads[next_send])
                        size += len(payloads[next_send])
                        next_send += 1
                    out = b"".join(chunk)
                # drain complete lines already buffered
                progressed = False
                while True:
                    line = self._take_line()
                    if line is None:
                        break
                    obj = json.loads(line)
                    if isinstance(obj, dict) and "ok" in obj:
                        if on_reply is not None:
                            on_reply(len(replies), obj)
                        replies.append(obj)
                        progressed = True
                        if len(replies) == len(payloads):
                            break
                    else:
                        self.event_queue.append((time.time(), obj))
                if progressed:
                    deadline = time.monotonic() + step
                    continue
                if self.eof:
                    raise ConnectionError("connection closed after %d of %d replies" % (len(replies), len(payloads)))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("pipeline stalled after %d of %d replies" % (len(replies), len(payloads)))
                r, w, _ = select.select([self.sock], [self.sock] if out else [], [], left)
                if w:
                    try:
                        n = self.sock.send(out)
                        out = out[n:]
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        out = b""
                        self.eof = True
                if r:
                    try:
                        data = self.sock.recv(262144)
                    except BlockingIOError:
                        data = None
                    except ConnectionResetError:
                        data = b""
                    if data == b"":
                        self.eof = True
                    elif data:
                        self.buf += data
        finally:
            if not self.closed:
                self.sock.setblocking(True)
                self.sock.settimeout(self.timeout)
        return replies

    # -- events

    def events(self, n, timeout):
        """Returns up to n events (dicts, in arrival order), waiting at most
        timeout seconds for them; fewer when they do not come in time.
        Replies that arrive meanwhile are an error (nothing was asked)."""
        return [ev for _, ev in self.timed_events(n, timeout)]

    def timed_events(self, n, timeout):
        """Like events(), as (arrival time.time(), event) pairs."""
        deadline = time.monotonic() + timeout
        while len(self.event_queue) < n:
            line = self._take_line()
            if line is not None:
                obj = json.loads(line)
                if isinstance(obj, dict) and "ok" in obj:
                    raise AssertionError("unexpected reply while waiting for events: %r" % (obj,))
                self.event_queue.append((time.time(), obj))
                continue
            if self.eof:
                break
            if not self._fill(deadline):
                break
        out, self.event_queue = self.event_queue[:n], self.event_queue[n:]
        return out

    def wait_event(self, pred, timeout):
        """Returns (arrival time.time(), event) for the first event, queued
        or arriving within timeout seconds, for which pred(event) is true; it
        is taken off the queue, other events stay queued. None on time-out
        or EOF."""
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            for i in range(scanned, len(self.event_queue)):
                if pred(self.event_queue[i][1]):
                    return self.event_queue.pop(i)
            scanned = len(self.event_queue)
            line = self._take_line()
            if line is None:
                if self.eof or not self._fill(deadline):
                    return None
                continue
            obj = json.loads(line)
            if isinstance(obj, dict) and "ok" in obj:
                raise AssertionError("unexpected reply while waiting for an event: %r" % (obj,))
            self.event_queue.append((time.time(), obj))

    def subscribe(self, group, **kw):
        r = self.request(dict({"op": "subscribe", "group": group}, **kw))
        if r.get("ok") is not True:
            raise AssertionError("subscribe failed: %r" % (r,))
        return r

    def ack(self, eids):
        r = self.request({"op": "ack", "ids": list(eids)})
        if r.get("ok") is not True:
            raise AssertionError("ack failed: %r" % (r,))
        return r


# ---------------------------------------------------------------------------
# Request builders and test-case base.

_seq = [0]


def unique_id(prefix="m"):
    _seq[0] += 1
    return "%s-%d-%d-%d" % (prefix, os.getpid(), now_ms(), _seq[0])


def bounce(id, code, enhanced=None, text=None, rcpt=None, **extra):
    r = {"op": "bounce", "id": id, "rcpt": rcpt or ("user+%s@example.com" % id.replace("@", "_")), "code": code}
    if enhanced is not None:
        r["enhanced"] = enhanced
    if text is not None:
        r["text"] = text
    r.update(extra)
    return r


GREYLIST = dict(code=451, enhanced="4.7.1", text="451 4.7.1 Greylisted, please try again later")
USER_UNKNOWN = dict(code=550, enhanced="5.1.1", text="550 5.1.1 User unknown")
OVER_QUOTA = dict(code=452, enhanced="4.2.2", text="452 4.2.2 The email account that you tried to reach is over quota")


def stats_pending(stats):
    """The total queue depth in a stats reply (docs/protocol.md, op stats)."""
    for path in (("queue", "total"), ("depth", "total"), ("pending",), ("queue_depth",), ("depth",)):
        v = stats
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    raise AssertionError("no queue depth total in stats reply %r" % (stats,))


def redis_key_count(redis, prefix="rebound:"):
    n = 0
    cursor = "0"
    while True:
        cursor, keys = redis.cmd("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
        n += len(keys)
        if cursor == "0":
            return n


class DaemonTestCase(unittest.TestCase):
    """Skips when reboundd is not built; prints the daemon's and Redis's logs
    when a test fails; cleans up every process it started."""

    policy = None  # None: the fast policy

    def setUp(self):
        if not have_reboundd():
            if os.environ.get("REBOUND_BUILD_DIR"):
                # run by ctest: a missing daemon is a failure, not a skip
                self.fail("reboundd not found at %s" % reboundd_path())
            self.skipTest("reboundd not built (%s)" % reboundd_path())
        if shutil.which("redis-server") is None:
            if os.environ.get("REBOUND_REQUIRE_REDIS"):
                self.fail("redis-server not installed, and REBOUND_REQUIRE_REDIS is set")
            self.skipTest("redis-server not installed")
        self._daemons = []
        self._redises = []

    def start_redis(self, appendonly=False):
        r = RedisServer(appendonly=appendonly)
        self._redises.append(r)
        self.addCleanup(r.cleanup)
        return r

    def start_daemon(self, redis, policy=None, extra_args=(), **kw):
        d = Daemon(redis, policy=policy or self.policy, extra_args=extra_args, start=False)
        self._daemons.append(d)
        self.addCleanup(d.cleanup)
        d.start(**kw)
        return d

    def connect(self, daemon, unix=False, timeout=5.0):
        c = daemon.client(unix=unix, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def start_all(self, appendonly=False, policy=None, extra_args=()):
        redis = self.start_redis(appendonly=appendonly)
        daemon = self.start_daemon(redis, policy=policy, extra_args=extra_args)
        return redis, daemon, self.connect(daemon)

    def _outcome_failed(self):
        # by the time tearDown runs, unittest has reported a failure of the
        # test method (or of a subTest) to the result
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        for test, _ in list(result.errors) + list(result.failures):
            if test is self or getattr(test, "test_case", None) is self:
                return True
        return False

    def tearDown(self):
        # runs before the cleanups: the logs are still there
        if self._outcome_failed():
            for d in getattr(self, "_daemons", []):
                sys.stderr.write("\n==== reboundd log (%s) ====\n%s\n" % (d.log_path, d.log_text()))
            for r in getattr(self, "_redises", []):
                sys.stderr.write("\n==== redis-server log tail (port %d) ====\n%s\n" % (r.port, r.log_tail()))

    # -- assertions

    def assertOk(self, reply, msg=None):
        if not (isinstance(reply, dict) and reply.get("ok") is True):
            self.fail("%sexpected an ok reply, got %r" % ((msg + ": ") if msg else "", reply))
        return reply

    def assertError(self, reply, code, msg=None):
        if not (isinstance(reply, dict) and reply.get("ok") is False and isinstance(reply.get("error"), dict)):
            self.fail("%sexpected an error reply, got %r" % ((msg + ": ") if msg else "", reply))
        err = reply["error"]
        self.assertEqual(err.get("code"), code, "%swrong error code in %r" % ((msg + ": ") if msg else "", reply))
        self.assertIsInstance(err.get("message"), str)
        self.assertTrue(err["message"], "empty error message in %r" % (reply,))
        return reply

    def assertPing(self, client, msg=None):
        r = client.request({"op": "ping", "req": "ping-check"})
        self.assertOk(r, msg or "ping after the previous request")
        self.assertEqual(r.get("req"), "ping-check")
