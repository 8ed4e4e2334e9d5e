"""What the Python client tests share: the integration harness (real
reboundd and redis-server on free loopback ports) and the client package
from the source tree."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("REBOUND_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

import harness  # noqa: E402
from harness import FAST_POLICY, GREYLIST, DaemonTestCase, unique_id, wait_until  # noqa: E402,F401

import rebound_client  # noqa: E402,F401

__all__ = ["harness", "rebound_client", "FAST_POLICY", "GREYLIST", "DaemonTestCase", "SOURCE_DIR",
           "unique_id", "wait_until", "tcp", "log"]


def tcp(daemon):
    """The daemon's TCP address as the client takes it."""
    return "127.0.0.1:%d" % daemon.port


def log(msg):
    sys.stderr.write("  [pyclient] %s\n" % msg)
