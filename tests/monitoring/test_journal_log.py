"""reboundd's log lines on stderr, for a terminal and for journald.

Under systemd, stderr is a stream to journald and JOURNAL_STREAM names it
("<dev>:<inode>"). Then each line must start with a syslog priority "<N>"
(journald's SyslogLevelPrefix turns it into the entry's priority, so that
`journalctl -p warning` finds the warnings) and carry no "reboundd[pid]:",
which journald records already. Anywhere else the lines stay as they were.

The daemon runs against a Redis port where nobody listens, so it logs an
info line (starting) and a warning (Redis refused, retrying), then is told
to stop (SIGTERM: info lines again). Its stderr is a file here; the test
makes JOURNAL_STREAM name that file, a file that is not stderr, or nothing.
"""

import os
import re
import signal
import subprocess
import tempfile
import time
import unittest

from harness import BUILD_DIR, FAST_POLICY, free_port, have_reboundd, reboundd_path

PRIORITY = {"debug": 7, "info": 6, "warn": 4, "error": 3}


@unittest.skipUnless(have_reboundd() or os.environ.get("REBOUND_BUILD_DIR"), "reboundd not built")
class JournalLogTest(unittest.TestCase):
    def run_daemon(self, journal_stream):
        """Runs reboundd until it logged a warning (at most 10 s) and stops
        it; returns its stderr lines. journal_stream(stderr_file) gives the
        JOURNAL_STREAM value, or None to leave it unset."""
        self.assertTrue(have_reboundd(), "reboundd not built at %s" % reboundd_path())
        with tempfile.TemporaryDirectory(prefix="rebound-log-") as tmp:
            path = os.path.join(tmp, "stderr")
            other = os.path.join(tmp, "other")
            open(other, "w").close()
            env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
            with open(path, "wb") as err:
                value = journal_stream(err.fileno(), other)
                if value is not None:
                    env["JOURNAL_STREAM"] = value
                argv = [reboundd_path(), "--listen", "127.0.0.1:%d" % free_port(), "--redis",
                        "127.0.0.1:%d" % free_port(), "--policy", FAST_POLICY, "--metrics", ""]
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                     env=env, cwd=tmp)
                try:
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        with open(path, "rb") as f:
                            if b"warn: " in f.read():
                                break
                        time.sleep(0.05)
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=10)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        self.assertTrue(any("warn: " in l for l in lines), lines)
        self.assertTrue(any("info: " in l for l in lines), lines)
        return lines

    def test_journal_gets_priorities_and_no_identifier(self):
        def same_file(fd, other):
            st = os.fstat(fd)
            return "%d:%d" % (st.st_dev, st.st_ino)

        for line in self.run_daemon(same_file):
            m = re.match(r"<(\d)>(debug|info|warn|error): \S", line)
            self.assertIsNotNone(m, line)
            self.assertEqual(int(m.group(1)), PRIORITY[m.group(2)], line)
            self.assertNotIn("reboundd[", line)

    def plain(self, lines):
        pid = None
        for line in lines:
            m = re.match(r"reboundd\[(\d+)\]: (debug|info|warn|error): \S", line)
            self.assertIsNotNone(m, line)
            self.assertIn(pid, (None, m.group(1)), line)
            pid = m.group(1)

    def test_terminal_or_file_gets_plain_lines(self):
        self.plain(self.run_daemon(lambda fd, other: None))

    def test_stderr_redirected_away_from_the_journal(self):
        # JOURNAL_STREAM inherited, but stderr is another file now (a
        # wrapper redirected it): journald does not read these lines.
        def other_file(fd, other):
            st = os.stat(other)
            return "%d:%d" % (st.st_dev, st.st_ino)

        self.plain(self.run_daemon(other_file))
        self.plain(self.run_daemon(lambda fd, other: "garbage"))


if __name__ == "__main__":
    unittest.main()
