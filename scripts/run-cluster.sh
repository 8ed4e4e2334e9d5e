#!/usr/bin/env bash
# A local Redis Cluster and three reboundd on it, in the foreground, from a
# fresh Debian 12 machine (scripts/run.sh --cluster runs this): six
# redis-server nodes on 127.0.0.1:7000-7005 (three primaries, one replica
# each; data in var/cluster/<port>), formed with redis-cli --cluster create
# the first time, and reboundd on 127.0.0.1:7411, 7412 and 7413 sharing
# one schedule under a lease (one owns it, the others relay to it and take
# over when it stops), its keys under the hash tag {rebound}, every write
# batch confirmed by one replica.
#   scripts/run.sh --cluster                      # start it
#   redis-cli -p 7000 cluster nodes               # look at the cluster
#   scripts/run.sh --cluster --log-level debug    # extra reboundd flags
#   REBOUND_SHARDS=24 scripts/run.sh --cluster    # the schedule in 24 shards
#                        spread over the three primaries (keys "rebound:"...)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh run
scripts/build.sh

var=$PWD/var/cluster
ports=(7000 7001 7002 7003 7004 7005)
mkdir -p "$var"
pids=()
daemons=()
cleanup() {
  for p in "${daemons[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${daemons[@]}"; do wait "$p" 2>/dev/null || true; done
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

metrics=${REBOUND_METRICS-127.0.0.1:9411}
# With REBOUND_SHARDS the shards live apart on the primaries (each shard's
# keys under a tag of its own, so the prefix has none).
layout='"prefix": "{rebound}:",'
if [ -n "${REBOUND_SHARDS:-}" ]; then
  layout="\"prefix\": \"rebound:\", \"shards\": $REBOUND_SHARDS,"
fi
for i in 1 2 3; do
  cat >"$var/reboundd-$i.json" <<JSON
{
  "redis_cluster": ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002",
                    "127.0.0.1:7003", "127.0.0.1:7004", "127.0.0.1:7005"],
  $layout
  "redis_min_replicas": 1,
  "redis_replica_timeout": "1s",
  "lease_ttl": "10s",
  "instance_id": "r$i",
  "listen": "127.0.0.1:741$i",
  "advertise": "127.0.0.1:741$i",
  "unix_path": ""
}
JSON
  flags=(-c "$var/reboundd-$i.json" --redis 127.0.0.1:7000)
  # the first instance also has the Unix socket and the metrics endpoint
  if [ "$i" = 1 ]; then
    flags+=(--unix "$PWD/var/rebound.sock" --metrics "$metrics")
  fi
  build/reboundd "${flags[@]}" "$@" &
  daemons+=($!)
done
echo "reboundd r1, r2, r3 on 127.0.0.1:7411, 7412, 7413 (and r1 on $PWD/var/rebound.sock); any of them takes any request" >&2
[ -n "$metrics" ] && echo "r1's metrics at http://$metrics/metrics, status page at http://$metrics/" >&2
wait "${daemons[@]}"
