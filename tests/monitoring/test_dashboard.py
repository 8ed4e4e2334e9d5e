"""The Grafana dashboard (monitoring/grafana/rebound.json) against real data.

A throwaway redis-server and the real reboundd (with its metrics endpoint on a
free port) take some traffic while a real Prometheus (the Debian package)
scrapes them every second into a temporary storage directory; then every
panel's query runs through Prometheus's HTTP API over the test's time span
and must return data (at least one value that is a number).

Panels whose metric the daemon does not export yet stay in the dashboard;
NOT_YET_EXPORTED lists those metrics. Their queries must return nothing, and
the test fails as soon as the daemon exports one of them, so that the entry
is taken off the list. The alert rules' metrics are held to the same list.
"""

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from harness import (FAST_POLICY, GREYLIST, SOURCE_DIR, USER_UNKNOWN, Daemon, RedisServer, _popen, _stop_process,
                     bounce, free_port, have_reboundd, reboundd_path, unique_id, wait_until)

DASHBOARD = os.path.join(SOURCE_DIR, "monitoring", "grafana", "rebound.json")
RULES = os.path.join(SOURCE_DIR, "monitoring", "prometheus", "rebound.rules.yml")

# Metrics the dashboard and the rules use that reboundd does not export yet.
# Empty it as the daemon learns them: the test fails for a listed one that is
# exported.
NOT_YET_EXPORTED = set()

# What Grafana would put in for the dashboard's variables. The scrape runs
# every second, so a 10 s rate window holds ten samples.
VARIABLES = {"$__rate_interval": "10s", "$instance": ".+", "${datasource}": "prometheus"}

SCRAPE_INTERVAL = "1s"
METRIC_RE = re.compile(r"\brebound_[a-z0-9_]+")


def metric_names(expr):
    """The metric families an expression reads (histogram series folded
    into their family)."""
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in METRIC_RE.findall(expr)}


