"""The operator's verbs (docs/protocol.md, "Acting on the queue"): list pages
through what is pending and awaiting; retry_now makes one message, a domain or
a campaign due now; cancel by domain or campaign drops messages in bulk
without events; hold keeps a domain's retries back until release. Each that
changes state is checked again after kill -9 and a restart. A bulk op on
100,000 pending retries runs while another client's pings are timed."""

import json
import os
import sys
import tempfile
import time
import unittest

import subprocess

from harness import BUILD_DIR, FAST_POLICY, GREYLIST, DaemonTestCase, bounce, now_ms, unique_id, wait_until


def log(msg):
    sys.stderr.write("  [operator] %s\n" % msg)


def domain_of(ev):
    return ev.get("rcpt", "").rpartition("@")[2].lower()


class OperatorBase(DaemonTestCase):
    def slow_policy(self, delay="60s"):
        """The fast policy with greylisting retried after `delay`, so
        retries stay pending while a test acts on them."""
        with open(FAST_POLICY) as f:
            p = json.load(f)
        g = p["classes"]["greylist"]
        g["delays"] = [delay, delay, delay]
        g.pop("learn", None)
        p["limits"]["max_age"] = "1h"
        g.pop("max_age", None)
        fd, path = tempfile.mkstemp(prefix="rebound-policy-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(p, f)
        self.addCleanup(os.unlink, path)
        return path

    def bounces(self, c, n, domain, campaign=None, prefix="m"):
        ids = [unique_id(prefix) for _ in range(n)]
        reqs = []
        for i in ids:
            extra = {"campaign": campaign} if campaign else {}
            reqs.append(bounce(i, rcpt="u-%s@%s" % (i, domain), **dict(GREYLIST, **extra)))
        for r in c.pipeline(reqs):
            self.assertOk(r)
            self.assertEqual(r["action"], "retry", r)
        return ids

    def retries(self, sub, seconds):
        """The retry events that arrive within seconds, acknowledged."""
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            evs = sub.events(1000, min(0.2, max(0.01, deadline - time.monotonic())))
            if evs:
                sub.ack([e["eid"] for e in evs])
            out.extend(e for e in evs if e.get("type") == "retry")
        return out

    def list_all(self, c, **filters):
        items, cursor, pages = [], "0", 0
        while True:
            r = c.request(dict({"op": "list", "cursor": cursor}, **filters))
            self.assertOk(r)
            items.extend(r["items"])
            pages += 1
            cursor = r["cursor"]
            if cursor == "0":
                return items, pages
            self.assertLess(pages, 1000)


class ListTest(OperatorBase):
    def test_list_pages_and_filters(self):
        redis, d, c = self.start_all(policy=self.slow_policy())
        a = self.bounces(c, 13, "a.example", campaign="spring")
        b = self.bounces(c, 12, "b.example")
        items, pages = self.list_all(c, count=5)
        self.assertEqual(pages, 5)
        self.assertEqual(sorted(i["id"] for i in items), sorted(a + b))
        dues = [i["due"] for i in items]
        self.assertEqual(dues, sorted(dues), "pages come in due order")
        for it in items:
            self.assertEqual(it["state"], "pending")
            self.assertEqual(it["class"], "greylist")
            self.assertEqual(it["attempt"], 1)
            self.assertEqual(it["rcpt"], "u-%s@%s" % (it["id"], "a.example" if it["id"] in a else "b.example"))
            self.assertGreater(it["due"], now_ms() + 30000)
        only_a, _ = self.list_all(c, domain="A.example", count=1000)
        self.assertEqual(sorted(i["id"] for i in only_a), sorted(a))
        spring, _ = self.list_all(c, campaign="spring", count=4)
        self.assertEqual(sorted(i["id"] for i in spring), sorted(a))
        self.assertTrue(all(i.get("campaign") == "spring" for i in spring))
        none, _ = self.list_all(c, state="awaiting")
        self.assertEqual(none, [])
        late, _ = self.list_all(c, due_before=now_ms())
        self.assertEqual(late, [])
        self.assertEqual(len(self.list_all(c, **{"class": "greylist"})[0]), 25)
        self.assertError(c.request({"op": "list", "class": "nope"}), "bad_request")
        self.assertError(c.request({"op": "list", "state": "held"}), "bad_request")
        self.assertError(c.request({"op": "list", "count": 0}), "bad_request")
        self.assertError(c.request({"op": "list", "cursor": "x"}), "bad_request")


class RetryNowTest(OperatorBase):
    def test_retry_now_id_domain_campaign(self):
        redis, d, c = self.start_all(policy=self.slow_policy())
        sub = self.connect(d)
        sub.subscribe("ops")
        a = self.bounces(c, 3, "a.example", campaign="c1")
        b = self.bounces(c, 2, "b.example", campaign="c2")
        self.assertEqual(self.retries(sub, 0.3), [])
        r = c.request({"op": "retry_now", "id": a[0]})
        self.assertOk(r)
        self.assertEqual(r["count"], 1)
        got = self.retries(sub, 1.0)
        self.assertEqual([e["id"] for e in got], [a[0]])
        r = c.request({"op": "retry_now", "id": a[0]})  # fired already: awaiting
        self.assertEqual((r["found"], r["count"]), (True, 0))
        r = c.request({"op": "retry_now", "id": "no-such-id"})
        self.assertEqual((r["found"], r["count"]), (False, 0))
        r = c.request({"op": "retry_now", "domain": "b.example"})
        self.assertEqual(r["count"], 2)
        got = self.retries(sub, 1.0)
        self.assertEqual(sorted(e["id"] for e in got), sorted(b))
        r = c.request({"op": "retry_now", "campaign": "c1"})
        self.assertEqual(r["count"], 2)
        got = self.retries(sub, 1.0)
        self.assertEqual(sorted(e["id"] for e in got), sorted(a[1:]))
        self.assertError(c.request({"op": "retry_now"}), "bad_request")
        self.assertError(c.request({"op": "retry_now", "domain": "a.example", "campaign": "c1"}), "bad_request")

    def test_retry_now_is_durable_and_waits_for_a_hold(self):
        redis, d, c = self.start_all(policy=self.slow_policy())
        sub = self.connect(d)
        sub.subscribe("ops")
        self.assertOk(c.request({"op": "hold", "domain": "h.example"}))
        ids = self.bounces(c, 4, "h.example")
        r = c.request({"op": "retry_now", "domain": "h.example"})
        self.assertEqual(r["count"], 4)
        self.assertEqual(self.retries(sub, 0.5), [], "a held domain's retries wait")
        for i in ids:
            rec = redis.cmd("HGET", "rebound:msg", i)
            due_rel = int(rec[1:].split(",")[0])
            first = int(rec.split("\n")[0].split(",")[3])
            self.assertLessEqual(first + due_rel, now_ms(), "the record says due now")
        d.kill9()
        d.start()
        sub = self.connect(d)
        sub.subscribe("ops")
        self.assertEqual(self.retries(sub, 0.5), [], "still held after kill -9")
        c = self.connect(d)
        r = c.request({"op": "release", "domain": "h.example"})
        self.assertOk(r)
        self.assertTrue(r["released"])
        got = self.retries(sub, 2.0)
        self.assertEqual(sorted(e["id"] for e in got), sorted(ids), "due at once after the release")


class CancelBulkTest(OperatorBase):
    def test_cancel_by_domain_and_campaign(self):
        redis, d, c = self.start_all(policy=self.slow_policy())
        sub = self.connect(d)
        sub.subscribe("ops")
        a = self.bounces(c, 6, "a.example")
        b = self.bounces(c, 5, "b.example", campaign="autumn")
        keep = self.bounces(c, 3, "c.example")
        r = c.request({"op": "cancel", "domain": "a.example"})
        self.assertOk(r)
        self.assertEqual(r["count"], 6)
        r = c.request({"op": "cancel", "campaign": "autumn"})
        self.assertEqual(r["count"], 5)
        self.assertEqual(c.request({"op": "cancel", "domain": "a.example"})["count"], 0)
        self.assertEqual(c.request({"op": "cancel", "domain": "never.example"})["count"], 0)
        self.assertEqual(redis.cmd("HLEN", "rebound:msg"), 3)
        for i in a + b:
            self.assertIsNone(redis.cmd("HGET", "rebound:msg", i))
            self.assertEqual(c.request({"op": "get", "id": i}).get("error", {}).get("code"), "not_found")
        self.assertEqual(sub.events(10, 0.3), [], "cancel raises no event")
        self.assertEqual(c.request({"op": "stats"})["pending"], 3)
        d.kill9()
        d.start()
        c = self.connect(d)
        self.assertEqual(c.request({"op": "stats"})["pending"], 3)
        items, _ = self.list_all(c)
        self.assertEqual(sorted(i["id"] for i in items), sorted(keep))


class HoldTest(OperatorBase):
    def test_hold_release_survives_restart(self):
        redis, d, c = self.start_all(policy=self.slow_policy("50ms"))
        sub = self.connect(d)
        sub.subscribe("ops")
        r = c.request({"op": "hold", "domain": "Held.example"})
        self.assertOk(r)
        self.assertEqual(r["domain"], "held.example")
        self.assertIn("held", r)
        held = self.bounces(c, 5, "held.example")
        free = self.bounces(c, 5, "free.example")
        got = self.retries(sub, 1.0)
        self.assertEqual(sorted(e["id"] for e in got), sorted(free), "the held domain's retries wait")
        st = c.request({"op": "stats"})
        self.assertEqual([h["domain"] for h in st["domains"]["held"]], ["held.example"])
        self.assertEqual(st["domains"]["held"][0]["pending"], 5)
        dom = c.request({"op": "domain", "domain": "held.example"})
        self.assertIn("held", dom)
        items, _ = self.list_all(c, domain="held.example")
        self.assertTrue(all(i.get("held") for i in items), items)
        self.assertEqual(redis.cmd("HEXISTS", "rebound:held", "held.example"), 1)
        d.kill9()
        d.start()
        sub = self.connect(d)
        sub.subscribe("ops")
        c = self.connect(d)
        self.assertEqual(self.retries(sub, 0.8), [], "still held after kill -9")
        self.assertIn("held", c.request({"op": "domain", "domain": "held.example"}))
        r = c.request({"op": "release", "domain": "held.example"})
        self.assertTrue(r["released"])
        self.assertEqual(r["count"], 5)
        got = self.retries(sub, 2.0)
        self.assertEqual(sorted(e["id"] for e in got), sorted(held))
        self.assertEqual(redis.cmd("HEXISTS", "rebound:held", "held.example"), 0)
        self.assertEqual(c.request({"op": "stats"})["domains"]["held"], [])
        self.assertFalse(c.request({"op": "release", "domain": "held.example"})["released"])

    def test_hold_until_ends_by_itself(self):
        redis, d, c = self.start_all(policy=self.slow_policy("20ms"))
        sub = self.connect(d)
        sub.subscribe("ops")
        until = now_ms() + 1500
        r = c.request({"op": "hold", "domain": "t.example", "until": until})
        self.assertEqual(r["held"]["until"], until)
        ids = self.bounces(c, 3, "t.example")
        got = self.retries(sub, 3.0)
        self.assertEqual(sorted(e["id"] for e in got), sorted(ids))
        self.assertTrue(all(e["at"] >= until for e in got), "none before the hold's end")
        self.assertError(c.request({"op": "hold", "domain": "t.example", "until": 1000}), "bad_request")
        self.assertError(c.request({"op": "hold"}), "bad_request")


class ReboundctlTest(OperatorBase):
    def ctl(self, d, *args):
        p = subprocess.run([os.path.join(BUILD_DIR, "reboundctl"), "--json", "-s", "127.0.0.1:%d" % d.port] +
                           list(args), capture_output=True, text=True, timeout=20)
        return p.returncode, [json.loads(l) for l in p.stdout.splitlines() if l.strip()], p.stderr

    def test_commands(self):
        redis, d, c = self.start_all(policy=self.slow_policy())
        a = self.bounces(c, 4, "a.example", campaign="winter")
        b = self.bounces(c, 3, "b.example")
        rc, out, err = self.ctl(d, "hold", "b.example", "--until", "+1h")
        self.assertEqual(rc, 0, err)
        self.assertIn("until", out[0]["held"])
        rc, out, err = self.ctl(d, "list", "--all", "--count", "2")
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(i["id"] for i in out), sorted(a + b))
        rc, out, _ = self.ctl(d, "list", "--domain", "b.example")
        self.assertEqual(len(out[0]["items"]), 3)
        self.assertTrue(all(i["held"] for i in out[0]["items"]))
        rc, out, _ = self.ctl(d, "list", "--due-before", "+10s")
        self.assertEqual(out[0]["items"], [])
        rc, out, _ = self.ctl(d, "retry-now", a[0])
        self.assertEqual(out[0]["count"], 1)
        rc, out, _ = self.ctl(d, "cancel", "--campaign", "winter")
        self.assertEqual(out[0]["count"], 4)
        rc, out, _ = self.ctl(d, "retry-now", "--domain", "b.example")
        self.assertEqual(out[0]["count"], 3)
        rc, out, _ = self.ctl(d, "release", "b.example")
        self.assertTrue(out[0]["released"])  # count: those the firing had already held back
        rc, out, err = self.ctl(d, "cancel", "--domain", "b.example", "--campaign", "x")
        self.assertEqual(rc, 2, "usage error")
        rc, out, err = self.ctl(d, "list", "--state", "nope")
        self.assertEqual(rc, 1)


