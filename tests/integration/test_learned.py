"""Learned timing (fast policy, greylist learns after 3 deliveries): a
domain's deliveries and repeated deferrals are learned and shown by the
domain op, stats and get; once the domain has the evidence its next
greylisted message is retried at the learned time, inside the class's
bounds; the state is written with the report, so it survives kill -9; and
100,000 domains' states load back at start within the stated memory."""

import json
import os
import sys
import tempfile
import time
import unittest

from harness import FAST_POLICY, GREYLIST, DaemonTestCase, bounce, now_ms, reboundd_path, unique_id, wait_until

DOMAIN = "grey.example"
# The fast policy with the greylist delays 20 times longer, so that a
# learned retry (at least the class's smallest delay away) cannot fire
# before the test has looked at it, however loaded the machine.
SLOW = 20


def greylist_policy():
    with open(FAST_POLICY) as f:
        p = json.load(f)
    g = p["classes"]["greylist"]
    g["delays"] = [["%dms" % (int(lo[:-2]) * SLOW), "%dms" % (int(hi[:-2]) * SLOW)] for lo, hi in g["delays"]]
    # never forgotten: the fast policy forgets after 10 s, which a loaded
    # machine can spend between teaching and the last check
    g["learn"]["forget_after"] = "0"
    fd, path = tempfile.mkstemp(prefix="rebound-learned-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(p, f)
    return path, int(g["delays"][0][0][:-2]), int(g["delays"][-1][1][:-2])


POLICY, CLASS_LO_MS, CLASS_HI_MS = greylist_policy()  # the greylist class's smallest and largest delay
BYTES_PER_DOMAIN = 400              # docs/policy.md: the bound per domain in memory, with a typical name


def log(msg):
    sys.stderr.write("  [learned] %s\n" % msg)


def sanitized():
    with open(reboundd_path(), "rb") as f:
        return b"__asan_init" in f.read()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LearnedTest(DaemonTestCase):
    policy = POLICY

    @classmethod
    def tearDownClass(cls):
        os.unlink(POLICY)

    def wait_awaiting(self, c, id, timeout=5.0):
        def awaiting():
            r = c.request({"op": "get", "id": id})
            return r.get("ok") and r.get("state") == "awaiting"
        wait_until(awaiting, timeout, interval=0.01, what="the retry of %s to fire" % id)

    def teach(self, c, n, deferrals=0):
        """n greylisted messages to DOMAIN, each deferred `deferrals` more
        times at its retries, then delivered after its last retry."""
        for i in range(n):
            id = unique_id("g")
            rcpt = "u%d@%s" % (i, DOMAIN.upper() if i % 2 else DOMAIN)
            self.assertOk(c.request(bounce(id, rcpt=rcpt, **GREYLIST)))
            for _ in range(deferrals):
                self.wait_awaiting(c, id)
                self.assertOk(c.request(bounce(id, rcpt=rcpt, **GREYLIST)))
            self.wait_awaiting(c, id)
            r = self.assertOk(c.request({"op": "delivered", "id": id, "rcpt": rcpt}))
            self.assertTrue(r["found"])

    def test_learns_uses_shows_and_survives_kill9(self):
        redis, daemon, c = self.start_all()
        # Before any evidence: the table's time, and the views say nothing learned.
        r = self.assertOk(c.request(bounce(unique_id("cold"), rcpt="a@" + DOMAIN, **GREYLIST)))
        self.assertNotIn("learned", r)
        cl = self.assertOk(c.request(dict(op="classify", **GREYLIST)))
        self.assertEqual(cl["class"], "greylist")
        self.assertTrue(cl["learned"])
        self.assertEqual(cl["learn"]["min_evidence"], 3)

        self.teach(c, 1, deferrals=1)
        self.teach(c, 2)
        dom = self.assertOk(c.request({"op": "domain", "domain": DOMAIN}))
        g = dom["learned"]["greylist"]
        self.assertEqual(g["delivered"], 3)
        self.assertEqual(g["deferred"], 1)
        self.assertEqual(g["evidence"], 3)
        self.assertTrue(g["in_use"])
        self.assertGreater(g["accepted_ms"], 0)
        self.assertAlmostEqual(g["mean_attempts"], 4 / 3, places=3)
        log("learned after 3 deliveries: %r" % g)

        # The next greylisted message is retried at the learned time, within bounds.
        id = unique_id("warm")
        t0 = now_ms()
        r = self.assertOk(c.request(bounce(id, rcpt="z@" + DOMAIN, **GREYLIST)))
        t1 = now_ms()
        self.assertTrue(r.get("learned"), r)
        self.assertGreaterEqual(r["retry_at"], t0 + CLASS_LO_MS)
        self.assertLessEqual(r["retry_at"], t1 + CLASS_HI_MS)
        dup = self.assertOk(c.request(bounce(id, rcpt="z@" + DOMAIN, **GREYLIST)))
        self.assertTrue(dup.get("learned"), dup)  # a duplicate gets the same answer
        self.assertEqual(dup["retry_at"], r["retry_at"])
        got = self.assertOk(c.request({"op": "get", "id": id}))
        self.assertTrue(got["learned"])
        self.assertEqual(got["due_at"], r["retry_at"])
        # A message to another domain is not: learning is per domain.
        other = self.assertOk(c.request(bounce(unique_id("o"), rcpt="a@other.example", **GREYLIST)))
        self.assertNotIn("learned", other)
        self.assertFalse(self.assertOk(c.request({"op": "get", "id": other["id"]}))["learned"])

        st = self.assertOk(c.request({"op": "stats"}))
        self.assertEqual(st["learned"]["domains"], 1)
        self.assertGreaterEqual(st["learned"]["retries_learned"], 1)
        self.assertEqual(st["learned"]["by_class"]["greylist"]["delivered"], 3)

        # Written with the reports: kill -9 and restart keep it.
        stored = redis.cmd("HGET", "rebound:learned", DOMAIN)
        self.assertTrue(stored.startswith("v1;"), stored)
        daemon.kill9()
        daemon.start()
        c = self.connect(daemon)
        dom2 = self.assertOk(c.request({"op": "domain", "domain": DOMAIN}))
        self.assertEqual(dom2["learned"]["greylist"]["delivered"], 3)
        self.assertEqual(dom2["learned"]["greylist"]["accepted_ms"], g["accepted_ms"])
        r = self.assertOk(c.request(bounce(unique_id("after"), rcpt="y@" + DOMAIN, **GREYLIST)))
        self.assertTrue(r.get("learned"), r)

    def test_100k_domains_load_within_the_bound(self):
        redis, daemon, c = self.start_all()
        self.teach(c, 3)
        state = redis.cmd("HGET", "rebound:learned", DOMAIN)
        self.assertTrue(state.startswith("v1;"))
        n = 100000
        time.sleep(0.2)  # let the start-up settle before the baseline
        base_kib = rss_kib(daemon.proc.pid)
        batch = []
        for i in range(n):
            batch.append(("HSET", "rebound:learned", "d%06d.example" % i, state))
            if len(batch) == 5000:
                redis.pipeline(batch)
                batch = []
        redis.pipeline(batch)
        self.assertEqual(redis.cmd("HLEN", "rebound:learned"), n + 1)
        daemon.kill9()
        t0 = time.monotonic()
        daemon.start()
        took = time.monotonic() - t0
        c = self.connect(daemon)
        st = self.assertOk(c.request({"op": "stats"}))["learned"]
        self.assertEqual(st["domains"], n + 1)
        per_domain = st["memory_bytes"] / (n + 1)
        grown = (rss_kib(daemon.proc.pid) - base_kib) * 1024 / n
        log("%d domains: ready in %.2f s, table %.0f bytes per domain, RSS grown %.0f bytes per domain"
            % (n + 1, took, per_domain, grown))
        self.assertLessEqual(per_domain, BYTES_PER_DOMAIN)
        # RSS also counts the allocator's own rounding and the load's
        # buffers; under AddressSanitizer every allocation has red zones.
        if not sanitized():
            self.assertLessEqual(grown, BYTES_PER_DOMAIN + 200)
        dom = self.assertOk(c.request({"op": "domain", "domain": "d099999.example"}))
        self.assertEqual(dom["learned"]["greylist"]["delivered"], 3)
        r = self.assertOk(c.request(bounce(unique_id("w"), rcpt="x@d012345.example", **GREYLIST)))
        self.assertTrue(r.get("learned"), r)


if __name__ == "__main__":
    unittest.main()
