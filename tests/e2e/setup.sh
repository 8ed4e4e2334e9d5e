#!/usr/bin/env bash
# Installs what the end-to-end test runs from npm (Haraka, at the versions of
# the committed package-lock.json) into DIR/node_modules: `npm ci`, skipped
# when DIR already holds an install of the same lock file.
#   tests/e2e/setup.sh DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dst=${1:?usage: setup.sh DIR}
command -v npm >/dev/null || { echo "npm is missing: scripts/deps.sh test installs it" >&2; exit 1; }
mkdir -p "$dst"
if [ -d "$dst/node_modules/Haraka" ] && cmp -s "$here/package-lock.json" "$dst/package-lock.json"; then
  echo "Haraka already installed in $dst"
  exit 0
fi
cp "$here/package.json" "$here/package-lock.json" "$dst/"
cd "$dst"
npm ci --no-audit --no-fund --loglevel=error
test -f node_modules/Haraka/bin/haraka
echo "Haraka $(node -p 'require("./node_modules/Haraka/package.json").version') installed in $dst"
