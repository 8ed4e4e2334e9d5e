"""Receiving domains (fast policy): 1,000 rate-limit replies from one domain
within a minute make one domain_throttled event, after which that domain's
retries leave paced while another domain's keep their schedule; the
throttle survives kill -9 and a delivered report ends it early; auth
failures raise one sender_alert per domain and window; retries found
overdue at a restart are paced per domain; stats and the domain op show
the domains by pending retries."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

from harness import BUILD_DIR, DEFAULT_POLICY, FAST_POLICY, GREYLIST, DaemonTestCase, bounce, now_ms, unique_id

RATE_LIMIT = dict(code=421, enhanced="4.7.0",
                  text="421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume")
DMARC = dict(code=550, enhanced="5.7.26",
             text="550 5.7.26 Unauthenticated email from example.com is not accepted due to domain DMARC policy")
SPAM = dict(code=554, enhanced="5.7.1", text="554 5.7.1 Message rejected as spam")
PACE = 100   # the fast policy's pace: retries a second per domain
BURST = 200  # and its burst


def log(msg):
    sys.stderr.write("  [domains] %s\n" % msg)


def domain_of(ev):
    return ev.get("rcpt", "").rpartition("@")[2].lower()


def paced_too_early(times, origin, burst):
    """The pace, as a load-proof lower bound: the k-th release (0-based,
    sorted) of a domain paced at PACE a second with a burst of `burst`,
    whose pace started at or after `origin`, is never due before
    origin + (k - burst) / PACE. A busy machine can only fire late, never
    early, so this holds however loaded the machine is, while a release
    that ignores the pace breaks it at once. Returns the first release
    that came too early, as (k, at, earliest), or None. 2 ms of slack
    cover the millisecond rounding of the clocks."""
    for k, t in enumerate(times):
        earliest = origin + (k - burst) * 1000 // PACE - 2
        if t < earliest:
            return (k, t, earliest)
    return None


def max_in_window(times, width):
    """The most values of the sorted list times within any window of width."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while t - times[j] >= width:
            j += 1
        best = max(best, i - j + 1)
    return best


