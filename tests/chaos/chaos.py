#!/usr/bin/env python3
"""The chaos program: reboundd and Redis are killed, restarted, cut off and
stalled under pipelined load, and afterwards every acknowledged report must
have produced its event.

  tests/chaos/chaos.py [--cycles N] [--seconds S] [--seed N] ...

Redis runs with an append-only file and `appendfsync always`, so that an
acknowledged write survives kill -9 (docs/operations.md, Redis settings and
loss windows). Meanwhile:
- load threads pipeline greylisted bounces (fresh ids, many recipient
  domains) over their own connections, reconnecting whenever the daemon
  goes away; a report is *acknowledged* when its reply is "ok" (an
  `unavailable` reply or a lost connection leaves it unconfirmed, which
  is not counted either way);
- a subscriber (one consumer group, subscribed before the first report)
  takes events and acks them, reconnecting the same way;
- the main thread runs fault cycles: a stretch of load, then one fault,
  chosen at random (seeded): kill -9 of reboundd, kill -9 of Redis
  (restarted from its AOF), a Redis outage of a second or more, a Redis
  stall (SIGSTOP ... SIGCONT), or both processes killed.

With the fast policy a greylisted report's retry is due within
milliseconds, so once the faults stop every acknowledged report must show
up as an event (`retry`, or `give_up` when an outage outlasted its maximum
age) within --settle seconds. An acknowledged report without one is lost;
the program prints the figures and exits 1 if any is.

Bounded: at most --cycles fault cycles and --seconds of cycling, a fixed
settle time, every wait with a time-out; every process it starts is
killed on the way out.
"""

import argparse
import json
import os
import random
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from harness import Client, Daemon, RedisServer  # noqa: E402

FAULTS = ("daemon_kill9", "redis_kill9", "redis_outage", "redis_stall", "both_kill9")


def durable_popen():
    """Redis started by the harness with `appendfsync always`: a later
    command-line directive overrides the harness's everysec."""
    orig = harness._popen

    def popen(args, **kw):
        if args and os.path.basename(args[0]) == "redis-server":
            args = list(args) + ["--appendfsync", "always"]
        return orig(args, **kw)

    harness._popen = popen


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = set()
        self.unconfirmed = 0
        self.sent = 0
        self.events = {}  # id -> type of its first event
        self.event_count = 0
        self.reconnects = 0


class Loader(threading.Thread):
    """Pipelines bounces until told to stop."""

    def __init__(self, n, daemon, tally, stop, batch, window):
        super().__init__(daemon=True, name="load-%d" % n)
        self.n, self.d, self.t, self.stop, self.batch, self.window = n, daemon, tally, stop, batch, window
        self.seq = 0
        self.error = None

    def run(self):
        try:
            self._run()
        except BaseException as e:  # reported by the main thread
            self.error = e

    def _connect(self):
        while not self.stop.is_set():
            try:
                return Client(self.d.tcp_addr, timeout=10.0)
            except OSError:
                time.sleep(0.05)
        return None

    def _run(self):
        c = None
        while not self.stop.is_set():
            if c is None:
                c = self._connect()
                if c is None:
                    return
            reqs = []
            for _ in range(self.batch):
                self.seq += 1
                id = "c%d-%d-%d" % (os.getpid(), self.n, self.seq)
                reqs.append({"op": "bounce", "id": id, "rcpt": "u%d@d%d.example" % (self.seq, self.seq % 997),
                             "code": 451, "enhanced": "4.7.1", "text": "451 4.7.1 Greylisted, try again later"})
            got = []

            def on_reply(i, r):
                got.append((i, r))

            try:
                c.pipeline(reqs, window=self.window, timeout=10.0, on_reply=on_reply)
                failed = False
            except (ConnectionError, TimeoutError, OSError, ValueError):
                failed = True
            refused = 0
            with self.t.lock:
                self.t.sent += len(reqs)
                for i, r in got:
                    if r.get("ok") is True and r.get("id") == reqs[i]["id"]:
                        self.t.acked.add(reqs[i]["id"])
                    else:
                        refused += 1
                        self.t.unconfirmed += 1
                self.t.unconfirmed += len(reqs) - len(got)
                if failed:
                    self.t.reconnects += 1
            if failed:
                c.close()
                c = None
            elif refused:
                time.sleep(0.05)  # `unavailable`: back off a little, as a client should
        if c is not None:
            c.close()


