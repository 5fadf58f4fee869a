"""The slice engine's origin client: HTTP/1.1 GETs whose bodies land in the slice buffers.

Every byte of a miss crossed user space three times on the general client (uvloop's
``bytes`` per read, aiohttp's body chunk, the copy into the slice's buffer) and each small
exchange cost ~175 us of aiohttp. Slice requests are the simplest HTTP there is (a GET
without a body, a Range, a Content-Length answer), so they get a client of their own: a
pool of :class:`asyncio.BufferedProtocol` connections whose reads go straight into the
buffer the caller hands over (:meth:`DirectBody.read_into`), one kernel copy per byte.

Heads are parsed by httptools (llhttp, uvicorn's parser). Content-Length bodies are read
into the caller's buffer; bytes after the announced body are never read as body and the
connection is not reused (what nginx does with "upstream sent more data than
specified"). Chunked and close-delimited bodies, rare for Range answers, are decoded
through the same parser and copied. Interim 1xx answers go to the request's interim sink.
Failures are httpx's exceptions, so the retries, timeouts and metrics of
:class:`~app.upstream.client.UpstreamClient` and
:class:`~app.upstream.transport.ObservedTransport` apply unchanged.

The pool holds at most ``pool_size`` connections (its own, beside the general client's),
reuses the most recently released first and closes one idle for ``keepalive_seconds``.

Length: ~600 lines in one module on purpose: the connection's two read targets (the
caller's buffer, its scratch), the body framings that consume them and the pool that owns
the connections are one state machine; split, its private fields would become interfaces.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httptools
import httpx

from app.edge.interim import interim_sink
from app.pulse import Pulse
from app.upstream.wire import (
    DIRECT,
    control_character_in,
    target_of,
    transfer_coding_refused,
    transfer_codings,
)
from cache.ratelimit import RateLimitedLog

SCRATCH_BYTES = 64 * 1024  # heads, and body bytes read while no buffer was handed over
HEAD_LIMIT = SCRATCH_BYTES  # a response head larger than this is refused
_NO_BODY_STATUSES = frozenset({204, 304})
MAX_INTERIM = 16  # 1xx answers before the final one; an origin looping on them is broken


class NothingReceived(httpx.ReadError):
    """The connection ended before any byte of a response."""


class _Head:
    """httptools callbacks: a response head's status and fields; a chunked body's bytes.

    A chunk's bytes are handed on only once the size line after it (or the last chunk's)
    has parsed: a chunk that claimed more bytes than it had takes in the CRLF and size
    line after it as data, which only the next size line shows. Nothing after the end of
    the message is body (the parser goes on reading a response that follows it)."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.body: list[bytes] = []  # body pieces whose framing has been confirmed
        self.unconfirmed: list[bytes] = []  # the current chunk's pieces
        self.message_complete = False
        self.excess = False  # bytes came after the message's end

    def on_message_begin(self) -> None:
        self.excess = self.excess or self.message_complete

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:  # a chunked body's trailer fields are not the head's
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, body: bytes) -> None:
        if not self.message_complete:
            self.unconfirmed.append(body)

    def on_chunk_header(self) -> None:
        self._confirm()

    def on_message_complete(self) -> None:
        if not self.message_complete:
            self._confirm()
            self.message_complete = True

    def _confirm(self) -> None:
        if self.unconfirmed:
            self.body.extend(self.unconfirmed)
            self.unconfirmed = []


