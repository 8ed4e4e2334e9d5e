"""examples/python/reporter.py and consumer.py, run as a user would against
the real reboundd: the reporter's decisions, then the consumer's actions on
the events they caused, acked when it stops."""

import json
import os
import subprocess
import sys
import unittest

from pyclient_base import SOURCE_DIR, DaemonTestCase, tcp, unique_id

EXAMPLES = os.path.join(SOURCE_DIR, "examples", "python")


def run_example(name, args, stdin="", python=None, timeout=30):
    env = dict(os.environ)
    if python is None:  # the package from the source tree, not installed
        env["PYTHONPATH"] = os.path.join(SOURCE_DIR, "clients", "python")
    else:
        env.pop("PYTHONPATH", None)
    return subprocess.run([python or sys.executable, os.path.join(EXAMPLES, name)] + args, input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


class ExamplesTest(DaemonTestCase):
    def report_and_consume(self, d, redis, python=None):
        grey, hard = unique_id("exg"), unique_id("exh")
        reports = [
            {"id": grey, "rcpt": "alice@example.com", "code": 451, "enhanced": "4.7.1",
             "text": "Greylisted, please try again later", "campaign": "demo"},
            {"id": hard, "rcpt": "nobody@example.org", "code": 550, "enhanced": "5.1.1", "text": "User unknown"},
        ]
        out = run_example("reporter.py", [tcp(d)], "".join(json.dumps(r) + "\n" for r in reports), python)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(len(lines), 2, out.stdout)
        self.assertRegex(lines[0], r"^%s: retry 1 at \d+$" % grey)
        self.assertEqual(lines[1], "%s: suppress (hard_invalid)" % hard)

        group = unique_id("exgrp").replace("-", "_")
        out = run_example("consumer.py", [d.unix_path, "--group", group, "--max-events", "2"], python=python)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(sorted(out.stdout.splitlines()),
                         sorted(["send again: %s to alice@example.com (attempt 1)" % grey,
                                 "suppress address: nobody@example.org (hard_invalid)"]))
        # it acked both on its way out
        self.assertEqual(redis.cmd("XPENDING", "rebound:events", group)[0], 0)
        # a bad report is reported, not fatal, and the exit code says so
        out = run_example("reporter.py", [tcp(d)], json.dumps({"id": "x", "rcpt": "a@example.com", "code": 200}),
                          python)
        self.assertEqual(out.returncode, 1)
        self.assertIn("x: not recorded (bad_request:", out.stdout)

    def test_examples(self):
        redis, d, _ = self.start_all()
        self.report_and_consume(d, redis)


if __name__ == "__main__":
    unittest.main()
