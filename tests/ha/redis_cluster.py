"""A Redis Cluster on loopback for the HA tests: its nodes (redis-server
with cluster mode on, each on free ports), the cluster made of them by
redis-cli, and what CLUSTER NODES says of it."""

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import RedisServer, _popen, free_port  # noqa: E402


def nodes_view(node):
    """CLUSTER NODES of one node as {port: (flags, slots)}."""
    out = {}
    for line in node.cmd("CLUSTER", "NODES").splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        port = int(f[1].split("@")[0].rsplit(":", 1)[1])
        out[port] = (f[2].split(","), f[8:])
    return out


def serves(slots, slot):
    """Whether a node's slot ranges (CLUSTER NODES' tail) hold slot."""
    for s in slots:
        if s.startswith("["):
            continue  # a slot being migrated
        lo, _, hi = s.partition("-")
        if int(lo) <= slot <= int(hi or lo):
            return True
    return False


class ClusterNodes:
    """For a DaemonTestCase: nodes it stops at cleanup, the cluster made."""

    def require_redis_cli(self):
        if shutil.which("redis-cli") is None:
            if os.environ.get("REBOUND_REQUIRE_REDIS"):
                self.fail("redis-cli not installed (redis-tools)")
            self.skipTest("redis-cli not installed")

    def start_node(self, node_timeout_ms):
        for attempt in range(3):
            try:
                r = RedisServer(extra_args=["--cluster-enabled", "yes", "--cluster-node-timeout",
                                            str(node_timeout_ms), "--cluster-config-file", "nodes.conf",
                                            "--repl-diskless-sync-delay", "0", "--cluster-port", str(free_port()),
                                            "--cluster-require-full-coverage", "no"])
                break
            except RuntimeError as e:
                # a port taken between free_port() and the bind (a test
                # running beside this one): again on two new ports
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
        self.addCleanup(r.cleanup)
        return r

    def create_cluster(self, nodes, replicas):
        """redis-cli --cluster create over nodes: len(nodes) / (replicas + 1)
        primaries, the slots split evenly."""
        proc = _popen(["redis-cli", "--cluster", "create"] + [n.addr for n in nodes] +
                      ["--cluster-replicas", str(replicas), "--cluster-yes"], stdout=-1, stderr=-1)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, (out + err).decode(errors="replace")[-2000:])