class _Connection(asyncio.BufferedProtocol):
    """One origin connection. Reads go into the caller's buffer while it waits in
    :meth:`read_into`, else into ``scratch`` (reading pauses when it is full)."""

    def __init__(self, pool: DirectTransport, address: tuple[str, int]) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        # Allocated with the first read: a connect cancelled once the connection was made
        # leaves the protocol in a cycle with its transport, for the collector's oldest
        # generation (app/engine/heaptrim.py).
        self.scratch = bytearray()
        self.start = 0  # unread bytes in scratch: [start, end)
        self.end = 0
        self.target: memoryview | None = None  # the caller's buffer, while it waits
        self.into_target = False  # the last get_buffer handed out the target
        self.got = 0  # bytes read into the target
        self.ready = Pulse()  # fired by every read and by the connection's end
        self.closed = False
        self.error: Exception | None = None  # why the connection was lost, if not cleanly
        self.paused = False
        self.idle_timer: asyncio.TimerHandle | None = None  # set while it waits in the pool

    # --- asyncio protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self.target
        if target is not None and self.got < len(target) and self.start == self.end:
            self.into_target = True
            return target[self.got :]
        self.into_target = False
        if not self.scratch:
            self.scratch = bytearray(SCRATCH_BYTES)
        return memoryview(self.scratch)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.idle_timer is not None:
            # Bytes after a complete answer that came late (no request is out): never read
            # as the next answer. Counted as those in the same read as the answer's end:
            # when they arrive is the network's doing, not the origin's (helper-35).
            self.pool.dropped("origin_excess_bytes", "origin sent bytes on an idle connection")
            self.pool.forget(self)
            return
        if self.into_target:
            self.got += nbytes
        else:
            self.end += nbytes
            if self.end == len(self.scratch):
                self._pause()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: HTTP/1.1 has no half-closed use here

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self.pool.forget(self)
        self._wake()

    # --- reading ----------------------------------------------------------------------

    def _wake(self) -> None:
        self.ready.fire()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    async def _wait(self, timeout: float | None, late: str = "no bytes from the origin") -> None:
        """Until the next read or the connection's end; ReadTimeout after ``timeout``."""
        self._resume()
        if not await self.ready.wait(timeout):
            raise httpx.ReadTimeout(f"{late} in time")

    def lost(self, what: str) -> httpx.TransportError:
        if self.error is not None:
            return httpx.ReadError(f"connection lost {what}: {self.error}")
        return httpx.RemoteProtocolError(f"origin closed the connection {what}")

    async def read_head(self, deadline: float | None) -> tuple[httptools.HttpResponseParser, _Head]:
        """The next response head (its bytes consumed from scratch), parsed, by ``deadline``
        (the loop's clock), which bounds the whole head, not each read: an origin dripping
        a byte at a time would otherwise hold the connection for as long as it likes (a
        probe runs on after its clients left, for the others that may join it)."""
        loop = asyncio.get_running_loop()
        while True:
            found = self.scratch.find(b"\r\n\r\n", self.start, self.end)
            if found >= 0:
                head_end = found + 4
                break
            if self.end - self.start >= HEAD_LIMIT:
                raise httpx.RemoteProtocolError("origin response head too large")
            if self.closed:
                if self.end == self.start:
                    raise NothingReceived(
                        f"connection lost before a response: {self.error or 'closed'}"
                    )
                raise self.lost("in a head")
            if self.end == len(self.scratch):  # make room after an earlier interim head
                pending = self.end - self.start
                self.scratch[:pending] = self.scratch[self.start : self.end]
                self.start, self.end = 0, pending
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await self._wait(remaining, "no complete response head")
        head = bytes(self.scratch[self.start : head_end])
        self.start = head_end
        self._drained()
        fields = _Head()
        parser = httptools.HttpResponseParser(fields)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # a 101: refused by the caller
        except httptools.HttpParserError as error:
            raise httpx.RemoteProtocolError(f"bad origin response head: {error}") from None
        if not fields.complete:
            raise httpx.RemoteProtocolError("bad origin response head")
        return parser, fields

    def _drained(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
            self._resume()

    async def read_raw(self, view: memoryview, timeout: float | None) -> int:
        """Up to ``len(view)`` bytes into ``view``; 0 once the connection has ended."""
        pending = self.end - self.start
        if pending:
            count = min(pending, len(view))
            view[:count] = self.scratch[self.start : self.start + count]
            self.start += count
            self._drained()
            return count
        if self.closed:
            if self.error is not None:
                raise self.lost("mid-body")
            return 0
        self.target, self.got = view, 0
        try:
            while not self.got and not self.closed and self.start == self.end:
                await self._wait(timeout)
        finally:
            self.target = None
        if self.got:
            return self.got
        return await self.read_raw(view, timeout)  # the connection ended, or scratch got it

    def close(self) -> None:
        # Nothing reads a connection after its close; a cycle through the protocol
        # (transport, frames of a failed read) must not hold its scratch buffer.
        self.scratch = bytearray()
        self.start = self.end = 0
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class DirectBody(httpx.AsyncByteStream):
    """A response body read from one pooled connection; :meth:`read_into` without a copy."""

    def __init__(
        self,
        connection: _Connection,
        pool: DirectTransport,
        parser: httptools.HttpResponseParser,
        fields: _Head,
        length: int | None,
        decoded: bool,
        read_timeout: float | None,
    ) -> None:
        self._connection = connection
        self._pool = pool
        self._parser = parser
        self._fields = fields
        self._remaining = length  # Content-Length bytes still due; None: other framing
        self._decoded = decoded  # chunked: pieces come from the parser
        self._wire: bytearray | None = None  # the chunked framing's bytes, for the parser
        self._timeout = read_timeout
        self._finished = length == 0
        self._released = False

    async def read_into(self, view: memoryview) -> int:
        """Up to ``len(view)`` body bytes into ``view``; 0 at the body's end."""
        if self._finished or not view:
            return 0
        connection = self._connection
        if self._decoded:
            return await self._read_decoded(view)
        if self._remaining is not None:
            view = view[: self._remaining]
        count = await connection.read_raw(view, self._timeout)
        if self._remaining is None:  # close-delimited: the end of the connection ends it
            self._finished = count == 0
            return count
        if count == 0:
            raise connection.lost(f"with {self._remaining} body bytes due")
        self._remaining -= count
        self._finished = self._remaining == 0
        return count

    async def _read_decoded(self, view: memoryview) -> int:
        fields, connection = self._fields, self._connection
        while not fields.body:
            if fields.message_complete:
                self._finished = True
                return 0
            if self._wire is None:
                self._wire = bytearray(SCRATCH_BYTES)
            count = await connection.read_raw(memoryview(self._wire), self._timeout)
            if count == 0:
                raise connection.lost("in a chunked body")
            feed_decoded(self._parser, fields, bytes(self._wire[:count]))
        piece = fields.body[0]
        count = min(len(piece), len(view))
        view[:count] = piece[:count]
        if count == len(piece):
            fields.body.pop(0)
        else:
            fields.body[0] = piece[count:]
        return count

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffer = bytearray(SCRATCH_BYTES * 4)
        view = memoryview(buffer)
        while True:
            count = await self.read_into(view)
            if not count:
                return
            yield bytes(view[:count])

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        connection = self._connection
        # Reused only after a whole Content-Length body and nothing more: a connection
        # abandoned mid-body, or with bytes after the body, could hand them to the next.
        excess = self._finished and (connection.start != connection.end or self._fields.excess)
        if excess:
            self._pool.dropped("origin_excess_bytes", "origin sent more than its answer")
        reusable = (
            self._finished
            and self._remaining == 0
            and not excess
            and self._parser.should_keep_alive()
        )
        self._pool.release(connection, reusable)


class DirectTransport(httpx.AsyncBaseTransport):
    """An httpx transport for body-less HTTP/1.1 requests to one ``http://`` origin."""

    def __init__(
        self,
        *,
        pool_size: int,
        keepalive_seconds: float = 3.0,
        warnings: RateLimitedLog | None = None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self._pool_size = pool_size
        self.warnings = warnings
        self._count = count
        self._keepalive = keepalive_seconds
        # Idle connections by origin address, most recently released last.
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open = 0  # connections open or being opened
        # Requests waiting for a connection, oldest first. A freed connection or slot wakes
        # the oldest only (an Event woke all of them to race for one: 200 cold clients over
        # a pool of 16 cost 1.6 ms of CPU per request, 0.8-1.0 ms without), and a newcomer
        # queues behind them, so no request times out waiting while later ones are served.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._woken = 0  # waiters woken that have not run yet: each is owed a connection
        self._closed = False

    def dropped(self, kind: str, message: str) -> None:
        """Bytes the origin sent that no answer may use: dropped with their connection,
        counted by ``kind`` and said once per interval (aiohttp's path, which drops them
        the same way, reports here too)."""
        if self._count is not None:
            self._count(kind)
        if self.warnings is not None:
            self.warnings.warning(kind, f"{message}; connection dropped")

    # --- pool ---------------------------------------------------------------------------

    def forget(self, connection: _Connection) -> None:
        """An idle connection ended (the origin closed it, or its keep-alive time is up):
        its slot is free."""
        idle = self._idle.get(connection.address, [])
        if connection in idle:
            idle.remove(connection)
            connection.close()
            self._slot_ends()

    def release(self, connection: _Connection, reusable: bool) -> None:
        """The one end of a checked-out connection: back to the pool, or closed."""
        if reusable and not connection.closed and not self._closed:
            connection.idle_timer = asyncio.get_running_loop().call_later(
                self._keepalive, self.forget, connection
            )
            self._idle.setdefault(connection.address, []).append(connection)
            self._wake_oldest()
        else:
            connection.close()
            self._slot_ends()

    def _slot_ends(self) -> None:
        self._open -= 1
        self._wake_oldest()

    def _wake_oldest(self) -> None:
        """A connection went idle or a slot freed: the oldest waiter looks again. Each
        such event wakes one waiter; one that leaves after it was woken passes it on
        (:meth:`_wait_for_slot`), so no free connection is left with requests waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                return

    def _owed(self) -> bool:
        """Whatever is free now is owed to waiters: a newcomer queues behind them."""
        if self._waiters:
            return True
        if not self._woken:
            return False
        idle = sum(len(connections) for connections in self._idle.values())
        return idle + self._pool_size - self._open <= self._woken

    async def _wait_for_slot(self, remaining: float | None, first: bool) -> None:
        """Queue for the next freed connection or slot: at the back, or at the front for a
        waiter that was woken and found it taken (``first``: it keeps its turn)."""
        waiter = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout(remaining):
                await waiter
            self._woken -= 1
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._woken -= 1
                self._wake_oldest()  # woken, but leaving (cancelled, timed out): pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                raise httpx.PoolTimeout("no free origin connection in time") from None
            raise

    async def _checkout(
        self, host: str, port: int, timeouts: dict[str, Any], fresh: bool
    ) -> tuple[_Connection, bool]:
        """A connection to use: (an idle one, reused=True), or a new one (always if
        ``fresh``)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.get("pool") is None else loop.time() + timeouts["pool"]
        # Woken by a freed connection or slot, after waiting; a retry on a fresh connection
        # (the pooled one it drew was dead) keeps the turn it had (helper-72: it went to
        # the back of the queue, behind every request that came after it).
        woken = fresh
        while True:
            # Behind the requests already waiting, unless woken for this turn.
            if woken or not self._owed():
                idle = self._idle.get((host, port), [])
                while idle and not fresh:
                    connection = idle.pop()
                    if connection.idle_timer is not None:
                        connection.idle_timer.cancel()
                        connection.idle_timer = None
                    if not connection.closed:
                        return connection, True
                    self._slot_ends()
                if self._open < self._pool_size:
                    break
                if (fresh or not idle) and any(self._idle.values()):
                    # Full with idle connections that will not do: close the oldest.
                    other = next(conns for conns in self._idle.values() if conns)
                    self.forget(other[0])
                    continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise httpx.PoolTimeout("no free origin connection in time")
            await self._wait_for_slot(remaining, first=woken)
            woken = True
        self._open += 1
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, (host, port)), host, port
                )
        except TimeoutError:
            self._slot_ends()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as error:
            self._slot_ends()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {error}") from error
        except BaseException:
            self._slot_ends()
            raise
        return connection, False

    # --- exchange -------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        head = bytearray(f"{request.method} {target_of(request)} HTTP/1.1\r\n".encode("latin-1"))
        for name, value in request.headers.raw:
            head += name + b": " + value + b"\r\n"
        head += b"\r\n"
        port = request.url.port or 80
        fresh = False
        while True:
            connection, reused = await self._checkout(request.url.host, port, timeouts, fresh)
            try:
                assert connection.transport is not None
                connection.transport.write(head)
                return await self._answer(connection, request, timeouts.get("read"))
            except NothingReceived:
                self.release(connection, False)
                if not reused or fresh:
                    raise
                # A pooled connection the origin closed while it was idle, just as it was
                # reused: once more on a new one (RFC 9110 9.2.2, a GET is idempotent).
                fresh = True
            except BaseException:
                self.release(connection, False)
                raise

    async def _answer(
        self, connection: _Connection, request: httpx.Request, read_timeout: float | None
    ) -> httpx.Response:
        # One deadline for the final head and every interim one before it: an origin
        # sending a 1xx just within each timeout would otherwise hold the connection for
        # MAX_INTERIM + 1 of them (helper-35).
        loop = asyncio.get_running_loop()
        deadline = None if read_timeout is None else loop.time() + read_timeout
        for seen in range(MAX_INTERIM + 1):
            parser, fields = await connection.read_head(deadline)
            status = parser.get_status_code()
            if status == 101:
                raise httpx.RemoteProtocolError("origin switched protocols unasked")
            if not 100 <= status < 200:
                break
            if seen == MAX_INTERIM:  # refused before it is relayed, as on the other client
                raise httpx.RemoteProtocolError(f"more than {MAX_INTERIM} interim answers")
            sink = interim_sink.get()
            if sink is not None:
                try:
                    await sink(status, fields.fields)
                except Exception:  # noqa: S110 - the client left: the final answer matters
                    pass
        if control_character_in(fields.fields):
            raise httpx.RemoteProtocolError("origin sent a control character in a field")
        codings = transfer_codings(fields.fields)
        if transfer_coding_refused(codings):
            raise httpx.RemoteProtocolError("origin sent chunked with another transfer coding")
        length, decoded = _framing(request.method, status, fields.fields, codings)
        body = DirectBody(connection, self, parser, fields, length, decoded, read_timeout)
        if decoded:
            # What followed the head in its read belongs to the chunked body: the parser
            # decodes it (and the rest, as it arrives).
            rest = bytes(connection.scratch[connection.start : connection.end])
            connection.start = connection.end
            connection._drained()
            if rest:
                feed_decoded(parser, fields, rest)
        return httpx.Response(
            status_code=status,
            headers=fields.fields,
            stream=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": b""},
        )

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in list(idle):
                self.forget(connection)


