"""uvicorn's httptools protocol, hardened for the edge: head limits, a head timeout, a cap.

- **Head size** (431/414 as soon as the limit is passed): httptools grows a header value,
  and uvicorn the URL, by concatenation, so a 256 MiB header cost minutes of CPU and its
  size in memory before the app could refuse it. Here the bytes of each request head are
  counted as they arrive, before the parser sees them; past ``MAX_REQUEST_TARGET_BYTES``
  plus ``MAX_HEADER_BYTES`` (plus the request line's own few bytes) the head is refused
  without being read further. The URL (``on_url``, fed piecewise) and the completed fields
  (``on_header``) are counted exactly, so the precise limits hold too; past
  ``MAX_HEADER_FIELDS`` fields the head gets 431 as well.
- **Head timeout** (``REQUEST_HEAD_TIMEOUT``, like nginx's ``client_header_timeout``): a
  connection must deliver a whole request head within that time from when the server
  starts waiting for it (the connection's start, or the first byte of a later request;
  idle time between requests is uvicorn's keep-alive timeout). A partial head gets 408,
  a silent connection is closed. The same time bounds a pause within a request body
  (nginx's ``client_body_timeout``): 408, and the app lets go of its origin request.
- **Connection cap** (``MAX_CLIENT_CONNECTIONS``): past it, the connection that has waited
  longest for a request head (idle keep-alive or trickling slowloris) is closed to make
  room; if every connection is busy with a response, the new one gets 503.

A refusal of a head parsed while earlier pipelined requests are still being answered
(431/414, or the parser's 400) waits until the last of them is answered: HTTP/1.1 pairs
answers with requests by order, so written at once it would stand in for a valid
request's answer, and the requests queued behind the running one would never be served.

A refusal is written, the write side shut (FIN: the client sees the answer and can stop
sending), and the rest of the client's input is discarded for a short linger (until the
client closes, at most ``LINGER_SECONDS``: nginx's lingering_time) so that a client that
is still sending reads the answer instead of a reset; then the connection is closed. A
byte cap on the linger (1 MiB, until 2026-12-02) closed on a client still sending at full
speed within a millisecond, and its reset could beat the answer. Every refusal (400, 408, 414,
431, 503) is counted and logged, rate-limited, through the app's refusal log
(app/ops/refusals.py): neither the access log nor the request metrics see these heads.
- **Early hints**: uvicorn does not implement the ASGI ``http.response.early_hint``
  extension; this class does, for HTTP/1.1 clients (RFC 9110 15.2: no 1xx to an HTTP/1.0
  one), until the final response starts. A ``status`` (102 or 103) and a ``headers`` list in
  the message (app.edge.interim) are written as is, else a 103 with one Link field per ``links``.

- **Request line and framing**: HTTP/1.x above 1.1 is answered as 1.1, another version
  gets 505; an absolute-form target becomes the origin form for its host (app/edge/target.py);
  a final transfer coding other than chunked is 400 at the head; an Upgrade is ignored, and
  a head that asks for one with a body is parsed again without it, since llhttp ends such
  a message at its head and the body would be read as the next request.

- **Fast path** (``SLICECACHE_FAST_PATH``): a completed bodiless head on an otherwise idle
  connection is first offered to the app's ``fast_hit`` (app/fasthit.py); a plain fresh
  hit comes back as the whole response, written at once, and no ASGI cycle is made for
  it. Everything else (and anything while a response runs or waits) goes the usual way.

The app writes Date (the origin's on relayed and cached responses), so uvicorn's own Date
header is off; its 400 for a malformed request would then go out without one, which RFC
9110 6.6.1 does not allow.

One module (~1,150 lines) on purpose: one protocol class whose head limits, head and body timers,
connection cap, refusals and fast-hit hook all act in the same parser callbacks on the
same connection state.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.edge.headers import declares_body
from app.edge.interim import EARLY_HINT
from app.edge.sendtimeout import SendTimeout
from app.edge.target import absolute_target, with_authority
from app.edge.writtenout import offer_written_out
from app.ops.accesslog import CLIENT_CUT, SEND_TIMEOUT_CUT, SHUTDOWN_CUT, http_date_now

# After a refusal, how much more input is read (and dropped) before the connection closes.
LINGER_SECONDS = 2.0
# A fast answer's ``unsent`` when its write failed at once: all of it.
REFUSED_UNSENT = 1 << 62
# The request line's bytes besides the target: method, spaces, version, CRLFs.
REQUEST_LINE_SLACK = 128
# Per field: ": " and CRLF, and whitespace around the value that the parser trims.
FIELD_OVERHEAD = 4
# RFC 9110 5.6.2: what a method is made of.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Most fields in a head (else 431), Apache's LimitRequestFields and HAProxy's maxhdr. Each
# field is a Python callback on the event loop: 64 KiB of tiny fields ("A:" lines) cost
# ~15 ms of CPU per head, 35 times one 64 KiB value, so the byte limit alone let one
# client stall every other client's hits.
MAX_HEADER_FIELDS = 100

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_target_bytes: int = 8192
    max_header_bytes: int = 65536
    head_timeout: float = 30.0
    max_connections: int = 4096
    send_timeout: float = 60.0

    @property
    def max_head_bytes(self) -> int:
        """Raw bytes a head may take: the target, the fields, the rest of the request line."""
        return self.max_target_bytes + self.max_header_bytes + REQUEST_LINE_SLACK


def runtime_of(config: Config) -> Any:
    """The runtime of the app being served (``create_app`` puts it on the app), or None.

    Under ``uvicorn app.main:app`` ``config.app`` is the import string: the app object is
    ``config.loaded_app``, possibly inside uvicorn's wrappers (each keeps it as ``.app``).
    """
    app = getattr(config, "loaded_app", None) or config.app
    while not hasattr(app, "state") and hasattr(app, "app"):
        app = app.app
    state = getattr(app, "state", None)
    return getattr(state, "runtime", None)


def limits_of(config: Config) -> EdgeLimits:
    """The limits of the app being served (``create_app`` puts its settings on the app)."""
    settings = getattr(runtime_of(config), "settings", None)
    if settings is None:
        return EdgeLimits()
    return EdgeLimits(
        max_target_bytes=settings.max_request_target_bytes,
        max_header_bytes=settings.max_header_bytes,
        head_timeout=settings.request_head_timeout,
        max_connections=settings.max_client_connections,
        send_timeout=settings.send_timeout,
    )


# Why each refusal is made, for its log line.
REFUSAL_CAUSES = {
    400: "malformed request",
    408: "request not received in time",
    414: "request target too long",
    431: "request head too large",
    501: "unknown method",
    503: "connection limit reached",
    505: "HTTP version other than 1.0 and 1.1",
}


class EdgeRefusals(Protocol):
    """Where the edge reports a head it refused before the app saw it (the app's
    :class:`app.ops.refusals.EdgeRefusalLog`: counted by status, logged rate-limited)."""

    def refused(self, status: int, cause: str, client: tuple[str, int] | None) -> None: ...

    def upgrade_ignored(self, protocol: str, client: tuple[str, int] | None) -> None:
        """A request asked to switch protocols; it was answered in HTTP/1.1 instead."""

    def trailer_dropped(self, client: tuple[str, int] | None) -> None:
        """A chunked request's trailer fields were dropped (RFC 9110 6.5.1)."""

    def send_timed_out(self, client: tuple[str, int] | None, held: int) -> None:
        """A client took none of its response for the send timeout; it was closed."""


