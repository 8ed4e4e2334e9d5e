"""End to end: Haraka (with the rebound plugin) sends to a Postfix that
greylists with Postgrey, and reboundd decides when Haraka tries again.

  1. A message to alice is greylisted (450 4.2.0) on its first attempt; the
     plugin reports it, reboundd schedules the retry a few seconds later (a
     test policy), its `retry` event makes Haraka send again, the message
     lands in alice's maildir, and the plugin's `delivered` leaves reboundd
     with nothing pending or awaiting.
  2. A message to an unknown user is refused 550 5.1.1; reboundd suppresses
     the address, the sender gets Haraka's bounce, and a third message to the
     address is refused by Haraka itself and never reaches Postfix.

The same runs with reboundd killed (-9) and restarted while the retry is
pending. Haraka's own retry is set an hour past reboundd's time (the
plugin's grace), so only reboundd's event can bring the retry within the
test's time. Two more: a mailbox that stays full is retried on reboundd's
events until it gives up and Haraka bounces the message to its sender; and
with reboundd away at the deferral Haraka's own retry delivers and the
spooled reports reach reboundd once it is back.

Environment (set by tests/e2e.cmake): REBOUND_E2E_MODULES, the node_modules
that the e2e.setup fixture installed Haraka into.
"""

import json
import os
import re
import shutil
import smtplib
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from harness import wait_until  # noqa: E402
import mta  # noqa: E402

SOURCE_DIR = harness.SOURCE_DIR
PLUGIN_DIR = os.path.join(SOURCE_DIR, "integrations", "haraka")
MODULES = os.environ.get("REBOUND_E2E_MODULES") or os.path.join(harness.BUILD_DIR, "e2e", "node_modules")

GREYLIST_DELAY_S = 2       # Postgrey lets the triplet through this long after its first try
GRACE_S = 3600             # Haraka's own retry: an hour after reboundd's
SENDER = "sender@" + mta.DOMAIN
ALICE = "alice@" + mta.DOMAIN
NOBODY = "nobody@" + mta.DOMAIN
CAROL = "carol@" + mta.DOMAIN  # her mailbox stays full


def e2e_policy(path):
    """The fast test policy with the greylist retry a little after Postgrey's
    delay (seconds, not minutes) and a maximum age the test never reaches."""
    with open(harness.FAST_POLICY) as f:
        p = json.load(f)
    p["limits"]["max_age"] = "1h"
    p["limits"]["max_attempts"] = 2
    p["classes"]["greylist"]["delays"] = [["2500ms", "3000ms"], ["2500ms", "3000ms"]]
    with open(path, "w") as f:
        json.dump(p, f)
    return path


