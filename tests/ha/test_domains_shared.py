"""Receiving domains across instances (docs/policy.md, "Throttles across
instances"): three reboundd sharing one schedule in six shards on one
Redis, each counting the replies of its own two shards against the
threshold scaled by its share (12 replies in the policy: 4 each).

  throttle  retries of one domain fall due on the shards of two instances
            while the third's shards get that domain's rate-limit replies:
            the third backs the domain off, and the other two stop firing
            its retries within about a second (their poll of the shared
            hash); one domain_throttled event in all; the shared hash holds
            the back-off; every instance's domain op says throttled
  alert     auth failures of one domain reported on every instance's
            shards: one sender_alert in all (SET NX PX in Redis)
  pace      one domain paced at 60 a second (burst 6) has 180 retries due at
            one instant over all six shards: each instance releases its
            share (20 a second, burst 2), so together they keep to about
            the policy's pace, not three times it
  script    the merge script itself on a real Redis: began, lengthened,
            covered, an early end naming its episode, the poll dropping
            what ended long ago

Runs under ctest as ha.domains_shared (RUN_SERIAL), each case bounded by
its own budget, every process killed on every path.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from failover_load import start_configured  # noqa: E402

from harness import (FAST_POLICY, GREYLIST, DaemonTestCase, RedisError, bounce, free_port, now_ms,  # noqa: E402
                     unique_id, wait_until)
from cluster_op import ClusterOp  # noqa: E402
from shard_hash import shard_index  # noqa: E402

TTL_MS = 1500
SHARDS = 6
CASE_BUDGET_S = 45
RATE_LIMIT = dict(code=421, enhanced="4.7.0",
                  text="421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume")
DMARC = dict(code=550, enhanced="5.7.26",
             text="550 5.7.26 Unauthenticated email from example.com is not accepted due to domain DMARC policy")
# The poll runs once a second; a retry in a batch already sent, and a
# loaded machine, may add a little.
GRACE_MS = 2500


def log(msg):
    sys.stderr.write("  [domains_shared] %s\n" % msg)


def shard_of(rcpt):
    return shard_index(rcpt, SHARDS)


class SharedDomainsTest(ClusterOp, DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.t0 = time.monotonic()
        with open(FAST_POLICY) as f:
            p = json.load(f)
        p["limits"]["awaiting"] = "10m"
        p["domains"]["throttle"]["replies"] = 12
        p["domains"]["throttle"]["backoff"] = "30s"
        p["domains"]["pace"]["per_second"] = 1000000
        p["domains"]["pace"]["burst"] = 1000000
        d = tempfile.mkdtemp(prefix="rebound-dom-")
        self.addCleanup(shutil.rmtree, d, True)
        self.policy_path = os.path.join(d, "policy.json")
        with open(self.policy_path, "w") as f:
            json.dump(p, f)
        self.policy = self.policy_path  # the daemons' --policy

    def left(self):
        return CASE_BUDGET_S - (time.monotonic() - self.t0)

    def three(self):
        redis = self.start_redis()
        self.metrics = {}
        ds = []
        for iid in ("a", "b", "c"):
            port = free_port()
            d = start_configured(self, redis, {"lease_ttl": "%dms" % TTL_MS, "instance_id": iid, "shards": SHARDS,
                                               "metrics_listen": "127.0.0.1:%d" % port})
            self.metrics[d.port] = port
            ds.append(d)

        def spread():
            got = [self.serving(d) for d in ds]
            return sorted(k for g in got for k in g) == list(range(SHARDS)) and all(len(g) == 2 for g in got)
        wait_until(spread, min(15, self.left()), interval=0.05, what="the shards spread two by two")
        # every instance knows every owner (read once a renewal period)
        wait_until(lambda: len({json.dumps(self.cluster(d)["map"]) for d in ds}) == 1 and
                   "" not in self.cluster(ds[0])["map"], min(5, self.left()), interval=0.05,
                   what="one map seen from every instance")
        return redis, ds

    def sample(self, d, name):
        """One sample of d's /metrics ("name{labels}" as written), or None."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics[d.port], timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
        return None

    def collect(self, client, seconds):
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            evs = client.events(200, min(deadline - time.monotonic(), 0.2))
            if evs:
                client.ack([e["eid"] for e in evs])
            out.extend(evs)
        return out

    def rcpts(self, domain, shards, n, tag):
        """n addresses at domain whose shards are among shards."""
        out, i = [], 0
        while len(out) < n:
            r = "%s%d@%s" % (tag, i, domain)
            if shard_of(r) in shards:
                out.append(r)
            i += 1
        return out

    def test_throttle_seen_by_every_instance(self):
        redis, (a, b, c) = self.three()
        mine = set(self.serving(a))
        others = set(range(SHARDS)) - mine
        sub = self.connect(a)
        sub.subscribe("watch")

        # retries of shared.example on b's and c's shards, falling due one
        # every 25 ms from 1 s on, for about 7.5 s
        start = now_ms()
        held = {}
        with b.client() as cb:
            reqs = []
            for k, r in enumerate(self.rcpts("Shared.example", others, 300, "g")):
                i = unique_id("g%d" % k)
                held[i] = r
                reqs.append(bounce(i, rcpt=r, not_before=start + 1000 + 25 * k, **GREYLIST))
            reps = cb.pipeline(reqs, window=300, timeout=10)
        self.assertEqual([r for r in reps if not r.get("ok")], [])

        # after 2.5 s, a's shards report the domain's rate limits
        evs = self.collect(sub, max(0.0, (start + 2500 - now_ms()) / 1000.0))
        with a.client() as ca:
            reps = ca.pipeline([bounce(unique_id("rl"), rcpt=r, **RATE_LIMIT)
                                for r in self.rcpts("shared.example", mine, 8, "rl")], window=8, timeout=5)
        for r in reps:
            self.assertEqual((r.get("class"), r.get("action")), ("rate_limit", "retry"), r)
        evs += self.collect(sub, 5.0)

        throttled = [e for e in evs if e["type"] == "domain_throttled"]
        self.assertEqual(len(throttled), 1, throttled)
        th = throttled[0]
        self.assertEqual((th["domain"], th["class"]), ("shared.example", "rate_limit"), th)
        fired = sorted(e["at"] for e in evs if e["type"] == "retry" and e["id"] in held)
        before = [t for t in fired if t < th["at"]]
        late = [t for t in fired if t > th["at"] + GRACE_MS]
        stopped = max((t for t in fired if t >= th["at"]), default=th["at"]) - th["at"]
        log("%d retries of b's and c's shards fired before the throttle, %d after it (the last %d ms after), "
            "%d after %d ms; %d held" % (len(before), len(fired) - len(before), stopped, len(late), GRACE_MS,
                                         len(held) - len(fired)))
        self.assertGreater(len(before), 10, "the retries were not falling due before the throttle")
        self.assertEqual(late, [], "other instances went on firing the throttled domain")
        self.assertGreater(len(held) - len(fired), 100)
        # the back-off is in the shared hash, and every instance honours it
        v = redis.cmd("HGET", "{rebound:domains}throttle", "shared.example")
        v = v if isinstance(v, str) else v.decode()
        self.assertEqual(v.split(",")[0], "rate_limit")
        self.assertEqual(int(v.split(",")[1]), th["until"])
        for d in (a, b, c):
            with d.client() as cl:
                r = cl.request({"op": "domain", "domain": "shared.example"})
            self.assertTrue(r["ok"] and r["throttled"], r)
            self.assertEqual(r["throttle"]["until"], th["until"], r)
        # a began it (and announced it); b and c adopted it from the hash
        self.assertEqual(self.sample(a, 'rebound_domains_shared_throttles_total{how="began"}'), 1)
        for d in (b, c):
            self.assertEqual(self.sample(d, 'rebound_domains_shared_throttles_total{how="began"}'), 0)
            self.assertGreaterEqual(self.sample(d, 'rebound_domains_shared_throttles_total{how="adopted"}'), 1)
            self.assertGreater(self.sample(d, 'rebound_domains_shared_polls_total{result="ok"}'), 0)

    def test_one_sender_alert(self):
        redis, ds = self.three()
        sub = self.connect(ds[0])
        sub.subscribe("alerts")
        for n, d in enumerate(ds):
            with d.client() as cl:
                # every shard's recipients through every instance
                reps = cl.pipeline([bounce(unique_id("a"), rcpt=r, **DMARC)
                                    for r in self.rcpts("dmarc.example", set(range(SHARDS)), 12, "x%d" % n)],
                                   window=12, timeout=5)
            for r in reps:
                self.assertEqual((r.get("class"), r.get("action")), ("auth_failure", "give_up"), r)
        evs = self.collect(sub, 1.5)
        alerts = [e for e in evs if e["type"] == "sender_alert"]
        self.assertEqual([(e["domain"], e["class"]) for e in alerts], [("dmarc.example", "auth_failure")], alerts)
        self.assertEqual(len([e for e in evs if e["type"] == "give_up"]), 36)
        keys = [k if isinstance(k, str) else k.decode() for k in redis.cmd("KEYS", "{rebound:domains}alert:*")]
        self.assertEqual(keys, ["{rebound:domains}alert:auth_failure:dmarc.example"])
        ttl = int(redis.cmd("PTTL", keys[0]))
        self.assertTrue(0 < ttl <= 3600 * 1000, ttl)
        raised = [self.sample(d, 'rebound_sender_alerts_shared_total{result="raised"}') for d in ds]
        deduped = [self.sample(d, 'rebound_sender_alerts_shared_total{result="deduped"}') for d in ds]
        self.assertEqual(sum(raised), 1, raised)
        self.assertEqual(sum(deduped), 2, deduped)  # each other instance's first of the window

    def test_pace_by_share(self):
        with open(self.policy_path) as f:
            p = json.load(f)
        p["domains"]["pace"]["per_second"] = 60
        p["domains"]["pace"]["burst"] = 6
        with open(self.policy_path, "w") as f:
            json.dump(p, f)
        redis, ds = self.three()
        sub = self.connect(ds[0])
        sub.subscribe("paced")
        due = now_ms() + 1500
        ids = set()
        with ds[1].client() as cl:
            reqs = []
            for r in self.rcpts("paced.example", set(range(SHARDS)), 180, "p"):
                i = unique_id("p")
                ids.add(i)
                reqs.append(bounce(i, rcpt=r, not_before=due, **GREYLIST))
            reps = cl.pipeline(reqs, window=180, timeout=10)
        self.assertEqual([r for r in reps if not r.get("ok")], [])
        fired = []
        deadline = time.monotonic() + min(12, self.left())
        while len(fired) < len(ids) and time.monotonic() < deadline:
            evs = self.collect(sub, 0.5)
            fired += [e["at"] for e in evs if e["type"] == "retry" and e["id"] in ids]
        fired.sort()
        self.assertEqual(len(fired), len(ids), "not every paced retry fired")
        best, j = 0, 0
        for k, t in enumerate(fired):
            while t - fired[j] >= 1000:
                j += 1
            best = max(best, k - j + 1)
        span = fired[-1] - fired[0]
        log("180 retries of one domain due at once over 3 instances, paced at 60/s (burst 6) in all: released "
            "over %d ms, at most %d in any second" % (span, best))
        # one daemon's pace would release them over about 2.9 s; each
        # instance at the full pace would take about 1 s and put all 180
        # in one second. A loaded machine only fires later, never earlier.
        self.assertLessEqual(best, 60 + 6 + 12)
        self.assertGreaterEqual(span, 2000)

    def test_merge_script(self):
        redis = self.start_redis()
        with open(os.path.join(HERE, "..", "..", "daemon", "store", "scripts", "throttle.lua")) as f:
            script = f.read()
        key = "{rebound:domains}throttle"

        def run(*args):
            r = redis.cmd("EVAL", script, "1", key, *[str(a) for a in args])
            if isinstance(r, list):
                return [x.decode() if isinstance(x, bytes) else x for x in r]
            return r

        def stored(d):
            v = redis.cmd("HGET", key, d)
            return v.decode() if isinstance(v, bytes) else v

        now = 1000000
        self.assertEqual(run("M", "x.example", "rate_limit,%d,%d" % (now + 500, now), now),
                         [2, "rate_limit,%d,%d" % (now + 500, now)])
        # another instance, later and longer: lengthened, the episode's class and since kept
        self.assertEqual(run("M", "x.example", "congestion,%d,%d" % (now + 900, now + 10), now + 10),
                         [1, "rate_limit,%d,%d" % (now + 900, now)])
        # shorter: covered, nothing written
        self.assertEqual(run("M", "x.example", "congestion,%d,%d" % (now + 600, now + 20), now + 20),
                         [0, "rate_limit,%d,%d" % (now + 900, now)])
        # an early end names its episode by since: another episode's is ignored
        self.assertEqual(run("E", "x.example", now + 10, now + 30), 0)
        self.assertEqual(run("E", "x.example", now, now + 30), 1)
        self.assertEqual(stored("x.example"), "rate_limit,%d,%d" % (now + 30, now))
        # ended: the next merge begins a new episode
        self.assertEqual(run("M", "x.example", "congestion,%d,%d" % (now + 800, now + 40), now + 40)[0], 2)
        # the poll returns what is in force or ended recently, and drops the rest
        run("M", "old.example", "rate_limit,%d,%d" % (now - 20000, now - 30000), now - 30000)
        self.assertEqual(run("P", now + 50, 10000), ["x.example", "congestion,%d,%d" % (now + 800, now + 40)])
        self.assertIsNone(stored("old.example"))
        with self.assertRaises(RedisError) as e:
            run("M", "y.example", "bad", now)
        self.assertIn("bad value", str(e.exception))
        self.assertIsNone(stored("y.example"))


if __name__ == "__main__":
    unittest.main()
