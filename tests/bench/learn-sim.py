#!/usr/bin/env python3
"""learn-sim: the w5 simulation of docs/performance.md. A synthetic
receiving world driven through the real reboundd and Redis, once with the
static policy and once with learned timing, side by side in one run.

Two redis-server + reboundd pairs run at once (tests/integration/harness.py
starts them on free loopback ports), one with the shipped fast policy
(greylist learns) and one with the same policy without `learn`. Time is
compressed as in tests/fast-policy.json, scaled by --ms-per-min (every
"<n>ms" of the fast policy, which is a policy minute there, becomes
n * ms-per-min ms), so that a client's and the daemon's millisecond of
noise is small next to a greylisting delay.

The world (seeded, the same for both arms): domains that greylist with a
delay of their own; that limit us, the sender, to a few messages per
period of their own; that have outages of their own length; whose
mailboxes stay full; and a few that never accept. The sender makes each
message's first attempt at its send time, reports each deferral (`bounce`
with the domain's reply) and each delivery (`delivered`), and attempts
again on each `retry` event.

Reported per arm and behaviour: messages deferred, delivered, mean and p90
time from the first deferral to delivery (in policy minutes), attempts per
delivered message (the first included), deferrals wasted (retries deferred
again) and give-ups; and whether every greylist retry stayed within the
class's bounds and every retry within the max age.
Exit status 1 with --check when the targets of learned timing fail (docs/performance.md, W5).
"""

import argparse
import json
import os
import random
import re
import select
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402

REPLIES = {
    "greylist": (451, "4.7.1", "451 4.7.1 Greylisted, please try again later"),
    "rate_limit": (421, "4.7.0", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to "
                                 "unexpected volume or user complaints"),
    "outage": (421, "4.3.2", "421 4.3.2 Service not available, closing transmission channel"),
    "full": (452, "4.2.2", "452 4.2.2 The email account that you tried to reach is over quota"),
    "never": (451, "4.3.0", "451 4.3.0 Temporary local problem, please try again"),
}
BEHAVIOURS = ["greylist", "rate_limit", "outage", "full", "never"]


def now_ms():
    return time.time() * 1000.0


def scaled_policy(src, scale, learn):
    """The fast policy with every "<n>ms" times scale; without learn, the
    classes' learn objects dropped (the static arm)."""
    with open(src) as f:
        p = json.load(f)

    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            m = re.fullmatch(r"(\d+)ms", v)
            if m:
                return "%dms" % (int(m.group(1)) * scale)
        return v

    p = walk(p)
    if not learn:
        for c in p["classes"].values():
            c.pop("learn", None)
    return p


