#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and fuzzes each for a while.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs among request classify policy
# config record event offline (default: all). Runs one target at a time,
# one job, at nice 19: the machine stays usable. New inputs collect in
# $FUZZ_DIR/corpus/<target> (default build/fuzz/corpus), kept between runs;
# the seeds in tests/fuzz/corpus are read, never written. A crash leaves
# its input as $FUZZ_DIR/crashes/<target>-crash-* and makes the script
# fail; add the input to tests/fuzz/corpus/<target> with the fix, so that
# the seed replay keeps it fixed. The last lines of each run (coverage,
# features, executions) are printed, and the whole log is kept in
# $FUZZ_DIR/logs.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(request classify policy config record event offline)
dict_of() { case $1 in offline) echo classify ;; *) echo "$1" ;; esac; }

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
case $seconds in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "unknown target $t (known: ${all[*]})" >&2; exit 2; }
done

build=${BUILD_DIR:-build/fuzz}
out=${FUZZ_DIR:-$build}
CC=${CC:-clang} cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DREBOUND_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

mkdir -p "$out/crashes" "$out/logs"
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t"
  log=$out/logs/$t.log
  echo "== fuzz_$t for ${seconds}s"
  set +e
  nice -n 19 "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -dict="tests/fuzz/$(dict_of "$t").dict" -artifact_prefix="$out/crashes/$t-" -print_final_stats=1 \
    "$out/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
  if [ $rc -ne 0 ]; then
    echo "fuzz_$t FAILED (exit $rc): see $log and $out/crashes/"
    grep -m1 -E 'ERROR|runtime error|deadly signal' "$log" || true
    failed=1
  fi
done
exit $failed
