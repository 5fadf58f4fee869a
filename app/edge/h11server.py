"""uvicorn's h11 protocol with the edge protections of :mod:`app.edge.httpserver`.

``uvicorn app.main:app --http h11`` (or a machine without httptools) used to run without
them: a slowloris trickling a head held its connection forever, a huge head got h11's
bare 400 without ``Date``, and connections were not capped. Here, as in the httptools
class:

- **Head size**: h11's receive buffer is capped at the head limit
  (``MAX_REQUEST_TARGET_BYTES`` + ``MAX_HEADER_BYTES`` + the request line); past it h11
  stops parsing and the head gets 414 (the request line alone is too long) or 431.
  h11 parses a head in one piece, so the per-field count of the httptools class
  (``MAX_HEADER_FIELDS``) is not applied here; the byte limit is.
- **Head timeout** (``REQUEST_HEAD_TIMEOUT``): from the first byte of a head (or the
  connection's start) until the head is parsed; a partial head gets 408, a silent
  connection is closed.
- **Connection cap** (``MAX_CLIENT_CONNECTIONS``): the connection waiting longest for a
  head makes room, else the newcomer gets 503.
- Every refusal carries ``Date`` (the app writes Date, so uvicorn's own is off) and is
  followed by a short linger, so a client still sending reads the answer.
- **Send timeout** (``SEND_TIMEOUT``, :mod:`app.edge.sendtimeout`), the written-out watch
  the access log and the L2 lease writer use (:mod:`app.edge.writtenout`), and a
  half-close that still gets its answer: as the httptools class does (helper-45 found all
  three missing here: cuts logged as whole responses, a half-closed client's answer
  truncated).

h11 parses the next pipelined head only after the running response ends, so a refusal
never overtakes an earlier request's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any
from urllib.parse import unquote

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.edge.httpserver import (
    REQUEST_LINE_SLACK,
    EdgeGuard,
    edge_of,
    http1_version,
    oldest_waiting_for_head,
)
from app.edge.target import absolute_target, request_target, with_authority
from app.edge.writtenout import offer_written_out


def as_origin_form(scope: Any, root_path: str, max_target_bytes: int) -> None:
    """uvicorn's h11 scope of an absolute-form target made as httptools' edge makes it
    (app/edge/target.py): h11 leaves the scheme and authority in the path, which routed
    nowhere (404). One with userinfo, over the target limit (counted whole, as httptools'
    edge counts it) or not a URL is left as it is: the app refuses it (400, 414)."""
    raw_target = request_target(scope) or b"/"
    if raw_target[:1] == b"/":
        return  # the origin form: nearly every request
    if scope["query_string"]:
        raw_target += b"?" + scope["query_string"]
    if len(raw_target) > max_target_bytes:
        return
    absolute = absolute_target(raw_target)
    if absolute is None or absolute.userinfo:
        return
    raw_path, _, query = absolute.for_method(scope["method"].encode("ascii")).partition(b"?")
    scope["path"] = root_path + unquote(raw_path.decode("ascii"))  # as uvicorn makes it
    scope["raw_path"] = root_path.encode("ascii") + raw_path
    scope["query_string"] = query
    http10 = scope["http_version"] == "1.0"
    scope["headers"] = with_authority(scope["headers"], absolute.authority, http10)


class _EdgeLogsRefusals(logging.Filter):
    """uvicorn's h11 protocol logs a warning for every malformed request, unlimited; the
    edge refuses it and logs that, rate-limited (send_400_response): the warning goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Invalid HTTP request received."


_EDGE_LOGS_REFUSALS = _EdgeLogsRefusals()


class _Connection(h11.Connection):
    """h11's server side, telling the edge when a request had trailer fields: uvicorn
    drops them (as httptools' edge does, RFC 9110 6.5.1), and a drop is counted."""

    def __init__(self, protocol: H11EdgeProtocol, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._protocol = weakref.ref(protocol)  # not a cycle: freed with its connection

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.EndOfMessage) and event.headers:
            protocol = self._protocol()
            if protocol is not None and protocol.refusals is not None:
                protocol.refusals.trailer_dropped(protocol.client)
        return event


