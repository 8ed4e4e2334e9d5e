#!/usr/bin/env python3
"""W1 against shards on a Redis Cluster of three primaries (docs/performance.md,
"Shards on three Redis Cluster primaries").

Starts three redis-server in cluster mode (no replicas, no persistence) on
free loopback ports, one reboundd with `shards` S (24) and `redis_cluster`
owning every shard, and runs `rebound-bench w1` against it; then prints, per
primary, the Redis calls (INFO commandstats) and CPU (INFO cpu) the run cost,
their balance, and the Redis CPU per report summed over the three. With
--single it runs the same against one plain redis-server instead (no
cluster; `--single-shards` 0 for today's layout or S for S shards on it), the
figure the cluster is compared with. Not run by ctest.

  tests/bench/cluster-w1.py --build build --runs 3
  tests/bench/cluster-w1.py --build build --runs 3 --single --single-shards 0
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import RedisServer, _popen, free_port, wait_until, Client  # noqa: E402


def info_fields(node, section):
    out = {}
    for line in node.cmd("INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


def cpu_s(node):
    f = info_fields(node, "cpu")
    return float(f["used_cpu_sys"]) + float(f["used_cpu_user"])


def evalsha_calls(node):
    f = info_fields(node, "commandstats").get("cmdstat_evalsha")
    return int(dict(x.split("=") for x in f.split(","))["calls"]) if f else 0


def command_usec(node):
    """The microseconds the commands themselves took (INFO commandstats),
    the scripts' inner calls counted within their EVALSHA."""
    total = 0
    for k, v in info_fields(node, "commandstats").items():
        if k.startswith("cmdstat_") and k not in ("cmdstat_info", "cmdstat_config", "cmdstat_cluster"):
            c = dict(x.split("=") for x in v.split(","))
            if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_exec", "cmdstat_multi"):
                total += int(c["usec"])
    return total


def calls(node):
    total = 0
    for k, v in info_fields(node, "commandstats").items():
        if k.startswith("cmdstat_"):
            c = dict(x.split("=") for x in v.split(","))
            # the measuring itself (INFO, CONFIG) and the cluster's own are not the daemon's
            if k in ("cmdstat_info", "cmdstat_config", "cmdstat_cluster"):
                continue
            total += int(c["calls"])
    return total


def start_nodes(n, cluster):
    nodes = []
    for _ in range(n):
        extra = ["--save", ""]
        if cluster:
            extra += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                      "--cluster-port", str(free_port())]
        nodes.append(RedisServer(extra_args=extra))
    if cluster:
        p = _popen(["redis-cli", "--cluster", "create"] + [x.addr for x in nodes] +
                   ["--cluster-replicas", "0", "--cluster-yes"], stdout=-1, stderr=-1)
        out, err = p.communicate(timeout=30)
        if p.returncode != 0:
            raise SystemExit((out + err).decode(errors="replace"))
        wait_until(lambda: all("cluster_state:ok" in x.cmd("CLUSTER", "INFO") for x in nodes), 20, 0.1,
                   "the cluster to form")
    return nodes


