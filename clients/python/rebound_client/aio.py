"""The asyncio client and consumer."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ._protocol import ACK_CHUNK  # noqa: F401  (it was defined here too)
from ._protocol import (DROP, EVENT, MAP_DEADLINE, RESEND, Address, Addresses, Backoff, ClientBase, ConsumerBase,
                        Event, Failing, Item, ReboundError, Reply, bounce_request, check_handshake, decode, encode,
                        handshake_lines, match_reply, outcome, parse_address, pipeline_items, report_items,
                        request, route_rcpt)

Result = Union[Reply, ReboundError]


class _Refused(Exception):
    """The handshake was refused for now (unavailable, busy): try again,
    where the client's targets say."""


class _Req:
    """One request line and the future its final result goes to."""

    __slots__ = ("line", "future", "failing", "handshake")

    def __init__(self, line: bytes, future: "asyncio.Future[Any]", failing: Optional[Failing],
                 handshake: bool = False) -> None:
        self.line = line
        self.future = future
        self.failing = failing  # its own retry deadline and back-off; None for a handshake
        self.handshake = handshake


class _LineProtocol(asyncio.Protocol):
    def __init__(self, owner: "AsyncClient") -> None:
        self.owner = owner
        self.buf = bytearray()
        self.transport: Optional[asyncio.Transport] = None
        self.lost: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self.last_data = time.monotonic()
        self.replies = 0
        self.moved = False  # given up to follow an owner an instance named

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        self.buf += data
        start = 0
        buf = self.buf
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if not line.strip():
                continue
            try:
                obj = decode(line)
            except ReboundError:
                self.abort()
                break
            self.owner._on_line(self, obj)
        del buf[:start]

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class AsyncClient(ClientBase):
    """The asyncio client: the same calls as ``Client``, as coroutines.

    Concurrent calls share one connection and are pipelined (up to
    ``window`` unanswered), so ``asyncio.gather`` of many ``bounce`` calls,
    or one ``bounce_many``, goes as fast as the daemon answers. Reconnect,
    resend and the retry deadline work as in ``Client``; each request has
    its own deadline, counted from its first failure. Use ``async with``,
    or ``await client.close()``.

    With shards, requests about one recipient go straight to the owner of
    its shard, on a connection per owner, as with ``Client`` (``route``);
    each connection keeps its own pipeline and window.
    """

    def __init__(self, address: Addresses, token: Optional[str] = None, *, timeout: float = 30.0,
                 connect_timeout: float = 5.0, retry_deadline: Optional[float] = 60.0,
                 backoff_first: float = 0.05, backoff_max: float = 2.0, window: int = 1000,
                 route: bool = True) -> None:
        super().__init__(address, token, timeout, connect_timeout, retry_deadline, backoff_first,
                         backoff_max, window, route)
        self._map_task: Optional["asyncio.Task[None]"] = None
        self._unsent: Deque[_Req] = deque()
        self._inflight: Deque[_Req] = deque()
        self._proto: Optional[_LineProtocol] = None
        self._wake: Optional[asyncio.Event] = None
        self._pump_task: Optional["asyncio.Task[None]"] = None
        self._closed = False
        # lanes to addresses that own nothing now, answering what they were
        # sent before they close
        self._retired: Dict[ClientBase, "asyncio.Task[None]"] = {}
        # set by AsyncConsumer
        self._on_fatal: Callable[[ReboundError], None] = lambda e: None
        self._keep_connected = False

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- the engine

    def _start(self) -> None:
        if self._closed:
            raise ReboundError("closed", "the client is closed")
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        self._wake.set()

    def _new_req(self, line: bytes) -> _Req:
        fut = asyncio.get_running_loop().create_future()
        return _Req(line, fut, self._new_failing())

    def _enqueue(self, line: bytes, failing: Optional[Failing] = None) -> _Req:
        self._start()
        req = self._new_req(line)
        if failing is not None:
            req.failing = failing
        self._unsent.append(req)
        return req

    async def _submit(self, line: bytes) -> Result:
        return await self._enqueue(line).future

    # -- shards

    def _lane_idle(self, lane: ClientBase) -> bool:
        return not lane._inflight and not lane._unsent  # type: ignore[attr-defined]

    def _retire(self, lane: ClientBase) -> None:
        for addr, ln in list(self._lanes.items()):
            if ln is lane:
                del self._lanes[addr]
        if lane not in self._retired:
            self._retired[lane] = asyncio.get_running_loop().create_task(self._close_when_idle(lane))

    async def _close_when_idle(self, lane: ClientBase) -> None:
        # its requests end by themselves: answered, failed over to the other
        # instances, or out of time at their deadline
        while not self._lane_idle(lane):
            await asyncio.sleep(0.05)
        await lane.close()  # type: ignore[attr-defined]
        self._retired.pop(lane, None)

    async def _fetch_map(self) -> None:
        failing = Failing(MAP_DEADLINE, Backoff(self.backoff_first, self.backoff_max))
        try:
            r = await self._enqueue(encode(request("cluster")), failing).future
        except ReboundError as e:  # closed meanwhile
            r = e
        self._took_map(r if isinstance(r, ReboundError) else outcome(r))

    async def _map_ready(self) -> None:
        """Asks cluster when it is time to; waits for the answer only when
        there is no map yet (later asks run while requests go on with the
        map as it is)."""
        if not self._map.due(time.monotonic()):
            return
        if self._map_task is None or self._map_task.done():
            self._map_task = asyncio.get_running_loop().create_task(self._fetch_map())
        if not self._map.known:
            await asyncio.shield(self._map_task)

    def _enqueue_routed(self, line: bytes, rcpt: Optional[str]) -> _Req:
        lane = self._lane_for(rcpt) if self._routing() else None
        return (lane if lane is not None else self)._enqueue(line)  # type: ignore[attr-defined]

    @staticmethod
    def _resolve(req: _Req, result: Result) -> None:
        if not req.future.done():
            req.future.set_result(result)

    def _failed(self, req: _Req, error: ReboundError) -> bool:
        """Notes a failure of req; True (and req resolved) once its retry
        deadline has passed."""
        assert req.failing is not None
        req.failing.fail(error)
        if req.failing.expired():
            self._resolve(req, error)
            return True
        return False

    def _requeue(self, req: _Req) -> None:
        if self._closed:
            self._resolve(req, ReboundError("closed", "the client is closed"))
            return
        if not req.future.done():
            self._unsent.append(req)
            if self._wake is not None:
                self._wake.set()

    def _on_line(self, proto: _LineProtocol, obj: Dict[str, Any]) -> None:
        if proto is not self._proto:
            return
        what = match_reply(obj, bool(self._inflight))
        if what == EVENT:
            self._on_event(obj)
            return
        if what == DROP:
            proto.abort()
            return
        proto.replies += 1
        req = self._inflight.popleft()
        if what == RESEND and not req.handshake:
            err = ReboundError.from_reply(obj)
            if self._targets.moved(obj):
                # the instance named the owner: what is in flight goes there
                proto.moved = True
                proto.abort()
            if not self._failed(req, err):
                assert req.failing is not None
                asyncio.get_running_loop().call_later(req.failing.backoff.next(), self._requeue, req)
        else:
            self._resolve(req, obj)
        if self._unsent and self._wake is not None:
            self._wake.set()

    def _expire_unsent(self, error: ReboundError) -> None:
        keep: Deque[_Req] = deque()
        for req in self._unsent:
            if not req.future.done() and not self._failed(req, error):
                keep.append(req)
        self._unsent = keep

    async def _open(self) -> _LineProtocol:
        loop = asyncio.get_running_loop()
        kind, where = parse_address(self._targets.current)
        if kind == "unix":
            transport, proto = await loop.create_unix_connection(lambda: _LineProtocol(self), where)
        else:
            host, port = where
            transport, proto = await loop.create_connection(lambda: _LineProtocol(self), host, port)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.connects += 1
        self._proto = proto
        try:
            for line in handshake_lines(self.token, self._subscribe):
                req = _Req(line, loop.create_future(), None, handshake=True)
                self._inflight.append(req)
                transport.write(line)
                await asyncio.wait({req.future, proto.lost}, timeout=self.timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not req.future.done():
                    raise ConnectionError("no reply to the handshake")
                retry = check_handshake(req.future.result())
                if retry is not None:
                    # a subscribe at a standby names the owner: go there
                    if not self._targets.moved(retry.reply):
                        self._targets.failed()
                    raise _Refused(retry.message)
        except BaseException:
            self._proto = None
            self._inflight.clear()
            transport.abort()
            raise
        return proto

    async def _pump(self) -> None:
        """Owns the connection: opens it when there is work, writes the
        queued requests, and on a drop puts the unanswered ones back at the
        front of the queue and reconnects with back-off."""
        assert self._wake is not None
        backoff = Backoff(self.backoff_first, self.backoff_max)
        tick = min(1.0, self.timeout / 2)
        while not self._closed:
            if not self._unsent and not self._keep_connected:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                proto = await asyncio.wait_for(self._open(), self.connect_timeout + self.timeout)
            except ReboundError as e:
                # a wrong token or a refused subscribe: resending cannot help
                for req in self._unsent:
                    self._resolve(req, e)
                self._unsent.clear()
                self._on_fatal(e)
                if self._keep_connected:
                    return
                continue
            except _Refused as e:
                # the handshake was refused for now (unavailable, busy): _open
                # has chosen where to go next
                self._expire_unsent(ReboundError("disconnected", "cannot connect to %s: %s" % (self.address, e)))
                await asyncio.sleep(backoff.next())
                continue
            except (OSError, asyncio.TimeoutError) as e:
                where = self._targets.current
                self._targets.failed()
                self._expire_unsent(ReboundError("disconnected", "cannot connect to %s: %s" % (where, e)))
                await asyncio.sleep(backoff.next())
                continue
            transport = proto.transport
            assert transport is not None
            while not proto.lost.done() and not self._closed:
                while self._unsent and len(self._inflight) < self.window and not transport.is_closing():
                    req = self._unsent.popleft()
                    if req.future.done():
                        continue  # the caller gave up on it
                    if not self._inflight:
                        # the silence that counts starts with the first
                        # request waiting, not with the last idle moment
                        proto.last_data = time.monotonic()
                    self._inflight.append(req)
                    transport.write(req.line)
                if self._inflight and time.monotonic() - proto.last_data > self.timeout:
                    proto.abort()
                    break
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({proto.lost, waiter}, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    proto.abort()
                    raise
                finally:
                    waiter.cancel()
            proto.abort()
            self._proto = None
            err = ReboundError("disconnected", "the connection to %s dropped" % (self._targets.current,))
            if not proto.moved:
                self._targets.failed()
            back = list(self._inflight)
            self._inflight.clear()
            for req in reversed(back):
                if not req.future.done() and not self._failed(req, err):
                    self._unsent.appendleft(req)
            if proto.replies:
                backoff.reset()
            if not self._closed:
                await asyncio.sleep(backoff.next())

    async def close(self) -> None:
        """Closes the connection; requests still waiting get
        ReboundError("closed")."""
        self._closed = True
        err = ReboundError("closed", "the client is closed")
        for req in [*self._inflight, *self._unsent]:
            self._resolve(req, err)
        self._inflight.clear()
        self._unsent.clear()
        if self._proto is not None:
            self._proto.abort()
        if self._map_task is not None and not self._map_task.done():
            self._map_task.cancel()
        lanes = list(self._lanes.values())
        self._lanes.clear()
        for lane, task in list(self._retired.items()):
            task.cancel()
            lanes.append(lane)
        self._retired.clear()
        for lane in lanes:
            await lane.close()  # type: ignore[attr-defined]
        if self._pump_task is not None and not self._pump_task.done():
            self._pump_task.cancel()
            try:
                await self._pump_task
            except (asyncio.CancelledError, Exception):
                pass

    async def _call(self, obj: Mapping[str, Any]) -> Reply:
        r = (await self._run([(encode(obj), route_rcpt(obj))]))[0]
        if isinstance(r, ReboundError):
            raise r
        return r

    async def _run(self, items: Sequence[Item]) -> List[Result]:
        self._start()
        if self._routing() and any(rcpt is not None for _, rcpt in items):
            await self._map_ready()
        reqs: List[Union[_Req, ReboundError]] = []
        # queued in one go, without an await: each connection gets its part
        # of the batch in the batch's order
        for line, rcpt in items:
            if isinstance(line, ReboundError):
                reqs.append(line)
            else:
                reqs.append(self._enqueue_routed(line, rcpt))
        out: List[Result] = []
        for r in reqs:
            if isinstance(r, ReboundError):
                out.append(r)
            else:
                res = await r.future
                out.append(res if isinstance(res, ReboundError) else outcome(res))
        return out

    # -- requests

    async def request(self, op: str, **fields: Any) -> Reply:
        """Any op with these fields (None values left out)."""
        return await self._call(request(op, **fields))

    async def pipeline(self, requests: Iterable[Mapping[str, Any]]) -> List[Result]:
        """As ``Client.pipeline``: one reply dict or ReboundError per
        request, in order."""
        return await self._run(pipeline_items(requests))

    async def bounce_many(self, reports: Iterable[Mapping[str, Any]]) -> List[Result]:
        """As ``Client.bounce_many``: one reply dict or ReboundError per
        report, in order, each exactly once."""
        return await self._run(report_items(reports))

    async def bounce(self, id: str, rcpt: str, code: int, enhanced: Optional[str] = None,
                     text: Optional[str] = None, campaign: Optional[str] = None,
                     meta: Optional[Mapping[str, Any]] = None, not_before: Optional[int] = None) -> Reply:
        """Reports a failed delivery; returns reboundd's decision."""
        return await self._call(bounce_request(id, rcpt, code, enhanced, text, campaign, meta, not_before))

    async def delivered(self, id: str, rcpt: Optional[str] = None) -> Reply:
        """Reports that a retry (or a send) went through."""
        return await self._call(request("delivered", id=id, rcpt=rcpt))

    async def cancel(self, id: str) -> Reply:
        """Forgets a message (no event)."""
        return await self._call(request("cancel", id=id))

    async def get(self, id: Optional[str] = None, rcpt: Optional[str] = None) -> Reply:
        """What reboundd knows about a message or a recipient; ReboundError
        ``not_found`` for an unknown message."""
        return await self._call(request("get", id=id, rcpt=rcpt))

    async def classify(self, code: Optional[int] = None, enhanced: Optional[str] = None,
                       text: Optional[str] = None) -> Reply:
        """What the policy would do with a reply, changing nothing."""
        return await self._call(request("classify", code=code, enhanced=enhanced, text=text))

    async def stats(self) -> Reply:
        """Queue and daemon state."""
        return await self._call(request("stats"))

    async def ping(self) -> Reply:
        """A health check."""
        return await self._call(request("ping"))


class AsyncConsumer(ConsumerBase):
    """Receives events for a consumer group in asyncio::

        async with AsyncConsumer("127.0.0.1:7411", "senders", types=["retry"]) as c:
            async for event in c:
                await handle(event)
                await c.ack(event)

    Acks are batched as in ``Consumer`` (``ack_batch`` events, or
    ``ack_interval`` seconds after the oldest unsent one, and on close).
    The connection is kept open; after a drop it reconnects with back-off
    and subscribes again, and the events not acked come again.
    """

    _client_type = AsyncClient
    _client: AsyncClient

    def _attach(self) -> None:
        self._client._on_event = self._put
        self._client._on_fatal = self._fatal_error
        self._client._keep_connected = True
        self._queue: Optional["asyncio.Queue[Union[Event, ReboundError]]"] = None
        self._ack_task: Optional["asyncio.Task[None]"] = None

    def _ensure(self) -> "asyncio.Queue[Union[Event, ReboundError]]":
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._client._start()
        return self._queue

    def _put(self, ev: Event) -> None:
        self._ensure().put_nowait(ev)

    def _fatal_error(self, e: ReboundError) -> None:
        self._ensure().put_nowait(e)

    async def __aenter__(self) -> "AsyncConsumer":
        self._ensure()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self) -> Event:
        ev = await self.next_event()
        if ev is None:
            raise StopAsyncIteration
        return ev

    async def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (None: until one
        comes); None on time-out or once closed."""
        if self._closed:
            return None
        q = self._ensure()
        try:
            item = await asyncio.wait_for(q.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, ReboundError):
            raise item
        return item  # None: closed meanwhile

    async def _ack_later(self) -> None:
        await asyncio.sleep(self.ack_interval)
        self._ack_task = None
        try:
            await self.flush()
        except ReboundError:
            pass  # kept in _acks: the next ack or close sends them

    async def ack(self, event: Union[Event, str]) -> None:
        """Marks an event (the dict or its ``eid``) as handled; sent in a
        batch. Call it only after acting on the event."""
        if self._acks.add(event, self.ack_batch):
            await self.flush()
        elif self._ack_task is None:
            self._ack_task = asyncio.get_running_loop().create_task(self._ack_later())

    async def flush(self) -> None:
        """Sends the acks gathered so far now."""
        while self._acks.ids:
            ids, line = self._acks.take()
            r = await self._client._submit(line)
            if isinstance(r, ReboundError):
                self._acks.put_back(ids)
                raise r

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Sends the pending acks (for at most ``flush_timeout`` seconds;
        the events of acks not sent come again) and closes."""
        if self._closed:
            return
        self._closed = True
        if self._ack_task is not None:
            self._ack_task.cancel()
            self._ack_task = None
        if self._acks.ids and self._queue is not None:
            try:
                await asyncio.wait_for(self.flush(), flush_timeout)
            except (ReboundError, asyncio.TimeoutError):
                pass
        await self._client.close()
        if self._queue is not None:
            self._queue.put_nowait(None)  # type: ignore[arg-type]  # wakes a waiting next_event
