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
void op_cluster(struct job *op)
{
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