class Subscriber(threading.Thread):
    """Takes events for one group and acks them, across restarts."""

    def __init__(self, daemon, tally, stop, group):
        super().__init__(daemon=True, name="subscriber")
        self.d, self.t, self.stop, self.group = daemon, tally, stop, group
        self.error = None
        self.ready = threading.Event()

    def run(self):
        try:
            self._run()
        except BaseException as e:
            self.error = e

    def _run(self):
        c = None
        while not self.stop.is_set():
            try:
                if c is None:
                    c = Client(self.d.tcp_addr, timeout=10.0)
                    c.subscribe(self.group)
                    self.ready.set()
                evs = c.events(500, 0.2)
                if evs:
                    with self.t.lock:
                        for ev in evs:
                            self.t.event_count += 1
                            if ev.get("type") in ("retry", "give_up") and "id" in ev:
                                self.t.events.setdefault(ev["id"], ev["type"])
                    c.ack([ev["eid"] for ev in evs if "eid" in ev])
                elif c.eof:
                    raise ConnectionError("closed")
            except (ConnectionError, TimeoutError, OSError, ValueError, AssertionError):
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.05)
        if c is not None:
            c.close()


def redis_up(redis):
    redis.start(timeout=30.0)


def fault(kind, rng, redis, daemon, max_stall):
    """Applies one fault and undoes it; returns a short description."""
    if kind == "daemon_kill9":
        daemon.kill9()
        daemon.start(wait_ready=True, timeout=60.0)
        return kind
    if kind == "redis_kill9":
        redis.kill9()
        redis_up(redis)
        return kind
    if kind == "redis_outage":
        secs = rng.uniform(1.0, 3.0)
        redis.kill9()
        time.sleep(secs)
        redis_up(redis)
        return "%s %.1fs" % (kind, secs)
    if kind == "redis_stall":
        secs = rng.uniform(0.2, max_stall)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(secs)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        return "%s %.1fs" % (kind, secs)
    if kind == "both_kill9":
        daemon.kill9()
        redis.kill9()
        redis_up(redis)
        daemon.start(wait_ready=True, timeout=60.0)
        return kind
    raise ValueError(kind)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=10, help="fault cycles at most (default 10)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of cycling at most (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--loaders", type=int, default=2, help="load connections (default 2)")
    ap.add_argument("--batch", type=int, default=200, help="reports per pipelined batch (default 200)")
    ap.add_argument("--window", type=int, default=100, help="unanswered reports per connection (default 100)")
    ap.add_argument("--load-time", type=float, default=1.5, help="mean seconds of load between faults (default 1.5)")
    ap.add_argument("--max-stall", type=float, default=3.0, help="longest Redis stall, seconds (default 3)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds for the events to arrive at the end (default 30)")
    ap.add_argument("--faults", default=",".join(FAULTS), help="the faults to choose from (default: all)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = ap.parse_args(argv)
    kinds = [k for k in args.faults.split(",") if k]
    for k in kinds:
        if k not in FAULTS:
            ap.error("unknown fault %r (known: %s)" % (k, ", ".join(FAULTS)))
    if args.cycles < 0 or args.seconds <= 0 or args.loaders < 1 or args.batch < 1 or args.window < 1:
        ap.error("counts and times must be positive")
    if not harness.have_reboundd():
        print("chaos: reboundd not found at %s" % harness.reboundd_path(), file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    print("chaos: seed %d, at most %d cycles in %.0fs, faults %s" % (seed, args.cycles, args.seconds, ",".join(kinds)),
          flush=True)

    durable_popen()
    tally = Tally()
    stop = threading.Event()  # the subscriber's
    load_stop = threading.Event()
    redis = daemon = None
    threads = []
    counts = {k: 0 for k in kinds}
    failures = []
    t0 = time.monotonic()
    try:
        redis = RedisServer(appendonly=True)
        daemon = Daemon(redis)
        sub = Subscriber(daemon, tally, stop, "chaos")
        sub.start()
        threads.append(sub)
        if not sub.ready.wait(15.0):
            raise RuntimeError("the subscriber could not subscribe")
        for n in range(args.loaders):
            t = Loader(n, daemon, tally, load_stop, args.batch, args.window)
            t.start()
            threads.append(t)

        cycles = 0
        while cycles < args.cycles and time.monotonic() - t0 < args.seconds:
            time.sleep(rng.uniform(0.5, 1.5) * args.load_time)
            kind = rng.choice(kinds)
            what = fault(kind, rng, redis, daemon, args.max_stall)
            cycles += 1
            counts[kind] += 1
            with tally.lock:
                print("chaos: cycle %d %-22s t=%5.1fs acked=%d unconfirmed=%d events=%d" %
                      (cycles, what, time.monotonic() - t0, len(tally.acked), tally.unconfirmed,
                       len(tally.events)), flush=True)
            for t in threads:
                if t.error is not None:
                    raise RuntimeError("%s failed: %r" % (t.name, t.error))
        # a last stretch of load with nothing failing, then the load stops
        time.sleep(args.load_time)
        loading_done = time.monotonic()
        load_stop.set()
        for t in threads:
            if isinstance(t, Loader):
                t.join(30.0)
        cycling = loading_done - t0

        # every acknowledged report must produce its event
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            with tally.lock:
                missing = tally.acked - tally.events.keys()
            if not missing:
                break
            time.sleep(0.2)
        with tally.lock:
            missing = sorted(tally.acked - tally.events.keys())
            acked = len(tally.acked)
            figures = {
                "seed": seed, "cycles": cycles, "faults": counts, "seconds": round(cycling, 1),
                "sent": tally.sent, "acknowledged": acked, "unconfirmed": tally.unconfirmed,
                "events": tally.event_count,
                "give_up": sum(1 for v in tally.events.values() if v == "give_up"),
                "lost": len(missing), "reconnects": tally.reconnects,
            }
        if not daemon.running or not redis.running:
            failures.append("a process died: reboundd %s, redis %s" %
                            ("running" if daemon.running else "gone", "running" if redis.running else "gone"))
        if acked == 0:
            failures.append("no report was acknowledged")
        if missing:
            failures.append("%d acknowledged reports have no event, e.g. %s" % (len(missing), missing[:5]))
        print("chaos: %d cycles (%s) in %.1fs: %d reports sent, %d acknowledged, %d unconfirmed, "
              "%d events, %d lost" % (cycles, ", ".join("%s %d" % kv for kv in counts.items()), cycling,
                                      figures["sent"], acked, figures["unconfirmed"], figures["events"],
                                      figures["lost"]), flush=True)
        if args.json:
            print(json.dumps(figures), flush=True)
    except BaseException as e:
        failures.append("%s: %s" % (type(e).__name__, e))
    finally:
        stop.set()
        load_stop.set()
        if redis is not None and redis.proc is not None and redis.running:
            try:
                os.kill(redis.proc.pid, signal.SIGCONT)
            except OSError:
                pass
        for t in threads:
            t.join(15.0)
        if failures and daemon is not None:
            sys.stderr.write("==== reboundd log (tail) ====\n%s\n" % daemon.log_text()[-4000:])
        if daemon is not None:
            daemon.cleanup()
        if redis is not None:
            redis.cleanup()
    for f in failures:
        print("chaos: FAILED: %s" % f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