@dataclass(frozen=True, slots=True)
class Edge:
    """What a protocol takes from the app it serves, once per server."""

    limits: EdgeLimits
    fast: FastHit | None
    refusals: EdgeRefusals | None


# Per server config (weakly: a stopped server's app is not kept alive by it).
_EDGES: weakref.WeakKeyDictionary[Config, Edge] = weakref.WeakKeyDictionary()


def edge_of(config: Config) -> Edge:
    """The limits, the fast path and the refusal log of the app ``config`` serves: found
    once per server, not per connection (walking the app's wrappers was a tenth of a new
    connection's CPU).

    app/fasthit.py answers a plain fresh hit without an ASGI cycle; not under a root path
    or uvicorn's concurrency limit (both change what the app is given)."""
    edge = _EDGES.get(config)
    if edge is None:
        runtime = runtime_of(config)
        fast = getattr(runtime, "fast_hit", None)
        if config.root_path or config.limit_concurrency is not None:
            fast = None
        refusals = getattr(runtime, "edge_refusals", None)
        edge = _EDGES[config] = Edge(limits_of(config), fast, refusals)
    return edge


def refusal(status: int, body: str | None = None) -> bytes:
    """A whole ``connection: close`` answer to a head that is not served."""
    reason = REASONS[status]
    content = (body if body is not None else f"{reason}\n").encode("ascii")
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii")),
            b"date: " + http_date_now() + b"\r\n",
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(content),
            b"connection: close\r\n\r\n",
            content,
        ]
    )


def oldest_waiting_for_head(connections: Any, newcomer: object) -> Any:
    """Over the cap: the connection that has waited longest for a request head, if any.

    Both edge protocols (httptools and h11) answer ``_waiting_for_head()`` and keep
    ``_waiting_since``; uvicorn's own classes do neither and are never chosen.
    """
    oldest = None
    for connection in connections:
        waiting = getattr(connection, "_waiting_for_head", None)
        if (
            connection is not newcomer
            and waiting is not None
            and waiting()
            and (oldest is None or connection._waiting_since < oldest._waiting_since)
        ):
            oldest = connection
    return oldest


class FastHit(Protocol):
    """The app's synchronous answer to a plain fresh hit (app/fasthit.py), or None."""

    def __call__(
        self,
        method: str,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        keep_alive: bool,
        default_headers: list[tuple[bytes, bytes]],
        pending: int,
    ) -> bytes | list[Any] | None: ...

    def failed(self, error: Exception) -> None:
        """A call raised ``error``: count it and log it (rate-limited); the request is
        then served the normal way."""

    # The last answer made by a call, for settle; the protocols holding one unsettled.
    answered: Any
    unsettled: set[Any]

    def settle(
        self,
        answered: Any,
        unsent: int = 0,
        later: bool = False,
        cut: str = CLIENT_CUT,
    ) -> None:
        """Count and log an answer written: its bytes are out (``unsent`` 0), or its
        connection was lost with ``unsent`` of them still held (``cut``: why)."""


