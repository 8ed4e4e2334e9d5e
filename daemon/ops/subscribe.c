/*
 * subscribe and ack: the event stream's side of a connection, handed to
 * events/ (which replies itself, possibly after Redis).
 */
#include "events/events.h"
#include "ops/job.h"

void op_subscribe(struct job *op)
{
    events_subscribe(op->conn, op->slot, &op->req);
}

void op_ack(struct job *op)
{
    events_ack(op->conn, op->slot, &op->req);
}
