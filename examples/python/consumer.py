#!/usr/bin/env python3
"""A minimal consumer: follows reboundd's events for one consumer group and
acts on each before acknowledging it.

- `retry`: the message's retry is due: queue it for sending again, and
  report `delivered` (or its next bounce) once that attempt is over.
- `give_up`: no more retries: bounce the message to its sender.
- `suppress`: the address is gone: add it to your suppression list.

Ack only after acting: an event not acked (the process died in between)
comes again, so handling must tolerate seeing an event twice.

    python3 consumer.py [ADDRESS] [--group NAME] [--max-events N]
"""

import argparse
import sys

from rebound_client import Consumer


def handle(event: dict) -> None:
    kind = event["type"]
    if kind == "retry":
        print("send again: %s to %s (attempt %d)" % (event["id"], event["rcpt"], event["attempt"]))
    elif kind == "give_up":
        print("bounce to sender: %s to %s (%s)" % (event["id"], event["rcpt"], event["reason"]))
    elif kind == "suppress":
        print("suppress address: %s (%s)" % (event["rcpt"], event["reason"]))
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("address", nargs="?", default="127.0.0.1:7411")
    ap.add_argument("--group", default="senders")
    ap.add_argument("--max-events", type=int, default=0, help="stop after this many (0: never)")
    args = ap.parse_args()
    seen = 0
    with Consumer(args.address, args.group, types=["retry", "give_up", "suppress"]) as consumer:
        for event in consumer:
            handle(event)
            consumer.ack(event)  # batched; the last acks go out when the consumer closes
            seen += 1
            if seen == args.max_events:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
