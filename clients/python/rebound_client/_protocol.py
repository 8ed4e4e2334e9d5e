"""What the blocking and the asyncio clients share: addresses, the error
type, request encoding, reply matching, the retry rules of the line
protocol and ack batching. Nothing here does I/O or reads a clock but
through its callers, so each client keeps only its own I/O loop."""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

#: The longest request line reboundd accepts (without the newline). A longer
#: line makes the daemon close the connection, and resending it would only
#: do that again, so the client refuses it before sending.
MAX_LINE = 65536

#: The most ids one ack line carries: eids are about 20 bytes, so this stays
#: well under the 64 KiB line limit (the protocol allows 10000 ids).
ACK_CHUNK = 2000

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


#: One instance's address, or several (a list): instances sharing one
#: schedule, any of which takes any request.
Addresses = Union[Address, List[Address]]


class Targets:
    """The reboundd instances a client talks to, and which one it uses now.

    Given several (a list), a connection that cannot be made or that drops
    moves the client to the next one in turn: when one instance dies, a
    standby of the same schedule takes the requests (it relays them to the
    owner, or is the owner once it took over). An ``unavailable`` reply that
    names the owner (``"owner"``: a standby that could not relay, or a
    ``subscribe``, which is never relayed) moves the client to that owner
    until a connection to it fails."""

    def __init__(self, address: Addresses) -> None:
        addresses = list(address) if isinstance(address, list) else [address]
        if not addresses:
            raise ValueError("no address given")
        for a in addresses:
            parse_address(a)  # a malformed address fails here, not at the first call
        self.addresses: List[Address] = addresses
        self.index = 0
        self.owner: Optional[Address] = None
        #: called after every move (failed or moved): a routing client
        #: refreshes its shard map then
        self.on_change: Callable[[], None] = lambda: None

    def add(self, addresses: Iterable[str]) -> None:
        """Appends the instances not yet listed (the others a ``cluster``
        answer named), to be tried after those given."""
        for a in addresses:
            if a and a not in self.addresses:
                try:
                    parse_address(a)
                except ValueError:
                    continue
                self.addresses.append(a)

    @property
    def home(self) -> Address:
        """The first address, the one this list is for."""
        return self.addresses[0]

    @property
    def away(self) -> bool:
        """Whether it moved off its first address."""
        return self.owner is not None or self.index != 0

    @property
    def current(self) -> Address:
        return self.owner if self.owner is not None else self.addresses[self.index]

    def failed(self) -> None:
        """The current instance could not be reached or dropped the
        connection: the next one is tried (the owner named last is
        forgotten first)."""
        if self.owner is not None:
            self.owner = None
        else:
            self.index = (self.index + 1) % len(self.addresses)
        self.on_change()

    def moved(self, reply: Optional[Mapping[str, Any]]) -> bool:
        """Follows an ``unavailable`` reply's ``owner``; True when it names
        another instance than the current one (the connection should then
        be given up and the requests resent there)."""
        owner = reply.get("owner") if reply is not None else None
        if not isinstance(owner, str) or not owner or owner == self.current:
            return False
        try:
            parse_address(owner)
        except ValueError:
            return False
        self.owner = owner
        self.on_change()
        return True


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


#: What a line from reboundd asks of the loop that read it (see match_reply).
EVENT = "event"      # an event: hand it on
DROP = "drop"        # busy, or a reply nobody asked for: the connection is done
RESEND = "resend"    # unavailable: nothing was done, send the request again
ANSWER = "answer"    # the final answer to the oldest request in flight


def match_reply(obj: Mapping[str, Any], inflight: bool) -> str:
    """What to do with one decoded line; ``inflight`` says whether a request
    waits for an answer. Replies come in request order, so an answer always
    belongs to the oldest request in flight."""
    if not is_reply(obj):
        return EVENT
    code = error_code(obj)
    if code == "busy" or not inflight:
        # busy comes unasked, right before the daemon closes the connection
        return DROP
    if code == "unavailable":
        return RESEND
    return ANSWER


def unexpected(obj: Mapping[str, Any]) -> ReboundError:
    """The error for a reply match_reply called DROP."""
    return ReboundError(error_code(obj) or "protocol", "unexpected reply %r" % (obj,), dict(obj))


def outcome(reply: Reply) -> Union[Reply, ReboundError]:
    """A final reply as a caller gets it: the reply when ok, else its error."""
    return reply if reply.get("ok") is True else ReboundError.from_reply(reply)


Line = Union[bytes, ReboundError]


#: A request line and the recipient it is about when it goes to that
#: recipient's shard's owner (route_rcpt), else None.
Item = Tuple[Line, Optional[str]]


