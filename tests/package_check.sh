#!/usr/bin/env bash
# The Debian package test (ctest package.deb): builds the package with
# scripts/package.sh (which fails on any lintian error), checks what it
# holds, extracts it and runs the extracted reboundd -t on the extracted
# config and policy.
#   tests/package_check.sh SOURCE_DIR OUT_DIR VERSION
# Exit 77 (skipped) when the packaging tools are not installed
# (scripts/packages/test-packaging.list).
set -euo pipefail
src=$1 out=$2 version=$3
for tool in dpkg-buildpackage dh lintian scdoc; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed (scripts/deps.sh test)"; exit 77; }
done
fail() { echo "FAIL: $*" >&2; exit 1; }

rm -rf "$out"
deb=$("$src/scripts/package.sh" "$out" | tail -1)
case $(basename "$deb") in
  "rebound_${version}_$(dpkg --print-architecture).deb") ;;
  *) fail "built $deb, expected rebound_${version}_<arch>.deb (debian/changelog and CMakeLists.txt must agree)" ;;
esac

contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/sbin/reboundd ./usr/bin/reboundctl \
         ./usr/share/man/man8/reboundd.8.gz ./usr/share/man/man1/reboundctl.1.gz \
         ./usr/share/man/man5/reboundd.json.5.gz ./usr/share/man/man5/rebound-policy.5.gz \
         ./lib/systemd/system/reboundd.service ./usr/lib/sysusers.d/rebound.conf \
         ./etc/rebound/reboundd.json ./etc/rebound/policy.json ./usr/share/rebound/policy.json \
         ./usr/share/doc/rebound/examples/reboundd.example.json ./usr/share/doc/rebound/copyright \
         ./usr/share/doc/rebound/README.md ./usr/share/doc/rebound/CHANGELOG.md \
         ./usr/share/doc/rebound/operations.md ./usr/share/doc/rebound/changelog.gz; do
  # dh_compress gzips documents over 4 KiB: either form will do
  grep -qxF -e "$f" -e "$f.gz" <<<"$contents" || fail "$f is not in the package"
done
! grep -q '\.scd$\|/tests/\|rebound-bench' <<<"$contents" || fail "sources or test programs in the package"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/rebound-deb.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
dpkg-deb --ctrl-tarfile "$deb" | tar -xf - -C "$scratch" ./conffiles ./postinst
[ "$(sort "$scratch/conffiles")" = $'/etc/rebound/policy.json\n/etc/rebound/reboundd.json' ] ||
  fail "conffiles: $(cat "$scratch/conffiles")"
# the user must exist before the unit is started
grep -n 'systemd-sysusers\|deb-systemd-invoke' "$scratch/postinst" | head -1 | grep -q sysusers ||
  fail "postinst starts the unit before it creates the user"

root=$scratch/root
dpkg-deb -x "$deb" "$root"
v=$("$root/usr/sbin/reboundd" --version)
[ "$v" = "reboundd $version (systemd notify: yes, metrics endpoint: yes)" ] || fail "reboundd --version: $v"
t=$("$root/usr/sbin/reboundd" -t -v -c "$root/etc/rebound/reboundd.json") ||
  fail "reboundd -t on the shipped config: $t"
grep -qF "configuration and policy $root/etc/rebound/policy.json OK" <<<"$t" || fail "reboundd -t: $t"
grep -qF '"unix_path": "/run/rebound/rebound.sock"' <<<"$t" || fail "the shipped config's socket: $t"
grep -qx 'ExecStart=/usr/sbin/reboundd -c /etc/rebound/reboundd.json' "$root/lib/systemd/system/reboundd.service" ||
  fail "the unit's ExecStart"
# a packaged binary knows nothing of the tree it was built in
c=$("$root/usr/bin/reboundctl" classify --check --json 2>&1 || true)
grep -qF '"/etc/rebound/policy.json: No such file or directory"' <<<"$c" ||
  fail "the packaged reboundctl's default policy is not /etc/rebound/policy.json: $c"
! grep -qa 'rebound-package\.' "$root/usr/sbin/reboundd" "$root/usr/bin/reboundctl" ||
  fail "a build path is compiled into the packaged binaries"
c=$("$root/usr/bin/reboundctl" classify --policy "$root/etc/rebound/policy.json" --code 452 --enhanced 4.2.2 \
  --text "Mailbox over quota" --json) || fail "packaged reboundctl classify: $c"
grep -qF '"class":"mailbox_full"' <<<"$c" || fail "packaged reboundctl classify: $c"
for page in "$root"/usr/share/man/man*/*.gz; do
  err=$(MANWIDTH=80 man --warnings=all -l "$page" 2>&1 >/dev/null) || fail "man -l $page"
  [ -z "$err" ] || fail "man -l $page: $err"
done
echo "ok: $deb"