class H11EdgeProtocol(EdgeGuard, H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        edge = edge_of(config)
        self.limits, self.refusals = edge.limits, edge.refusals
        # h11 raises "Receive buffer too long" once an unfinished head passes this.
        self.conn = _Connection(self, max_incomplete_event_size=self.limits.max_head_bytes)
        self.logger.addFilter(_EDGE_LOGS_REFUSALS)  # once: a logger keeps a filter once
        self._waiting_since = time.monotonic()
        # Ended by an error (reset, broken pipe) or the send timeout's abort: the transport
        # discarded what it held (read by the written-out watch).
        self.lost_in_error = False
        self._half_closed = False  # EOF came with an answer due: close once it is out

    # Connection lifecycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        if len(self.connections) > self.limits.max_connections:
            oldest = oldest_waiting_for_head(self.connections, self)
            if oldest is not None:
                oldest.transport.close()
            else:
                self._refuse(503, linger=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_in_error = exc is not None or self.send_expired
        self._stop_wake()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio allows True
        if self._lingering:
            self.transport.close()
            return None
        if self.conn.their_state is h11.SEND_BODY:
            return None  # its body can never be whole: closed, as the httptools protocol does
        if self.cycle is not None and not self.cycle.response_complete:
            # Half-closed after its request: answered, then closed (on_response_complete).
            self._half_closed = True
            return True
        return None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._discarding():
            self._answered_before_its_body()
        done = self.cycle is None or self.cycle.response_complete  # no pipelined one began
        if self._half_closed and done and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            scope: Any = cycle.scope
            scope["http_version"] = http1_version(scope["http_version"])  # as on httptools
            as_origin_form(scope, self.root_path, self.limits.max_target_bytes)
            offer_written_out(self, cycle)  # before its task runs: it reads the scope first
        if self._half_closed and self.conn.their_state is h11.SEND_BODY:
            # A request pipelined before the half-close, its body short of whole: no more
            # bytes come (helper-48: its origin request was held until the read timeout).
            self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        # An Upgrade is answered in HTTP/1.1 (RFC 9110 7.8): counted and noted once per
        # interval, as on httptools' edge; uvicorn logged two warnings for each.
        if self.refusals is not None:
            upgrade = self._get_upgrade()
            protocol = upgrade.decode("latin-1") if upgrade else "?"
            self.refusals.upgrade_ignored(protocol, self.client)

    def _discarding(self) -> bool:
        # Answered, the client still sending that request's body (h11 drops it).
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY

    def _in_head(self) -> bool:
        """No request of this cycle parsed yet (h11 waits for one)."""
        return self.conn.their_state is h11.IDLE

    def _waiting_for_head(self) -> bool:
        busy = self.cycle is not None and not self.cycle.response_complete
        return self._in_head() and not busy and not self.transport.is_closing()

    # Input

    def data_received(self, data: bytes) -> None:
        if self._swallowed(data):
            return
        if self._head_deadline is None and self._waiting_for_head():
            self._waiting_since = time.monotonic()  # the first byte of a later head
            self._arm_head_timer()
        super().data_received(data)
        if not self._in_head():
            self._cancel_head_timer()

    def send_400_response(self, msg: str) -> None:
        """h11 found the head malformed, or too long to keep reading: refuse it."""
        pending, _ = self.conn.trailing_data
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # In a body: a bad chunk, or a trailer section past h11's limit (helper-48: it
            # was taken for a head, its first line for a request target: a 414). Its app
            # is told the client left; an answer already begun is cut, not appended to.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                # Counted and logged as on httptools' edge (_body_broken): uvicorn's own
                # warning is filtered out (_EdgeLogsRefusals).
                self._note_refusal(400, f"{msg} (in the body, after the response began)")
                self.transport.close()
                return
            too_large = len(pending) > self.limits.max_head_bytes
            self._refuse(431 if too_large else 400, body=None if too_large else msg + "\n")
        elif len(pending) > self.limits.max_head_bytes:
            line_end = pending.find(b"\n")
            line_limit = self.limits.max_target_bytes + REQUEST_LINE_SLACK
            too_long_target = line_end < 0 or line_end > line_limit
            self._refuse(414 if too_long_target else 431)
        else:
            self._refuse(400, body=msg + "\n")

    # Timers

    def _head_timed_out(self) -> None:
        if self.transport.is_closing() or not self._in_head():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a head trickles in behind a running response
            return
        pending, _ = self.conn.trailing_data
        if pending.strip():
            self._refuse(408)
        else:
            self.transport.close()  # nothing asked: nothing to answer

    # Refusals

    def _refuse(self, status: int, *, linger: bool = True, body: str | None = None) -> None:
        self._write_refusal(status, linger=linger, body=body)
