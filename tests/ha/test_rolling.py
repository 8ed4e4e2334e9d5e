"""A rolling restart of every instance under load (docs/operations.md,
"Upgrading one instance at a time").

Real redis-server and three real reboundd on free loopback ports sharing
the schedule in six shards (lease_ttl 1.5 s). A thread ingests greylisted
reports through the Python client (clients/python) given all three
addresses, in pipelined batches, while their retries fall due (the fast
policy: milliseconds). Each instance in turn gets SIGTERM; once it has
exited it is started again, and the next one waits until `cluster` shows it
serving its share again.

What must hold: every report the client sent was acknowledged in the end;
the only errors the client met on the way were `unavailable` replies
(resent by the client) and connections closed by a draining instance
(resent to the next address); every acknowledged report has its retry
event in the stream (duplicates counted, allowed). Per restart it prints
the hand-over: SIGTERM -> exit, exit -> its shards served by the others,
start -> serving again.

Runs under ctest as ha.rolling (RUN_SERIAL), bounded at 80 s, every
process killed on every path.
"""

import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))

from failover_load import start_configured  # noqa: E402

from harness import FAST_POLICY, GREYLIST, DaemonTestCase, unique_id, wait_until  # noqa: E402
from cluster_op import ClusterOp  # noqa: E402

from rebound_client import client as rc  # noqa: E402

TTL_MS = 1500
SHARDS = 6
BUDGET_S = 80
EVENTS = "rebound:events"


def log(msg):
    sys.stderr.write("  [rolling] %s\n" % msg)


class CountingFailing(rc._Failing):
    """The client's record of one call's failures, counted by code: what
    the client met on the way, before it resent."""
    seen = collections.Counter()

    def fail(self, error):
        CountingFailing.seen[error.code] += 1
        super().fail(error)


class CountingClient(rc.Client):
    _failing_type = CountingFailing


