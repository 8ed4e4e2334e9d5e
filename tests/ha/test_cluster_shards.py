"""Shards on several Redis Cluster primaries (docs/operations.md, "Shards
on a Redis Cluster"): a Redis Cluster of 3 primaries with one replica each
(cluster-node-timeout 1 s) on loopback, reboundd with `shards` 6 and
`redis_cluster`, each shard's keys in its own slot, a link to each shard's
slot, every write confirmed by one replica (redis_min_replicas 1).

  batches     pipelined reports of every shard, fresh, duplicates,
              hard bounces and a suppressed recipient among them: the replies
              of one daemon, each record and suppression in its shard's slot;
              the suppressed list paged over every shard, a story by id
  same        the integration scenarios' core sent through an instance that
              does not serve the message's shard (two reboundd) gives the
              same replies as one daemon on one Redis; a subscriber on one
              instance receives (and acks) the retry events of every shard,
              with shard-qualified event ids
  kill9       pipelined ingest spread over every shard through one reboundd;
              kill -9 of the primary of shard 0's slot (and, a case of its
              own, of the primary of the cluster-wide {rebound:} slot) (given a second
              replica, so that the promoted one has one to confirm writes
              with: redis_min_replicas 1): the shards on the
              other primaries never answer `unavailable` (answers counted per
              shard during the failover), the dead primary's shards serve
              again after the cluster's failover, and every acknowledged
              report is in its shard's hash and fires (its retry event in its
              shard's stream; duplicates counted, allowed)

Runs under ctest as ha.cluster_shards (RUN_SERIAL), bounded under 90 s.
"""

import json
import os
import sys
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from failover_load import failover_files  # noqa: E402
from harness import (GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, free_port, now_ms, unique_id,  # noqa: E402
                     wait_until)
from cluster_op import ClusterOp  # noqa: E402
from redis_cluster import ClusterNodes, nodes_view, serves  # noqa: E402
from shard_hash import crc16, shard_index  # noqa: E402
import stream_events  # noqa: E402

SHARDS = 6
PREFIX = "rebound:"
NODE_TIMEOUT_MS = 1000
TTL_MS = 4000
GLOBAL_SLOT = 13255  # CLUSTER KEYSLOT {rebound:}: the keys about no message
CASE_BUDGET_S = 80


def log(msg):
    sys.stderr.write("  [cluster-shards] %s\n" % msg)


def shard_of(rcpt, n=SHARDS):
    return shard_index(rcpt, n)


def shard_tag(k, n=SHARDS):
    """queue/shard.c's shard_tag: the smallest <prefix>s<k>.<i> whose slot
    lies in the k-th of n equal slices of the slot space."""
    i = 0
    while True:
        tag = "%ss%d.%d" % (PREFIX, k, i)
        slot = crc16(tag.encode()) % 16384
        if k * 16384 // n <= slot < (k + 1) * 16384 // n:
            return tag, slot
        i += 1




def rcpt_of(i):
    return "u%d@d%d.example" % (i, i % 64)


