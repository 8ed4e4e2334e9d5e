/*
 * The cluster op: which instances serve which shards. The whole schedule
 * is one shard (shard 0 of 1); the answer has the shape the sharded
 * version keeps (docs/protocol.md), so clients written against it need no
 * change when shards arrive.
 */
#include <string.h>

#include "base/daemon.h"
#include "ops/job.h"
#include "schedule/lease.h"

static void add_member(const char *id, const char *addr, void *arg)
{
    json_t *list = arg;
    bool owner = lease_owner_id()[0] && strcmp(id, lease_owner_id()) == 0;
    json_t *m = owner ? json_pack("{sssss[i]}", "id", id, "addr", addr, "shards", 0)
                      : json_pack("{sssss[]}", "id", id, "addr", addr, "shards");
    if (m)
        json_array_append_new(list, m);
}

/* Replies {"shards":1,"instances":[{"id","addr","shards":[0]}]} (op_reply
 * adds "ok"). With a lease (lease_ttl), the instances are those whose
 * heartbeat is younger than the lease's TTL, the owner's with shard 0, and
 * "owner" names it ({"id","addr","epoch"}: null while nobody holds it, as
 * far as this instance knows); "role" is this instance's. */
/* With shards: each live instance with the shards it owns as far as this
 * instance last saw, "map" the owner's address by shard ("" unknown) for
 * clients that go straight to the owner, and "unowned" the shards nobody
 * is known to hold. */
static void add_sharded_member(const char *id, const char *addr, void *arg)
{
    json_t *list = arg;
    json_t *mine = json_array();
    for (int k = 0; k < lease_shards(); k++)
        if (strcmp(lease_shard_owner_id(k), id) == 0)
            json_array_append_new(mine, json_integer(k));
    json_t *m = json_pack("{sssssO}", "id", id, "addr", addr, "shards", mine);
    json_decref(mine);
    if (m)
        json_array_append_new(list, m);
}

static void op_cluster_sharded(struct job *op)
{
    json_t *list = json_array(), *map = json_array(), *unowned = json_array(), *served = json_array();
    lease_members(add_sharded_member, list);
    for (int k = 0; k < lease_shards(); k++) {
        json_array_append_new(map, json_string(lease_shard_owner_addr(k)));
        if (!lease_shard_owner_id(k)[0])
            json_array_append_new(unowned, json_integer(k));
        if (lease_shard_serving(k))
            json_array_append_new(served, json_integer(k));
    }
    op_reply(op, json_pack("{sisososososssssssI}", "shards", lease_shards(), "instances", list, "map", map, "unowned",
                           unowned, "serving", served, "role", lease_role_name(), "id", rbd->instance_id, "hash",
                           "crc16(lower(rcpt)) mod shards", "forwarded", (json_int_t)rbd->shards_forwarded));
}

void op_cluster(struct job *op)
{
    if (rbd->cfg.shards >= 2 && rbd->cfg.lease_ttl_ms > 0) {
        op_cluster_sharded(op);
        return;
    }
    if (rbd->cfg.lease_ttl_ms <= 0) {
        json_t *me = json_pack("{sssss[i]}", "id", rbd->instance_id, "addr", rbd->advertise, "shards", 0);
        op_reply(op, json_pack("{sis[o]}", "shards", 1, "instances", me));
        return;
    }
    json_t *list = json_array();
    lease_members(add_member, list);
    json_t *owner = lease_owner_id()[0]
                        ? json_pack("{sssssI}", "id", lease_owner_id(), "addr", lease_owner_addr(), "epoch",
                                    (json_int_t)rbd->lease_epoch)
                        : json_null();
    if (rbd->lease_role != LEASE_OWNER && rbd->lease_role != LEASE_LOADING && json_is_object(owner))
        json_object_del(owner, "epoch"); /* a standby knows the owner, not its epoch */
    op_reply(op, json_pack("{sisosossss}", "shards", 1, "instances", list, "owner", owner, "role",
                           lease_role_name(), "id", rbd->instance_id));
}
