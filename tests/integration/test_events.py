"""Event delivery through consumer groups (fast policy): at-least-once
redelivery of unacknowledged events after a reconnect, every group sees
every event, connections in one group share them, and type filters."""

import sys
import time
import unittest

from harness import GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, unique_id, wait_until


class EventsTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.redis, self.daemon, self.c = self.start_all()

    def make_retries(self, n, prefix="ev"):
        """Bounces n greylisted messages; returns their ids (their retry
        events fall due within a few tens of ms)."""
        ids = [unique_id(prefix) for _ in range(n)]
        for r in self.c.pipeline([bounce(i, **GREYLIST) for i in ids]):
            self.assertOk(r)
            self.assertEqual(r["action"], "retry")
        return ids

    def collect(self, client, n, timeout=5.0):
        evs = client.events(n, timeout)
        self.assertEqual(len(evs), n, "got %d of %d events: %r" % (len(evs), n, evs))
        return evs

    def assertNoMoreEvents(self, client, wait=0.4):
        extra = client.events(1, wait)
        self.assertEqual(extra, [], "unexpected event")

    def test_unacked_redelivered_after_reconnect(self):
        a = self.connect(self.daemon)
        a.subscribe("g")
        ids = self.make_retries(6)
        evs = self.collect(a, 6)
        self.assertEqual(sorted(e["id"] for e in evs), sorted(ids))
        self.assertTrue(all(e["type"] == "retry" for e in evs), evs)
        self.assertEqual(len({e["eid"] for e in evs}), 6, "event ids are not unique")
        acked, unacked = evs[:3], evs[3:]
        self.assertEqual(a.ack([e["eid"] for e in acked]).get("acked"), 3)
        # acking again counts nothing new
        self.assertEqual(a.ack([acked[0]["eid"]]).get("acked"), 0)
        a.close()
        time.sleep(0.1)

        b = self.connect(self.daemon)
        b.subscribe("g")
        again = self.collect(b, 3)
        self.assertEqual(sorted(e["eid"] for e in again), sorted(e["eid"] for e in unacked))
        by_eid = {e["eid"]: e for e in unacked}
        for e in again:
            self.assertEqual(e, by_eid[e["eid"]], "a redelivered event differs from the original")
        self.assertNoMoreEvents(b)
        # acked now, they do not come back a third time
        b.ack([e["eid"] for e in again])
        b.close()
        time.sleep(0.1)
        c = self.connect(self.daemon)
        c.subscribe("g")
        self.assertNoMoreEvents(c)
        # and new events still flow to the group
        new = self.make_retries(1, "late")
        self.assertEqual(self.collect(c, 1)[0]["id"], new[0])

    def test_ack_survives_daemon_restart(self):
        a = self.connect(self.daemon)
        a.subscribe("g")
        self.make_retries(4)
        evs = self.collect(a, 4)
        a.ack([evs[0]["eid"], evs[1]["eid"]])
        a.close()
        self.daemon.restart()
        b = self.connect(self.daemon)
        b.subscribe("g")
        again = self.collect(b, 2)
        self.assertEqual(sorted(e["eid"] for e in again), sorted([evs[2]["eid"], evs[3]["eid"]]))
        self.assertNoMoreEvents(b)

    def test_every_group_sees_every_event(self):
        g1 = self.connect(self.daemon)
        g2 = self.connect(self.daemon, unix=True)
        g1.subscribe("senders")
        g2.subscribe("audit")
        ids = self.make_retries(8)
        e1 = self.collect(g1, 8)
        e2 = self.collect(g2, 8)
        self.assertEqual(sorted(e["id"] for e in e1), sorted(ids))
        self.assertEqual({e["eid"] for e in e1}, {e["eid"] for e in e2})
        # acking in one group does not touch the other
        g1.ack([e["eid"] for e in e1])
        g2.close()
        g3 = self.connect(self.daemon)
        g3.subscribe("audit")
        self.assertEqual({e["eid"] for e in self.collect(g3, 8)}, {e["eid"] for e in e2})

    def test_connections_in_one_group_share(self):
        a = self.connect(self.daemon)
        b = self.connect(self.daemon)
        a.subscribe("shared")
        b.subscribe("shared")
        ids = self.make_retries(40)
        got = {}  # eid -> which connection
        deadline = time.monotonic() + 6
        while len(got) < 40 and time.monotonic() < deadline:
            for name, conn in (("a", a), ("b", b)):
                for e in conn.events(100, 0.05):
                    self.assertNotIn(e["eid"], got, "event delivered to both connections of one group: %r" % e)
                    got[e["eid"]] = (name, e["id"])
                    conn.ack([e["eid"]])
        self.assertEqual(len(got), 40, "only %d of 40 events arrived" % len(got))
        self.assertEqual(sorted(i for _, i in got.values()), sorted(ids))
        self.assertNoMoreEvents(a, 0.3)
        self.assertNoMoreEvents(b, 0.1)
        split = sum(1 for n, _ in got.values() if n == "a")
        sys.stderr.write("  [events] shared group: a got %d, b got %d\n" % (split, 40 - split))

    def test_types_filter(self):
        only_suppress = self.connect(self.daemon)
        only_suppress.subscribe("sup", types=["suppress"])
        everything = self.connect(self.daemon)
        everything.subscribe("all")
        grey = self.make_retries(2)
        gone = unique_id("unknown")
        r = self.assertOk(self.c.request(bounce(gone, **USER_UNKNOWN)))
        self.assertEqual(r["action"], "suppress")
        ev = self.collect(only_suppress, 1)[0]
        self.assertEqual((ev["type"], ev["id"]), ("suppress", gone))
        self.assertEqual(ev.get("reason"), "hard_invalid")
        all_evs = self.collect(everything, 3)
        self.assertEqual(sorted(e["id"] for e in all_evs), sorted(grey + [gone]))
        self.assertNoMoreEvents(only_suppress)

    def test_dmarc_failure_alerts_sender_and_never_suppresses(self):
        sub = self.connect(self.daemon)
        sub.subscribe("ops")
        id = unique_id("dmarc")
        r = self.assertOk(self.c.request(bounce(
            id, code=550, enhanced="5.7.26",
            text="550 5.7.26 Unauthenticated email is not accepted due to domain's DMARC policy")))
        self.assertEqual((r["class"], r["action"]), ("auth_failure", "give_up"))
        got = sub.wait_event(lambda e: e.get("id") == id and e.get("type") == "sender_alert", 3)
        self.assertIsNotNone(got, "no sender_alert for a DMARC failure (events: %r)" % sub.event_queue)
        self.assertEqual(got[1]["class"], "auth_failure")
        # whatever else comes for it, never a suppress
        time.sleep(0.2)
        others = sub.events(100, 0.2)
        self.assertNotIn("suppress", [e["type"] for e in others if e.get("id") == id], others)

    def pending(self, group):
        """How many events group has been delivered and not acked (the
        groups op: the daemon reads with NOACK, so Redis has no pending
        list; the daemon keeps them)."""
        r = self.c.request({"op": "groups"})
        self.assertTrue(r.get("ok"), r)
        found = [g["pending"] for g in r["groups"] if g["name"] == group]
        self.assertEqual(len(found), 1, r)
        return found[0]

    def test_retries_and_report_events_interleaved(self):
        # A fire batch reads the group's new entries itself: events that
        # reports appended in between (suppress) come with it, each once.
        sub = self.connect(self.daemon)
        sub.subscribe("mix")
        expect = set()
        for round in range(5):
            expect.update(self.make_retries(6, "mix%d" % round))
            gone = unique_id("gone")
            self.assertOk(self.c.request(bounce(gone, **USER_UNKNOWN)))
            expect.add(gone)
            time.sleep(0.01)
        evs = self.collect(sub, len(expect))
        self.assertEqual(sorted(e["id"] for e in evs), sorted(expect))
        self.assertEqual(len({e["eid"] for e in evs}), len(evs), "an event came twice")
        self.assertEqual({e["type"] for e in evs}, {"retry", "suppress"})
        # stream order: event ids increase in delivery order
        order = [tuple(int(x) for x in e["eid"].split("-")) for e in evs]
        self.assertEqual(order, sorted(order), "events out of stream order")
        self.assertNoMoreEvents(sub)
        self.assertEqual(sub.ack([e["eid"] for e in evs]).get("acked"), len(evs))
        self.assertEqual(self.pending("mix"), 0)

    def test_unwanted_events_are_acked_for_the_group(self):
        only_suppress = self.connect(self.daemon)
        only_suppress.subscribe("sup", types=["suppress"])
        self.make_retries(30)
        gone = unique_id("gone")
        self.assertOk(self.c.request(bounce(gone, **USER_UNKNOWN)))
        ev = self.collect(only_suppress, 1)[0]
        self.assertEqual((ev["type"], ev["id"]), ("suppress", gone))
        self.assertNoMoreEvents(only_suppress)
        # the 30 retries nobody in the group wants are not left pending
        wait_until(lambda: self.pending("sup") == 1, 3, what="retries acked for the group")
        only_suppress.ack([ev["eid"]])
        wait_until(lambda: self.pending("sup") == 0, 3, what="the suppress acked")

    def test_held_events_redelivered_once_after_leave(self):
        # More events than a connection may hold unacked (1000): the rest
        # wait in the daemon. The connection leaves without acking; the
        # next one gets every event exactly once.
        n = 1300
        a = self.connect(self.daemon)
        a.subscribe("big")
        ids = self.make_retries(n, "big")
        first = a.events(n, 3.0)
        self.assertGreater(len(first), 0)
        self.assertLessEqual(len(first), 1000, "more unacked events than a connection may hold")
        a.close()
        time.sleep(0.1)
        b = self.connect(self.daemon)
        b.subscribe("big")
        got = {}
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            evs = b.events(200, 0.2)
            for e in evs:
                self.assertNotIn(e["eid"], got, "event delivered twice to one connection: %r" % e)
                got[e["eid"]] = e["id"]
            if evs:
                b.ack([e["eid"] for e in evs])
        self.assertEqual(len(got), n, "only %d of %d events arrived" % (len(got), n))
        self.assertEqual(sorted(got.values()), sorted(ids))
        self.assertNoMoreEvents(b)
        wait_until(lambda: self.pending("big") == 0, 3, what="every event acked")

    def test_unacked_go_to_the_other_connection_when_one_leaves(self):
        # Two connections of one group; one leaves holding unacked events:
        # the other gets exactly those, once, from the daemon's memory.
        a = self.connect(self.daemon)
        a.subscribe("pair")
        b = self.connect(self.daemon)
        b.subscribe("pair")
        ids = self.make_retries(40, "pair")
        got = {}
        deadline = time.monotonic() + 5
        while len(got) < 40 and time.monotonic() < deadline:
            for who, conn in (("a", a), ("b", b)):
                for e in conn.events(40, 0.05):
                    self.assertNotIn(e["eid"], got, "delivered twice")
                    got[e["eid"]] = (who, e)
        self.assertEqual(sorted(e["id"] for _, e in got.values()), sorted(ids))
        of_a = sorted(eid for eid, (who, _) in got.items() if who == "a")
        of_b = [eid for eid, (who, _) in got.items() if who == "b"]
        self.assertGreater(len(of_a), 0, "the group did not share")
        b.ack(of_b)
        a.close()
        again = self.collect(b, len(of_a))
        self.assertEqual(sorted(e["eid"] for e in again), of_a)
        self.assertEqual(again, [got[e["eid"]][1] for e in again], "a redelivered event differs")
        self.assertNoMoreEvents(b)
        self.assertEqual(b.ack(of_a).get("acked"), len(of_a))
        self.assertEqual(self.pending("pair"), 0)

    def test_kill9_redelivers_every_unacked_event(self):
        # The group is read with NOACK; what it handled is its mark in
        # Redis. kill -9 with events delivered and not acked, some acked
        # past the oldest unacked one: after the restart every unacked
        # event comes again (those acked after the mark may come again
        # too: at least once), none of the acked prefix does.
        a = self.connect(self.daemon)
        a.subscribe("crash")
        ids = self.make_retries(300, "crash")
        evs = self.collect(a, 300)
        self.assertEqual(sorted(e["id"] for e in evs), sorted(ids))
        evs.sort(key=lambda e: tuple(int(x) for x in e["eid"].split("-")))
        prefix, hole, later = evs[:100], evs[100:150], evs[150:]
        self.assertEqual(a.ack([e["eid"] for e in prefix]).get("acked"), 100)
        self.assertEqual(a.ack([e["eid"] for e in later[::2]]).get("acked"), len(later[::2]))
        self.assertEqual(self.pending("crash"), 300 - 100 - len(later[::2]))
        self.assertEqual(self.redis.cmd("XPENDING", "rebound:events", "crash")[0], 0,
                         "the group has a pending list in Redis")
        self.daemon.kill9()
        self.daemon.start()
        self.c = self.connect(self.daemon)
        b = self.connect(self.daemon)
        b.subscribe("crash")
        got = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = b.events(300, 0.3)
            if not batch and got:
                break
            for e in batch:
                got[e["eid"]] = e
        unacked = hole + later[1::2]
        for e in unacked:
            self.assertIn(e["eid"], got, "an unacked event was lost across kill -9")
            self.assertEqual(got[e["eid"]], e)
        self.assertFalse(set(got) & {e["eid"] for e in prefix}, "an event acked before the mark came again")
        b.ack(list(got))
        self.assertEqual(self.pending("crash"), 0)

    def test_acks_sent_before_the_restarted_daemon_reads_again(self):
        # After a restart the group is read again from its mark; a consumer
        # that acks what it got from the daemon before, right after its new
        # subscribe (before those events come again), has them handled.
        a = self.connect(self.daemon)
        a.subscribe("early")
        self.make_retries(20, "early")
        evs = self.collect(a, 20)
        self.daemon.kill9()
        self.daemon.start()
        self.c = self.connect(self.daemon)
        b = self.connect(self.daemon)
        b.subscribe("early")
        b.ack([e["eid"] for e in evs])
        again = b.events(20, 0.5)
        if again:
            b.ack([e["eid"] for e in again])
        b.close()
        c = self.connect(self.daemon)
        c.subscribe("early")
        self.assertNoMoreEvents(c)
        self.assertEqual(self.pending("early"), 0)

    def test_pending_list_of_an_earlier_version_is_delivered(self):
        # A group an earlier daemon read without NOACK has a pending list
        # in Redis: its entries come to the group's next subscriber, and
        # the list goes.
        ids = self.make_retries(5, "old")
        wait_until(lambda: self.redis.cmd("XLEN", "rebound:events") >= 5, 3, what="the retries fired")
        self.redis.cmd("XGROUP", "CREATE", "rebound:events", "legacy", "0")
        read = self.redis.cmd("XREADGROUP", "GROUP", "legacy", "reboundd", "COUNT", "3", "STREAMS",
                              "rebound:events", ">")
        self.assertEqual(len(read[0][1]), 3)
        self.assertEqual(self.redis.cmd("XPENDING", "rebound:events", "legacy")[0], 3)
        a = self.connect(self.daemon)
        a.subscribe("legacy")
        evs = self.collect(a, 5)
        self.assertEqual(sorted(e["id"] for e in evs), sorted(ids))
        self.assertNoMoreEvents(a)
        self.assertEqual(self.redis.cmd("XPENDING", "rebound:events", "legacy")[0], 0)
        self.assertEqual(a.ack([e["eid"] for e in evs]).get("acked"), 5)

    def test_unacked_survive_a_redis_restart(self):
        # Redis restarts from its AOF under a subscriber holding unacked
        # events: the group goes on from where the daemon's reads ended
        # (no duplicate, no loss), and the unacked ones stay ackable.
        self.daemon.term()
        self.redis.stop()
        self.redis, self.daemon, self.c = self.start_all(appendonly=True)
        a = self.connect(self.daemon)
        a.subscribe("flap")
        first = self.collect(a, 10) if self.make_retries(10, "flap1") else []
        self.redis.restart()

        def redis_back():
            r = self.c.request({"op": "get", "id": "no-such-message"})
            return r.get("ok") or r["error"]["code"] != "unavailable"

        wait_until(redis_back, 10, what="the daemon back on Redis")
        ids = self.make_retries(10, "flap2")
        second = self.collect(a, 10)
        self.assertEqual(sorted(e["id"] for e in second), sorted(ids))
        self.assertNoMoreEvents(a)
        self.assertEqual(a.ack([e["eid"] for e in first + second]).get("acked"), 20)

    def test_group_recreated_after_redis_lost_its_data(self):
        # The group vanished with Redis's data: it is created again and
        # new events flow to the connection that stayed.
        a = self.connect(self.daemon)
        a.subscribe("link")
        self.make_retries(5)
        evs = self.collect(a, 5)
        self.redis.restart()  # no persistence: the stream and the group are gone

        def redis_back():
            r = self.c.request({"op": "get", "id": "no-such-message"})
            return r.get("ok") or r["error"]["code"] != "unavailable"

        wait_until(redis_back, 10, what="the daemon back on Redis")
        ids = self.make_retries(3, "after")
        again = self.collect(a, 3)
        self.assertEqual(sorted(e["id"] for e in again), sorted(ids))
        self.assertNoMoreEvents(a)
        a.ack([e["eid"] for e in evs + again])

    def test_ack_unknown_and_bad_subscribe(self):
        a = self.connect(self.daemon)
        r = a.request({"op": "ack", "ids": ["1-1"]})
        self.assertFalse(r.get("ok"), "ack before subscribe: %r" % r)
        self.assertEqual(r["error"]["code"], "bad_request")
        r = a.request({"op": "subscribe", "group": "g" * 65})
        self.assertFalse(r.get("ok"), r)
        self.assertIn(r["error"]["code"], ("bad_request", "too_large"))
        r = a.request({"op": "subscribe", "group": "g", "types": ["no_such_type"]})
        self.assertFalse(r.get("ok"), r)
        a.subscribe("g")
        r = a.request({"op": "subscribe", "group": "other"})
        self.assertFalse(r.get("ok"), "a connection joined two groups: %r" % r)
        # acking ids that were never delivered is harmless
        r = a.request({"op": "ack", "ids": ["1-1", "99999999999999-0"]})
        self.assertEqual(r.get("acked"), 0, r)
        r = a.request({"op": "ack", "ids": ["not-a-stream-id"]})
        self.assertIn(r.get("ok"), (True, False))
        self.assertPing(a)
        ids = self.make_retries(1)
        self.assertEqual(self.collect(a, 1)[0]["id"], ids[0])


if __name__ == "__main__":
    unittest.main()
