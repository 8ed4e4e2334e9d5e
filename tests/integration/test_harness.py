"""Checks of the harness itself: the RESP client against a real
redis-server, AOF durability across restarts, and the line client against a
stand-in server. Needs redis-server, not reboundd."""

import os
import shutil
import socket
import threading
import time
import unittest

from harness import Client, RedisError, RedisServer, RespParser, free_port, resp_encode


class RespParserTest(unittest.TestCase):
    def parse_all(self, data, chunk=1):
        p = RespParser()
        out = []
        for i in range(0, len(data), chunk):
            p.feed(data[i:i + chunk])
            while True:
                try:
                    out.append(p.next())
                except IndexError:
                    break
        return out

    def test_types_byte_by_byte(self):
        data = (b"+OK\r\n:42\r\n:-7\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n$0\r\n\r\n"
                b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n-ERR nested\r\n-WRONGTYPE x\r\n")
        for chunk in (1, 3, len(data)):
            v = self.parse_all(data, chunk)
            self.assertEqual(v[:7], ["OK", 42, -7, "he\r\nl", None, None, ""])
            self.assertEqual(v[7][:2], ["a", [1, None]])
            self.assertIsInstance(v[7][2], RedisError)
            self.assertEqual(str(v[7][2]), "ERR nested")
            self.assertIsInstance(v[8], RedisError)
            self.assertEqual(len(v), 9)

    def test_encode(self):
        self.assertEqual(resp_encode(["SET", "k", 12, b"\x00\r\n"]),
                         b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n\x00\r\n\r\n")


@unittest.skipIf(shutil.which("redis-server") is None, "redis-server not installed")
class RedisServerTest(unittest.TestCase):
    def test_commands_and_errors(self):
        with RedisServer() as r:
            self.assertEqual(r.cmd("PING"), "PONG")
            self.assertEqual(r.cmd("HSET", "rebound:t", "a", "1", "b", "two words"), 2)
            self.assertEqual(r.cmd("HGET", "rebound:t", "nope"), None)
            h = r.cmd("HGETALL", "rebound:t")
            self.assertEqual(dict(zip(h[::2], h[1::2])), {"a": "1", "b": "two words"})
            with self.assertRaises(RedisError) as cm:
                r.cmd("LPUSH", "rebound:t", "x")
            self.assertIn("WRONGTYPE", str(cm.exception))
            eid = r.cmd("XADD", "rebound:s", "*", "f", "v")
            self.assertRegex(eid, r"^\d+-\d+$")
            entries = r.cmd("XRANGE", "rebound:s", "-", "+")
            self.assertEqual(entries, [[eid, ["f", "v"]]])
            replies = r.pipeline([("INCR", "n")] * 100 + [("GET", "n")])
            self.assertEqual(replies, list(range(1, 101)) + ["100"])
            self.assertEqual(r.cmd("CONFIG", "GET", "appendonly"), ["appendonly", "no"])
            self.assertEqual(r.cmd("CONFIG", "GET", "bind"), ["bind", "127.0.0.1"])
            self.assertTrue(r.running)
        self.assertFalse(r.running)
        self.assertFalse(os.path.exists(r.dir))

    def test_aof_survives_restart_and_kill9(self):
        r = RedisServer(appendonly=True)
        try:
            port = r.port
            r.pipeline([("HSET", "rebound:msg", "m%d" % i, "x") for i in range(1000)])
            r.restart()  # SIGTERM writes and fsyncs the AOF
            self.assertEqual(r.port, port)
            self.assertEqual(r.cmd("HLEN", "rebound:msg"), 1000)
            r.cmd("HSET", "rebound:msg", "late", "y")
            time.sleep(1.5)  # appendfsync everysec
            r.kill9()
            self.assertFalse(r.running)
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            r.start()
            self.assertEqual(r.cmd("HLEN", "rebound:msg"), 1001)
        finally:
            r.cleanup()

    def test_without_aof_restart_loses_data(self):
        # the opposite case, so the test above can fail
        with RedisServer(appendonly=False) as r:
            r.cmd("SET", "k", "v")
            r.restart()
            self.assertIsNone(r.cmd("GET", "k"))


class LineClientTest(unittest.TestCase):
    """The line client against a tiny echo-style server: replies in order,
    events queued apart, time-outs bounded, EOF seen."""

    def setUp(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.addCleanup(self.srv.close)

    def serve(self, fn):
        def run():
            conn, _ = self.srv.accept()
            with conn:
                fn(conn)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)

    def test_events_and_replies_separated(self):
        def fn(conn):
            f = conn.makefile("rb")
            n = 0
            for line in f:
                n += 1
                conn.sendall(b'{"type":"retry","eid":"1-%d"}\n{"ok":true,"n":%d}\n' % (n, n))
        self.serve(fn)
        with Client(self.srv.getsockname(), timeout=2) as c:
            replies = c.pipeline([{"op": "ping"}] * 3000, window=100)
            self.assertEqual([r["n"] for r in replies], list(range(1, 3001)))
            evs = c.events(5000, 0.2)
            self.assertEqual(len(evs), 3000)
            self.assertEqual(evs[0]["eid"], "1-1")
            t0 = time.monotonic()
            self.assertEqual(c.events(1, 0.3), [])
            self.assertLess(time.monotonic() - t0, 1.0)

    def test_timeout_and_eof(self):
        def fn(conn):
            conn.recv(100)
            time.sleep(0.5)
            conn.sendall(b'{"ok":false,"error":{"code":"too_large","message":"x"}}\n')
        self.serve(fn)
        with Client(self.srv.getsockname(), timeout=2) as c:
            c.send({"op": "ping"})
            with self.assertRaises(TimeoutError):
                c.read_reply(timeout=0.1)
            self.assertEqual(c.read_reply()["error"]["code"], "too_large")
            self.assertTrue(c.wait_closed(2))

    def test_free_port_is_free(self):
        p = free_port()
        s = socket.socket()
        s.bind(("127.0.0.1", p))
        s.close()


if __name__ == "__main__":
    unittest.main()
