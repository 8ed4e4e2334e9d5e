"""Several reboundd on one Redis: the lease on the schedule, its fencing,
takeover and hand-over (docs/operations.md, "High availability").

Real redis-server and real reboundd processes on free loopback ports, the
fast policy, lease_ttl 1.5 s (renewed every 300 ms, checked every 150 ms).

  standby      (lease_forward false) the standby answers what needs the
               schedule `unavailable` with the owner's address; the owner
               serves the same requests
  forward      the standby relays to the owner: the same scenario gives the
               same replies through either; the owner killed, relayed
               requests are answered `unavailable`
  kill9        kill -9 of the owner under pipelined ingest with retries
               falling due: the standby takes over and fires; every
               acknowledged report has its `retry` event (duplicates
               allowed); kill -> first retry event of the new owner printed
  sigstop      the owner paused past the TTL, the standby takes over, the
               old owner resumes: it does not write (no record goes
               backwards) and stands by
  fenced       the epoch moves under a running owner: Redis refuses its next
               write (FENCED), the client gets `unavailable`, the record is
               unchanged, the instance stands by
  sigterm      SIGTERM of the owner: the standby serves within about one
               check; clients see only `unavailable` (resendable); 0 lost

Runs under ctest as ha.lease (RUN_SERIAL), each case bounded by its own
budget, every process killed on every path.
"""

import json
import os
import signal
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from failover_load import ingest_rotating, start_configured  # noqa: E402

from harness import GREYLIST, DaemonTestCase, bounce, now_ms, unique_id, wait_until  # noqa: E402
import stream_events  # noqa: E402

TTL_MS = 1500
MSG_HASH = "rebound:msg"
EVENTS = "rebound:events"
CASE_BUDGET_S = 55


def log(msg):
    sys.stderr.write("  [lease] %s\n" % msg)


def rcpt_of(i):
    # many domains, so that no domain's pace holds the retries back
    return "u%d@d%d.example" % (i, i % 64)


class LeaseTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.t0 = time.monotonic()

    def left(self):
        return CASE_BUDGET_S - (time.monotonic() - self.t0)

    def start_leased(self, redis, iid, wait_ready=True, forward=True):
        return start_configured(self, redis, {"lease_ttl": "%dms" % TTL_MS, "instance_id": iid,
                                              "lease_forward": forward}, wait_ready)

    def role(self, d):
        with d.client(timeout=2.0) as c:
            r = c.request({"op": "stats"})
        return r["lease"]["role"], r["lease"]

    def wait_role(self, d, want, timeout):
        wait_until(lambda: self.role(d)[0] == want, min(timeout, self.left()), interval=0.02,
                   what="%s to be %s" % (d.port, want))

    def owner_and_standby(self, redis, forward=True):
        a = self.start_leased(redis, "a", forward=forward)
        self.wait_role(a, "owner", 10)
        b = self.start_leased(redis, "b", forward=forward)
        self.wait_role(b, "standby", 5)
        return a, b

    def retried_ids(self, redis, since_ms=0):
        """Ids with a retry event in the stream, and the first such event's
        time (its entry id's ms) at or after since_ms."""
        ids, first = set(), None
        for eid, body in stream_events.events(redis, EVENTS):
            if not body.startswith("R"):
                continue
            parts = body.split("\n")
            if len(parts) >= 3:
                ids.add(parts[1])
            ms = int((eid if isinstance(eid, str) else eid.decode()).split("-")[0])
            if ms >= since_ms and (first is None or ms < first):
                first = ms
        return ids, first

    # ------------------------------------------------------------------

    def test_standby_answers_unavailable_with_owner(self):
        redis = self.start_redis()
        a, b = self.owner_and_standby(redis, forward=False)
        a_addr = "127.0.0.1:%d" % a.port
        scenario = [bounce("std-1", rcpt=rcpt_of(1), **GREYLIST), {"op": "get", "id": "std-1"},
                    {"op": "list"}, {"op": "hold", "domain": "d1.example"}, {"op": "release", "domain": "d1.example"}]
        with b.client() as c:
            for req in scenario:
                r = c.request(req)
                self.assertFalse(r["ok"], r)
                self.assertEqual(r["error"]["code"], "unavailable", r)
                self.assertEqual(r["owner"], a_addr, r)
            self.assertTrue(c.request({"op": "ping"})["ok"])
            cl = c.request({"op": "cluster"})
            self.assertTrue(cl["ok"], cl)
            self.assertEqual(cl["role"], "standby")
            self.assertEqual(cl["owner"]["addr"], a_addr)
            wait_until(lambda: len(c.request({"op": "cluster"})["instances"]) == 2, 3, what="both members")
            by_id = {m["id"]: m for m in c.request({"op": "cluster"})["instances"]}
            self.assertEqual(by_id["a"]["shards"], [0])
            self.assertEqual(by_id["b"]["shards"], [])
        with a.client() as c:
            r = c.request(scenario[0])
            self.assertTrue(r["ok"], r)
            self.assertEqual(r["action"], "retry")
            r = c.request(scenario[1])
            self.assertTrue(r["ok"], r)
            for req in scenario[2:]:
                self.assertTrue(c.request(req)["ok"], req)
        self.assertIsNone(redis.cmd("HGET", MSG_HASH, "nothing-written-by-b"))

    def scenario(self, d, tag):
        """The same requests, under ids of their own: the replies with the
        ids and times taken out."""
        mid = "%s-1" % tag
        reqs = [bounce(mid, rcpt="x@%s.example" % tag, req="r1", **GREYLIST),
                bounce(mid, rcpt="x@%s.example" % tag, req="r2", **GREYLIST),
                {"op": "get", "id": mid, "req": "r3"},
                {"op": "hold", "domain": "%s.example" % tag, "req": "r4"},
                {"op": "release", "domain": "%s.example" % tag, "req": "r5"},
                {"op": "cancel", "id": mid, "req": "r6"},
                {"op": "get", "id": mid, "req": "r7"},
                {"op": "bounce", "id": "%s-2" % tag, "rcpt": "not an address", "code": 451, "req": "r8"}]
        with d.client() as c:
            replies = c.pipeline(reqs, timeout=5.0)
        def times_out(v):
            # epoch-ms times differ between the two runs
            if isinstance(v, dict):
                return {k: times_out(x) for k, x in v.items()}
            if isinstance(v, list):
                return [times_out(x) for x in v]
            if isinstance(v, int) and not isinstance(v, bool) and v > 10 ** 12:
                return "T"
            return v
        return [json.dumps(times_out(json.loads(json.dumps(r).replace(tag, "T"))), sort_keys=True)
                for r in replies]

    def test_standby_forwards_to_owner(self):
        redis = self.start_redis()
        a, b = self.owner_and_standby(redis)
        via_owner = self.scenario(a, "qzq1")
        via_standby = self.scenario(b, "qzq2")
        self.assertEqual(via_standby, via_owner)
        self.assertTrue(json.loads(via_owner[0])["ok"])
        lease = self.role(b)[1]
        # the last request is refused here, as by any instance: not valid
        self.assertEqual(lease["forwarded"], 7, lease)
        with b.client() as c:
            r = c.request({"op": "subscribe", "group": "g"})
            self.assertEqual(r["error"]["code"], "unavailable", r)
            self.assertEqual(r["owner"], "127.0.0.1:%d" % a.port)
        # the owner gone: what the standby relays is answered unavailable
        # (resendable), until it serves itself
        a.kill9()
        with b.client() as c:
            r = c.request({"op": "get", "id": "qzq1-1"})
            self.assertFalse(r["ok"], r)
            self.assertEqual(r["error"]["code"], "unavailable", r)
        self.wait_role(b, "owner", 5)
        with b.client() as c:
            self.assertTrue(c.request(bounce("after-1", rcpt="y@z.example", **GREYLIST))["ok"])

    def ingest(self, targets, acked, n, on_progress=None, batch=200):
        return ingest_rotating(targets, acked, n, rcpt_of, lambda: self.left() > 5, on_progress, batch)

    def wait_all_retried(self, redis, acked, timeout):
        missing = [None]

        def done():
            got, _ = self.retried_ids(redis)
            missing[0] = acked - got
            return not missing[0]
        try:
            wait_until(done, min(timeout, self.left()), interval=0.2, what="a retry event for every acked report")
        except Exception:
            self.fail("%d of %d acknowledged reports have no retry event, e.g. %s"
                      % (len(missing[0]), len(acked), sorted(missing[0])[:5]))

    def test_kill9_takeover_under_ingest(self):
        redis = self.start_redis()
        a, b = self.owner_and_standby(redis)
        acked = set()
        state = {"killed": None}

        def maybe_kill():
            if state["killed"] is None and len(acked) >= 2000:
                a.kill9()  # returns once the process is gone: later events are the new owner's
                state["killed"] = now_ms()
                log("owner killed with SIGKILL after %d acknowledged reports" % len(acked))
        unavailable, errors = self.ingest([a, b], acked, 4000, on_progress=maybe_kill)
        self.assertIsNotNone(state["killed"], "the owner was never killed")
        self.assertEqual(errors, 0)
        self.assertEqual(len(acked), 4000)
        self.wait_role(b, "owner", 10)
        self.wait_all_retried(redis, acked, 20)
        _, first = self.retried_ids(redis, since_ms=state["killed"])
        self.assertIsNotNone(first)
        took = first - state["killed"]
        log("kill -9 -> first retry event from the new owner: %d ms (lease_ttl %d ms); %d acknowledged, "
            "0 without their retry event; %d answered unavailable meanwhile (resent)"
            % (took, TTL_MS, len(acked), unavailable))
        self.assertLess(took, TTL_MS + 3000)
        self.assertGreaterEqual(self.role(b)[1]["takeovers"], 1)

    def record_tail(self, redis, mid):
        """A record without its state and due time: who and the history."""
        v = redis.cmd("HGET", MSG_HASH, mid)
        self.assertIsNotNone(v, mid)
        v = v if isinstance(v, str) else v.decode()
        head, rest = v.split("\n", 1)
        return head.split(",")[1], rest  # attempt, who + history

    def test_sigstop_owner_is_fenced_after_takeover(self):
        redis = self.start_redis()
        a, b = self.owner_and_standby(redis)
        mid = unique_id("stop")
        with a.client() as c:
            self.assertTrue(c.request(bounce(mid, rcpt=rcpt_of(1), **GREYLIST))["ok"])
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            self.wait_role(b, "owner", 10)
            log("SIGSTOP of the owner -> the standby serves: %d ms" % ((time.monotonic() - t) * 1000))
            with b.client() as c:
                for _ in range(2):
                    r = c.request(bounce(mid, rcpt=rcpt_of(1), **GREYLIST))
                    self.assertTrue(r["ok"], r)
            before = self.record_tail(redis, mid)
            # the old owner gets a report while still paused: it reads it on resume
            late = a.client(timeout=5.0)
            late.send(bounce(mid, rcpt=rcpt_of(1), **GREYLIST))
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        r = late.read_reply(5.0)
        late.close()
        self.assertFalse(r["ok"], r)
        self.assertEqual(r["error"]["code"], "unavailable", r)
        self.assertEqual(self.record_tail(redis, mid), before, "the old owner wrote after the takeover")
        self.wait_role(a, "standby", 5)
        role, lease = self.role(a)
        self.assertGreaterEqual(lease["self_fenced"], 1)
        wait_until(lambda: self.role(a)[1]["owner"], 2, what="the standby to know the owner")
        self.assertEqual(self.role(a)[1]["owner"], "127.0.0.1:%d" % b.port)
        with a.client() as c:
            r = c.request({"op": "get", "id": mid})  # relayed to the new owner
            self.assertTrue(r["ok"], r)
            self.assertEqual(r["attempt"] if "attempt" in r else int(before[0]), int(before[0]), r)

    def test_fenced_write_refused_by_redis(self):
        redis = self.start_redis()
        a = self.start_leased(redis, "a")
        self.wait_role(a, "owner", 10)
        mid = unique_id("fence")
        with a.client() as c:
            self.assertTrue(c.request(bounce(mid, rcpt=rcpt_of(2), **GREYLIST))["ok"])
            # fired (awaiting), so that the next report is a write, not a
            # duplicate answered from memory
            wait_until(lambda: (redis.cmd("HGET", MSG_HASH, mid) or "P")[:1] in ("A", b"A"), 5, what="the retry")
            before = self.record_tail(redis, mid)
            # another instance's acquisition, as Redis sees it: the epoch moves
            redis.cmd("INCR", "rebound:epoch")
            r = c.request(bounce(mid, rcpt=rcpt_of(2), **GREYLIST))
            self.assertFalse(r["ok"], r)
            self.assertEqual(r["error"]["code"], "unavailable", r)
        self.assertEqual(self.record_tail(redis, mid), before)
        lease = self.role(a)[1]
        self.assertGreaterEqual(lease["fenced_writes"], 1, lease)
        self.assertIn("FENCED", a.log_text())
        # the lease it still names runs out; it acquires anew and serves again
        self.wait_role(a, "owner", TTL_MS / 1000 * 4)
        with a.client() as c:
            self.assertTrue(c.request(bounce(mid, rcpt=rcpt_of(2), **GREYLIST))["ok"])
        self.assertEqual(self.record_tail(redis, mid)[0], "2")

    def test_sigterm_hands_over(self):
        redis = self.start_redis()
        a, b = self.owner_and_standby(redis)
        acked = set()
        state = {"termed": None}

        def maybe_term():
            if state["termed"] is None and len(acked) >= 1000:
                state["termed"] = time.monotonic()
                a.proc.send_signal(signal.SIGTERM)
        unavailable, errors = self.ingest([a, b], acked, 3000, on_progress=maybe_term)
        self.assertIsNotNone(state["termed"])
        self.assertEqual(errors, 0)
        self.assertEqual(len(acked), 3000)
        self.assertEqual(a.proc.wait(10), 0)
        self.wait_role(b, "owner", 5)
        self.wait_all_retried(redis, acked, 20)
        log("SIGTERM hand-over: %d acknowledged, 0 lost, %d answered unavailable (resent), 0 other errors"
            % (len(acked), unavailable))

    def test_sigterm_handover_time(self):
        redis = self.start_redis()
        a, b = self.owner_and_standby(redis)
        t = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        self.assertEqual(a.proc.wait(10), 0)
        gone = time.monotonic()
        self.wait_role(b, "owner", 5)
        served = time.monotonic()
        log("SIGTERM -> exit %d ms; exit -> the standby serves %d ms (check every %d ms)"
            % ((gone - t) * 1000, (served - gone) * 1000, TTL_MS // 10))
        self.assertLess(served - gone, TTL_MS / 1000)


if __name__ == "__main__":
    unittest.main(verbosity=2)