class DomainsBase(DaemonTestCase):
    def collect(self, client, seconds, ack=True):
        """Every event that arrives within seconds (acknowledged as it
        comes, so delivery never pauses)."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            evs = client.events(100, min(left, 0.2))
            if evs and ack:
                client.ack([e["eid"] for e in evs])
            out.extend(evs)

    def policy_file(self, **domains):
        with open(FAST_POLICY) as f:
            p = json.load(f)
        for k, v in domains.items():
            if isinstance(v, dict):
                p["domains"].setdefault(k, {}).update(v)
            else:
                p["domains"][k] = v
        fd, path = tempfile.mkstemp(prefix="rebound-policy-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(p, f)
        self.addCleanup(os.unlink, path)
        return path


class ThrottleTest(DomainsBase):
    def test_thousand_rate_limits_one_event_then_paced(self):
        redis, daemon, c = self.start_all()
        sub = self.connect(daemon)
        sub.subscribe("dom")
        reqs = [bounce("rl-%04d" % i, rcpt="u%04d@Throttled.example" % i, **RATE_LIMIT) for i in range(1000)]
        t0 = now_ms()
        for r in c.pipeline(reqs, window=250, timeout=20):
            self.assertEqual((self.assertOk(r)["class"], r["action"]), ("rate_limit", "retry"), r)
        t1 = now_ms()
        calm = {}
        for r in c.pipeline([bounce(unique_id("calm"), rcpt="c%d@calm.example" % i, **GREYLIST) for i in range(20)]):
            calm[self.assertOk(r)["id"]] = r["retry_at"]
        log("1000 rate-limit reports in %d ms" % (t1 - t0))
        evs = self.collect(sub, 3.0)

        throttles = [e for e in evs if e["type"] == "domain_throttled"]
        self.assertEqual(len(throttles), 1, throttles)
        th = throttles[0]
        self.assertEqual((th["domain"], th["class"]), ("throttled.example", "rate_limit"), th)
        self.assertGreater(th["until"], th["at"])
        self.assertGreaterEqual(th["replies"], 50)
        self.assertNotIn("ok", th)

        retries = sorted(e["at"] for e in evs if e["type"] == "retry" and domain_of(e) == "throttled.example")
        before = [t for t in retries if t < th["at"]]
        after = [t for t in retries if t >= th["at"]]
        self.assertLessEqual(len(before), 50, "retries fired before the throttle")
        # pushed past the back-off, then released at the pace, not at once
        self.assertTrue(all(t >= th["until"] for t in after), (th, after[:5]))
        self.assertGreater(len(after), 100, "the held retries are not being released")
        self.assertLess(len(after), 500, "the held retries were not paced")
        # never faster than the pace from the end of the back-off (a late
        # release on a busy machine is fine; an early one is not)
        self.assertIsNone(paced_too_early(after, th["until"], 1), after[:10])
        log("throttle at +%d ms until +%d ms; %d retries released in the 3 s observed, at most %d in a second" %
            (th["at"] - t0, th["until"] - t0, len(after), max_in_window(after, 1000)))

        # another domain's retries kept their schedule meanwhile
        fired = {e["id"]: e for e in evs if e["type"] == "retry" and e["id"] in calm}
        self.assertEqual(set(fired), set(calm))
        for id, e in fired.items():
            self.assertEqual(e["due_at"], calm[id])
            self.assertLess(e["at"] - e["due_at"], 100, e)

        stats = self.assertOk(c.request({"op": "stats"}))
        top = stats["domains"]["top_pending"]
        self.assertEqual(top[0]["domain"], "throttled.example", top)
        self.assertGreater(top[0]["pending"], 300)
        d = self.assertOk(c.request({"op": "domain", "domain": "THROTTLED.example"}))
        self.assertEqual(d["domain"], "throttled.example")
        # the pace releases retries between the two requests
        self.assertLessEqual(d["pending"], top[0]["pending"])
        self.assertGreaterEqual(d["pending"], top[0]["pending"] - PACE)
        self.assertGreater(d["paced_until"], now_ms())
        self.assertEqual(d["last_throttle"]["until"], th["until"])
        self.assertGreaterEqual(d["window"]["rate_limit"], 1000)

    def test_throttle_survives_kill9_and_delivered_ends_it(self):
        redis, daemon, c = self.start_all(policy=self.policy_file(throttle={"backoff": "30s"}))
        sub = self.connect(daemon)
        sub.subscribe("dom")
        ids = ["slow-%02d" % i for i in range(60)]
        for r in c.pipeline([bounce(i, rcpt="%s@slow.example" % i, **RATE_LIMIT) for i in ids]):
            self.assertOk(r)
        got = sub.wait_event(lambda e: e["type"] == "domain_throttled", 3)
        self.assertIsNotNone(got)
        th = got[1]
        self.assertGreater(th["until"], now_ms() + 20000)
        stats = self.assertOk(c.request({"op": "stats"}))
        self.assertEqual([t["domain"] for t in stats["domains"]["throttled"]], ["slow.example"], stats["domains"])
        self.assertEqual(redis.cmd("HGET", "rebound:domains", "slow.example").split(",")[0], "rate_limit")

        daemon.kill9()
        daemon.start()
        c = self.connect(daemon)
        sub = self.connect(daemon)
        sub.subscribe("dom-2")
        d = self.assertOk(c.request({"op": "domain", "domain": "slow.example"}))
        self.assertTrue(d["throttled"], d)
        self.assertEqual((d["throttle"]["until"], d["throttle"]["class"]), (th["until"], "rate_limit"))
        self.assertEqual(d["pending"], 60)
        # the held retries stay held across the restart, while another
        # domain's retry fires on time
        calm = self.assertOk(c.request(bounce(unique_id("calm"), rcpt="x@calm.example", **GREYLIST)))
        evs = self.collect(sub, 1.0)
        self.assertEqual([e for e in evs if e["type"] == "retry" and domain_of(e) == "slow.example"], [])
        self.assertEqual([e["id"] for e in evs if e["type"] == "retry"], [calm["id"]])

        # the domain delivers again: the back-off ends now, not in 30 s
        t = now_ms()
        r = self.assertOk(c.request({"op": "delivered", "id": unique_id("ok"), "rcpt": "someone@Slow.example"}))
        self.assertFalse(r["found"])
        evs = self.collect(sub, 2.0)
        fired = sorted(e["at"] for e in evs if e["type"] == "retry" and domain_of(e) == "slow.example")
        self.assertEqual(len(fired), 60, "not every held retry was released")
        self.assertLess(fired[-1], t + 1500)
        self.assertGreaterEqual(fired[-1] - fired[0], (60 - 1) * 1000 // PACE - 20, "released at once, not paced")
        d = self.assertOk(c.request({"op": "domain", "domain": "slow.example"}))
        self.assertFalse(d["throttled"], d)
        self.assertIsNone(redis.cmd("HGET", "rebound:domains", "slow.example"))

    def test_auth_failures_one_alert_per_window(self):
        redis, daemon, c = self.start_all()
        sub = self.connect(daemon)
        sub.subscribe("alerts")
        for r in c.pipeline([bounce(unique_id("a"), rcpt="r%d@dmarc.example" % i, **DMARC) for i in range(30)]):
            self.assertEqual((self.assertOk(r)["class"], r["action"]), ("auth_failure", "give_up"), r)
        self.assertOk(c.request(bounce(unique_id("a"), rcpt="r@other.example", **DMARC)))
        self.assertOk(c.request(bounce(unique_id("s"), rcpt="s1@dmarc.example", **SPAM)))
        evs = self.collect(sub, 1.0)
        alerts = [e for e in evs if e["type"] == "sender_alert"]
        self.assertEqual(sorted((e["domain"], e["class"]) for e in alerts),
                         [("dmarc.example", "auth_failure"), ("dmarc.example", "content_rejected"),
                          ("other.example", "auth_failure")], alerts)
        self.assertTrue(all(e["repeats"] == 0 for e in alerts), alerts)
        self.assertEqual(len([e for e in evs if e["type"] == "give_up"]), 32)
        d = self.assertOk(c.request({"op": "domain", "domain": "dmarc.example"}))
        by_class = {a["class"]: a for a in d["alerts"]}
        self.assertEqual(by_class["auth_failure"]["repeats"], 29, d)
        stats = self.assertOk(c.request({"op": "stats"}))
        self.assertEqual(stats["events"]["sender_alert"], 3)


class OverdueTest(DomainsBase):
    def test_restart_paces_overdue_retries_per_domain(self):
        redis, daemon, c = self.start_all()
        due = now_ms() + 1500
        big = ["big-%03d" % i for i in range(500)]
        small = ["small-%02d" % i for i in range(50)]
        reqs = [bounce(i, rcpt="%s@big.example" % i, campaign="news", not_before=due, **GREYLIST) for i in big]
        reqs += [bounce(i, rcpt="%s@small.example" % i, campaign="news", not_before=due, **GREYLIST) for i in small]
        for r in c.pipeline(reqs, window=200):
            self.assertEqual(self.assertOk(r)["retry_at"], due, r)
        daemon.kill9()
        time.sleep(max(0.0, (due - now_ms()) / 1000 + 0.5))
        restart = now_ms()
        daemon.start()
        sub = self.connect(daemon)
        sub.subscribe("overdue")
        evs = [e for e in self.collect(sub, 4.5) if e["type"] == "retry"]
        by_dom = {}
        for e in evs:
            self.assertEqual(e["due_at"], due)
            by_dom.setdefault(domain_of(e), []).append(e["at"])
        self.assertEqual(len(by_dom.get("big.example", [])), 500, "not all overdue retries fired")
        self.assertEqual(len(by_dom.get("small.example", [])), 50)
        b = sorted(by_dom["big.example"])
        s = sorted(by_dom["small.example"])
        # one domain, one campaign, all overdue: a burst, then the pace
        # (its clock starts no earlier than the restart)
        self.assertIsNone(paced_too_early(b, restart, BURST), b[:10])
        self.assertGreaterEqual(b[-1] - b[0], (500 - BURST) * 1000 // PACE - 100)
        # and the other domain is not held up by it
        self.assertLess(s[-1] - b[0], 500)
        log("500 overdue for one domain went out over %d ms, at most %d in a second; 50 for another in %d ms" %
            (b[-1] - b[0], max_in_window(b, 1000), s[-1] - s[0]))


class PendingByDomainTest(DomainsBase):
    policy = DEFAULT_POLICY  # nothing falls due during the test

    def test_stats_and_domain_op(self):
        redis, daemon, c = self.start_all()
        counts = {"a.example": 30, "b.example": 10, "c.example": 5}
        ids = {}
        for dom, n in counts.items():
            ids[dom] = [unique_id(dom[0]) for _ in range(n)]
            for r in c.pipeline([bounce(i, rcpt="u@" + dom, **GREYLIST) for i in ids[dom]]):
                self.assertOk(r)
        for i in ids["a.example"][:5]:
            self.assertTrue(self.assertOk(c.request({"op": "cancel", "id": i}))["found"])
        expect = [{"domain": "a.example", "pending": 25}, {"domain": "b.example", "pending": 10},
                  {"domain": "c.example", "pending": 5}]
        stats = self.assertOk(c.request({"op": "stats"}))
        self.assertEqual(stats["domains"]["top_pending"], expect)
        self.assertEqual(stats["domains"]["throttled"], [])
        d = self.assertOk(c.request({"op": "domain", "domain": "b.example"}))
        self.assertEqual((d["known"], d["pending"], d["throttled"]), (True, 10, False), d)
        d = self.assertOk(c.request({"op": "domain", "domain": "never.example"}))
        self.assertEqual((d["known"], d["pending"]), (False, 0), d)
        self.assertError(c.request({"op": "domain", "domain": "not a domain"}), "bad_request")
        ctl = os.path.join(BUILD_DIR, "reboundctl")
        out = subprocess.run([ctl, "-s", "127.0.0.1:%d" % daemon.port, "--json", "domain", "A.example"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["pending"], 25)
        # rebuilt from the records after a crash
        daemon.kill9()
        daemon.start()
        c = self.connect(daemon)
        stats = self.assertOk(c.request({"op": "stats"}))
        self.assertEqual(stats["domains"]["top_pending"], expect)


if __name__ == "__main__":
    unittest.main()
