#!/usr/bin/env bash
# Builds the Debian package from a clean copy of this tree and checks it
# with lintian (no error allowed):
#   scripts/package.sh [OUTDIR]      default build/package
# Prints the path of rebound_<version>_<arch>.deb. Needs the packages of
# scripts/packages/run.list and test-packaging.list (scripts/deps.sh test).
# dpkg-buildpackage writes next to the source directory, so the build runs
# in a scratch copy: nothing outside OUTDIR changes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-build/package}")
work=$(mktemp -d "${TMPDIR:-/tmp}/rebound-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/rebound
mkdir -p "$src" "$out"

# A clean tree: the files git knows (with their uncommitted edits) and new
# files it does not ignore; never build/ or var/.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$src"
else
  tar --exclude=./build --exclude=./var --exclude=./.git -cf - . | tar -xf - -C "$src"
fi

(cd "$src" && DEB_BUILD_OPTIONS="parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
  dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
  tail -40 "$work/build.log" >&2
  echo "package.sh: dpkg-buildpackage failed" >&2
  exit 1
}
debs=("$work"/rebound_*.deb)
[ -f "${debs[0]}" ] || { echo "package.sh: no .deb was built" >&2; exit 1; }
deb=$out/$(basename "${debs[0]}")
cp "${debs[0]}" "$deb"

# Errors fail; warnings and notes are shown.
lintian --fail-on error --suppress-tags-from-file /dev/null "$deb" >&2 || {
  echo "package.sh: lintian found errors in $deb" >&2
  exit 1
}
echo "$deb"
