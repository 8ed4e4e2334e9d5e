"""The Python client against several reboundd sharing one schedule under a
lease (docs/operations.md, "Several reboundd on one Redis"): a list of
addresses tried in turn, and an ``unavailable`` reply that names the owner
followed there — by the blocking and the asyncio client, and by a consumer
whose subscribe went to a standby (a subscribe is never relayed)."""

import asyncio
import json
import os
import time
import unittest

from pyclient_base import DaemonTestCase, log, tcp, unique_id, wait_until
from rebound_client import AsyncClient, AsyncConsumer, Client, Consumer

GREY = dict(code=451, enhanced="4.7.1", text="451 4.7.1 Greylisted, please try again later")
TTL_MS = 1500


class InstancesTest(DaemonTestCase):
    def start_leased(self, redis, iid, forward):
        """A reboundd with a lease on the shared Redis; the policy is the
        fast one, so a retry falls due at once."""
        d = self.start_daemon(redis, wait_ready=False)
        d.proc.kill()
        d.proc.wait()
        conf = os.path.join(d.dir, "reboundd.json")
        with open(conf, "w") as f:
            json.dump({"lease_ttl": "%dms" % TTL_MS, "instance_id": iid, "lease_forward": forward}, f)
        d.extra_args = ["-c", conf]
        d.start(wait_ready=False)
        return d

    def role(self, d):
        with d.client(timeout=2.0) as c:
            return c.request({"op": "stats"})["lease"]["role"]

    def owner_and_standby(self, forward=False):
        redis = self.start_redis()
        a = self.start_leased(redis, "a", forward)
        wait_until(lambda: self.role(a) == "owner", 10, interval=0.02, what="a to own the schedule")
        b = self.start_leased(redis, "b", forward)
        wait_until(lambda: self.role(b) == "standby", 5, interval=0.02, what="b to stand by")
        return redis, a, b

    def test_unavailable_with_owner_is_followed(self):
        """A standby that does not relay answers unavailable with the
        owner's address: the client resends there and gets the owner's
        answer, for a single call and a pipelined batch."""
        _, a, b = self.owner_and_standby(forward=False)
        with Client(tcp(b), retry_deadline=10) as c:
            mid = unique_id("own")
            r = c.bounce(mid, "alice@example.com", **GREY)
            self.assertEqual((r["id"], r["action"]), (mid, "retry"))
            ids = [unique_id("own-many") for _ in range(300)]
            rs = c.bounce_many([dict(id=i, rcpt="u%d@example.org" % k, **GREY) for k, i in enumerate(ids)])
            self.assertEqual([r["id"] for r in rs], ids)
        with a.client() as direct:
            self.assertEqual(direct.request({"op": "get", "id": mid})["id"], mid)

        async def run():
            async with AsyncClient(tcp(b), retry_deadline=10) as ac:
                mid2 = unique_id("own-async")
                r = await ac.bounce(mid2, "bob@example.com", **GREY)
                self.assertEqual(r["id"], mid2)
                return mid2

        mid2 = asyncio.run(run())
        with a.client() as direct:
            self.assertEqual(direct.request({"op": "get", "id": mid2})["id"], mid2)

    def test_consumer_subscribed_at_a_standby_follows_the_owner(self):
        _, a, b = self.owner_and_standby(forward=True)
        with Consumer(tcp(b), "inst", types=["retry"], ack_batch=1) as cons, Client(tcp(b)) as c:
            mid = unique_id("sub")
            c.bounce(mid, "carol@example.net", **GREY)
            ev = cons.next_event(timeout=10)
            self.assertIsNotNone(ev, "no event through a consumer pointed at the standby")
            self.assertEqual((ev["type"], ev["id"]), ("retry", mid))
            cons.ack(ev)

        async def run():
            async with AsyncConsumer(tcp(b), "inst-async", types=["retry"], ack_batch=1) as ac, \
                    AsyncClient(tcp(b)) as c2:
                mid2 = unique_id("sub-async")
                await c2.bounce(mid2, "dave@example.net", **GREY)
                # a new group starts with the events the stream still holds
                while True:
                    ev2 = await asyncio.wait_for(ac.next_event(), 10)
                    await ac.ack(ev2)
                    if ev2["id"] == mid2:
                        break

        asyncio.run(run())

    def test_list_of_addresses_survives_the_owner(self):
        """Given both instances, a client keeps getting answers when the
        one it uses is killed: it moves to the other, which takes over."""
        _, a, b = self.owner_and_standby(forward=True)
        with Client([tcp(a), tcp(b)], retry_deadline=20) as c:
            before = [unique_id("list-a") for _ in range(200)]
            c.bounce_many([dict(id=i, rcpt="u%d@d.example" % k, **GREY) for k, i in enumerate(before)])
            a.kill9()
            t0 = time.monotonic()
            after = [unique_id("list-b") for _ in range(200)]
            rs = c.bounce_many([dict(id=i, rcpt="v%d@d.example" % k, **GREY) for k, i in enumerate(after)])
            self.assertEqual([r["id"] for r in rs], after)
            log("answered by the other instance %.0f ms after the kill" % ((time.monotonic() - t0) * 1000))
        with b.client() as direct:
            for i in (before[0], before[-1], after[0], after[-1]):
                self.assertEqual(direct.request({"op": "get", "id": i}).get("id"), i)


if __name__ == "__main__":
    unittest.main()
