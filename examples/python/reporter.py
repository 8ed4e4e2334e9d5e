#!/usr/bin/env python3
"""A minimal reporter: hands the deliveries your MTA could not make to
reboundd and prints what it decided for each.

Reads one report per line on stdin, as JSON with bounce()'s names:

    {"id": "msg-1", "rcpt": "alice@example.com", "code": 451, "enhanced": "4.7.1", "text": "Greylisted"}

and sends them all in one pipelined batch. A report that got no answer
because reboundd restarted, or was answered `unavailable`, is sent again
by the client; each report gets exactly one decision.

    python3 reporter.py [ADDRESS] < reports.jsonl      (default 127.0.0.1:7411)
"""

import json
import sys

from rebound_client import Client, ReboundError


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7411"
    reports = [json.loads(line) for line in sys.stdin if line.strip()]
    failed = 0
    with Client(address) as client:
        for report, reply in zip(reports, client.bounce_many(reports)):
            if isinstance(reply, ReboundError):
                # the report itself is wrong (bad_request, too_large), or
                # reboundd stayed unreachable past the retry deadline
                print("%s: not recorded (%s: %s)" % (report.get("id"), reply.code, reply.message))
                failed += 1
            elif reply["action"] == "retry":
                # keep the message: a `retry` event will say when to send it again
                print("%s: retry %d at %d" % (reply["id"], reply["attempt"], reply["retry_at"]))
            else:
                # give_up or suppress: bounce it to the sender now
                print("%s: %s (%s)" % (reply["id"], reply["action"], reply["reason"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