class RollingRestartTest(ClusterOp, DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.t0 = time.monotonic()
        with open(FAST_POLICY) as f:
            p = json.load(f)
        p["limits"]["awaiting"] = "10m"  # fired records stay to be counted
        p["domains"]["pace"]["per_second"] = 1000000
        p["domains"]["pace"]["burst"] = 1000000
        d = tempfile.mkdtemp(prefix="rebound-roll-")
        self.addCleanup(shutil.rmtree, d, True)
        self.policy = os.path.join(d, "policy.json")
        with open(self.policy, "w") as f:
            json.dump(p, f)
        CountingFailing.seen.clear()

    def left(self):
        return BUDGET_S - (time.monotonic() - self.t0)

    def serving(self, d):
        try:
            return self.cluster(d)["serving"]
        except (OSError, ConnectionError, TimeoutError):
            return []

    def covered(self, ds, share=None):
        got = [self.serving(d) for d in ds]
        flat = sorted(k for g in got for k in g)
        return flat == list(range(SHARDS)) and (share is None or all(len(g) <= share for g in got))

    def retry_counts(self, redis):
        counts = {}
        for _, fields in redis.cmd("XRANGE", EVENTS, "-", "+") or []:
            body = fields[1] if isinstance(fields[1], str) else fields[1].decode()
            if not body.startswith("R"):
                continue
            parts = body.split("\n")
            if len(parts) >= 3:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
        return counts

    def test_rolling_restart_under_load(self):
        redis = self.start_redis()
        ds = [start_configured(self, redis, {"lease_ttl": "%dms" % TTL_MS, "instance_id": iid, "shards": SHARDS})
              for iid in ("a", "b", "c")]
        wait_until(lambda: self.covered(ds, 2), min(15, self.left()), interval=0.05, what="the shards spread")
        wait_until(lambda: len({json.dumps(self.cluster(d)["map"]) for d in ds}) == 1 and
                   "" not in self.cluster(ds[0])["map"], min(5, self.left()), interval=0.05,
                   what="one map seen from every instance")

        acked, failed = set(), []
        sent = [0]
        stop = threading.Event()

        def ingest():
            addrs = ["127.0.0.1:%d" % d.port for d in ds]
            with CountingClient(addrs, timeout=5.0, retry_deadline=30.0, backoff_max=0.2, window=200) as cl:
                n = 0
                while not stop.is_set():
                    ids = [unique_id("roll%d" % (n + k)) for k in range(200)]
                    reports = [dict(id=i, rcpt="u%d@d%d.example" % (n + k, (n + k) % 97), **GREYLIST)
                               for k, i in enumerate(ids)]
                    n += len(ids)
                    sent[0] += len(ids)
                    for i, r in zip(ids, cl.bounce_many(reports)):
                        if isinstance(r, dict) and r.get("ok"):
                            acked.add(i)
                        else:
                            failed.append((i, r))
                    time.sleep(0.01)

        t = threading.Thread(target=ingest, daemon=True)
        t.start()
        self.addCleanup(stop.set)
        wait_until(lambda: len(acked) >= 1000, min(15, self.left()), interval=0.05, what="ingest under way")

        handovers = []
        for d in ds:
            others = [o for o in ds if o is not d]
            mine = self.serving(d)
            before = len(acked)
            t_term = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            self.assertEqual(d.proc.wait(15), 0, "a drain that did not end cleanly")
            t_exit = time.monotonic()
            wait_until(lambda: self.covered(others), min(10, self.left()), interval=0.02,
                       what="its shards served by the others")
            t_handed = time.monotonic()
            d.start(wait_ready=False)
            t_start = time.monotonic()
            wait_until(lambda: len(self.serving(d)) > 0, min(15, self.left()), interval=0.02,
                       what="the restarted instance serving")
            t_back = time.monotonic()
            wait_until(lambda: self.covered(ds, 2), min(15, self.left()), interval=0.05,
                       what="the shards spread again")
            handovers.append((d.port, mine, (t_exit - t_term) * 1000, (t_handed - t_exit) * 1000,
                              (t_back - t_start) * 1000, len(acked) - before))
            log("instance %s (shards %s): SIGTERM -> exit %d ms; exit -> its shards served by the others %d ms; "
                "start -> serving again %d ms; %d reports acknowledged meanwhile" % (
                    d.port, mine, *handovers[-1][2:]))
            self.assertGreater(len(acked), before, "no report was acknowledged across a restart")

        wait_until(lambda: len(acked) >= before + 500, min(10, self.left()), interval=0.05,
                   what="ingest going on after the last restart")
        stop.set()
        t.join(40)
        self.assertFalse(t.is_alive(), "the client did not finish its last batch")
        self.assertEqual(failed[:5], [], "reports the client could not get acknowledged")
        self.assertEqual(len(acked), sent[0])
        seen = dict(CountingFailing.seen)
        self.assertTrue(set(seen) <= {"unavailable", "disconnected"}, seen)

        missing = [None]

        def all_retried():
            missing[0] = acked - set(self.retry_counts(redis))
            return not missing[0]
        try:
            wait_until(all_retried, min(20, self.left()), interval=0.2, what="a retry event for every acked report")
        except Exception:
            self.fail("%d of %d acknowledged reports have no retry event, e.g. %s"
                      % (len(missing[0]), len(acked), sorted(missing[0])[:5]))
        counts = self.retry_counts(redis)
        dups = sum(1 for i in acked if counts.get(i, 0) > 1)
        log("%d reports acknowledged across 3 restarts, 0 without their retry event, %d with more than one; "
            "the client met %d unavailable replies and %d closed connections, all resent, no other error"
            % (len(acked), dups, seen.get("unavailable", 0), seen.get("disconnected", 0)))
        worst = max(h[3] for h in handovers)
        self.assertLess(worst, TTL_MS + 2000, "a hand-over took longer than the lease's TTL and a load")


if __name__ == "__main__":
    unittest.main(verbosity=2)
