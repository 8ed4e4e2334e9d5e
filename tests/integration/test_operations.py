"""Operating reboundd: SIGHUP reload under load, SIGTERM drain under load,
systemd notify (READY/STATUS/STOPPING/WATCHDOG) under a fake
NOTIFY_SOCKET, the unit file, Prometheus metrics, the shared token and the
connection limit, `-t` config checks, and `cmake --install`.

Every daemon here is the real reboundd against a throwaway redis-server
(harness.py); the fast policy turns minutes into milliseconds.
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness import (BUILD_DIR, DEFAULT_POLICY, FAST_POLICY, GREYLIST, OVER_QUOTA, SOURCE_DIR, USER_UNKNOWN,
                     Client, DaemonTestCase, RespConnection, bounce, free_port, reboundd_path, resp_encode,
                     now_ms, run_on_terminal, stats_pending, unique_id, wait_until)

EXAMPLE_CONFIG = os.path.join(SOURCE_DIR, "config", "reboundd.example.json")
UNIT_FILE = os.path.join(SOURCE_DIR, "systemd", "reboundd.service")

# Holds Redis busy for ARGV[1] ms (Redis runs one script at a time).
BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) * 1000
return 'done'
"""


def load_policy(path=FAST_POLICY):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # the daemon never sees half a file


def daemon_features():
    out = subprocess.run([reboundd_path(), "--version"], capture_output=True, text=True, timeout=10).stdout
    return {"notify": "systemd notify: yes" in out, "metrics": "metrics endpoint: yes" in out}


def scrape(port, path="/metrics", timeout=5.0):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


# ---------------------------------------------------------------------------
# A strict reader of the Prometheus text format (0.0.4), so the test holds
# even where promtool is not installed.

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')


