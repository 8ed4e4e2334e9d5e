"""The status page (web/status.html) in a real headless Chromium.

A throwaway redis-server and the real reboundd (default policy, so that
retries stay pending for hours) take reports: a domain that throttles, retries
placed hours ahead, suppressions; two consumer groups, one of them gone. The
page is then loaded in `chromium --headless` and its rendered DOM must show
the daemon's figures: queue depth by class, what falls due over the next 24 h
(one bar per hour), the top domains with their held/throttled marks, the
groups with their lag, the latest events. A screenshot is written to
REBOUND_BUILD_DIR/status-page.png.

reboundd serves the page at / and the document at /status.json on its
metrics listener, and the browser loads them from there. A small server here
stands between them where the test needs to see or break the page's requests
(the refresh, an unreachable status.json).

With STATUS_FROM_DAEMON false (REBOUND_STATUS_FROM_DAEMON=0) that server
instead serves web/status.html and a status.json built from the daemon's own
answers (stats, get, the events it sent) and Redis's XINFO GROUPS, in the
shape docs/operations.md ("Status page") defines: the page alone, without the
daemon's listener.
"""

import html.parser
import http.server
import json
import os
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
import tempfile
import threading
import time
import unittest

from harness import (BUILD_DIR, DEFAULT_POLICY, SOURCE_DIR, USER_UNKNOWN, Daemon, RedisServer, bounce, free_port,
                     have_reboundd, now_ms, reboundd_path, unique_id, wait_until)

# True loads the page from reboundd (REBOUND_STATUS_FROM_DAEMON=0: the page alone).
STATUS_FROM_DAEMON = os.environ.get("REBOUND_STATUS_FROM_DAEMON", "1") == "1"

PAGE = os.path.join(SOURCE_DIR, "web", "status.html")
SCREENSHOT = os.path.join(BUILD_DIR, "status-page.png")

RATE_LIMIT = dict(code=421, enhanced="4.7.0",
                  text="421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume")
TEMP = dict(code=451, enhanced="4.3.0", text="451 4.3.0 Temporary local problem, try again later")
HOUR = 3600 * 1000
BUCKETS = 24

# Held through the daemon's hold op; while reboundd does not know it yet, the
# server in between marks this domain held (see setUpClass).
HELD_DOMAIN = "held.example"


def find_chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


# ---- the stand-in for the daemon's status listener -------------------------

def status_document(stats, version, dues, groups, latest, held):
    """The documented /status.json, from the daemon's stats reply, the due
    times of the pending messages, XINFO GROUPS and the latest events."""
    now = now_ms()
    buckets = [0] * BUCKETS
    overdue = later = 0
    for due in dues:
        i = (due - now) // HOUR
        if due < now:
            overdue += 1
        elif i < BUCKETS:
            buckets[i] += 1
        else:
            later += 1
    throttled = {t["domain"]: t for t in stats["domains"]["throttled"]}
    top = []
    for d in stats["domains"]["top_pending"]:
        t = throttled.get(d["domain"])
        entry = {"domain": d["domain"], "pending": d["pending"], "held": d["domain"] in held,
                 "throttled": t is not None}
        if t:
            entry.update(throttled_until=t["until"], throttle_class=t["class"])
        top.append(entry)
    return {
        "version": version,
        "now": now,
        "started_at": now - stats["uptime_s"] * 1000,
        "loaded": stats["loaded"],
        "redis": stats["redis"],
        "connections": stats["connections"],
        "queue": {"pending": stats["pending"], "awaiting": stats["awaiting"], "by_class": stats["by_class"]},
        "due": {"from": now, "bucket_ms": HOUR, "overdue": overdue, "buckets": buckets, "later": later},
        "domains": {"known": stats["domains"]["known"], "top": top},
        "groups": groups,
        "events": {"emitted": stats["events"], "latest": latest},
    }


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream=None, mark_held=()):
        super().__init__(("127.0.0.1", free_port()), StandInHandler)
        self.document = None
        self.upstream = upstream  # reboundd's listener ("http://host:port"): pass its answers on
        self.mark_held = set(mark_held)  # domains to mark held in the upstream's status.json
        self.fail_with = None  # an HTTP status for /status.json, to see the page cope
        self.requests = []

    def status_json(self):
        if self.upstream is None:
            return json.dumps(self.document).encode()
        doc = json.loads(http_get(self.upstream + "/status.json")[2])
        for d in doc["domains"]["top"]:
            if d["domain"] in self.mark_held:
                d["held"] = True
        return json.dumps(doc).encode()

    def page(self):
        if self.upstream is not None:
            return http_get(self.upstream + "/")[2]
        with open(PAGE, "rb") as f:
            return f.read()

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.server_address[1]


class StandInHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/":
            self.reply(200, "text/html; charset=utf-8", self.server.page())
        elif self.path == "/status.json":
            if self.server.fail_with:
                self.reply(self.server.fail_with, "text/plain", b"unavailable\n")
            else:
                self.reply(200, "application/json", self.server.status_json())
        else:
            self.reply(404, "text/plain", b"not found\n")

    def reply(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


# ---- the rendered DOM ------------------------------------------------------

class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def find_all(self, tag=None, **attrs):
        return [n for n in self.walk() if (tag is None or n.tag == tag) and
                all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag=None, **attrs):
        found = self.find_all(tag, **attrs)
        if len(found) != 1:
            raise AssertionError("%d elements %s %r, want one" % (len(found), tag, attrs))
        return found[0]

    def cells(self):
        return [td.text().strip() for td in self.find_all("td")]


class DomParser(html.parser.HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "source", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse_dom(text):
    p = DomParser()
    p.feed(text)
    p.close()
    return p.root


@unittest.skipUnless(have_reboundd() or os.environ.get("REBOUND_BUILD_DIR"), "reboundd not built")
class StatusPageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.chromium = find_chromium()
        if cls.chromium is None:
            raise AssertionError("chromium is not installed (scripts/packages/test-browser.list)")
        if not have_reboundd():
            raise AssertionError("reboundd not built at %s" % reboundd_path())
        cls.cleanups = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for c in reversed(getattr(cls, "cleanups", [])):
            try:
                c()
            except Exception:
                pass

    @classmethod
    def _start(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rebound-status-")
        cls.cleanups.append(lambda: shutil.rmtree(cls.tmp, ignore_errors=True))
        cls.redis = RedisServer()
        cls.cleanups.append(cls.redis.cleanup)
        cls.metrics_addr = "127.0.0.1:%d" % free_port()
        cls.daemon = Daemon(cls.redis, policy=DEFAULT_POLICY, extra_args=["--metrics", cls.metrics_addr],
                            start=False)
        cls.cleanups.append(cls.daemon.cleanup)
        cls.daemon.start()
        c = cls.daemon.client()
        cls.cleanups.append(c.close)

        # "audit" subscribes once and goes away: its lag grows with every
        # event after. "senders" stays and acknowledges what it gets.
        with cls.daemon.client() as gone:
            gone.subscribe("audit")
        c.subscribe("senders")

        now = now_ms()
        ids = []
        reqs = []
        # 60 throttling replies from one domain: it backs off (a
        # domain_throttled event) and its retries wait behind it.
        for i in range(60):
            ids.append(unique_id("rl"))
            reqs.append(bounce(ids[-1], rcpt="u%02d@throttled.example" % i, **RATE_LIMIT))
        # Retries placed hours ahead: 1 at +2h, 3 at +5h, 2 at +20h, 1 past a day.
        cls.placed = {2: 1, 5: 3, 20: 2, 30: 1}
        for hours, n in cls.placed.items():
            for i in range(n):
                ids.append(unique_id("nb"))
                reqs.append(bounce(ids[-1], rcpt="p%d-%d@later.example" % (hours, i),
                                   not_before=now + hours * HOUR + 10 * 60 * 1000, **TEMP))
        for i in range(4):
            ids.append(unique_id("held"))
            reqs.append(bounce(ids[-1], rcpt="h%d@%s" % (i, HELD_DOMAIN), **TEMP))
        cls.suppressed_ids = []
        for i in range(3):
            cls.suppressed_ids.append(unique_id("gone"))
            reqs.append(bounce(cls.suppressed_ids[-1], rcpt="nobody%d@gone.example" % i, **USER_UNKNOWN))
        for r in c.pipeline(reqs):
            assert r.get("ok") is True, r
        cls.hold_landed = False
        if STATUS_FROM_DAEMON:
            r = c.request({"op": "hold", "domain": HELD_DOMAIN})
            assert r.get("ok") is True, r
            cls.hold_landed = True

        # The events so far: 3 suppress, 1 domain_throttled.
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 4 and time.monotonic() < deadline:
            got = c.events(4 - len(events), deadline - time.monotonic())
            events += got
            if got:
                c.ack([e["eid"] for e in got])
        assert len(events) == 4, events
        cls.events = events

        cls.stats = c.request({"op": "stats"})
        assert cls.stats.get("ok") is True, cls.stats
        cls.dues = []
        for r in c.pipeline([{"op": "get", "id": i} for i in ids]):
            assert r.get("ok") is True and r["state"] == "pending", r
            cls.dues.append(r["due_at"])
        assert len(cls.dues) == cls.stats["pending"], (len(cls.dues), cls.stats["pending"])
        cls.groups = cls.xinfo_groups()
        version = subprocess.run([reboundd_path(), "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.split()[1]

        if STATUS_FROM_DAEMON:
            cls.daemon_url = "http://%s" % cls.metrics_addr

            # The daemon reads the groups and the latest events from Redis
            # every 2 s: until it has read what the test saw.
            def caught_up():
                doc = json.loads(http_get(cls.daemon_url + "/status.json")[2])
                eids = {e["eid"] for e in doc["events"]["latest"]}
                return doc["groups"] == cls.groups and all(e["eid"] in eids for e in cls.events)
            wait_until(caught_up, 10, interval=0.1, what="status.json to show the groups and events")
            cls.stand_in = StandIn(upstream=cls.daemon_url, mark_held=() if cls.hold_landed else {HELD_DOMAIN})
            threading.Thread(target=cls.stand_in.serve_forever, daemon=True).start()
            cls.cleanups.append(cls.stand_in.server_close)
            cls.cleanups.append(cls.stand_in.shutdown)
            cls.url = (cls.daemon_url + "/") if cls.hold_landed else cls.stand_in.url
        else:
            cls.stand_in = StandIn()
            cls.stand_in.document = status_document(cls.stats, version, cls.dues, cls.groups,
                                                    list(reversed(cls.events)), {HELD_DOMAIN})
            threading.Thread(target=cls.stand_in.serve_forever, daemon=True).start()
            cls.cleanups.append(cls.stand_in.server_close)
            cls.cleanups.append(cls.stand_in.shutdown)
            cls.url = cls.stand_in.url

    @classmethod
    def xinfo_groups(cls):
        out = []
        for g in cls.redis.cmd("XINFO", "GROUPS", "rebound:events"):
            d = dict(zip(g[0::2], g[1::2]))
            out.append({"name": d["name"], "consumers": d["consumers"], "pending": d["pending"], "lag": d["lag"]})
        return out

    def browse(self, *flags, budget_ms=3000, url=None):
        """Runs headless Chromium on the page (url, else the daemon's or the
        stand-in's), returning its stdout. The virtual time budget lets the
        page's fetches and timers run."""
        argv = [self.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--user-data-dir=" + os.path.join(self.tmp, "profile"),
                "--virtual-time-budget=%d" % budget_ms] + list(flags) + [url or self.url]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        return p.stdout

    def dom(self, budget_ms=3000, url=None):
        root = parse_dom(self.browse("--dump-dom", budget_ms=budget_ms, url=url))
        body = root.find("body")
        self.assertEqual(body.attrs.get("data-loaded"), "yes", "the page did not render status.json")
        return root

    def test_renders_the_daemons_figures(self):
        root = self.dom()
        st = self.stats
        self.assertEqual(root.find(id="pending").text(), str(st["pending"]))
        self.assertEqual(root.find(id="awaiting").text(), str(st["awaiting"]))
        redis = root.find(id="redis")
        self.assertEqual((redis.attrs["data-state"], redis.text()), ("up", "Redis up"))
        self.assertIn("connections", root.find(id="connections").text())

        # Queue depth by class: every class with retries, with its count.
        for cls, n in st["by_class"].items():
            rows = root.find_all("tr", data_class=cls)
            if n:
                self.assertEqual(rows[0].cells()[:2], [cls, str(n)], cls)
            else:
                self.assertEqual(rows, [], cls)
        self.assertEqual(st["by_class"]["rate_limit"], 60)

        # The due chart: the overdue bar, then one bar per hour with what
        # the daemon says falls due in it.
        rects = root.find_all("rect")
        self.assertEqual(len(rects), 1 + BUCKETS)
        counts = {r.attrs["data-bucket"]: int(r.attrs["data-count"]) for r in rects}
        for hours, n in self.placed.items():
            if hours < BUCKETS:
                self.assertEqual(counts[str(hours)], n, "bucket +%dh" % hours)
        self.assertEqual(sum(counts.values()) + (1 if self.placed.get(30) else 0), st["pending"])
        self.assertEqual(root.find(id="due-later").text(), "1 due later than that")

        # Top domains with their marks.
        throttled = root.find("tr", data_domain="throttled.example")
        self.assertEqual(throttled.cells()[1], "60")
        self.assertEqual([m.text().split()[0] for m in throttled.find_all("span")], ["THROTTLED"])
        held = root.find("tr", data_domain=HELD_DOMAIN)
        self.assertEqual([m.text().split()[0] for m in held.find_all("span")], ["HELD"])
        self.assertEqual(root.find("tr", data_domain="later.example").find_all("span"), [])

        # Consumer groups: the one that left lags by every event since.
        by_group = {g["name"]: g for g in self.groups}
        self.assertGreaterEqual(by_group["audit"]["lag"], 4)
        self.assertEqual(by_group["senders"]["lag"], 0)
        for name, g in by_group.items():
            self.assertEqual(root.find("tr", data_group=name).cells(),
                             [name, str(g["consumers"]), str(g["pending"]), str(g["lag"])])

        # The latest events, each one the daemon sent.
        for ev in self.events:
            row = root.find("tr", data_eid=ev["eid"])
            self.assertEqual(row.attrs["data-type"], ev["type"])
            self.assertIn(ev.get("id") or ev.get("domain"), row.cells())
        suppressed_rows = root.find_all("tr", data_type="suppress")
        self.assertEqual(sorted(r.cells()[2] for r in suppressed_rows), sorted(self.suppressed_ids))

    def test_daemon_serves_page_and_document(self):
        if not STATUS_FROM_DAEMON:
            self.skipTest("the page alone")
        status, headers, body = http_get(self.daemon_url + "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/html"), headers)
        with open(PAGE, "rb") as f:
            self.assertEqual(body, f.read(), "reboundd serves the page it was built with")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            http_get(self.daemon_url + "/nope")
        self.assertEqual(cm.exception.code, 404)

        before = now_ms()
        status, headers, body = http_get(self.daemon_url + "/status.json")
        self.assertEqual((status, headers["Content-Type"], headers["Cache-Control"]),
                         (200, "application/json", "no-store"))
        doc = json.loads(body)
        st = self.stats
        self.assertGreaterEqual(doc["now"], before)
        self.assertLessEqual(doc["started_at"], doc["now"])
        self.assertEqual((doc["loaded"], doc["redis"]), (True, "up"))
        self.assertEqual(doc["queue"], {"pending": st["pending"], "awaiting": st["awaiting"],
                                        "by_class": st["by_class"]})
        due = doc["due"]
        self.assertEqual((due["from"], due["bucket_ms"], len(due["buckets"])), (doc["now"], HOUR, BUCKETS))
        self.assertEqual(due["overdue"] + sum(due["buckets"]) + due["later"], st["pending"])
        for hours, n in self.placed.items():
            if hours < BUCKETS:
                self.assertEqual(due["buckets"][hours], n, "bucket +%dh" % hours)
        self.assertEqual(due["later"], self.placed[30])
        top = {d["domain"]: d for d in doc["domains"]["top"]}
        self.assertEqual(doc["domains"]["known"], st["domains"]["known"])
        t = top["throttled.example"]
        self.assertEqual((t["pending"], t["throttled"], t["throttle_class"]), (60, True, "rate_limit"))
        self.assertGreater(t["throttled_until"], doc["now"])
        self.assertEqual(top["later.example"]["held"], False)
        self.assertEqual(top["later.example"]["throttled"], False)
        self.assertEqual(top[HELD_DOMAIN]["held"], self.hold_landed)
        self.assertEqual(doc["groups"], self.groups)
        self.assertEqual(doc["events"]["emitted"], st["events"])
        latest = doc["events"]["latest"]
        self.assertEqual([e["eid"] for e in latest], [e["eid"] for e in reversed(self.events)], "newest first")
        self.assertEqual(latest, list(reversed(self.events)), "each as the subscriber got it")

        # /metrics reads the same figures.
        samples = {}
        for line in http_get(self.daemon_url + "/metrics")[2].decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        for g in self.groups:
            self.assertEqual(samples['rebound_consumer_lag{group="%s"}' % g["name"]], g["lag"])
            self.assertEqual(samples['rebound_consumer_pending{group="%s"}' % g["name"]], g["pending"])
        self.assertEqual(samples["rebound_suppressed_addresses"], 3)
        self.assertEqual(samples["rebound_stream_length"], len(self.events))
        self.assertEqual(samples["rebound_domains_throttled"], 1)
        if self.hold_landed:
            self.assertEqual(samples["rebound_domains_held"], 1)
        self.assertEqual(samples["rebound_firing_lateness_seconds_count"], 0, "nothing fired yet")

    def test_self_contained_and_refreshing(self):
        with open(PAGE) as f:
            page = parse_dom(f.read())
        for n in page.walk():
            for attr in ("src", "href"):
                v = n.attrs.get(attr)
                self.assertTrue(v is None or v.startswith("data:"), "%s %s=%r loads something" % (n.tag, attr, v))
        if self.stand_in is None:
            self.skipTest("the request log is the stand-in's")
        self.stand_in.requests.clear()
        # 12 s of the page's time: the first fetch and two refreshes (5 s).
        self.dom(budget_ms=12000, url=self.stand_in.url)
        paths = list(self.stand_in.requests)
        self.assertEqual(set(paths), {"/", "/status.json"}, paths)
        self.assertGreaterEqual(paths.count("/status.json"), 3, paths)

    def test_unreachable_status_says_so(self):
        if self.stand_in is None:
            self.skipTest("needs the stand-in to fail")
        self.stand_in.fail_with = 503
        try:
            root = parse_dom(self.browse("--dump-dom", url=self.stand_in.url))
        finally:
            self.stand_in.fail_with = None
        self.assertIn("failed", root.find("body").attrs.get("class", ""))
        self.assertIn("HTTP 503", root.find(id="error").text())

    def test_screenshot(self):
        if os.path.exists(SCREENSHOT):
            os.unlink(SCREENSHOT)
        self.browse("--screenshot=" + SCREENSHOT, "--window-size=1280,1100", "--hide-scrollbars")
        with open(SCREENSHOT, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", head[16:24])
        self.assertEqual((width, height), (1280, 1100))
        self.assertGreater(os.path.getsize(SCREENSHOT), 20000, "an empty page?")
        print("screenshot: %s" % SCREENSHOT)


if __name__ == "__main__":
    unittest.main()
