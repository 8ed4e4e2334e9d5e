"""The blocking client and consumer."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ._protocol import ACK_CHUNK  # noqa: F401  (importable from here, where it was first defined)
from ._protocol import (DROP, EVENT, MAP_DEADLINE, RESEND, Address, Addresses, ClientBase, ConsumerBase, Event,
                        Failing, Item, Line, ReboundError, Reply, bounce_request, check_handshake, decode, encode,
                        handshake_lines, is_reply, match_reply, outcome, parse_address, pipeline_items,
                        report_items, request, route_rcpt, unexpected)

Result = Union[Reply, ReboundError]


class _Dropped(Exception):
    """The connection is no longer usable; resend on a new one."""

    def __init__(self, code: str, message: str, reply: Optional[Reply] = None) -> None:
        super().__init__(message)
        self.error = ReboundError(code, message, reply)

    @classmethod
    def of(cls, error: ReboundError) -> "_Dropped":
        return cls(error.code, error.message, error.reply)


class _Conn:
    """One socket to reboundd, non-blocking, with its line buffers."""

    def __init__(self, address: Address, connect_timeout: float) -> None:
        kind, where = parse_address(address)
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(connect_timeout)
            try:
                s.connect(where)
            except OSError:
                s.close()
                raise
        else:
            s = socket.create_connection(where, timeout=connect_timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # a consumer may wait hours for an event: let the kernel notice
            # a peer that vanished without a FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setblocking(False)
        self.sock = s
        self.inbuf = bytearray()
        self.out = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def take(self) -> List[Dict[str, Any]]:
        """The complete lines received so far, decoded, in order; they
        leave the buffer (a partial line stays)."""
        buf = self.inbuf
        end = buf.rfind(b"\n")
        if end < 0:
            return []
        lines = bytes(buf[:end]).split(b"\n")
        del buf[:end + 1]
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(decode(line))
                except ReboundError as e:
                    raise _Dropped(e.code, e.message) from None
        return out

    def pump(self, timeout: float) -> bool:
        """Writes what it can of the output and reads what has arrived,
        waiting up to timeout seconds for either. False when nothing
        happened in that time; _Dropped when the peer closed."""
        r, w, _ = select.select([self.sock], [self.sock] if self.out else [], [], max(0.0, timeout))
        if w:
            try:
                n = self.sock.send(self.out)
                del self.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                raise _Dropped("disconnected", "send failed: %s" % e) from None
        if r:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                raise _Dropped("disconnected", "receive failed: %s" % e) from None
            if data == b"":
                raise _Dropped("disconnected", "reboundd closed the connection")
            if data:
                self.inbuf += data
        return bool(r or w)


class _Failing(Failing):
    """Failing, sleeping its back-off in this thread."""

    def wait(self, until: Optional[float] = None) -> None:
        """Sleeps the next back-off step, never past the deadline nor past
        ``until`` (a time.monotonic() value)."""
        d = self.next_wait(until)
        if d > 0:
            time.sleep(d)


class Client(ClientBase):
    """A blocking client on one long-lived connection to reboundd.

    ``address`` is ``"host:port"`` for TCP or a path (anything with a "/")
    for the Unix socket, or a list of those: several reboundd sharing one
    schedule (``lease_ttl``), tried in turn when one cannot be reached or
    drops the connection; an ``unavailable`` reply naming the ``owner``
    moves the client there. ``token`` is sent with ``auth`` on every new
    connection when given. The connection is opened on the first request.

    Every request that gets no reply because the connection dropped, or
    gets ``unavailable`` (Redis down, or the daemon still loading), is sent
    again on a new connection with exponential back-off (``backoff_first``
    doubling up to ``backoff_max`` seconds). The protocol makes this safe:
    a repeated ``bounce`` while its retry is pending is answered as the
    first one, and ``delivered``/``cancel`` are harmless to repeat. After
    ``retry_deadline`` seconds without getting through (None: forever) the
    call fails with ``ReboundError`` (code ``disconnected`` or
    ``unavailable``). ``timeout`` is how long a connection may stay silent
    while replies are due before it is taken for dead.

    One call runs at a time (a lock serializes threads); for throughput,
    send many reports in one ``bounce_many`` or ``pipeline`` call.

    With shards (several reboundd, each owning some shards of the schedule
    by recipient), the client asks ``cluster`` on its first request and
    sends each request about one recipient (``bounce``; ``delivered``,
    ``get``, ``cancel``, ``unsuppress`` with ``rcpt``) straight to the owner
    of that recipient's shard, on a connection of its own per owner (opened
    on first use); the rest goes where it would without shards. A batch is
    split by owner and its parts sent at once, each in a thread of its own;
    the results come back in the order of the batch. ``route=False`` sends
    everything to the addresses given (which relay what they do not own).
    """

    def __init__(self, address: Addresses, token: Optional[str] = None, *, timeout: float = 30.0,
                 connect_timeout: float = 5.0, retry_deadline: Optional[float] = 60.0,
                 backoff_first: float = 0.05, backoff_max: float = 2.0, window: int = 1000,
                 route: bool = True) -> None:
        super().__init__(address, token, timeout, connect_timeout, retry_deadline, backoff_first,
                         backoff_max, window, route)
        self._conn: Optional[_Conn] = None
        self._lock = threading.RLock()
        self._closed = False

    # -- connection

    _failing_type = _Failing

    def _new_failing(self) -> _Failing:
        return super()._new_failing()  # type: ignore[return-value]

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _handshake_call(self, conn: _Conn, line: bytes) -> Reply:
        """Sends one line on a new connection and waits for its reply."""
        conn.out += line
        deadline = time.monotonic() + self.timeout
        reply: Optional[Reply] = None
        while True:
            for obj in conn.take():
                if not is_reply(obj):
                    self._on_event(obj)  # events may follow the reply at once
                elif reply is None:
                    reply = obj  # busy too: check_handshake judges it
                else:
                    raise _Dropped.of(unexpected(obj))
            if reply is not None:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Dropped("disconnected", "no reply to the handshake in %.1fs" % self.timeout)
            conn.pump(left)

    def _connection(self) -> _Conn:
        """The open connection, or a new one (authenticated, subscribed).
        Raises OSError/_Dropped for what a retry may cure and ReboundError
        for what it cannot (a wrong token, a refused subscribe)."""
        if self._closed:
            raise ReboundError("closed", "the client is closed")
        if self._conn is not None:
            return self._conn
        conn = _Conn(self._targets.current, self.connect_timeout)
        self.connects += 1
        try:
            for line in handshake_lines(self.token, self._subscribe):
                retry = check_handshake(self._handshake_call(conn, line))
                if retry is not None:
                    # a subscribe at a standby names the owner: go there
                    if not self._targets.moved(retry.reply):
                        self._targets.failed()
                    raise _Dropped.of(retry)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _connect_noting(self, failing: _Failing) -> Optional[_Conn]:
        """The connection, or None with the failure noted in ``failing``
        when a retry may cure it; ReboundError when none can."""
        where = self._targets.current
        try:
            return self._connection()
        except _Dropped as e:
            if e.error.code == "disconnected":
                self._targets.failed()
            failing.fail(e.error)
        except OSError as e:
            self._targets.failed()
            failing.fail(ReboundError("disconnected", "cannot connect to %s: %s" % (where, e)))
        return None

    def close(self) -> None:
        """Closes the connection; later calls raise ReboundError("closed")."""
        with self._lock:
            self._closed = True
            self._drop()
            for lane in self._lanes.values():
                lane.close()  # type: ignore[attr-defined]
            self._lanes.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the engine: send lines, read replies in order, resend what failed

    def _run(self, lines: Sequence[Line]) -> List[Result]:
        """Sends every line (pipelined, at most ``window`` unanswered) and
        returns each one's final reply in order: the reply dict when ok, a
        ReboundError otherwise. An item that is already a ReboundError is
        not sent and comes back as it is."""
        with self._lock:
            n = len(lines)
            results: List[Optional[Result]] = [None] * n
            todo: Deque[int] = deque()
            for i, line in enumerate(lines):
                if isinstance(line, ReboundError):
                    results[i] = line
                else:
                    todo.append(i)
            failing = self._new_failing()
            while todo:
                if failing.since is not None:
                    if failing.expired():
                        for i in todo:
                            results[i] = failing.error
                        break
                    failing.wait()
                try:
                    conn = self._connect_noting(failing)
                except ReboundError as e:
                    for i in todo:
                        results[i] = e
                    break
                if conn is None:
                    continue
                inflight: Deque[int] = deque()
                retry: List[int] = []
                try:
                    while todo or inflight:
                        moved = False
                        for obj in conn.take():
                            what = match_reply(obj, bool(inflight))
                            if what == EVENT:
                                self._on_event(obj)
                                continue
                            if what == DROP:
                                raise _Dropped.of(unexpected(obj))
                            i = inflight.popleft()
                            if what == RESEND:
                                retry.append(i)
                                failing.fail(ReboundError.from_reply(obj))
                                moved = self._targets.moved(obj) or moved
                            else:
                                results[i] = outcome(obj)
                                if not retry:
                                    failing.ok()
                        if moved:
                            # the instance named the owner: resend there
                            raise _Dropped("unavailable", "moving to the owner %s" % (self._targets.current,))
                        while todo and len(inflight) < self.window:
                            i = todo.popleft()
                            conn.out += lines[i]  # type: ignore[arg-type]
                            inflight.append(i)
                        if not inflight:
                            break
                        if not conn.pump(self.timeout):
                            raise _Dropped("disconnected", "no reply from reboundd in %.1fs" % self.timeout)
                except _Dropped as e:
                    self._drop()
                    if e.error.code == "disconnected":
                        self._targets.failed()
                    failing.fail(e.error)
                    todo = deque(sorted([*inflight, *retry, *todo]))
                    continue
                if retry:
                    todo = deque(retry)
            return results  # type: ignore[return-value]

    # -- shards: a batch split by owner

    def _lane_idle(self, lane: ClientBase) -> bool:
        return True  # a call holds the lock of every client it uses until it ends

    def _retire(self, lane: ClientBase) -> None:
        lane.close()  # type: ignore[attr-defined]
        for addr, ln in list(self._lanes.items()):
            if ln is lane:
                del self._lanes[addr]

    def _refresh_map(self) -> None:
        """Asks ``cluster`` here when it is time to (the first request, a
        few seconds on, or after something moved), for at most
        MAP_DEADLINE seconds; nobody answering keeps the map as it was."""
        if not self._map.due(time.monotonic()):
            return
        saved = self.retry_deadline
        self.retry_deadline = MAP_DEADLINE if saved is None else min(saved, MAP_DEADLINE)
        try:
            r = self._run([encode(request("cluster"))])[0]
        finally:
            self.retry_deadline = saved
        self._took_map(r)

    def _run_items(self, items: Sequence[Item]) -> List[Result]:
        """As _run, each request about a recipient sent to the owner of its
        shard when there are shards: one group per owner, the groups at
        once (a thread each), this client's own in this thread."""
        with self._lock:
            if not self._routing() or all(rcpt is None for _, rcpt in items):
                return self._run([line for line, _ in items])
            if self._closed:
                raise ReboundError("closed", "the client is closed")
            self._refresh_map()
            groups: Dict[Optional[ClientBase], List[int]] = {}
            for i, (line, rcpt) in enumerate(items):
                lane = None if isinstance(line, ReboundError) else self._lane_for(rcpt)
                groups.setdefault(lane, []).append(i)
            results: List[Optional[Result]] = [None] * len(items)
            failed: List[BaseException] = []

            def run(client: "Client", idx: List[int]) -> None:
                try:
                    for i, r in zip(idx, client._run([items[i][0] for i in idx])):
                        results[i] = r
                except BaseException as e:  # re-raised in the caller's thread
                    failed.append(e)

            threads = [threading.Thread(target=run, args=(lane, idx), daemon=True)
                       for lane, idx in groups.items() if lane is not None]
            for t in threads:
                t.start()
            run(self, groups.get(None, []))
            for t in threads:
                t.join()
            if failed:
                raise failed[0]
            return results  # type: ignore[return-value]

    def _call(self, obj: Mapping[str, Any]) -> Reply:
        r = self._run_items([(encode(obj), route_rcpt(obj))])[0]
        if isinstance(r, ReboundError):
            raise r
        return r

    # -- requests

    def request(self, op: str, **fields: Any) -> Reply:
        """Any op with these fields (None values left out); the reply, or
        ReboundError for an error reply."""
        return self._call(request(op, **fields))

    def pipeline(self, requests: Iterable[Mapping[str, Any]]) -> List[Result]:
        """Sends many requests (each a full request object with "op") on
        the connection without waiting for each reply. Returns one result
        per request, in order: the reply dict, or a ReboundError for an
        error reply (an error does not stop the others)."""
        return self._run_items(pipeline_items(requests))

    def bounce_many(self, reports: Iterable[Mapping[str, Any]]) -> List[Result]:
        """Reports many failed deliveries at once. Each report is a mapping
        with bounce()'s parameter names (``id``, ``rcpt``, ``code``, and
        optionally ``enhanced``, ``text``, ``campaign``, ``meta``,
        ``not_before``). Returns one result per report, in order: the
        reply dict, or a ReboundError (for example ``bad_request`` for an
        invalid report, or ``unavailable`` when the retry deadline ran
        out). Each report gets exactly one result, whatever reconnects and
        resends happened underneath."""
        return self._run_items(report_items(reports))

    def bounce(self, id: str, rcpt: str, code: int, enhanced: Optional[str] = None,
               text: Optional[str] = None, campaign: Optional[str] = None,
               meta: Optional[Mapping[str, Any]] = None, not_before: Optional[int] = None) -> Reply:
        """Reports a failed delivery. Returns reboundd's decision, e.g.
        ``{"ok": True, "id": ..., "class": "greylist", "action": "retry",
        "attempt": 1, "retry_at": ...}``; ``action`` is ``retry``,
        ``give_up`` or ``suppress``."""
        return self._call(bounce_request(id, rcpt, code, enhanced, text, campaign, meta, not_before))

    def delivered(self, id: str, rcpt: Optional[str] = None) -> Reply:
        """Reports that a retry (or a send) went through: drops the pending
        retry, resets the recipient's streak and lifts its suppression.
        Returns ``{"ok": True, "id": ..., "found": ..., "unsuppressed": ...}``."""
        return self._call(request("delivered", id=id, rcpt=rcpt))

    def cancel(self, id: str) -> Reply:
        """Forgets a message (no event). Returns ``{"ok": True, "id": ...,
        "found": ...}``."""
        return self._call(request("cancel", id=id))

    def get(self, id: Optional[str] = None, rcpt: Optional[str] = None) -> Reply:
        """What reboundd knows about a message (``id``) or a recipient
        (``rcpt``). Raises ReboundError with code ``not_found`` for a
        message it does not know."""
        return self._call(request("get", id=id, rcpt=rcpt))

    def classify(self, code: Optional[int] = None, enhanced: Optional[str] = None,
                 text: Optional[str] = None) -> Reply:
        """What the policy would do with a reply, changing nothing."""
        return self._call(request("classify", code=code, enhanced=enhanced, text=text))

    def stats(self) -> Reply:
        """Queue and daemon state."""
        return self._call(request("stats"))

    def ping(self) -> Reply:
        """A health check: ``{"ok": True}``."""
        return self._call(request("ping"))


