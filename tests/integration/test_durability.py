"""A bounce that was acknowledged is durable: kill -9 the daemon in the
middle of a pipelined stream, restart it, and every acknowledged message is
still pending; restart redis-server (AOF, appendfsync everysec) under the
running daemon, which reconnects by itself, and still nothing acknowledged
is lost. Uses the default policy, so nothing falls due during the test."""

import sys
import time
import unittest

from harness import DEFAULT_POLICY, GREYLIST, DaemonTestCase, bounce, now_ms, stats_pending, unique_id

MSG_HASH = "rebound:msg"  # one field per pending or awaiting message (docs/architecture)


def log(msg):
    sys.stderr.write("  [durability] %s\n" % msg)


class DurabilityTest(DaemonTestCase):
    policy = DEFAULT_POLICY

    def stream_until_stopped(self, daemon, c, ids, stop_after, stop):
        """Pipelines a bounce for every id and calls stop() once stop_after
        replies have been read; returns {id: reply} of every ok reply read
        before the connection closed."""
        acked = {}
        bad = []
        stopped = []

        def on_reply(i, r):
            if r.get("ok") is True:
                acked[r["id"]] = r
            else:
                bad.append(r)
            if len(acked) + len(bad) >= stop_after and not stopped:
                stopped.append(now_ms())
                stop()

        reqs = [bounce(i, **GREYLIST) for i in ids]
        t0 = time.monotonic()
        with self.assertRaises(ConnectionError, msg="the stream ended before the daemon was stopped"):
            c.pipeline(reqs, window=500, timeout=20, on_reply=on_reply)
        log("%d acked, %d errors of %d sent in %.2fs" % (len(acked), len(bad), len(ids), time.monotonic() - t0))
        for r in bad:
            self.assertEqual(r["error"]["code"], "unavailable", "unexpected error reply: %r" % r)
        self.assertGreaterEqual(len(acked), stop_after - len(bad))
        self.assertLess(len(acked), len(ids), "every request was answered before the stop")
        for r in acked.values():
            self.assertEqual(r["action"], "retry", r)
        return acked

    def assert_all_pending_in_redis(self, redis, ids, what):
        replies = redis.pipeline([("HEXISTS", MSG_HASH, i) for i in ids])
        missing = [i for i, v in zip(ids, replies) if v != 1]
        self.assertEqual(missing[:10], [], "%s: %d of %d acknowledged ids not in Redis" % (what, len(missing), len(ids)))

    def assert_all_pending_in_daemon(self, daemon, acked, all_ids, what):
        c = self.connect(daemon, timeout=10)
        replies = c.pipeline([{"op": "get", "id": i} for i in all_ids], window=1000, timeout=20)
        lost = []
        for i, r in zip(all_ids, replies):
            if r.get("ok") is True:
                self.assertEqual(r.get("id"), i)
            else:
                self.assertEqual(r["error"]["code"], "not_found", r)
                if i in acked:
                    lost.append(i)
        self.assertEqual(lost[:10], [], "%s: %d of %d acknowledged ids lost" % (what, len(lost), len(acked)))
        # the schedule came back as it was acknowledged
        by_id = dict(zip(all_ids, replies))
        for i in acked:
            self.assertEqual(by_id[i].get("due_at"), acked[i]["retry_at"],
                             "%s: due time of %s changed: %r vs %r" % (what, i, acked[i], by_id[i]))
        depth = stats_pending(self.assertOk(c.request({"op": "stats"})))
        self.assertGreaterEqual(depth, len(acked))
        self.assertLessEqual(depth, len(all_ids) + 10)
        c.close()

    def wait_link_back(self, c, timeout=10.0):
        """Polls ping and a fresh bounce until both succeed; returns the id
        of the successful bounce."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if c.request({"op": "ping"}, timeout=2).get("ok") is True:
                    id = unique_id("after")
                    last = c.request(bounce(id, **GREYLIST), timeout=6)
                    if last.get("ok") is True:
                        return id
                    self.assertEqual(last["error"]["code"], "unavailable", last)
            except TimeoutError as e:
                last = e
            time.sleep(0.1)
        self.fail("the daemon did not get back to work within %.0fs (last: %r)" % (timeout, last))

    def test_kill9_mid_stream_then_redis_restart(self):
        redis = self.start_redis(appendonly=True)
        daemon = self.start_daemon(redis)
        c = self.connect(daemon, timeout=10)
        ids = ["dur-%05d" % n for n in range(20000)]
        acked = self.stream_until_stopped(daemon, c, ids, 6000, daemon.kill9)
        c.close()
        self.assertFalse(daemon.running)

        # acknowledged means written to Redis, which is still up
        self.assert_all_pending_in_redis(redis, list(acked), "after kill -9")
        daemon.start()
        self.assert_all_pending_in_daemon(daemon, acked, ids, "after the daemon restart")

        # restart Redis under the running daemon
        c = self.connect(daemon, timeout=10)
        t0 = time.monotonic()
        redis.restart()
        late_id = self.wait_link_back(c)
        log("reconnected %.2fs after the Redis restart began" % (time.monotonic() - t0))
        acked[late_id] = None
        self.assert_all_pending_in_redis(redis, list(acked), "after the Redis restart")
        # and the daemon, started afresh from that Redis, agrees
        self.assertEqual(daemon.term(), 0, "reboundd did not exit cleanly on SIGTERM")
        daemon.start()
        acked.pop(late_id)
        self.assert_all_pending_in_daemon(daemon, acked, ids, "after Redis and daemon restarts")
        g = self.connect(daemon).request({"op": "get", "id": late_id})
        self.assertOk(g)

    def test_sigterm_mid_stream(self):
        redis = self.start_redis(appendonly=True)
        daemon = self.start_daemon(redis)
        c = self.connect(daemon, timeout=10)
        ids = ["term-%05d" % n for n in range(8000)]
        codes = []
        acked = self.stream_until_stopped(daemon, c, ids, 2000,
                                          lambda: daemon.proc.send_signal(15))
        codes.append(daemon.proc.wait(10))
        self.assertEqual(codes[0], 0, "reboundd did not exit cleanly on SIGTERM")
        self.assert_all_pending_in_redis(redis, list(acked), "after SIGTERM")
        daemon.start()
        self.assert_all_pending_in_daemon(daemon, acked, ids, "after SIGTERM and restart")

    def test_redis_kill9_loses_at_most_the_fsync_window(self):
        # appendfsync everysec: what was acknowledged more than ~1 s before
        # a Redis crash must survive it
        redis = self.start_redis(appendonly=True)
        daemon = self.start_daemon(redis)
        c = self.connect(daemon, timeout=10)
        ids = ["crash-%04d" % n for n in range(2000)]
        for r in c.pipeline([bounce(i, **GREYLIST) for i in ids], window=500, timeout=20):
            self.assertOk(r)
        time.sleep(2.2)  # two fsync periods
        redis.kill9()
        redis.start()
        self.assert_all_pending_in_redis(redis, ids, "after kill -9 of Redis")
        self.wait_link_back(c)


if __name__ == "__main__":
    unittest.main()