def pipeline_items(requests: Iterable[Mapping[str, Any]]) -> List[Item]:
    """One encoded line per request object, or the ReboundError that keeps
    it from being sent (it then comes back as that request's result), each
    with its route_rcpt."""
    items: List[Item] = []
    for obj in requests:
        try:
            items.append((encode(obj), route_rcpt(obj)))
        except ReboundError as e:
            items.append((e, None))
    return items


def report_items(reports: Iterable[Mapping[str, Any]]) -> List[Item]:
    """As pipeline_items, for bounce_many's reports (see report_request)."""
    items: List[Item] = []
    for rep in reports:
        try:
            obj = report_request(rep)
            items.append((encode(obj), route_rcpt(obj)))
        except ReboundError as e:
            items.append((e, None))
        except TypeError as e:
            items.append((ReboundError("bad_request", "bad report %r: %s" % (rep, e)), None))
    return items


def pipeline_lines(requests: Iterable[Mapping[str, Any]]) -> List[Line]:
    """As pipeline_items, the lines alone."""
    return [line for line, _ in pipeline_items(requests)]


def report_lines(reports: Iterable[Mapping[str, Any]]) -> List[Line]:
    """As report_items, the lines alone."""
    return [line for line, _ in report_items(reports)]


# -- shards: which instance owns a recipient's reports

def _crc16_table() -> List[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0, not reflected): the
    checksum Redis Cluster hashes keys with, and reboundd its recipients."""
    crc = 0
    t = _CRC16
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[(crc >> 8) ^ b]
    return crc


def shard_of(rcpt: str, shards: int) -> int:
    """The shard of a recipient: CRC16 of its UTF-8 bytes with A-Z in lower
    case (as reboundd lowers it: ASCII only), mod ``shards``; 0 below 2."""
    if shards < 2:
        return 0
    return crc16(rcpt.encode("utf-8", "surrogatepass").lower()) % shards


#: The ops that run on the owner of their recipient's shard when they
#: carry ``rcpt`` (docs/protocol.md, cluster: "A request about one
#: message runs on its shard's owner").
ROUTED_OPS = frozenset(("bounce", "delivered", "cancel", "get", "unsuppress"))


def route_rcpt(obj: Mapping[str, Any]) -> Optional[str]:
    """The recipient whose shard's owner should get this request, or None
    when any instance may take it (ops by id alone, list, stats, ...)."""
    rcpt = obj.get("rcpt")
    if obj.get("op") in ROUTED_OPS and isinstance(rcpt, str) and rcpt:
        return rcpt
    return None


#: How often a routing client asks ``cluster`` again while nothing moved
#: (seconds): an instance that joined gets its share of the reports within
#: this. With one schedule (no shards), less often.
MAP_REFRESH = 5.0
MAP_REFRESH_UNSHARDED = 30.0
#: The least time between two asks after something moved (a connection
#: failed, an unavailable named an owner): a dead owner is not asked about
#: in a tight loop while its shards wait for a taker.
MAP_REFRESH_MIN = 0.25
#: How long one ``cluster`` ask may keep trying (seconds) before the
#: requests go on with the map as it was.
MAP_DEADLINE = 2.0


class ShardMap:
    """The last ``cluster`` answer as a routing client keeps it: how many
    shards, each one's owner, the instances, and when to ask again."""

    def __init__(self) -> None:
        self.shards = 0
        self.owners: List[str] = []
        self.instances: List[str] = []
        self.fetched: Optional[float] = None
        self.stale = False
        #: answers taken (the first included)
        self.refreshes = 0

    @property
    def known(self) -> bool:
        return self.fetched is not None

    def due(self, now: float) -> bool:
        """Whether to ask ``cluster`` now (``now``: time.monotonic())."""
        if self.fetched is None:
            return True
        age = now - self.fetched
        if self.stale:
            return age >= MAP_REFRESH_MIN
        return age >= (MAP_REFRESH if self.shards >= 2 else MAP_REFRESH_UNSHARDED)

    def update(self, reply: Union[Reply, "ReboundError"], now: float) -> None:
        """Takes a ``cluster`` reply. An error reply (a daemon without the
        op) means one schedule: nothing to route. A ReboundError (nobody
        answered) keeps the map as it was, to be asked again later."""
        self.fetched = now
        if isinstance(reply, ReboundError) and reply.reply is None:
            return
        self.stale = False
        self.refreshes += 1
        body = reply.reply if isinstance(reply, ReboundError) else reply
        shards = body.get("shards") if isinstance(body, dict) and body.get("ok") is True else None
        owners = body.get("map") if isinstance(body, dict) else None
        if not isinstance(shards, int) or shards < 2 or not isinstance(owners, list) or len(owners) != shards:
            self.shards, self.owners = 1, []
            return
        self.shards = shards
        self.owners = [a if isinstance(a, str) else "" for a in owners]
        insts = body.get("instances")
        addrs = [m.get("addr") for m in insts if isinstance(m, dict)] if isinstance(insts, list) else []
        self.instances = [a for a in addrs if isinstance(a, str) and a]

    def owner(self, rcpt: str) -> Optional[str]:
        """The address of the owner of rcpt's shard, None when there are no
        shards or the shard's owner is not known now."""
        if self.shards < 2:
            return None
        return self.owners[shard_of(rcpt, self.shards)] or None


