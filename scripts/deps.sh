#!/usr/bin/env bash
# Installs what rebound needs, if missing (Debian 12).
#   scripts/deps.sh run    what building and running reboundd needs
#   scripts/deps.sh test   that, and what the test suite needs
# The package names are in scripts/packages/: run.list, and for `test`
# every test*.list as well (one package per line, # starts a comment).
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-test}
lists=(packages/run.list)
case $what in
  run) ;;
  test) lists+=(packages/test*.list) ;;
  *) echo "usage: scripts/deps.sh run|test" >&2; exit 2 ;;
esac

packages=()
while read -r p; do
  [ -n "$p" ] && packages+=("$p")
done < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "${lists[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm: NodeSource's nodejs carries its own, and Debian's npm package
# conflicts with it; a stock Debian nodejs needs Debian's npm.
if [ "$what" = test ] && ! command -v npm >/dev/null && printf '%s\n' "${packages[@]}" | grep -qx nodejs; then
  if ! dpkg-query -W -f='${Version}' nodejs 2>/dev/null | grep -q nodesource; then
    missing+=(npm)
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# postfix asks how to configure the system's mail service: answer "No
# configuration" (the tests run private instances with their own config).
if printf '%s\n' "${missing[@]}" | grep -qx postfix; then
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
