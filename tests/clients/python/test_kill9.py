"""The must-hold of the Python client: reboundd is killed with SIGKILL in the
middle of a pipelined batch of 10,000 bounce reports and started again.
Every report gets exactly one reply, in order, from the caller's point of
view; the daemon's state has every report (each message is known, with the
attempt its reply gave and one history entry per attempt); and a consumer,
which also loses its connection in the kill, sees the `retry` event of every
reply's attempt. Run with the blocking and with the asyncio client.

The policy is tests/fast-policy.json (retries fall due within milliseconds)
with `awaiting` raised to ten minutes, so that a fired message is still there
to be checked at the end instead of being forgotten after 4.3 s."""

import asyncio
import json
import os
import tempfile
import threading
import time
import unittest

from pyclient_base import FAST_POLICY, DaemonTestCase, log, tcp, wait_until
from rebound_client import AsyncClient, AsyncConsumer, Client, Consumer, ReboundError

N = 10000
DOMAINS = 1000  # 10 retries a domain: well inside the pace's burst of 200
KILL_AFTER = 3000  # messages recorded in Redis when the kill comes
MSG_HASH = "rebound:msg"


def reports(tag):
    return [{"id": "k9-%s-%d" % (tag, i), "rcpt": "u%d@d%d.example.com" % (i, i % DOMAINS), "code": 451,
             "enhanced": "4.7.1", "text": "451 4.7.1 Greylisted, please try again later",
             "campaign": "kill9"} for i in range(N)]


class Killer(threading.Thread):
    """Kills the daemon once KILL_AFTER messages are in Redis (the batch is
    well under way), then starts it again."""

    def __init__(self, redis, daemon):
        super().__init__(daemon=True)
        self.redis, self.d = redis, daemon
        # the restarted daemon dies with the thread that started it (the
        # harness sets PR_SET_PDEATHSIG, which is per thread): the thread
        # waits for this before it ends
        self.finished = threading.Event()
        self.killed_at = None
        self.restarted_at = None
        self.error = None

    def run(self):
        try:
            wait_until(lambda: self.redis.cmd("HLEN", MSG_HASH) >= KILL_AFTER, 30, interval=0.002,
                       what="%d messages in Redis" % KILL_AFTER)
            self.d.kill9()
            self.killed_at = time.monotonic()
            self.recorded_at_kill = self.redis.cmd("HLEN", MSG_HASH)
            time.sleep(0.2)
            self.d.start()
            self.restarted_at = time.monotonic()
        except BaseException as e:  # reported by the test
            self.error = e
        self.finished.wait(120)

    def stop(self):
        self.finished.set()
        self.join(30)


