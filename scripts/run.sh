#!/usr/bin/env bash
# Runs reboundd in the foreground, from a fresh Debian 12 machine: installs
# what is missing, builds, and, unless REBOUND_REDIS names a Redis to use,
# starts a private redis-server (loopback only, data and AOF in var/redis).
# reboundd listens on 127.0.0.1:7411 and on var/rebound.sock.
#   REBOUND_REDIS=127.0.0.1:6379 scripts/run.sh     # use an existing Redis
#   scripts/run.sh --log-level debug                # extra reboundd flags
set -euo pipefail
cd "$(dirname "$0")/.."
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

build/reboundd --redis "$redis" --policy config/policy.json --unix "$var/rebound.sock" "$@" &
daemon_pid=$!
trap 'kill -TERM $daemon_pid 2>/dev/null; wait $daemon_pid; [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
wait $daemon_pid
