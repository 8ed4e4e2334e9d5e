"""Recipients across messages (fast policy): a recipient whose messages are
given up for a full mailbox in 3 campaigns in a row is suppressed once
(chronic_soft); a delivered in between resets the streak; greylisting never
suppresses; soft bounces spanning the chronic span suppress too; a
suppressed address is remembered (later reports get suppress at once) until
delivered or unsuppress; the list pages; get shows history and streak; and
all of it survives kill -9 of the daemon."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

from harness import (BUILD_DIR, FAST_POLICY, GREYLIST, OVER_QUOTA, USER_UNKNOWN, DaemonTestCase, bounce, now_ms,
                     reboundd_path, unique_id)

TEMP_OTHER = dict(code=459, text="459 unexplained condition")


def log(msg):
    sys.stderr.write("  [recipients] %s\n" % msg)


def fast_policy_with(**sections):
    """The fast policy with some top-level sections replaced, as a file."""
    with open(FAST_POLICY) as f:
        p = json.load(f)
    p.update(sections)
    fd, path = tempfile.mkstemp(prefix="rebound-policy-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(p, f)
    return path


class RecipientsBase(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.redis, self.daemon, self.c = self.start_all(policy=self.make_policy())
        self.sub = self.connect(self.daemon)
        self.sub.subscribe("rcpt-test")

    def make_policy(self):
        return None  # the fast policy

    def reconnect(self):
        self.c = self.connect(self.daemon)
        self.sub = self.connect(self.daemon)
        self.sub.subscribe("rcpt-test")

    def run_messages(self, rcpt, kind, campaigns, max_bounces=20):
        """Runs one new message to rcpt per campaign (None: no campaign) at
        the same time, as a platform does when campaigns overlap: reports a
        bounce for each, again after each of its retry events, until
        reboundd stops retrying it. Returns the last replies, in the order
        the messages ended."""
        live = {}  # id -> (campaign, bounces so far)
        ended = []

        def report(id):
            campaign, n = live[id]
            extra = {"campaign": campaign} if campaign else {}
            r = self.assertOk(self.c.request(bounce(id, rcpt=rcpt, **dict(kind, **extra))))
            if r["action"] != "retry":
                del live[id]
                ended.append(r)
                return
            self.assertEqual(r["attempt"], n + 1, r)
            self.assertLess(n + 1, max_bounces, "%s is still retried" % id)
            live[id] = (campaign, n + 1)

        for campaign in campaigns:
            id = unique_id("msg")
            live[id] = (campaign, 0)
            report(id)
        while live:
            got = self.sub.wait_event(lambda e: e.get("type") == "retry" and e.get("id") in live
                                      and e.get("attempt") == live[e["id"]][1], 10)
            self.assertIsNotNone(got, "no retry event for %r" % live)
            report(got[1]["id"])
        return ended

    def run_message(self, rcpt, kind, campaign=None):
        return self.run_messages(rcpt, kind, [campaign])[0]

    def events_for(self, rcpt, wait=0.3):
        """Every event that arrived for rcpt (drains the subscriber's queue of
        them, waiting up to `wait` for more)."""
        deadline = time.monotonic() + wait
        out = []
        while True:
            got = self.sub.wait_event(lambda e: e.get("rcpt") == rcpt, max(0.0, deadline - time.monotonic()))
            if got is None:
                return out
            out.append(got[1])

    def recipient(self, rcpt):
        r = self.assertOk(self.c.request({"op": "get", "rcpt": rcpt}))
        return r["recipient"]



class RecipientsTest(RecipientsBase):
    """The points of the issue, with the fast policy as it is (a full
    mailbox is retried after 12, 24 and 36 policy hours: 0.7, 1.4, 2.2 s)."""

    def test_three_campaigns_of_full_mailbox_suppress_once(self):
        rcpt = "Full.Box@Example.org"
        replies = self.run_messages(rcpt, OVER_QUOTA, ["spring-%d" % k for k in (1, 2, 3)])
        self.assertEqual([r["action"] for r in replies], ["give_up", "give_up", "suppress"], replies)
        self.assertEqual(replies[2]["reason"], "chronic_soft", replies[2])
        self.assertEqual(replies[2]["class"], "mailbox_full")
        evs = self.events_for(rcpt)
        sup = [e for e in evs if e["type"] == "suppress"]
        self.assertEqual(len(sup), 1, evs)
        self.assertEqual(sup[0]["reason"], "chronic_soft")
        self.assertEqual(sup[0]["id"], replies[2]["id"])
        self.assertEqual(sup[0]["attempt"], replies[2]["attempt"])
        self.assertEqual((sup[0]["code"], sup[0]["enhanced"], sup[0]["class"]), (452, "4.2.2", "mailbox_full"))
        # the last message's outcome is the suppress, not a give_up as well
        gave_up = [e for e in evs if e["type"] == "give_up"]
        self.assertEqual(sorted(e["id"] for e in gave_up), sorted(r["id"] for r in replies[:2]), evs)
        last_campaign = sup[0]["campaign"]

        rec = self.recipient(rcpt)
        self.assertEqual(rec["address"], "full.box@example.org")
        self.assertTrue(rec["suppressed"], rec)
        self.assertEqual(rec["suppressed_reason"], "chronic_soft")
        self.assertEqual(rec["streak"], 3)
        self.assertEqual(rec["classes"], ["mailbox_full"])
        self.assertEqual(rec["last_campaign"], last_campaign)
        self.assertGreaterEqual(rec["soft_bounces"], 6)

        # remembered: a later report, any class, is suppressed at once,
        # nothing is scheduled, and no second chronic_soft follows
        id = unique_id("later")
        r = self.assertOk(self.c.request(bounce(id, rcpt=rcpt.lower(), **GREYLIST)))
        self.assertEqual((r["action"], r["reason"]), ("suppress", "suppressed"), r)
        self.assertNotIn("retry_at", r)
        self.assertError(self.c.request({"op": "get", "id": id}), "not_found")
        evs = self.events_for(rcpt.lower())
        self.assertEqual([(e["type"], e["reason"]) for e in evs], [("suppress", "suppressed")], evs)
        self.assertIsNone(self.sub.wait_event(lambda e: e.get("id") == id and e.get("type") == "retry", 0.3))
        stats = self.assertOk(self.c.request({"op": "stats"}))
        self.assertEqual(stats["pending"], 0, stats)

    def test_delivered_in_between_resets_the_streak(self):
        rcpt = "reset@example.org"
        for r in self.run_messages(rcpt, OVER_QUOTA, ["c1", "c2"]):
            self.assertEqual(r["action"], "give_up", r)
        self.assertEqual(self.recipient(rcpt)["streak"], 2)
        # a different message got through: the address is fine after all
        r = self.assertOk(self.c.request({"op": "delivered", "id": unique_id("ok"), "rcpt": rcpt}))
        self.assertEqual((r["found"], r["unsuppressed"]), (False, False), r)
        self.assertEqual(self.recipient(rcpt)["streak"], 0)
        r3 = self.run_message(rcpt, OVER_QUOTA, campaign="c3")
        self.assertEqual(r3["action"], "give_up", r3)
        self.assertEqual(self.recipient(rcpt)["streak"], 1)
        self.assertEqual([e for e in self.events_for(rcpt) if e["type"] == "suppress"], [])

    def test_greylisting_never_suppresses(self):
        rcpt = "grey@example.org"
        replies = self.run_messages(rcpt, GREYLIST, ["g%d" % k for k in range(6)] + [None] * 4)
        self.assertEqual([r["action"] for r in replies], ["give_up"] * 10, replies)
        # and a burst of greylisted first attempts, too
        ids = [unique_id("g") for _ in range(50)]
        for r in self.c.pipeline([bounce(i, rcpt=rcpt, **GREYLIST) for i in ids]):
            self.assertEqual(self.assertOk(r)["action"], "retry")
        self.assertEqual([e for e in self.events_for(rcpt, wait=1.0) if e["type"] == "suppress"], [])
        rec = self.recipient(rcpt)
        self.assertEqual((rec["streak"], rec["soft_bounces"], rec["suppressed"]), (0, 0, False), rec)


class QuickRecipientsTest(RecipientsBase):
    """The rest of the rules, with the fast policy's soft classes made
    quicker still (two retries, 3 ms apart), so that a campaign ends in a few
    milliseconds."""

    def make_policy(self):
        with open(FAST_POLICY) as f:
            p = json.load(f)
        for name in ("mailbox_full", "temp_other"):
            p["classes"][name].update(delays=["3ms"], max_attempts=2)
            p["classes"][name].pop("jitter", None)
        path = fast_policy_with(classes=p["classes"])
        self.addCleanup(os.unlink, path)
        return path

    def test_streak_counts_on_after_a_reset(self):
        rcpt = "again@example.org"
        for r in self.run_messages(rcpt, OVER_QUOTA, ["a", "b"]):
            self.assertEqual(r["action"], "give_up")
        self.assertOk(self.c.request({"op": "delivered", "id": unique_id("ok"), "rcpt": rcpt}))
        replies = [self.run_message(rcpt, OVER_QUOTA, campaign=c) for c in ("c", "d", "e")]
        self.assertEqual([r["action"] for r in replies], ["give_up", "give_up", "suppress"], replies)

    def test_delivered_for_the_message_resets_its_recipient(self):
        rcpt = "via-id@example.org"
        self.assertEqual(self.run_message(rcpt, OVER_QUOTA, campaign="a")["action"], "give_up")
        self.assertEqual(self.run_message(rcpt, OVER_QUOTA, campaign="b")["action"], "give_up")
        # a message that is pending: delivered without rcpt finds the
        # recipient in the message's record
        id = unique_id("pending")
        r = self.assertOk(self.c.request(bounce(id, rcpt=rcpt, not_before=now_ms() + 2000, **GREYLIST)))
        self.assertEqual(r["action"], "retry", r)
        r = self.assertOk(self.c.request({"op": "delivered", "id": id}))
        self.assertTrue(r["found"], r)
        self.assertEqual(self.recipient(rcpt)["streak"], 0)

    def test_one_campaign_counts_once_and_messages_without_one_count_each(self):
        rcpt = "same@example.org"
        for _ in range(4):
            self.assertEqual(self.run_message(rcpt, OVER_QUOTA, campaign="only-one")["action"], "give_up")
        self.assertEqual(self.recipient(rcpt)["streak"], 1)
        rcpt2 = "nocampaign@example.org"
        replies = [self.run_message(rcpt2, TEMP_OTHER) for _ in range(3)]
        self.assertEqual([r["action"] for r in replies], ["give_up", "give_up", "suppress"], replies)
        rec = self.recipient(rcpt2)
        self.assertEqual(rec["classes"], ["temp_other"])
        self.assertEqual(rec["last_message"], replies[2]["id"])

    def test_hard_invalid_remembered_until_unsuppress_or_delivered(self):
        rcpt = "gone@example.org"
        r = self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=rcpt, **USER_UNKNOWN)))
        self.assertEqual((r["action"], r["reason"]), ("suppress", "hard_invalid"))
        r = self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=rcpt, **OVER_QUOTA)))
        self.assertEqual((r["action"], r["reason"]), ("suppress", "suppressed"), r)
        rec = self.recipient(rcpt)
        self.assertEqual((rec["suppressed"], rec["suppressed_reason"]), (True, "hard_invalid"))

        r = self.assertOk(self.c.request({"op": "unsuppress", "rcpt": "GONE@example.org"}))
        self.assertEqual(r["found"], True)
        self.assertEqual(self.assertOk(self.c.request({"op": "unsuppress", "rcpt": rcpt}))["found"], False)
        r = self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=rcpt, **GREYLIST)))
        self.assertEqual(r["action"], "retry", r)

        # suppressed again, then a delivered for the address lifts it
        self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=rcpt, **USER_UNKNOWN)))
        r = self.assertOk(self.c.request({"op": "delivered", "id": unique_id("d"), "rcpt": rcpt}))
        self.assertEqual(r["unsuppressed"], True, r)
        self.assertFalse(self.recipient(rcpt)["suppressed"])
        r = self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=rcpt, **GREYLIST)))
        self.assertEqual(r["action"], "retry", r)

    def test_suppressed_list_pages(self):
        addrs = ["User%03d@List.example" % i for i in range(600)]  # past listpack size, so HSCAN pages
        replies = self.c.pipeline([bounce(unique_id("l"), rcpt=a, **USER_UNKNOWN) for a in addrs])
        self.assertTrue(all(self.assertOk(r)["action"] == "suppress" for r in replies))
        seen, cursor, pages = {}, "0", 0
        while True:
            r = self.assertOk(self.c.request({"op": "suppressed", "cursor": cursor, "count": 40}))
            self.assertEqual(r["total"], 600)
            for it in r["items"]:
                seen[it["rcpt"]] = it
                self.assertEqual(it["reason"], "hard_invalid")
                self.assertIsInstance(it["at"], int)
            pages += 1
            cursor = r["cursor"]
            if cursor == "0":
                break
            self.assertLess(pages, 100, "the cursor never came back to 0")
        self.assertGreater(pages, 1)
        self.assertEqual(set(seen), {a.lower() for a in addrs})
        self.assertError(self.c.request({"op": "suppressed", "cursor": "x"}), "bad_request")

        # reboundctl suppressed --all: one JSON line per address, for export
        ctl = os.path.join(BUILD_DIR, "reboundctl")
        p = subprocess.run([ctl, "-s", "127.0.0.1:%d" % self.daemon.port, "suppressed", "--all", "--count", "70"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
        self.assertEqual({x["rcpt"] for x in lines}, {a.lower() for a in addrs})
        p = subprocess.run([ctl, "-s", "127.0.0.1:%d" % self.daemon.port, "--json", "unsuppress", addrs[0]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["found"], True)
        self.assertEqual(self.assertOk(self.c.request({"op": "suppressed", "count": 1}))["total"], 599)

    def test_get_shows_history_and_streak(self):
        rcpt = "history@example.org"
        self.assertEqual(self.run_message(rcpt, OVER_QUOTA, campaign="h1")["action"], "give_up")
        id = unique_id("hist")
        r1 = self.assertOk(self.c.request(bounce(id, rcpt=rcpt, campaign="h2", **OVER_QUOTA)))
        self.assertIsNotNone(self.sub.wait_event(lambda e: e.get("id") == id and e.get("type") == "retry", 5))
        r2 = self.assertOk(self.c.request(bounce(id, rcpt=rcpt, campaign="h2", code=452,
                                                 text="452 4.2.2 Mailbox full")))
        self.assertEqual(r2["attempt"], 2)
        g = self.assertOk(self.c.request({"op": "get", "id": id}))
        self.assertEqual(len(g["history"]), 2, g)
        for h in g["history"]:
            self.assertEqual((h["code"], h["class"]), (452, "mailbox_full"), h)
            self.assertIsInstance(h["at"], int)
        self.assertLessEqual(g["history"][0]["at"], g["history"][1]["at"])
        rec = g["recipient"]
        self.assertEqual((rec["address"], rec["streak"], rec["streak_limit"]), (rcpt, 1, 3), rec)
        self.assertEqual(rec["last_campaign"], "h1")
        self.assertGreaterEqual(rec["soft_bounces"], 5)
        self.assertLessEqual(rec["first_soft_at"], rec["last_soft_at"])
        self.assertFalse(rec["suppressed"])
        # an address never seen
        rec = self.recipient("nobody@example.org")
        self.assertEqual((rec["streak"], rec["suppressed"]), (0, False))

    def test_streak_and_suppression_survive_kill9(self):
        rcpt = "durable@example.org"
        for k in (1, 2):
            self.assertEqual(self.run_message(rcpt, OVER_QUOTA, campaign="d%d" % k)["action"], "give_up")
        hard = "durable-hard@example.org"
        self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=hard, **USER_UNKNOWN)))
        self.daemon.kill9()
        self.daemon.start()
        self.reconnect()
        self.assertEqual(self.recipient(rcpt)["streak"], 2)
        r = self.run_message(rcpt, OVER_QUOTA, campaign="d3")
        self.assertEqual((r["action"], r["reason"]), ("suppress", "chronic_soft"), r)
        r = self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=hard, **GREYLIST)))
        self.assertEqual((r["action"], r["reason"]), ("suppress", "suppressed"), r)
        self.daemon.kill9()
        self.daemon.start()
        self.reconnect()
        r = self.assertOk(self.c.request(bounce(unique_id("h"), rcpt=rcpt, **GREYLIST)))
        self.assertEqual((r["action"], r["reason"]), ("suppress", "suppressed"), r)
        self.assertEqual(self.assertOk(self.c.request({"op": "suppressed"}))["total"], 2)



class ChronicSpanTest(DaemonTestCase):
    """Soft bounces over the chronic span with enough of them suppress even
    without give-ups (a span of 400 ms here)."""

    def setUp(self):
        super().setUp()
        self.policy_path = fast_policy_with(streak={"campaigns": 100, "chronic_span": "400ms", "chronic_attempts": 5})
        self.addCleanup(os.unlink, self.policy_path)
        self.redis, self.daemon, self.c = self.start_all(policy=self.policy_path)

    def test_soft_bounces_over_the_span(self):
        rcpt = "chronic@example.org"
        t0 = time.monotonic()
        replies = []
        for k in range(5):
            # let the span pass before the fifth
            time.sleep(max(0.0, t0 + 0.11 * k - time.monotonic()) if k < 4 else max(0.0, t0 + 0.45 - time.monotonic()))
            replies.append(self.assertOk(self.c.request(bounce(unique_id("c"), rcpt=rcpt, **TEMP_OTHER))))
        self.assertEqual([r["action"] for r in replies], ["retry"] * 4 + ["suppress"], replies)
        self.assertEqual(replies[4]["reason"], "chronic_soft")
        rec = self.assertOk(self.c.request({"op": "get", "rcpt": rcpt}))["recipient"]
        self.assertEqual(rec["soft_bounces"], 5)
        self.assertGreaterEqual(rec["last_soft_at"] - rec["first_soft_at"], 400)
        self.assertTrue(rec["suppressed"])


class PresetTest(DaemonTestCase):
    def check(self, streak):
        path = fast_policy_with(streak=streak)
        self.addCleanup(os.unlink, path)
        return subprocess.run([reboundd_path(), "-t", "--policy", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=30)

    def check_domains(self, domains):
        path = fast_policy_with(domains=domains)
        self.addCleanup(os.unlink, path)
        return subprocess.run([reboundd_path(), "-t", "--policy", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=30)

    def test_presets_are_one_line(self):
        self.assertEqual(self.check({"preset": "klaviyo"}).returncode, 0)
        p = self.check({"preset": "hubspot"})
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"streak.preset: unknown preset \"hubspot\" (use default, klaviyo or mailchimp)", p.stderr)
        # the domain settings are checked the same way
        p = self.check_domains({"throttle": {"classes": ["rate_limit", "nope"]}})
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"domains.throttle.classes[1]: unknown class \"nope\"", p.stderr)
        p = self.check_domains({"pace": {"per_second": -1}})
        self.assertIn(b"domains.pace.per_second: -1 is out of range", p.stderr)
        p = self.check_domains({"throttle": {"window": "0"}})
        self.assertIn(b"domains.throttle.window: must be at least 1ms", p.stderr)
        self.assertEqual(self.check_domains({"alert_window": "0", "pace": {"per_second": 0}}).returncode, 0)
        path = fast_policy_with(streak={"preset": "mailchimp"})
        self.addCleanup(os.unlink, path)
        redis, daemon, c = self.start_all(policy=path)
        rec = self.assertOk(c.request({"op": "get", "rcpt": "x@example.org"}))["recipient"]
        self.assertEqual(rec["streak_limit"], 15)


if __name__ == "__main__":
    unittest.main()
