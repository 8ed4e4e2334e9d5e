"""reboundctl without reboundd or Redis.

The offline commands (classify, check-policy) against a small policy written
to a temporary directory; the usage and exit-code contract; and the commands
that talk to the daemon against a scripted stand-in server, so that what
reboundctl sends and how it treats the answers is checked without a daemon.

Needs REBOUND_BUILD_DIR (the build directory holding reboundctl).
"""

import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

BUILD_DIR = os.environ.get("REBOUND_BUILD_DIR", "")
CTL = os.path.join(BUILD_DIR, "reboundctl")

POLICY = {
    "limits": {"max_attempts": 8, "max_age": "72h"},
    "classes": {
        "greylist": {"action": "retry", "delays": [["5m", "30m"], ["30m", "1h"]]},
        "rate_limit": {"action": "retry", "delays": ["30m", "1h"], "jitter": "20%"},
        "hard_invalid": {"action": "suppress"},
        "temp_other": {"action": "retry", "delays": ["15m", "1h"], "counts_streak": True},
        "hard_other": {"action": "give_up"},
    },
    "rules": [
        {"name": "greylisting", "class": "greylist", "text": ["greylist"]},
        {"name": "user-unknown", "class": "hard_invalid", "enhanced": "5.1.1"},
        {"name": "x421", "class": "rate_limit", "code": 421},
    ],
}

# (input object, expected class, action, rule)
VALID = [
    ({"code": 451, "text": "4.7.1 Greylisted, try later"}, "greylist", "retry", "greylisting"),
    ({"code": 550, "enhanced": "5.1.1", "text": "no such user"}, "hard_invalid", "suppress", "user-unknown"),
    ({"code": 421, "text": "slow down"}, "rate_limit", "retry", "x421"),
    ({"code": 452, "text": "whatever"}, "temp_other", "retry", None),
    ({"code": 554, "text": "nope"}, "hard_other", "give_up", None),
    # a text rule wins over an enhanced-code rule
    ({"code": 550, "enhanced": "5.1.1", "text": "you are GREYLISTED"}, "greylist", "retry", "greylisting"),
]

# raw input lines that must each get an error line of their own
INVALID = [
    "this is not json",
    "[1, 2]",
    '{"code": 700, "req": "r700"}',
    '{"code": "451"}',
    '{"code": 451, "enhanced": "x"}',
    "",
    '{"enhanced": "4.7.1"}',
    '{"code": 451, "code": 452}',
]


def run(args, stdin=None, env=None, timeout=60):
    e = dict(os.environ)
    e.pop("REBOUND_SERVER", None)
    e.pop("REBOUND_TOKEN", None)
    if env:
        e.update(env)
    return subprocess.run([CTL] + args, input=stdin, capture_output=True, env=e, timeout=timeout)


