"""JSON logs on stdout: one access line per request, and JSON for every other log record.

The access log is pure ASGI middleware (not ``BaseHTTPMiddleware``), so it never buffers or
delays a streamed body; it only counts what passes through ``send``. Over 400 lines
because the line's format, its buffered writer and the middleware that decides what a
response really sent (held, refused and discarded bytes) change together.
"""

from __future__ import annotations

import asyncio
import atexit
import email.utils
import functools
import json
import logging
import os
import random
import sys
import time
import weakref
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import SCOPE_KEY, RequestLog
from app.edge.clientaddr import CLIENT_KEY, TrustedProxies
from app.edge.writtenout import WRITTEN_OUT, WriteWatch
from app.ops.metrics import Metrics
from app.upstream.transport import CURRENT_REQUEST


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Route every logger (ours and uvicorn's) through one JSON handler on stdout."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our middleware writes the access line; uvicorn's own would be a second, plain one.
    logging.getLogger("uvicorn.access").disabled = True


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    return email.utils.formatdate(second, usegmt=True).encode()


def http_date_now() -> bytes:
    """An IMF-fixdate of now, formatted once per second."""
    return _http_date(int(time.time()))


_random_pool = bytearray()


def new_request_id() -> str:
    """``uuid.uuid4().hex`` without building a UUID object (version 4, RFC 4122 variant).

    The random bytes come from ``os.urandom`` 4 KiB at a time: one getrandom call per
    request cost more than the rest of the ID."""
    pool = _random_pool
    if len(pool) < 16:
        pool += os.urandom(4096)
    raw = pool[-16:]
    del pool[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def request_id_of(scope: Scope) -> str:
    return request_id_from(scope["headers"])


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id if it is a usable one, else a new ID."""
    for name, value in headers:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            # Echoed into our logs and headers: keep it short and printable.
            if 0 < len(text) <= 128 and text.isprintable():
                return text
    return new_request_id()


def _slice_counts(value: bytes) -> tuple[int, int] | None:
    """``hit=3, miss=1`` -> (3, 1): the metrics count exactly what the client was told."""
    fields = dict(
        part.strip().split("=", 1) for part in value.decode("latin-1").split(",") if "=" in part
    )
    try:
        return int(fields["hit"]), int(fields["miss"])
    except (KeyError, ValueError):
        return None


_text = encode_basestring_ascii  # a JSON string, as json.dumps writes it (C, ASCII-only)


def access_line_head(method: str, path: str, query: str) -> str:
    """The part of an access line between the timestamp and the status: what one route
    and method always write."""
    return (
        f',"level":"info","msg":"request","method":{_text(method)},'
        f'"path":{_text(path)},"query":{_text(query)},"status":'
    )


class AccessLineParts(NamedTuple):
    """An access line but its timestamp, duration and request ID: what the fast path keeps
    per route and answer (``{"ts":<ts>`` + a + <duration> + b + <request id> + c)."""

    a: str
    b: str
    c: str


def access_line_parts(
    head: str,
    status: int,
    sent: int,
    upstream_ms: float,
    cache: str,
    client: str,
    slices: tuple[int, int, int] | None,
    aborted: str | None,
) -> AccessLineParts:
    """``head``: :func:`access_line_head` of the request."""
    c = f',"client":{_text(client)}'
    if slices is not None:
        c += f',"slices":{{"hit":{slices[0]},"miss":{slices[1]},"coalesced":{slices[2]}}}'
    if aborted is not None:
        c += f',"aborted":{_text(aborted)}'
    return AccessLineParts(
        f'{head}{status},"bytes":{sent},"duration_ms":',
        f',"upstream_ms":{upstream_ms!r},"cache":{_text(cache)},"request_id":',
        c + "}\n",
    )


def line_of(parts: AccessLineParts, ts: str, duration_ms: str, request_id: str) -> str:
    """The line, with the timestamp and duration as JSON numbers already written."""
    return f'{{"ts":{ts}{parts.a}{duration_ms}{parts.b}{_text(request_id)}{parts.c}'


def ms_text(ms: int) -> str:
    """Milliseconds as seconds, as ``repr(round(seconds, 3))`` writes them (``1.5``,
    ``2.0``, ``1.234``) without a float's repr, a microsecond per line."""
    whole, part = divmod(ms, 1000)
    return f"{whole}.{str(part).rjust(3, '0').rstrip('0') or '0'}"


def access_line(
    ts: float,
    method: str,
    path: str,
    query: str,
    status: int,
    sent: int,
    duration_ms: float,
    upstream_ms: float,
    cache: str,
    request_id: str,
    client: str,
    slices: tuple[int, int, int] | None,
    aborted: str | None,
) -> str:
    """The access line: what ``json.dumps(entry, separators=(",", ":"))`` writes for it
    (tests/test_hotpath.py holds them equal), from a template instead of a dict walk."""
    head = access_line_head(method, path, query)
    parts = access_line_parts(head, status, sent, upstream_ms, cache, client, slices, aborted)
    return line_of(parts, repr(ts), repr(duration_ms), request_id)


class AccessLogWriter:
    """Where access lines go: stdout (or ``stream``), in blocks.

    One ``write`` per line was one system call per request (stdout is unbuffered under
    ``PYTHONUNBUFFERED``, as container images set it): a sixth of a cache hit's CPU. Lines
    are kept until ``buffer_bytes`` of them are waiting or ``flush_seconds`` have passed since
    the first of them, as nginx's ``access_log ... buffer= flush=``; the app flushes at
    shutdown and at exit. A ``kill -9`` loses at most that much of the access log.
    ``buffer_bytes`` 0 writes every line at once.
    """

    def __init__(
        self, stream: TextIO | None = None, buffer_bytes: int = 0, flush_seconds: float = 1.0
    ) -> None:
        self.stream = stream
        self.buffer_bytes = buffer_bytes
        self.flush_seconds = flush_seconds
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        if buffer_bytes > 0:
            # Weakly: a writer of an app that is gone (tests make many) is not kept alive.
            atexit.register(_flush_if_alive, weakref.ref(self))

    def write(self, line: str) -> None:
        if self.buffer_bytes <= 0:
            self._out(line)
            return
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.buffer_bytes:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to flush later: write now
                self.flush()
                return
            self._timer = loop.call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        self._out(text)

    def _out(self, text: str) -> None:
        # Written through: stdout is block-buffered when it is a file or a pipe and
        # PYTHONUNBUFFERED is unset, which would hold lines until exit.
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()


def _flush_if_alive(writer: weakref.ref[AccessLogWriter]) -> None:
    alive = writer()
    if alive is not None:
        alive.flush()


async def _unsent_at_end(watch: WriteWatch, held: int, refused: int) -> int:
    """Bytes of a whole response that never left: the last body message often sits in the
    transport's buffer when the app is done (uvicorn writes it without waiting), and a
    client that leaves then gets none of it while ``send`` raised nothing. Counting such a
    response as whole hid most disconnects of responses sent in one piece (an L1 hit). So
    the line waits until the buffer is out or the connection is lost, as nginx logs only
    after its last write. ``held``: what the transport held right after the last body
    message was handed to it, taken as unsent if the connection was lost in an error
    before it was out: a lower bound of what reached the kernel, as nginx's
    ``$body_bytes_sent``. Taken then, not now: a reset that came in the meantime has
    emptied the buffer. ``refused``: body bytes handed to a transport that right after
    held nothing and was closing (:meth:`WriteWatch.refused`), unsent if that was a failed
    write (helper-44: a client that sent its request and closed at once, so that its
    kernel reset the connection at the answer's first bytes, got its 16 MiB answer logged
    as whole)."""
    if not held:
        if not refused:
            return 0
        await asyncio.sleep(0)  # the connection_lost a failed write scheduled runs first
        return refused if watch.lost() else 0
    await watch.wait()
    return held if watch.lost() else 0


CLIENT_CUT = "client disconnected"  # the access line's ``aborted`` when nothing else is said
SHUTDOWN_CUT = "shutdown: the grace period ended first"
# Starts with "client": the client stopped reading, so it counts as a cut by the client.
SEND_TIMEOUT_CUT = "client took no bytes for the send timeout"


def ended_by(aborted: str | None) -> str:
    """Who cut a response short: the proxy sets ``aborted`` when the origin failed or changed
    mid-body, or when the server stopped (SHUTDOWN_CUT); otherwise (nothing set, or an
    upload the client gave up) the client left."""
    if aborted is None or aborted.startswith("client"):
        return "client"
    return "server" if aborted == SHUTDOWN_CUT else "origin"


class AccessLogMiddleware:
    """Writes the access line and records the per-request metrics.

    ``sample_rate``: the share of requests written to the log (1: every one, 0: none);
    a 5xx or an aborted response is always written. Metrics count every request.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None = None,
        stream: TextIO | None = None,
        trusted_proxies: TrustedProxies | None = None,
        sample_rate: float = 1.0,
        writer: AccessLogWriter | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.writer = writer or AccessLogWriter(stream)
        self.trusted_proxies = trusted_proxies or TrustedProxies([])
        self.sample_rate = sample_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        log = RequestLog(request_id=request_id_of(scope))
        scope[SCOPE_KEY] = log
        client = scope[CLIENT_KEY] = self.trusted_proxies.client(scope)
        CURRENT_REQUEST.set(log)  # origin exchanges of this request fill upstream_ms
        slices: tuple[int, int] | None = None
        status = 0
        sent = 0
        complete = False
        held_at_end = 0  # what the transport held right after the last body message
        refused = 0  # body bytes possibly discarded by a write that failed at once
        first_byte: float | None = None
        request_id_header = (b"x-request-id", log.request_id.encode("latin-1"))
        watch: WriteWatch | None = scope.get("extensions", {}).get(WRITTEN_OUT, {}).get("watch")

        async def counting_send(message: Message) -> None:
            nonlocal status, sent, complete, first_byte, slices, held_at_end, refused
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), request_id_header]
                dated = False
                for name, value in headers:
                    if name == b"date":
                        dated = True
                    elif name == b"x-cache-slices":
                        slices = _slice_counts(value)
                if not dated:
                    # RFC 9110 6.6.1: relayed and cached responses keep the origin's Date;
                    # ours go out with this hop's.
                    headers.append((b"date", http_date_now()))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                await send(message)
                if watch is not None and watch.gone():
                    return  # dropped by uvicorn: the client had left (its send says nothing)
                size = len(message.get("body", b""))
                sent += size
                complete = not message.get("more_body", False)
                if watch is not None:
                    if size and watch.refused():
                        refused += size
                    held_at_end = watch.buffered()
                if first_byte is None and (size or complete):
                    first_byte = time.perf_counter()
                return
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
            if complete and watch is not None:
                unsent = await _unsent_at_end(watch, held_at_end, refused)
                held_at_end = 0  # accounted for here
                if unsent and not log.discarded:
                    complete = False
                    sent = max(0, sent - unsent)
        finally:
            if log.discarded:
                # Reset by the send timeout: what the transport and the kernel held went.
                complete = False
                sent = max(0, sent - log.discarded)
            elif not complete and held_at_end and watch is not None and watch.lost():
                # Cut short by a loss in error (a reset, the send timeout's abort): what the
                # transport held after the last body message was discarded, not sent. As for
                # a whole response (_unsent_at_end), a lower bound of what reached the kernel:
                # a 16 MiB slice handed over in one message to a client that took nothing
                # was logged as 16 MiB sent.
                sent = max(0, sent - held_at_end)
            duration = time.perf_counter() - started
            if self.metrics is not None:
                ttfb = None if first_byte is None else first_byte - started
                self.metrics.observe_request(
                    scope["method"],
                    status,
                    log.cache,
                    sent,
                    ttfb,
                    slices,
                    None if complete else ended_by(log.aborted),
                )
            rate = self.sample_rate
            if rate >= 1.0 or not complete or status >= 500 or random.random() < rate:
                stats = log.slices
                line = access_line(
                    round(time.time(), 3),
                    scope["method"],
                    scope.get("raw_path", b"").decode("latin-1") or scope["path"],
                    scope.get("query_string", b"").decode("latin-1"),
                    status,
                    sent,
                    round(duration * 1000, 3),
                    round(log.upstream_seconds * 1000, 3),
                    log.cache,
                    log.request_id,
                    client or "-",
                    None if stats is None else (stats.hit, stats.miss, stats.coalesced),
                    None if complete else (log.aborted or CLIENT_CUT),
                )
                self.writer.write(line)
