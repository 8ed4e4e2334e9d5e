"""The Python client against the real reboundd: every call and its reply,
errors as ReboundError with the protocol's code, pipelining, the token,
reconnect and resend (a killed daemon, Redis down answered `unavailable`),
the retry deadline, and the consumer's acks and redelivery. The same for
the asyncio client."""

import asyncio
import json
import os
import tempfile
import threading
import time
import unittest

from pyclient_base import DaemonTestCase, log, tcp, unique_id, wait_until
from rebound_client import MAX_LINE, AsyncClient, AsyncConsumer, Client, Consumer, ReboundError, parse_address

GREY = dict(code=451, enhanced="4.7.1", text="451 4.7.1 Greylisted, please try again later")


def in_thread(fn, *args):
    """Runs fn(*args) in a thread; returns (thread, box) where box gets
    "result" or "error" (the test thread keeps starting processes, whose
    PR_SET_PDEATHSIG ties them to it)."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


class AddressTest(unittest.TestCase):
    def test_addresses(self):
        self.assertEqual(parse_address("127.0.0.1:7411"), ("tcp", ("127.0.0.1", 7411)))
        self.assertEqual(parse_address("[::1]:7411"), ("tcp", ("::1", 7411)))
        self.assertEqual(parse_address(("localhost", 1)), ("tcp", ("localhost", 1)))
        self.assertEqual(parse_address("/run/rebound/rebound.sock"), ("unix", "/run/rebound/rebound.sock"))
        self.assertEqual(parse_address("./rebound.sock"), ("unix", "./rebound.sock"))
        for bad in ("localhost", "host:port", ":7411", ""):
            with self.assertRaises(ValueError, msg=bad):
                parse_address(bad)


class ClientTest(DaemonTestCase):
    def test_every_call_over_tcp_and_unix(self):
        redis, d, _ = self.start_all()
        for addr in (tcp(d), d.unix_path):
            with self.subTest(addr=addr), Client(addr) as c:
                self.assertEqual(c.ping(), {"ok": True})
                mid = unique_id("ops")
                r = c.bounce(mid, "alice@example.com", campaign="spring", meta={"tenant": "acme"}, **GREY)
                self.assertEqual((r["id"], r["class"], r["action"], r["attempt"]), (mid, "greylist", "retry", 1))
                g = c.get(mid)
                self.assertEqual((g["id"], g["campaign"], g["meta"]), (mid, "spring", {"tenant": "acme"}))
                self.assertEqual(g["history"][0]["code"], 451)
                self.assertEqual(c.get(rcpt="Alice@Example.com")["recipient"]["address"], "alice@example.com")
                self.assertEqual(c.delivered(mid, "alice@example.com")["found"], True)
                self.assertEqual(c.cancel(mid), {"ok": True, "id": mid, "found": False})
                with self.assertRaises(ReboundError) as cm:
                    c.get(mid)
                self.assertEqual(cm.exception.code, "not_found")
                self.assertTrue(cm.exception.message)
                self.assertEqual(cm.exception.reply["ok"], False)
                cl = c.classify(code=550, enhanced="5.1.1", text="User unknown")
                self.assertEqual((cl["class"], cl["action"]), ("hard_invalid", "suppress"))
                s = c.stats()
                self.assertEqual(s["redis"], "up")
                self.assertGreaterEqual(s["reports"], 1)
                self.assertEqual(c.request("suppressed", count=10)["ok"], True)
                # not_before is passed on: the retry is no earlier (within
                # the fast policy's maximum age of 4.32 s)
                later_ms = int(time.time() * 1000) + 2000
                r2 = c.bounce(unique_id("nb"), "bob@example.com", not_before=later_ms, **GREY)
                self.assertGreaterEqual(r2["retry_at"], later_ms)
                self.assertEqual(c.connects, 1)

    def test_errors_carry_the_protocol_code(self):
        redis, d, _ = self.start_all()
        with Client(tcp(d)) as c:
            with self.assertRaises(ReboundError) as cm:
                c.bounce(unique_id("e"), "a@example.com", 250)
            self.assertEqual(cm.exception.code, "bad_request")
            self.assertIn("code", cm.exception.message)
            with self.assertRaises(ReboundError) as cm:
                c.request("bounse")
            self.assertEqual(cm.exception.code, "unknown_op")
            with self.assertRaises(ReboundError) as cm:
                c.bounce(unique_id("e"), "a@example.com", 451, text="x" * 5000)
            self.assertEqual(cm.exception.code, "too_large")
            # a line over the daemon's limit is refused before it is sent:
            # the daemon would close the connection on it
            with self.assertRaises(ReboundError) as cm:
                c.bounce(unique_id("e"), "a@example.com", 451, meta={"x": "y" * MAX_LINE})
            self.assertEqual(cm.exception.code, "too_large")
            self.assertEqual(c.ping(), {"ok": True})
            self.assertEqual(c.connects, 1, "an error reply must not cost the connection")

    def test_bounce_many_one_result_per_report_in_order(self):
        redis, d, _ = self.start_all()
        ids = [unique_id("many") for _ in range(6)]
        reports = [
            dict(id=ids[0], rcpt="a@example.com", **GREY),
            dict(id=ids[1], rcpt="b@example.com", code="451"),  # a string code: bad_request
            dict(id=ids[2], rcpt="c@example.com", code=451, text="t" * 5000),  # too_large, line kept
            dict(id=ids[3], rcpt="d@example.com", code=451, meta={"x": "y" * MAX_LINE}),  # not sent
            dict(id=ids[4], rcpt="e@example.org", code=550, enhanced="5.1.1", text="User unknown"),
            dict(id=ids[5], rcpt="f@example.com", **GREY),
        ]
        with Client(tcp(d)) as c:
            res = c.bounce_many(reports)
            self.assertEqual(len(res), 6)
            self.assertEqual(res[0]["action"], "retry")
            self.assertEqual([res[i].code for i in (1, 2, 3)], ["bad_request", "too_large", "too_large"])
            self.assertEqual((res[4]["id"], res[4]["action"]), (ids[4], "suppress"))
            self.assertEqual((res[5]["id"], res[5]["action"]), (ids[5], "retry"))
            self.assertEqual(c.connects, 1)
            # pipeline() takes any op
            res = c.pipeline([{"op": "ping"}, {"op": "get", "id": ids[0]}, {"op": "get", "id": ids[1]}])
            self.assertEqual(res[0], {"ok": True})
            self.assertEqual(res[1]["id"], ids[0])
            self.assertEqual(res[2].code, "not_found")

    def test_token(self):
        fd, config = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"token": "s3cret"}, f)
        self.addCleanup(os.unlink, config)
        redis = self.start_redis()
        d = self.start_daemon(redis, extra_args=["-c", config])
        with Client(tcp(d), token="s3cret") as c:
            self.assertEqual(c.bounce(unique_id("tok"), "a@example.com", **GREY)["action"], "retry")
        with Client(tcp(d)) as c:
            with self.assertRaises(ReboundError) as cm:
                c.stats()
            self.assertEqual(cm.exception.code, "auth_required")
        t0 = time.monotonic()
        with Client(tcp(d), token="wrong") as c:
            with self.assertRaises(ReboundError) as cm:
                c.ping()
            self.assertEqual(cm.exception.code, "auth_required")
        self.assertLess(time.monotonic() - t0, 2, "a wrong token is not worth retrying")

    def test_busy_then_back_pressure(self):
        # max_connections 2, both held: the client is told busy and closed
        # on, and tries again; once in, its 2000 pipelined reports meet a
        # daemon that reads 4 requests ahead at most (max_inflight)
        fd, config = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"max_connections": 2, "max_inflight": 4}, f)
        self.addCleanup(os.unlink, config)
        redis = self.start_redis()
        d = self.start_daemon(redis, extra_args=["-c", config])
        holders = [self.connect(d), self.connect(d)]
        for h in holders:
            self.assertPing(h)
        c = Client(tcp(d), retry_deadline=20)
        self.addCleanup(c.close)
        reps = [dict(id=unique_id("bp"), rcpt="u%d@d%d.example.com" % (i, i % 50), **GREY) for i in range(2000)]
        t, box = in_thread(c.bounce_many, reps)
        time.sleep(0.5)
        self.assertTrue(t.is_alive(), "got in past max_connections: %r" % (box,))
        self.assertGreaterEqual(c.connects, 2, "busy was not retried")
        holders[1].close()
        t.join(30)
        self.assertNotIn("error", box)
        self.assertEqual([r["id"] for r in box["result"]], [r["id"] for r in reps])
        self.assertTrue(all(r["action"] == "retry" for r in box["result"]))

    def test_resend_across_a_daemon_restart(self):
        redis, d, _ = self.start_all()
        c = Client(tcp(d), retry_deadline=20)
        self.addCleanup(c.close)
        mid = unique_id("rs")
        first = c.bounce(mid, "a@example.com", **GREY)
        d.kill9()
        t, box = in_thread(c.bounce_many, [dict(id=unique_id("rs"), rcpt="b@example.com", **GREY),
                                           dict(op="ping")])
        time.sleep(0.4)
        self.assertTrue(t.is_alive(), "the call did not wait for the daemon")
        d.start()
        t.join(20)
        self.assertNotIn("error", box)
        self.assertEqual(box["result"][0]["action"], "retry")
        self.assertEqual(box["result"][1], {"ok": True})
        self.assertGreaterEqual(c.connects, 2)
        self.assertEqual(c.get(mid)["attempt"], first["attempt"])

    def test_resend_across_a_graceful_restart(self):
        # SIGTERM: the daemon stops reading, answers what it has written and
        # half-closes; the client reads to the end and resends the rest
        redis, d, _ = self.start_all()
        c = Client(tcp(d), retry_deadline=20)
        self.addCleanup(c.close)
        reps = [dict(id=unique_id("gr"), rcpt="u%d@d%d.example.com" % (i, i % 500), **GREY) for i in range(5000)]
        t, box = in_thread(c.bounce_many, reps)
        wait_until(lambda: redis.cmd("HLEN", "rebound:msg") >= 1000, 20, interval=0.002)
        d.term()
        d.start()
        t.join(30)
        self.assertNotIn("error", box)
        self.assertEqual([r["id"] for r in box["result"]], [r["id"] for r in reps])
        self.assertGreaterEqual(c.connects, 2, "the batch ended before the restart")

    def test_unavailable_is_resent_until_redis_is_back(self):
        redis, d, hc = self.start_all()
        redis.kill9()
        # the daemon answers unavailable while Redis is down
        mid = unique_id("un")
        self.assertError(hc.request({"op": "bounce", "id": mid, "rcpt": "a@example.com", **GREY}), "unavailable")
        c = Client(tcp(d), retry_deadline=30, backoff_max=0.3)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        t, box = in_thread(c.bounce, mid, "a@example.com", 451, "4.7.1", "Greylisted, try again later")
        time.sleep(0.5)
        self.assertTrue(t.is_alive(), "the call returned while Redis was down: %r" % (box,))
        redis.start()
        t.join(30)
        self.assertNotIn("error", box)
        self.assertEqual(box["result"]["action"], "retry")
        log("bounce answered %.2fs after Redis went down" % (time.monotonic() - t0))
        self.assertEqual(c.connects, 1, "unavailable is resent on the same connection")
        self.assertEqual(c.get(mid)["attempt"], 1)

    def test_retry_deadline(self):
        redis, d, _ = self.start_all()
        redis.kill9()
        with Client(tcp(d), retry_deadline=0.5) as c:
            t0 = time.monotonic()
            with self.assertRaises(ReboundError) as cm:
                c.bounce(unique_id("dl"), "a@example.com", **GREY)
            self.assertEqual(cm.exception.code, "unavailable")
            self.assertLess(time.monotonic() - t0, 3)
            res = c.bounce_many([dict(id=unique_id("dl"), rcpt="a@example.com", **GREY)] * 3)
            self.assertEqual([r.code for r in res], ["unavailable"] * 3)
        d.kill9()
        with Client(tcp(d), retry_deadline=0.5) as c:
            t0 = time.monotonic()
            with self.assertRaises(ReboundError) as cm:
                c.ping()
            self.assertEqual(cm.exception.code, "disconnected")
            self.assertLess(time.monotonic() - t0, 3)

    def test_consumer_acks_and_redelivery(self):
        redis, d, _ = self.start_all()
        group = unique_id("grp").replace("-", "_")
        mids = [unique_id("ev") for _ in range(3)]
        with Client(tcp(d)) as c:
            c.bounce_many([dict(id=m, rcpt="%s@example.com" % m, **GREY) for m in mids])

        def retries(consumer, n, timeout=5.0):
            got = []
            deadline = time.monotonic() + timeout
            while len(got) < n and time.monotonic() < deadline:
                ev = consumer.next_event(timeout=0.2)
                if ev is not None:
                    self.assertNotIn("ok", ev)
                    got.append(ev)
            return got

        # not acked: delivered again to the group's next connection
        with Consumer(d.unix_path, group, types=["retry"]) as cons:
            evs = retries(cons, 3)
            self.assertEqual(sorted(e["id"] for e in evs), sorted(mids))
            self.assertTrue(all(e["type"] == "retry" and e["attempt"] == 1 for e in evs))
        with Consumer(tcp(d), group, types=["retry"], ack_batch=1000, ack_interval=60) as cons:
            evs = retries(cons, 3)
            self.assertEqual(sorted(e["id"] for e in evs), sorted(mids))
            for e in evs:
                cons.ack(e)
            # close() sends the acks held back by the batch
        with Consumer(tcp(d), group, types=["retry"]) as cons:
            self.assertEqual(retries(cons, 1, timeout=0.7), [], "acked events came again")
        # the time-based flush: acked after ack_interval while waiting
        mid = unique_id("ev")
        with Client(tcp(d)) as c:
            c.bounce(mid, "x@example.com", **GREY)
        with Consumer(tcp(d), group, types=["retry"], ack_interval=0.1) as cons:
            ev = retries(cons, 1)[0]
            cons.ack(ev)
            self.assertIsNone(cons.next_event(timeout=0.4))
            pending = redis.cmd("XPENDING", "rebound:events", group)
            self.assertEqual(pending[0], 0, "the ack was not flushed in time: %r" % (pending,))

    def test_consumer_survives_a_daemon_restart(self):
        redis, d, _ = self.start_all()
        group = unique_id("grp").replace("-", "_")
        cons = Consumer(tcp(d), group, types=["retry"])
        self.addCleanup(cons.close)
        self.assertIsNone(cons.next_event(timeout=0.2))
        d.kill9()
        self.assertIsNone(cons.next_event(timeout=0.3), "an event from a dead daemon")
        d.start()
        mid = unique_id("cr")
        with Client(tcp(d)) as c:
            c.bounce(mid, "a@example.com", **GREY)
        ev = cons.next_event(timeout=5)
        self.assertIsNotNone(ev)
        self.assertEqual((ev["type"], ev["id"]), ("retry", mid))
        self.assertGreaterEqual(cons.connects, 2)


class AsyncClientTest(DaemonTestCase):
    def run_async(self, coro, timeout=30):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    def test_calls_errors_and_concurrency(self):
        redis, d, _ = self.start_all()

        async def main():
            async with AsyncClient(d.unix_path) as c:
                self.assertEqual(await c.ping(), {"ok": True})
                mid = unique_id("a")
                r = await c.bounce(mid, "a@example.com", **GREY)
                self.assertEqual(r["action"], "retry")
                self.assertEqual((await c.get(mid))["id"], mid)
                with self.assertRaises(ReboundError) as cm:
                    await c.get(unique_id("nope"))
                self.assertEqual(cm.exception.code, "not_found")
                with self.assertRaises(ReboundError) as cm:
                    await c.bounce(mid, "a@example.com", 250)
                self.assertEqual(cm.exception.code, "bad_request")
                ids = [unique_id("g") for _ in range(500)]
                rs = await asyncio.gather(*(c.bounce(i, "%s@example.com" % i, **GREY) for i in ids))
                self.assertEqual([r["id"] for r in rs], ids)
                res = await c.bounce_many([dict(id=ids[0], rcpt="x@example.com", code="451"),
                                           dict(id=unique_id("g"), rcpt="y@example.com", **GREY)])
                self.assertEqual(res[0].code, "bad_request")
                self.assertEqual(res[1]["action"], "retry")
                self.assertEqual((await c.classify(code=452, enhanced="4.2.2"))["class"], "mailbox_full")
                self.assertEqual((await c.stats())["redis"], "up")
                self.assertEqual((await c.delivered(mid))["found"], True)
                self.assertEqual((await c.cancel(mid))["found"], False)
                self.assertEqual(c.connects, 1)

        self.run_async(main())

    def test_an_idle_connection_is_kept(self):
        # the silence time-out counts from the first request waiting, not
        # from the last reply: an idle spell longer than it costs nothing
        redis, d, _ = self.start_all()

        async def main():
            async with AsyncClient(tcp(d), timeout=0.3) as c:
                await c.ping()
                await asyncio.sleep(0.8)
                self.assertEqual(await c.ping(), {"ok": True})
                return c.connects

        self.assertEqual(self.run_async(main()), 1)
        with Client(tcp(d), timeout=0.3) as c:
            c.ping()
            time.sleep(0.8)
            self.assertEqual(c.ping(), {"ok": True})
            self.assertEqual(c.connects, 1)

    def test_resend_across_a_daemon_restart_and_deadline(self):
        redis, d, _ = self.start_all()
        out = {}

        async def main(phase):
            async with AsyncClient(tcp(d), retry_deadline=20 if phase == "restart" else 0.5) as c:
                if phase == "restart":
                    rs = await asyncio.gather(c.ping(), c.bounce(unique_id("ar"), "a@example.com", **GREY))
                    out["rs"], out["connects"] = rs, c.connects
                else:
                    with self.assertRaises(ReboundError) as cm:
                        await c.ping()
                    out["code"] = cm.exception.code

        d.kill9()
        t, box = in_thread(self.run_async, main("restart"))
        time.sleep(0.4)
        self.assertTrue(t.is_alive())
        d.start()
        t.join(30)
        self.assertNotIn("error", box)
        self.assertEqual(out["rs"][0], {"ok": True})
        self.assertEqual(out["rs"][1]["action"], "retry")
        d.kill9()
        t0 = time.monotonic()
        self.run_async(main("deadline"))
        self.assertEqual(out["code"], "disconnected")
        self.assertLess(time.monotonic() - t0, 3)

    def test_async_consumer(self):
        redis, d, _ = self.start_all()
        group = unique_id("agrp").replace("-", "_")
        mids = [unique_id("aev") for _ in range(3)]

        async def main():
            async with AsyncClient(tcp(d)) as c:
                await c.bounce_many([dict(id=m, rcpt="%s@example.com" % m, **GREY) for m in mids])

            async def take(cons, n, timeout):
                got = []
                deadline = time.monotonic() + timeout
                while len(got) < n and time.monotonic() < deadline:
                    ev = await cons.next_event(timeout=0.2)
                    if ev is not None:
                        got.append(ev)
                return got

            async with AsyncConsumer(d.unix_path, group, types=["retry"]) as cons:
                evs = await take(cons, 3, 5)
                self.assertEqual(sorted(e["id"] for e in evs), sorted(mids))
            # not acked: they come again; acked on close
            async with AsyncConsumer(tcp(d), group, types=["retry"], ack_interval=60) as cons:
                n = 0
                async for ev in cons:
                    self.assertIn(ev["id"], mids)
                    await cons.ack(ev)
                    n += 1
                    if n == 3:
                        break
            async with AsyncConsumer(tcp(d), group, types=["retry"]) as cons:
                self.assertEqual(await take(cons, 1, 0.7), [], "acked events came again")

        self.run_async(main())


if __name__ == "__main__":
    unittest.main()