class Consumer(ConsumerBase):
    """Receives events for a consumer group, blocking.

    Use it as a context manager and an iterator of event dicts::

        with Consumer("127.0.0.1:7411", "senders", types=["retry"]) as c:
            for event in c:
                handle(event)
                c.ack(event)

    ``ack(event)`` after acting on the event; acks are batched and sent
    when ``ack_batch`` have gathered, ``ack_interval`` seconds after the
    oldest unsent one, and on ``close()``. When the connection drops, the
    consumer reconnects with back-off, subscribes again and goes on;
    events delivered but not acked come again (delivery is at least once,
    so handle a repeated event as one). ``retry_deadline`` (None: forever)
    bounds how long it keeps reconnecting before raising ReboundError.
    """

    _client_type = Client
    _client: Client

    def _attach(self) -> None:
        self._client._on_event = self._events_append
        self._events: Deque[Event] = deque()

    def _events_append(self, ev: Event) -> None:
        self._events.append(ev)

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> "Consumer":
        return self

    def __next__(self) -> Event:
        ev = self.next_event()
        if ev is None:
            raise StopIteration
        return ev

    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (None: until
        one comes); None on time-out or once closed. Connects (and
        reconnects) as needed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            due = self._acks.due_at(self.ack_interval)
            if due is not None and time.monotonic() >= due and self._client._conn is not None:
                # while disconnected, _read below reconnects within the
                # time-out first; flush() would wait for the connection
                self.flush()
            if self._events:
                return self._events.popleft()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait = 1.0 if deadline is None else deadline - now
            due = self._acks.due_at(self.ack_interval)
            if due is not None:
                wait = min(wait, due - now)
            self._read(max(0.0, wait))
        return None

    def _read(self, wait: float) -> None:
        """Reads for up to wait seconds (less once an event arrived),
        reconnecting when the connection is gone."""
        c = self._client
        failing = c._new_failing()
        end = time.monotonic() + wait
        with c._lock:
            while not self._events:
                if failing.since is not None:
                    if failing.expired():
                        raise failing.error
                    if time.monotonic() >= end:
                        return
                    failing.wait(end)
                    if time.monotonic() >= end:
                        return
                conn = c._connect_noting(failing)
                if conn is None:
                    continue
                failing.ok()
                try:
                    for obj in conn.take():
                        # nothing is asked outside _run: only busy comes unasked
                        if match_reply(obj, False) == DROP:
                            raise _Dropped.of(unexpected(obj))
                        self._events.append(obj)
                    left = end - time.monotonic()
                    if self._events or left <= 0:
                        return
                    conn.pump(left)
                except _Dropped as e:
                    c._drop()
                    if e.error.code == "disconnected":
                        c._targets.failed()
                    failing.fail(e.error)

    def ack(self, event: Union[Event, str]) -> None:
        """Marks an event (the dict, or its ``eid``) as handled. Sent in a
        batch; call it only after acting on the event."""
        if self._acks.add(event, self.ack_batch):
            self.flush()

    def flush(self) -> None:
        """Sends the acks gathered so far now."""
        while self._acks.ids:
            ids, line = self._acks.take()
            r = self._client._run([line])[0]
            if isinstance(r, ReboundError):
                self._acks.put_back(ids)
                raise r

    def close(self, flush_timeout: float = 5.0) -> None:
        """Sends the pending acks, trying for at most ``flush_timeout``
        seconds, and closes the connection. Acks that could not be sent
        are dropped: their events will be delivered again."""
        if self._closed:
            return
        c = self._client
        try:
            if self._acks.ids and not c._closed:
                saved = c.retry_deadline
                c.retry_deadline = flush_timeout if saved is None else min(saved, flush_timeout)
                try:
                    self.flush()
                except ReboundError:
                    pass
                finally:
                    c.retry_deadline = saved
        finally:
            self._closed = True
            self._acks.clear()
            c.close()
