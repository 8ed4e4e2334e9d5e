#!/usr/bin/env python3
"""The hostile-client benchmark: what a few cheap clients can do to
reboundd, and what must hold (docs/operations.md, "Hostile clients").

  tests/hostile/hostile.py [--short] [--only NAME,...] [--flood-bytes N] ...

Each scenario starts its own Redis and reboundd (the integration harness)
with the default configuration unless said otherwise, and checks:

- slowloris: --conns (1,100) connections, half idle, half trickling one
  byte per 100 ms of a line that never ends, fill max_connections (1,024);
  a new well-behaved client is served within line_timeout/idle_timeout
  (plus the sweep's 25%): the time it waited is printed.
- auth: with a token set, --conns unauthenticated sockets are all gone
  after auth_timeout (plus the sweep's 25%).
- flood: one client streams --flood-bytes (1 GB) of random bytes,
  reconnecting whenever the daemon closes it (error_limit, too_large),
  while a well-behaved client pings; its latency (p50, p99, max) is
  compared with the same client alone. Must hold: p99 within 5 ms.
- nofile: reboundd under `ulimit -n 256` (max_connections 1,024) and
  --nofile-conns (2,000) connections: each gets a reply or a busy, none is
  reset, every refusal is in rebound_connections_refused_total, and the
  log has a bounded number of lines.
- groups: --groups (1,000) subscribes, each with a new group name: at most
  max_groups groups in Redis, and Redis's memory before and after.

--short runs each in seconds (smaller counts, time-outs and flood, a looser
latency bound for sanitizer builds): the `hostile.short` ctest. Bounded:
every count is a flag, every wait has a time-out, every process started is
killed on the way out. Exits 1 when a must-hold fails.
"""

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import Client, Daemon, RedisServer, free_port  # noqa: E402

failures = []


def check(ok, what):
    print("  %s: %s" % ("ok" if ok else "FAILED", what), flush=True)
    if not ok:
        failures.append(what)


class LimitedDaemon(Daemon):
    """reboundd under `ulimit -n` (soft and hard), optional metrics."""

    def __init__(self, redis, nofile=None, metrics=None, **kw):
        self.nofile = nofile
        self.metrics = metrics
        super().__init__(redis, **kw)

    def argv(self):
        a = super().argv()
        if self.metrics:
            a += ["--metrics", "127.0.0.1:%d" % self.metrics]
        if self.nofile:
            a = ["sh", "-c", 'ulimit -n %d && exec "$0" "$@"' % self.nofile] + a
        return a


