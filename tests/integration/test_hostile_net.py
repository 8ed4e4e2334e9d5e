"""Hostile clients against the real daemon, short versions of what
tests/hostile/hostile.py measures at full size: time-outs (auth, partial
line, idle; a subscriber is never idle), the error and wrong-token limits,
slowloris connections filling max_connections, the descriptor limit,
protected mode, the Unix socket of a live daemon, and bounded consumer
groups. Small time-outs in a test config keep each test to seconds."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from harness import BUILD_DIR, Client, Daemon, DaemonTestCase, wait_until

FAST = {"auth_timeout": "400ms", "line_timeout": "400ms", "idle_timeout": "400ms",
        "error_limit": 5, "auth_failures": 3}


class HostileNetTest(DaemonTestCase):
    def config(self, **over):
        d = tempfile.mkdtemp(prefix="rebound-cfg-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "reboundd.json")
        cfg = dict(FAST)
        cfg.update(over)
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def start(self, **over):
        self.redis = self.start_redis()
        self.daemon = self.start_daemon(self.redis, extra_args=["-c", self.config(**over)])
        return self.daemon

    def assertClosedWith(self, c, code, timeout=3.0):
        """The connection's next line is an error with code, then EOF."""
        line = c.read_line(timeout)
        self.assertIsNotNone(line, "closed without saying why")
        obj = json.loads(line)
        self.assertFalse(obj["ok"], obj)
        self.assertEqual(obj["error"]["code"], code, obj)
        self.assertTrue(c.wait_closed(timeout), "not closed after %r" % obj)

    # -- time-outs

    def test_idle_connection_closed_subscriber_kept(self):
        d = self.start()
        idle = self.connect(d)
        self.assertTrue(idle.request({"op": "ping"})["ok"])
        sub = self.connect(d)
        self.assertTrue(sub.request({"op": "subscribe", "group": "g1"})["ok"])
        t0 = time.monotonic()
        self.assertClosedWith(idle, "timeout")
        self.assertLess(time.monotonic() - t0, 2.0)
        time.sleep(0.6)  # past idle_timeout again: the subscriber stays
        self.assertTrue(sub.request({"op": "ping"})["ok"])

    def test_partial_line_closed_after_line_timeout(self):
        d = self.start(idle_timeout="0")
        c = self.connect(d)
        c.raw(b'{"op":"pi')
        t0 = time.monotonic()
        for _ in range(4):  # a slowloris trickle does not restart the clock
            time.sleep(0.08)
            c.raw(b" ")
        self.assertClosedWith(c, "timeout")
        self.assertLess(time.monotonic() - t0, 2.0)
        other = self.connect(d)  # the daemon serves on
        self.assertTrue(other.request({"op": "ping"})["ok"])

    def test_unauthenticated_socket_closed_after_auth_timeout(self):
        d = self.start(token="s3cret", idle_timeout="0")
        c = self.connect(d)
        self.assertEqual(c.request({"op": "ping"})["ok"], True)  # ping does not authenticate
        authed = self.connect(d)
        self.assertTrue(authed.request({"op": "auth", "token": "s3cret"})["ok"])
        self.assertClosedWith(c, "timeout")
        self.assertTrue(authed.request({"op": "stats"})["ok"])

    def test_wrong_tokens_close_the_connection(self):
        d = self.start(token="s3cret")
        c = self.connect(d)
        for _ in range(2):
            r = c.request({"op": "auth", "token": "guess"})
            self.assertEqual(r["error"]["code"], "auth_required")
        c.send({"op": "auth", "token": "guess"})
        self.assertEqual(c.read_reply()["error"]["code"], "auth_required")  # the third wrong one
        self.assertClosedWith(c, "auth_required")

    def test_error_limit_closes_the_connection(self):
        d = self.start()
        c = self.connect(d)
        for _ in range(4):
            self.assertEqual(c.request({"op": "nope"})["error"]["code"], "unknown_op")
        self.assertTrue(c.request({"op": "ping"})["ok"])  # good lines do not reset the count, nor close
        c.send({"op": "nope"})
        self.assertEqual(c.read_reply()["error"]["code"], "unknown_op")
        self.assertClosedWith(c, "too_many_errors")

    def test_slowloris_connections_expire_and_a_new_client_is_served(self):
        n = 40
        d = self.start(max_connections=n, idle_timeout="60s", line_timeout="500ms")
        socks = []
        for _ in range(n):
            s = socket.create_connection(d.tcp_addr)
            s.sendall(b'{"op":')
            socks.append(s)
        self.addCleanup(lambda: [s.close() for s in socks])
        time.sleep(0.1)
        c = self.connect(d)
        r = c.read_reply(timeout=3)
        self.assertEqual(r["error"]["code"], "busy")
        t0 = time.monotonic()
        served = None

        def try_once():
            nonlocal served
            try:
                with Client(d.tcp_addr, timeout=2.0) as c2:
                    r = c2.request({"op": "ping"})
                    served = r.get("ok") is True
                    return served
            except (OSError, ConnectionError):
                return False
        wait_until(try_once, 5.0, interval=0.05, what="a new client served after line_timeout")
        self.assertLess(time.monotonic() - t0, 3.0)
        m = self.connect(d).request({"op": "stats"})
        self.assertTrue(m["ok"])

    # -- descriptors, protected mode, the socket

    def test_descriptor_limit_refusals_counted_not_reset(self):
        redis = self.start_redis()
        d = LimitedDaemon(redis, nofile=96, extra_args=["-c", self.config(idle_timeout="0")], start=False)
        self._daemons.append(d)
        self.addCleanup(d.cleanup)
        d.start()
        wait_until(lambda: "descriptor limit" in d.log_text(), 3.0, what="the start-up warning")
        held, busy, served = [], 0, 0
        for _ in range(150):
            c = Client(d.tcp_addr, timeout=3.0)
            held.append(c)
            c.send({"op": "ping"})
            r = c.read_reply()  # never a reset: a reply or a busy
            if r["ok"]:
                served += 1
            else:
                self.assertEqual(r["error"]["code"], "busy")
                busy += 1
        self.addCleanup(lambda: [c.close() for c in held])
        self.assertGreater(served, 0)
        self.assertGreater(busy, 0)
        self.assertEqual(served + busy, 150)
        lines = [l for l in d.log_text().splitlines() if "refusing a connection" in l]
        self.assertLessEqual(len(lines), 2, lines)  # rate-limited: not one line per refusal

    def test_protected_mode_refuses_non_loopback(self):
        addr = non_loopback_address()
        if not addr:
            self.skipTest("no non-loopback address on this host")
        redis = self.start_redis()
        d = AnyAddressDaemon(redis, extra_args=["-c", self.config()], start=False)
        self._daemons.append(d)
        self.addCleanup(d.cleanup)
        d.start()
        port = d.port
        with Client((addr, port), timeout=3.0) as c:
            r = c.read_reply()
            self.assertEqual(r["error"]["code"], "auth_required")
            self.assertIn("protected mode", r["error"]["message"])
        with Client(("127.0.0.1", port), timeout=3.0) as c:
            self.assertTrue(c.request({"op": "ping"})["ok"])

    def test_unix_socket_of_a_live_daemon_not_taken_over(self):
        d = self.start()
        mode = os.stat(d.unix_path).st_mode & 0o777
        self.assertEqual(mode, 0o660)
        second = Daemon(self.redis, start=False)
        second.unix_path = d.unix_path
        self._daemons.append(second)
        self.addCleanup(second.cleanup)
        second.start(wait_ready=False)
        wait_until(lambda: not second.running, 5.0, what="the second daemon refusing to start")
        self.assertIn("answers on this socket", second.log_text())
        with Client(d.unix_path, timeout=3.0) as c:  # the first still serves on it
            self.assertTrue(c.request({"op": "ping"})["ok"])
        d.kill9()  # a stale socket is taken over
        third = Daemon(self.redis, start=False)
        third.unix_path = d.unix_path
        self._daemons.append(third)
        self.addCleanup(third.cleanup)
        third.start()
        with Client(d.unix_path, timeout=3.0) as c:
            self.assertTrue(c.request({"op": "ping"})["ok"])

    # -- consumer groups

    def test_groups_bounded_listed_deleted_and_expired(self):
        d = self.start(max_groups=5, group_expiry="700ms", idle_timeout="0", error_limit=1000)
        subs = []
        refused = 0
        for i in range(12):
            c = self.connect(d)
            r = c.request({"op": "subscribe", "group": "g%d" % i})
            if r["ok"]:
                subs.append(c)
            else:
                self.assertEqual(r["error"]["code"], "too_many_groups")
                refused += 1
        self.assertEqual(len(subs), 5)
        self.assertEqual(refused, 7)
        op = self.connect(d)
        r = op.request({"op": "groups"})
        self.assertEqual(sorted(g["name"] for g in r["groups"]), ["g%d" % i for i in range(5)])
        self.assertTrue(all(g["consumers"] == 1 and g["pending"] == 0 for g in r["groups"]), r)
        ctl = [os.path.join(BUILD_DIR, "reboundctl"), "-s", "127.0.0.1:%d" % d.port]
        out = subprocess.run(ctl + ["groups"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"g4", out.stdout)
        out = subprocess.run(ctl + ["groups", "delete"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        # a group with a subscriber is not deleted
        r = op.request({"op": "groups", "delete": "g0"})
        self.assertFalse(r["ok"])
        subs[0].close()
        wait_until(lambda: op.request({"op": "groups", "delete": "g0"})["ok"], 3.0, what="g0 deleted")
        self.assertEqual(op.request({"op": "groups", "delete": "g0"})["error"]["code"], "not_found")
        # room again for one new group
        c = self.connect(d)
        self.assertTrue(c.request({"op": "subscribe", "group": "new"})["ok"])
        c.close()
        for s in subs[1:]:
            s.close()
        # nobody subscribed: every group expires, in Redis too
        wait_until(lambda: not self.redis.cmd("XINFO", "GROUPS", "rebound:events"), 5.0,
                   what="the groups expired")
        self.assertEqual(op.request({"op": "groups"})["groups"], [])

    def test_group_expiry_survives_a_restart(self):
        d = self.start(group_expiry="60s", idle_timeout="0")
        c = self.connect(d)
        self.assertTrue(c.request({"op": "subscribe", "group": "kept"})["ok"])
        c.close()
        wait_until(lambda: self.redis.cmd("HGET", "rebound:groups", "kept") is not None, 3.0,
                   what="the group's last-seen time in Redis")
        d.term()
        # as if it had been left an hour ago: the restarted daemon (expiry
        # 2 s, a sweep every 0.5 s) deletes it at its first sweep, long
        # before 2 s from its start would
        self.redis.cmd("HSET", "rebound:groups", "kept", str(int(time.time() * 1000) - 3600 * 1000))
        t0 = time.monotonic()
        d2 = self.start_daemon(self.redis, extra_args=["-c", self.config(group_expiry="2s", max_groups=1)])
        wait_until(lambda: not self.redis.cmd("XINFO", "GROUPS", "rebound:events"), 5.0,
                   what="the old group expired after the restart")
        self.assertLess(time.monotonic() - t0, 1.8)
        self.assertIsNone(self.redis.cmd("HGET", "rebound:groups", "kept"))
        c = self.connect(d2)
        self.assertTrue(c.request({"op": "subscribe", "group": "other"})["ok"])


class AnyAddressDaemon(Daemon):
    """reboundd listening on every address (0.0.0.0), at its port."""

    def argv(self):
        a = super().argv()
        a[a.index("--listen") + 1] = "0.0.0.0:%d" % self.port
        return a


class LimitedDaemon(Daemon):
    """reboundd started under `ulimit -n nofile` (soft and hard)."""

    def __init__(self, redis, nofile, **kw):
        self.nofile = nofile
        super().__init__(redis, **kw)

    def argv(self):
        inner = super().argv()
        return ["sh", "-c", 'ulimit -n %d && exec "$0" "$@"' % self.nofile] + inner


def non_loopback_address():
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("192.0.2.1", 9))  # no packet is sent: picks the outgoing address
        addr = s.getsockname()[0]
        s.close()
        return None if addr.startswith("127.") else addr
    except OSError:
        return None


if __name__ == "__main__":
    unittest.main()
