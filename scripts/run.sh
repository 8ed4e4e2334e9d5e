#!/usr/bin/env bash
# Runs reboundd in the foreground, from a fresh Debian 12 machine: installs
# what is missing, builds, and, unless REBOUND_REDIS names a Redis to use,
# starts a private redis-server (loopback only, data and AOF in var/redis).
# reboundd listens on 127.0.0.1:7411 and on var/rebound.sock, and serves
# Prometheus metrics at http://127.0.0.1:9411/metrics (status page at /). The policy is the
# source tree's config/policy.json (the daemon's search order finds it).
#   REBOUND_REDIS=127.0.0.1:6379 scripts/run.sh     # use an existing Redis
#   REBOUND_METRICS=127.0.0.1:9500 scripts/run.sh   # metrics elsewhere ("" for none)
#   scripts/run.sh --log-level debug                # extra reboundd flags
#   scripts/run.sh --policy tests/fast-policy.json  # minutes last milliseconds
#   scripts/run.sh --cluster                        # on a local Redis Cluster (scripts/run-cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --cluster ]; then
  shift
  exec scripts/run-cluster.sh "$@"
fi
scripts/deps.sh run
scripts/build.sh

var=$PWD/var
mkdir -p "$var/redis"
redis=${REBOUND_REDIS:-}
redis_pid=""
if [ -z "$redis" ]; then
  port=${REBOUND_REDIS_PORT:-6380}
  redis-server --bind 127.0.0.1 --port "$port" --dir "$var/redis" --daemonize no \
    --appendonly yes --appendfsync everysec --save "" --logfile "$var/redis/redis.log" &
  redis_pid=$!
  trap '[ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; wait 2>/dev/null' EXIT
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis=127.0.0.1:$port
  echo "private redis-server on $redis (data in var/redis)" >&2
fi

metrics=${REBOUND_METRICS-127.0.0.1:9411}
echo "reboundd on 127.0.0.1:7411 and $var/rebound.sock" >&2
[ -n "$metrics" ] && echo "metrics at http://$metrics/metrics, status page at http://$metrics/" >&2
build/reboundd --redis "$redis" --unix "$var/rebound.sock" --metrics "$metrics" "$@" &
daemon_pid=$!
trap 'kill -TERM $daemon_pid 2>/dev/null; wait $daemon_pid; [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
wait $daemon_pid
