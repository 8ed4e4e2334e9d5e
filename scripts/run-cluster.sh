#!/usr/bin/env bash
# A local Redis Cluster and reboundd on it, in the foreground, from a fresh
# Debian 12 machine (scripts/run.sh --cluster runs this): six redis-server
# nodes on 127.0.0.1:7000-7005 (three primaries, one replica each; data in
# var/cluster/<port>), formed with redis-cli --cluster create the first
# time, and reboundd with its keys under the hash tag {rebound}, every
# write batch confirmed by one replica.
#   scripts/run.sh --cluster                      # start it
#   redis-cli -p 7000 cluster nodes               # look at the cluster
#   scripts/run.sh --cluster --log-level debug    # extra reboundd flags
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh run
scripts/build.sh

var=$PWD/var/cluster
ports=(7000 7001 7002 7003 7004 7005)
mkdir -p "$var"
pids=()
cleanup() {
  [ -n "${daemon_pid:-}" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for port in "${ports[@]}"; do
  mkdir -p "$var/$port"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$var/$port" --daemonize no \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
    --appendonly yes --appendfsync everysec --save "" --logfile "$var/$port/redis.log" &
  pids+=($!)
done
for port in "${ports[@]}"; do
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
done
if ! redis-cli -p 7000 cluster info | grep -q '^cluster_state:ok'; then
  if [ "$(redis-cli -p 7000 cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')" = 1 ]; then
    seeds=(); for port in "${ports[@]}"; do seeds+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$var/create.log"
  fi
  for _ in $(seq 100); do
    redis-cli -p 7000 cluster info | grep -q '^cluster_state:ok' && break
    sleep 0.1
  done
fi
echo "Redis Cluster on 127.0.0.1:7000-7005 (data in var/cluster)" >&2

cat >"$var/reboundd.json" <<JSON
{
  "redis_cluster": ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002",
                    "127.0.0.1:7003", "127.0.0.1:7004", "127.0.0.1:7005"],
  "prefix": "{rebound}:",
  "redis_min_replicas": 1,
  "redis_replica_timeout": "1s"
}
JSON
metrics=${REBOUND_METRICS-127.0.0.1:9411}
echo "reboundd on 127.0.0.1:7411 and $PWD/var/rebound.sock" >&2
[ -n "$metrics" ] && echo "metrics at http://$metrics/metrics, status page at http://$metrics/" >&2
build/reboundd -c "$var/reboundd.json" --redis 127.0.0.1:7000 --unix "$PWD/var/rebound.sock" \
  --metrics "$metrics" "$@" &
daemon_pid=$!
wait "$daemon_pid"