def handshake_lines(token: Optional[str], subscribe: Optional[bytes]) -> List[bytes]:
    """What a new connection sends first, each waiting for its reply: auth
    when there is a token, then the consumer's subscribe."""
    lines = []
    if token is not None:
        lines.append(encode(request("auth", token=token)))
    if subscribe is not None:
        lines.append(subscribe)
    return lines


def subscribe_line(group: str, types: Optional[Sequence[str]]) -> bytes:
    """A consumer's subscribe request line."""
    return encode(request("subscribe", group=group, types=list(types) if types is not None else None))


def check_handshake(reply: Reply) -> Optional[ReboundError]:
    """None when a handshake reply is ok. A refusal that a retry cannot cure
    (a wrong token, a bad group) is raised; unavailable or busy is returned,
    for the caller to reconnect later."""
    code = error_code(reply)
    if code is None:
        return None
    err = ReboundError.from_reply(reply)
    if code in ("unavailable", "busy"):
        return err
    raise err


class ClientBase:
    """What the blocking and the asyncio client both keep: their options
    (see Client for their meaning), the connection count, and the hooks a
    consumer sets."""

    def __init__(self, address: Addresses, token: Optional[str], timeout: float, connect_timeout: float,
                 retry_deadline: Optional[float], backoff_first: float, backoff_max: float,
                 window: int, route: bool = True) -> None:
        self._targets = Targets(address)
        # shards: the last cluster answer, and a client of the same kind
        # (route off) per owner it sends to, by address
        self._route = route
        self._map = ShardMap()
        self._lanes: Dict[str, "ClientBase"] = {}
        self._targets.on_change = self._map_moved
        self.address = address
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_deadline = retry_deadline
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        #: connections opened so far (the first one included)
        self.connects = 0
        # set by a consumer: the subscribe line sent after auth, and where
        # events go
        self._subscribe: Optional[bytes] = None
        self._on_event: Callable[[Event], None] = lambda ev: None

    #: what _new_failing makes (the blocking client's also sleeps)
    _failing_type: "type[Failing]"

    # -- shards: each request about one recipient straight to its owner

    def _map_moved(self) -> None:
        self._map.stale = True

    def _routing(self) -> bool:
        """Whether requests about a recipient go to its shard's owner: not
        on a consumer's connection (subscribed there), nor on an owner's own."""
        return self._route and self._subscribe is None

    def _took_map(self, reply: Union[Reply, ReboundError]) -> None:
        """Takes a cluster answer (or the error that came instead); the
        instances it names are tried after the addresses given when those
        fail, by this client and by every owner's."""
        self._map.update(reply, time.monotonic())
        self._targets.add(self._map.instances)
        for addr, lane in list(self._lanes.items()):
            if addr not in self._map.owners:
                # owns nothing now (it died, or handed its shards over):
                # nothing new goes there, what it was sent is answered first
                self._retire(lane)
            else:
                lane._targets.add(self._map.instances)

    def _lane_for(self, rcpt: Optional[str]) -> Optional["ClientBase"]:
        """The client that sends a request about rcpt: the owner's (made on
        first use), or None for this one (no shards, the owner unknown, or
        the owner is where this client is connected)."""
        if rcpt is None:
            return None
        addr = self._map.owner(rcpt)
        if addr is None or addr == self._targets.current:
            return None
        lane = self._lanes.get(addr)
        if lane is not None and lane._targets.away and not self._map.stale and self._lane_idle(lane):
            # it left its owner (a failure, an unavailable naming another)
            # and the map still names that owner: start over there
            self._retire(lane)
            lane = None
        if lane is None:
            fallbacks = [a for a in self._targets.addresses if a != addr]
            lane = type(self)([addr, *fallbacks], self.token, timeout=self.timeout,  # type: ignore[call-arg]
                              connect_timeout=self.connect_timeout, retry_deadline=self.retry_deadline,
                              backoff_first=self.backoff_first, backoff_max=self.backoff_max,
                              window=self.window, route=False)
            lane._targets.on_change = self._map_moved
            self._lanes[addr] = lane
        return lane

    def _lane_idle(self, lane: "ClientBase") -> bool:
        raise NotImplementedError

    def _retire(self, lane: "ClientBase") -> None:
        raise NotImplementedError

    @property
    def routes(self) -> Dict[str, Any]:
        """What routing knows now: ``shards`` (0 before the first cluster
        answer, 1 without shards), ``map`` (each shard's owner) and
        ``owners`` (the addresses with a connection of their own)."""
        return {"shards": self._map.shards, "map": list(self._map.owners), "owners": sorted(self._lanes)}

    def _new_failing(self) -> "Failing":
        """A fresh retry deadline and back-off for one call or request."""
        return self._failing_type(self.retry_deadline, Backoff(self.backoff_first, self.backoff_max))