class HistoryTest(OperatorBase):
    def test_history_of_finished_messages(self):
        redis, d, c = self.start_all()
        gone = unique_id("g")
        self.assertOk(c.request(bounce(gone, rcpt="a@h.example", campaign="summer", **GREYLIST)))
        wait_until(lambda: c.request({"op": "get", "id": gone}).get("state") == "awaiting", 5, what="the retry fired")
        r = c.request(bounce(gone, rcpt="a@h.example", code=550, enhanced="5.1.1", text="550 5.1.1 User unknown"))
        self.assertEqual(r["action"], "suppress", r)
        err = c.request({"op": "get", "id": gone})
        self.assertError(err, "not_found")
        self.assertIn("history", err["error"]["message"])
        h = c.request({"op": "history", "id": gone})
        self.assertOk(h)
        self.assertEqual((h["outcome"], h["reason"]), ("suppress", "hard_invalid"))
        self.assertEqual(h["rcpt"], "a@h.example")
        self.assertEqual(h["campaign"], "summer")
        self.assertEqual([b["code"] for b in h["history"]], [451, 550])
        self.assertEqual([b["class"] for b in h["history"]], ["greylist", "hard_invalid"])
        self.assertGreaterEqual(h["ended_at"], h["history"][-1]["at"])
        first = unique_id("f")  # a first bounce that ends the message
        c.request(bounce(first, rcpt="b@h.example", code=554, enhanced="5.7.1", text="554 5.7.1 Message rejected as spam"))
        h = c.request({"op": "history", "id": first})
        self.assertEqual(h["outcome"], "give_up", h)
        self.assertEqual(len(h["history"]), 1)
        ok = unique_id("d")
        c.request(bounce(ok, rcpt="c@h.example", **GREYLIST))
        self.assertOk(c.request({"op": "delivered", "id": ok}))
        h = c.request({"op": "history", "id": ok})
        self.assertEqual((h["outcome"], h["reason"]), ("delivered", "delivered"))
        self.assertEqual(len(h["history"]), 1)
        self.assertError(c.request({"op": "history", "id": "never-seen"}), "not_found")
        d.kill9()
        d.start()
        c = self.connect(d)
        self.assertEqual(c.request({"op": "history", "id": gone})["outcome"], "suppress")
        # bytes per finished message in Redis
        used = redis.cmd("MEMORY", "USAGE", "rebound:history")
        log("history of 3 messages: %s bytes (hash), %s (order)" % (used, redis.cmd("MEMORY", "USAGE", "rebound:history_at")))

    def test_retention_trims(self):
        redis = self.start_redis()
        fd, conf = tempfile.mkstemp(prefix="rebound-conf-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"history_retention": "300ms"}, f)
        self.addCleanup(os.unlink, conf)
        d = self.start_daemon(redis, extra_args=("-c", conf))
        c = self.connect(d)
        old = unique_id("o")
        c.request(bounce(old, rcpt="a@r.example", code=550, enhanced="5.1.1", text="550 5.1.1 User unknown"))
        self.assertEqual(c.request({"op": "history", "id": old})["outcome"], "suppress")
        time.sleep(0.4)
        new = unique_id("n")
        c.request(bounce(new, rcpt="b@r.example", code=550, enhanced="5.1.1", text="550 5.1.1 User unknown"))
        self.assertError(c.request({"op": "history", "id": old}), "not_found")
        self.assertOk(c.request({"op": "history", "id": new}))
        self.assertEqual(redis.cmd("ZCARD", "rebound:history_at"), 1)


class BulkLatencyTest(OperatorBase):
    N = int(os.environ.get("REBOUND_BULK_N", "100000"))

    def timed_reports(self, c, busy):
        """A well-behaved client's reports (bounces for another domain,
        each a Redis write), one at a time while busy() holds; their
        latencies in ms."""
        lat = []
        deadline = time.monotonic() + 60
        while busy() and time.monotonic() < deadline:
            t = time.monotonic()
            r = c.request(bounce(unique_id("o"), rcpt="x@other.example", **GREYLIST))
            self.assertOk(r)
            lat.append((time.monotonic() - t) * 1000)
            self.others += 1
        return sorted(lat)

    def test_bulk_ops_on_100k_do_not_stall_others(self):
        redis, d, c = self.start_all(policy=self.slow_policy())
        n = self.N
        self.others = 0
        # Records straight into Redis, loaded at start: seconds, not a
        # hundred thousand requests.
        first = now_ms()
        cmds = []
        for k in range(0, n, 5000):
            args = ["HSET", "rebound:msg"]
            for i in range(k, min(n, k + 5000)):
                args += ["bulk-%d" % i, "P60000,1,greylist,%d\nu%d@bulk.example\n0,451,4.7.1,greylist" % (first, i)]
            cmds.append(args)
        redis.pipeline(cmds)
        d.kill9()
        d.start(timeout=60)
        c = self.connect(d, timeout=60)
        other = self.connect(d)
        self.assertEqual(c.request({"op": "stats"})["pending"], n)
        for op in ({"op": "hold", "domain": "bulk.example"}, {"op": "retry_now", "domain": "bulk.example"},
                   {"op": "cancel", "domain": "bulk.example"}):
            if op["op"] == "hold":
                self.assertOk(c.request(op))
                continue
            t = time.monotonic()
            c.send(dict(op, req=1))
            state = {"reply": None}

            def busy():
                line = c._take_line()
                if line is None:
                    c._fill(time.monotonic() + 0.0002)
                    line = c._take_line()
                if line is not None:
                    state["reply"] = json.loads(line)
                return state["reply"] is None

            lat = self.timed_reports(other, busy)
            if state["reply"] is None:
                state["reply"] = c.read_reply(timeout=60)
            took = (time.monotonic() - t) * 1000
            r = state["reply"]
            self.assertOk(r)
            self.assertEqual(r["count"], n)
            self.assertGreater(len(lat), 5, "reports were answered while the bulk op ran")
            p50, p99, mx = lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]
            log("%s on %d: %.0f ms; meanwhile %d reports, p50 %.2f ms, p99 %.2f ms, max %.2f ms" %
                (op["op"], n, took, len(lat), p50, p99, mx))
            self.assertLess(p99, 250, "another client is not stalled")
        self.assertEqual(redis.cmd("HLEN", "rebound:msg"), self.others)


if __name__ == "__main__":
    unittest.main()
