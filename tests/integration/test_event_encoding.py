"""The stream's encoding of events (fast policy): a retry event is stored
in its compact form (proto/event.h) whether it fired through the fire
script or as a burst, and other events in the generic compact form, yet
a subscriber gets the JSON that protocol.md shows, member for member and
in that order; entries written in the JSON
form (by a daemon from before the compact form) are still delivered as
they were."""

import json
import time
import unittest

from harness import GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, unique_id

STREAM = "rebound:events"


def now_ms():
    return int(time.time() * 1000)


class EventEncodingTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.redis, self.daemon, self.c = self.start_all()

    def stream_bodies(self):
        return {eid: fields for eid, fields in self.redis.cmd("XRANGE", STREAM, "-", "+")}

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
        self.assertEqual(fields[0], "e")
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
        self.assertTrue(stored.startswith("s"), stored)
        line = json.dumps({k: v for k, v in ev.items() if k != "eid"}, separators=(",", ":"))
        self.assertLessEqual(len(stored), len(line.encode()) - 50)

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
        new = bounce(unique_id("new"), **GREYLIST)
        self.assertOk(self.c.request(new))
        sub = self.connect(self.daemon)
        sub.subscribe("g")
        evs = self.collect(sub, 4)
        self.assertEqual([e["eid"] for e in evs[:3]], eids)
        for ev, body in zip(evs, old):
            self.assertEqual(list(ev.items()), [("eid", ev["eid"])] + list(body.items()))
        self.check_retry(evs[3], new, self.stream_bodies())
        self.assertEqual(sub.ack([e["eid"] for e in evs]).get("acked"), 4)


if __name__ == "__main__":
    unittest.main()
