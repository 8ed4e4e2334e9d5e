"""Takeover time at scale, by hand (not run by ctest): N pending retries
(the shipped policy, so they stay pending), one owner and one standby on one
Redis, kill -9 of the owner; prints the time from the kill until the standby
serves the schedule (the lease's TTL, one check, and the load of N records).

  python3 tests/ha/measure_takeover.py [N] [lease_ttl_ms]   (100000, 2000)

Figures in docs/operations.md ("Several reboundd on one Redis").
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import GREYLIST, SOURCE_DIR, Daemon, RedisServer, bounce, wait_until  # noqa: E402


def leased(redis, iid, ttl_ms, policy):
    d = Daemon(redis, policy=policy, start=False)
    conf = os.path.join(d.dir, "reboundd.json")
    with open(conf, "w") as f:
        json.dump({"lease_ttl": "%dms" % ttl_ms, "instance_id": iid}, f)
    d.extra_args = ["-c", conf]
    d.start()
    return d


def role(d):
    with d.client(timeout=2.0) as c:
        return c.request({"op": "stats"})["lease"]["role"]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    ttl = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    policy = os.path.join(SOURCE_DIR, "config", "policy.json")
    redis = RedisServer()
    procs = []
    try:
        a = leased(redis, "a", ttl, policy)
        procs.append(a)
        wait_until(lambda: role(a) == "owner", 10, what="a owner")
        b = leased(redis, "b", ttl, policy)
        procs.append(b)
        wait_until(lambda: role(b) == "standby", 10, what="b standby")
        with a.client(timeout=30.0) as c:
            for start in range(0, n, 20000):
                reqs = [bounce("t%d" % i, rcpt="u%d@d%d.example" % (i, i % 1000), **GREYLIST)
                        for i in range(start, min(n, start + 20000))]
                replies = c.pipeline(reqs, window=512, timeout=30.0)
                assert all(r["ok"] for r in replies)
        a.kill9()
        t = time.monotonic()
        wait_until(lambda: role(b) == "owner", 60, interval=0.01, what="b owner")
        took = time.monotonic() - t
        with b.client() as c:
            st = c.request({"op": "stats"})
        print("n=%d lease_ttl=%d ms: kill -9 -> the standby serves %d pending in %.2f s"
              % (n, ttl, st["pending"], took))
    finally:
        for d in procs:
            d.cleanup()
        redis.cleanup()


if __name__ == "__main__":
    main()