class Kill9Test(DaemonTestCase):
    def setUp(self):
        super().setUp()
        with open(FAST_POLICY) as f:
            policy = json.load(f)
        policy["limits"]["awaiting"] = "600s"
        fd, self.policy_path = tempfile.mkstemp(prefix="rebound-k9-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(policy, f)
        self.addCleanup(os.unlink, self.policy_path)
        self.redis = self.start_redis()
        self.d = self.start_daemon(self.redis, policy=self.policy_path)

    def check(self, reps, results, t_batch, killer, seen, consumer_connects, batch_done):
        self.assertIsNone(killer.error)
        self.assertIsNotNone(killer.killed_at, "the daemon was never killed")
        self.assertLess(killer.killed_at, batch_done, "the kill came after the batch had ended")
        log("killed with %d of %d recorded; batch %.2fs; daemon back after %.2fs" % (
            killer.recorded_at_kill, N, t_batch, killer.restarted_at - killer.killed_at))
        self.assertLess(killer.recorded_at_kill, N, "every report was recorded before the kill")
        # exactly one reply per report, in order, each an ok retry
        self.assertEqual(len(results), N)
        bad = [(r["id"], x) for r, x in zip(reps, results) if not (isinstance(x, dict) and x.get("id") == r["id"])]
        self.assertEqual(bad[:5], [], "%d reports without their own ok reply" % len(bad))
        for x in results:
            self.assertEqual(x["action"], "retry", x)
        attempts = {x["id"]: x["attempt"] for x in results}
        again = sum(1 for a in attempts.values() if a > 1)
        log("%d reports resent after their retry had fired (answered as attempt 2+)" % again)
        # the consumer sees the retry event of every reply's attempt
        missing = lambda: [i for i, a in attempts.items() if (i, a) not in seen]  # noqa: E731
        try:
            wait_until(lambda: not missing(), 20, interval=0.05, what="every retry event")
        except TimeoutError:
            m = missing()
            self.fail("%d of %d retry events never seen, e.g. %r" % (len(m), N, m[:5]))
        self.assertGreaterEqual(consumer_connects(), 2, "the consumer did not reconnect")
        # the daemon's state has every report: known, at the replied attempt,
        # with one bounce in its history per attempt
        with Client(tcp(self.d)) as c:
            gets = c.pipeline([{"op": "get", "id": r["id"]} for r in reps])
        wrong = []
        for r, g in zip(reps, gets):
            if (isinstance(g, ReboundError) or g.get("attempt") != attempts[r["id"]]
                    or len(g.get("history", [])) != attempts[r["id"]] or g.get("campaign") != "kill9"):
                wrong.append((r["id"], attempts[r["id"]], g))
        self.assertEqual(wrong[:3], [], "%d messages not as replied" % len(wrong))

    def test_blocking_client_and_consumer(self):
        seen = set()
        stop = threading.Event()
        consumer = Consumer(self.d.unix_path, "k9-senders", types=["retry"], ack_batch=200, ack_interval=0.2)
        self.addCleanup(consumer.close)

        def consume():
            while not stop.is_set():
                ev = consumer.next_event(timeout=0.1)
                if ev is not None:
                    seen.add((ev["id"], ev["attempt"]))
                    consumer.ack(ev)

        killer = Killer(self.redis, self.d)
        self.addCleanup(killer.stop)
        ct = threading.Thread(target=consume, daemon=True)
        ct.start()
        self.addCleanup(ct.join, 10)
        self.addCleanup(stop.set)
        reps = reports("sync")
        killer.start()
        t0 = time.monotonic()
        with Client(tcp(self.d), retry_deadline=20) as client:
            results = client.bounce_many(reps)
            done = time.monotonic()
            self.assertGreaterEqual(client.connects, 2, "the client did not reconnect")
        self.check(reps, results, done - t0, killer, seen, lambda: consumer.connects, done)

    def test_asyncio_client_and_consumer(self):
        seen = set()
        reps = reports("aio")
        killer = Killer(self.redis, self.d)
        self.addCleanup(killer.stop)
        out = {}

        async def consume(consumer, stop):
            while not stop.is_set():
                ev = await consumer.next_event(timeout=0.1)
                if ev is not None:
                    seen.add((ev["id"], ev["attempt"]))
                    await consumer.ack(ev)

        async def main():
            stop = asyncio.Event()
            consumer = AsyncConsumer(self.d.unix_path, "k9-senders", types=["retry"], ack_batch=200,
                                     ack_interval=0.2)
            task = asyncio.ensure_future(consume(consumer, stop))
            killer.start()
            t0 = time.monotonic()
            async with AsyncClient(tcp(self.d), retry_deadline=20) as client:
                out["results"] = await client.bounce_many(reps)
                out["done"] = time.monotonic()
                out["t"] = out["done"] - t0
                out["connects"] = client.connects
            # keep consuming while the test waits for every event
            deadline = time.monotonic() + 20
            want = {(x["id"], x["attempt"]) for x in out["results"] if isinstance(x, dict)}
            while time.monotonic() < deadline and not want <= seen:
                await asyncio.sleep(0.05)
            out["consumer_connects"] = consumer.connects
            stop.set()
            await task
            await consumer.close()

        asyncio.run(asyncio.wait_for(main(), 60))
        self.assertGreaterEqual(out["connects"], 2, "the client did not reconnect")
        self.check(reps, out["results"], out["t"], killer, seen, lambda: out["consumer_connects"], out["done"])


if __name__ == "__main__":
    unittest.main()
