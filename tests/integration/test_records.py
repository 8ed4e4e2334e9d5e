"""The message records in Redis (proto/record.h): the common retry is
stored in its compact form, a message with more to say keeps its JSON
members, and records written by an earlier version (epoch times, a JSON
history) are read back, fired and rewritten in the compact form."""

import re
import unittest

import json

from harness import DEFAULT_POLICY, GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, now_ms, unique_id

MSG_HASH = "rebound:msg"


class RecordTest(DaemonTestCase):
    policy = DEFAULT_POLICY  # nothing falls due unless a test says so

    def test_common_retry_is_compact(self):
        redis, daemon, c = self.start_all()
        t0 = now_ms()
        r = self.assertOk(c.request(bounce("m123456", rcpt="U123456@D456.example", **GREYLIST)))
        rec = redis.cmd("HGET", MSG_HASH, "m123456")
        m = re.fullmatch(r"P(\d+),1,greylist,(\d+)\nU123456@D456\.example\n0,451,4\.7\.1,greylist", rec)
        self.assertIsNotNone(m, rec)
        first = int(m.group(2))
        self.assertGreaterEqual(first, t0)
        self.assertEqual(first + int(m.group(1)), r["retry_at"])
        # within the allocator's 80-byte class with Redis's string header
        self.assertLessEqual(len(rec), 76, rec)

        # get shows the same as before the compact form
        g = self.assertOk(c.request({"op": "get", "id": "m123456"}))
        self.assertEqual((g["id"], g["rcpt"], g["state"], g["due_at"], g["first_at"]),
                         ("m123456", "U123456@D456.example", "pending", r["retry_at"], first))
        self.assertEqual(g["history"], [{"at": first, "code": 451, "enhanced": "4.7.1", "class": "greylist"}])

    def test_members_kept_when_there_is_more(self):
        redis, daemon, c = self.start_all()
        cases = {
            unique_id("camp"): dict(campaign="spring \"sale\""),
            unique_id("meta"): dict(meta={"tenant": 7}),
            'quote"id-%d' % now_ms(): dict(rcpt="q@example.org"),
        }
        for id, extra in cases.items():
            self.assertOk(c.request(bounce(id, **dict(GREYLIST, **extra))))
            who = redis.cmd("HGET", MSG_HASH, id).split("\n")[1]
            self.assertTrue(who.startswith('"id":'), who)
            g = self.assertOk(c.request({"op": "get", "id": id}))
            self.assertEqual(g["id"], id)
            for k, v in extra.items():
                self.assertEqual(g[k], v)


    def send_together(self, c, reqs):
        """Sends the requests in one write, so that they join one batch."""
        c.raw(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))
        return [c.read_reply() for _ in reqs]

    def test_a_batch_applies_its_changes_in_order(self):
        # A fresh first retry written in the batch's bulk section must not
        # overtake a change queued before it for the same recipient.
        redis, daemon, c = self.start_all()
        ids = [unique_id("order") for _ in range(4)]
        r = self.send_together(c, [
            bounce(ids[0], rcpt="calm@example.org", **GREYLIST),    # fresh
            bounce(ids[1], rcpt="gone@example.org", **USER_UNKNOWN),  # suppresses
            bounce(ids[2], rcpt="gone@example.org", **GREYLIST),    # after it: suppressed
        ])
        self.assertEqual([x["action"] for x in r], ["retry", "suppress", "suppress"], r)
        self.assertEqual(r[2]["reason"], "suppressed", r)
        self.assertIsNone(redis.cmd("HGET", MSG_HASH, ids[2]))
        r = self.send_together(c, [
            {"op": "unsuppress", "rcpt": "gone@example.org"},
            bounce(ids[3], rcpt="gone@example.org", **GREYLIST),    # after it: retried
        ])
        self.assertEqual(r[0]["found"], True, r)
        self.assertEqual(r[1]["action"], "retry", r)
        self.assertIsNotNone(redis.cmd("HGET", MSG_HASH, ids[3]))

    def test_records_of_an_earlier_version(self):
        redis = self.start_redis()
        now = now_ms()
        first = now - 3600000
        # pending and overdue: fires at once
        redis.cmd("HSET", MSG_HASH, "old-p",
                  'P%d,1,greylist,%d\n"id":"old-p","rcpt":"p@old.example"\n[[%d,451,"4.7.1","greylist"]]'
                  % (now - 1000, first, first))
        # awaiting its outcome
        redis.cmd("HSET", MSG_HASH, "old-a",
                  'A%d,1,greylist,%d\n"id":"old-a","rcpt":"a@old.example"\n[[%d,451,"4.7.1","greylist"]]'
                  % (first + 600000, first, first))
        daemon = self.start_daemon(redis)
        c = self.connect(daemon)
        g = self.assertOk(c.request({"op": "get", "id": "old-a"}))
        self.assertEqual((g["rcpt"], g["state"], g["due_at"], g["attempt"]),
                         ("a@old.example", "awaiting", first + 600000, 1))
        self.assertEqual(g["history"], [{"at": first, "code": 451, "enhanced": "4.7.1", "class": "greylist"}])

        sub = self.connect(daemon)
        sub.subscribe("records")
        ev = sub.wait_event(lambda e: e.get("id") == "old-p" and e.get("type") == "retry", 10)
        self.assertIsNotNone(ev, "the earlier version's pending record did not fire")
        ev = ev[1]
        self.assertEqual((ev["rcpt"], ev["due_at"], ev["attempt"], ev["class"]),
                         ("p@old.example", now - 1000, 1, "greylist"))

        # the next bounce rewrites the record in the compact form, history kept
        t1 = now_ms()
        r = self.assertOk(c.request(bounce("old-a", rcpt="a@old.example", **GREYLIST)))
        self.assertEqual((r["action"], r["attempt"]), ("retry", 2), r)
        rec = redis.cmd("HGET", MSG_HASH, "old-a")
        self.assertRegex(rec, r"^P\d+,2,greylist,%d\na@old\.example\n0,451,4\.7\.1,greylist;\d+,451,4\.7\.1,greylist$"
                         % first)
        g = self.assertOk(c.request({"op": "get", "id": "old-a"}))
        self.assertEqual(g["due_at"], r["retry_at"])
        self.assertEqual([h["at"] for h in g["history"]][0], first)
        self.assertGreaterEqual(g["history"][1]["at"], t1)
        self.assertEqual(len(g["history"]), 2)


if __name__ == "__main__":
    unittest.main()
