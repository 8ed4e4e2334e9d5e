"""The stream's encoding of events (fast policy): a retry event is stored
in its compact form (proto/event.h) whether it fired through the fire
script or as a burst, give_up, suppress and sender_alert in a positional
form, and other events in the generic compact form, yet
a subscriber gets the JSON that protocol.md shows, member for member and
in that order; entries written in the JSON
form (by a daemon from before the compact form) are still delivered as
they were."""

import json
import time
import unittest

from harness import GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, unique_id
from stream_events import expand_entry

STREAM = "rebound:events"


def now_ms():
    return int(time.time() * 1000)


class EventEncodingTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.redis, self.daemon, self.c = self.start_all()

    def stream_bodies(self):
        """Each event's [field of its entry, body]: "e" for an entry of its
        own, "b" for an event of a burst's batch entry."""
        out = {}
        for eid, fields in self.redis.cmd("XRANGE", STREAM, "-", "+"):
            for id_, body in expand_entry(eid, fields):
                out[id_] = [fields[0], body] if id_ == eid and fields[0] == "e" else ["b", body]
        return out

    def collect(self, client, n, timeout=10.0):
        evs = client.events(n, timeout)
        self.assertEqual(len(evs), n, "got %d of %d events" % (len(evs), n))
        return evs

    def check_retry(self, ev, report, bodies):
        """ev is a retry event of report: the members protocol.md lists, in
        its order, and the stream holds it compact."""
        want = ["eid", "type", "at", "id", "rcpt"]
        want += [k for k in ("campaign", "meta") if k in report]
        want += ["class", "attempt", "due_at"]
        self.assertEqual(list(ev.keys()), want, ev)
        self.assertEqual((ev["type"], ev["id"], ev["rcpt"]), ("retry", report["id"], report["rcpt"]))
        for k in ("campaign", "meta"):
            if k in report:
                self.assertEqual(ev[k], report[k])
        self.assertEqual((ev["class"], ev["attempt"]), ("greylist", 1))
        self.assertIsInstance(ev["at"], int)
        self.assertIsInstance(ev["due_at"], int)
        self.assertGreaterEqual(ev["at"], ev["due_at"] - 5)
        self.assertLess(ev["at"] - ev["due_at"], 10000)
        fields = bodies[ev["eid"]]
        self.assertIn(fields[0], ("e", "b"))
        self.assertTrue(fields[1].startswith("R"), fields[1])
        line = json.dumps({k: v for k, v in ev.items() if k != "eid"}, separators=(",", ":"))
        # the member names and the second time stamp stay out of the stream
        # (and the id and rcpt names for a plain message, stored without them)
        plain = not fields[1].split("\n", 1)[1].startswith('"')
        self.assertEqual(plain, not ({"campaign", "meta"} & set(report)) and not set('"\\') & set(report["id"]))
        saved = 70 if plain else 45
        self.assertLessEqual(len(fields[1]), len(line.encode()) - saved, "the stored form is not compact")

    def test_script_path_compact_and_same_json(self):
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        reports = [
            bounce(unique_id("plain"), **GREYLIST),
            bounce(unique_id("camp"), campaign="spring \"sale\"", **GREYLIST),
            bounce(unique_id("meta"), meta={"tenant": "acme", "n": [1, "\u00e9"]}, **GREYLIST),
            bounce(unique_id("q\"uote\\"), rcpt="quote@example.com", **GREYLIST),
        ]
        for r in self.c.pipeline(reports):
            self.assertOk(r)
        evs = self.collect(sub, len(reports))
        by_id = {r["id"]: r for r in reports}
        bodies = self.stream_bodies()
        for ev in evs:
            self.check_retry(ev, by_id[ev["id"]], bodies)

    def test_burst_path_compact_and_same_json(self):
        # More than a fire script's batch (FIRE_READ_MAX, 128) due at once
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        due = now_ms() + 1500
        reports = [bounce(unique_id("burst"), not_before=due, **GREYLIST) for _ in range(400)]
        for r in self.c.pipeline(reports):
            self.assertOk(r)
        evs = self.collect(sub, len(reports))
        by_id = {r["id"]: r for r in reports}
        bodies = self.stream_bodies()
        self.assertEqual(sorted(e["id"] for e in evs), sorted(by_id))
        for ev in evs:
            self.check_retry(ev, by_id[ev["id"]], bodies)
            self.assertEqual(ev["due_at"], due)
        # the burst's events went into batch entries (proto/event.h)
        self.assertGreater(sum(1 for ev in evs if bodies[ev["eid"]][0] == "b"), 128)

    def test_other_types_compact_and_same_json(self):
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        r = bounce(unique_id("gone"), meta={"class": "x\"code\":"}, **USER_UNKNOWN)
        self.assertOk(self.c.request(r))
        ev = self.collect(sub, 1)[0]
        self.assertEqual(list(ev.keys()),
                         ["eid", "type", "at", "id", "rcpt", "meta", "class", "attempt", "code", "enhanced", "reason"])
        self.assertEqual((ev["type"], ev["id"], ev["rcpt"], ev["meta"], ev["code"], ev["enhanced"]),
                         ("suppress", r["id"], r["rcpt"], r["meta"], 550, "5.1.1"))
        stored = self.stream_bodies()[ev["eid"]][1]
        self.assertTrue(stored.startswith("S"), stored)
        line = json.dumps({k: v for k, v in ev.items() if k != "eid"}, separators=(",", ":"))
        self.assertLessEqual(len(stored), len(line.encode()) - 50)

    def check_outcome(self, ev, want_keys, stored, saved):
        self.assertEqual(list(ev.keys()), want_keys, ev)
        self.assertTrue(stored[:1] in ("G", "S", "A"), stored)
        line = json.dumps({k: v for k, v in ev.items() if k != "eid"}, separators=(",", ":"))
        self.assertLessEqual(len(stored), len(line.encode()) - saved, "the stored form is not compact")

    def test_outcomes_positional_and_same_json(self):
        # give_up, suppress (the daemon's, and the one apply.lua writes for
        # an address suppressed already) and sender_alert: stored in the
        # positional form, delivered as the JSON protocol.md shows.
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        gone = bounce(unique_id("gone"), **USER_UNKNOWN)
        again = bounce(unique_id("again"), rcpt=gone["rcpt"].upper(), campaign="c, \"2\"", **USER_UNKNOWN)
        hard = bounce(unique_id("hard"), code=554, enhanced="5.0.0", text="554 5.0.0 Transaction failed")
        dmarc = bounce(unique_id("dmarc"), rcpt="Alice@Mail.Example.ORG", code=550, enhanced="5.7.26",
                       text="550 5.7.26 Unauthenticated, \"DMARC\" policy")
        for r in (gone, again, hard, dmarc):
            self.assertOk(self.c.request(r))
        evs = self.collect(sub, 5)
        bodies = self.stream_bodies()
        by = {(e["id"], e["type"]): e for e in evs}
        msg = ["eid", "type", "at", "id", "rcpt"]
        outcome = ["class", "attempt", "code", "enhanced", "reason"]
        ev = by[(gone["id"], "suppress")]
        self.assertEqual((ev["reason"], ev["class"], ev["rcpt"]), ("hard_invalid", "hard_invalid", gone["rcpt"]))
        self.check_outcome(ev, msg + outcome, bodies[ev["eid"]][1], 70)
        ev = by[(again["id"], "suppress")]
        self.assertEqual((ev["reason"], ev["campaign"], ev["rcpt"]), ("suppressed", again["campaign"], again["rcpt"]))
        self.check_outcome(ev, msg + ["campaign"] + outcome, bodies[ev["eid"]][1], 40)
        ev = by[(hard["id"], "give_up")]
        self.assertEqual((ev["reason"], ev["code"], ev["enhanced"]), ("permanent", 554, "5.0.0"))
        self.check_outcome(ev, msg + outcome, bodies[ev["eid"]][1], 60)
        ev = by[(dmarc["id"], "sender_alert")]
        self.assertEqual((ev["reason"], ev["class"], ev["text"], ev["domain"], ev["repeats"]),
                         ("auth_failure", "auth_failure", dmarc["text"], "mail.example.org", 0))
        self.check_outcome(ev, msg + outcome + ["text", "domain", "repeats"], bodies[ev["eid"]][1], 70)
        self.assertIn((dmarc["id"], "give_up"), by)
        self.assertEqual(sub.ack([e["eid"] for e in evs]).get("acked"), 5)

    def test_entries_from_before_the_upgrade_still_read(self):
        old = [
            {"type": "retry", "at": 1718000000003, "id": "msg-8842", "rcpt": "alice@example.com",
             "campaign": "newsletter-2024-06", "meta": {"tenant": "acme"}, "class": "greylist", "attempt": 1,
             "due_at": 1718000000000},
            {"type": "retry", "at": 1718000000004, "id": "msg-1", "rcpt": "bob@example.com", "class": "greylist",
             "attempt": 2, "due_at": 1718000000001},
            {"type": "give_up", "at": 1718003600000, "id": "msg-77", "rcpt": "bob@example.net",
             "class": "mailbox_full", "attempt": 3, "code": 452, "enhanced": "4.2.2", "reason": "max_age"},
        ]
        eids = [self.redis.cmd("XADD", STREAM, "*", "e", json.dumps(b, separators=(",", ":"))) for b in old]
        # the generic compact form of the version before the positional one
        old.append({"type": "give_up", "at": 1718003600000, "id": "msg-78", "rcpt": "bob@example.net",
                    "class": "mailbox_full", "attempt": 3, "code": 452, "enhanced": "4.2.2", "reason": "max_age"})
        eids.append(self.redis.cmd("XADD", STREAM, "*", "e", 'glx8mzhq8,\x01"msg-78",\x02"bob@example.net",'
                                   '\x05"mailbox_full",\x063,\x07452,\x08"4.2.2",\x0b"max_age"'))
        new = bounce(unique_id("new"), **GREYLIST)
        self.assertOk(self.c.request(new))
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        evs = self.collect(sub, 5)
        self.assertEqual([e["eid"] for e in evs[:4]], eids)
        for ev, body in zip(evs, old):
            self.assertEqual(list(ev.items()), [("eid", ev["eid"])] + list(body.items()))
        self.check_retry(evs[4], new, self.stream_bodies())
        self.assertEqual(sub.ack([e["eid"] for e in evs]).get("acked"), 5)


if __name__ == "__main__":
    unittest.main()