def parse_metrics(text):
    """Returns {family: {"type": t, "samples": {(name, frozenset(labels)): value}}}.
    Raises AssertionError on anything the format does not allow."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families = {}
    current = None
    seen = set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (n, line)
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in families or families[name].get("help") is None, "second HELP " + where
            families.setdefault(name, {"samples": {}})["help"] = line.split(" ", 3)[3] if line.count(" ") >= 3 else ""
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4, where
            name, typ = parts[2], parts[3]
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), where
            fam = families.setdefault(name, {"samples": {}})
            assert "type" not in fam, "second TYPE " + where
            assert not fam["samples"], "TYPE after samples " + where
            fam["type"] = typ
            current = name
            continue
        assert not line.startswith("#") or line.startswith("# "), where
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, "not a sample: " + where
        name, _, labels_text, value = m.groups()
        labels = {}
        if labels_text:
            pos = 0
            while pos < len(labels_text):
                lm = _LABEL.match(labels_text, pos)
                assert lm, "bad labels " + where
                assert lm.group(1) not in labels, "duplicate label " + where
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        v = float(value)  # raises on garbage; +Inf/NaN are valid floats
        fam_name = name
        if current and name != current:
            for suffix in ("_bucket", "_sum", "_count"):
                if name == current + suffix:
                    fam_name = current
        assert fam_name == current, "sample outside its family " + where
        key = (name, frozenset(labels.items()))
        assert key not in seen, "duplicate series " + where
        seen.add(key)
        families[fam_name]["samples"][key] = v
    for name, fam in families.items():
        assert "type" in fam, "no TYPE for " + name
        if fam["type"] == "counter":
            assert name.endswith("_total"), "counter %s does not end in _total" % name
            assert all(v >= 0 for v in fam["samples"].values()), name
        if fam["type"] == "histogram":
            buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in fam["samples"].items()
                              if k[0] == name + "_bucket"))
            assert buckets and buckets[-1][0] == float("inf"), "histogram %s has no +Inf bucket" % name
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), "histogram %s buckets are not cumulative" % name
            count = fam["samples"][(name + "_count", frozenset())]
            assert counts[-1] == count, "histogram %s: +Inf bucket %s != count %s" % (name, counts[-1], count)
            assert (name + "_sum", frozenset()) in fam["samples"], name
    return families


def metric(families, family, **labels):
    """The value of one series (labels must match exactly)."""
    fam = families[family]
    key = None
    for (name, lbl), v in fam["samples"].items():
        if dict(lbl) == labels and (name == family or name == family + "_count" and not labels):
            return v
    raise KeyError("%s%r not in %r" % (family, labels, sorted(fam["samples"])))


def series(families, family):
    """{frozenset(labels): value} for the plain samples of a family."""
    return {lbl: v for (name, lbl), v in families[family]["samples"].items() if name == family}


# ---------------------------------------------------------------------------

class OpsTestCase(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="rebound-ops-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def wait_log(self, daemon, pattern, timeout=10.0, after=0):
        """Waits for a log line matching pattern (a regex) past offset after;
        returns the match."""
        rx = re.compile(pattern)

        def found():
            return rx.search(daemon.log_text()[after:])
        return wait_until(found, timeout, what="log line /%s/" % pattern)

    def log_size(self, daemon):
        return len(daemon.log_text())


class ReloadTest(OpsTestCase):
    WINDOW = 50

    def test_hup_under_load_changes_later_decisions_and_loses_nothing(self):
        policy = self.path("policy.json")
        write_json(policy, load_policy())
        redis = self.start_redis()
        d = self.start_daemon(redis, policy=policy)
        c = self.connect(d)
        bystander = self.connect(d)  # an idle connection must survive too
        n, hup_at = 3000, 1000
        reqs = [bounce(unique_id("hup"), **GREYLIST) for _ in range(n)]
        sent_at = {}

        def on_reply(i, reply):
            sent_at[i] = time.time() * 1000
            if i == hup_at:
                slow = load_policy()
                slow["classes"]["greylist"]["delays"] = [["2s", "3s"]]
                write_json(policy, slow)
                os.kill(d.proc.pid, signal.SIGHUP)

        replies = c.pipeline(reqs, window=self.WINDOW, on_reply=on_reply, timeout=20)
        self.assertEqual(len(replies), n)
        delays = []
        for i, r in enumerate(replies):
            self.assertOk(r, "reply %d" % i)
            self.assertEqual(r["class"], "greylist")
            self.assertEqual(r["action"], "retry")
            delays.append(r["retry_at"] - sent_at[i])
        # old policy: 5-30 ms; new: 2-3 s. One switch, in request order.
        new = [dl > 1000 for dl in delays]
        switch = new.index(True)
        self.assertTrue(all(new[switch:]), "a decision after the reload used the old policy")
        self.assertFalse(any(new[:switch]))
        self.assertGreater(switch, hup_at, "a request answered before the HUP used the new policy")
        self.assertLessEqual(switch, hup_at + 3 * self.WINDOW, "the reload took effect too late")
        self.wait_log(d, r"reload: policy .* in force")
        self.assertPing(bystander)
        self.assertPing(c)
        # nothing lost: every acknowledged report is in Redis and in memory
        self.assertEqual(redis.cmd("HLEN", "rebound:msg"), n)
        stats = c.request({"op": "stats"})
        self.assertEqual(stats_pending(stats) + stats["awaiting"], n)

    def test_hup_that_reorders_classes_under_load_keeps_every_class_right(self):
        policy = self.path("policy.json")
        write_json(policy, load_policy(DEFAULT_POLICY))
        redis = self.start_redis()
        d = self.start_daemon(redis, policy=policy)
        c = self.connect(d)
        c2 = self.connect(d)
        kinds = [(GREYLIST, "greylist"), (OVER_QUOTA, "mailbox_full"), (USER_UNKNOWN, "hard_invalid")]
        n, hup_at, window = 3000, 1000, 200
        reqs = [bounce(unique_id("ro"), **kinds[i % 3][0]) for i in range(n)]
        stuck = [bounce(unique_id("st"), **kinds[i % 3][0]) for i in range(30)]
        busy = RespConnection(redis.port)
        self.addCleanup(busy.close)

        def on_reply(i, reply):
            if i != hup_at:
                return
            # Keep Redis busy for a second, so that requests are certainly
            # waiting for it when the reload lands: the new policy numbers
            # its classes differently and must wait for them.
            busy.sock.sendall(resp_encode(["EVAL", BUSY_SCRIPT, "0", "1000"]))
            for r in stuck:
                c2.send(r)
            time.sleep(0.3)
            p = load_policy(DEFAULT_POLICY)
            p["classes"] = dict(reversed(list(p["classes"].items())))
            write_json(policy, p)
            os.kill(d.proc.pid, signal.SIGHUP)

        replies = c.pipeline(reqs, window=window, on_reply=on_reply, timeout=20)
        for i, r in enumerate(replies):
            self.assertOk(r, "reply %d" % i)
            self.assertEqual(r["class"], kinds[i % 3][1], "reply %d: %r" % (i, r))
        for i in range(len(stuck)):
            r = c2.read_reply(timeout=10)
            self.assertOk(r)
            self.assertEqual(r["class"], kinds[i % 3][1], "stuck reply %d: %r" % (i, r))
        busy.sock.settimeout(10)
        self.assertEqual(busy._read_one(), "done")
        self.wait_log(d, r"reload: the class list changed; holding new requests until the \d+ in flight")
        self.wait_log(d, r"reload: new class list in force")
        n += len(stuck)
        stats = c.request({"op": "stats"})
        pending = n // 3 * 2  # greylist and mailbox_full stay pending (default policy: minutes away)
        self.assertEqual(stats_pending(stats), pending)
        self.assertEqual(stats["by_class"]["greylist"], n // 3)
        self.assertEqual(stats["by_class"]["mailbox_full"], n // 3)
        self.assertEqual(sum(stats["by_class"].values()), pending)
        # the records in Redis carry the right class names too
        for i in (0, 1, len(reqs) - 3, len(reqs) - 2):
            rec = c.request({"op": "get", "id": reqs[i]["id"]})
            self.assertOk(rec)
            self.assertEqual(rec["class"], kinds[i % 3][1])

    def test_broken_policy_or_config_on_hup_is_refused_and_old_kept(self):
        policy = self.path("policy.json")
        write_json(policy, load_policy())
        config = self.path("reboundd.json")
        write_json(config, {"policy": "policy.json", "max_connections": 100})
        redis = self.start_redis()
        # --policy names the same file the config does: HUP re-reads it
        d = self.start_daemon(redis, policy=policy, extra_args=["-c", config])
        c = self.connect(d)

        before = c.request(bounce(unique_id("b"), **GREYLIST))
        self.assertOk(before)

        for broken, what in ((policy, '{"classes": {"greylist": {"delays": [["5ms", "30ms"]]}},\n  oops\n}\n'),
                             (config, '{\n  "policy": "policy.json",\n  "max_conections": 5\n}\n')):
            with self.subTest(file=os.path.basename(broken)):
                mark = self.log_size(d)
                good = open(broken).read()
                with open(broken, "w") as f:
                    f.write(what)
                os.kill(d.proc.pid, signal.SIGHUP)
                m = self.wait_log(d, r"reload: refused, .*: (\S+):(\d+):(\d+): (.*)", after=mark)
                self.assertEqual(m.group(1), broken)
                if broken == config:
                    self.assertIn("max_conections", m.group(4))
                    self.assertEqual((m.group(2), m.group(3)), ("3", "3"))
                r = c.request(bounce(unique_id("b"), **GREYLIST))
                self.assertOk(r)
                self.assertLess(r["retry_at"] - int(time.time() * 1000), 1000, "the old policy stays")
                with open(broken, "w") as f:
                    f.write(good)
        self.assertPing(c)
        self.assertTrue(d.running)

    def test_hup_applies_reloadable_settings_and_reports_the_rest(self):
        config = self.path("reboundd.json")
        write_json(config, {"max_connections": 100, "prefix": "rebound:"})
        redis = self.start_redis()
        d = self.start_daemon(redis, extra_args=["-c", config])
        keep = [self.connect(d) for _ in range(2)]
        mark = self.log_size(d)
        write_json(config, {"max_connections": 2, "prefix": "other:", "log_level": "debug"})
        os.kill(d.proc.pid, signal.SIGHUP)
        self.wait_log(d, r"reload: policy .* in force.*settings changed: .*max_connections", after=mark)
        self.wait_log(d, r"prefix changed; it takes effect at the next restart", after=mark)
        # max_connections now 2: a third connection is refused
        with Client(d.tcp_addr) as extra:
            r = extra.read_reply(timeout=5)
            self.assertError(r, "busy")
            self.assertTrue(extra.wait_closed(5))
        for k in keep:
            self.assertPing(k)
        # prefix did not change under the running daemon
        self.assertOk(keep[0].request(bounce(unique_id("p"), **GREYLIST)))
        self.assertEqual(redis.cmd("EXISTS", "other:msg"), 0)


class DrainTest(OpsTestCase):
    def stream(self, addr, prefix, results, stop):
        """Sends greylist bounces as fast as the daemon takes them until it
        closes the connection; results gets (id, reply) for every reply."""
        s = socket.create_connection(addr, timeout=5)
        s.setblocking(False)
        buf = b""
        out = b""
        seq = 0
        sent = []
        got = 0
        try:
            while True:
                if not out and not stop.is_set() and len(sent) - got < 200:
                    lines = []
                    for _ in range(50):
                        seq += 1
                        mid = "%s-%d" % (prefix, seq)
                        sent.append(mid)
                        lines.append(json.dumps(bounce(mid, **GREYLIST)))
                    out = ("\n".join(lines) + "\n").encode()
                r, w, _ = select.select([s], [s] if out else [], [], 5)
                if not r and not w:
                    raise TimeoutError("stream stalled")
                if w:
                    try:
                        out = out[s.send(out):]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        out = b""
                if r:
                    try:
                        data = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        return
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        results.append((sent[got], json.loads(line)))
                        got += 1
        finally:
            s.close()

    def test_sigterm_under_load_every_reply_is_in_redis(self):
        redis = self.start_redis()
        d = self.start_daemon(redis, policy=DEFAULT_POLICY)  # retries stay pending
        results = [[] for _ in range(4)]
        stop = threading.Event()
        threads = [threading.Thread(target=self.stream, args=(d.tcp_addr, "t%d" % i, results[i], stop))
                   for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(len(r) for r in results) >= 2000, 20, what="2000 replies under load")
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(15)
        took = time.monotonic() - t0
        for t in threads:
            t.join(10)
            self.assertFalse(t.is_alive())
        self.assertEqual(rc, 0, d.log_text())
        self.assertLess(took, 7.0, "drain took longer than redis_timeout + 2 s")
        ok = [(mid, r) for res in results for mid, r in res if r.get("ok")]
        refused = [r for res in results for _, r in res if not r.get("ok")]
        self.assertGreaterEqual(len(ok), 2000)
        for r in refused:
            self.assertEqual(r["error"]["code"], "unavailable", r)
        # every acknowledged report is in Redis
        ids = [mid for mid, _ in ok]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            vals = redis.cmd("HMGET", "rebound:msg", *chunk)
            missing = [m for m, v in zip(chunk, vals) if v is None]
            self.assertEqual(missing, [], "acknowledged but not in Redis")
        # and the drain answered every write it made before closing
        in_redis = set(redis.cmd("HKEYS", "rebound:msg"))
        self.assertEqual(in_redis - set(ids), set(), "written to Redis but never answered")
        self.assertIn("stopping: no new connections", d.log_text())
        self.assertIn("stopped", d.log_text())
        self.assertNotIn("the loop still had handles", d.log_text())

    def fill_schedule(self, redis, n):
        """n pending records, enough that loading them takes a while (half a
        second or more for 500,000)."""
        rec = "P900000,1,greylist,%d\nu@d.example\n0,451,4.7.1,greylist" % now_ms()
        for b in range(0, n, 5000):
            redis.cmd("HSET", "rebound:msg", *[x for i in range(b, min(n, b + 5000)) for x in ("m%d" % i, rec)])

    def start_loading(self, redis):
        d = self.start_daemon(redis, policy=DEFAULT_POLICY, wait_ready=False)
        wait_until(lambda: "connected" in d.log_text(), 10, interval=0.005, what="the link to Redis")
        return d

    def test_load_resumes_after_the_link_drops(self):
        redis = self.start_redis()
        n = 400000
        self.fill_schedule(redis, n)
        d = self.start_loading(redis)
        self.assertEqual(redis.cmd("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"), 1)
        d.wait_ready(timeout=60)
        # the link dropped mid-load (else nothing was tested), and the load
        # began again once the daemon was back, skipping what it had read
        self.assertRegex(d.log_text(), r"load: (reading the schedule failed|Redis went away)")
        stats = self.assertOk(self.connect(d).request({"op": "stats"}))
        self.assertEqual((stats["loaded"], stats_pending(stats)), (True, n), stats)

    def test_sigterm_during_the_load_stops(self):
        redis = self.start_redis()
        self.fill_schedule(redis, 500000)
        d = self.start_loading(redis)
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(15)
        log = d.log_text()
        self.assertEqual(rc, 0, log)
        self.assertNotIn("ready:", log, "the load ended before the stop: nothing tested")
        self.assertIn("stopped", log)


class NotifyTest(OpsTestCase):
    def test_ready_after_load_status_watchdog_and_stopping(self):
        if not daemon_features()["notify"]:
            self.skipTest("reboundd built without libsystemd (REBOUND_SYSTEMD=OFF)")
        redis = self.start_redis()
        # a schedule to read back at start
        first = self.start_daemon(redis, policy=DEFAULT_POLICY)
        c = self.connect(first)
        n = 3000
        for r in c.pipeline([bounce(unique_id("n"), **GREYLIST) for _ in range(n)], window=200):
            self.assertOk(r)
        c.close()
        self.assertEqual(first.term(), 0)

        sock_path = self.path("notify.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(ns.close)
        ns.bind(sock_path)
        ns.settimeout(0.05)
        os.environ["NOTIFY_SOCKET"] = sock_path
        os.environ["WATCHDOG_USEC"] = "200000"
        try:
            d = self.start_daemon(redis, policy=DEFAULT_POLICY, wait_ready=False)
        finally:
            del os.environ["NOTIFY_SOCKET"]
            del os.environ["WATCHDOG_USEC"]
        msgs = []

        def recv_until(pred, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data = ns.recv(4096).decode()
                except socket.timeout:
                    continue
                for line in data.split("\n"):
                    if line:
                        msgs.append((time.monotonic(), line))
                        if pred(line):
                            return line
            self.fail("no matching notify message in %.0fs; got %r" % (timeout, [m for _, m in msgs]))

        recv_until(lambda l: l == "READY=1", 15)
        # READY means loaded and listening: the schedule is all there
        with Client(d.tcp_addr) as probe:
            stats = probe.request({"op": "stats"})
            self.assertTrue(stats["loaded"])
            self.assertEqual(stats_pending(stats), n)
        statuses = [m for _, m in msgs if m.startswith("STATUS=")]
        self.assertTrue(statuses, "no STATUS before READY")
        self.assertTrue(any("Redis" in s or "loading" in s for s in statuses), statuses)
        recv_until(lambda l: l.startswith("STATUS=") and ("%d pending" % n) in l, 5)
        # watchdog pings at half of WATCHDOG_USEC
        t0 = time.monotonic()
        recv_until(lambda l: l == "WATCHDOG=1", 2)
        recv_until(lambda l: l == "WATCHDOG=1", 2)
        self.assertLess(time.monotonic() - t0, 1.5)
        # reload says so
        os.kill(d.proc.pid, signal.SIGHUP)
        recv_until(lambda l: l == "RELOADING=1", 5)
        recv_until(lambda l: l == "READY=1", 5)
        d.proc.send_signal(signal.SIGTERM)
        recv_until(lambda l: l == "STOPPING=1", 5)
        self.assertEqual(d.proc.wait(10), 0)

    def test_no_notify_socket_no_messages_needed(self):
        # outside systemd nothing changes: starts, answers, stops with 0
        redis = self.start_redis()
        d = self.start_daemon(redis)
        self.assertPing(self.connect(d))
        self.assertEqual(d.term(), 0)


class UnitFileTest(unittest.TestCase):
    def unit(self):
        with open(UNIT_FILE) as f:
            return f.read()

    def test_unit_declares_notify_and_hardening(self):
        text = self.unit()
        keys = {}
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                keys.setdefault(k.strip(), []).append(v.strip())
        self.assertEqual(keys["Type"], ["notify"])
        self.assertEqual(keys["NoNewPrivileges"], ["yes"])
        self.assertEqual(keys["ProtectSystem"], ["strict"])
        self.assertEqual(keys["PrivateTmp"], ["yes"])
        self.assertEqual(keys["CapabilityBoundingSet"], [""])
        self.assertEqual(keys["RuntimeDirectory"], ["rebound"])
        self.assertEqual(keys["RestrictAddressFamilies"], ["AF_UNIX AF_INET AF_INET6"])
        self.assertIn("SystemCallFilter", keys)
        self.assertIn("WatchdogSec", keys)
        self.assertEqual(keys["User"], ["rebound"])
        self.assertIn("-c /etc/rebound/reboundd.json", keys["ExecStart"][0])
        self.assertTrue(keys["ExecStart"][0].startswith("/usr/sbin/reboundd "))
        # the socket's path comes from the config file (unix_path), never a
        # flag that would silently override an edit to it
        self.assertNotIn("--unix", keys["ExecStart"][0])
        with open(EXAMPLE_CONFIG) as f:
            self.assertTrue(json.load(f)["unix_path"].startswith("/run/%s/" % keys["RuntimeDirectory"][0]))
        self.assertIn("HUP", keys["ExecReload"][0])

    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze not installed (Debian package systemd)")
        if not os.access(reboundd_path(), os.X_OK):
            self.fail("reboundd not built")
        tmp = tempfile.mkdtemp(prefix="rebound-unit-")
        self.addCleanup(shutil.rmtree, tmp, True)

        def verify(path):
            p = subprocess.run([tool, "verify", "--man=no", path], capture_output=True, text=True, timeout=60)
            return p.returncode, (p.stdout + p.stderr).strip()

        # As shipped. The one thing it may miss on a machine where reboundd is
        # not installed is the binary itself.
        rc, out = verify(UNIT_FILE)
        if "Failed to " in out and ("bus" in out.lower() or "system manager" in out.lower()):
            self.skipTest("systemd-analyze cannot run here: %s" % out)
        other = [l for l in out.splitlines() if l and "Command /usr/sbin/reboundd is not executable" not in l]
        self.assertEqual(other, [], "systemd-analyze verify complained:\n" + out)
        if os.access("/usr/sbin/reboundd", os.X_OK):
            self.assertEqual(rc, 0, out)
        # The same unit with the binary that was just built: must pass clean.
        copy = os.path.join(tmp, "reboundd.service")
        with open(copy, "w") as f:
            f.write(self.unit().replace("/usr/sbin/reboundd", reboundd_path()))
        rc, out = verify(copy)
        self.assertEqual((rc, out), (0, ""), "systemd-analyze verify:\n" + out)


class MetricsTest(OpsTestCase):
    def setUp(self):
        super().setUp()
        if not daemon_features()["metrics"]:
            self.skipTest("reboundd built without libmicrohttpd (REBOUND_METRICS=OFF)")

    def test_scrape_is_valid_and_matches_stats(self):
        redis = self.start_redis()
        mport = free_port()
        d = self.start_daemon(redis, policy=DEFAULT_POLICY, extra_args=["--metrics", "127.0.0.1:%d" % mport])
        c = self.connect(d)
        reqs = ([bounce(unique_id("g"), **GREYLIST) for _ in range(30)] +
                [bounce(unique_id("q"), **OVER_QUOTA) for _ in range(20)] +
                [bounce(unique_id("u"), **USER_UNKNOWN) for _ in range(10)])
        for r in c.pipeline(reqs):
            self.assertOk(r)
        self.assertError(c.request({"op": "nope"}), "unknown_op")
        self.assertError(c.request({"op": "bounce"}), "bad_request")
        self.assertError(c.request({"op": "get", "id": "nothing-here"}), "not_found")
        stats = c.request({"op": "stats"})

        status, ctype, text = scrape(mport)
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        fams = parse_metrics(text)
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(p.returncode, 0, "promtool check metrics:\n" + p.stdout + p.stderr)

        pending = series(fams, "rebound_pending")
        self.assertEqual(sum(pending.values()), stats_pending(stats))
        self.assertEqual(sum(pending.values()), 50)
        for cls, v in stats["by_class"].items():
            self.assertEqual(pending[frozenset({("class", cls)})], v, cls)
        self.assertEqual(metric(fams, "rebound_awaiting"), stats["awaiting"])
        for t, v in stats["events"].items():
            self.assertEqual(metric(fams, "rebound_events_total", type=t), v, t)
        self.assertEqual(metric(fams, "rebound_events_total", type="suppress"), 10)
        self.assertEqual(metric(fams, "rebound_reports_total"), 60)
        self.assertEqual(metric(fams, "rebound_due", within="day"), 50)
        self.assertEqual(metric(fams, "rebound_redis_up"), 1)
        self.assertEqual(metric(fams, "rebound_loaded"), 1)
        self.assertEqual(metric(fams, "rebound_connections"), stats["connections"])
        self.assertEqual(metric(fams, "rebound_errors_total", code="unknown_op"), 1)
        self.assertEqual(metric(fams, "rebound_errors_total", code="bad_request"), 1)
        self.assertEqual(metric(fams, "rebound_errors_total", code="not_found"), 1)
        # every request so far had its latency observed (+ the harness's pings)
        self.assertGreaterEqual(metric(fams, "rebound_request_duration_seconds"), 64)
        self.assertGreater(metric(fams, "rebound_redis_roundtrip_seconds"), 0)
        self.assertEqual(metric(fams, "rebound_requests_in_flight"), 0)

        # link state follows Redis
        redis.stop()
        wait_until(lambda: metric(parse_metrics(scrape(mport)[2]), "rebound_redis_up") == 0, 10,
                   what="rebound_redis_up 0")
        # other paths and methods
        with self.assertRaises(urllib.error.HTTPError) as e:
            scrape(mport, "/nothing")
        self.assertEqual(e.exception.code, 404)
        req = urllib.request.Request("http://127.0.0.1:%d/metrics" % mport, data=b"x", method="POST")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        self.assertEqual(e.exception.code, 405)
        self.assertEqual(d.term(), 0)

    def test_metrics_port_taken_fails_start(self):
        redis = self.start_redis()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            d = self.start_daemon(redis, extra_args=["--metrics", "127.0.0.1:%d" % port], wait_ready=False)
            self.assertEqual(d.proc.wait(10), 1)
        self.assertIn("metrics_listen", d.log_text())


class SecurityTest(OpsTestCase):
    def test_token_gates_every_op_but_auth_and_ping(self):
        config = self.path("reboundd.json")
        write_json(config, {"token": "s3cret"})
        redis = self.start_redis()
        d = self.start_daemon(redis, extra_args=["-c", config])
        c = self.connect(d)
        self.assertPing(c)
        mid = unique_id("tok")
        for req in (bounce(mid, **GREYLIST), {"op": "get", "id": mid}, {"op": "cancel", "id": mid},
                    {"op": "delivered", "id": mid}, {"op": "stats"},
                    {"op": "classify", "code": 451, "text": "greylisted"},
                    {"op": "subscribe", "group": "g"}, {"op": "ack", "ids": ["1-0"]}):
            with self.subTest(op=req["op"]):
                self.assertError(c.request(req), "auth_required")
        self.assertError(c.request({"op": "auth", "token": "wrong"}), "auth_required")
        self.assertError(c.request({"op": "stats"}), "auth_required")
        self.assertEqual(redis.cmd("HLEN", "rebound:msg"), 0, "nothing was written before auth")
        self.assertOk(c.request({"op": "auth", "token": "s3cret"}))
        self.assertOk(c.request(bounce(mid, **GREYLIST)))
        self.assertOk(c.request({"op": "stats"}))
        # the token is per connection
        other = self.connect(d)
        self.assertError(other.request({"op": "stats"}), "auth_required")
        # and never shown
        out = subprocess.run([reboundd_path(), "-t", "-v", "-c", config, "--policy", FAST_POLICY],
                             capture_output=True, text=True, timeout=10).stdout
        self.assertNotIn("s3cret", out)
        self.assertEqual(json.loads(out[:out.rindex("}") + 1])["token"], "***")

    def test_max_connections(self):
        config = self.path("reboundd.json")
        write_json(config, {"max_connections": 3})
        redis = self.start_redis()
        d = self.start_daemon(redis, extra_args=["-c", config])
        conns = [self.connect(d) for _ in range(3)]
        for c in conns:
            self.assertPing(c)
        with Client(d.tcp_addr) as extra:
            self.assertError(extra.read_reply(timeout=5), "busy")
            self.assertTrue(extra.wait_closed(5))
        conns[0].close()

        def fourth_ok():
            with Client(d.tcp_addr) as c:
                return c.request({"op": "ping"}).get("ok") is True
        wait_until(fourth_ok, 5, what="a free slot after a close")
        for c in conns[1:]:
            self.assertPing(c)

    def test_redis_acl_user(self):
        redis = self.start_redis()
        redis.cmd("ACL", "SETUSER", "rebound", "on", ">pw-for-rebound", "~rebound:*", "resetchannels",
                  "+@read", "+@write", "+@scripting", "+@connection", "-@dangerous")
        config = self.path("reboundd.json")
        write_json(config, {"redis_user": "rebound", "redis_password": "pw-for-rebound"})
        d = self.start_daemon(redis, extra_args=["-c", config])
        c = self.connect(d)
        mid = unique_id("acl")
        self.assertOk(c.request(bounce(mid, **GREYLIST)))
        self.assertOk(c.request({"op": "get", "id": mid}))
        self.assertNotIn("pw-for-rebound", d.log_text())
        # a wrong password: the daemon keeps trying and says why, never starts listening
        write_json(config, {"redis_user": "rebound", "redis_password": "wrong"})
        bad = self.start_daemon(redis, extra_args=["-c", config], wait_ready=False)
        self.wait_log(bad, r"WRONGPASS|invalid username-password")
        self.assertTrue(bad.running)
        self.assertNotIn("wrong", bad.log_text().replace("WRONGPASS", ""))

    def test_tcp_off_loopback_without_token_warns(self):
        redis = self.start_redis()
        port = free_port()
        d = self.start_daemon(redis, extra_args=["--listen", "0.0.0.0:%d" % port], wait_ready=False)
        self.wait_log(d, r"warn: listen: 0\.0\.0\.0:%d is not loopback and no token" % port)


class ReboundctlStatsTest(OpsTestCase):
    def run_on_terminal(self, argv, timeout=10):
        """Runs argv with stdout on a pseudo-terminal; returns its output."""
        rc, out, err = run_on_terminal(argv, timeout)
        self.assertEqual(rc, 0, err)
        return out

    def test_stats_summary_on_a_terminal(self):
        redis = self.start_redis()
        d = self.start_daemon(redis, policy=DEFAULT_POLICY)
        c = self.connect(d)
        reqs = ([bounce(unique_id("g"), rcpt="a%d@gmail.example" % i, **GREYLIST) for i in range(3)] +
                [bounce(unique_id("q"), rcpt="b@yahoo.example", **OVER_QUOTA)])
        for r in c.pipeline(reqs):
            self.assertOk(r)
        ctl = os.path.join(BUILD_DIR, "reboundctl")
        out = self.run_on_terminal([ctl, "-s", "127.0.0.1:%d" % d.port, "stats"])
        lines = [l.split() for l in out.splitlines()]
        self.assertIn(["queue", "4", "pending,", "0", "awaiting", "their", "outcome"], lines, out)
        self.assertIn(["pending", "by", "class", "greylist", "3"], lines, out)
        self.assertIn(["mailbox_full", "1"], lines, out)
        self.assertRegex(out, r"due +0 within a minute, 3 within an hour, 4 within a day")
        self.assertRegex(out, r"reports +4 accepted, 0 errors")
        self.assertRegex(out, r"redis +up")
        if "top domains" in out:  # the daemon reports its top domains
            self.assertIn(["top", "domains", "gmail.example", "3"], lines, out)
        # piped: the reply as it came, JSON
        p = subprocess.run([ctl, "-s", "127.0.0.1:%d" % d.port, "stats"], capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(json.loads(p.stdout)["pending"], 4)


class ConfigCheckTest(OpsTestCase):
    def run_t(self, *args):
        return subprocess.run([reboundd_path(), "-t"] + list(args), capture_output=True, text=True, timeout=10)

    def test_example_config_checks(self):
        p = self.run_t("-c", EXAMPLE_CONFIG)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("OK", p.stdout)
        # its relative policy path is the policy next to it
        p = self.run_t("-v", "-c", EXAMPLE_CONFIG)
        dumped = json.loads(p.stdout[:p.stdout.rindex("}") + 1])
        self.assertEqual(os.path.realpath(dumped["policy"]),
                         os.path.realpath(os.path.join(SOURCE_DIR, "config", "policy.json")))

    def test_typo_and_wrong_type_name_file_line_column_and_key(self):
        typo = self.path("typo.json")
        with open(typo, "w") as f:
            f.write('{\n  "listen": "127.0.0.1:7411",\n  "max_conections": 10\n}\n')
        p = self.run_t("-c", typo)
        self.assertEqual(p.returncode, 1)
        self.assertIn('%s:3:3: unknown key "max_conections" (did you mean "max_connections"?)' % typo, p.stderr)
        wrong = self.path("wrong.json")
        with open(wrong, "w") as f:
            f.write('{\n  "redis_db": "zero"\n}\n')
        p = self.run_t("-c", wrong)
        self.assertEqual(p.returncode, 1)
        self.assertIn('%s:2:15: "redis_db": expected an integer, not a string' % wrong, p.stderr)

    def test_broken_policy_fails_check(self):
        bad = self.path("policy.json")
        with open(bad, "w") as f:
            f.write('{\n  "classes": [\n')
        p = self.run_t("--policy", bad)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, re.escape(bad) + r":\d+:\d+: ")

    def test_dump_config(self):
        config = self.path("c.json")
        write_json(config, {"redis": "redis://u:pw@127.0.0.1:6379/2", "redis_password": "x", "fire_batch": 7})
        p = subprocess.run([reboundd_path(), "--dump-config", "-c", config, "--listen", "127.0.0.1:1"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr)
        dumped = json.loads(p.stdout)
        self.assertEqual(dumped["fire_batch"], 7)
        self.assertEqual(dumped["listen"], "127.0.0.1:1")
        self.assertEqual(dumped["redis_password"], "***")
        self.assertNotIn("pw", dumped["redis"])


class InstallTest(unittest.TestCase):
    def test_cmake_install(self):
        cmake = shutil.which("cmake")
        if not cmake or not os.path.exists(os.path.join(BUILD_DIR, "cmake_install.cmake")):
            self.skipTest("no cmake build directory at %s" % BUILD_DIR)
        dest = tempfile.mkdtemp(prefix="rebound-install-")
        self.addCleanup(shutil.rmtree, dest, True)
        env = dict(os.environ, DESTDIR=dest)

        def install():
            p = subprocess.run([cmake, "--install", BUILD_DIR], env=env, capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

        install()
        files = {}
        for root, _, names in os.walk(dest):
            for n in names:
                full = os.path.join(root, n)
                files[os.path.relpath(full, dest)] = full

        def one(suffix):
            hits = [f for f in files if f.endswith(suffix)]
            self.assertEqual(len(hits), 1, "%s: %r" % (suffix, sorted(files)))
            return files[hits[0]]

        reboundd = one("sbin/reboundd")
        self.assertTrue(os.access(reboundd, os.X_OK))
        self.assertTrue(os.access(one("bin/reboundctl"), os.X_OK))
        config = one("etc/rebound/reboundd.json")
        policy = one("etc/rebound/policy.json")
        one("share/rebound/policy.json")
        one("share/doc/rebound/examples/reboundd.example.json")
        for doc in ("operations.md", "protocol.md", "policy.md", "architecture.md", "README.md"):
            one("share/doc/rebound/" + doc)
        unit = one("lib/systemd/system/reboundd.service")
        one("lib/sysusers.d/rebound.conf")
        self.assertEqual(os.path.dirname(config), os.path.dirname(policy))
        # the installed unit names the installed binary and config
        prefix_sbin = os.path.dirname(reboundd)[len(dest):]
        with open(unit) as f:
            text = f.read()
        self.assertIn("ExecStart=%s/reboundd -c %s\n" % (prefix_sbin, config[len(dest):]), text)
        self.assertIn("Type=notify", text)
        # the installed binary accepts the installed config (its relative
        # policy path finds the installed policy)
        p = subprocess.run([reboundd, "-t", "-c", config], capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(policy, p.stdout)
        # an upgrade keeps what the operator edited
        with open(config, "w") as f:
            f.write('{"max_connections": 7}\n')
        install()
        with open(config) as f:
            self.assertEqual(f.read(), '{"max_connections": 7}\n')


if __name__ == "__main__":
    unittest.main()
