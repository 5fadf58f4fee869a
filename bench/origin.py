"""The demo, test and benchmark origin: a raw ASGI app serving synthetic files.

Run it::

    python -m bench.origin --host 127.0.0.1 --port 8081 [--latency-ms 20]
        [--bandwidth-mbps 50] [--chunk-size 262144]

In tests use :func:`create_origin_app` (for example under ``tests.servers``) and read the
request log and versions from the returned :class:`OriginApp` in-process.

Files: ``GET/HEAD /files/<number>[k|m|g]<anything>``, e.g. ``/files/1m.bin`` (1 MiB),
``/files/100m-a.bin``, ``/files/12345.dat``. Byte ``i`` of a file is
``PATTERN[(i + seed) % len(PATTERN)]``: one pseudo-random block of prime length, built
once, with ``seed`` derived from the name and the file's version. Any range of any size
is therefore a memoryview slice of a doubled pattern, never a materialised file, and
:func:`expected_bytes` / :func:`expected_sha256` reproduce the content for tests.

Per-request query parameters on /files: ``cc`` (Cache-Control; empty = none), ``expires``
(seconds from now, or a raw value), ``vary``, ``etag=0``, ``lm=0``, ``weak=1``,
``setcookie``, ``status`` (send the whole body with that status, ranges and conditionals
ignored), ``ct``, ``latency_ms``, ``bandwidth_mbps``, and ``fault``:

``norange``     ignore Range (and If-Range): always 200 with the whole body.
``nolength``    no Content-Length: uvicorn sends ``Transfer-Encoding: chunked``.
``short``       send the right headers and half the body, then end the response. With a
                Content-Length, uvicorn raises "Response content shorter than
                Content-Length" from ``send(more_body=False)``; we swallow it and return,
                uvicorn logs "ASGI callable returned without completing response" and
                closes the connection: the client sees a body shorter than announced.
                Without a Content-Length (``fault=nolength,short``) we return without the
                final message, so the chunked body lacks its terminating chunk.
``wrongrange``  a single-range request gets the range shifted by its own length (back
                instead when that runs past EOF), correctly labelled in Content-Range:
                the right-looking answer to a different question. Other requests: no-op.
``reset``       headers and half the body, then the app raises: uvicorn logs the
                traceback and closes the connection (a FIN, not an RST: ASGI gives the app
                no way to abort the socket). Client view: a truncated body, as ``short``.
``status500``   500 with a short text body.
``hang``        headers, then nothing for ``hang_s`` (60 s), then the body; ends early if
                the client goes away.

``hold=<token>`` (any non-control route but /echo; a URL-safe token, "+" reads as a space)
holds the response, after its latency,
until the test releases the token (``OriginApp.release`` or ``POST
/_origin/release?hold=<token>``); ``OriginApp.holding`` counts requests held per token.
Tests use it instead of a sleep to keep a request out for exactly as long as they need.

Several faults combine with commas (``fault=nolength,short``). ``fault_from=<byte>`` limits
the faults (query or sticky) to requests whose Range starts at or after that byte, so a
slicing client's probe succeeds and its later slices fail.

Other routes: ``/echo...`` (any method; JSON of the request, body hashed while streamed),
``/status/<code>``, ``/cookies`` (two Set-Cookie), ``/slow-headers?ms=N``.
Control routes (not logged, no latency): ``POST /_origin/bump?name=<file name>``,
``POST /_origin/fault?name=<file name>&fault=<faults>`` (sticky faults; empty clears),
``GET|DELETE /_origin/log``, ``GET /_origin/stats``, ``POST /_origin/release?hold=<token>``.

Pacing (``--bandwidth-mbps``, ``bandwidth_mbps=``): each response body is a token bucket
against the monotonic clock, with a burst of one pacing chunk (10 ms worth of the rate,
at least 16 KiB). Its clock starts at the first body byte, so latency or a hang earns no
credit to burst with afterwards. ``--latency-ms`` delays the response start of every
non-control request (``latency_ms=`` overrides it per request).

Counting: every non-control request is appended to the log when it starts, and its
``bytes_sent`` grows before each body chunk is handed to the server, so a client that has
read a response always finds it fully counted. A client that disconnects mid-body is
noticed by a receive() watcher; the chunk in flight at that moment may be over-counted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qs

from bench import origin_http as http
from bench.origin_http import Span

# The ASGI spec types (as Starlette and httpx spell them), so any server or client fits.
Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# A prime period keeps the content of two files, or two offsets of one file, from lining
# up on power-of-two slice boundaries, so a misplaced slice never looks right by accident.
PATTERN_LENGTH = 1_048_573
PATTERN_SEED = b"slicecache origin pattern v1"
DEFAULT_CHUNK_SIZE = 256 * 1024
DEFAULT_CACHE_CONTROL = "public, max-age=3600"
# Last-Modified of version v is this instant plus (v - 1) days: fixed, so reruns agree.
_EPOCH_LAST_MODIFIED = 1_577_836_800  # 2020-01-01T00:00:00Z
_SIZE_SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_FILE_NAME = re.compile(r"([0-9]{1,15})([kmg]?)", re.ASCII | re.IGNORECASE)
_ETAG = re.compile(r'(?:W/)?"([^"]*)"')


@cache
def _doubled_pattern() -> memoryview:
    # Doubled so that any chunk of up to PATTERN_LENGTH bytes starting anywhere in the
    # period is one contiguous, zero-copy slice.
    pattern = hashlib.shake_256(PATTERN_SEED).digest(PATTERN_LENGTH)
    return memoryview(pattern + pattern)


def file_size(name: str) -> int | None:
    """Size of ``/files/<name>``, or None when the name does not start with a number."""
    m = _FILE_NAME.match(name)
    if m is None:
        return None
    return int(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()]


def _identity(name: str, version: int) -> tuple[int, str]:
    """(content offset seed, ETag opaque tag) of one version of one file."""
    digest = hashlib.sha256(f"{name}\0{version}".encode()).digest()
    return int.from_bytes(digest[8:16], "big") % PATTERN_LENGTH, digest[:8].hex()


def last_modified(version: int) -> str:
    return http.format_date(_EPOCH_LAST_MODIFIED + (version - 1) * 86_400)


def etag_for(name: str, version: int = 1, *, weak: bool = False) -> str:
    tag = f'"{_identity(name, version)[1]}"'
    return "W/" + tag if weak else tag


def iter_content(seed: int, first: int, length: int, chunk_size: int) -> Iterator[memoryview]:
    """The file bytes ``first .. first+length-1`` as zero-copy chunks of the pattern."""
    if not 0 < chunk_size <= PATTERN_LENGTH:
        raise ValueError(f"chunk_size must be in 1..{PATTERN_LENGTH}")
    doubled = _doubled_pattern()
    pos = (first + seed) % PATTERN_LENGTH
    remaining = length
    while remaining > 0:
        n = min(chunk_size, remaining)
        yield doubled[pos : pos + n]
        pos = (pos + n) % PATTERN_LENGTH
        remaining -= n


def _checked_size(name: str) -> int:
    size = file_size(name)
    if size is None:
        raise ValueError(f"not an origin file name: {name!r}")
    return size


def expected_bytes(name: str, version: int = 1, first: int = 0, last: int | None = None) -> bytes:
    """Bytes ``first..last`` (inclusive, clamped to the file) of one version of a file."""
    size = _checked_size(name)
    last = size - 1 if last is None else min(last, size - 1)
    if first > last:
        return b""
    seed = _identity(name, version)[0]
    return b"".join(iter_content(seed, first, last - first + 1, PATTERN_LENGTH))


def expected_sha256(name: str, version: int = 1) -> str:
    """Hex SHA-256 of a whole file, hashed chunk by chunk (works for multi-GiB names)."""
    h = hashlib.sha256()
    for chunk in iter_content(_identity(name, version)[0], 0, _checked_size(name), PATTERN_LENGTH):
        h.update(chunk)
    return h.hexdigest()


@dataclass(slots=True)
class RequestRecord:
    method: str
    path: str
    query: str
    range: str | None
    status: int | None = None
    bytes_sent: int = 0
    finished: bool = False  # the app is done with the request
    client_left: bool = False  # the client (the proxy) went away before the end


class OriginFaultReset(RuntimeError):
    """Raised on purpose by ``fault=reset`` so that the server drops the connection."""


def _weak_match(if_none_match: str, etag: str | None) -> bool:
    # RFC 9110 13.1.2: If-None-Match uses weak comparison, and "*" matches any current
    # representation (every file exists, with or without an ETag).
    if if_none_match.strip() == "*":
        return True
    if etag is None:
        return False
    m = _ETAG.fullmatch(etag)
    return m is not None and m.group(1) in _ETAG.findall(if_none_match)


def _int_param(query: dict[str, str], key: str) -> int | None:
    value = query.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _float_param(query: dict[str, str], key: str) -> float | None:
    value = query.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _range_start(range_header: str | None) -> int:
    """First byte a ``bytes=N-...`` request asks for; 0 for anything else."""
    if range_header and range_header.startswith("bytes="):
        first = range_header[len("bytes=") :].split("-", 1)[0].strip()
        if first.isdigit():
            return int(first)
    return 0


def _wrong_range(r: Span, size: int) -> Span:
    first, last = r
    shift = last - first + 1
    if first + shift < size:
        return first + shift, min(last + shift, size - 1)
    if first > 0:
        moved = max(0, first - shift)
        return moved, moved + shift - 1
    # The range is the whole file: the only different answer left is a shorter one.
    return (1, size - 1) if size > 1 else r


Segment = bytes | tuple[int, int]  # literal bytes, or (file offset, length) of content


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    raw_query: str
    query: dict[str, str]  # last value wins for repeated keys
    headers: dict[str, str]  # lower-cased names, repeated fields joined with ", "
    raw_headers: list[tuple[str, str]]
    raw_path: str  # still percent-encoded, as it came off the wire

    @classmethod
    def from_scope(cls, scope: Scope) -> _Request:
        raw_query = scope["query_string"].decode("latin-1")
        query = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers: dict[str, str] = {}
        for key, value in raw:
            name = key.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        return cls(scope["method"], scope["path"], raw_query, query, headers, raw, raw_path)


class _Exchange:
    """One request/response: counting, pacing and disconnect detection around send()."""

    def __init__(
        self,
        receive: Receive,
        send: Send,
        record: RequestRecord | None,
        origin: OriginApp,
        rate: float,
    ) -> None:
        self.receive = receive
        self._send = send
        self.record = record
        self._origin = origin
        self.rate = rate
        self._body_started_at: float | None = None
        self._paced = 0
        self._watcher: asyncio.Task[None] | None = None
        self._gone = asyncio.Event()

    @property
    def disconnected(self) -> bool:
        return self._gone.is_set()

    def watch_disconnect(self) -> None:
        """Start noticing a client that goes away (only once the request body is read)."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while (await self.receive())["type"] != "http.disconnect":
                pass  # an unread request body: drop it
        except asyncio.CancelledError:
            return  # stopped by close(): ended cancelled, the task would keep a cycle
        self._gone.set()

    def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()

    async def sleep(self, seconds: float) -> bool:
        """Sleep, or stop early when the client disconnects; False if it did."""
        if seconds <= 0:
            return not self.disconnected
        self.watch_disconnect()
        try:
            await asyncio.wait_for(self._gone.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def start(self, status: int, headers: Headers) -> None:
        if self.record is not None:
            self.record.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes | memoryview) -> None:
        n = len(chunk)
        if self._body_started_at is None:
            # The clock starts with the body, so latency or a hang is not "credit" to burst.
            self._body_started_at = time.monotonic()
        # Counted before the send: once the client holds these bytes they are in the log.
        if self.record is not None:
            self.record.bytes_sent += n
            self._origin.bytes_sent += n
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.rate > 0:
            # Token bucket against the monotonic clock: after sending `paced` bytes we may
            # not be ahead of t0 + paced/rate, so oversleeping on one chunk is made up on
            # the next instead of accumulating (a fixed sleep per chunk would drift).
            self._paced += n
            delay = self._body_started_at + self._paced / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def simple(self, status: int, body: bytes, content_type: bytes, extra: Headers) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        await self.start(status, headers + extra)
        if body:
            await self.body(body)
        await self.end()


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class OriginApp:
    """The ASGI callable; its state (versions, log, counters) is readable in-process."""

    def __init__(
        self,
        latency_ms: float = 0.0,
        bandwidth_bytes_per_s: float = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        log_limit: int = 100_000,
        hang_s: float = 60.0,
        date_header: bool = False,
    ) -> None:
        if not 0 < chunk_size <= PATTERN_LENGTH:
            raise ValueError(f"chunk_size must be in 1..{PATTERN_LENGTH}")
        self.latency_ms = latency_ms
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.chunk_size = chunk_size
        self.hang_s = hang_s
        # uvicorn adds Date itself (a second one would be a duplicate); set this when the
        # app is driven without a server, e.g. through httpx.ASGITransport.
        self.date_header = date_header
        self.versions: dict[str, int] = {}
        self.sticky_faults: dict[str, set[str]] = {}
        # Bounded: a benchmark sends millions of requests; the counters below stay exact.
        self.log: deque[RequestRecord] = deque(maxlen=log_limit)
        self.requests = 0
        self.bytes_sent = 0
        # Content requests still running: tests use it to see an abandoned response stop.
        self.in_flight = 0
        # ``hold=<token>``: released tokens, and how many requests each one holds now.
        # Plain containers polled by the held requests: release() may come from any thread.
        self.released: set[str] = set()
        self.holding: dict[str, int] = {}
        _doubled_pattern()  # build it now, not inside the first timed request

    # --- in-process state API ---------------------------------------------------------

    def version(self, name: str) -> int:
        return self.versions.get(name, 1)

    def set_fault(self, name: str, faults: str) -> None:
        """Apply ``faults`` (as in ``?fault=``) to every request for ``name``; "" clears."""
        if faults:
            self.sticky_faults[name] = set(faults.split(","))
        else:
            self.sticky_faults.pop(name, None)

    def release(self, token: str) -> None:
        """Let every request held with ``hold=<token>`` go on, now and later."""
        self.released.add(token)

    async def _hold(self, ex: _Exchange, token: str) -> bool:
        """Wait until ``token`` is released; False if the client went away first."""
        self.holding[token] = self.holding.get(token, 0) + 1
        try:
            while token not in self.released:
                if not await ex.sleep(0.005):
                    return False
            return True
        finally:
            self.holding[token] -= 1

    def bump(self, name: str) -> int:
        """Make ``name`` a new version: new content, ETag and Last-Modified."""
        self.versions[name] = self.version(name) + 1
        return self.versions[name]

    def log_entries(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in list(self.log)]

    def clear_log(self) -> None:
        self.log.clear()

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_sent": self.bytes_sent}

    # --- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        req = _Request.from_scope(scope)
        if req.path.startswith("/_origin/"):
            await self._control(_Exchange(receive, send, None, self, 0), req)
            return

        record = RequestRecord(req.method, req.path, req.raw_query, req.headers.get("range"))
        self.log.append(record)
        self.requests += 1
        mbps = _float_param(req.query, "bandwidth_mbps")
        rate = self.bandwidth_bytes_per_s if mbps is None else mbps * 1e6
        exchange = _Exchange(receive, send, record, self, rate)
        self.in_flight += 1
        try:
            await self._route(exchange, req)
        finally:
            self.in_flight -= 1
            record.client_left = exchange.disconnected
            record.finished = True
            exchange.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _common_headers(self) -> Headers:
        if self.date_header:
            return [(b"date", http.format_date(time.time()).encode())]
        return []

    async def _route(self, ex: _Exchange, req: _Request) -> None:
        if req.path.startswith("/echo"):
            await self._echo(ex, req)
            return
        if not await ex.sleep(self._latency_s(req)):
            return
        hold = req.query.get("hold")
        if hold is not None and not await self._hold(ex, hold):
            return
        plain = b"text/plain; charset=utf-8"
        common = self._common_headers()
        path = req.path
        if path.startswith("/files/"):
            await self._file(ex, req, path.removeprefix("/files/"))
        elif path.startswith("/status/"):
            code = path.removeprefix("/status/")
            if not (code.isascii() and code.isdigit() and 200 <= int(code) <= 599):
                await ex.simple(400, b"status must be 200..599\n", plain, common)
            elif int(code) in (204, 304):
                await ex.start(int(code), common)
                await ex.end()
            else:
                await ex.simple(int(code), b"status %s\n" % code.encode(), plain, common)
        elif path == "/cookies":
            cookies = [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/; HttpOnly")]
            await ex.simple(200, b"cookies\n", plain, common + cookies)
        elif path == "/slow-headers":
            if await ex.sleep((_float_param(req.query, "ms") or 0.0) / 1000):
                await ex.simple(200, b"slow\n", plain, common)
        else:
            await ex.simple(404, b"not found\n", plain, common)

    def _latency_s(self, req: _Request) -> float:
        override = _float_param(req.query, "latency_ms")
        return (self.latency_ms if override is None else override) / 1000

    async def _echo(self, ex: _Exchange, req: _Request) -> None:
        # Hash as the body streams in: a multi-GiB upload never sits in memory.
        digest = hashlib.sha256()
        length = 0
        more_body = True
        while more_body:
            message = await ex.receive()
            if message["type"] == "http.disconnect":
                return
            body: bytes = message.get("body", b"")
            digest.update(body)
            length += len(body)
            more_body = message.get("more_body", False)
        if not await ex.sleep(self._latency_s(req)):
            return
        payload = {
            "method": req.method,
            "path": req.path,
            "raw_path": req.raw_path,
            "query": req.raw_query,
            # The raw list, not the merged dict: pass-through tests look at duplicates.
            "headers": [list(pair) for pair in req.raw_headers],
            "body_sha256": digest.hexdigest(),
            "body_length": length,
        }
        await ex.simple(200, _json(payload), b"application/json", self._common_headers())

    async def _file(self, ex: _Exchange, req: _Request, name: str) -> None:
        plain = b"text/plain; charset=utf-8"
        common = self._common_headers()
        if req.method not in ("GET", "HEAD"):
            await ex.simple(405, b"GET or HEAD\n", plain, common + [(b"allow", b"GET, HEAD")])
            return
        size = file_size(name)
        if size is None:
            await ex.simple(404, b"no such file\n", plain, common)
            return
        query = req.query
        faults = set(query.get("fault", "").split(",")) | self.sticky_faults.get(name, set())
        fault_from = _int_param(query, "fault_from")
        if fault_from is not None and _range_start(req.headers.get("range")) < fault_from:
            faults = set()  # only requests for bytes from ``fault_from`` on are faulty
        if "status500" in faults:
            await ex.simple(500, b"fault: status500\n", plain, common)
            return

        version = self.version(name)
        seed, opaque = _identity(name, version)
        etag = None if query.get("etag") == "0" else f'"{opaque}"'
        if etag is not None and query.get("weak") == "1":
            etag = "W/" + etag
        modified = None if query.get("lm") == "0" else last_modified(version)
        content_type = query.get("ct", "application/octet-stream")

        # Headers a 304 must repeat (RFC 9110 15.4.5) plus the ones only a body needs.
        validators = list(common)
        if etag is not None:
            validators.append((b"etag", etag.encode("latin-1")))
        if modified is not None:
            validators.append((b"last-modified", modified.encode()))
        cache_control = query.get("cc", DEFAULT_CACHE_CONTROL)
        if cache_control:
            validators.append((b"cache-control", cache_control.encode("latin-1")))
        if (expires := query.get("expires")) is not None:
            seconds = _int_param(query, "expires")
            value = expires if seconds is None else http.format_date(time.time() + seconds)
            validators.append((b"expires", value.encode("latin-1")))
        if (vary := query.get("vary")) is not None:
            validators.append((b"vary", vary.encode("latin-1")))
        representation = validators + [(b"accept-ranges", b"bytes")]
        # An upstream cache's Cache-Status (RFC 9211), one field line per "|"-separated value.
        if (cache_status := query.get("cs")) is not None:
            for line in cache_status.split("|"):
                representation.append((b"cache-status", line.encode("latin-1")))
        if (cookie := query.get("setcookie")) is not None:
            representation.append((b"set-cookie", cookie.encode("latin-1")))
        ct_header = (b"content-type", content_type.encode("latin-1"))

        status_override = _int_param(query, "status")
        if status_override is not None:
            if not 200 <= status_override <= 599:
                await ex.simple(400, b"status must be 200..599\n", plain, common)
            elif status_override in (204, 304):
                await ex.start(status_override, representation)
                await ex.end()
            else:
                segments: list[Segment] = [(0, size)]
                await self._respond(
                    ex, req, faults, status_override, representation + [ct_header], segments, seed
                )
            return

        if (inm := req.headers.get("if-none-match")) is not None:
            not_modified = _weak_match(inm, etag)
        elif (ims := req.headers.get("if-modified-since")) is not None and modified is not None:
            # An unparsable date is ignored (RFC 9110 13.1.3): the full response is safe.
            since = http.parse_date(ims)
            changed = http.parse_date(modified)
            not_modified = since is not None and changed is not None and changed <= since
        else:
            not_modified = False
        if not_modified:
            await ex.start(304, validators)
            await ex.end()
            return

        range_header = None if "norange" in faults else req.headers.get("range")
        if not http.if_range_matches(req.headers.get("if-range"), etag, modified):
            range_header = None
        spans = http.parse_ranges(range_header, size)

        if spans is None:
            await self._respond(
                ex, req, faults, 200, representation + [ct_header], [(0, size)], seed
            )
            return
        if not spans:
            cr = f"bytes */{size}".encode()
            await ex.simple(416, b"", plain, validators + [(b"content-range", cr)])
            return
        if len(spans) == 1:
            span = _wrong_range(spans[0], size) if "wrongrange" in faults else spans[0]
            cr = http.content_range(span, size).encode()
            headers = representation + [ct_header, (b"content-range", cr)]
            first, last = span
            await self._respond(ex, req, faults, 206, headers, [(first, last - first + 1)], seed)
            return
        boundary = http.boundary()
        segments = []
        for first, last in spans:
            segments.append(http.part_header((first, last), size, content_type, boundary))
            segments.append((first, last - first + 1))
        segments.append(http.trailer(boundary))
        mp_type = (b"content-type", http.multipart_type(boundary).encode())
        await self._respond(ex, req, faults, 206, representation + [mp_type], segments, seed)

    async def _respond(
        self,
        ex: _Exchange,
        req: _Request,
        faults: set[str],
        status: int,
        headers: Headers,
        segments: Sequence[Segment],
        seed: int,
    ) -> None:
        total = sum(len(s) if isinstance(s, bytes) else s[1] for s in segments)
        announce_length = "nolength" not in faults
        if announce_length:
            headers = headers + [(b"content-length", b"%d" % total)]
        await ex.start(status, headers)
        if req.method == "HEAD":
            await ex.end()
            return
        if "hang" in faults and not await ex.sleep(self.hang_s):
            return
        truncate = "short" in faults or "reset" in faults
        budget = total // 2 if truncate else total
        if total > self.chunk_size:
            ex.watch_disconnect()  # long body: stop producing when nobody is reading
        # With pacing, chunks worth ~10 ms keep the burst above the cap small.
        chunk_size = self.chunk_size
        if ex.rate > 0:
            chunk_size = max(16 * 1024, min(chunk_size, int(ex.rate / 100)))
        for segment in segments:
            if isinstance(segment, bytes):
                pieces: Iterator[bytes | memoryview] = iter((segment,))
            else:
                pieces = iter(iter_content(seed, segment[0], segment[1], chunk_size))
            for piece in pieces:
                if budget <= 0 or ex.disconnected:
                    break
                piece = piece[:budget]
                budget -= len(piece)
                await ex.body(piece)
        if ex.disconnected:
            return
        if "reset" in faults:
            raise OriginFaultReset("fault=reset: dropping the connection mid-body")
        if "short" in faults:
            if announce_length:
                try:
                    await ex.end()
                except RuntimeError:
                    pass  # uvicorn: "Response content shorter than Content-Length"
            return
        await ex.end()

    async def _control(self, ex: _Exchange, req: _Request) -> None:
        json_type = b"application/json"
        if req.path == "/_origin/release" and req.method == "POST":
            self.release(req.query.get("hold", ""))
            await ex.simple(200, _json({"released": req.query.get("hold", "")}), json_type, [])
            return
        if req.path == "/_origin/bump" and req.method == "POST":
            name = req.query.get("name")
            if not name:
                await ex.simple(400, _json({"error": "name= is required"}), json_type, [])
                return
            version = self.bump(name)
            body = {"name": name, "version": version, "etag": etag_for(name, version)}
            await ex.simple(200, _json(body), json_type, [])
        elif req.path == "/_origin/fault" and req.method == "POST":
            name = req.query.get("name")
            if not name:
                await ex.simple(400, _json({"error": "name= is required"}), json_type, [])
                return
            self.set_fault(name, req.query.get("fault", ""))
            await ex.simple(
                200, _json({"name": name, "fault": req.query.get("fault", "")}), json_type, []
            )
        elif req.path == "/_origin/log" and req.method == "GET":
            await ex.simple(200, _json(self.log_entries()), json_type, [])
        elif req.path == "/_origin/log" and req.method == "DELETE":
            cleared = len(self.log)
            self.clear_log()
            await ex.simple(200, _json({"cleared": cleared}), json_type, [])
        elif req.path == "/_origin/stats" and req.method == "GET":
            await ex.simple(200, _json(self.stats()), json_type, [])
        else:
            await ex.simple(404, _json({"error": "unknown control route"}), json_type, [])


def create_origin_app(
    latency_ms: float = 0.0,
    bandwidth_bytes_per_s: float = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **options: Any,
) -> OriginApp:
    """The origin as an ASGI app; ``options`` go to :class:`OriginApp` (hang_s, ...)."""
    return OriginApp(latency_ms, bandwidth_bytes_per_s, chunk_size, **options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.origin", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="first-byte delay")
    parser.add_argument(
        "--bandwidth-mbps",
        type=float,
        default=0.0,
        help="per-response cap in MB/s (10^6 B); 0 = none",
    )
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn  # here, so importing the module for expected_bytes() stays light

    app = create_origin_app(args.latency_ms, args.bandwidth_mbps * 1e6, args.chunk_size)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level=args.log_level,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
