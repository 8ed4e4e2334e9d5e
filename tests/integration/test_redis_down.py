"""Redis goes away under a running daemon (fast policy): state changes are
refused with "unavailable" (never an ok without a write), the daemon keeps
answering ping, and when Redis is back it reconnects by itself, takes
bounces again and fires the retries that fell due meanwhile."""

import sys
import time
import unittest

from harness import GREYLIST, OVER_QUOTA, DaemonTestCase, bounce, now_ms, unique_id, wait_until


def log(msg):
    sys.stderr.write("  [redis_down] %s\n" % msg)


class RedisDownTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        # AOF so that a graceful Redis restart keeps the schedule and the groups
        self.redis, self.daemon, self.c = self.start_all(appendonly=True)

    def bounce_until_ok(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            id = unique_id("back")
            last = self.c.request(bounce(id, **GREYLIST), timeout=8)
            if last.get("ok") is True:
                return id, last
            self.assertEqual(last["error"]["code"], "unavailable", last)
            time.sleep(0.1)
        self.fail("bounces still fail %.0fs after Redis came back: %r" % (timeout, last))

    def test_unavailable_while_down_then_recovers(self):
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        self.assertOk(self.c.request(bounce(unique_id(), **GREYLIST)))
        self.assertEqual(len(sub.events(1, 3)), 1)
        # due in 12 policy hours = 720 ms: while Redis is down
        waiting = unique_id("waiting")
        rw = self.assertOk(self.c.request(bounce(waiting, **OVER_QUOTA)))
        self.redis.stop()
        down_at = now_ms()

        refused = []
        for n in range(5):
            id = unique_id("down")
            r = self.c.request(bounce(id, req=n, **GREYLIST), timeout=10)
            self.assertIs(r.get("ok"), False, "a bounce was acknowledged while Redis was down: %r" % r)
            self.assertEqual(r["error"]["code"], "unavailable", r)
            self.assertEqual(r.get("req"), n)
            refused.append(id)
            self.assertPing(self.c)
        for op in ({"op": "cancel", "id": waiting}, {"op": "delivered", "id": waiting}):
            r = self.c.request(op, timeout=10)
            self.assertIs(r.get("ok"), False, "%s acknowledged while Redis was down: %r" % (op["op"], r))
            self.assertEqual(r["error"]["code"], "unavailable", r)
        # ops that need no write keep working
        self.assertOk(self.c.request({"op": "classify", "code": 451, "text": "greylisted"}))
        wait_until(lambda: self.c.request({"op": "stats"}).get("redis") == "down", 5,
                   what="stats to report the Redis link down")
        # a new connection is accepted and served too
        self.assertPing(self.connect(self.daemon, unix=True))

        # the retry falls due while Redis is down: it must wait
        wait = max(0, rw["retry_at"] - now_ms()) / 1000 + 0.5
        self.assertIsNone(sub.wait_event(lambda e: e.get("id") == waiting, wait),
                          "a retry fired while Redis was down")

        self.redis.start()
        up_at = time.monotonic()
        self.bounce_until_ok()
        self.assertEqual(self.c.request({"op": "stats"}).get("redis"), "up")
        log("bounces accepted %.2fs after Redis came back (down for %d ms)" %
            (time.monotonic() - up_at, now_ms() - down_at))
        got = sub.wait_event(lambda e: e.get("id") == waiting and e.get("type") == "retry", 15)
        self.assertIsNotNone(got, "the retry that fell due while Redis was down never fired")
        _, ev = got
        self.assertEqual(ev["attempt"], 1)
        self.assertEqual(ev["due_at"], rw["retry_at"])
        # refused bounces left nothing behind: they start at attempt 1 now
        for id in refused:
            self.assertError(self.c.request({"op": "get", "id": id}), "not_found")
            r = self.assertOk(self.c.request(bounce(id, **GREYLIST)))
            self.assertEqual(r["attempt"], 1)
        self.assertPing(self.c)

    def test_daemon_starts_without_redis(self):
        # started while Redis is down, the daemon neither exits nor serves
        # a schedule it has not read; once Redis is up it loads and works
        id = unique_id("before")
        r = self.assertOk(self.c.request(bounce(id, **OVER_QUOTA)))
        # the group exists before the event can be written
        with self.daemon.client() as early:
            early.subscribe("late")
        self.assertEqual(self.daemon.term(), 0)
        self.redis.stop()
        self.daemon.start(wait_ready=False)
        time.sleep(1.0)
        self.assertTrue(self.daemon.running, "reboundd gave up without Redis: %s" % self.daemon.log_text())
        try:
            with self.daemon.client(timeout=2) as c:
                r2 = c.request(bounce(unique_id(), **GREYLIST))
                self.assertEqual(r2.get("ok"), False, "a bounce accepted before the schedule was loaded: %r" % r2)
                self.assertEqual(r2["error"]["code"], "unavailable")
        except (ConnectionRefusedError, ConnectionError):
            pass  # not listening before the schedule is loaded is fine too
        self.redis.start()
        self.daemon.wait_ready(15)
        self.c = self.connect(self.daemon)
        self.bounce_until_ok()
        sub = self.connect(self.daemon)
        sub.subscribe("late")
        # the schedule was read back: the message from before fires
        got = sub.wait_event(lambda e: e.get("id") == id, max(0, r["retry_at"] - now_ms()) / 1000 + 10)
        self.assertIsNotNone(got, "the schedule was not loaded after Redis came up")
        self.assertEqual(got[1]["due_at"], r["retry_at"])

    def test_redis_flap_repeatedly(self):
        for _ in range(3):
            self.redis.stop()
            r = self.c.request(bounce(unique_id(), **GREYLIST), timeout=10)
            self.assertEqual(r.get("ok"), False, r)
            self.assertPing(self.c)
            self.redis.start()
            self.bounce_until_ok()
        self.assertTrue(self.daemon.running)


if __name__ == "__main__":
    unittest.main()
