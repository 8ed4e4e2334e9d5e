#!/usr/bin/env python3
"""Refuses an #include that goes up a floor, and a folder-level circle.

Every folder of the C sources is one floor (docs/architecture.md has the
picture). A floor may include its own headers and those of the floors it
stands on, listed in LAYERS below, and only the outside libraries listed for
it (so `#include <uv.h>` in queue/ is refused although /usr/include has
it). The build enforces the quoted includes too (each library sees only its
own folder and what it links); this check reads the sources, so it also
covers the system headers, files the build does not compile, and says what
is wrong in one line per include.

Usage: scripts/check-layers.py [--root DIR]   exit 0 clean, 1 with findings
       scripts/check-layers.py --self-test     shows the check fails on a
                                               planted upward include, an
                                               outside header and a circle
"""
import argparse
import os
import re
import sys

# floor: (folder, floors it may include besides itself, outside libraries)
# Outside libraries are named by header: uv, hiredis, jansson, mhd, systemd.
LAYERS = {
    "queue": ("queue", [], []),
    "proto": ("proto", [], ["jansson"]),
    "config": ("config", ["queue"], ["jansson"]),
    "base": ("daemon/base", ["queue", "proto", "config"], ["uv"]),
    "redis": ("daemon/redis", ["base", "queue"], ["uv", "hiredis"]),
    "store": ("daemon/store", ["redis", "base", "proto", "queue", "config"], ["uv", "hiredis"]),
    "net": ("daemon/net", ["base", "proto", "config", "queue"], ["uv", "jansson"]),
    "events": ("daemon/events", ["net", "store", "base", "proto", "config", "queue"],
               ["uv", "hiredis", "jansson"]),
    "schedule": ("daemon/schedule", ["events", "store", "base", "proto", "config", "queue"],
                 ["uv", "hiredis", "jansson"]),
    "ops": ("daemon/ops", ["schedule", "events", "net", "store", "base", "proto", "config", "queue"],
            ["uv", "hiredis", "jansson"]),
    # the top floor: main.c, metrics.c, notify.c; it wires every floor
    "daemon": ("daemon", ["ops", "schedule", "events", "net", "store", "redis", "base", "proto", "config",
                          "queue"], ["uv", "hiredis", "jansson", "mhd", "systemd"]),
    "tools": ("tools", ["proto", "config", "queue"], ["jansson"]),
}

# Headers that name one floor's files although it may include their folder.
FORBIDDEN = {
    # the Redis link knows no struct daemon: it is reused by its own test
    "redis": ["base/daemon.h"],
}

OUTSIDE = {
    "uv": re.compile(r"^uv(\.h|/)"),
    "hiredis": re.compile(r"^hiredis/"),
    "jansson": re.compile(r"^jansson"),
    "mhd": re.compile(r"^microhttpd\.h$"),
    "systemd": re.compile(r"^systemd/"),
}

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def floor_of(path):
    """The floor a source file (relative path) belongs to, or None."""
    d = os.path.dirname(path)
    for name, (folder, _, _) in LAYERS.items():
        if d == folder:
            return name
    return None


def target_floor(inc, src_floor):
    """The floor a quoted include names, or None when it names none."""
    head = inc.split("/", 1)[0] if "/" in inc else None
    if head in LAYERS and head != "daemon":
        return head
    if head is None and src_floor == "daemon":
        return "daemon"  # "metrics.h" next to main.c
    return None


def sources(root):
    for name, (folder, _, _) in LAYERS.items():
        d = os.path.join(root, folder)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if f.endswith((".c", ".h")):
                rel = os.path.join(folder, f)
                with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
                    yield rel, fh.read().splitlines()


def check(files):
    """files: iterable of (relative path, lines). Returns a list of findings."""
    findings = []
    edges = {}
    for rel, lines in files:
        src = floor_of(rel)
        if src is None:
            continue
        _, may, libs = LAYERS[src]
        for no, line in enumerate(lines, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            kind, inc = m.groups()
            where = "%s:%d: #include %s%s%s" % (rel, no, kind, inc, '"' if kind == '"' else ">")
            if kind == "<":
                for lib, pat in OUTSIDE.items():
                    if pat.search(inc) and lib not in libs:
                        findings.append("%s: %s/ may not use %s (it may use: %s)" %
                                        (where, LAYERS[src][0], lib, ", ".join(libs) or "libc only"))
                continue
            dst = target_floor(inc, src)
            if dst is None:
                findings.append("%s: names no floor (write \"folder/file.h\")" % where)
                continue
            if inc in FORBIDDEN.get(src, []):
                findings.append("%s: %s/ may not include %s" % (where, LAYERS[src][0], inc))
            if dst == src:
                continue
            edges.setdefault(src, set()).add(dst)
            if dst not in may:
                findings.append("%s: goes up (%s/ stands on: %s); make it a hook that main.c registers" %
                                (where, LAYERS[src][0], ", ".join(may) or "nothing"))
    findings.extend(circles(edges))
    return findings


def circles(edges):
    """Folder-level cycles in the include graph, one finding each."""
    found, seen = [], set()
    state = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cyc = path[path.index(m):] + [m]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    found.append("circle between folders: " + " -> ".join(cyc))
            elif not state.get(m):
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(edges):
        if not state.get(n):
            visit(n, [n])
    return found


def self_test(root):
    """Plants each kind of fault into the real tree (in memory) and checks
    that it is reported; the real tree must be clean."""
    base = list(sources(root))
    ok = True
    if check(base):
        print("self-test: the tree itself has findings")
        ok = False

    def planted(path, line):
        return [(rel, lines + [line] if rel == path else lines) for rel, lines in base]

    cases = [
        ("upward include", planted("daemon/net/conn.c", '#include "ops/ops.h"'), "goes up"),
        ("outside header", planted("queue/heap.c", "#include <uv.h>"), "may not use uv"),
        ("no rbd in redis/", planted("daemon/redis/redis_link.c", '#include "base/daemon.h"'),
         "may not include base/daemon.h"),
        ("circle", planted("daemon/events/events.c", '#include "schedule/firing.h"'), "circle between folders"),
    ]
    for name, files, want in cases:
        got = check(files)
        if not any(want in f for f in got):
            print("self-test: %s was not refused (findings: %s)" % (name, got))
            ok = False
        else:
            print("self-test: %s refused: %s" % (name, next(f for f in got if want in f)))
    print("self-test: %s" % ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        return self_test(a.root)
    findings = check(sources(a.root))
    for f in findings:
        print(f)
    if findings:
        print("check-layers: %d finding(s); docs/architecture.md shows which floor stands on which" % len(findings))
        return 1
    print("check-layers: every include goes down, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
