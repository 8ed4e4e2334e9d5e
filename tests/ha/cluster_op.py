"""The `cluster` op of a sharded reboundd, for the HA tests: the instances,
the shard map, and the shards this one serves."""


class ClusterOp:
    """For a DaemonTestCase whose daemons run with shards."""

    def cluster(self, d):
        with d.client(timeout=2.0) as c:
            r = c.request({"op": "cluster"})
        self.assertTrue(r["ok"], r)
        return r

    def serving(self, d):
        return self.cluster(d)["serving"]