def exported_families(metrics_text):
    return {line.split()[2] for line in metrics_text.splitlines() if line.startswith("# TYPE ")}


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Prometheus:
    """prometheus scraping one target every second, its data in a temp dir."""

    def __init__(self, target):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rebound-prom-")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: %s\n  scrape_timeout: %s\n"
                    "scrape_configs:\n  - job_name: rebound\n    static_configs:\n      - targets: ['%s']\n"
                    % (SCRAPE_INTERVAL, SCRAPE_INTERVAL, target))
        log = open(self.log_path, "wb")
        try:
            self.proc = _popen(["prometheus", "--config.file=" + config,
                                "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                                "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"],
                               stdout=log, stderr=log)
        finally:
            log.close()
        self.base = "http://127.0.0.1:%d" % self.port

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return "(no prometheus log)"

    def wait_ready(self, timeout=30.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited with %s:\n%s" % (self.proc.returncode, self.log_text()))
            return http_get(self.base + "/-/ready", 1.0)
        wait_until(ready, timeout, interval=0.1, what="prometheus ready")

    def api(self, path, **params):
        url = "%s/api/v1/%s?%s" % (self.base, path, urllib.parse.urlencode(params))
        body = json.loads(http_get(url))
        if body.get("status") != "success":
            raise AssertionError("prometheus %s %r: %r" % (path, params, body))
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def query_range(self, expr, start, end):
        return self.api("query_range", query=expr, start="%.3f" % start, end="%.3f" % end, step="1")["result"]

    def cleanup(self):
        _stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def panels(dash):
    """Every panel, those inside collapsed rows included."""
    for p in dash["panels"]:
        yield p
        for q in p.get("panels", []):
            yield q


def substitute(expr):
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    if "$" in expr:
        raise AssertionError("a variable the test does not know in %r" % expr)
    return expr


def has_number(result):
    for series in result:
        for _, v in series.get("values", []):
            if not math.isnan(float(v)):
                return True
    return False


@unittest.skipUnless(have_reboundd() or os.environ.get("REBOUND_BUILD_DIR"), "reboundd not built")
class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("prometheus", "redis-server"):
            if shutil.which(tool) is None:
                raise AssertionError("%s is not installed (scripts/deps.sh test)" % tool)
        if not have_reboundd():
            raise AssertionError("reboundd not built at %s" % reboundd_path())
        with open(DASHBOARD) as f:
            cls.dash = json.load(f)
        cls.cleanups = []
        try:
            cls._start()
        except BaseException:
            cls._print_logs()
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        cls.redis = RedisServer()
        cls.cleanups.append(cls.redis.cleanup)
        metrics_port = free_port()
        cls.metrics_addr = "127.0.0.1:%d" % metrics_port
        cls.daemon = Daemon(cls.redis, policy=FAST_POLICY, extra_args=["--metrics", cls.metrics_addr], start=False)
        cls.cleanups.append(cls.daemon.cleanup)
        cls.daemon.start()
        cls.prom = Prometheus(cls.metrics_addr)
        cls.cleanups.append(cls.prom.cleanup)
        cls.prom.wait_ready()
        cls.start = time.time() - 1
        wait_until(lambda: cls.prom.query('up{job="rebound"} == 1'), 20, interval=0.2, what="a first scrape")

        # Traffic over a few seconds, so that rates have samples on both
        # sides: retries that fire at once (fast policy), suppressions, a
        # bad request, a subscriber that acks, connections opened and closed.
        total = 0
        with cls.daemon.client() as c:
            r = c.request({"op": "hold", "domain": "held.example"})
            assert r.get("ok") is True, r
            c.subscribe("dashboard")
            for round_ in range(4):
                reqs = [bounce(unique_id("g"), rcpt="u%d-%d@gmail.example" % (round_, i), **GREYLIST)
                        for i in range(30)]
                reqs += [bounce(unique_id("h"), rcpt="x%d-%d@yahoo.example" % (round_, i), **USER_UNKNOWN)
                         for i in range(5)]
                for r in c.pipeline(reqs):
                    assert r.get("ok") is True, r
                total += len(reqs)
                r = c.request({"op": "bounce", "id": "no-rcpt"})
                assert r.get("ok") is False, r
                with cls.daemon.client() as other:
                    other.request({"op": "stats"})
                evs = c.events(1000, 1.0)
                if evs:
                    c.ack([e["eid"] for e in evs])
                time.sleep(1.5)
        cls.reports = total

        # Until Prometheus has seen every report and a few scrapes since.
        def caught_up():
            r = cls.prom.query("rebound_reports_total")
            return r and int(float(r[0]["value"][1])) == total
        wait_until(caught_up, 20, interval=0.2, what="prometheus to scrape the traffic")
        time.sleep(3)
        cls.end = time.time()
        cls.metrics_text = http_get("http://%s/metrics" % cls.metrics_addr)

    @classmethod
    def _print_logs(cls):
        import sys
        for name in ("daemon", "prom"):
            obj = getattr(cls, name, None)
            if obj is not None:
                sys.stderr.write("\n==== %s log ====\n%s\n" % (name, obj.log_text()))

    @classmethod
    def tearDownClass(cls):
        for c in reversed(getattr(cls, "cleanups", [])):
            c()

    def run(self, result=None):
        failures = len(result.failures) + len(result.errors) if result else 0
        r = super().run(result)
        if result and len(result.failures) + len(result.errors) > failures:
            self._print_logs()
        return r

    def test_dashboard_shape(self):
        ids = [p["id"] for p in panels(self.dash)]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        names = {v["name"] for v in self.dash["templating"]["list"]}
        self.assertEqual(names, {"datasource", "instance"})
        for p in panels(self.dash):
            if p["type"] == "row":
                continue
            with self.subTest(panel=p["title"]):
                self.assertTrue(p.get("targets"), "a panel without a query")
                self.assertEqual(p["datasource"]["uid"], "${datasource}")
                for t in p["targets"]:
                    self.assertTrue(t["expr"].strip())
                    self.assertIn('instance=~"$instance"', t["expr"], "every query follows the instance variable")

    def test_not_yet_exported_list_is_true(self):
        exported = exported_families(self.metrics_text)
        self.assertIn("rebound_pending", exported)
        now_exported = sorted(NOT_YET_EXPORTED & exported)
        self.assertFalse(now_exported, "reboundd exports these now: take them off NOT_YET_EXPORTED")
        used = set()
        for p in panels(self.dash):
            for t in p.get("targets", []):
                used |= metric_names(t["expr"])
        self.assertFalse(NOT_YET_EXPORTED - used, "listed as not yet exported but on no panel")
        unknown = used - exported - NOT_YET_EXPORTED
        self.assertFalse(unknown, "the dashboard reads metrics that neither exist nor are listed")

    def test_rules_read_known_metrics(self):
        with open(RULES) as f:
            exprs = re.findall(r"^\s+expr:\s*(\|[\s\S]*?)(?=^\s+(?:for|labels):)|^\s+expr:\s*(.+)$", f.read(), re.M)
        used = set()
        for block, line in exprs:
            used |= metric_names(block or line)
        self.assertGreaterEqual(len(exprs), 9)
        unknown = used - exported_families(self.metrics_text) - NOT_YET_EXPORTED
        self.assertFalse(unknown, "the alert rules read metrics that neither exist nor are listed")

    def test_every_panel_query_returns_data(self):
        checked = not_yet = 0
        for p in panels(self.dash):
            for t in p.get("targets", []):
                expr = substitute(t["expr"])
                pending = metric_names(expr) & NOT_YET_EXPORTED
                with self.subTest(panel=p["title"], expr=expr):
                    result = self.prom.query_range(expr, self.start, self.end)
                    if pending:
                        not_yet += 1
                        self.assertFalse(has_number(result), "has data, yet %s listed as not yet exported" % pending)
                        print("not yet exported: %s: %s" % (p["title"], expr))
                    else:
                        checked += 1
                        self.assertTrue(has_number(result), "no data")
        self.assertGreater(checked, 20)
        print("%d panel queries returned data, %d wait for metrics not yet exported" % (checked, not_yet))

    def test_figures_are_the_daemons(self):
        # A spot check that the data is this run's, not just present.
        r = self.prom.query('sum(rebound_reports_total{instance=~".+"})')
        self.assertEqual(int(float(r[0]["value"][1])), self.reports)
        r = self.prom.query('sum(rebound_events_total{type="suppress"})')
        self.assertEqual(int(float(r[0]["value"][1])), 20)
        # Every retry fired has its lateness, and under this light load
        # (fast policy, one loopback Redis) it fired within a second.
        samples = dict(line.rsplit(" ", 1) for line in self.metrics_text.splitlines()
                       if line and not line.startswith("#"))
        fired = int(samples['rebound_events_total{type="retry"}'])
        self.assertGreater(fired, 0)
        self.assertEqual(int(samples["rebound_firing_lateness_seconds_count"]), fired)
        self.assertEqual(int(samples['rebound_firing_lateness_seconds_bucket{le="1"}']), fired)
        self.assertEqual(int(samples["rebound_suppressed_addresses"]), 20)
        self.assertIn('rebound_consumer_lag{group="dashboard"}', samples)
        self.assertEqual(int(samples["rebound_stream_length"]), sum(
            int(v) for k, v in samples.items() if k.startswith("rebound_events_total{")))


if __name__ == "__main__":
    unittest.main()
