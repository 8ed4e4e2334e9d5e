"""reboundctl's output for a person: tables, humanized times, get --rcpt.

On a terminal (a pseudo-terminal here) reboundctl shows lists of records as
tables and every time as a local time with how long ago or ahead it is; piped,
it prints the daemon's JSON as it came. Checked against the real daemon for
suppressed, domain and get, and against a scripted stand-in for the reply
shapes of ops the daemon does not have yet (list's items, groups): the
renderer goes by the reply's shape, not by the command.
"""

import json
import os
import re
import select
import socket
import subprocess
import threading
import time
import unittest

from harness import (BUILD_DIR, DEFAULT_POLICY, FAST_POLICY, GREYLIST, USER_UNKNOWN, DaemonTestCase, bounce, now_ms,
                     run_on_terminal, unique_id, wait_until)

CTL = os.path.join(BUILD_DIR, "reboundctl")
RATE_LIMIT = dict(code=421, enhanced="4.7.0",
                  text="421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume")
# Epoch milliseconds: 13 digits from 2001 to 2286.
EPOCH_MS = re.compile(r"(?<![\w-])1\d{12}(?![\w-])")
ENV = dict(os.environ, TZ="UTC")


def on_terminal(argv, timeout=10):
    """Runs argv with stdout on a pseudo-terminal, in UTC; returns (exit
    status, output, stderr)."""
    return run_on_terminal(argv, timeout, env=ENV)


def cols(line):
    """A table line's cells: columns are two or more spaces apart, and no
    cell holds two spaces in a row."""
    return re.split(r" {2,}", line.strip())


def table(out, first_header):
    """The table in out whose header line starts with first_header: its
    column names and a list of dicts, one per row."""
    lines = out.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(first_header))
    names = cols(lines[start])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = cols(line)
        assert len(cells) == len(names), (names, line)
        rows.append(dict(zip(names, cells)))
    return names, rows