class Env:
    """One Redis and one reboundd with config overrides; cleaned up."""

    def __init__(self, cfg=None, nofile=None, metrics=False):
        self.tmp = tempfile.mkdtemp(prefix="rebound-hostile-")
        args = []
        if cfg:
            path = os.path.join(self.tmp, "reboundd.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            args = ["-c", path]
        self.redis = RedisServer()
        self.mport = free_port() if metrics else None
        try:
            self.daemon = LimitedDaemon(self.redis, nofile=nofile, metrics=self.mport, extra_args=args)
        except BaseException:
            self.redis.cleanup()
            raise

    def metric(self, name):
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport, timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def close(self):
        self.daemon.cleanup()
        self.redis.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_many(addr, n, first=b""):
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(addr, timeout=5)
        except OSError:
            break
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def wait_served(addr, limit_s):
    """Seconds until a new client's ping is answered ok, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            with Client(addr, timeout=2.0) as c:
                if c.request({"op": "ping"}).get("ok") is True:
                    return time.monotonic() - t0
        except (OSError, ConnectionError, TimeoutError, ValueError):
            pass
        time.sleep(0.05)
    return None


def scenario_slowloris(a):
    print("slowloris: %d connections (half idle, half trickling), max_connections %d" %
          (a.conns, a.max_conns), flush=True)
    cfg = {"max_connections": a.max_conns}
    if a.short:
        cfg.update(line_timeout="1s", idle_timeout="1s")
    timeout_s = 1.0 if a.short else 60.0  # the longer of line_timeout (30 s) and idle_timeout (60 s)
    with Env(cfg) as env:
        addr = env.daemon.tcp_addr
        # descriptors under 1024 kept for the clients below (select())
        spare = [socket.socket() for _ in range(8)]
        idle = open_many(addr, a.conns // 2)
        trick = open_many(addr, a.conns - a.conns // 2, b'{"op":"ping",')
        stop = threading.Event()

        def trickle():
            while not stop.is_set():
                for s in trick:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass
                stop.wait(0.1)
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.2)
            for sp in spare:
                sp.close()
            with Client(addr, timeout=3.0) as c:
                r = c.read_reply(timeout=3.0)
            check(r.get("ok") is False and r["error"]["code"] == "busy",
                  "with every slot taken a new client is told busy (%s)" % r.get("error", {}).get("code"))
            waited = wait_served(addr, timeout_s * 1.25 + 5)
            print("  a new client served after %s s" % ("%.2f" % waited if waited is not None else "never"))
            check(waited is not None and waited <= timeout_s * 1.25 + 1.0,
                  "a new client served within the time-outs (%.1f s + 25%%)" % timeout_s)
        finally:
            stop.set()
            t.join(2)
            for s in idle + trick:
                s.close()


def scenario_auth(a):
    n = a.conns
    cfg = {"token": "s3cret", "max_connections": max(n + 10, 1024)}
    auth_s = 10.0
    if a.short:
        cfg["auth_timeout"] = "1s"
        auth_s = 1.0
    print("auth: %d unauthenticated sockets, auth_timeout %.0f s" % (n, auth_s), flush=True)
    with Env(cfg, metrics=True) as env:
        socks = open_many(env.daemon.tcp_addr, n)
        t0 = time.monotonic()
        deadline = t0 + auth_s * 1.25 + 5
        open_left = list(socks)
        while open_left and time.monotonic() < deadline:
            still = []
            for s in open_left:
                s.setblocking(False)
                try:
                    while True:
                        d = s.recv(65536)
                        if not d:
                            break
                except BlockingIOError:
                    still.append(s)
                    continue
                except OSError:
                    pass
            open_left = still
            time.sleep(0.05)
        took = time.monotonic() - t0
        print("  %d of %d closed after %.2f s; daemon's open connections: %s" %
              (n - len(open_left), n, took, env.metric("rebound_connections")))
        check(not open_left and took <= auth_s * 1.25 + 1.0,
              "unauthenticated sockets gone after auth_timeout (+25%)")
        for s in socks:
            s.close()


def ping_flooder(addr, total, stop):
    """Valid requests as fast as the daemon takes them (pipelined pings,
    replies drained by a thread): what the per-turn budget is for."""
    s = socket.create_connection(addr, timeout=5)
    line = b'{"op":"ping"}\n'
    block = line * ((1 << 16) // len(line))
    got = [0]

    def drain():
        try:
            while True:
                d = s.recv(1 << 20)
                if not d:
                    return
                got[0] += len(d)
        except OSError:
            return
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    sent = 0
    try:
        while sent < total and not stop.is_set():
            s.sendall(block)
            sent += len(block)
    except OSError:
        pass
    s.close()
    print("  flooder: %d bytes of pings sent" % sent, flush=True)


def flooder(addr, total, stop):
    sent = conns = 0
    chunk = os.urandom(1 << 20)
    while sent < total and not stop.is_set():
        try:
            s = socket.create_connection(addr, timeout=5)
        except OSError:
            time.sleep(0.01)
            continue
        conns += 1
        try:
            while sent < total and not stop.is_set():
                n = min(len(chunk), total - sent)
                s.sendall(chunk[:n])
                sent += n
                chunk = chunk[7:] + os.urandom(7)  # not the same bytes every time
        except OSError:
            pass
        finally:
            s.close()
    print("  flooder: %d bytes sent over %d connections (each closed by the daemon)" % (sent, conns), flush=True)


def measure(addr, seconds, alive=None):
    """Ping latencies (ms, sorted) of one client for seconds, or while
    alive() holds."""
    lat = []
    with Client(addr, timeout=5.0) as c:
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end and (alive is None or alive()):
            t0 = time.perf_counter()
            r = c.request({"op": "ping"})
            lat.append((time.perf_counter() - t0) * 1000)
            if not r.get("ok"):
                raise RuntimeError("ping failed: %r" % r)
    lat.sort()
    return lat


def pct(lat, p):
    return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else float("nan")


def scenario_flood(a):
    print("flood: %d bytes of %s on one connection beside a pinging client" %
          (a.flood_bytes, "pipelined pings" if a.flood_kind == "pings" else "random bytes (reconnecting)"),
          flush=True)
    with Env({"idle_timeout": "0"}) as env:
        addr = env.daemon.tcp_addr
        base = measure(addr, 1.0 if a.short else 3.0)
        print("  alone: %d pings, p50 %.3f ms, p99 %.3f ms, max %.3f ms" %
              (len(base), pct(base, 50), pct(base, 99), base[-1]))
        stop = multiprocessing.Event()
        target = ping_flooder if a.flood_kind == "pings" else flooder
        p = multiprocessing.Process(target=target, args=(addr, a.flood_bytes, stop))
        t0 = time.monotonic()
        p.start()
        try:
            lat = measure(addr, a.flood_seconds, alive=p.is_alive)
        finally:
            stop.set()
            p.join(10)
            if p.is_alive():
                p.kill()
        took = time.monotonic() - t0
        print("  during the flood (%.1f s): %d pings, p50 %.3f ms, p99 %.3f ms, max %.3f ms" %
              (took, len(lat), pct(lat, 50), pct(lat, 99), lat[-1] if lat else float("nan")))
        bound = 50.0 if a.short else 5.0
        check(lat and pct(lat, 99) <= bound, "p99 during the flood within %.0f ms" % bound)
        r = measure(addr, 0.2)
        check(bool(r), "the daemon serves on after the flood")


def scenario_nofile(a):
    n = a.nofile_conns
    print("nofile: ulimit -n %d, max_connections 1024, %d connections" % (a.nofile, n), flush=True)
    with Env({"idle_timeout": "0"}, nofile=a.nofile, metrics=True) as env:
        addr = env.daemon.tcp_addr
        before = env.metric("rebound_connections_refused_total") or 0
        held, served, busy, reset = [], 0, 0, 0
        for _ in range(n):
            try:
                c = Client(addr, timeout=5.0)
                c.send({"op": "ping"})
                r = c.read_reply()
                if r.get("ok"):
                    served += 1
                    held.append(c)
                else:
                    busy += 1 if r["error"]["code"] == "busy" else 0
                    c.close()
            except (OSError, ConnectionError, TimeoutError, ValueError):
                reset += 1
        refused = (env.metric("rebound_connections_refused_total") or 0) - before
        for c in held:
            c.close()
        log = env.daemon.log_text().splitlines()
        print("  served %d, busy %d, reset or no reply %d; refused counted %d; log %d lines" %
              (served, busy, reset, refused, len(log)))
        check(reset == 0, "no connection reset silently")
        check(refused == busy and busy == n - served, "every refused connection counted")
        check(len(log) <= 20, "the log bounded (%d lines)" % len(log))


def scenario_groups(a):
    n = a.groups
    print("groups: %d subscribes with new group names (max_groups 100)" % n, flush=True)
    with Env({"idle_timeout": "0"}) as env:
        addr = env.daemon.tcp_addr
        # events to make pending lists: each group is created at the
        # stream's start, so it is handed every event
        with Client(addr, timeout=10.0) as c:
            reqs = [{"op": "bounce", "id": "hm%d" % i, "rcpt": "u%d@example.com" % i, "code": 550,
                     "enhanced": "5.1.1", "text": "550 5.1.1 user unknown"} for i in range(200)]
            c.pipeline(reqs)
        mem0 = int(env.redis.cmd("INFO", "memory").split("used_memory:")[1].split()[0])
        ok = refused = 0
        for i in range(n):
            with Client(addr, timeout=5.0) as c:
                r = c.request({"op": "subscribe", "group": "attacker-%d" % i})
                if r.get("ok"):
                    ok += 1
                    try:
                        c.read_line(0.02)  # take an event or two, ack none: pending grows
                    except TimeoutError:
                        pass
                elif r["error"]["code"] == "too_many_groups":
                    refused += 1
        time.sleep(0.3)
        groups = env.redis.cmd("XINFO", "GROUPS", "rebound:events") or []
        mem1 = int(env.redis.cmd("INFO", "memory").split("used_memory:")[1].split()[0])
        print("  subscribed %d, refused too_many_groups %d; groups in Redis %d; Redis memory %.1f MB -> %.1f MB" %
              (ok, refused, len(groups), mem0 / 1e6, mem1 / 1e6))
        check(len(groups) <= 100, "at most max_groups groups in Redis")
        check(refused == n - ok, "every subscribe past the limit refused with too_many_groups")
        check(mem1 - mem0 < 50e6, "Redis memory bounded (grew %.1f MB)" % ((mem1 - mem0) / 1e6))


SCENARIOS = {"slowloris": scenario_slowloris, "auth": scenario_auth, "flood": scenario_flood,
             "nofile": scenario_nofile, "groups": scenario_groups}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="the CI version: seconds each")
    ap.add_argument("--only", default="", help="comma-separated scenarios (%s)" % ",".join(SCENARIOS))
    ap.add_argument("--conns", type=int, default=None, help="slowloris and auth connections (1100)")
    ap.add_argument("--max-conns", type=int, default=None, help="max_connections for slowloris (1024)")
    ap.add_argument("--flood-bytes", type=int, default=None, help="bytes the flooder sends (1 GB)")
    ap.add_argument("--flood-kind", choices=("random", "pings"), default="random",
                    help="random bytes (the attack), or valid pings as fast as taken (the budget)")
    ap.add_argument("--flood-seconds", type=float, default=None, help="the flood's time limit (120)")
    ap.add_argument("--nofile", type=int, default=256, help="ulimit -n for the nofile scenario")
    ap.add_argument("--nofile-conns", type=int, default=None, help="connections in the nofile scenario (2000)")
    ap.add_argument("--groups", type=int, default=None, help="subscribes with new names (1000)")
    a = ap.parse_args()
    s = a.short
    a.conns = a.conns or (150 if s else 1100)
    a.max_conns = a.max_conns or (100 if s else 1024)
    a.flood_bytes = a.flood_bytes or ((256 << 20) if s else (1 << 30))
    a.flood_seconds = a.flood_seconds or (10.0 if s else 120.0)
    a.nofile_conns = a.nofile_conns or (400 if s else 2000)
    a.groups = a.groups or (150 if s else 1000)
    names = [x for x in a.only.split(",") if x] or list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS:
            ap.error("unknown scenario %s" % name)
    # thousands of sockets on this side too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    t0 = time.monotonic()
    for name in names:
        SCENARIOS[name](a)
    print("%d scenarios in %.1f s; %s" % (len(names), time.monotonic() - t0,
                                          "every must-hold held" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
