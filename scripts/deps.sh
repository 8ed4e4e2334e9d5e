#!/usr/bin/env bash
# Installs what rebound needs to build and test, if missing (Debian 12).
set -euo pipefail

# libsystemd-dev: sd_notify; libmicrohttpd-dev: the /metrics endpoint; systemd:
# systemd-analyze for the unit test; prometheus: promtool for the metrics test.
packages=(build-essential cmake pkg-config libuv1-dev libhiredis-dev libjansson-dev
          libcmocka-dev redis-server redis-tools python3
          libsystemd-dev libmicrohttpd-dev systemd prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
