/*
 * The cluster op: which instances serve which shards. Today one instance
 * serves the whole schedule as shard 0 of 1; the answer already has the
 * shape the sharded version keeps (docs/protocol.md), so clients written
 * against it need no change when shards and several instances arrive.
 */
#include "base/daemon.h"
#include "ops/job.h"

/* Replies {"shards":1,"instances":[{"id","addr","shards":[0]}]} (op_reply
 * adds "ok"). */
void op_cluster(struct job *op)
{
    json_t *me = json_pack("{sssss[i]}", "id", rbd->instance_id, "addr", rbd->advertise, "shards", 0);
    op_reply(op, json_pack("{sis[o]}", "shards", 1, "instances", me));
}