class EndToEnd(harness.DaemonTestCase):

    def setUp(self):
        super().setUp()
        missing = [t for t in ("postfix", "postgrey", "node") if shutil.which(t) is None]
        if missing:
            self.fail("not installed: %s (scripts/deps.sh test installs them)" % ", ".join(missing))
        if not os.path.isdir(os.path.join(MODULES, "Haraka")):
            self.fail("Haraka is not installed in %s (the e2e.setup test installs it)" % MODULES)
        if os.geteuid() != 0:
            self.skipTest("the private Postfix and Postgrey need root")
        self.tmp = tempfile.mkdtemp(prefix="rebound-e2e-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.started = time.monotonic()
        self.redis = self.start_redis()
        self.daemon = self.start_daemon(self.redis, policy=e2e_policy(os.path.join(self.tmp, "policy.json")))
        self.client = self.connect(self.daemon)
        self.postgrey = mta.Postgrey(GREYLIST_DELAY_S, exempt=[SENDER])
        self.addCleanup(self.postgrey.cleanup)
        self.postfix = mta.Postfix(["alice", "carol", "sender"], self.postgrey.port,
                                   replies={"carol": "452 4.2.2 Mailbox full"})
        self.addCleanup(self.postfix.cleanup)
        self.haraka = None

    def start_haraka(self, temp_fail_intervals="1h*20"):
        self.haraka = mta.Haraka(MODULES, PLUGIN_DIR, self.postfix.port, "127.0.0.1:%d" % self.daemon.port,
                                 grace=GRACE_S, temp_fail_intervals=temp_fail_intervals)
        self.addCleanup(self.haraka.cleanup)

    def tearDown(self):
        if self._outcome_failed():
            for name, srv in (("haraka", self.haraka), ("postfix maillog", self.postfix),
                              ("postgrey", self.postgrey)):
                if srv is None:
                    continue
                sys.stderr.write("\n==== %s ====\n%s\n" % (name, srv.log_text()[-12000:]))
        super().tearDown()

    def stats(self):
        return self.assertOk(self.client.request({"op": "stats"}))

    def recipient(self, rcpt):
        return self.assertOk(self.client.request({"op": "get", "rcpt": rcpt}))["recipient"]

    def reconnect(self):
        self.client.close()
        self.client = self.connect(self.daemon)

    def flow(self, kill_reboundd):
        self.start_haraka()
        # 1. greylisted, retried on reboundd's event, delivered
        self.haraka.send(SENDER, ALICE, "e2e-first", headers={"X-Campaign": "e2e-campaign"})
        wait_until(lambda: self.stats()["pending"] == 1, 15, 0.05, "the deferral to be reported")
        # the server's own reply was reported (Postgrey's 450 4.2.0), not a stand-in,
        # with the campaign header and the Message-ID
        [rid] = re.findall(r"held for the retry event of (\S+) ", self.haraka.log_text())
        msg = self.assertOk(self.client.request({"op": "get", "id": rid}))
        self.assertEqual((msg["rcpt"], msg["class"], msg["campaign"]), (ALICE, "greylist", "e2e-campaign"))
        self.assertEqual((msg["history"][0]["code"], msg["history"][0]["enhanced"]), (450, "4.2.0"))
        self.assertEqual(msg["meta"]["message_id"], "<e2e-first@src.test>")
        greylisted = self.postfix.log_lines(r"reject: RCPT .*450 4\.2\.0 <%s>.*Greylisted" % ALICE)
        self.assertEqual(len(greylisted), 1, "the first attempt was greylisted once")
        self.assertEqual(self.postfix.mailbox("alice"), [], "nothing delivered before the retry")
        self.assertEqual(len(self.haraka.queue_files()), 1, "Haraka holds the message")

        if kill_reboundd:
            self.daemon.kill9()
            time.sleep(0.5)
            self.daemon.start()
            self.reconnect()
            self.assertGreaterEqual(self.stats()["pending"] + self.stats()["awaiting"], 1,
                                    "the retry survived the kill")

        wait_until(lambda: any("e2e-first" in m for m in self.postfix.mailbox("alice")), 30, 0.1,
                   "the retry to land in alice's mailbox")
        [mail] = self.postfix.mailbox("alice")
        self.assertIn("X-Campaign: e2e-campaign", mail)
        self.assertIn("X-Greylist: delayed", mail)  # Postgrey passed it after the delay
        self.assertRegex(self.haraka.log_text(), r"rebound: retry 1 of \S+: sending")
        # delivered reached reboundd: nothing pending, nothing awaiting an outcome
        wait_until(lambda: (lambda s: s["pending"] == 0 and s["awaiting"] == 0)(self.stats()), 10, 0.05,
                   "delivered to reach reboundd")
        self.assertFalse(self.recipient(ALICE)["suppressed"])

        # 2. unknown user: refused, suppressed, the sender bounced, the third not sent
        self.haraka.send(SENDER, NOBODY, "e2e-second")
        wait_until(lambda: self.recipient(NOBODY)["suppressed"], 15, 0.05, "the address to be suppressed")
        self.assertEqual(self.recipient(NOBODY)["suppressed_reason"], "hard_invalid")
        wait_until(lambda: any("e2e-second" in m for m in self.postfix.mailbox("sender")), 15, 0.1,
                   "Haraka's bounce to reach the sender")
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
            self.haraka.send(SENDER, NOBODY, "e2e-third")
        code, text = cm.exception.recipients[NOBODY]
        self.assertEqual(code, 550)
        self.assertIn(b"5.1.1", text)
        refused = self.postfix.log_lines(r"reject: RCPT .*550 5\.1\.1 <%s>" % NOBODY)
        self.assertEqual(len(refused), 1, "Postfix saw the unknown user once: the third was never sent")

        wait_until(lambda: self.haraka.queue_files() == [], 10, 0.1, "Haraka's queue to empty")
        self.assertFalse(os.path.exists(self.haraka.spool_path) and os.path.getsize(self.haraka.spool_path),
                         "no report left unsent")
        self.assertLess(time.monotonic() - self.started, 60)

    def test_greylist_retry_and_suppression(self):
        self.flow(kill_reboundd=False)

    def test_reboundd_killed_and_restarted(self):
        self.flow(kill_reboundd=True)

    def test_give_up_bounces_to_sender(self):
        """A mailbox that stays full: reboundd schedules the retries (the
        test policy's max_attempts is 2), then answers give_up, and the plugin has
        Haraka bounce the message to its sender."""
        self.start_haraka()
        self.haraka.send(SENDER, CAROL, "e2e-full")
        wait_until(lambda: any("e2e-full" in m for m in self.postfix.mailbox("sender")), 30, 0.1,
                   "Haraka's bounce for carol to reach the sender")
        [dsn] = [m for m in self.postfix.mailbox("sender") if "e2e-full" in m]
        self.assertIn(CAROL, dsn)
        self.assertIn("give_up (max_attempts)", dsn)
        attempts = self.postfix.log_lines(r"reject: RCPT .*452 4\.2\.2 <%s>" % CAROL)
        retries = re.findall(r"rebound: retry (\d) of ", self.haraka.log_text())
        self.assertGreaterEqual(len(retries), 2)
        self.assertEqual(retries, [str(i + 1) for i in range(len(retries))], "each retry on its event, in order")
        self.assertEqual(len(attempts), 1 + len(retries), "no attempt but the first and rebound's retries")
        wait_until(lambda: self.haraka.queue_files() == [], 10, 0.1, "Haraka's queue to empty")
        st = self.stats()
        self.assertEqual((st["pending"], st["awaiting"]), (0, 0))
        self.assertFalse(self.recipient(CAROL)["suppressed"])

    def test_reboundd_down_fallback(self):
        """reboundd is away when the deferral happens: Haraka keeps its own
        schedule (a first retry after 5 s here, its shortest), the message is delivered,
        and both reports reach reboundd once it is back, in order."""
        self.start_haraka(temp_fail_intervals="5s,1h*20")
        self.daemon.kill9()
        self.haraka.send(SENDER, ALICE, "e2e-fallback")
        wait_until(lambda: any("e2e-fallback" in m for m in self.postfix.mailbox("alice")), 30, 0.1,
                   "Haraka's own retry to land in alice's mailbox")
        self.assertEqual(len(self.postfix.log_lines(r"450 4\.2\.0 <%s>.*Greylisted" % ALICE)), 1)
        self.assertRegex(self.haraka.log_text(), r"rebound: unreachable, \S+ keeps Haraka's own retry \(5s\)")
        wait_until(lambda: len(mta._read(self.haraka.spool_path).splitlines()) == 2, 10, 0.1,
                   "the bounce and delivered reports to be spooled")
        ops = [json.loads(l)["op"] for l in mta._read(self.haraka.spool_path).splitlines()]
        self.assertEqual(ops, ["bounce", "delivered"])

        self.daemon.start()
        self.reconnect()
        wait_until(lambda: os.path.getsize(self.haraka.spool_path) == 0, 15, 0.1, "the spool to be sent")
        st = self.stats()
        self.assertEqual(st["reports"], 1, "the deferral reached reboundd")
        self.assertEqual((st["pending"], st["awaiting"]), (0, 0), "and so did the delivery after it")
        self.assertEqual(self.haraka.queue_files(), [])


if __name__ == "__main__":
    unittest.main()
