#!/usr/bin/env python3
"""Measures what the event stream costs in Redis, per event of each type, for
the sizing table in docs/operations.md.

Starts a throwaway redis-server and reboundd (tests/integration/harness.py,
fast policy), then for each event type reports N messages that emit it and
reads MEMORY USAGE of the stream (SAMPLES 0: every node counted) before and
after. Ids look like "msg-r000001" (11 bytes) and recipients like
"userr000001@d0000001.example.com" (32 bytes); longer ones cost their extra
bytes per event.

    tools/measure-event-memory.py [N]      default N = 20000 (about 20 s)

Needs a built reboundd (build/, or REBOUND_BUILD_DIR) and redis-server.
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import stream_events  # noqa: E402


def stream_bytes(redis, key):
    return int(redis.cmd("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)


_seen = {"last": "-", "events": 0}


def xlen(redis, key):
    """Events in the stream: a burst's batch entry holds many
    (stream_events.py). Counted on from the last entry counted before,
    as the stream only grows here."""
    while True:
        start = "(" + _seen["last"] if _seen["last"] != "-" else "-"
        page = redis.cmd("XRANGE", key, start, "+", "COUNT", "5000") or []
        for eid, fields in page:
            _seen["events"] += len(stream_events.expand_entry(eid, fields))
            _seen["last"] = eid if isinstance(eid, str) else eid.decode()
        if len(page) < 5000:
            return _seen["events"]


def report(i, code, enhanced, text, tag):
    # The recipient carries the phase's tag too: a recipient suppressed by
    # an earlier phase would turn this phase's reports into suppress events.
    return {"op": "bounce", "id": "msg-%s%06d" % (tag, i), "rcpt": "user%s%06d@d%07d.example.com" % (tag, i, i),
            "code": code, "enhanced": enhanced, "text": text}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    redis = harness.RedisServer()
    daemon = harness.Daemon(redis)
    key = "rebound:events"
    try:
        c = daemon.client(timeout=60)
        rows = []

        def phase(name, reqs, expect_events):
            before_b, before_n = stream_bytes(redis, key), xlen(redis, key)
            used0 = int(redis.cmd("INFO", "memory").split("used_memory:")[1].split()[0])
            for r in c.pipeline(reqs, window=1000, timeout=60):
                assert r.get("ok"), r
            deadline = time.monotonic() + 60
            while xlen(redis, key) < before_n + expect_events and time.monotonic() < deadline:
                time.sleep(0.05)
            got = xlen(redis, key) - before_n
            assert got == expect_events, (name, got, expect_events)
            db = stream_bytes(redis, key) - before_b
            used = int(redis.cmd("INFO", "memory").split("used_memory:")[1].split()[0]) - used0
            rows.append((name, got, db))
            print("%-28s %7d events  stream +%9d B  = %6.1f B/event   (used_memory +%d B, records included)"
                  % (name, got, db, db / got, used), flush=True)
            return db / got

        phase("suppress (hard_invalid)", [report(i, 550, "5.1.1", "User unknown", "s") for i in range(n)], n)
        give_up = phase("give_up (hard_other)", [report(i, 554, "5.0.0", "Transaction failed", "g")
                                                 for i in range(n)], n)
        # fast policy: the greylist's first retry falls due within 30 ms
        phase("retry (greylist)", [report(i, 451, "4.7.1", "Greylisted", "r") for i in range(n)], n)
        # auth_failure gives up and raises a sender_alert: two events each,
        # one alert per domain and hour, so every report has its own domain
        both = phase("give_up + sender_alert", [report(i, 550, "5.7.26", "DMARC policy", "a") for i in range(n)],
                     2 * n)
        print("sender_alert alone            ~%6.1f B/event (2 x %.1f - %.1f)" % (2 * both - give_up, both, give_up))
        total_b = stream_bytes(redis, key)
        total_n = xlen(redis, key)
        print("whole stream: %d events, %d B, %.1f B/event; 1,000,000 events = %.0f MB"
              % (total_n, total_b, total_b / total_n, total_b / total_n * 1e6 / 1e6))
    finally:
        daemon.cleanup()
        redis.cleanup()


if __name__ == "__main__":
    main()