def one_run(args, n_run):
    cluster = not args.single
    nodes = start_nodes(3 if cluster else 1, cluster)
    d = tempfile.mkdtemp(prefix="rebound-cw1-")
    try:
        conf = {"instance_id": "bench", "lease_ttl": "10s"} if (cluster or args.single_shards >= 2) else {}
        if cluster:
            conf.update({"redis_cluster": [x.addr for x in nodes], "shards": args.shards})
        elif args.single_shards >= 2:
            conf["shards"] = args.single_shards
        cpath = os.path.join(d, "reboundd.json")
        with open(cpath, "w") as f:
            json.dump(conf, f)
        policy = os.path.join(d, "policy.json")
        bench = os.path.join(args.build, "tests", "bench", "rebound-bench")
        with open(policy, "w") as f:
            f.write(subprocess.check_output([bench, "policy", "ingest"]).decode())
        port = free_port()
        log = open(os.path.join(d, "reboundd.log"), "wb")
        dproc = _popen([os.path.join(args.build, "reboundd"), "--listen", "127.0.0.1:%d" % port,
                        "--redis", nodes[0].addr, "--policy", policy, "-c", cpath], stdout=log, stderr=log)
        want = args.shards if cluster else max(args.single_shards, 0)

        def ready():
            try:
                with Client(("127.0.0.1", port), timeout=1.0) as c:
                    if want >= 2:
                        r = c.request({"op": "cluster"})
                        return r.get("ok") and len(r.get("serving", [])) == want
                    return c.request({"op": "stats"}).get("loaded") is True
            except (OSError, ConnectionError, TimeoutError, ValueError):
                return False
        wait_until(ready, 30, 0.1, "reboundd to serve every shard")
        for x in nodes:
            x.cmd("CONFIG", "RESETSTAT")
        # what the nodes spend idle (the cluster bus, the crons, the lease's
        # renewals): measured over 2 s before the run, reported apart
        idle0 = [cpu_s(x) for x in nodes]
        time.sleep(2.0)
        idle_per_s = [(cpu_s(x) - a) / 2.0 for x, a in zip(nodes, idle0)]
        cpu0 = [cpu_s(x) for x in nodes]
        t0 = time.monotonic()
        perf = None
        if os.environ.get("CLUSTER_W1_PERF"):
            # a profile of the first node for the run (perf report -i FILE)
            perf = subprocess.Popen(["perf", "record", "-g", "-o", os.environ["CLUSTER_W1_PERF"], "-p",
                                     str(dproc.pid if os.environ.get("CLUSTER_W1_PERF_DAEMON") else nodes[0].proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        load = os.getloadavg()[0]
        out = subprocess.run([bench, "w1", "--tcp", "127.0.0.1:%d" % port, "--daemon-pid", str(dproc.pid), "--redis", nodes[0].addr,
                              "--n", str(args.n), "--conns", str(args.conns), "--pipeline", str(args.pipeline)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        text = out.stdout.decode(errors="replace")
        cpu1 = [cpu_s(x) for x in nodes]
        if perf:
            perf.send_signal(2)
            perf.wait(30)
        wall = time.monotonic() - t0
        ncalls = [calls(x) for x in nodes]
        nscripts = [evalsha_calls(x) for x in nodes]
        usec = [command_usec(x) for x in nodes]
        # the bench's table: a header naming its columns, then the run's row
        rate = daemon_us = None
        lines = text.splitlines()
        for j, line in enumerate(lines):
            if "reports/s" in line and j + 1 < len(lines):
                head, row = line.split(), lines[j + 1].split()
                try:
                    rate = float(row[head.index("reports/s")])
                    # run, reports/s, wall, p50, p99, redis B, daemon B, daemon us/op, redis us/op, load
                    daemon_us = float(row[7]) if len(row) >= 10 else None
                except (ValueError, IndexError):
                    pass
                break
        cpu_us = [(b - a) * 1e6 / args.n for a, b in zip(cpu0, cpu1)]
        mean = sum(ncalls) / len(ncalls)
        res = {"run": n_run, "layout": "cluster" if cluster else "single", "shards": args.shards if cluster else
               args.single_shards, "n": args.n, "conns": args.conns, "pipeline": args.pipeline, "load": load, "rate": rate, "daemon_us_per_report": daemon_us, "calls": ncalls, "evalsha": nscripts,
               "script_us_per_report": [round(u / args.n, 2) for u in usec],
               "calls_spread_pct": [round((c - mean) * 100 / mean, 1) for c in ncalls] if mean else [],
               "redis_cpu_us_per_report": [round(x, 2) for x in cpu_us],
               "redis_cpu_us_per_report_sum": round(sum(cpu_us), 2),
               "idle_cpu_ms_per_s": [round(x * 1000, 1) for x in idle_per_s], "wall_s": round(wall, 2),
               "redis_cpu_us_per_report_sum_less_idle": round(sum(cpu_us) - sum(idle_per_s) * wall * 1e6 / args.n, 2)}
        dproc.terminate()
        dproc.wait(10)
        if args.verbose:
            sys.stdout.write(text)
        print(json.dumps(res))
        return res
    finally:
        for x in nodes:
            x.cleanup()
        shutil.rmtree(d, True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--pipeline", type=int, default=64)
    ap.add_argument("--single", action="store_true")
    ap.add_argument("--single-shards", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("REBOUND_BUILD_DIR", os.path.abspath(args.build))
    runs = [one_run(args, i) for i in range(args.runs)]
    runs.sort(key=lambda r: r["redis_cpu_us_per_report_sum"])
    print("median:", json.dumps(runs[len(runs) // 2]))


if __name__ == "__main__":
    main()