class EdgeGuard(SendTimeout):
    """What both edge protocols (httptools here, h11 in :mod:`app.edge.h11server`) do the
    same way: the head timer, the send timeout, and the refusal followed by a linger. The
    protocol provides ``loop``, ``transport``, ``flow``, ``limits`` and ``_head_timed_out``.

    The head timer and the send timeout are deadlines, not timers per request: arming and
    cancelling one are attribute writes, and one loop timer per connection (``_wake``)
    fires at the earliest deadline it was asked for, acts on what has passed and sleeps
    until the next one. A timer made and cancelled for every request was a tenth of a
    cache hit's CPU.
    """

    # loop, transport and client are declared by SendTimeout; these narrow or add.
    flow: Any
    limits: EdgeLimits
    refusals: EdgeRefusals | None = None
    _head_deadline: float | None = None  # loop time by which the head must be complete
    # After an answer that came before its request's body was whole: by when the rest of
    # that body must have been read (and dropped).
    _discard_deadline: float | None = None
    _wake: asyncio.TimerHandle | None = None
    _wake_when = 0.0
    _lingering = False

    def _head_timed_out(self) -> None:
        raise NotImplementedError

    def _discarding(self) -> bool:
        """The answered request's body is still being read and dropped (no later request
        has begun): the protocol knows."""
        raise NotImplementedError

    def _answered_before_its_body(self) -> None:
        """A request was answered before its body was whole (a 405 to an upload, an
        origin's early answer). The rest is read and dropped, and the connection is reused
        once it ends; but not for longer than REQUEST_HEAD_TIMEOUT (nginx's lingering_time):
        a client trickling it kept the connection past every timer and the connection
        cap's eviction (helper-49)."""
        self._discard_deadline = deadline = self.loop.time() + self.limits.head_timeout
        self._wake_at(deadline)

    def _discard_deadline_passed(self, now: float, after: float | None) -> float | None:
        deadline = self._discard_deadline
        if deadline is None:
            return after
        if not self._discarding() or self.transport.is_closing():
            self._discard_deadline = None
            return after
        if deadline > now:
            return deadline if after is None else min(after, deadline)
        if self._held_for_client():
            # The answer is still on its way (a slow reader): closing now would reset the
            # connection and lose its tail (helper-50). Once it is out; the send timeout
            # cuts a reader that takes nothing.
            deadline = self._discard_deadline = now + 1.0
            return deadline if after is None else min(after, deadline)
        self._discard_deadline = None
        # Counted and logged with the refusals, as the body timer's 408 is; the answer
        # has gone out whole, so no status is written.
        self._note_refusal(408, "the rest of a body after an early answer")
        self._close_lingering()
        return after

    def _arm_head_timer(self) -> None:
        deadline = self.loop.time() + self.limits.head_timeout
        self._head_deadline = deadline
        self._wake_at(deadline)

    def _cancel_head_timer(self) -> None:
        self._head_deadline = None

    def _wake_at(self, when: float) -> None:
        """Have the connection's timer fire by ``when`` (it may fire earlier: it re-arms)."""
        wake = self._wake
        if wake is not None:
            if self._wake_when <= when:
                return
            wake.cancel()
        self._wake = self.loop.call_at(when, self._woken)
        self._wake_when = when

    def _stop_wake(self) -> None:
        """The connection is gone: its timer goes too (it holds the protocol)."""
        self._head_deadline = None
        self._send_check_at = None
        self._discard_deadline = None
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None

    def _woken(self) -> None:
        self._wake = None
        after = self._deadlines_passed(self.loop.time())
        # A closing transport may still wait on its client: the send timeout runs on.
        if after is not None and (
            not self.transport.is_closing() or self._send_check_at is not None
        ):
            self._wake_at(after)

    def _deadlines_passed(self, now: float) -> float | None:
        """Act on the deadlines past at ``now``; the next deadline still set, if any."""
        after = self._discard_deadline_passed(now, self._send_deadline_passed(now))
        deadline = self._head_deadline
        if deadline is not None and deadline <= now:
            self._head_deadline = None
            self._head_timed_out()
            deadline = self._head_deadline
        if deadline is None:
            return after
        return deadline if after is None else min(after, deadline)

    def _note_refusal(self, status: int, detail: str | None = None) -> None:
        """Every refusal is counted and logged (rate-limited): nothing the edge turns away
        is silent, and a flood of bad heads costs one log line per interval."""
        if self.refusals is not None:
            cause = REFUSAL_CAUSES.get(status, "refused")
            if detail:
                cause = f"{cause}: {detail.strip()}"
            self.refusals.refused(status, cause, self.client)

    def _swallowed(self, data: bytes) -> bool:
        """After a refusal, input is read and dropped until close (LINGER_SECONDS)."""
        return self._lingering

    def _write_refusal(self, status: int, *, linger: bool = True, body: str | None = None) -> None:
        self._note_refusal(status, body)
        self._cancel_head_timer()
        self.transport.write(refusal(status, body))
        if not linger:
            self.transport.close()
            return
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close after what was written, reading and dropping the client's input for
        LINGER_SECONDS: closed with input unread, the kernel would reset the connection and
        the client could lose the answer (nginx's lingering close)."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


class _Refused(Exception):
    """Raised from a parser callback to stop the parser at once."""


def http1_version(version: str) -> str:
    """The version a request is answered as: RFC 9112 2.3, a higher minor version of
    HTTP/1 (``HTTP/1.2``) is processed as HTTP/1.1, the highest this server implements, as
    nginx does. Any other version stands (1.0 and 1.1 as they are; another major version,
    or 0.9, is refused with a 505)."""
    major, _, minor = version.partition(".")
    if major == "1" and minor.isdigit() and int(minor) > 1:
        return "1.1"
    return version


def lenient(parser: httptools.HttpRequestParser) -> httptools.HttpRequestParser:
    """``parser`` reading what this edge reads: data after a closing request (uvicorn's own
    setting: the answer to it goes out first), and every HTTP version, which
    on_headers_complete answers (llhttp refused any but 0.9, 1.0, 1.1 and 2.0 as malformed:
    RFC 9112 2.3 has 1.2 read as 1.1)."""
    parser.set_dangerous_leniencies(lenient_data_after_close=True, lenient_version=True)
    return parser


def chunked_last(headers: list[tuple[bytes, bytes]]) -> bool:
    """No Transfer-Encoding, or one whose final coding is chunked (its fields are one
    list, in order)."""
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    if not codings:
        return True
    return b",".join(codings).rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"


class HttpProtocol(EdgeGuard, HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        lenient(self.parser)
        edge = edge_of(config)
        self.limits, fast, self.refusals = edge.limits, edge.fast, edge.refusals
        # Between a message's end and the next one's headers: counting head bytes.
        self._in_head = True
        self._head_bytes = 0
        self._heads_completed = 0  # messages parsed on this connection
        self._url_bytes = 0
        self._field_bytes = 0
        self._field_count = 0
        self._waiting_since = time.monotonic()
        self._refusal: int | None = None  # status decided by a parser callback
        # Waits for the responses to the requests parsed before the refused head.
        self._pending_refusal: int | None = None
        self._pending_body: str | None = None
        self._fast_hit: FastHit | None = fast
        self._fast_answered = False  # the head being completed was answered by it
        # A fast answer the transport still holds part of, and how much it held after the
        # write: counted and logged once the transport is empty, or as cut if the
        # connection is lost first. The write-buffer limits it found, meanwhile set to 0.
        self._unsettled: tuple[Any, int] | None = None
        self._limits_before: tuple[int, int] | None = None
        # The request whose ASGI task runs now: uvicorn's ``cycle`` is the newest one.
        self._running: RequestResponseCycle | None = None
        self._discard_cycle: RequestResponseCycle | None = None  # answered before its body
        self._http10 = False  # the head being answered is HTTP/1.0 (on_headers_complete)
        self._trailer_dropped = False  # the message being read had trailer fields
        # A head that asked for an Upgrade and has a body, to be parsed again without it
        # (on_headers_complete, _feed); and whether the head being parsed is that again.
        self._head_again: bytes | None = None
        self._reparsing = False
        # The client sent EOF with answers still to send: close once they are out.
        self._half_closed = False
        # After a fast answer, uvicorn's keep-alive timeout as a deadline (see EdgeGuard).
        self._keepalive_deadline: float | None = None
        # While a request's body is incomplete: by when its next bytes must arrive.
        self._body_deadline: float | None = None
        # Ended by an error (reset, broken pipe): the transport discarded what it held.
        self.lost_in_error = False

    # Connection lifecycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        # The send timeout aborts: what the transport held was discarded, as in an error.
        self.lost_in_error = exc is not None or self.send_expired
        if self._unsettled is not None:
            # Ended in an error, the transport discarded what it held: those bytes never
            # reached the client (a clean close sends them first). What it held after the
            # write is taken as unsent: a lower bound of what reached the kernel, as the
            # normal path counts (uvloop's transport says 0 by now).
            # The send timeout's reset also discarded the kernel's send queue: all it
            # held then is unsent (``send_discarded``, 0 without that reset; capped by
            # the answer's length where it is counted).
            held = self._unsettled[1] if self.lost_in_error else 0
            self._settle_fast(
                max(held, self.send_discarded),
                cut=SEND_TIMEOUT_CUT if self.send_expired else CLIENT_CUT,
            )
        self._stop_wake()
        self._keepalive_deadline = None
        # uvicorn marks only the newest request's cycle as disconnected: a request still
        # running before it (pipelined requests) would wake from its wait to write and
        # write to the closed transport (helper-41).
        for cycle in (self._running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio allows True
        if self._lingering:
            self.transport.close()  # the client is done sending too
            return None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.disconnected:
            # Half-closed before its request's body was whole: that request can never be
            # answered (nginx: "client prematurely closed connection"). Running, the
            # connection closes, so its app is told the client left and lets go of the
            # origin request (helper-47: held until the origin's read timeout).
            if cycle is self._running:
                return None
            # Queued behind answers still due (helper-48): it never runs; they go out,
            # then the connection closes. (One already dropped for a refusal is marked
            # gone: its refusal follows those answers; helper-49.) Counted and logged as
            # nginx's 400 "client prematurely closed connection": it gets no access line.
            if self._drop_queued(cycle) and self.refusals is not None:
                cause = "the client closed its side before the request's body was whole"
                self.refusals.refused(400, cause, self.client)
        if self._answers_due():
            # The client half-closed after its requests: they are answered, then the
            # connection closes (_close_if_half_closed). uvicorn let the transport close
            # at once, and the answers still to come were dropped while logged as sent.
            self._half_closed = True
            return True
        return None

    def _close_if_half_closed(self) -> None:
        if self._half_closed and not self._answers_due() and not self.transport.is_closing():
            self.transport.close()

    def _answers_due(self) -> bool:
        """A response runs, requests wait behind it, or a fast answer is still being
        written."""
        # The running request, not uvicorn's ``cycle`` (the newest parsed, which may be one
        # dropped unrun: _drop_queued).
        running = self._running is not None and not self._running.response_complete
        return running or bool(self.pipeline) or self._unsettled is not None

    def _make_room(self) -> None:
        """Over the cap: drop the connection waiting longest for a head, else refuse this one."""
        oldest = oldest_waiting_for_head(self.connections, self)
        if oldest is not None:
            oldest.transport.close()
        else:
            self._refuse(503, linger=False)

    def _waiting_for_head(self) -> bool:
        return self._in_head and not self._answers_due() and not self.transport.is_closing()

    # Input

    def data_received(self, data: bytes) -> None:
        if self._swallowed(data):
            return
        if self._pending_refusal is not None:
            return  # reading is paused; anything still buffered is the refused head's
        self._unset_keepalive_if_required()
        if not self._in_head:
            self._feed(data)
            return
        if self._head_deadline is None:
            # The first byte of a later head starts its clock, even empty lines that the
            # parser skips without beginning a message (they cancel uvicorn's keep-alive
            # timeout: trickled, they would hold the connection forever).
            self._waiting_since = time.monotonic()
            self._arm_head_timer()
        while True:
            room = self.limits.max_head_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                self._feed(data)
                return
            # Feed only what the limit allows; the rest is parsed only if the head ended.
            completed = self._heads_completed
            self._head_bytes += room + 1
            self._feed(data[: room + 1])
            data = data[room + 1 :]
            if self._lingering or self._pending_refusal is not None or self.parser is None:
                return
            if not self._in_head:
                self._feed(data)
                return
            if self._heads_completed == completed:
                self._refuse_head(431 if self._url_bytes <= self.limits.max_target_bytes else 414)
                return
            # Heads ended in those bytes (pipelined requests) and a later one began: its
            # count starts over. Its first bytes went uncounted (at most the limit), and
            # the exact URL and field limits still hold for it.

    def _feed(self, data: bytes) -> None:
        while data and self.parser is not None and not self._lingering:
            completed = self._heads_completed
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                # RFC 9110 7.8: a server may ignore Upgrade and go on in HTTP/1.1. The
                # request was answered as such; a request pipelined behind it in this read
                # is parsed too (uvicorn dropped it: the client waited for an answer that
                # never came); one with a body is parsed again, below. uvicorn also logged
                # two warnings per such request (curl --http2 sends Upgrade: h2c): noted
                # once per interval instead.
                if self.refusals is not None:
                    self.refusals.upgrade_ignored(self._upgrade_asked(), self.client)
                offset = upgrade.args[0] if upgrade.args else len(data)
                data = data[offset:] if 0 < offset < len(data) else b""
                head, self._head_again = self._head_again, None
                if head is not None:
                    # A head with a body, parsed again without its Upgrade by a new parser
                    # (this one ended the message): the body follows it as a body.
                    self.parser = lenient(httptools.HttpRequestParser(self))
                    self._reparsing = True
                    data = head + data
            except httptools.HttpParserInvalidMethodError:
                # RFC 9110 9.1: a method not implemented is a 501; a method that is not
                # even a token (or a stray binary protocol) is a malformed request. The
                # parser knows a fixed list: an unknown token cannot be forwarded. Where
                # the request began is known only if it began this read (helper-48: a
                # request before it in the same read was taken for it); else a 400.
                method = data.lstrip(b"\r\n").partition(b" ")[0]
                unknown = self._heads_completed == completed and TOKEN.fullmatch(method)
                self._refuse_head(501 if unknown else 400)
                return
            except httptools.HttpParserError:
                if self._refusal is not None:
                    status, self._refusal = self._refusal, None
                    if self._in_head:
                        self._refuse_head(status)
                    else:  # the trailer section of a chunked body, over the head's limits
                        self._body_refused(status, "trailer section too large")
                    return
                # Counted and logged, rate-limited, with the refusal (uvicorn logs each one).
                self.send_400_response("Invalid HTTP request received.")
                return

    def _head_without_upgrade(self) -> bytes:
        """The head just parsed, as received but for the Upgrade field and the "upgrade"
        token of Connection (the parser has checked every byte of it already)."""
        version = self.parser.get_http_version().encode("ascii")
        lines = [self.parser.get_method() + b" " + self.url + b" HTTP/" + version + b"\r\n"]
        for name, value in self.headers:
            if name == b"upgrade":
                continue
            if name == b"connection":
                tokens = [t for t in value.split(b",") if t.strip().lower() != b"upgrade"]
                if not any(t.strip() for t in tokens):
                    continue
                value = b",".join(tokens)
            lines.append(name + b": " + value + b"\r\n")
        return b"".join(lines) + b"\r\n"

    def _upgrade_asked(self) -> str:
        upgrade = self._get_upgrade()
        return upgrade.decode("latin-1") if upgrade else "?"

    # Parser callbacks

    def on_message_begin(self) -> None:
        # A request parsed in the same read as a fast answer (pipelined) cancels the
        # keep-alive timer that answer armed, as data_received does for a new read.
        self._unset_keepalive_if_required()
        # uvicorn's on_message_begin, but the scope: a fast answer needs none, and the
        # others get it when their head is complete (_make_scope).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        if self._head_deadline is None:
            self._waiting_since = time.monotonic()
            self._arm_head_timer()

    def _make_scope(self) -> None:
        """uvicorn's per-request scope, made as its on_message_begin makes it."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_target_bytes:
            self._refusal = 414
            raise _Refused
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # A chunked body's trailer fields count too: the head and trailer sections of a
        # message share the limits (helper-48: unlimited, each field a Python call).
        self._field_bytes += len(name) + len(value) + FIELD_OVERHEAD
        self._field_count += 1
        if (
            self._field_bytes > self.limits.max_header_bytes
            or self._field_count > MAX_HEADER_FIELDS
        ):
            self._refusal = 431
            raise _Refused
        if not self._in_head:
            # Trailer fields are never merged into the head (RFC 9110 6.5.1; uvicorn
            # appended them to the scope's headers, where whatever read the fields after
            # the body saw a forged Authorization, Range or X-Request-Id). Dropped, as
            # nginx does: nothing here uses them. Counted once per request.
            if not self._trailer_dropped and self.refusals is not None:
                self.refusals.trailer_dropped(self.client)
            self._trailer_dropped = True
            return
        # uvicorn's on_header, without a call of it.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._http10 = False
        version = self.parser.get_http_version()
        if version != "1.1" and http1_version(version) != "1.1":
            if version != "1.0":
                # RFC 9110 15.6.6: HTTP/2.0 in an HTTP/1 request line (the parser reads
                # any major version), or an HTTP/0.9 request line, which has no head.
                self._refusal = 505
                raise _Refused
            # RFC 9110 10.1.1 and 15.2: an HTTP/1.0 client's 100-continue is ignored, and
            # it never gets a 1xx.
            self.expect_100_continue = False
            self._http10 = True
        if self.parser.should_upgrade() and declares_body(self.headers):
            # httptools ends a message that asks for an Upgrade at its head (what follows is
            # taken for the new protocol), and the Upgrade is ignored here: its body would
            # be parsed as the next request (helper-54: a request smuggled in a body). The
            # head is parsed again without the Upgrade (_feed), so the body is read as
            # one (curl --http2 -d sends a POST so). CONNECT is an upgrade whatever its
            # fields say: refused, as is anything the second parse still reads as one.
            if self._reparsing or self.parser.get_method() == b"CONNECT":
                self._refusal = 400
                raise _Refused
            self._head_again = self._head_without_upgrade()
            return  # no request yet: the message ends here, unanswered
        self._reparsing = False
        absolute = absolute_target(self.url) if self.url[:1] != b"/" else None
        if absolute is not None:
            if absolute.userinfo:
                self._refusal = 400
                raise _Refused
            self.url = absolute.for_method(self.parser.get_method())
            self.headers = with_authority(self.headers, absolute.authority, self._http10)
        self._in_head = False
        self._cancel_head_timer()
        if self._fast_hit is not None and self._answer_fast():
            return
        if not chunked_last(self.headers):
            # RFC 9112 6.3: a request whose final transfer coding is not chunked has no
            # knowable length: 400, then close. The parser fails it right after this
            # callback; refused here, before a request is made of it (helper-56: the
            # app's 501 was logged while the client got the parser's 400).
            self._in_head = True  # the head's refusal (_feed), not the body's
            self._refusal = 400
            raise _Refused
        self._make_scope()
        super().on_headers_complete()
        self._arm_body_timer()  # cleared at once by on_message_complete if it has none

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm_body_timer()

    def _arm_body_timer(self) -> None:
        deadline = self.loop.time() + self.limits.head_timeout
        self._body_deadline = deadline
        self._wake_at(deadline)

    def on_message_complete(self) -> None:
        if self._head_again is not None:
            # The end of a head asking for an Upgrade, to be parsed again (above): still in
            # that head, its URL and fields to be counted again.
            self._url_bytes = self._field_bytes = self._field_count = 0
            return
        self._body_deadline = None
        self._heads_completed += 1
        self._in_head = True
        self._trailer_dropped = False
        self._head_bytes = self._url_bytes = self._field_bytes = self._field_count = 0
        if self._fast_answered:
            self._fast_answered = False  # no cycle was made for it
            return
        super().on_message_complete()

    def _answer_fast(self) -> bool:
        """Answer the completed head from the fast path if it can (see app/fasthit.py).

        Only when the connection is otherwise idle: nothing running, nothing queued (HTTP/1.1
        answers in request order), nothing paused for a slow reader, no refusal pending.
        The fast path answers only heads without a body (it declines any body framing).
        """
        fast = self._fast_hit
        assert fast is not None
        cycle = self.cycle
        if (
            (cycle is not None and not cycle.response_complete)
            or self.pipeline
            or self._pending_refusal is not None
            or self.flow.write_paused
            or self.transport.is_closing()
        ):
            return False
        parser = self.parser
        if parser.should_upgrade():
            return False
        keep_alive = not self._http10 and parser.should_keep_alive()
        transport = self.transport
        held_before = transport.get_write_buffer_size()
        try:
            response = fast(
                parser.get_method().decode("ascii"),
                self.url,
                self.headers,
                self.client,
                keep_alive,
                self.server_state.default_headers,
                held_before,
            )
        except Exception as error:  # a bug there must not cost the request: the normal path
            fast.failed(error)  # serves it
            return False
        if response is None:
            return False
        answered = fast.answered
        self._fast_answered = True
        if isinstance(response, bytes):
            transport.write(response)
        else:
            # The head on its own write, then views of the stored slices: with one writev
            # of head and body, the client's first byte waited on the body's copy (a cached
            # 1 MB Range: time to first byte 0.73-0.76 -> 0.44-0.45 ms, total 1.0 -> 0.95).
            transport.write(response[0])
            if not transport.is_closing():  # else the client had reset: nothing more to it
                transport.writelines(response[1:])
        held = transport.get_write_buffer_size()
        if held > held_before:
            self._settle_when_written(answered, held)
        elif transport.is_closing():
            # The write failed at once (the client had reset): the transport discarded
            # the answer and closes. A cut, none of it sent (helper-45: logged as whole).
            self._settle(answered, REFUSED_UNSENT, later=True)
        else:
            self._settle(answered)
        # What uvicorn does when a response completes (RequestResponseCycle.send, then
        # on_response_complete): close unless kept alive, count it, arm the keep-alive timer
        # (here a deadline on the connection's one timer: see EdgeGuard).
        if not keep_alive:
            self.transport.close()
        self.server_state.total_requests += 1
        if not self.transport.is_closing() and self._unsettled is None:
            self._arm_keepalive()  # else once the answer is out (resume_writing)
        return True

    def _arm_keepalive(self) -> None:
        deadline = self.loop.time() + self.timeout_keep_alive
        self._keepalive_deadline = deadline
        self._wake_at(deadline)

    def _settle_when_written(self, answered: Any, held: int) -> None:
        """A fast answer's last bytes are still in the transport (a large answer, a slow
        reader): it is counted and logged once they are out (resume_writing) or the
        connection is lost. Meanwhile the write-buffer limits are 0, so the transport
        resumes the protocol only once it holds nothing; paused, the connection takes no
        other fast answer, and a normal response's sends wait for the resume."""
        self._unsettled = (answered, held)
        fast = self._fast_hit
        assert fast is not None
        fast.unsettled.add(self)
        transport = self.transport
        if transport.is_closing():
            return  # closed after it (Connection: close): connection_lost settles it
        self._limits_before = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)

    def _writing_cycle(self) -> RequestResponseCycle | None:
        return self._running  # uvicorn's ``cycle`` is the newest pipelined request

    def _settle_fast(self, unsent: int, cut: str = CLIENT_CUT) -> None:
        unsettled, self._unsettled = self._unsettled, None
        limits, self._limits_before = self._limits_before, None
        if limits is not None and not self.transport.is_closing():
            low, high = limits
            self.transport.set_write_buffer_limits(high=high, low=low)
        fast = self._fast_hit
        if unsettled is not None and fast is not None:
            fast.unsettled.discard(self)
            self._settle(unsettled[0], unsent, later=True, cut=cut)

    def _settle(self, answered: Any, unsent: int = 0, **how: Any) -> None:
        """Count and log a fast answer (FastHit.settle); a failure there is counted and
        logged, never raised: the answer is written already."""
        fast = self._fast_hit
        assert fast is not None
        try:
            fast.settle(answered, unsent, **how)
        except Exception as error:
            fast.failed(error)

    def cut_at_shutdown(self) -> None:
        """The server stops with this connection's fast answer still in its transport."""
        if self._unsettled is not None:
            self._settle_fast(self._unsettled[1], cut=SHUTDOWN_CUT)

    def resume_writing(self) -> None:
        if self._unsettled is not None and not self.transport.get_write_buffer_size():
            self._settle_fast(0)
            # Kept alive from now, as after any response (nothing else runs or waits).
            idle = not self._answers_due() and self._head_deadline is None
            if idle and not self.transport.is_closing():
                self._arm_keepalive()
            self._close_if_half_closed()
        super().resume_writing()

    def _unset_keepalive_if_required(self) -> None:
        self._keepalive_deadline = None
        task = self.timeout_keep_alive_task
        if task is not None:  # armed by uvicorn after a response of the normal path
            task.cancel()
            self.timeout_keep_alive_task = None

    def _deadlines_passed(self, now: float) -> float | None:
        after = self._body_deadline_passed(now, super()._deadlines_passed(now))
        deadline = self._keepalive_deadline
        if deadline is None:
            return after
        if deadline <= now:
            self._keepalive_deadline = None
            self.timeout_keep_alive_handler()
            return after
        return deadline if after is None else min(after, deadline)

    def _body_deadline_passed(self, now: float, after: float | None) -> float | None:
        """A request body that stops arriving for REQUEST_HEAD_TIMEOUT (nginx's
        client_body_timeout): 408, and the app lets go of its origin request. Without it a
        client that sent a few bytes of a body and went quiet held an origin connection
        for as long as it liked; a pool's worth of them stopped every miss. A pause of
        ours (the app not reading, flow control) does not count."""
        deadline = self._body_deadline
        if deadline is None:
            return after
        cycle = self.cycle
        if (
            cycle is None
            or not cycle.more_body
            or cycle.response_complete  # answered before its body: the rest is dropped
            or cycle.disconnected  # dropped unrun, or its client left
            or self.transport.is_closing()
        ):
            self._body_deadline = None
            return after
        if deadline <= now:
            if self.flow.read_paused:
                deadline = self._body_deadline = now + self.limits.head_timeout
            else:
                self._body_deadline = None
                # A queued request's 408 follows the answers before it (helper-49: it was
                # written into the running one).
                self._body_refused(408, "request body not received in time")
                return after
        return deadline if after is None else min(after, deadline)

    def on_response_complete(self) -> None:
        if self._pending_refusal is None:
            # Whether its own body is whole, before uvicorn starts a queued request (which
            # would then be the newest: helper-50).
            finished = self._running
            early = finished is not None and finished is self.cycle and not self._in_head
            super().on_response_complete()
            if early and not finished.disconnected:  # type: ignore[union-attr]
                self._discard_cycle = finished
                self._answered_before_its_body()
            self._close_if_half_closed()
            return
        if self.pipeline:
            # Requests parsed before the refused head are still queued: serve them first.
            super().on_response_complete()
            self.flow.pause_reading()  # what follows is the refused head's
            return
        self.server_state.total_requests += 1
        status, self._pending_refusal = self._pending_refusal, None
        body, self._pending_body = self._pending_body, None
        if not self.transport.is_closing():
            self._refuse(status, body=body)

    # Timers

    def _discarding(self) -> bool:
        # Still in the answered request's body: the parser has not ended that message
        # (uvicorn leaves more_body set after an early answer) and no later one began.
        cycle = self._discard_cycle
        return cycle is not None and not self._in_head and self.cycle is cycle

    def _head_timed_out(self) -> None:
        if self.transport.is_closing() or not self._in_head:
            return
        running = self.cycle is not None and not self.cycle.response_complete
        if running and self.flow.read_paused:
            # We stopped reading (a request waits behind the running one), not the client:
            # the rest of this head may be waiting unread. Its clock starts again.
            self._arm_head_timer()
            return
        if running:
            # A pipelined head is trickling in behind a running response: that response
            # finishes, then the connection closes.
            self.cycle.keep_alive = False
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing asked: nothing to answer
        else:
            self._refuse(408)

    # Refusals

    def _refuse_head(self, status: int, body: str | None = None) -> None:
        """Refuse the head being read, after the responses still due on this connection."""
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # The running cycle keeps its keep-alive: uvicorn would close the connection
            # when it ends, before the refusal (and the queued requests) had their turn.
            self._pending_refusal = status
            self._pending_body = body
            self.flow.pause_reading()
            return
        self._refuse(status, body=body)

    def _refuse(self, status: int, *, linger: bool = True, body: str | None = None) -> None:
        self.parser = None  # type: ignore[assignment]
        self._write_refusal(status, linger=linger, body=body)

    def send_400_response(self, msg: str) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.more_body:
                self._body_refused(400, msg)
                return
            self._refuse_head(400, msg)  # earlier pipelined requests are answered first
            return
        self._note_refusal(400, msg)
        state = self.server_state
        defaults = state.default_headers
        state.default_headers = [*defaults, (b"date", http_date_now())]
        try:
            super().send_400_response(msg)
        finally:
            state.default_headers = defaults

    def _drop_queued(self, cycle: RequestResponseCycle) -> bool:
        """Take ``cycle`` out of the queue of pipelined requests if it waits there (it was
        the last one parsed): it never runs, and it is marked gone. False if it runs."""
        if not self.pipeline or self.pipeline[0][0] is not cycle:
            return False
        self.pipeline.popleft()  # uvicorn queues on the left and runs from the right
        cycle.disconnected = True
        return True

    def _body_refused(self, status: int, msg: str) -> None:
        """The last request's body cannot be read on (a bad chunk, a trailer section over
        the limits): it never completes. Queued behind answers still due, it never runs:
        they go out first, then the refusal (helper-48: it was written at once, into the
        middle of the running answer). Running, see :meth:`_body_broken`."""
        cycle = self.cycle
        assert cycle is not None
        if cycle is self._running:
            self._body_broken(cycle, msg, status)
            return
        self._drop_queued(cycle)  # unless it was dropped already (a half-close, a refusal)
        if self._pending_refusal is None:
            self._refuse_head(status, msg + "\n")

    def _body_broken(self, cycle: RequestResponseCycle, msg: str, status: int = 400) -> None:
        """The running request's own body cannot be parsed (a bad chunk): it will never
        complete. Waiting for its response (as for a bad pipelined head) waited forever,
        the app holding an origin connection for a body that never came; a hundred such
        requests took the whole origin pool. The app is told the client is gone (its
        ``receive()`` says ``http.disconnect``, so it lets go of the origin request) and
        the client gets a 400, or, if the response had begun, a closed connection."""
        started = cycle.response_started
        # Marked gone: its sends are dropped from here. A request with a body is never
        # answered from L2 leases (only bodiless GET/HEAD are sliced), so nothing the
        # transport still holds refers to an extent.
        cycle.disconnected = True
        cycle.message_event.set()
        if started:
            self._note_refusal(status, f"{msg} (in the body, after the response began)")
            self.parser = None  # type: ignore[assignment]
            self.transport.close()
        else:
            self._refuse(status, body=msg + "\n")

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's scope has the version read, HTTP/1.2 too (see on_headers_complete).
        if cycle.scope["http_version"] != "1.1":
            cycle.scope["http_version"] = http1_version(cycle.scope["http_version"])
        allow_early_hints(cycle)
        offer_written_out(self, cycle)
        self._running = cycle
        super()._start_asgi_task(cycle, app)


def allow_early_hints(cycle: RequestResponseCycle) -> None:
    """Offer the early-hint extension to this request and write its messages as 103s."""
    scope: Any = cycle.scope
    if scope.get("http_version") != "1.1":
        return
    scope.setdefault("extensions", {})[EARLY_HINT] = {}
    # The wrapper is the cycle's own attribute: it holds the cycle weakly, or the two would
    # form a reference cycle per request that only a full collection frees (its run_asgi
    # task holds the cycle while the app can send).
    send = type(cycle).send
    held = weakref.ref(cycle)

    async def send_with_early_hints(message: Any) -> None:
        cycle = held()
        if cycle is None:
            return  # its request is over: uvicorn drops what is sent then too
        if message["type"] != EARLY_HINT:
            await send(cycle, message)
            return
        if cycle.response_started or cycle.disconnected:
            return  # too late: a 1xx after the final response would corrupt the stream
        fields = message.get("headers") or [(b"link", link) for link in message.get("links", [])]
        status = b"102 Processing" if message.get("status") == 102 else b"103 Early Hints"
        lines = b"".join(bytes(name) + b": " + bytes(value) + b"\r\n" for name, value in fields)
        cycle.transport.write(b"HTTP/1.1 " + status + b"\r\n" + lines + b"\r\n")

    cycle.send = send_with_early_hints  # type: ignore[method-assign]