class World:
    """Each domain's behaviour; times are policy minutes since the start."""

    def __init__(self, rng, counts, per_domain, window_min):
        self.domains = []
        self.messages = []  # (send_min, domain index, message number)
        for beh in BEHAVIOURS:
            for i in range(counts[beh]):
                d = {"name": "%s%02d.example" % (beh.replace("_", ""), i), "beh": beh}
                if beh == "greylist":
                    d["delay"] = rng.uniform(1, 25)  # accepts a retry this long after the first attempt
                elif beh == "rate_limit":
                    d["period"] = rng.uniform(10, 90)  # our allowance recovers after this
                    d["cap"] = rng.randint(2, 4)       # messages accepted per period
                    d["used"] = {}
                elif beh == "outage":
                    d["every"] = rng.uniform(6 * 60, 12 * 60)
                    d["down"] = rng.uniform(30, 180)
                    d["phase"] = rng.uniform(0, d["every"])
                self.domains.append(d)
                n = per_domain[beh]
                if beh == "rate_limit":
                    # bursts: a campaign of 6 every 6 hours
                    for k in range(n):
                        self.messages.append(((k // 6) * 360.0 + rng.uniform(0, 1), len(self.domains) - 1, k))
                else:
                    for k in range(n):
                        self.messages.append((rng.uniform(0, window_min), len(self.domains) - 1, k))
        self.messages.sort()

    def accepts(self, d, first_min, t_min, arm):
        beh = d["beh"]
        if beh == "greylist":
            return t_min - first_min >= d["delay"]
        if beh == "rate_limit":
            w = (arm, int(t_min // d["period"]))
            if d["used"].get(w, 0) < d["cap"]:
                d["used"][w] = d["used"].get(w, 0) + 1
                return True
            return False
        if beh == "outage":
            return (t_min + d["phase"]) % d["every"] >= d["down"]
        return False  # full, never


class LineConn:
    def __init__(self, addr):
        self.sock = socket.create_connection(addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.out = b""

    def send(self, obj):
        self.out += (json.dumps(obj, separators=(",", ":")) + "\n").encode()

    def flush(self):
        if self.out:
            self.sock.sendall(self.out)
            self.out = b""

    def lines(self):
        data = self.sock.recv(1 << 16)
        if not data:
            raise RuntimeError("reboundd closed the connection")
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in done if x]


class Arm:
    def __init__(self, name, policy, scale, world):
        self.name, self.policy, self.scale, self.world = name, policy, scale, world
        self.redis = harness.RedisServer()
        self.daemon = harness.Daemon(self.redis, policy=policy)
        self.req = LineConn(self.daemon.tcp_addr)
        self.sub = LineConn(self.daemon.tcp_addr)
        self.pending = []   # request contexts, in order
        self.msgs = {}      # id -> state
        self.acks = []
        self.open = 0
        self.violations = []
        self.learned_retries = 0
        self.at_due = True
        self.sub.send({"op": "subscribe", "group": "sim", "types": ["retry"]})
        self.sub.flush()

    def close(self):
        for c in (self.req, self.sub):
            c.sock.close()
        self.daemon.cleanup()
        self.redis.cleanup()

    def attempt(self, mid, t0, t):
        """An attempt at policy minute t: the message's send time, or its
        retry's due time, not when the event arrived, so that a stall of
        this busy machine does not count as the policy's time."""
        m = self.msgs[mid]
        d = self.world.domains[m["dom"]]
        m["attempts"] += 1
        if m["first"] is None:
            ok = self.world.accepts(d, t, t, self.name)
        else:
            ok = self.world.accepts(d, m["first"], t, self.name)
        if ok:
            if m["first"] is None:
                m["done"] = "direct"
                self.open -= 1
                return
            m["done"] = "delivered"
            m["delivered_at"] = t
            self.pending.append(("delivered", mid, now_ms()))
            self.req.send({"op": "delivered", "id": mid, "rcpt": m["rcpt"]})
            return
        if m["first"] is None:
            m["first"] = t
        else:
            m["wasted"] += 1
        code, enh, text = REPLIES[d["beh"]]
        self.pending.append(("bounce", mid, now_ms()))
        self.req.send({"op": "bounce", "id": mid, "rcpt": m["rcpt"], "code": code, "enhanced": enh, "text": text})

    def on_reply(self, r, bounds):
        kind, mid, sent = self.pending.pop(0)
        m = self.msgs[mid]
        if not r.get("ok"):
            raise RuntimeError("%s: %s refused: %r" % (self.name, kind, r))
        if kind == "delivered":
            self.open -= 1
            return
        if r["action"] == "retry":
            if r.get("learned"):
                self.learned_retries += 1
            first_ms = m["first_ms"] = m.get("first_ms") or sent
            lo, hi = bounds.get(r["class"], (None, None))
            if lo is not None and not (sent + lo - 1 <= r["retry_at"] <= now_ms() + hi + 1):
                self.violations.append("%s %s: retry in %.1f ms, bounds %d-%d" % (self.name, mid, r["retry_at"] - sent, lo, hi))
            if r["retry_at"] > first_ms + bounds["max_age"][r["class"]] + 2:
                self.violations.append("%s %s: retry past the max age" % (self.name, mid))
        else:
            m["done"] = "give_up"
            self.open -= 1

    def on_event(self, ev, t0):
        self.acks.append(ev["eid"])
        if ev.get("type") == "retry" and ev["id"] in self.msgs and not self.msgs[ev["id"]]["done"]:
            at = ev["due_at"] if self.at_due else now_ms()
            self.attempt(ev["id"], t0, (at - t0) / self.scale)


def pct(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def summarize(arm, world):
    out = {}
    for beh in BEHAVIOURS + ["all"]:
        ms = [m for m in arm.msgs.values() if m["first"] is not None and
              (beh == "all" or world.domains[m["dom"]]["beh"] == beh)]
        dl = [m for m in ms if m["done"] == "delivered"]
        ttd = [m["delivered_at"] - m["first"] for m in dl]
        out[beh] = {
            "deferred": len(ms),
            "delivered": len(dl),
            "mean_min": sum(ttd) / len(ttd) if ttd else 0.0,
            "p90_min": pct(ttd, 0.9),
            "attempts_per_delivered": sum(m["attempts"] for m in dl) / len(dl) if dl else 0.0,
            "wasted": sum(m["wasted"] for m in ms),
            "give_ups": sum(1 for m in ms if m["done"] == "give_up"),
            "unfinished": sum(1 for m in ms if not m["done"]),
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms-per-min", type=int, default=2, help="wall ms per policy minute (default 2)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the number of domains")
    ap.add_argument("--window-h", type=float, default=36, help="policy hours over which messages are sent")
    ap.add_argument("--attempt-at", choices=["due", "arrival"], default="due",
                    help="a retry's attempt is at its due_at (default: a stall of the machine is not policy "
                         "time) or when its event arrived (what the daemon sees)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the targets of learned timing (docs/performance.md, W5) hold")
    a = ap.parse_args()
    if not harness.have_reboundd() or not shutil.which("redis-server"):
        sys.stderr.write("learn-sim: needs reboundd (%s) and redis-server\n" % harness.reboundd_path())
        # ctest's skip code only for a missing redis-server, and not when it is required
        sys.exit(77 if harness.have_reboundd() and not os.environ.get("REBOUND_REQUIRE_REDIS") else 1)

    rng = random.Random(a.seed)
    counts = {b: max(1, int(round(n * a.scale))) for b, n in
              {"greylist": 40, "rate_limit": 8, "outage": 6, "full": 4, "never": 2}.items()}
    per = {"greylist": 25, "rate_limit": 24, "outage": 20, "full": 6, "never": 6}
    world = World(rng, counts, per, a.window_h * 60)
    k = a.ms_per_min
    src = harness.FAST_POLICY
    tmp = tempfile.mkdtemp(prefix="rebound-sim-")
    paths = {}
    for name, learn in (("static", False), ("learned", True)):
        paths[name] = os.path.join(tmp, name + ".json")
        with open(paths[name], "w") as f:
            json.dump(scaled_policy(src, k, learn), f)
    pol = scaled_policy(src, k, True)
    gl = pol["classes"]["greylist"]["delays"]
    bounds = {"greylist": (int(gl[0][0][:-2]), int(gl[-1][1][:-2])), "max_age": {
        name: int(c.get("max_age", pol["limits"]["max_age"])[:-2]) for name, c in pol["classes"].items()}}

    arms = []
    try:
        for name in ("static", "learned"):
            arms.append(Arm(name, paths[name], k, world))
            arms[-1].at_due = a.attempt_at == "due"
        # Every behaviour's reply is classified as meant.
        c = harness.Client(arms[0].daemon.tcp_addr)
        for beh, (code, enh, text) in REPLIES.items():
            r = c.request({"op": "classify", "code": code, "enhanced": enh, "text": text})
            sys.stderr.write("  %-10s -> %s\n" % (beh, r.get("class")))
        c.close()
        for arm in arms:
            for i, (_, dom, n) in enumerate(world.messages):
                mid = "m%d" % i
                arm.msgs[mid] = {"dom": dom, "rcpt": "u%d-%d@%s" % (n, i, world.domains[dom]["name"]),
                                 "first": None, "attempts": 0, "wasted": 0, "done": None}
            arm.open = len(world.messages)
        limit_min = a.window_h * 60 + 100 * 60  # past the max age of the last message
        t0 = now_ms()
        nxt = 0
        while any(arm.open for arm in arms):
            t = (now_ms() - t0) / k
            if t > limit_min:
                break
            while nxt < len(world.messages) and world.messages[nxt][0] <= t:
                # at the time the report goes out, which the daemon takes
                # as the first deferral, not at the time it was planned for
                for arm in arms:
                    arm.attempt("m%d" % nxt, t0, (now_ms() - t0) / k)
                nxt += 1
            for arm in arms:
                if arm.acks:
                    arm.sub.send({"op": "ack", "ids": arm.acks})
                    arm.acks = []
                arm.req.flush()
                arm.sub.flush()
            wait = 0.05
            if nxt < len(world.messages):
                wait = max(0.0, min(wait, (world.messages[nxt][0] * k - (now_ms() - t0)) / 1000.0))
            socks = {}
            for arm in arms:
                socks[arm.req.sock] = (arm, arm.req)
                socks[arm.sub.sock] = (arm, arm.sub)
            ready, _, _ = select.select(list(socks), [], [], wait)
            for s in ready:
                arm, conn = socks[s]
                for obj in conn.lines():
                    if "ok" not in obj:
                        arm.on_event(obj, t0)
                    elif conn is arm.req:
                        arm.on_reply(obj, bounds)
        took = (now_ms() - t0) / 1000.0
        res = {arm.name: summarize(arm, world) for arm in arms}
        for arm in arms:
            c = harness.Client(arm.daemon.tcp_addr)
            st = c.request({"op": "stats"})
            res[arm.name]["learned_retries"] = arm.learned_retries
            res[arm.name]["learned_domains"] = st.get("learned", {}).get("domains", 0)
            c.close()
        violations = [v for arm in arms for v in arm.violations]
    finally:
        for arm in arms:
            arm.close()

    print("w5 learned timing: %d domains, %d messages, 1 policy minute = %d ms, %.1f s, seed %d"
          % (len(world.domains), len(world.messages), k, took, a.seed))
    hdr = "%-10s %-8s %9s %9s %9s %9s %9s %7s %8s" % ("behaviour", "policy", "deferred", "delivered",
                                                      "mean min", "p90 min", "attempts", "wasted", "give-ups")
    print(hdr)
    for beh in BEHAVIOURS + ["all"]:
        for name in ("static", "learned"):
            x = res[name][beh]
            print("%-10s %-8s %9d %9d %9.1f %9.1f %9.2f %7d %8d" % (beh, name, x["deferred"], x["delivered"],
                  x["mean_min"], x["p90_min"], x["attempts_per_delivered"], x["wasted"], x["give_ups"]))
    s, l = res["static"], res["learned"]
    cut_time = 1 - l["greylist"]["mean_min"] / s["greylist"]["mean_min"] if s["greylist"]["mean_min"] else 0
    cut_waste = 1 - l["greylist"]["wasted"] / s["greylist"]["wasted"] if s["greylist"]["wasted"] else 0
    cut_waste_all = 1 - l["all"]["wasted"] / s["all"]["wasted"] if s["all"]["wasted"] else 0
    unfinished = s["all"]["unfinished"] + l["all"]["unfinished"]
    print("greylisted mail: mean time to delivery cut by %.0f %%, wasted retries cut by %.0f %% "
          "(all mail: %.0f %%); give-ups %d static, %d learned; retries at a learned time %d; "
          "bounds broken %d; unfinished %d"
          % (cut_time * 100, cut_waste * 100, cut_waste_all * 100, s["all"]["give_ups"], l["all"]["give_ups"],
             l["learned_retries"], len(violations), unfinished))
    for v in violations[:10]:
        print("  " + v)
    res["cut"] = {"greylist_mean": cut_time, "greylist_wasted": cut_waste, "all_wasted": cut_waste_all}
    res["violations"] = len(violations)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    holds = (cut_time >= 0.30 and cut_waste >= 0.20 and l["all"]["give_ups"] <= s["all"]["give_ups"]
             and not violations and unfinished == 0 and s["learned_retries"] == 0)
    print("must-holds: %s" % ("hold" if holds else "FAIL"))
    if a.check and not holds:
        sys.exit(1)


if __name__ == "__main__":
    main()
