"""The socket protocol against the real daemon with the shipped default
policy: classification of typical replies, validation and error replies,
req echo, pipelining, the line limit, idempotent bounces, every op, and the
Unix socket."""

import json
import os
import shutil
import socket
import tempfile
import unittest

from harness import (DEFAULT_POLICY, GREYLIST, OVER_QUOTA, USER_UNKNOWN, DaemonTestCase, bounce, now_ms,
                     stats_pending, unique_id)

MIN = 60 * 1000
HOUR = 60 * MIN


class ProtocolTest(DaemonTestCase):
    policy = DEFAULT_POLICY

    def setUp(self):
        super().setUp()
        # these tests send many bad lines on one connection: past the
        # default error_limit (20) it would be closed
        config = os.path.join(tempfile.mkdtemp(prefix="rebound-cfg-"), "reboundd.json")
        self.addCleanup(shutil.rmtree, os.path.dirname(config), True)
        with open(config, "w") as f:
            json.dump({"error_limit": 100000}, f)
        self.redis, self.daemon, self.c = self.start_all(extra_args=["-c", config])

    def bounce_ok(self, reply_kind, c=None, **extra):
        id = unique_id()
        t0 = now_ms()
        r = (c or self.c).request(bounce(id, **dict(reply_kind, **extra)))
        t1 = now_ms()
        self.assertOk(r)
        self.assertEqual(r.get("id"), id)
        self.assertIn(r.get("action"), ("retry", "give_up", "suppress"))
        if r["action"] == "retry":
            self.assertIsInstance(r.get("retry_at"), int, r)
            self.assertEqual(r.get("attempt"), 1, r)
        else:
            self.assertNotIn("retry_at", r)
        return id, r, t0, t1

    def assertRetryWindow(self, r, t0, t1, lo_ms, hi_ms):
        # small slack for the daemon's clock read between t0 and t1
        self.assertGreaterEqual(r["retry_at"], t0 + lo_ms - 1000, r)
        self.assertLessEqual(r["retry_at"], t1 + hi_ms + 1000, r)

    # -- classification with the default policy

    def test_greylist(self):
        id, r, t0, t1 = self.bounce_ok(GREYLIST)
        self.assertEqual(r["class"], "greylist")
        self.assertEqual(r["action"], "retry")
        self.assertRetryWindow(r, t0, t1, 5 * MIN, 30 * MIN)
        # the same reply with the enhanced code only inside the text
        _, r2, t0, t1 = self.bounce_ok(dict(code=451, text="451 4.7.1 Greylisted, please try again later"))
        self.assertEqual((r2["class"], r2["action"]), ("greylist", "retry"))
        self.assertRetryWindow(r2, t0, t1, 5 * MIN, 30 * MIN)
        # jittered: many greylisted messages do not all get the same time
        times = set()
        for _ in range(10):
            _, rr, t0, _ = self.bounce_ok(GREYLIST)
            times.add(rr["retry_at"] - t0)
        self.assertGreater(len(times), 3, "greylist retries are not spread: %r" % sorted(times))

    def test_user_unknown_suppress(self):
        id, r, _, _ = self.bounce_ok(USER_UNKNOWN)
        self.assertEqual(r["class"], "hard_invalid")
        self.assertEqual(r["action"], "suppress")
        if "reason" in r:
            self.assertEqual(r["reason"], "hard_invalid")
        # nothing stays pending for a suppressed address
        self.assertError(self.c.request({"op": "get", "id": id}), "not_found")

    def test_over_quota_mailbox_full(self):
        _, r, t0, t1 = self.bounce_ok(OVER_QUOTA)
        self.assertEqual(r["class"], "mailbox_full")
        self.assertEqual(r["action"], "retry")
        # first delay 12 h; allow a generous jitter either way
        self.assertRetryWindow(r, t0, t1, 9 * HOUR, 15 * HOUR)

    def test_congestion(self):
        for kind in (dict(code=452, enhanced="4.4.5"),
                     dict(code=452, enhanced="4.4.5", text="452 4.4.5 Server busy, try again later")):
            _, r, t0, t1 = self.bounce_ok(kind)
            self.assertEqual((r["class"], r["action"]), ("congestion", "retry"), kind)
            self.assertRetryWindow(r, t0, t1, 15 * MIN, 60 * MIN)

    def test_dmarc_auth_failure_gives_up_never_suppresses(self):
        text = ("550 5.7.26 Unauthenticated email from example.net is not accepted due to "
                "domain's DMARC policy. Please contact the administrator of example.net domain.")
        id, r, _, _ = self.bounce_ok(dict(code=550, enhanced="5.7.26", text=text))
        self.assertEqual(r["class"], "auth_failure")
        self.assertEqual(r["action"], "give_up")
        self.assertNotEqual(r["action"], "suppress")
        # the same reply, enhanced code only in the text
        _, r2, _, _ = self.bounce_ok(dict(code=550, text=text))
        self.assertEqual((r2["class"], r2["action"]), ("auth_failure", "give_up"))

    def test_classify_dry_run(self):
        depth = stats_pending(self.assertOk(self.c.request({"op": "stats"})))
        r = self.assertOk(self.c.request({"op": "classify", "code": 451, "enhanced": "4.7.1",
                                          "text": "Greylisted, please try again later", "req": 7}))
        self.assertEqual(r["req"], 7)
        self.assertEqual(r["class"], "greylist")
        self.assertEqual(r["action"], "retry")
        r = self.assertOk(self.c.request({"op": "classify", "code": 550, "enhanced": "5.1.1",
                                          "text": "User unknown"}))
        self.assertEqual((r["class"], r["action"]), ("hard_invalid", "suppress"))
        r = self.assertOk(self.c.request({"op": "classify", "code": 452, "text": "452 4.2.2 over quota"}))
        self.assertEqual((r["class"], r["action"]), ("mailbox_full", "retry"))
        self.assertEqual(stats_pending(self.assertOk(self.c.request({"op": "stats"}))), depth)

    # -- validation

    def test_bad_requests_keep_connection_usable(self):
        ok_bounce = bounce("bad-base", 451)
        cases = [
            (b"{not json", "bad_request"),
            (b"[1,2,3]", "bad_request"),
            (b'"just a string"', "bad_request"),
            (b"42", "bad_request"),
            (b'{"op":"ping"', "bad_request"),
            (b'{"op":"ping"} trailing', "bad_request"),
            (b"\xff\xfe{\x00}", "bad_request"),
            (b"{}", "bad_request"),
            (b'{"op":5}', "bad_request"),
            (b'{"op":null}', "bad_request"),
            (b'{"op":"launch_missiles"}', "unknown_op"),
            (b'{"op":"PING"}', "unknown_op"),
        ]
        objs = [
            ({"op": "bounce", "rcpt": "a@example.com", "code": 451}, "bad_request"),  # no id
            ({"op": "bounce", "id": "x1", "code": 451}, "bad_request"),  # no rcpt
            ({"op": "bounce", "id": "x1", "rcpt": "a@example.com"}, "bad_request"),  # no code
            (dict(ok_bounce, id=17), "bad_request"),
            (dict(ok_bounce, id=""), "bad_request"),
            (dict(ok_bounce, id="has space"), "bad_request"),
            (dict(ok_bounce, id="ctl\x01char"), "bad_request"),
            (dict(ok_bounce, id="\u00e9t\u00e9"), "bad_request"),
            (dict(ok_bounce, id=["x"]), "bad_request"),
            (dict(ok_bounce, rcpt=5), "bad_request"),
            (dict(ok_bounce, rcpt="no-at-sign"), "bad_request"),
            (dict(ok_bounce, code="451"), "bad_request"),
            (dict(ok_bounce, code=451.5), "bad_request"),
            (dict(ok_bounce, code=199), "bad_request"),
            (dict(ok_bounce, code=600), "bad_request"),
            (dict(ok_bounce, enhanced="4.7"), "bad_request"),
            (dict(ok_bounce, enhanced="9.9.9.9"), "bad_request"),
            (dict(ok_bounce, enhanced=471), "bad_request"),
            (dict(ok_bounce, text=5), "bad_request"),
            (dict(ok_bounce, meta="not an object"), "bad_request"),
            (dict(ok_bounce, meta=[1]), "bad_request"),
            (dict(ok_bounce, not_before="soon"), "bad_request"),
            ({"op": "get"}, "bad_request"),
            ({"op": "get", "id": 1}, "bad_request"),
            ({"op": "cancel"}, "bad_request"),
            ({"op": "delivered"}, "bad_request"),
            ({"op": "subscribe"}, "bad_request"),
            ({"op": "subscribe", "group": 3}, "bad_request"),
            ({"op": "ack", "ids": "1-1"}, "bad_request"),
            ({"op": "ack", "ids": [1]}, "bad_request"),
            ({"op": "classify", "code": "x"}, "bad_request"),
        ]
        cases += [(json.dumps(o).encode(), code) for o, code in objs]
        for line, code in cases:
            with self.subTest(line=line[:80]):
                self.c.raw(line + b"\n")
                self.assertError(self.c.read_reply(), code, repr(line[:80]))
                self.assertPing(self.c)
        # an error reply echoes req when the line was an object with one
        r = self.c.request({"op": "bounce", "req": "r-1", "id": "x"})
        self.assertError(r, "bad_request")
        self.assertEqual(r.get("req"), "r-1")
        r = self.c.request({"op": "nope", "req": 99})
        self.assertError(r, "unknown_op")
        self.assertEqual(r.get("req"), 99)
        # and none of it left state behind
        self.assertEqual(stats_pending(self.assertOk(self.c.request({"op": "stats"}))), 0)

    def test_field_size_limits(self):
        base = bounce(unique_id(), **GREYLIST)
        for o in (dict(base, id="i" * 201), dict(base, text="t" * 4097),
                  dict(base, meta={"k": "v" * 4200})):
            r = self.c.request(o)
            self.assertFalse(r.get("ok"), r)
            self.assertIn(r["error"]["code"], ("bad_request", "too_large"))
            self.assertPing(self.c)
        # at the limits it is accepted
        self.assertOk(self.c.request(dict(base, id="i" * 200)))
        self.assertOk(self.c.request(dict(base, id=unique_id(), text="t" * 4000)))

    def test_req_echo(self):
        for req in ("abc", 42, -1, True, 1.5, ""):
            r = self.c.request({"op": "ping", "req": req})
            self.assertOk(r)
            self.assertEqual(r.get("req"), req)
            self.assertIs(type(r.get("req")), type(req))
        r = self.assertOk(self.c.request({"op": "ping"}))
        self.assertNotIn("req", r)
        id = unique_id()
        r = self.assertOk(self.c.request(bounce(id, req="b-1", **GREYLIST)))
        self.assertEqual(r["req"], "b-1")
        r = self.c.request({"op": "get", "id": "nope", "req": {"x": 1}})
        self.assertFalse(r.get("ok"), r)  # req should be a scalar; an object must not hurt
        self.assertPing(self.c)

    def test_pipelining_1000_in_order(self):
        # gets ask for messages known before the pipeline starts (a get right
        # behind its bounce is test_pipelined_ops_see_earlier_bounce)
        known = [unique_id("k") for _ in range(20)]
        for r in self.c.pipeline([bounce(i, **GREYLIST) for i in known]):
            self.assertOk(r)
        reqs = []
        kinds = []
        ids = list(known)
        for i in range(1000):
            k = i % 7
            if k == 0:
                reqs.append({"op": "ping", "req": i})
            elif k == 1:
                id = unique_id("p")
                ids.append(id)
                reqs.append(bounce(id, req=i, **GREYLIST))
            elif k == 2:
                reqs.append({"op": "get", "id": known[i % len(known)], "req": i})
            elif k == 3:
                reqs.append({"op": "classify", "code": 550, "enhanced": "5.1.1", "req": i})
            elif k == 4:
                reqs.append({"op": "no_such_op", "req": i})
            elif k == 5:
                reqs.append(bounce(unique_id("p"), req=i, **USER_UNKNOWN))
            else:
                reqs.append({"op": "stats", "req": i})
            kinds.append(k)
        replies = self.c.pipeline(reqs, timeout=20)
        self.assertEqual(len(replies), 1000)
        for i, (k, r) in enumerate(zip(kinds, replies)):
            self.assertEqual(r.get("req"), i, "reply %d out of order: %r" % (i, r))
            if k == 4:
                self.assertError(r, "unknown_op")
            else:
                self.assertOk(r, "reply %d" % i)
            if k == 1:
                self.assertEqual((r["id"], r["action"]), (reqs[i]["id"], "retry"))
            elif k == 2:
                self.assertEqual(r.get("id"), reqs[i]["id"])
            elif k == 3:
                self.assertEqual(r["class"], "hard_invalid")
            elif k == 5:
                self.assertEqual(r["action"], "suppress")
        self.assertEqual(stats_pending(self.assertOk(self.c.request({"op": "stats"}))), len(ids))

    def check_too_large(self, c):
        c.raw(b'{"op":"ping","req":"' + b"x" * (70 * 1024) + b'"}\n')
        self.assertError(c.read_reply(), "too_large")
        self.assertTrue(c.wait_closed(5), "connection not closed after a too_large line")
        self.assertTrue(self.daemon.running, "reboundd died (exit %s)" % self.daemon.proc.returncode)
        self.assertPing(self.connect(self.daemon))

    def test_half_close_still_gets_every_reply(self):
        # A client that sends its reports and then shuts down its side (as
        # `nc -N` or a batch script does) must still get every reply: the
        # bounces' replies wait for Redis, after the EOF has arrived.
        lines = [json.dumps({"op": "bounce", "id": "hc-%d" % i, "rcpt": "u%d@example.com" % i,
                             "code": 451, "enhanced": "4.7.1", "text": "greylisted", "req": i})
                 for i in range(200)]
        sock = socket.create_connection(self.daemon.tcp_addr, timeout=10)
        try:
            sock.sendall(("\n".join(lines) + "\n").encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            sock.close()
        replies = [json.loads(l) for l in data.decode().splitlines()]
        self.assertEqual([r.get("req") for r in replies], list(range(200)))
        self.assertTrue(all(r["ok"] and r["action"] == "retry" for r in replies))

    def test_line_too_large_closes_connection(self):
        # a long line that is within the limit is fine
        self.c.raw(b'{"op":"ping",' + b" " * 60000 + b'"req":"big"}\n')
        self.assertEqual(self.c.read_reply().get("req"), "big")
        self.check_too_large(self.c)
        # the daemon goes on serving others
        self.check_too_large(self.connect(self.daemon, unix=True))
        self.assertPing(self.connect(self.daemon))

    def test_too_large_without_newline(self):
        c = self.connect(self.daemon)
        c.raw(b"{" + b" " * (200 * 1024))
        self.assertError(c.read_reply(), "too_large")
        self.assertTrue(c.wait_closed(5))
        self.assertTrue(self.daemon.running, "reboundd died (exit %s)" % self.daemon.proc.returncode)
        self.assertPing(self.connect(self.daemon))

    # -- state ops

    def test_duplicate_bounce_is_idempotent(self):
        id = unique_id()
        r1 = self.assertOk(self.c.request(bounce(id, req=1, **GREYLIST)))
        r2 = self.assertOk(self.c.request(bounce(id, req=2, **GREYLIST)))
        self.assertEqual(r2.pop("req"), 2)
        r1.pop("req")
        self.assertEqual(r1, r2)
        # the same through another connection, pipelined with itself
        c2 = self.connect(self.daemon, unix=True)
        for r in c2.pipeline([bounce(id, **GREYLIST)] * 5):
            self.assertEqual(r, r1)
        self.assertEqual(stats_pending(self.assertOk(self.c.request({"op": "stats"}))), 1)

    def test_pipelined_ops_see_earlier_bounce(self):
        # requests on one connection take effect in order: a cancel or get
        # sent right behind a bounce (without waiting for its reply) sees it
        a, b = unique_id("pa"), unique_id("pb")
        r = self.c.pipeline([bounce(a, **GREYLIST), {"op": "get", "id": a},
                             bounce(b, **GREYLIST), {"op": "cancel", "id": b},
                             {"op": "get", "id": b}])
        self.assertOk(r[0])
        self.assertEqual(self.assertOk(r[1], "get right behind the bounce").get("due_at"), r[0]["retry_at"])
        self.assertOk(r[2])
        self.assertIs(self.assertOk(r[3]).get("found"), True, "cancel right behind the bounce: %r" % r[3])
        self.assertError(r[4], "not_found")
        # and what the replies said is what holds
        self.assertError(self.c.request({"op": "get", "id": b}), "not_found")
        self.assertEqual(stats_pending(self.assertOk(self.c.request({"op": "stats"}))), 1)

    def test_get(self):
        id = unique_id()
        b = self.assertOk(self.c.request(bounce(id, **GREYLIST)))
        g = self.assertOk(self.c.request({"op": "get", "id": id, "req": "g"}))
        self.assertEqual(g["req"], "g")
        self.assertEqual(g.get("id"), id)
        self.assertEqual(g.get("class"), "greylist")
        self.assertEqual(g.get("state"), "pending")
        self.assertEqual(g.get("attempt"), 1)
        self.assertEqual(g.get("due_at"), b["retry_at"])
        self.assertIsInstance(g.get("history"), list, g)
        self.assertEqual([(h.get("code"), h.get("enhanced"), h.get("class")) for h in g["history"]],
                         [(451, "4.7.1", "greylist")], g)
        self.assertError(self.c.request({"op": "get", "id": "never-seen"}), "not_found")

    def test_cancel(self):
        id = unique_id()
        self.assertOk(self.c.request(bounce(id, **GREYLIST)))
        r = self.assertOk(self.c.request({"op": "cancel", "id": id, "req": 3}))
        self.assertEqual((r.get("req"), r.get("found")), (3, True), r)
        self.assertError(self.c.request({"op": "get", "id": id}), "not_found")
        self.assertEqual(stats_pending(self.assertOk(self.c.request({"op": "stats"}))), 0)
        # a new bounce after cancel starts over at attempt 1
        r = self.assertOk(self.c.request(bounce(id, **GREYLIST)))
        self.assertEqual(r["attempt"], 1)
        # cancelling what is not there is not an error, and says so
        r = self.assertOk(self.c.request({"op": "cancel", "id": unique_id()}))
        self.assertIs(r.get("found"), False, r)

    def test_delivered(self):
        id = unique_id()
        self.assertOk(self.c.request(bounce(id, **OVER_QUOTA)))
        r = self.assertOk(self.c.request({"op": "delivered", "id": id, "rcpt": "user+%s@example.com" % id}))
        self.assertIs(r.get("found"), True, r)
        self.assertError(self.c.request({"op": "get", "id": id}), "not_found")
        # delivered for an id rebound does not know is harmless
        r = self.assertOk(self.c.request({"op": "delivered", "id": unique_id()}))
        self.assertIs(r.get("found"), False, r)
        self.assertPing(self.c)

    def test_stats(self):
        s0 = self.assertOk(self.c.request({"op": "stats", "req": "s"}))
        self.assertEqual(s0["req"], "s")
        self.assertEqual(stats_pending(s0), 0)
        for _ in range(3):
            self.bounce_ok(GREYLIST)
        for _ in range(2):
            self.bounce_ok(OVER_QUOTA)
        self.bounce_ok(USER_UNKNOWN)  # suppressed: not pending
        s = self.assertOk(self.c.request({"op": "stats"}))
        self.assertEqual(stats_pending(s), 5)
        by_class = s.get("by_class")
        self.assertIsInstance(by_class, dict, s)
        self.assertEqual((by_class.get("greylist"), by_class.get("mailbox_full")), (3, 2), s)
        self.assertEqual(sum(by_class.values()), 5, s)
        # greylist retries fall due within 30 min, the quota ones in about 12 h
        self.assertEqual((s["due"]["minute"], s["due"]["hour"], s["due"]["day"]), (0, 3, 5), s)
        self.assertEqual(s.get("redis"), "up", s)
        self.assertIsInstance(s.get("uptime_s"), int, s)

    def test_ping(self):
        r = self.c.request({"op": "ping"})
        self.assertEqual(r, {"ok": True})

    def test_unix_socket(self):
        u = self.connect(self.daemon, unix=True)
        self.assertEqual(u.request({"op": "ping", "req": 1}), {"ok": True, "req": 1})
        id, r, _, _ = self.bounce_ok(GREYLIST, c=u)
        self.assertEqual(r["class"], "greylist")
        # state is shared between the listeners
        self.assertEqual(self.assertOk(self.c.request({"op": "get", "id": id})).get("id"), id)
        u.raw(b"garbage\n")
        self.assertError(u.read_reply(), "bad_request")
        self.assertPing(u)

    def test_many_connections_and_abrupt_close(self):
        # clients that vanish mid-request do not hurt the daemon
        for i in range(50):
            c = self.daemon.client(unix=bool(i % 2))
            c.raw(json.dumps(bounce(unique_id(), **GREYLIST)).encode() + b"\n" + b'{"op":"pi')
            c.close()
        conns = [self.connect(self.daemon, unix=bool(i % 2)) for i in range(50)]
        for c in conns:
            c.send({"op": "ping", "req": id(c)})
        for c in conns:
            self.assertEqual(c.read_reply().get("req"), id(c))


if __name__ == "__main__":
    unittest.main()