class ClusterShardsTest(ClusterOp, ClusterNodes, DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.require_redis_cli()
        self.t0 = time.monotonic()

    def left(self):
        return max(1.0, CASE_BUDGET_S - (time.monotonic() - self.t0))

    def start_cluster(self):
        """3 primaries with one replica each; returns the nodes."""
        nodes = [self.start_node(NODE_TIMEOUT_MS) for _ in range(6)]
        self.create_cluster(nodes, 1)

        def ready():
            for n in nodes:
                if "cluster_state:ok" not in n.cmd("CLUSTER", "INFO"):
                    return False
            view = nodes_view(nodes[0])
            prims = [p for p, (flags, slots) in view.items() if "master" in flags and slots]
            if len(prims) != 3:
                return False
            for n in nodes:
                if n.port in prims and n.cmd("INFO", "replication").count("state=online") != 1:
                    return False
            return True

        wait_until(ready, min(20, self.left()), interval=0.1, what="the cluster to form with its replicas in sync")
        return nodes

    def add_replica(self, nodes, primary):
        """A second replica for primary, so that once one is promoted it
        still has one to confirm writes (redis_min_replicas 1)."""
        n = self.start_node(NODE_TIMEOUT_MS)
        me = [line.split() for line in primary.cmd("CLUSTER", "NODES").splitlines() if "myself" in line][0]
        bus = me[1].split("@")[1].split(",")[0]
        n.cmd("CLUSTER", "MEET", "127.0.0.1", str(primary.port), bus)
        pid = primary.cmd("CLUSTER", "MYID")
        pid = pid if isinstance(pid, str) else pid.decode()

        def known():
            try:
                n.cmd("CLUSTER", "REPLICATE", pid)
                return True
            except Exception:
                return False
        wait_until(known, min(10, self.left()), interval=0.1, what="the new node to learn of the primary")
        wait_until(lambda: primary.cmd("INFO", "replication").count("state=online") == 2, min(10, self.left()),
                   interval=0.1, what="the primary's two replicas in sync")
        nodes.append(n)

    def node_of(self, nodes, slot):
        """The live node serving slot, as the live nodes see it."""
        live = [n for n in nodes if n.running]
        for n in live:
            try:
                view = nodes_view(n)
            except Exception:
                continue
            ports = [p for p, (flags, slots) in view.items()
                     if "master" in flags and "fail" not in flags and serves(slots, slot)]
            for n2 in live:
                if ports and n2.port == ports[0]:
                    return n2
        return None

    def start_sharded(self, nodes, iid, shards=SHARDS, wait_ready=True, extra=()):
        policy, conf = failover_files(self, {"redis_cluster": [n.addr for n in nodes], "shards": shards,
                                             "lease_ttl": "%dms" % TTL_MS, "instance_id": iid})
        return self.start_daemon(nodes[0], policy=policy, extra_args=["--config", conf] + list(extra),
                                 wait_ready=wait_ready)

    def retry_counts(self, nodes):
        """Retry events by message id, over every shard's stream."""
        counts = {}
        for k in range(SHARDS):
            tag, slot = shard_tag(k)
            node = self.node_of(nodes, slot)
            for _, body in stream_events.events(node, "{%s}events" % tag):
                if not body.startswith("R"):
                    continue
                parts = body.split("\n")
                if len(parts) >= 3:
                    counts[parts[1]] = counts.get(parts[1], 0) + 1
        return counts

    def stop_clean(self, d):
        """SIGTERM: the drain releases the shards and closes every link;
        exit 0, and nothing from the sanitizers in the log (ASan builds)."""
        self.assertEqual(d.term(), 0, d.log_text()[-3000:])
        text = d.log_text()
        self.assertNotIn("Sanitizer", text)
        self.assertNotIn("runtime error", text)

    # ------------------------------------------------------------------

    def scenario(self, d, tag):
        """test_shards.py's scenario: the replies with ids and times taken out."""
        mid, rcpt = "%s-1" % tag, "x@%s.example" % tag
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
            for r in reqs:
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

    def test_same_replies_and_events(self):
        single_redis = self.start_redis()
        single = self.start_daemon(single_redis)
        alone = self.scenario(single, "qzs0")
        single.term()

        nodes = self.start_cluster()
        a = self.start_sharded(nodes, "a")
        b = self.start_sharded(nodes, "b")

        def spread():
            got = [self.serving(d) for d in (a, b)]
            return sorted(k for g in got for k in g) == list(range(SHARDS)) and all(len(g) == 3 for g in got)
        wait_until(spread, min(20, self.left()), interval=0.1, what="the shards spread over two instances")
        wait_until(lambda: "" not in self.cluster(a)["map"] and "" not in self.cluster(b)["map"],
                   min(5, self.left()), interval=0.05, what="both instances know every owner")
        mine = set(self.serving(a))
        tag = next("qza%d" % i for i in range(1000) if shard_of("x@qza%d.example" % i) not in mine)
        via = self.scenario(a, tag)
        self.assertEqual(via, alone)
        self.assertIn('"action": "suppress"', alone[10])
        # the records sit in their shard's own slot, on the primary serving it
        tag2, slot2 = shard_tag(shard_of("x@%s.example" % tag))
        self.assertIsNotNone(self.node_of(nodes, slot2).cmd("HGET", "{%s}history" % tag2, "%s-3" % tag))
        log("the scenario (%d requests) through a non-owner on a 3-primary cluster: the same replies as one "
            "daemon on one Redis" % len(alone))

        # events: a subscriber on b gets every shard's retries, with
        # shard-qualified ids, and acks them
        sub = b.client(timeout=5.0)
        try:
            sub.subscribe("g")
            ids = {}
            with a.client() as cl:
                for i in range(60):
                    mid = unique_id("ev")
                    ids[mid] = shard_of(rcpt_of(i))
                    r = cl.request(bounce(mid, rcpt=rcpt_of(i), **GREYLIST))
                    self.assertTrue(r["ok"], r)
            self.assertEqual(set(ids.values()), set(range(SHARDS)))
            got = {}
            deadline = time.monotonic() + min(20, self.left())
            while set(got) != set(ids) and time.monotonic() < deadline:
                for ev in sub.events(10, 1.0):
                    if ev.get("type") == "retry" and ev["id"] in ids:
                        got[ev["id"]] = ev["eid"]
                        r = sub.ack([ev["eid"]])
            self.assertEqual(set(ids) - set(got), set())
            for mid, eid in got.items():
                self.assertRegex(eid, r"^\d+/\d+-\d+$")
                self.assertEqual(int(eid.split("/")[0]), ids[mid], (mid, eid))
            # a burst: 1200 retries due at one instant, about 200 a shard
            # (a fire batch past 128: one transaction per shard, its events
            # one batch entry of the shard's stream)
            burst = {unique_id("burst"): rcpt_of(i) for i in range(1200)}
            due = now_ms() + 1500
            with a.client(timeout=10.0) as cl:
                reps = cl.pipeline([bounce(mid, rcpt=x, not_before=due, **GREYLIST) for mid, x in burst.items()],
                                   window=200, timeout=10)
            self.assertEqual({r.get("action") for r in reps}, {"retry"}, reps[:3])
            seen = {}
            deadline = time.monotonic() + min(20, self.left())
            while set(seen) != set(burst) and time.monotonic() < deadline:
                evs = [ev for ev in sub.events(200, 1.0) if ev.get("type") == "retry"]
                for ev in evs:
                    if ev["id"] in burst:
                        seen[ev["id"]] = ev["eid"]
                if evs:
                    sub.ack([ev["eid"] for ev in evs])
            self.assertEqual(len(set(burst) - set(seen)), 0)
            for mid, eid in seen.items():
                self.assertEqual(int(eid.split("/")[0]), shard_of(burst[mid]), (mid, eid))
            batches = sum(1 for k in range(SHARDS)
                          for _, f in self.node_of(nodes, shard_tag(k)[1]).cmd(
                              "XRANGE", "{%s}events" % shard_tag(k)[0], "-", "+") or []
                          if f and (f[0] if isinstance(f[0], str) else f[0].decode()) == "b")
            self.assertGreater(batches, 0, "no batch entry in any shard's stream")
            log("a burst of %d retries over %d shards (%d batch entries): every event at a subscriber on b"
                % (len(burst), SHARDS, batches))
        finally:
            sub.close()
        # the groups op: the group, its lag the sum over every shard's
        # stream (60 retries of every shard while nobody reads the group)
        with a.client() as cl:
            for i in range(60):
                self.assertTrue(cl.request(bounce(unique_id("lag"), rcpt=rcpt_of(i), **GREYLIST))["ok"])
        lag = [None]

        def lagging():
            with b.client() as cl:
                gr = cl.request({"op": "groups"})
            self.assertTrue(gr.get("ok"), gr)
            mine = [g for g in gr["groups"] if g["name"] == "g"]
            lag[0] = mine[0]["lag"] if mine else None
            return isinstance(lag[0], int) and lag[0] >= 60
        wait_until(lagging, min(10, self.left()), interval=0.1, what="the group's lag over every shard (%r)" % lag)
        # the group's marks: in each shard's slot
        for k in range(SHARDS):
            tg, slot = shard_tag(k)
            wait_until(lambda: self.node_of(nodes, slot).cmd("HGET", "{%s}groupmarks" % tg, "g") is not None,
                       min(5, self.left()), interval=0.05, what="shard %d's mark of the group" % k)
        log("a subscriber on one instance: the retry events of all %d shards, ids <shard>/<entry id>" % SHARDS)
        self.stop_clean(a)
        self.stop_clean(b)

    def test_batches_over_shards(self):
        """Pipelined reports of every shard: each primary's share of a turn
        goes as one call (the shards of a primary together), and a suppressed
        recipient among fresh reports, their duplicates and hard bounces is
        found in its own shard's list, as one daemon alone would."""
        nodes = self.start_cluster()
        mport = free_port()
        d = self.start_sharded(nodes, "solo", wait_ready=False, extra=["--metrics", "127.0.0.1:%d" % mport])
        wait_until(lambda: len(self.serving(d)) == SHARDS, min(15, self.left()), interval=0.1,
                   what="all shards served")
        later = now_ms() + 3000  # the fast policy gives up after 4.3 s
        rcpts = [rcpt_of(i) for i in range(120)]
        bad = rcpts[7]
        with d.client(timeout=10.0) as c:
            r = c.request(bounce("pre-bad", rcpt=bad, **USER_UNKNOWN))
            self.assertEqual(r["action"], "suppress", r)
            first = c.pipeline([bounce("b-%d" % i, rcpt=x, not_before=later, **GREYLIST) for i, x in enumerate(rcpts)],
                               window=120, timeout=10)
            second = c.pipeline([bounce("b-%d" % i, rcpt=x, not_before=later, **GREYLIST)
                                 for i, x in enumerate(rcpts)], window=120, timeout=10)
            hard = c.pipeline([bounce("h-%d" % i, rcpt="h%d@d%d.example" % (i, i % 64), **USER_UNKNOWN)
                               for i in range(60)], window=60, timeout=10)
            again = c.pipeline([bounce("g-%d" % i, rcpt="h%d@d%d.example" % (i, i % 64), **GREYLIST)
                                for i in range(60)], window=60, timeout=10)
            got = c.pipeline([{"op": "get", "id": "b-%d" % i} for i in range(len(rcpts))], window=120, timeout=10)
        for i, (r1, r2) in enumerate(zip(first, second)):
            want = "suppress" if rcpts[i] == bad else "retry"
            self.assertEqual((r1.get("ok"), r1.get("action")), (True, want), (i, r1))
            self.assertEqual((r2.get("ok"), r2.get("action")), (True, want), (i, r2))
        self.assertEqual({r.get("action") for r in hard}, {"suppress"}, hard[:3])
        self.assertEqual({r.get("action") for r in again}, {"suppress"}, again[:3])
        for i, g in enumerate(got):
            if rcpts[i] == bad:
                self.assertEqual(g.get("error", {}).get("code"), "not_found", g)
                continue
            self.assertEqual((g.get("state"), g.get("attempt")), ("pending", 1), g)
        # each record, and each suppression, in its own shard's slot
        for i, x in enumerate(rcpts):
            tag, slot = shard_tag(shard_of(x))
            rec = self.node_of(nodes, slot).cmd("HGET", "{%s}msg" % tag, "b-%d" % i)
            self.assertEqual(rec is None, x == bad, (i, x, rec))
        for i in range(60):
            x = "h%d@d%d.example" % (i, i % 64)
            tag, slot = shard_tag(shard_of(x))
            self.assertIsNotNone(self.node_of(nodes, slot).cmd("HGET", "{%s}suppressed" % tag, x), x)
        # the reads over every shard: the suppressed list a shard after
        # another (every address once, the total summed), a story by id
        want = {bad} | {"h%d@d%d.example" % (i, i % 64) for i in range(60)}
        seen, cursor, pages, total = [], "0", 0, None
        with d.client(timeout=10.0) as c:
            while True:
                r = c.request({"op": "suppressed", "cursor": cursor, "count": 7})
                self.assertTrue(r.get("ok"), r)
                seen += [it["rcpt"] for it in r["items"]]
                total = r["total"]
                cursor = r["cursor"]
                pages += 1
                if cursor == "0" or pages > 200:
                    break
            h = c.request({"op": "history", "id": "h-17"})
            self.assertEqual((h.get("ok"), h.get("outcome"), h.get("reason")), (True, "suppress", "hard_invalid"), h)
            self.assertEqual(c.request({"op": "history", "id": "h-nope"}).get("error", {}).get("code"), "not_found")
        self.assertEqual(set(seen), want)
        self.assertEqual(total, len(want))
        self.assertGreaterEqual(pages, SHARDS)
        # /metrics: the counts summed over every shard, the shards' links
        metrics = {}

        def scraped():
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=2) as f:
                text = f.read().decode()
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    k, _, v = line.rpartition(" ")
                    metrics[k] = v
            return metrics.get("rebound_suppressed_addresses") == str(len(want))
        wait_until(scraped, min(10, self.left()), interval=0.2, what="the suppressed count in /metrics")
        self.assertEqual(metrics.get("rebound_redis_shard_links_ready"), str(SHARDS), metrics)
        self.assertGreater(int(metrics.get("rebound_stream_length", "0")), 0)
        evalsha = sum(int(dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))["calls"])
                      for n in nodes if n.running for line in n.cmd("INFO", "commandstats").splitlines()
                      if line.startswith("cmdstat_evalsha:"))
        log("%d reports over %d shards in pipelines: %d apply calls over the 3 primaries"
            % (2 * len(rcpts) + 121, SHARDS, evalsha))
        # a domain's throttle (the fast policy: 50 rate-limit replies in a
        # minute) lands in the shared hash, in the slot of the keys about no
        # message (rbd->link's), not in a slot of its own
        with d.client(timeout=10.0) as c:
            reps = c.pipeline([bounce("rl-%d" % i, rcpt="r%d@thr.example" % i, code=421, enhanced="4.7.0",
                                      text="421 4.7.0 Try again later, too many messages") for i in range(60)],
                              window=60, timeout=10)
        self.assertEqual({r.get("class") for r in reps}, {"rate_limit"}, reps[:3])
        shared = self.node_of(nodes, GLOBAL_SLOT)

        def throttled():
            v = shared.cmd("HGET", "{%s}throttle" % PREFIX, "thr.example")
            return v is not None and (v if isinstance(v, str) else v.decode()).startswith("rate_limit,")
        wait_until(throttled, min(5, self.left()), interval=0.1, what="the throttle in {%s}throttle" % PREFIX)
        self.stop_clean(d)

    def test_mark_inside_a_batch_kill9(self):
        """A group's mark falls inside a batch entry of each shard's stream:
        after kill -9 of the subscriber's instance each shard's entry is read
        again whole and its events up to that shard's mark are skipped; every
        unacked event comes again, no event acked before the mark does."""
        nodes = self.start_cluster()
        d = self.start_sharded(nodes, "solo", wait_ready=False)
        wait_until(lambda: len(self.serving(d)) == SHARDS, min(15, self.left()), interval=0.1,
                   what="all shards served")
        sub = d.client(timeout=5.0)
        sub.subscribe("crash")
        # 900: fewer than a subscriber's 1000 unacked events at most
        burst = {unique_id("mk"): rcpt_of(i) for i in range(900)}
        due = now_ms() + 1500
        with d.client(timeout=10.0) as cl:
            reps = cl.pipeline([bounce(mid, rcpt=x, not_before=due, **GREYLIST) for mid, x in burst.items()],
                               window=200, timeout=10)
        self.assertEqual({r.get("action") for r in reps}, {"retry"}, reps[:3])
        evs = {}
        deadline = time.monotonic() + min(20, self.left())
        while len(evs) < len(burst) and time.monotonic() < deadline:
            for ev in sub.events(400, 1.0):
                if ev.get("type") == "retry" and ev["id"] in burst:
                    evs[ev["eid"]] = ev
        self.assertEqual(len(evs), len(burst))
        entries = {}
        for k in range(SHARDS):
            tag, slot = shard_tag(k)
            for _, f in self.node_of(nodes, slot).cmd("XRANGE", "{%s}events" % tag, "-", "+") or []:
                form = f[0] if isinstance(f[0], str) else f[0].decode()
                entries[form] = entries.get(form, 0) + 1
        log("the burst's %d events in %r stream entries (b: batch, e: one event)" % (len(evs), entries))

        def order(eid):
            k, raw = eid.split("/")
            ms, seq = raw.split("-")
            return int(k), int(ms), int(seq)
        prefix, later = [], []
        for k in range(SHARDS):
            mine = sorted((e for e in evs if order(e)[0] == k), key=order)
            prefix += mine[:len(mine) // 2]
            later += mine[len(mine) // 2:]
        self.assertEqual(sub.ack(prefix).get("acked"), len(prefix))
        self.assertEqual(sub.ack(later[1::2]).get("acked"), len(later[1::2]))
        sub.close()
        d.kill9()
        d.start(wait_ready=False)

        def listening():
            try:
                return self.cluster(d)["ok"]
            except OSError:
                return False
        wait_until(listening, min(10, self.left()), interval=0.1, what="the restarted instance listening")
        again = d.client(timeout=5.0)
        try:
            again.subscribe("crash")
            got = {}
            deadline = time.monotonic() + min(15, self.left())
            while time.monotonic() < deadline and not set(later[::2]) <= set(got):
                for ev in again.events(400, 0.5):
                    got[ev["eid"]] = ev
            self.assertEqual(set(later[::2]) - set(got), set(), "unacked events lost across kill -9")
            for eid in later[::2]:
                self.assertEqual(got[eid], evs[eid])
            self.assertEqual(set(got) & set(prefix), set(), "events acked before the mark came again")
            log("kill -9 with each shard's mark inside a batch entry: %d unacked again, 0 of %d acked before "
                "the marks" % (len(later[::2]), len(prefix)))
        finally:
            again.close()
        self.stop_clean(d)

    def test_primary_kill9(self):
        self.kill_primary(shard_tag(0)[1], "shard 0's slot")

    def test_cluster_wide_primary_kill9(self):
        """The primary of the {<prefix>} slot (throttles, learned timing,
        members): reports of the shards elsewhere do not depend on it."""
        self.kill_primary(GLOBAL_SLOT, "the {%s} slot" % PREFIX)

    def kill_primary(self, slot, what):
        nodes = self.start_cluster()
        d = self.start_sharded(nodes, "solo", wait_ready=False)
        wait_until(lambda: len(self.serving(d)) == SHARDS, min(15, self.left()), interval=0.1,
                   what="all shards served")
        slots = {k: shard_tag(k)[1] for k in range(SHARDS)}
        victim = self.node_of(nodes, slot)
        log("killing the primary of %s" % what)
        self.add_replica(nodes, victim)
        dead = {k for k in range(SHARDS) if self.node_of(nodes, slots[k]) is victim}
        self.assertTrue(0 < len(dead) < SHARDS, dead)
        log("shards %s on the primary at port %d, the others on the two others" % (sorted(dead), victim.port))

        acked = {}
        per_shard = {k: {"ok": 0, "unavailable": 0} for k in range(SHARDS)}
        bad = []
        seq = [0]
        state = {"kill": None, "dead_back": None}
        back = {}  # a dead primary's shard -> its first acknowledged report sent after the kill

        def batch(size=120):
            reqs = []
            for _ in range(size):
                i = seq[0]
                seq[0] += 1
                reqs.append((bounce(unique_id("ck"), rcpt=rcpt_of(i), **GREYLIST), shard_of(rcpt_of(i))))
            sent = time.monotonic()
            with d.client(timeout=10.0) as c:
                replies = c.pipeline([r for r, _ in reqs], window=size, timeout=10)
            for (req, k), r in zip(reqs, replies):
                if r.get("ok") is True:
                    acked[req["id"]] = k
                    if state["kill"] is not None:
                        per_shard[k]["ok"] += 1
                        if k in dead and sent > state["kill"] and k not in back:
                            back[k] = time.monotonic()
                            if len(back) == len(dead):
                                state["dead_back"] = back[k]
                elif isinstance(r.get("error"), dict) and r["error"].get("code") == "unavailable":
                    if state["kill"] is not None:
                        per_shard[k]["unavailable"] += 1
                else:
                    bad.append(r)

        while len(acked) < 1500:
            batch()
        self.assertEqual(bad, [])
        victim.kill9()
        state["kill"] = time.monotonic()
        log("killed the primary at port %d after %d acknowledged reports" % (victim.port, len(acked)))
        deadline = time.monotonic() + min(30, self.left() - 25)
        while state["dead_back"] is None or time.monotonic() < state["dead_back"] + 1.0:
            self.assertLess(time.monotonic(), deadline, "the dead primary's shards did not serve again: %s"
                            % per_shard)
            batch()
            if state["dead_back"] is None:
                time.sleep(0.05)
        self.assertEqual(bad, [], "replies other than ok and unavailable")
        log("answers per shard from the kill on: %s" % per_shard)
        for k in range(SHARDS):
            if k not in dead:
                self.assertEqual(per_shard[k]["unavailable"], 0, "shard %d (another primary) answered unavailable"
                                 % k)
                self.assertGreater(per_shard[k]["ok"], 0)
        self.assertGreater(sum(per_shard[k]["unavailable"] for k in dead), 0, "the dead primary's shards never "
                           "answered unavailable (was the kill noticed?)")
        log("the dead primary's shards served again %s ms after the kill"
            % {k: int((t - state["kill"]) * 1000) for k, t in sorted(back.items())})

        # every acknowledged report is in its shard's hash and fires
        def missing():
            out = []
            by = {}
            for mid, k in acked.items():
                by.setdefault(k, []).append(mid)
            for k, mids in by.items():
                tag, slot = shard_tag(k)
                node = self.node_of(nodes, slot)
                have = node.pipeline([("HGET", "{%s}msg" % tag, m) for m in mids])
                out += [m for m, v in zip(mids, have) if not (isinstance(v, str) and v.startswith("A"))]
            return out
        left = [None]

        def all_fired():
            left[0] = missing()
            return not left[0]
        try:
            wait_until(all_fired, min(20, self.left()), interval=0.3, what="every acknowledged retry to fire")
        except TimeoutError:
            pass
        self.assertEqual(left[0][:20], [], "%d acknowledged reports not fired" % len(left[0]))
        counts = self.retry_counts(nodes)
        lost = [m for m in acked if m not in counts]
        dups = sum(1 for m in acked if counts.get(m, 0) > 1)
        self.assertEqual(lost[:20], [], "%d acknowledged reports without their retry event" % len(lost))
        log("%d acknowledged, 0 without their retry event, %d retried twice (allowed)" % (len(acked), dups))
        self.stop_clean(d)


if __name__ == "__main__":
    unittest.main()
