/*
 * groups: the operator's view of the event stream's consumer groups (list
 * them, or delete one with its pending list), answered by events/.
 */
#include "events/events.h"
#include "ops/job.h"

void op_groups(struct job *op)
{
    events_groups(op->conn, op->slot, &op->req);
}
