"""What the blocking and the asyncio clients share: addresses, the error
type, request encoding and the retry rules of the line protocol."""

from __future__ import annotations

import json
import random
from typing import Any, Dict, Mapping, Optional, Tuple, Union

#: The longest request line reboundd accepts (without the newline). A longer
#: line makes the daemon close the connection, and resending it would only
#: do that again, so the client refuses it before sending.
MAX_LINE = 65536

Reply = Dict[str, Any]
Event = Dict[str, Any]
Address = Union[str, Tuple[str, int]]


class ReboundError(Exception):
    """An error reply from reboundd, or a failure of the client itself.

    ``code`` is the protocol's error code (``bad_request``, ``unknown_op``,
    ``too_large``, ``not_found``, ``unavailable``, ``busy``,
    ``auth_required``, ``internal``), or one of the client's own:

    - ``disconnected``: reboundd could not be reached, or kept dropping the
      connection, until the retry deadline passed;
    - ``closed``: the client was closed while the request waited;
    - ``protocol``: reboundd sent something that is not a protocol line.

    ``message`` is meant for people; ``reply`` is the whole error reply when
    there was one.
    """

    def __init__(self, code: str, message: str, reply: Optional[Reply] = None) -> None:
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.reply = reply

    @classmethod
    def from_reply(cls, reply: Reply) -> "ReboundError":
        err = reply.get("error")
        if not isinstance(err, dict):
            return cls("protocol", "error reply without an error object: %r" % (reply,), reply)
        return cls(str(err.get("code", "internal")), str(err.get("message", "")), reply)


def parse_address(address: Address) -> Tuple[str, Any]:
    """("unix", path) for a path (any string with a "/"), else ("tcp",
    (host, port)) for "host:port", "[v6]:port" or a (host, port) tuple."""
    if isinstance(address, tuple):
        host, port = address
        return "tcp", (str(host), int(port))
    if not isinstance(address, str) or not address:
        raise ValueError("address must be 'host:port' or a socket path, not %r" % (address,))
    if "/" in address:
        return "unix", address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("address %r is neither 'host:port' nor a path" % (address,))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "tcp", (host, int(port))


def request(op: str, **fields: Any) -> Dict[str, Any]:
    """A request object; members that are None are left out (the protocol
    reads null as absent, and leaving them out keeps lines short)."""
    obj: Dict[str, Any] = {"op": op}
    for k, v in fields.items():
        if v is not None:
            obj[k] = v
    return obj


def bounce_request(id: str, rcpt: str, code: int, enhanced: Optional[str] = None,
                   text: Optional[str] = None, campaign: Optional[str] = None,
                   meta: Optional[Mapping[str, Any]] = None,
                   not_before: Optional[int] = None) -> Dict[str, Any]:
    """The ``bounce`` request with these fields (see docs/protocol.md)."""
    return request("bounce", id=id, rcpt=rcpt, code=code, enhanced=enhanced, text=text,
                   campaign=campaign, meta=dict(meta) if meta is not None else None,
                   not_before=not_before)


def report_request(report: Mapping[str, Any]) -> Dict[str, Any]:
    """A bounce request from a mapping with bounce()'s parameter names; an
    "op" member, when present, makes it any other request instead."""
    if "op" in report:
        return request(str(report["op"]), **{k: v for k, v in report.items() if k != "op"})
    return bounce_request(**report)


def encode(obj: Mapping[str, Any]) -> bytes:
    """One request line. Raises ReboundError("too_large") for a line the
    daemon would refuse by closing the connection."""
    line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(line) > MAX_LINE:
        raise ReboundError("too_large", "request is %d bytes, the limit is %d" % (len(line), MAX_LINE))
    return line + b"\n"


def decode(line: bytes) -> Dict[str, Any]:
    """One line from reboundd as an object; ReboundError("protocol") if it
    is not a JSON object."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ReboundError("protocol", "not a JSON line from reboundd: %s" % e) from None
    if not isinstance(obj, dict):
        raise ReboundError("protocol", "not a JSON object from reboundd: %r" % (obj,))
    return obj


def is_reply(obj: Mapping[str, Any]) -> bool:
    """Replies carry "ok"; events never do."""
    return "ok" in obj


def error_code(reply: Mapping[str, Any]) -> Optional[str]:
    """The error code of an error reply, None for an ok reply."""
    if reply.get("ok") is True:
        return None
    err = reply.get("error")
    return err.get("code") if isinstance(err, dict) else "internal"


class Backoff:
    """Exponential back-off with full jitter between ``first`` and ``limit``
    seconds: many clients reconnecting after one restart do not come back in
    step."""

    def __init__(self, first: float, limit: float) -> None:
        self.first = first
        self.limit = limit
        self.current = first

    def next(self) -> float:
        d = random.uniform(self.current / 2, self.current)
        self.current = min(self.limit, self.current * 2)
        return d

    def reset(self) -> None:
        self.current = self.first
