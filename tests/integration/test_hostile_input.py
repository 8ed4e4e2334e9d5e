"""Hostile request lines against the real daemon: each gets its error
reply, nothing is written, and the daemon (in the sanitizer build too)
goes on serving the same connection and others.

A 19-digit integer once overflowed the fast path's number scanner: one
such line killed the sanitizer build."""

import json
import os
import shutil
import tempfile
import unittest

from harness import DaemonTestCase, bounce, unique_id

BIG = ["1234567890123456789", "9999999999999999999", "-9223372036854775808", "9007199254740992",
       "99999999999999999999999999"]


class HostileInputTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        # these tests send many bad lines on one connection: past the
        # default error_limit (20) it would be closed
        config = os.path.join(tempfile.mkdtemp(prefix="rebound-cfg-"), "reboundd.json")
        self.addCleanup(shutil.rmtree, os.path.dirname(config), True)
        with open(config, "w") as f:
            json.dump({"error_limit": 100000}, f)
        self.redis, self.daemon, self.c = self.start_all(extra_args=["-c", config])

    def big_lines(self, n, id):
        """Request lines with the integer n in every kind of place: a
        field the op reads, one it ignores, req, meta, nested arrays."""
        head = '"op":"bounce","id":"%s","rcpt":"a@b.example"' % id
        return [
            '{%s,"code":%s}' % (head, n),
            '{%s,"code":451,"not_before":%s}' % (head, n),
            '{%s,"code":451,"x":%s}' % (head, n),
            '{%s,"code":451,"meta":{"k":%s}}' % (head, n),
            '{%s,"code":451,"meta":{"k":[1,[%s]]}}' % (head, n),
            '{%s,"code":451,"req":%s}' % (head, n),
            '{"op":"ping","x":%s}' % n,
            '{"op":"ping","req":%s}' % n,
            '{"op":"stats","x":[%s]}' % n,
            '{"op":"ack","ids":["1-0"],"x":%s}' % n,
            '{"op":"get","id":"%s","x":%s}' % (id, n),
            '{"op":"cancel","id":"%s","n":%s}' % (id, n),
        ]

    def test_big_integer_anywhere_is_bad_request(self):
        id = unique_id()
        lines = [l for n in BIG for l in self.big_lines(n, id)]
        for line in lines:
            self.c.raw(line.encode() + b"\n")
            self.assertError(self.c.read_reply(), "bad_request", line)
        self.assertPing(self.c)
        # nothing was written for the message
        self.assertError(self.c.request({"op": "get", "id": id}), "not_found")

    def test_big_integers_pipelined(self):
        """All at once in one write, as a flooding client would: every line
        is answered, in order, and the connection lives."""
        id = unique_id()
        lines = [l for n in BIG for l in self.big_lines(n, id)] * 20
        self.c.raw(b"".join(l.encode() + b"\n" for l in lines) + b'{"op":"ping","req":"end"}\n')
        for line in lines:
            self.assertError(self.c.read_reply(timeout=10), "bad_request", line)
        self.assertEqual(self.c.read_reply(timeout=10).get("req"), "end")
        # a second client is served as well
        other = self.connect(self.daemon)
        self.assertPing(other)

    def test_bound_itself_is_accepted(self):
        id = unique_id()
        r = self.c.request(bounce(id, 451, "4.7.1", "greylisted", meta={"n": 9007199254740991, "m": -9007199254740991},
                                  req=9007199254740991))
        self.assertOk(r)
        self.assertEqual(r.get("req"), 9007199254740991)
        self.assertOk(self.c.request({"op": "get", "id": id}))

    def test_malformed_lines_answered(self):
        """Truncated, binary and deeply nested lines: each an error reply,
        never a dead daemon."""
        lines = [b"{", b'{"op":', b'{"op":"bounce","code":4', b"\xff\xfe\x00\x01", b"[" * 5000 + b"]" * 5000,
                 b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"op":"ping","x":1e999999}',
                 b'{"op":"ping"}' + b"\x00", b'{"op":"\\ud800"}']
        for line in lines:
            self.c.raw(line + b"\n")
            r = self.c.read_reply(timeout=10)
            self.assertIs(r.get("ok"), False, line[:40])
        self.assertPing(self.c)
        self.assertTrue(self.daemon.running)


if __name__ == "__main__":
    unittest.main()
