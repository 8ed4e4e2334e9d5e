"""Several reboundd sharing one schedule in shards by recipient
(docs/operations.md, "Shards: several reboundd sharing the schedule").

Real redis-server and three real reboundd on free loopback ports, the fast
policy, shards 6, lease_ttl 1.5 s (renewed every 300 ms, checked every
150 ms).

  spread      the six shards spread two by two over the three instances;
              the cluster op from any instance tells the same map; the
              layout is recorded (meta) and an instance configured with
              another number of shards refuses to start
  forty       one instance with 40 shards: every record in its shard's hash
  same        the integration scenarios' core (bounce, duplicate, get,
              list, hold, release, cancel, get, delivered, a hard bounce, the
              suppressed recipient's next bounce, an invalid request) sent
              through an instance that does not serve the message's shard
              give the same replies as one daemon alone
  events      a subscriber on one instance receives the retry events of
              every shard
  ctl         reboundctl given every instance (the first one dead) sends a
              report straight to its shard's owner: no instance relays it
  bench       rebound-bench w1 against one instance sends every report
              straight to its owner (none relayed); --via-target relays
  fenced      one shard's epoch moves under its owner: its next write is
              refused, the record unchanged, its other shards go on
  kill9       kill -9 of one instance under pipelined ingest through the
              others, retries falling due: its shards are taken over and
              fire; every acknowledged report has its retry event
              (duplicates counted); kill -> its shards served again printed
  sigterm     SIGTERM of one instance under ingest: its shards are handed
              over within a few checks; clients see only `unavailable`
              (resent); 0 lost

Runs under ctest as ha.shards (RUN_SERIAL), each case bounded by its own
budget, every process killed on every path.
"""

import json
import os
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from failover_load import ingest_rotating, start_configured  # noqa: E402

from harness import (BUILD_DIR, GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, free_port, now_ms,  # noqa: E402
                     unique_id, wait_until)
from cluster_op import ClusterOp  # noqa: E402
from shard_hash import crc16, shard_index  # noqa: E402
import stream_events  # noqa: E402

TTL_MS = 1500
SHARDS = 6
EVENTS = "rebound:events"
CASE_BUDGET_S = 55


def log(msg):
    sys.stderr.write("  [shards] %s\n" % msg)


def shard_of(rcpt, n=SHARDS):
    return shard_index(rcpt, n)


def rcpt_of(i):
    # many domains, so that no domain's pace holds the retries back
    return "u%d@d%d.example" % (i, i % 64)


