"""A burst's retry events as batch entries (proto/event.h): one stream
entry per fire batch, each event with an id of its own. Delivery, acks,
the group's mark inside a batch entry across kill -9, a group created after
the burst, and what the stream holds (fast policy)."""

import json
import time
import unittest
import urllib.request

from harness import GREYLIST, DaemonTestCase, bounce, free_port, now_ms, unique_id, wait_until
from stream_events import events as stream_events

N = 600  # well over the fire script's 128: the batches go as a burst
STREAM = "rebound:events"


def eid_key(e):
    return tuple(int(x) for x in e.split("-"))


class EventBatchesTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.redis, self.daemon, self.c = self.start_all()

    def burst(self, n=N, prefix="b"):
        """n greylisted messages whose retries fall due at one instant (each
        recipient its own domain, which no domain pace holds back)."""
        at = now_ms() + 700
        ids = [unique_id(prefix) for _ in range(n)]
        reqs = [bounce(m, rcpt="u%d@d%d.example" % (i, i), not_before=at, **GREYLIST) for i, m in enumerate(ids)]
        for r in self.c.pipeline(reqs):
            self.assertOk(r)
        self.assertGreater(at - now_ms(), 100, "the ingest overran the due instant")
        return ids

    def drain(self, client, n, timeout=10.0):
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for e in client.events(n - len(got), max(0.05, deadline - time.monotonic())):
                self.assertNotIn(e["eid"], got, "an event came twice in one run")
                got[e["eid"]] = e
        return got

    def pending(self, group):
        for g in self.c.request({"op": "groups"})["groups"]:
            if g["name"] == group:
                return g["pending"]
        return None

    def test_burst_is_few_entries_each_event_its_own_id(self):
        a = self.connect(self.daemon)
        a.subscribe("bt")
        ids = self.burst()
        got = self.drain(a, N)
        self.assertEqual(len(got), N)
        self.assertEqual(sorted(e["id"] for e in got.values()), sorted(ids))
        self.assertTrue(all(e["type"] == "retry" and e["attempt"] == 1 for e in got.values()))
        # The stream: a handful of entries, which expand into exactly the
        # events delivered, in id order, with the bodies they were sent with.
        entries = self.redis.cmd("XLEN", STREAM)
        self.assertLess(entries, N // 100, "the burst was not written as batch entries")
        expanded = stream_events(self.redis)
        self.assertEqual([eid for eid, _ in expanded], sorted(got, key=eid_key))
        for eid, body in expanded:
            self.assertIn("\n%s\n" % got[eid]["id"], "\n" + body.split("\n", 1)[1] + "\n")
        # every id acks; then nothing is pending and nothing comes again
        self.assertEqual(a.ack(list(got)).get("acked"), N)
        self.assertEqual(self.pending("bt"), 0)
        a.close()
        b = self.connect(self.daemon)
        b.subscribe("bt")
        self.assertEqual(b.events(1, 0.4), [])

    def test_group_created_after_the_burst_reads_it_from_the_stream(self):
        a = self.connect(self.daemon)
        a.subscribe("first")
        self.burst()
        first = self.drain(a, N)
        self.assertEqual(len(first), N)
        late = self.connect(self.daemon)
        late.subscribe("late")
        again = self.drain(late, N)
        self.assertEqual(again, first, "a new group read other events than the first got")

    def test_kill9_with_the_mark_inside_a_batch(self):
        # The mark (the id before the oldest unacked event) falls inside a
        # batch entry: after kill -9 the entry is read again whole, and its
        # acked events before the mark are skipped; every unacked one comes.
        a = self.connect(self.daemon)
        a.subscribe("crash")
        self.burst()
        evs = sorted(self.drain(a, N).values(), key=lambda e: eid_key(e["eid"]))
        self.assertEqual(len(evs), N)
        prefix, later = evs[:250], evs[250:]
        self.assertEqual(a.ack([e["eid"] for e in prefix]).get("acked"), 250)
        self.assertEqual(a.ack([e["eid"] for e in later[1::2]]).get("acked"), len(later[1::2]))
        self.daemon.kill9()
        self.daemon.start()
        self.c = self.connect(self.daemon)
        b = self.connect(self.daemon)
        b.subscribe("crash")
        got = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = b.events(N, 0.4)
            if not batch and got:
                break
            for e in batch:
                got[e["eid"]] = e
        for e in later[::2]:
            self.assertIn(e["eid"], got, "an unacked event was lost across kill -9")
            self.assertEqual(got[e["eid"]], e)
        self.assertFalse(set(got) & {e["eid"] for e in prefix}, "an event acked before the mark came again")
        b.ack(list(got))
        self.assertEqual(self.pending("crash"), 0)

    def test_events_after_a_burst_get_higher_ids(self):
        # A report's event (here a give_up) written right after a burst goes
        # above the batch entry's reserved range.
        a = self.connect(self.daemon)
        a.subscribe("order")
        self.burst()
        got = self.drain(a, N)
        top = max(got, key=eid_key)
        gid = unique_id("gone")
        self.assertOk(self.c.request(bounce(gid, code=550, enhanced="5.1.1", text="550 5.1.1 User unknown")))
        ev = a.events(1, 3)
        self.assertEqual(len(ev), 1)
        self.assertEqual(ev[0]["id"], gid)
        self.assertGreater(eid_key(ev[0]["eid"]), eid_key(top))

    def test_burst_then_small_batches_each_event_once(self):
        # Small fire batches right behind a burst: the fire script's read
        # for a caught-up group may bring the burst's batch entries
        # (events_fire_read), the group's own reads the rest.
        a = self.connect(self.daemon)
        a.subscribe("mix")
        at = now_ms() + 700
        ids, reqs = [], []
        for i in range(N + 60):
            m = unique_id("mix")
            ids.append(m)
            due = at if i < N else at + 2 * (i - N)  # then one every 2 ms
            reqs.append(bounce(m, rcpt="u%d@m%d.example" % (i, i), not_before=due, **GREYLIST))
        for r in self.c.pipeline(reqs):
            self.assertOk(r)
        got = self.drain(a, len(ids))
        self.assertEqual(sorted(e["id"] for e in got.values()), sorted(ids))
        self.assertEqual(sorted(got, key=eid_key), [eid for eid, _ in stream_events(self.redis)])
        self.assertEqual(a.ack(list(got)).get("acked"), len(ids))
        self.assertEqual(a.events(1, 0.3), [])

    def test_reserved_id_refused_falls_back_to_an_entry_per_event(self):
        # The stream's last id above its newest entry (an entry deleted by
        # hand): the reserved id is refused, and the script appends the
        # events one entry each, so no fired retry is without its event.
        future = now_ms() + 3600 * 1000
        self.redis.pipeline([["MULTI"], ["XADD", STREAM, "%d-0" % future, "e", "x"], ["XDEL", STREAM, "%d-0" % future],
                             ["EXEC"]])
        a = self.connect(self.daemon)
        a.subscribe("fb")
        ids = self.burst()
        got = self.drain(a, N)
        self.assertEqual(sorted(e["id"] for e in got.values()), sorted(ids))
        self.assertTrue(all(eid_key(e) > (future, 0) for e in got), "an event below the stream's last id")
        self.assertEqual(self.redis.cmd("XLEN", STREAM), N, "not one entry per event")
        self.assertEqual(a.ack(list(got)).get("acked"), N)

    def test_status_page_latest_events_from_a_batch(self):
        # /status.json's latest events (metrics.c) expand the newest batch
        # entry: the 20 newest events, newest first, as subscribers got them.
        addr = "127.0.0.1:%d" % free_port()
        self.daemon.kill9()  # one daemon on the Redis: this one serves the page
        self.daemon = self.start_daemon(self.redis, extra_args=["--metrics", addr])
        self.c = self.connect(self.daemon)
        a = self.connect(self.daemon)
        a.subscribe("st")
        self.burst()
        got = self.drain(a, N)
        newest = sorted(got, key=eid_key, reverse=True)[:20]

        def latest():
            with urllib.request.urlopen("http://%s/status.json" % addr, timeout=2) as r:
                return json.loads(r.read())["events"]["latest"]
        wait_until(lambda: [e["eid"] for e in latest()] == newest, 6, interval=0.2, what="the latest events")
        self.assertEqual(latest(), [got[e] for e in newest])


if __name__ == "__main__":
    unittest.main()
