"""What the failover tests share: a client that keeps pipelining batches of
greylisted reports through a Redis failover, sorting the replies into
acknowledged, refused (`unavailable`, to be resent) and anything else, and
the checks that every acknowledged report reached the new master and fired
there and that every refused one is taken when resent."""

import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import FAST_POLICY, GREYLIST, bounce, unique_id, wait_until  # noqa: E402


def failover_files(test, config):
    """Writes, in a directory the test removes, the fast policy with two
    changes for failover tests (awaiting records kept long enough to be
    counted in the new master, and a domain pace that does not hold the
    retries back) and a config file of `config` plus the replica
    confirmation every failover test uses. Returns (policy, config) paths."""
    with open(FAST_POLICY) as f:
        p = json.load(f)
    p["limits"]["awaiting"] = "10m"
    p["domains"]["pace"]["per_second"] = 1000000
    p["domains"]["pace"]["burst"] = 1000000
    d = tempfile.mkdtemp(prefix="rebound-ha-")
    test.addCleanup(shutil.rmtree, d, True)
    policy = os.path.join(d, "policy.json")
    with open(policy, "w") as f:
        json.dump(p, f)
    conf = os.path.join(d, "reboundd.json")
    keys = {"redis_min_replicas": 1, "redis_replica_timeout": "500ms", "redis_timeout": "2s"}
    keys.update(config)
    with open(conf, "w") as f:
        json.dump(keys, f)
    return policy, conf


class FailoverLoad:
    def __init__(self, conn, tag):
        self.conn = conn
        self.tag = tag
        self.acked = {}      # id -> monotonic time of its ok reply
        self.refused = []    # ids answered unavailable
        self.bad = []        # any other reply
        self.kill_at = None  # when the master was killed
        self.first_after = None  # first ok to a batch sent after the kill
        self.n = 0

    def send_batch(self, size=200):
        """Sends size reports in one pipeline; returns their ids."""
        ids = []
        for _ in range(size):
            self.n += 1
            ids.append(unique_id("%s%d" % (self.tag, self.n)))
        reqs = [bounce(i, rcpt="u%d@d%d.example" % (self.n, k % 97), **GREYLIST) for k, i in enumerate(ids)]
        sent = time.monotonic()

        def on_reply(i, r):
            now = time.monotonic()
            if r.get("ok") is True:
                self.acked[ids[i]] = now
                if self.kill_at is not None and sent > self.kill_at and self.first_after is None:
                    self.first_after = now
            elif isinstance(r.get("error"), dict) and r["error"].get("code") == "unavailable":
                self.refused.append(ids[i])
            else:
                self.bad.append(r)

        self.conn.pipeline(reqs, window=size, timeout=10, on_reply=on_reply)
        return ids

    def until_served_again(self, after, deadline):
        """Sends batches until a batch sent after the kill was acknowledged
        and `after` more reports were, or raises AssertionError at deadline
        (a monotonic time)."""
        target = len(self.acked) + after
        while self.first_after is None or len(self.acked) < target:
            if time.monotonic() > deadline:
                raise AssertionError("reboundd did not serve again in time")
            self.send_batch()
            if self.first_after is None:
                time.sleep(0.05)  # a client backing off while it gets unavailable

    def lost_in(self, node, msg_hash):
        """The acknowledged ids that node does not have."""
        ids = list(self.acked)
        have = node.pipeline([("HEXISTS", msg_hash, i) for i in ids])
        return [i for i, v in zip(ids, have) if v != 1]

    def wait_all_fired(self, node, msg_hash, timeout):
        """Waits until every acknowledged report's record in node turned
        awaiting ('A': written by the same script as its retry event);
        returns the ids that did not."""
        ids = list(self.acked)
        left = [ids]

        def all_fired():
            recs = node.pipeline([("HGET", msg_hash, i) for i in ids])
            left[0] = [i for i, r in zip(ids, recs) if not (isinstance(r, str) and r.startswith("A"))]
            return not left[0]

        try:
            wait_until(all_fired, timeout, interval=0.2, what="every acknowledged retry to fire")
        except TimeoutError:
            pass
        return left[0]

    def resend_refused(self, timeout, limit=500):
        """Resends the refused reports until each is taken; returns those
        still refused at timeout. Any answer but ok or unavailable fails."""
        todo = self.refused[:limit]
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            replies = self.conn.pipeline([bounce(i, **GREYLIST) for i in todo], window=200, timeout=10)
            for r in replies:
                if r.get("ok") is not True and r.get("error", {}).get("code") != "unavailable":
                    raise AssertionError("a resent report answered %r" % (r,))
            todo = [i for i, r in zip(todo, replies) if r.get("ok") is not True]
            time.sleep(0.05)
        return todo


def ingest_rotating(targets, acked, n, rcpt_of, keep_going, on_progress=None, batch=200):
    """Pipelines n greylisted reports to the first of targets (daemons),
    resending what is refused or cut off (to the next target when one is
    gone) until each is acknowledged or keep_going() says stop; the
    acknowledged ids go into the set acked, and on_progress() is called
    after every batch. Returns the counts of `unavailable` answers and of
    other errors."""
    unavailable = errors = 0
    todo = []
    made = 0
    t = 0
    client = None
    while (made < n or todo) and keep_going():
        while len(todo) < batch and made < n:
            todo.append(bounce(unique_id("k"), rcpt=rcpt_of(made), **GREYLIST))
            made += 1
        try:
            if client is None:
                client = targets[t].client(timeout=5.0)
            replies = client.pipeline(todo, window=batch, timeout=5.0)
        except (OSError, ConnectionError, TimeoutError):
            if client is not None:
                client.close()
            client = None
            t = (t + 1) % len(targets)
            time.sleep(0.02)
            continue
        again = []
        for req, r in zip(todo, replies):
            if r["ok"]:
                acked.add(req["id"])
            elif r["error"]["code"] == "unavailable":
                unavailable += 1
                again.append(req)
            else:
                errors += 1
        todo = again
        if again:
            time.sleep(0.05)
        if on_progress:
            on_progress()
    if client is not None:
        client.close()
    return unavailable, errors


def start_configured(test, redis, config, wait_ready=True):
    """A reboundd of test's (a DaemonTestCase) on redis with a config file
    holding `config` (its directory is the daemon's own, known only once it
    has been made: so it is made, stopped, and started again with -c)."""
    d = test.start_daemon(redis, wait_ready=False)
    d.proc.kill()
    d.proc.wait()
    conf = os.path.join(d.dir, "reboundd.json")
    with open(conf, "w") as f:
        json.dump(config, f)
    d.extra_args = ["-c", conf]
    d.start(wait_ready=wait_ready)
    return d