def feed_decoded(parser: httptools.HttpResponseParser, fields: _Head, data: bytes) -> None:
    """Chunked body bytes to the parser; a framing error is the body's (a 502 or an
    aborted response), unless it is in what follows a complete message (not ours)."""
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as error:
        if not fields.message_complete:
            raise httpx.RemoteProtocolError(f"bad chunked body: {error}") from None
        fields.excess = True


def _framing(
    method: str, status: int, fields: list[tuple[bytes, bytes]], codings: list[bytes]
) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a response body (RFC 9112 6.3) whose transfer
    ``codings`` were not refused; (None, False): it ends with the connection."""
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return 0, False
    if codings:  # llhttp refused a Content-Length with them
        return None, codings == [b"chunked"]
    for name, value in fields:
        if name.lower() == b"content-length":
            return int(value), False  # llhttp accepted it: digits, one value
    return None, False


def reads_into(stream: object) -> bool:
    """Whether a response body stream has ``read_into(view) -> int`` (bytes into the
    caller's buffer, 0 at the end): a :class:`DirectBody`, or a wrapper that says its
    inner stream is one."""
    check = getattr(stream, "reads_into", None)
    return isinstance(stream, DirectBody) or (check is not None and bool(check()))


class SliceRouting(httpx.AsyncBaseTransport):
    """Requests marked :data:`DIRECT` (the slice engine's GETs) without a body to an
    ``http://`` origin go to the direct client, everything else to ``general``."""

    def __init__(self, direct: DirectTransport, general: httpx.AsyncBaseTransport) -> None:
        self.direct = direct
        self.general = general

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (
            request.extensions.get(DIRECT)
            and request.url.scheme == "http"
            and "content-length" not in request.headers
            and "transfer-encoding" not in request.headers
        ):
            return await self.direct.handle_async_request(request)
        return await self.general.handle_async_request(request)

    async def aclose(self) -> None:
        await self.direct.aclose()
        await self.general.aclose()