class ShardsTest(ClusterOp, DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.t0 = time.monotonic()

    def left(self):
        return CASE_BUDGET_S - (time.monotonic() - self.t0)

    def start_sharded(self, redis, iid, shards=SHARDS, wait_ready=True):
        return start_configured(self, redis, {"lease_ttl": "%dms" % TTL_MS, "instance_id": iid, "shards": shards},
                                wait_ready)

    def three(self, redis):
        ds = [self.start_sharded(redis, iid) for iid in ("a", "b", "c")]
        self.wait_spread(ds, 15)
        return ds

    def wait_spread(self, ds, timeout):
        """Every shard served once, each instance at most its fair share."""
        share = -(-SHARDS // len(ds))

        def spread():
            got = [self.serving(d) for d in ds]
            flat = sorted(k for g in got for k in g)
            return flat == list(range(SHARDS)) and all(len(g) <= share for g in got)
        wait_until(spread, min(timeout, self.left()), interval=0.05, what="the shards spread over %d" % len(ds))
        # and every instance knows every owner (read once a renewal period)
        wait_until(lambda: len({json.dumps(self.cluster(d)["map"]) for d in ds}) == 1 and
                   "" not in self.cluster(ds[0])["map"], min(5, self.left()), interval=0.05,
                   what="one map seen from every instance")

    def owner_of(self, ds, shard):
        for d in ds:
            if shard in self.serving(d):
                return d
        return None

    def retry_counts(self, redis):
        """Retry events in the stream by message id."""
        counts = {}
        for _, body in stream_events.events(redis, EVENTS):
            if not body.startswith("R"):
                continue
            parts = body.split("\n")
            if len(parts) >= 3:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
        return counts

    # ------------------------------------------------------------------

    def test_spread_and_layout(self):
        redis = self.start_redis()
        ds = self.three(redis)
        cl = self.cluster(ds[0])
        self.assertEqual(cl["shards"], SHARDS)
        self.assertEqual(cl["unowned"], [])
        by_id = {m["id"]: m for m in cl["instances"]}
        self.assertEqual(sorted(by_id), ["a", "b", "c"])
        self.assertEqual(sorted(len(m["shards"]) for m in by_id.values()), [2, 2, 2], cl)
        for d in ds:
            self.assertIn("127.0.0.1:%d" % d.port, cl["map"])
        log("6 shards over 3 instances: %s" % {k: m["shards"] for k, m in by_id.items()})
        self.assertEqual(int(redis.cmd("HGET", "rebound:meta", "shards")), SHARDS)
        # each shard's keys under a hash tag of its own, in its own sixth of
        # the slot space
        with ds[0].client() as c:
            for i in range(24):
                self.assertTrue(c.request(bounce("lay-%d" % i, rcpt=rcpt_of(i), **GREYLIST))["ok"])
        # stats from any instance: the whole schedule's counts, summed
        for d in ds:
            with d.client() as cl:
                st = cl.request({"op": "stats"})
            self.assertTrue(st["ok"], st)
            self.assertEqual(st["instances"], 3, st)
            self.assertEqual(st["reports"], 24, st)
            self.assertEqual(len(st["shards"]["serving"]), 2, st)
        keys = sorted(k if isinstance(k, str) else k.decode() for k in redis.cmd("KEYS", "{rebound:s*}msg"))
        self.assertEqual(len(keys), SHARDS, keys)
        slots = sorted(crc16(k[1:k.index("}")].encode()) % 16384 for k in keys)
        for k, slot in enumerate(slots):
            self.assertTrue(k * 16384 // SHARDS <= slot < (k + 1) * 16384 // SHARDS, (keys, slots))
        self.assertIsNone(redis.cmd("HGET", "rebound:msg", "lay-1"))
        # another number of shards: refused at start, with the reason
        bad = self.start_sharded(redis, "d", shards=4, wait_ready=False)
        self.assertEqual(bad.proc.wait(10), 1)
        self.assertIn("holds a layout of 6 shards", bad.log_text())
        one = self.start_sharded(redis, "e", shards=0, wait_ready=False)
        self.assertEqual(one.proc.wait(10), 1)
        self.assertIn("holds a layout of 6 shards", one.log_text())

    def test_forty_shards_one_instance(self):
        """One instance takes all 40 shards; pipelined reports land each in
        its recipient's shard's hash (batches of many shards at once)."""
        redis = self.start_redis()
        d = self.start_sharded(redis, "solo", shards=40, wait_ready=False)
        wait_until(lambda: len(self.serving(d)) == 40, min(10, self.left()), what="all 40 shards served")
        rcpts = ["u%d@D%d.example" % (i, i % 50) for i in range(2000)]
        later = now_ms() + 3000
        with d.client() as c:
            reps = c.pipeline([bounce("s40-%d" % i, rcpt=r, not_before=later, **GREYLIST) for i, r in enumerate(rcpts)],
                              window=500, timeout=10)
        self.assertEqual([r for r in reps if not r["ok"]], [])
        keys = {}
        for k in redis.cmd("KEYS", "{rebound:s*}msg"):
            k = k if isinstance(k, str) else k.decode()
            keys[int(k.split("s", 1)[1].split(".")[0])] = k
        self.assertEqual(len(keys), 40)
        for i, r in enumerate(rcpts):
            self.assertIsNotNone(redis.cmd("HGET", keys[shard_of(r, 40)], "s40-%d" % i), (i, r))

    def scenario(self, d, tag):
        """The same requests under ids and addresses of their own: the
        replies with the ids and times taken out."""
        mid, rcpt = "%s-1" % tag, "x@%s.example" % tag
        # held back 3 s (the fast policy gives up after 4.3 s): still pending
        # when hold and release count it,
        # however slow the machine (the fast policy retries in milliseconds)
        later = now_ms() + 3000
        reqs = [bounce(mid, rcpt=rcpt, req="r1", not_before=later, **GREYLIST),
                bounce(mid, rcpt=rcpt, req="r2", not_before=later, **GREYLIST),
                {"op": "get", "id": mid, "req": "r3"},
                {"op": "list", "domain": "%s.example" % tag, "req": "r3b"},
                {"op": "hold", "domain": "%s.example" % tag, "req": "r4"},
                {"op": "release", "domain": "%s.example" % tag, "req": "r5"},
                {"op": "cancel", "id": mid, "req": "r6"},
                {"op": "get", "id": mid, "req": "r7"},
                bounce("%s-2" % tag, rcpt=rcpt, req="r8", **GREYLIST),
                {"op": "delivered", "id": "%s-2" % tag, "req": "r9"},
                bounce("%s-3" % tag, rcpt=rcpt, req="r10", **USER_UNKNOWN),
                bounce("%s-4" % tag, rcpt=rcpt, req="r11", **GREYLIST),
                {"op": "get", "rcpt": rcpt, "req": "r12"},
                {"op": "unsuppress", "rcpt": rcpt, "req": "r13"},
                {"op": "get", "id": "%s-9" % tag, "req": "r14"},
                {"op": "bounce", "id": "%s-5" % tag, "rcpt": "not an address", "code": 451, "req": "r15"}]
        replies = []
        with d.client() as c:
            for r in reqs:  # one by one: the suppression is read by the next report
                replies.append(c.request(r, timeout=5.0))

        def times_out(v):
            if isinstance(v, dict):
                return {k: times_out(x) for k, x in v.items()}
            if isinstance(v, list):
                return [times_out(x) for x in v]
            if isinstance(v, int) and not isinstance(v, bool) and v > 10 ** 12:
                return "T"
            return v
        return [json.dumps(times_out(json.loads(json.dumps(r).replace(tag, "T"))), sort_keys=True)
                for r in replies]

    def tag_not_served_by(self, d, prefix):
        mine = set(self.serving(d))
        for i in range(1000):
            tag = "%s%d" % (prefix, i)
            if shard_of("x@%s.example" % tag) not in mine:
                return tag
        self.fail("no tag outside %s" % mine)

    def test_same_replies_through_a_non_owner(self):
        single_redis = self.start_redis()
        single = self.start_daemon(single_redis)
        alone = self.scenario(single, "qzs0")
        single.term()
        redis = self.start_redis()
        a, b, c = self.three(redis)
        forwarded_before = self.cluster(a)["forwarded"]
        via = []
        for d, p in ((a, "qza"), (b, "qzb"), (c, "qzc")):
            via.append(self.scenario(d, self.tag_not_served_by(d, p)))
        for v in via:
            self.assertEqual(v, alone)
        self.assertTrue(json.loads(alone[0])["ok"])
        self.assertIn('"action": "suppress"', alone[10])
        self.assertIn('"items": [{', alone[3])
        self.assertGreater(self.cluster(a)["forwarded"], forwarded_before)
        log("the scenario (%d requests) through a non-owner on each of 3 instances: the same replies as one "
            "daemon" % len(alone))

    def test_reboundctl_goes_to_the_owner(self):
        redis = self.start_redis()
        a, b, c = self.three(redis)
        ctl = os.path.join(BUILD_DIR, "reboundctl")
        dead = "127.0.0.1:%d" % free_port()
        servers = ",".join([dead] + ["127.0.0.1:%d" % d.port for d in (a, b, c)])
        before = sum(self.cluster(d)["forwarded"] for d in (a, b, c))
        sent = 0
        for p in ("ctla", "ctlb", "ctlc"):
            tag = self.tag_not_served_by(a, p)
            rcpt = "x@%s.example" % tag
            out = subprocess.run([ctl, "--json", "-s", servers, "bounce", "--id", tag + "-1", "--rcpt", rcpt,
                                  "--code", "451", "--enhanced", "4.7.1", "--text", "greylisted"],
                                 capture_output=True, text=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertTrue(json.loads(out.stdout)["ok"], out.stdout)
            got = subprocess.run([ctl, "--json", "-s", servers, "get", "--rcpt", rcpt],
                                 capture_output=True, text=True, timeout=20)
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertEqual(json.loads(got.stdout)["recipient"]["address"], rcpt, got.stdout)
            sent += 1
        self.assertEqual(sum(self.cluster(d)["forwarded"] for d in (a, b, c)), before)
        log("reboundctl -s dead,a,b,c: %d reports and their gets sent straight to their owners, 0 relayed" % sent)

    def test_rebound_bench_goes_to_the_owners(self):
        redis = self.start_redis()
        a, b, c = self.three(redis)
        bench = os.path.join(BUILD_DIR, "tests", "bench", "rebound-bench")
        forwarded = []
        for extra in ([], ["--via-target"]):
            before = sum(self.cluster(d)["forwarded"] for d in (a, b, c))
            out = subprocess.run([bench, "w1", "--n", "3000", "--conns", "1", "--tcp", "127.0.0.1:%d" % a.port,
                                  "--redis", redis.addr, "--id-prefix", "bench%d-" % len(forwarded)] + extra,
                                 capture_output=True, text=True, timeout=min(40, self.left()))
            self.assertEqual(out.returncode, 0, out.stderr[-2000:])
            self.assertEqual("straight to their owners" in out.stderr, not extra, out.stderr[-2000:])
            forwarded.append(sum(self.cluster(d)["forwarded"] for d in (a, b, c)) - before)
        self.assertEqual(forwarded[0], 0)
        # through one instance, the two thirds it does not own are relayed
        self.assertGreater(forwarded[1], 1000)
        log("rebound-bench w1 (3,000 reports): %d relayed routed, %d through one instance" % tuple(forwarded))

    def test_subscriber_gets_every_shards_events(self):
        redis = self.start_redis()
        a, b, c = self.three(redis)
        sub = c.client(timeout=5.0)
        try:
            sub.subscribe("g")
            ids = set()
            with a.client() as cl:
                for i in range(60):
                    mid = unique_id("ev")
                    ids.add(mid)
                    r = cl.request(bounce(mid, rcpt=rcpt_of(i), **GREYLIST))
                    self.assertTrue(r["ok"], r)
            shards = {shard_of(rcpt_of(i)) for i in range(60)}
            self.assertEqual(shards, set(range(SHARDS)))
            got = set()
            deadline = time.monotonic() + min(20, self.left())
            while got != ids and time.monotonic() < deadline:
                for ev in sub.events(10, 1.0):
                    if ev.get("type") == "retry":
                        got.add(ev["id"])
                        sub.ack([ev["eid"]])
            self.assertEqual(ids - got, set())
        finally:
            sub.close()
        log("a subscriber on one instance: the retry events of all %d shards" % SHARDS)

    def epoch_key(self, redis, shard):
        for k in redis.cmd("KEYS", "{rebound:s*}epoch"):
            k = k if isinstance(k, str) else k.decode()
            if k.startswith("{rebound:s%d." % shard):
                return k
        self.fail("no epoch key for shard %d" % shard)

    def test_fenced_shard(self):
        """Another instance's acquisition of one shard, as Redis sees it (its
        epoch moves): the owner's next write there is refused, the record
        stays; its other shards go on; the shard is taken back."""
        redis = self.start_redis()
        a, b, c = self.three(redis)
        mine = self.serving(a)
        rcpt = next(rcpt_of(i) for i in range(1000) if shard_of(rcpt_of(i)) == mine[0])
        other = next(rcpt_of(i) for i in range(1000) if shard_of(rcpt_of(i)) == mine[1])
        mid = unique_id("fence")
        with a.client() as cl:
            self.assertTrue(cl.request(bounce(mid, rcpt=rcpt, **GREYLIST))["ok"])
            msgs = self.epoch_key(redis, mine[0]).replace("epoch", "msg")
            wait_until(lambda: (redis.cmd("HGET", msgs, mid) or "P")[:1] in ("A", b"A"), 5, what="the retry")
            before = redis.cmd("HGET", msgs, mid)
            moved = int(redis.cmd("INCR", self.epoch_key(redis, mine[0])))
            r = cl.request(bounce(mid, rcpt=rcpt, **GREYLIST))
            self.assertFalse(r["ok"], r)
            self.assertEqual(r["error"]["code"], "unavailable", r)
            self.assertEqual(redis.cmd("HGET", msgs, mid), before)
            # the other shard is served all along (a batch of the fenced
            # shard's changes may take it along once: resend)
            ok = False
            for _ in range(20):
                ok = cl.request(bounce(unique_id("fence2"), rcpt=other, **GREYLIST))["ok"]
                if ok:
                    break
                time.sleep(0.05)
            self.assertTrue(ok)
        self.assertIn("FENCED", a.log_text())
        # the owner finds out (its renewal sees the epoch moved), gives the
        # shard up; the lease it still names runs out and the shard is
        # acquired anew (a new epoch) and served again
        wait_until(lambda: "shard %d: the lease is not ours any more" % mine[0] in a.log_text(), 3,
                   what="the owner to fence the shard")
        wait_until(lambda: int(redis.cmd("GET", self.epoch_key(redis, mine[0]))) > moved,
                   min(TTL_MS / 1000 * 4, self.left()), what="the shard acquired anew")
        self.wait_spread([a, b, c], 5)
        with b.client() as cl:
            r = cl.request(bounce(mid, rcpt=rcpt, **GREYLIST))
            self.assertTrue(r["ok"], r)
        log("a shard's epoch moved under its owner: its write refused (FENCED), the record unchanged, the "
            "shard served again")

    def ingest(self, targets, acked, n, on_progress=None, batch=200):
        return ingest_rotating(targets, acked, n, rcpt_of, lambda: self.left() > 5, on_progress, batch)

    def wait_all_retried(self, redis, acked, timeout):
        missing = [None]

        def done():
            missing[0] = acked - set(self.retry_counts(redis))
            return not missing[0]
        try:
            wait_until(done, min(timeout, self.left()), interval=0.2, what="a retry event for every acked report")
        except Exception:
            self.fail("%d of %d acknowledged reports have no retry event, e.g. %s"
                      % (len(missing[0]), len(acked), sorted(missing[0])[:5]))
        counts = self.retry_counts(redis)
        return sum(1 for i in acked if counts.get(i, 0) > 1)

    def test_kill9_takeover_under_ingest(self):
        redis = self.start_redis()
        a, b, c = self.three(redis)
        lost = self.serving(a)
        acked = set()
        state = {"killed": None}

        def maybe_kill():
            if state["killed"] is None and len(acked) >= 2000:
                a.kill9()
                state["killed"] = time.monotonic()
                log("instance a (shards %s) killed with SIGKILL after %d acknowledged reports"
                    % (lost, len(acked)))
        unavailable, errors = self.ingest([b, c], acked, 4000, on_progress=maybe_kill)
        self.assertIsNotNone(state["killed"], "a was never killed")
        self.assertEqual(errors, 0)
        self.assertEqual(len(acked), 4000)
        self.wait_spread([b, c], 10)
        served = time.monotonic()
        dups = self.wait_all_retried(redis, acked, 20)
        took = served - state["killed"]
        log("kill -9 -> its %d shards served by the others within %d ms (lease_ttl %d ms); %d acknowledged, "
            "0 without their retry event, %d with more than one; %d answered unavailable meanwhile (resent)"
            % (len(lost), took * 1000, TTL_MS, len(acked), dups, unavailable))
        self.assertLess(took, TTL_MS / 1000 + 3.5)

    def test_sigterm_hands_over(self):
        redis = self.start_redis()
        a, b, c = self.three(redis)
        acked = set()
        state = {"termed": None}

        def maybe_term():
            if state["termed"] is None and len(acked) >= 1000:
                state["termed"] = time.monotonic()
                a.proc.send_signal(signal.SIGTERM)
        unavailable, errors = self.ingest([b, c], acked, 3000, on_progress=maybe_term)
        self.assertIsNotNone(state["termed"])
        self.assertEqual(errors, 0)
        self.assertEqual(len(acked), 3000)
        self.assertEqual(a.proc.wait(10), 0)
        gone = time.monotonic()
        self.wait_spread([b, c], 5)
        served = time.monotonic()
        dups = self.wait_all_retried(redis, acked, 20)
        log("SIGTERM hand-over: exit -> shards served %d ms; %d acknowledged, 0 lost, %d duplicates, %d answered "
            "unavailable (resent), 0 other errors" % ((served - gone) * 1000, len(acked), dups, unavailable))
        self.assertLess(served - gone, TTL_MS / 1000 + 1.0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
