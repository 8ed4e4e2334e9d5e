#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# missing, checks the layering, builds twice (plain, and with
# AddressSanitizer + UBSan), and runs every unit and integration test under
# ctest in both builds. Integration
# tests start their own redis-server on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test

# Before anything is built: an #include that goes up a floor, or a circle
# between folders, fails the suite at once (docs/architecture.md).
python3 scripts/check-layers.py

# redis-server is installed above: an integration test that would skip
# without it fails instead.
export REBOUND_REQUIRE_REDIS=1

run_suite() {
  local dir=$1; shift
  echo "== build $dir ($*)"
  BUILD_DIR=$dir BUILD_TYPE=Debug scripts/build.sh "$@"
  echo "== test $dir"
  (cd "$dir" && ctest --output-on-failure --timeout 300 -j2)
}

run_suite build/test-plain -DREBOUND_SANITIZE=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite build/test-asan -DREBOUND_SANITIZE=ON
echo "== all tests passed"