class StandIn:
    """Answers each request line with the next canned reply."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rwb")
                for line in f:
                    self.requests.append(json.loads(line))
                    f.write(json.dumps(self.replies.pop(0)).encode() + b"\n")
                    f.flush()
                    if not self.replies:
                        return

    def close(self):
        self.sock.close()
        self.thread.join(5)


@unittest.skipUnless(os.access(CTL, os.X_OK) or os.environ.get("REBOUND_BUILD_DIR"), "reboundctl not built")
class CtlRenderTest(DaemonTestCase):
    policy = DEFAULT_POLICY

    def ctl(self, d, *args):
        return [CTL, "-s", "127.0.0.1:%d" % d.port] + list(args)

    def tty(self, argv, expect_rc=0):
        rc, out, err = on_terminal(argv)
        self.assertEqual(rc, expect_rc, "%s\n%s\n%s" % (argv, out, err))
        return out

    def test_suppressed_is_a_table_with_local_times(self):
        redis, d, c = self.start_all(policy=DEFAULT_POLICY)
        before = now_ms()
        addrs = ["nobody%d@gone.example" % i for i in range(3)]
        for r in c.pipeline([bounce(unique_id("s"), rcpt=a, **USER_UNKNOWN) for a in addrs]):
            self.assertOk(r)
        out = self.tty(self.ctl(d, "suppressed"))
        header, rows = table(out, "RCPT")
        self.assertEqual(header, ["RCPT", "REASON", "AT"], out)
        self.assertEqual(sorted(r["RCPT"] for r in rows), addrs, out)
        self.assertEqual({r["REASON"] for r in rows}, {"hard_invalid"})
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(before / 1000))
        for r in rows:
            self.assertRegex(r["AT"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)$")
            self.assertTrue(r["AT"].startswith(stamp[:13]), (r["AT"], stamp))
        self.assertRegex(out, r"(?m)^total +3$")
        self.assertRegex(out, r"(?m)^cursor +0$")
        self.assertIsNone(EPOCH_MS.search(out), out)
        # piped: the daemon's JSON line, as it came
        p = subprocess.run(self.ctl(d, "suppressed"), capture_output=True, text=True, timeout=10)
        self.assertEqual(sorted(i["rcpt"] for i in json.loads(p.stdout)["items"]), addrs)

    def test_empty_list_says_none(self):
        redis, d, c = self.start_all(policy=DEFAULT_POLICY)
        out = self.tty(self.ctl(d, "suppressed"))
        self.assertRegex(out, r"(?m)^items +none$")
        self.assertNotIn("RCPT", out)

    def test_domain_times_are_humanized(self):
        redis, d, c = self.start_all(policy=DEFAULT_POLICY)
        reqs = [bounce(unique_id("rl"), rcpt="u%02d@throttled.example" % i, **RATE_LIMIT) for i in range(60)]
        for r in c.pipeline(reqs):
            self.assertOk(r)
        raw = c.request({"op": "domain", "domain": "throttled.example"})
        self.assertTrue(raw["throttled"], raw)
        out = self.tty(self.ctl(d, "domain", "throttled.example"))
        self.assertIsNone(EPOCH_MS.search(out), "a raw epoch time on the terminal:\n" + out)
        self.assertRegex(out, r"(?m)^throttle\.until +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \(in (29|30)m\)$")
        self.assertRegex(out, r"(?m)^throttle\.since +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \(\d+s ago\)$")
        self.assertRegex(out, r"(?m)^last_seen +\S+ \S+ \(\d+s ago\)$")
        self.assertRegex(out, r"(?m)^window_ms +1m$")
        self.assertRegex(out, r"(?m)^throttle\.held +\d+$")
        self.assertRegex(out, r"(?m)^pending +60$")

    def test_get_rcpt(self):
        redis, d, c = self.start_all(policy=DEFAULT_POLICY)
        mid = unique_id("g")
        self.assertOk(c.request(bounce(mid, rcpt="Nobody@Gone.example", **USER_UNKNOWN)))
        out = self.tty(self.ctl(d, "get", "--rcpt", "nobody@gone.example"))
        self.assertRegex(out, r"(?m)^recipient\.address +nobody@gone\.example$")
        self.assertRegex(out, r"(?m)^recipient\.suppressed +yes$")
        self.assertRegex(out, r"(?m)^recipient\.suppressed_reason +hard_invalid$")
        self.assertRegex(out, r"(?m)^recipient\.suppressed_at +\S+ \S+ \(\d+s ago\)$")
        p = subprocess.run(self.ctl(d, "get", "--rcpt", "NOBODY@gone.example"), capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(json.loads(p.stdout)["recipient"]["suppressed"])
        # an ID and --rcpt: the message (not_found: it was suppressed)
        p = subprocess.run(self.ctl(d, "get", mid, "--rcpt", "nobody@gone.example"), capture_output=True,
                           text=True, timeout=10)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertEqual(json.loads(p.stdout)["error"]["code"], "not_found")
        p = subprocess.run(self.ctl(d, "get"), capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--rcpt", p.stderr)

    def test_get_history_is_a_table(self):
        # The fast policy fires the first retry in milliseconds; its
        # outcome, a second bounce, makes a history of two.
        redis, d, c = self.start_all(policy=FAST_POLICY)
        mid = unique_id("h")
        self.assertOk(c.request(bounce(mid, rcpt="a@slow.example", **GREYLIST)))
        wait_until(lambda: c.request({"op": "get", "id": mid})["state"] == "awaiting", 5, what="the retry")
        self.assertOk(c.request(bounce(mid, rcpt="a@slow.example", code=452, enhanced="4.2.2",
                                       text="452 4.2.2 mailbox full")))
        out = self.tty(self.ctl(d, "get", mid))
        self.assertRegex(out, r"(?m)^due_at +\S+ \S+ \((in \d+|\d+s ago)")
        self.assertIn("\nhistory:\n", out)
        header, rows = table(out, "AT")
        self.assertEqual(header[:3], ["AT", "CODE", "ENHANCED"], out)
        self.assertEqual([r["CODE"] for r in rows], ["451", "452"])
        self.assertEqual([r["ENHANCED"] for r in rows], ["4.7.1", "4.2.2"])
        self.assertIsNone(EPOCH_MS.search(out), out)

    def test_tail_event_times_are_humanized(self):
        import pty
        import signal
        redis, d, c = self.start_all(policy=DEFAULT_POLICY)
        master, slave = pty.openpty()
        try:
            p = subprocess.Popen(self.ctl(d, "tail", "--types", "domain_throttled"), stdout=slave,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)
        finally:
            os.close(slave)
        self.addCleanup(p.kill)
        self.addCleanup(os.close, master)
        # Whether tail has subscribed yet or not, its new group starts at
        # the beginning of the stream.
        reqs = [bounce(unique_id("rl"), rcpt="u%02d@throttled.example" % i, **RATE_LIMIT) for i in range(60)]
        for r in c.pipeline(reqs):
            self.assertOk(r)
        out = b""
        deadline = time.monotonic() + 10
        while b"domain_throttled" not in out and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                out += os.read(master, 65536)
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(5), 0)
        p.stderr.close()
        line = next(l for l in out.decode().splitlines() if "domain_throttled" in l)
        self.assertRegex(line, r"^\d\d:\d\d:\d\d domain_throttled ")
        self.assertRegex(line, r" until=\d\d:\d\d:\d\d( |$)")
        self.assertRegex(line, r" window_ms=1m( |$)")
        self.assertIsNone(EPOCH_MS.search(line), line)

    def test_list_and_groups_replies_as_tables(self):
        # The shapes of the list and groups ops; the stand-in answers them to
        # `get`, since the renderer goes by the reply, whatever the command.
        now = now_ms()
        items = [
            {"id": "m-1", "rcpt": "a@gmail.example", "class": "greylist", "attempt": 1, "state": "pending",
             "due_at": now + 5 * 60000},
            {"id": "m-22", "rcpt": "bob@yahoo.example", "class": "rate_limit", "attempt": 12, "state": "awaiting",
             "due_at": now - 3 * 3600000},
            {"id": "m-333", "rcpt": "ç@exämple.example", "class": "mailbox_full", "attempt": 3, "state": "pending",
             "due_at": now + 26 * 3600000, "campaign": "spring"},
        ]
        groups = [{"name": "senders", "consumers": 3, "pending": 120, "lag": 0},
                  {"name": "audit", "consumers": 0, "pending": 0, "lag": 48211}]
        s = StandIn([{"ok": True, "items": items, "cursor": "17"}, {"ok": True, "groups": groups}])
        self.addCleanup(s.close)
        out = self.tty([CTL, "-s", s.addr, "get", "x"])
        header, rows = table(out, "ID")
        self.assertEqual(header, ["ID", "RCPT", "CLASS", "ATTEMPT", "STATE", "DUE AT", "CAMPAIGN"])
        self.assertEqual([r["ID"] for r in rows], ["m-1", "m-22", "m-333"])
        self.assertEqual([r["ATTEMPT"] for r in rows], ["1", "12", "3"])
        self.assertEqual(rows[2]["RCPT"], "ç@exämple.example")
        self.assertEqual([r["CAMPAIGN"] for r in rows], ["-", "-", "spring"])
        dues = [l for l in out.splitlines() if l.startswith("m-")]
        self.assertRegex(dues[0], r"\(in [45]m\)")
        self.assertRegex(dues[1], r"\(3h00m ago\)|\(2h59m ago\)")
        self.assertRegex(dues[2], r"\(in 1d[12]h\)")
        # numbers right-aligned under their header, text left-aligned
        lines = out.splitlines()
        h = next(l for l in lines if l.startswith("ID"))
        end = h.index("ATTEMPT") + len("ATTEMPT")
        for l in dues:
            self.assertNotEqual(l[end - 1], " ", l)
            self.assertEqual(l[end], " ", l)
        self.assertRegex(out, r"(?m)^cursor +17$")
        self.assertIsNone(EPOCH_MS.search(out), out)

        out = self.tty([CTL, "-s", s.addr, "get", "y"])
        header, rows = table(out, "NAME")
        self.assertEqual(header, ["NAME", "CONSUMERS", "PENDING", "LAG"])
        self.assertEqual(rows, [{"NAME": "senders", "CONSUMERS": "3", "PENDING": "120", "LAG": "0"},
                                {"NAME": "audit", "CONSUMERS": "0", "PENDING": "0", "LAG": "48211"}])
        self.assertTrue(out.splitlines()[0].startswith("NAME"), "a table alone needs no heading:\n" + out)
        self.assertEqual(s.requests, [{"op": "get", "id": "x"}, {"op": "get", "id": "y"}])


if __name__ == "__main__":
    unittest.main()