def read_lines(f, n, timeout=10):
    """Reads n lines from a pipe, failing after timeout seconds without one.
    Goes around Python's buffering, which would hide lines from select()."""
    fd = f.fileno()
    buf, lines = b"", []
    deadline = time.time() + timeout
    while len(lines) < n:
        ready, _, _ = select.select([fd], [], [], max(0, deadline - time.time()))
        if not ready:
            raise AssertionError("no output line within %s s (got %r)" % (timeout, lines))
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError("output ended after %r" % lines)
        buf += chunk
        while b"\n" in buf and len(lines) < n:
            line, buf = buf.split(b"\n", 1)
            lines.append(line)
    return lines


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(os.access(CTL, os.X_OK), "reboundctl is not built (set REBOUND_BUILD_DIR)")
class OfflineClassify(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.policy = os.path.join(self.tmp.name, "policy.json")
        with open(self.policy, "w") as f:
            json.dump(POLICY, f, indent=2)

    def tearDown(self):
        self.tmp.cleanup()

    def classify(self, lines, extra=()):
        data = "".join(line + "\n" for line in lines).encode()
        return run(["classify", "--policy", self.policy] + list(extra), stdin=data)

    def test_one_result_per_line_on_thousands_of_lines(self):
        lines, expect = [], []
        n = 0
        while len(lines) < 3000:
            for obj, cls, action, rule in VALID:
                o = dict(obj, req=n)
                lines.append(json.dumps(o))
                expect.append(("ok", n, cls, action, rule))
                n += 1
            for raw in INVALID:
                lines.append(raw)
                expect.append(("error", raw))
        p = self.classify(lines)
        self.assertEqual(p.returncode, 1, p.stderr.decode())  # some lines were invalid
        out = p.stdout.decode().split("\n")
        self.assertEqual(out[-1], "")  # every line ends with '\n'
        out = out[:-1]
        self.assertEqual(len(out), len(lines))
        for i, (line, exp) in enumerate(zip(out, expect)):
            r = json.loads(line)
            if exp[0] == "ok":
                _, req, cls, action, rule = exp
                self.assertIs(r["ok"], True, (i, lines[i], line))
                self.assertEqual(r["req"], req)
                self.assertEqual(r["class"], cls, (lines[i], line))
                self.assertEqual(r["action"], action, (lines[i], line))
                self.assertEqual(r["rule"], rule, (lines[i], line))
                if action == "retry":
                    self.assertGreater(len(r["forecast"]), 0, line)
                    self.assertEqual(r["forecast"][0]["attempt"], 1)
                else:
                    self.assertEqual(r["forecast"], [], line)
            else:
                self.assertIs(r["ok"], False, (i, exp[1], line))
                self.assertEqual(r["error"]["code"], "bad_request", line)
                self.assertTrue(r["error"]["message"], line)
        # the req of an invalid request is still echoed
        bad = [json.loads(x) for x in out if '"r700"' in x]
        self.assertTrue(bad and all(b["req"] == "r700" and b["ok"] is False for b in bad))

    def test_all_valid_exits_zero_and_last_line_needs_no_newline(self):
        lines = [json.dumps(obj) for obj, *_ in VALID]
        data = ("\n".join(lines)).encode()  # no final '\n'
        p = run(["classify", "--policy", self.policy], stdin=data)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        out = p.stdout.decode().splitlines()
        self.assertEqual(len(out), len(VALID))
        self.assertEqual(json.loads(out[-1])["class"], VALID[-1][1])

    def test_crlf_and_empty_input(self):
        p = run(["classify", "--policy", self.policy], stdin=b'{"code":554}\r\n')
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        self.assertEqual(json.loads(p.stdout)["class"], "hard_other")
        p = run(["classify", "--policy", self.policy], stdin=b"")
        self.assertEqual(p.returncode, 0)
        self.assertEqual(p.stdout, b"")

    def test_answers_each_line_before_the_next_arrives(self):
        """A script may drive classify as a co-process, one line at a time."""
        proc = subprocess.Popen([CTL, "classify", "--policy", self.policy], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for obj, cls, _, _ in VALID[:3]:
                proc.stdin.write((json.dumps(obj) + "\n").encode())
                proc.stdin.flush()
                (line,) = read_lines(proc.stdout, 1)
                self.assertEqual(json.loads(line)["class"], cls)
            proc.stdin.close()
            self.assertEqual(proc.wait(10), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def test_single_reply_from_flags(self):
        p = run(["classify", "--policy", self.policy, "--code", "451", "--text", "greylisted", "--json"])
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        r = json.loads(p.stdout)
        self.assertEqual((r["ok"], r["class"], r["action"], r["code"]), (True, "greylist", "retry", 451))
        p = run(["classify", "--policy", self.policy, "--code", "550", "--enhanced", "5.1.1"])
        self.assertEqual(json.loads(p.stdout)["class"], "hard_invalid")
        # a reply the daemon would refuse: the error line, status 1
        p = run(["classify", "--policy", self.policy, "--code", "999"])
        self.assertEqual(p.returncode, 1)
        self.assertEqual(json.loads(p.stdout)["error"]["code"], "bad_request")
        # not a number at all: a usage error
        p = run(["classify", "--policy", self.policy, "--code", "abc"])
        self.assertEqual(p.returncode, 2)

    def test_check_policy(self):
        for args in (["check-policy", self.policy], ["classify", "--check", "--policy", self.policy]):
            p = run(args)
            self.assertEqual(p.returncode, 0, p.stderr.decode())
            r = json.loads(p.stdout)
            self.assertEqual((r["ok"], r["classes"], r["rules"]), (True, 5, 3))

        bad = os.path.join(self.tmp.name, "bad.json")
        with open(bad, "w") as f:
            f.write('{\n  "classes": {\n    "greylist": {"action": "retry", "delays": ["5x"]}\n  }\n}\n')
        for args in (["check-policy", bad], ["classify", "--check", "--policy", bad]):
            p = run(args)
            self.assertEqual(p.returncode, 1)
            err = p.stderr.decode()
            self.assertIn(bad + ":3:", err)
            self.assertEqual(json.loads(p.stdout)["ok"], False)
        # classify refuses to run on a bad policy, and says where it is wrong
        p = run(["classify", "--policy", bad], stdin=b'{"code":451}\n')
        self.assertEqual(p.returncode, 1)
        self.assertIn(bad + ":3:", p.stderr.decode())
        self.assertEqual(p.stdout, b"")

        p = run(["check-policy", os.path.join(self.tmp.name, "missing.json")])
        self.assertEqual(p.returncode, 1)
        self.assertIn("missing.json", p.stderr.decode())
        p = run(["check-policy"])
        self.assertEqual(p.returncode, 2)


@unittest.skipUnless(os.access(CTL, os.X_OK), "reboundctl is not built (set REBOUND_BUILD_DIR)")
class UsageAndExitCodes(unittest.TestCase):
    COMMANDS = ["bounce", "delivered", "cancel", "get", "stats", "ping", "send", "tail", "classify",
                "check-policy"]

    def test_help(self):
        p = run(["--help"])
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"Usage: reboundctl", p.stdout)
        for cmd in self.COMMANDS:
            for args in ([cmd, "--help"], [cmd, "-h"], ["help", cmd]):
                p = run(args)
                self.assertEqual(p.returncode, 0, args)
                self.assertIn(("Usage: reboundctl " + cmd).encode(), p.stdout, args)
        p = run(["--version"])
        self.assertEqual(p.returncode, 0)
        self.assertTrue(p.stdout.startswith(b"reboundctl "))

    def test_usage_errors_exit_2(self):
        cases = [
            [],
            ["frobnicate"],
            ["--bogus", "ping"],
            ["ping", "--bogus"],
            ["ping", "extra"],
            ["get"],
            ["get", "a", "b"],
            ["cancel"],
            ["bounce", "--id", "m1", "--rcpt", "a@b"],
            ["bounce", "--id", "m1", "--rcpt", "a@b", "--code", "4x1"],
            ["bounce", "--id", "m1", "--rcpt", "a@b", "--code", "451", "--meta", "[1]"],
            ["bounce", "--id", "m1", "--rcpt", "a@b", "--code", "451", "--meta", "{oops"],
            ["bounce", "--id", "m1", "--rcpt", "a@b", "--code", "451", "--not-before", "soon"],
            ["tail", "--types", "retry,nonsense"],
            ["--timeout", "forever", "ping"],
            ["help", "frobnicate"],
            ["-s"],
        ]
        for args in cases:
            p = run(args, env={"REBOUND_SERVER": "127.0.0.1:%d" % free_port()})
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertTrue(p.stderr.startswith(b"reboundctl: "), (args, p.stderr))
            self.assertEqual(p.stdout, b"", args)

    def test_connection_refused_exits_3(self):
        addr = "127.0.0.1:%d" % free_port()
        for args in (["-s", addr, "ping"], ["-s", addr, "get", "m1"], ["-s", addr, "stats"],
                     ["-s", addr, "send", '{"op":"ping"}'], ["-s", addr, "tail"]):
            p = run(args, timeout=20)
            self.assertEqual(p.returncode, 3, (args, p.stderr))
            self.assertIn(b"cannot connect to " + addr.encode(), p.stderr)
        p = run(["ping"], env={"REBOUND_SERVER": addr})
        self.assertEqual(p.returncode, 3)
        with tempfile.TemporaryDirectory() as d:
            p = run(["-s", os.path.join(d, "no.sock"), "ping"])
            self.assertEqual(p.returncode, 3)
            self.assertIn(b"No such file", p.stderr)


class FakeServer:
    """A scripted stand-in for reboundd: answers by op, records requests."""

    def __init__(self, unix_path=None, answer=True):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(unix_path)
            self.addr = unix_path
        else:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.sock.listen(8)
        self.answer = answer
        self.requests = []
        self.lock = threading.Lock()
        self.conns = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.handle, args=(c,), daemon=True).start()

    def reply(self, o):
        op = o.get("op")
        if op == "ping" or op == "auth" and o.get("token") == "sesame":
            return {"ok": True}
        if op == "auth":
            return {"ok": False, "error": {"code": "auth_required", "message": "wrong token"}}
        if op == "get" and o.get("id") == "missing":
            return {"ok": False, "error": {"code": "not_found", "message": "no such message"}}
        if op == "get":
            return {"ok": True, "id": o["id"], "class": "greylist", "attempt": 1}
        if op == "bounce":
            return {"ok": True, "id": o["id"], "class": "greylist", "action": "retry", "attempt": 1,
                    "retry_at": 1700000000000}
        if op in ("ack", "stats", "cancel", "delivered", "subscribe"):
            return {"ok": True}
        return {"ok": False, "error": {"code": "unknown_op", "message": "unknown op"}}

    def handle(self, c):
        f = c.makefile("rwb")
        try:
            for line in f:
                o = json.loads(line)
                with self.lock:
                    self.requests.append(o)
                if not self.answer:
                    continue
                r = self.reply(o)
                if "req" in o:
                    r["req"] = o["req"]
                f.write((json.dumps(r) + "\n").encode())
                if o.get("op") == "subscribe":
                    for i in range(3):
                        ev = {"type": "retry", "eid": "1-%d" % i, "at": 1700000000000, "id": "m%d" % i,
                              "rcpt": "a@b", "class": "greylist", "attempt": 1, "due_at": 1700000000000}
                        f.write((json.dumps(ev) + "\n").encode())
                f.flush()
        except (OSError, ValueError):
            pass

    def ops(self, name):
        with self.lock:
            return [r for r in self.requests if r.get("op") == name]


@unittest.skipUnless(os.access(CTL, os.X_OK), "reboundctl is not built (set REBOUND_BUILD_DIR)")
class AgainstAStandIn(unittest.TestCase):
    def setUp(self):
        self.srv = FakeServer()

    def tearDown(self):
        self.srv.close()

    def test_ok_and_not_found(self):
        p = run(["-s", self.srv.addr, "ping"])
        self.assertEqual((p.returncode, json.loads(p.stdout)), (0, {"ok": True}))
        p = run(["-s", self.srv.addr, "get", "missing"])
        self.assertEqual(p.returncode, 1)
        self.assertEqual(json.loads(p.stdout)["error"]["code"], "not_found")
        p = run(["get", "m1", "--server", self.srv.addr])  # options after the command too
        self.assertEqual(p.returncode, 0)
        self.assertEqual(json.loads(p.stdout)["id"], "m1")

    def test_bounce_request_fields(self):
        before = int(time.time() * 1000)
        p = run(["-s", self.srv.addr, "bounce", "--id", "m1", "--rcpt", "u@example.com", "--code", "451",
                 "--enhanced", "4.7.1", "--text", "try later", "--campaign", "c1", "--not-before", "+15m",
                 "--meta", '{"tenant": 7}'])
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        self.assertEqual(json.loads(p.stdout)["action"], "retry")
        (req,) = self.srv.ops("bounce")
        self.assertEqual(req["id"], "m1")
        self.assertEqual(req["rcpt"], "u@example.com")
        self.assertEqual(req["code"], 451)
        self.assertEqual(req["enhanced"], "4.7.1")
        self.assertEqual(req["text"], "try later")
        self.assertEqual(req["campaign"], "c1")
        self.assertEqual(req["meta"], {"tenant": 7})
        self.assertTrue(before + 900000 <= req["not_before"] <= int(time.time() * 1000) + 900000)
        run(["-s", self.srv.addr, "delivered", "m1", "--rcpt", "u@example.com"])
        self.assertEqual(self.srv.ops("delivered"), [{"op": "delivered", "id": "m1", "rcpt": "u@example.com"}])

    def test_token_is_sent_first(self):
        p = run(["-s", self.srv.addr, "--token", "sesame", "stats"])
        self.assertEqual(p.returncode, 0)
        self.assertEqual([r["op"] for r in self.srv.requests], ["auth", "stats"])
        p = run(["-s", self.srv.addr, "stats"], env={"REBOUND_TOKEN": "wrong"})
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"wrong token", p.stderr)
        # The stand-in records a request on its own thread: give it a moment
        # on a loaded machine.
        deadline = time.monotonic() + 5
        while len(self.srv.ops("auth")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual([r["op"] for r in self.srv.requests], ["auth", "stats", "auth"])

    def test_send_pipelines_stdin(self):
        n = 3000
        data = "".join(json.dumps({"op": "ping", "req": i}) + "\n" + ("\n" if i % 100 == 0 else "")
                       for i in range(n))
        p = run(["-s", self.srv.addr, "send"], stdin=data.encode())
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        out = [json.loads(x) for x in p.stdout.decode().splitlines()]
        self.assertEqual([r["req"] for r in out], list(range(n)))  # blank lines skipped, order kept
        p = run(["-s", self.srv.addr, "send", '{"op":"ping"}', '{"op":"get","id":"missing"}'])
        self.assertEqual(p.returncode, 1)
        self.assertEqual(len(p.stdout.splitlines()), 2)

    def test_tail_prints_and_acks_until_interrupted(self):
        proc = subprocess.Popen([CTL, "-s", self.srv.addr, "tail", "--group", "g1", "--types", "retry,give_up"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            got = [json.loads(line) for line in read_lines(proc.stdout, 3)]
            self.assertEqual([e["eid"] for e in got], ["1-0", "1-1", "1-2"])
            deadline = time.time() + 10
            while len(self.srv.ops("ack")) < 3 and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual([a["ids"] for a in self.srv.ops("ack")], [["1-0"], ["1-1"], ["1-2"]])
            (sub,) = self.srv.ops("subscribe")
            self.assertEqual((sub["group"], sub["types"]), ("g1", ["retry", "give_up"]))
            proc.send_signal(signal.SIGINT)
            self.assertEqual(proc.wait(10), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def test_unix_socket(self):
        with tempfile.TemporaryDirectory() as d:
            srv = FakeServer(unix_path=os.path.join(d, "r.sock"))
            try:
                p = run(["-s", srv.addr, "ping"])
                self.assertEqual(p.returncode, 0, p.stderr.decode())
                self.assertEqual(srv.ops("ping"), [{"op": "ping"}])
            finally:
                srv.close()

    def test_silent_server_times_out_with_3(self):
        srv = FakeServer(answer=False)
        try:
            p = run(["-s", srv.addr, "--timeout", "300ms", "ping"], timeout=20)
            self.assertEqual(p.returncode, 3)
            self.assertIn(b"did not answer", p.stderr)
            p = run(["-s", srv.addr, "--timeout", "300ms", "send"], stdin=b'{"op":"ping"}\n', timeout=20)
            self.assertEqual(p.returncode, 3)
        finally:
            srv.close()


if __name__ == "__main__":
    unittest.main()