class ConsumerBase:
    """What the blocking and the asyncio consumer both take and keep (see
    Consumer): the group, the types, the ack batch, and a client of
    ``_client_type`` subscribed on every connection; ``_attach`` then hooks
    the subclass to that client."""

    _client_type: Callable[..., ClientBase]

    def __init__(self, address: Addresses, group: str, types: Optional[Sequence[str]] = None,
                 token: Optional[str] = None, *, ack_batch: int = 100, ack_interval: float = 1.0,
                 timeout: float = 30.0, connect_timeout: float = 5.0,
                 retry_deadline: Optional[float] = None, backoff_first: float = 0.05,
                 backoff_max: float = 2.0) -> None:
        self.group = group
        self.types = list(types) if types is not None else None
        self.ack_batch = max(1, ack_batch)
        self.ack_interval = ack_interval
        self._acks = AckBatch()
        self._client = self._client_type(address, token, timeout=timeout, connect_timeout=connect_timeout,
                                         retry_deadline=retry_deadline, backoff_first=backoff_first,
                                         backoff_max=backoff_max)
        self._client._subscribe = subscribe_line(group, self.types)
        self._closed = False
        self._attach()

    def _attach(self) -> None:
        raise NotImplementedError

    @property
    def connects(self) -> int:
        """Connections opened so far (more than one: it reconnected)."""
        return self._client.connects


class Failing:
    """How long something has gone without getting through, against its
    retry deadline (None: none), and its back-off."""

    def __init__(self, deadline: Optional[float], backoff: Backoff) -> None:
        self.deadline = deadline
        self.backoff = backoff
        self.since: Optional[float] = None
        self.error = ReboundError("disconnected", "not connected")

    def fail(self, error: ReboundError) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.error = error

    def ok(self) -> None:
        self.since = None
        self.backoff.reset()

    def expired(self) -> bool:
        return (self.since is not None and self.deadline is not None
                and time.monotonic() - self.since >= self.deadline)

    def next_wait(self, until: Optional[float] = None) -> float:
        """The next back-off step in seconds, cut so as not to pass the
        deadline nor ``until`` (a time.monotonic() value); may be <= 0."""
        d = self.backoff.next()
        now = time.monotonic()
        if self.deadline is not None and self.since is not None:
            d = min(d, self.since + self.deadline - now)
        if until is not None:
            d = min(d, until - now)
        return d


ClientBase._failing_type = Failing


class AckBatch:
    """The eids acked by the caller and not yet sent, and since when the
    oldest of them waits: a batch goes once it holds the consumer's
    ``ack_batch`` or its oldest is ``ack_interval`` seconds old."""

    def __init__(self) -> None:
        self.ids: List[str] = []
        self.since = 0.0

    def add(self, event: Union[Event, str], batch: int) -> bool:
        """Adds an event (the dict or its ``eid``); True when ``batch`` are
        waiting and they should go now."""
        eid = event if isinstance(event, str) else event["eid"]
        if not self.ids:
            self.since = time.monotonic()
        self.ids.append(eid)
        return len(self.ids) >= batch

    def due_at(self, interval: float) -> Optional[float]:
        """When the oldest waiting ack must go (a time.monotonic() value),
        None when none waits."""
        return self.since + interval if self.ids else None

    def take(self) -> Tuple[List[str], bytes]:
        """The next chunk of ids and its ack line; they leave the batch
        (put_back them when the ack did not get through)."""
        ids = self.ids[:ACK_CHUNK]
        del self.ids[:len(ids)]
        return ids, encode(request("ack", ids=ids))

    def put_back(self, ids: List[str]) -> None:
        self.ids[:0] = ids

    def clear(self) -> None:
        self.ids = []
