"""The Python client against three reboundd sharing one schedule in six
shards by recipient (docs/operations.md, "Shards: several reboundd sharing
the schedule"): given one address, the blocking and the asyncio client ask
``cluster`` and send each report straight to its shard's owner (no
instance relays one: the ``forwarded`` counters stay put), every report is
acknowledged and gets its retry event; kill -9 of one owner mid-batch: the
batch goes on through the others (relayed until the shards are taken
over), 0 acknowledged reports without their retry event, and the next
batch goes straight to the new owners.

Real redis-server and three real reboundd on free loopback ports, the fast
policy, shards 6, lease_ttl 1.5 s. Bounded: each case has a budget."""

import asyncio
import json
import os
import threading
import time
import unittest

from pyclient_base import DaemonTestCase, log, tcp, unique_id, wait_until
from rebound_client import AsyncClient, Client, Consumer
from rebound_client._protocol import (MAP_REFRESH, MAP_REFRESH_MIN, ReboundError, ShardMap, Targets, crc16,
                                      route_rcpt, shard_of)

GREY = dict(code=451, enhanced="4.7.1", text="451 4.7.1 Greylisted, please try again later")
TTL_MS = 1500
SHARDS = 6
BUDGET_S = 60


def rcpt_of(tag, i):
    # upper and lower case (the hash lowers A-Z), many domains (no domain's
    # pace holds the retries back)
    user = ("User%d" if i % 3 == 0 else "u%d") % i
    return "%s.%s@D%d.Example" % (user, tag, i % 64) if i % 2 else "%s.%s@d%d.example" % (user, tag, i % 64)


class MapTest(unittest.TestCase):
    """The routing bookkeeping alone, no daemon."""

    CLUSTER = {"ok": True, "shards": 3, "map": ["h:1", "h:2", ""],
               "instances": [{"id": "a", "addr": "h:1", "shards": [0]}, {"id": "b", "addr": "h:2", "shards": [1]}]}

    def test_map(self):
        m = ShardMap()
        self.assertTrue(m.due(0.0))
        self.assertIsNone(m.owner("x@y"))
        m.update(self.CLUSTER, 100.0)
        self.assertEqual((m.shards, m.instances), (3, ["h:1", "h:2"]))
        by_shard = {}
        for i in range(200):
            by_shard.setdefault(shard_of("u%d@x" % i, 3), m.owner("u%d@x" % i))
        self.assertEqual(by_shard, {0: "h:1", 1: "h:2", 2: None})  # "": unknown, any instance
        self.assertFalse(m.due(100.0 + MAP_REFRESH - 0.1))
        self.assertTrue(m.due(100.0 + MAP_REFRESH))
        m.stale = True
        self.assertFalse(m.due(100.0 + MAP_REFRESH_MIN / 2))
        self.assertTrue(m.due(100.0 + MAP_REFRESH_MIN))
        # nobody answered: the map as it was, asked again later
        m.update(ReboundError("disconnected", "down"), 200.0)
        self.assertEqual((m.shards, m.owners, m.stale), (3, ["h:1", "h:2", ""], True))
        # a daemon without the op, or one schedule: nothing routed
        m.update(ReboundError.from_reply({"ok": False, "error": {"code": "unknown_op"}}), 300.0)
        self.assertEqual((m.shards, m.owner("u1@x"), m.stale), (1, None, False))
        m.update({"ok": True, "shards": 1, "instances": []}, 400.0)
        self.assertEqual(m.shards, 1)

    def test_routed_ops(self):
        self.assertEqual(route_rcpt({"op": "bounce", "id": "m", "rcpt": "a@b"}), "a@b")
        self.assertEqual(route_rcpt({"op": "get", "rcpt": "a@b"}), "a@b")
        self.assertEqual(route_rcpt({"op": "delivered", "id": "m", "rcpt": "a@b"}), "a@b")
        self.assertIsNone(route_rcpt({"op": "get", "id": "m"}))
        self.assertIsNone(route_rcpt({"op": "stats"}))
        self.assertIsNone(route_rcpt({"op": "list", "rcpt": "a@b"}))

    def test_targets_learn_instances(self):
        t = Targets("h:9")
        moves = []
        t.on_change = lambda: moves.append(t.current)
        t.add(["h:1", "h:9", "not an address", "h:2"])
        self.assertEqual(t.addresses, ["h:9", "h:1", "h:2"])
        self.assertFalse(t.away)
        t.failed()
        self.assertEqual((t.current, t.away), ("h:1", True))
        self.assertTrue(t.moved({"owner": "h:2"}))
        self.assertEqual(moves, ["h:1", "h:2"])

    def test_asyncio_retires_a_busy_lane(self):
        # The map names another owner while a request is still on the old
        # owner's lane: the lane leaves the routes at once, and closes only
        # once that request is done (it must not be failed by the close).
        async def run():
            ac = AsyncClient("h:9")
            ac._took_map(self.CLUSTER)
            rcpt = next("u%d@x" % i for i in range(200) if shard_of("u%d@x" % i, 3) == 0)
            lane = ac._lane_for(rcpt)
            self.assertEqual(ac.routes["owners"], ["h:1"])
            lane._unsent.append(object())  # a request not answered yet
            ac._took_map(dict(self.CLUSTER, map=["h:2", "h:2", ""]))
            self.assertEqual(ac.routes["owners"], [])
            await asyncio.sleep(0.2)
            self.assertFalse(lane._closed, "closed with a request on it")
            lane._unsent.clear()
            await asyncio.sleep(0.2)
            self.assertTrue(lane._closed)
            self.assertEqual(ac._retired, {})
            await ac.close()
        asyncio.run(run())

    def test_hash_is_the_daemons(self):
        # CRC-16/XMODEM's check value; only ASCII letters are lowered, as
        # reboundd lowers the address's bytes
        self.assertEqual(crc16(b"123456789"), 0x31C3)
        self.assertEqual(shard_of("Alice@EXAMPLE.com", SHARDS), shard_of("alice@example.com", SHARDS))
        self.assertEqual(shard_of("\u00c9@x", 64), crc16("\u00c9@x".encode()) % 64)
        self.assertEqual(shard_of("a@b", 1), 0)


class ShardsTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.t0 = time.monotonic()

    def left(self):
        return BUDGET_S - (time.monotonic() - self.t0)

    def start_sharded(self, redis, iid):
        d = self.start_daemon(redis, wait_ready=False)
        d.proc.kill()
        d.proc.wait()
        conf = os.path.join(d.dir, "reboundd.json")
        with open(conf, "w") as f:
            json.dump({"lease_ttl": "%dms" % TTL_MS, "instance_id": iid, "shards": SHARDS}, f)
        d.extra_args = ["-c", conf]
        d.start(wait_ready=True)
        return d

    def cluster(self, d):
        with d.client(timeout=2.0) as c:
            r = c.request({"op": "cluster"})
        self.assertTrue(r["ok"], r)
        return r

    def wait_spread(self, ds, timeout):
        """Every shard served by one of ds, none more than its fair share,
        and every one of ds telling the same complete map."""
        share = -(-SHARDS // len(ds))

        def spread():
            got = [self.cluster(d) for d in ds]
            flat = sorted(k for g in got for k in g["serving"])
            maps = {json.dumps(g["map"]) for g in got}
            return (flat == list(range(SHARDS)) and all(len(g["serving"]) <= share for g in got)
                    and len(maps) == 1 and "" not in got[0]["map"])
        wait_until(spread, min(timeout, self.left()), interval=0.05, what="the shards spread over %d" % len(ds))

    def three(self):
        redis = self.start_redis()
        ds = [self.start_sharded(redis, iid) for iid in ("a", "b", "c")]
        self.wait_spread(ds, 15)
        return redis, ds

    def forwarded(self, ds):
        return sum(self.cluster(d)["forwarded"] for d in ds)

    def collect_retries(self, consumer, ids, timeout):
        """Reads retry events until every id in ids has one; the ids
        without one when the time is up, and how many came more than once."""
        seen = {}
        deadline = time.monotonic() + min(timeout, self.left())
        while not ids <= seen.keys() and time.monotonic() < deadline:
            ev = consumer.next_event(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
            if ev is None:
                continue
            if ev.get("type") == "retry":
                seen[ev["id"]] = seen.get(ev["id"], 0) + 1
            consumer.ack(ev)
        return ids - set(seen), sum(1 for i in ids if seen.get(i, 0) > 1)

    def assert_all_retry(self, results, ids):
        bad = [r for r in results if isinstance(r, Exception) or r.get("action") != "retry"]
        self.assertEqual(bad[:3], [], "%d of %d reports not acknowledged" % (len(bad), len(results)))
        self.assertEqual([r["id"] for r in results], ids)

    # ------------------------------------------------------------------

    def test_hash_matches_the_daemon(self):
        """The daemons' own routing: a get for each of 600 recipients
        (mixed case) sent raw to the owner this client computes is relayed
        by nobody."""
        _, ds = self.three()
        by_addr = {tcp(d): d for d in ds}
        owners = self.cluster(ds[0])["map"]
        per = {d: [] for d in ds}
        for i in range(600):
            # some with UTF-8 (SMTPUTF8): only A-Z are lowered, by byte
            r = rcpt_of("h", i) if i % 10 else "J\u00d6RG%d.\u00e9t\u00c9@D%d.Example" % (i, i % 7)
            per[by_addr[owners[shard_of(r, SHARDS)]]].append({"op": "get", "rcpt": r})
        self.assertTrue(all(len(v) > 100 for v in per.values()), {tcp(d): len(v) for d, v in per.items()})
        before = self.forwarded(ds)
        for d, reqs in per.items():
            with d.client() as c:
                reps = c.pipeline(reqs, timeout=10)
            self.assertEqual([r for r in reps if not r["ok"]], [])
        self.assertEqual(self.forwarded(ds), before)
        log("600 recipients: the shard computed here is the one each daemon serves (0 relayed)")

    def test_reports_go_straight_to_owners(self):
        """Blocking and asyncio clients given one address: every report
        and every get/delivered by recipient answered by its owner, none
        relayed; every report's retry event comes."""
        _, ds = self.three()
        a, b, c = ds
        before = self.forwarded(ds)
        n = 1500
        with Consumer(tcp(c), "shards-py", types=["retry"], ack_batch=200) as cons:
            with Client(tcp(a), retry_deadline=20) as cl:
                ids = [unique_id("sh") for _ in range(n)]
                rs = cl.bounce_many([dict(id=m, rcpt=rcpt_of("s", k), **GREY) for k, m in enumerate(ids)])
                self.assert_all_retry(rs, ids)
                # one connection of its own per other owner: a is served on the first
                self.assertEqual(cl.routes["shards"], SHARDS)
                self.assertEqual(cl.routes["owners"], sorted([tcp(b), tcp(c)]))
                one = cl.bounce(unique_id("sh-one"), rcpt_of("s", 7), **GREY)
                self.assertEqual(one["action"], "retry")
                got = cl.get(rcpt=rcpt_of("s", 7))
                self.assertEqual(got["recipient"]["address"], rcpt_of("s", 7).lower(), got)
                self.assertTrue(cl.delivered(one["id"], rcpt=rcpt_of("s", 7))["found"])
                self.assertTrue(cl.stats()["ok"])  # any instance
                ids.append(one["id"])

            async def run():
                async with AsyncClient(tcp(b), retry_deadline=20) as ac:
                    more = [unique_id("sh-aio") for _ in range(n)]
                    half = n // 2
                    rs1 = await ac.bounce_many([dict(id=m, rcpt=rcpt_of("t", k), **GREY)
                                                for k, m in enumerate(more[:half])])
                    rs2 = await asyncio.gather(*[ac.bounce(m, rcpt_of("t", k + half), **GREY)
                                                 for k, m in enumerate(more[half:])])
                    self.assert_all_retry(rs1 + list(rs2), more)
                    self.assertEqual(ac.routes["owners"], sorted([tcp(a), tcp(c)]))
                    return more

            more = asyncio.run(run())
            relayed = self.forwarded(ds) - before
            self.assertEqual(relayed, 0, "reports relayed by an instance: the client did not route them")
            # the one delivered before it fired may or may not have had its retry
            missing, dups = self.collect_retries(cons, set(ids[:-1]) | set(more), 30)
        self.assertEqual(len(missing), 0, "%d acknowledged reports without a retry event, e.g. %s"
                         % (len(missing), sorted(missing)[:5]))
        log("2 x %d reports over %d shards through clients given one address: 0 relayed, every retry event "
            "(%d more than once)" % (n, SHARDS, dups))

    def test_kill9_of_an_owner_mid_batch(self):
        """kill -9 of one owner while a blocking batch is in flight: every
        report acknowledged, each gets its retry event (duplicates
        counted), the next batch goes straight to the new owners."""
        _, ds = self.three()
        a, b, c = ds
        lost = self.cluster(b)["serving"]
        with Consumer(tcp(c), "shards-kill", types=["retry"], ack_batch=200) as cons:
            ids = []
            with Client(tcp(a), retry_deadline=30) as cl:
                warm = [unique_id("k-warm") for _ in range(300)]
                self.assert_all_retry(cl.bounce_many([dict(id=m, rcpt=rcpt_of("w", k), **GREY)
                                                      for k, m in enumerate(warm)]), warm)
                ids += warm
                self.assertIn(tcp(b), cl.routes["owners"])
                # the kill lands while the batch is in flight: 15,000
                # reports take far longer than the 100 ms the thread waits
                # (about 25,000 reports/s at best here; checked below)
                batch = [unique_id("k-blk") for _ in range(15000)]
                state = {}

                def killer():
                    time.sleep(0.1)
                    b.kill9()
                    state["killed"] = time.monotonic()
                t = threading.Thread(target=killer)
                t0 = time.monotonic()
                t.start()
                rs = cl.bounce_many([dict(id=m, rcpt=rcpt_of("k", k), **GREY) for k, m in enumerate(batch)])
                done = time.monotonic()
                t.join()
                self.assertLess(state["killed"], done, "the batch ended before the kill: make it longer")
                self.assert_all_retry(rs, batch)
                ids += batch
                log("blocking batch of %d: b (shards %s) killed %.0f ms in, batch done %.0f ms in, all "
                    "acknowledged" % (len(batch), lost, (state["killed"] - t0) * 1000, (done - t0) * 1000))
                self.wait_spread([a, c], 10)
                before = self.forwarded([a, c])
                time.sleep(0.3)  # past the least time between two cluster asks
                after = [unique_id("k-after") for _ in range(600)]
                self.assert_all_retry(cl.bounce_many([dict(id=m, rcpt=rcpt_of("n", k), **GREY)
                                                      for k, m in enumerate(after)]), after)
                self.assertEqual(self.forwarded([a, c]), before, "relayed after the takeover")
                self.assertNotIn(tcp(b), cl.routes["map"])
                self.assertEqual(cl.routes["owners"], [tcp(c)], "the dead owner's connection given up")
                ids += after
            missing, dups = self.collect_retries(cons, set(ids), 30)
        self.assertEqual(len(missing), 0, "%d acknowledged reports without a retry event, e.g. %s"
                         % (len(missing), sorted(missing)[:5]))
        log("kill -9 of an owner mid-batch: %d acknowledged, 0 without a retry event, %d more than once; "
            "after the takeover 0 relayed" % (len(ids), dups))

    def test_kill9_of_an_owner_mid_batch_asyncio(self):
        """The same with the asyncio client, the kill once 1000 of 4000
        concurrent bounce calls are acknowledged."""
        _, ds = self.three()
        a, b, c = ds
        with Consumer(tcp(a), "shards-kill-aio", types=["retry"], ack_batch=200) as cons:
            async def run():
                async with AsyncClient(tcp(a), retry_deadline=30) as ac:
                    batch = [unique_id("ka") for _ in range(4000)]
                    futs = [asyncio.ensure_future(ac.bounce(m, rcpt_of("ka", k), **GREY))
                            for k, m in enumerate(batch)]
                    acked = 0
                    killed_at = None
                    for f in asyncio.as_completed(futs):
                        await f
                        acked += 1
                        if acked == 1000:
                            c.kill9()
                            killed_at = acked
                    rs = [f.result() for f in futs]
                    self.assert_all_retry(rs, batch)
                    self.assertEqual(killed_at, 1000)
                    self.wait_spread([a, b], 10)
                    await asyncio.sleep(0.3)
                    # the first call after the move asks cluster anew and
                    # goes on with the old map meanwhile: one call first
                    await ac.bounce(unique_id("ka-probe"), rcpt_of("ka", 0), **GREY)
                    await asyncio.sleep(0.2)
                    before = self.forwarded([a, b])
                    after = [unique_id("ka-after") for _ in range(600)]
                    rs2 = await ac.bounce_many([dict(id=m, rcpt=rcpt_of("kb", k), **GREY)
                                                for k, m in enumerate(after)])
                    self.assert_all_retry(rs2, after)
                    self.assertEqual(self.forwarded([a, b]), before, "relayed after the takeover")
                    return batch + after
            ids = asyncio.run(run())
            missing, dups = self.collect_retries(cons, set(ids), 30)
        self.assertEqual(len(missing), 0, "%d acknowledged reports without a retry event, e.g. %s"
                         % (len(missing), sorted(missing)[:5]))
        log("asyncio, kill -9 of an owner after 1000 of 4000 acknowledged: 0 without a retry event, %d more "
            "than once; after the takeover 0 relayed" % dups)


if __name__ == "__main__":
    unittest.main()
