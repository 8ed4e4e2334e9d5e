"""`pip install clients/python` into a fresh virtual environment, with no
package index (--no-index: the build must need nothing from one), then the
installed package runs the examples against the real reboundd."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import test_examples
from pyclient_base import SOURCE_DIR, DaemonTestCase, log


class InstallTest(DaemonTestCase):
    def test_pip_install_offline_then_examples(self):
        venv = tempfile.mkdtemp(prefix="rebound-venv-")
        self.addCleanup(shutil.rmtree, venv, True)
        t0 = time.monotonic()
        # without pip of its own when the base Python has one (ensurepip
        # takes half a minute on a busy machine); the install still lands
        # in the venv
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv],
                       check=True, timeout=120)
        py = os.path.join(venv, "bin", "python")
        if subprocess.run([py, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode != 0:
            subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True, timeout=300)
        # a copy, so that the install proves nothing is taken from the tree
        src = os.path.join(venv, "src")
        shutil.copytree(os.path.join(SOURCE_DIR, "clients", "python"), src,
                        ignore=shutil.ignore_patterns("__pycache__"))
        r = subprocess.run([py, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", src],
                           capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        log("venv and pip install: %.1fs" % (time.monotonic() - t0))
        r = subprocess.run([py, "-c", "import rebound_client, sys; print(rebound_client.__file__); "
                                      "print(rebound_client.Client, rebound_client.AsyncConsumer)"],
                           capture_output=True, text=True, timeout=30, cwd=venv, env={"PATH": os.environ["PATH"]})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(venv), r.stdout)
        redis, d, _ = self.start_all()
        test_examples.ExamplesTest.report_and_consume(self, d, redis, python=py)


if __name__ == "__main__":
    unittest.main()
