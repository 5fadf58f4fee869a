"""The origin client: httpx's request/response API over an aiohttp connection pool.

Why not httpx's own transport: on this 2-core machine httpcore spent ~2.6 ms of CPU per
small proxied request at 32 concurrent connections (pool scans, per-lock imports), against
~0.2 ms for aiohttp. Why not the ``httpx-aiohttp`` package's transport: it maps a refused
connection to ``ConnectTimeout`` (a 504 where a 502 is right), reads in 16 KiB pieces, and
lets aiohttp add ``User-Agent``/``Accept-Encoding`` headers a proxy must not invent. This
module is that transport done for a proxy, plus :class:`UpstreamClient`, which builds the
requests, applies the timeouts and never keeps cookies (httpx's ``AsyncClient`` would
collect every ``Set-Cookie`` of every origin response into one shared jar).

Tests and callers that want httpx's own stack (or respx) pass any
``httpx.AsyncBaseTransport`` to :class:`UpstreamClient`.

One module (~460 lines) on purpose: the aiohttp transport under httpx and the client
that retries over it share the error mapping and the body wrappers; split, those private
classes would become an interface of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import yarl
from cachetools import LRUCache

from app.edge.asgi_io import ClientGone
from app.edge.interim import interim_sink
from app.ops.metrics import EngineCounters
from app.upstream.direct import MAX_INTERIM, DirectTransport, SliceRouting, reads_into
from app.upstream.framing import LengthTrustingHandler
from app.upstream.wire import (
    DIRECT,
    RAW_TARGET,
    control_character_in,
    target_of,
    transfer_coding_refused,
    transfer_codings,
)
from cache.ratelimit import RateLimitedLog

# Big reads mean fewer Python-level chunks per GiB relayed; aiohttp hands out whatever the
# socket had, up to this much.
READ_BUFFER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float
    read: float
    total: float | None  # whole exchange, body included; None = no limit


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Translate aiohttp's exceptions to httpx's, most specific first."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.TimeoutException(str(exc) or "timeout", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc) or "connect error", request=request) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "truncated body", request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise httpx.ReadError(str(exc) or "connection lost", request=request) from exc
    except aiohttp.ClientResponseError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        if _caused_by(exc, ClientGone):
            # The request body's source, our client, went away while it was being sent:
            # not the origin's failure (no origin error counted, no origin warning).
            raise ClientGone() from exc
        raise httpx.TransportError(str(exc) or type(exc).__name__) from exc
    except (ValueError, TypeError, UnicodeError) as exc:
        # aiohttp refusing what it was asked to send (a header it will not serialize, a
        # value it cannot parse in the answer): the exchange failed, a 502, not a bug's 500.
        raise httpx.LocalProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is among the causes of ``exc`` (aiohttp wraps what a request body
    raised while it was sent)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _AiohttpBody(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _httpx_errors(self._request):
            while True:
                # One buffered socket read at a time, as received: readany() joins every
                # chunk buffered so far, a copy of each byte of a miss before the slice
                # buffer copies it once more. (b"", True) marks a chunked-encoding chunk
                # boundary, not the end.
                chunk, _ = await content.readchunk()
                if chunk:
                    yield chunk
                elif content.at_eof():
                    return

    async def aclose(self) -> None:
        # release() keeps a fully read connection in the pool; close() drops one that was
        # abandoned mid-body, so its unread bytes never reach the next request.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class _InterimNotingResponse(aiohttp.ClientResponse):
    """aiohttp reads and drops 1xx responses inside ``start``; this hands each one to the
    request's interim sink (app.edge.interim) on the way, so a 103 reaches the client.

    As on the slice client (app/upstream/direct.py): the final head and every interim one
    before it share one READ_TIMEOUT (aiohttp's restarts on each byte: an origin dripping
    1xx answers held a request for as long as it liked), at most ``MAX_INTERIM`` of them,
    and an origin that closes after some of its answer is a 502, not retried (helper-36)."""

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        sink = interim_sink.get()
        protocol = connection.protocol
        if protocol is None:
            return await super().start(connection)
        read = protocol.read
        interim = 0

        async def read_noting_interim() -> Any:
            nonlocal interim
            message, payload = await read()
            if 100 <= message.code < 200 and message.code != 101:
                interim += 1
                if interim > MAX_INTERIM:
                    raise self._failed(f"more than {MAX_INTERIM} interim answers")
                # aiohttp drops its read timer once a message is parsed: re-armed, the
                # wait for the final response is bounded by READ_TIMEOUT too (an origin
                # sending a 100 and then nothing held the request for good).
                protocol.start_timeout()
                if sink is not None:
                    try:
                        await sink(message.code, list(message.raw_headers))
                    except Exception:  # the client went away: the final response matters
                        pass
            return message, payload

        protocol.read = read_noting_interim  # type: ignore[method-assign]
        head_timeout = asyncio.timeout(protocol.read_timeout)
        try:
            async with head_timeout:
                return await super().start(connection)
        except TimeoutError as exc:
            if head_timeout.expired():
                raise aiohttp.SocketTimeoutError("no final response head in time") from exc
            raise
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if getattr(protocol, "answered", False):
                raise self._failed("origin closed the connection in its answer") from exc
            raise
        finally:
            del protocol.read

    def _failed(self, reason: str) -> aiohttp.ClientResponseError:
        """A failed answer (a 502), which neither aiohttp nor UpstreamClient retries."""
        return aiohttp.ClientResponseError(self.request_info, (), message=reason)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session; created inside a running event loop."""

    def __init__(
        self,
        *,
        pool_size: int,
        keepalive_seconds: float = 3.0,
        dropped: Callable[[str, str], None] | None = None,
    ) -> None:
        self._connector = aiohttp.TCPConnector(
            limit=pool_size, limit_per_host=0, keepalive_timeout=keepalive_seconds
        )
        # Each connection's protocol: aiohttp's, cut at the announced Content-Length
        # (app/upstream/framing.py; ``dropped`` hears of each cut). aiohttp has no public
        # hook for it.
        self._connector._factory = functools.partial(  # type: ignore[assignment]
            LengthTrustingHandler, loop=asyncio.get_running_loop(), dropped=dropped
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            # One jar for every client would replay one client's cookies to another.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # A proxy forwards the client's headers, it does not invent its own.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            read_bufsize=READ_BUFFER_BYTES,
            max_line_size=16 * 1024,
            max_field_size=16 * 1024,
            response_class=_InterimNotingResponse,
        )
        # aiohttp retries an idempotent request once on its own when the connection fails;
        # UpstreamClient retries once (README): two layers made four attempts.
        self._session._retry_connection = False
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._pool_size = pool_size
        self._keepalive_seconds = keepalive_seconds
        self._bytes_pool: httpx.AsyncHTTPTransport | None = None
        self._urls: LRUCache[str, yarl.URL] = LRUCache(maxsize=4096)

    def _yarl_url(self, request: httpx.Request) -> yarl.URL:
        # httpx.URL resolves dot segments ("/a/../b" -> "/b"); the target the client sent,
        # which routing and the cache key used, is the one the origin must get.
        url = request.url
        text = f"{url.scheme}://{url.netloc.decode('ascii')}{target_of(request)}"
        parsed = self._urls.get(text)
        if parsed is None:
            # encoded=True: the target goes out byte for byte as the client sent it.
            parsed = yarl.URL(text, encoded=True)
            self._urls[text] = parsed
        return parsed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        limits = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        client_timeout = self._timeouts.get(limits)
        if client_timeout is None:
            client_timeout = aiohttp.ClientTimeout(
                total=None, connect=limits[2], sock_connect=limits[0], sock_read=limits[1]
            )
            self._timeouts[limits] = client_timeout
        body: bytes | httpx.AsyncByteStream | None
        try:
            body = request.content or None
        except httpx.RequestNotRead:
            body = request.stream  # type: ignore[assignment]
        try:
            # aiohttp writes header strings as UTF-8: decoding the client's bytes as UTF-8
            # sends them back byte for byte.
            headers = [(k.decode("utf-8"), v.decode("utf-8")) for k, v in request.headers.raw]
        except UnicodeDecodeError:
            # Other obs-text (RFC 9110 5.5) cannot pass through aiohttp unchanged; httpx's
            # own transport sends bytes as they are. Rare, so it is opened on first need.
            # The target goes as httpcore's "target" extension: a slice request's URL names
            # only the origin, and httpx.URL would have resolved dot segments.
            request.extensions["target"] = target_of(request).encode("latin-1")
            return await self._bytes_transport().handle_async_request(request)
        with _httpx_errors(request):
            response = await self._session.request(
                request.method,
                self._yarl_url(request),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
                timeout=client_timeout,
            )
        if response.status == 101:
            # The proxy never forwards Upgrade, so this switch was not asked for; relayed,
            # it would leave the client on a protocol nobody speaks: a bad gateway answer.
            response.close()
            raise httpx.RemoteProtocolError("origin switched protocols unasked", request=request)
        if control_character_in(response.raw_headers):
            # RFC 9110 5.5: no control character but HTAB in a field value. aiohttp's
            # parser lets them through; uvicorn refuses to write them (a traceback and no
            # answer at all), and a cache must not store them: a bad gateway answer.
            response.close()
            raise httpx.RemoteProtocolError(
                "origin sent a control character in a field", request=request
            )
        if transfer_coding_refused(transfer_codings(response.raw_headers)):
            response.close()
            raise httpx.RemoteProtocolError(
                "origin sent chunked with another transfer coding", request=request
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpBody(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": b""},
        )

    def _bytes_transport(self) -> httpx.AsyncHTTPTransport:
        if self._bytes_pool is None:
            self._bytes_pool = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=self._pool_size,
                    keepalive_expiry=self._keepalive_seconds,
                ),
            )
        return self._bytes_pool

    async def aclose(self) -> None:
        await self._session.close()
        if self._bytes_pool is not None:
            await self._bytes_pool.aclose()


class UpstreamClient:
    """Sends requests to the one origin and streams the answers back."""

    def __init__(
        self,
        base_url: str,
        timeouts: UpstreamTimeouts,
        transport: httpx.AsyncBaseTransport,
        counters: EngineCounters | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Every origin request passes here (pass-through, probes, slices): counted once.
        self.counters = counters or EngineCounters()
        # A slice request's URL: the origin alone, its target in RAW_TARGET (target_of).
        # A cold miss's target is new each time: parsing it into an httpx.URL took 100
        # of the ~400 Python calls between the request's arrival and its origin request.
        self.origin_url = httpx.URL(self.base_url)
        self.origin_host = self.origin_url.netloc.decode("ascii")
        self.timeouts = timeouts
        self._transport = transport
        self._urls: LRUCache[str, httpx.URL] = LRUCache(maxsize=4096)
        self._timeout_ext = {
            "connect": timeouts.connect,
            "read": timeouts.read,
            "write": timeouts.read,
            # Waiting for a free pooled connection is bounded too (a full pool is not a hang).
            "pool": timeouts.connect + timeouts.read,
        }

    def url_for(self, raw_path: str) -> httpx.URL:
        """The origin URL of a request target (path plus query, as the client sent it).

        Parsing a URL is a tenth of the CPU of a small proxied request, and a cache sees
        the same targets again and again, so parsed URLs are kept in a small LRU.
        """
        url = self._urls.get(raw_path)
        if url is None:
            url = httpx.URL(self.base_url + raw_path)
            self._urls[raw_path] = url
        return url

    async def send(
        self,
        method: str,
        raw_path: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None,
        *,
        direct: bool = False,
    ) -> httpx.Response:
        """Send one request; the response body is not read yet (``aiter_raw``/``aclose``).

        ``body`` is iterated afresh by a retry, which continues where the last pull
        stopped (``RequestBody`` does). ``direct``: a slice request, for the client whose
        bodies can be read into the caller's buffer (app/upstream/direct.py) when the
        transport has it. Raises httpx.TransportError subclasses: ConnectError,
        ConnectTimeout, ReadTimeout...
        """
        self.counters.upstream_requests += 1
        try:
            response = await self._send_retrying(method, raw_path, headers, body, direct)
            if not 100 <= response.status_code <= 599:
                # RFC 9110 15: a status is 100-599; anything else (999) is a broken origin,
                # and uvicorn has no status line for it.
                await response.aclose()
                raise httpx.RemoteProtocolError(
                    f"origin status {response.status_code} outside 100-599",
                    request=response.request,
                )
            return response
        except httpx.TimeoutException:
            self.counters.error("upstream_timeout")
            raise
        except httpx.TransportError:
            self.counters.error("upstream_connection")
            raise

    async def _send_retrying(
        self,
        method: str,
        raw_path: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
        direct: bool,
    ) -> httpx.Response:
        """One retry, on a new connection, of an idempotent request whose connection failed
        before any response byte: typically a pooled connection the origin closed while
        idle, just as it was reused. RFC 9110 9.2.2 allows it for idempotent methods; the
        body is replayed from what was kept of it (at most ``REPLAY_BYTES``)."""
        replayable = _ReplayableBody(body) if body is not None else None
        try:
            return await self._send(method, raw_path, headers, replayable, direct)
        except (httpx.ReadError, httpx.WriteError):
            if method not in IDEMPOTENT_METHODS or (replayable and not replayable.replayable):
                raise
        return await self._send(method, raw_path, headers, replayable, direct)

    async def _send(
        self,
        method: str,
        raw_path: str,
        headers: list[tuple[str, str]],
        body: _ReplayableBody | None,
        direct: bool,
    ) -> httpx.Response:
        request = httpx.Request(
            method,
            self.origin_url if direct else self.url_for(raw_path),
            # As bytes: the values are the client's latin-1-decoded octets (httpx would
            # encode str values as ASCII and fail on obs-text).
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            stream=_BodyAttempt(body) if body is not None else None,
            extensions={"timeout": self._timeout_ext, RAW_TARGET: raw_path, DIRECT: direct},
        )
        if body is None:
            request.read()
        if self.timeouts.total is None:
            return await self._transport.handle_async_request(request)
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._transport.handle_async_request(request)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("total timeout", request=request) from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _DeadlineBody(response.stream, deadline, request)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


# RFC 9110 9.2.2.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Request body bytes kept for a retry; a longer body that has started is not retried.
REPLAY_BYTES = 256 * 1024


class _ReplayableBody:
    """A streamed request body, its first ``REPLAY_BYTES`` kept so a retry can resend them."""

    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self._source = source
        self._iterator: AsyncIterator[bytes] | None = None
        self.kept: list[bytes] = []
        self._kept_bytes = 0
        self.replayable = True
        self.done = False

    async def pull(self) -> bytes | None:
        """The next chunk from the source (kept while replayable); None at its end."""
        if self._iterator is None:
            self._iterator = self._source.__aiter__()
        try:
            chunk = await anext(self._iterator)
        except StopAsyncIteration:
            self.done = True
            return None
        except asyncio.CancelledError:
            # A cancelled generator is finished for good; the source's next iteration
            # continues where this one stopped (nothing was taken from it).
            self._iterator = None
            raise
        if self.replayable:
            self._kept_bytes += len(chunk)
            if self._kept_bytes <= REPLAY_BYTES:
                self.kept.append(chunk)
            else:
                self.replayable = False
                self.kept = []
        return chunk


class _BodyAttempt(httpx.AsyncByteStream):
    """One sending of a :class:`_ReplayableBody`: the kept chunks, then the rest."""

    def __init__(self, body: _ReplayableBody) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self._body
        sent = 0
        while True:
            if body.replayable and sent < len(body.kept):
                sent += 1
                yield body.kept[sent - 1]
                continue
            if body.done:
                return
            chunk = await body.pull()
            if chunk is None:
                return
            sent += 1
            yield chunk


class _DeadlineBody(httpx.AsyncByteStream):
    """A response body that fails with ReadTimeout once the exchange's total time is up."""

    def __init__(self, inner: httpx.AsyncByteStream, deadline: float, request: httpx.Request):
        self._inner = inner
        self._deadline = deadline
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise httpx.ReadTimeout("total timeout", request=self._request) from exc
            yield chunk

    def reads_into(self) -> bool:
        return reads_into(self._inner)

    async def read_into(self, view: memoryview) -> int:
        try:
            async with asyncio.timeout_at(self._deadline):
                count: int = await self._inner.read_into(view)  # type: ignore[attr-defined]
                return count
        except TimeoutError as exc:
            raise httpx.ReadTimeout("total timeout", request=self._request) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def default_transport(
    pool_size: int,
    keepalive_seconds: float = 3.0,
    warnings: RateLimitedLog | None = None,
    count: Callable[[str], None] | None = None,
) -> httpx.AsyncBaseTransport:
    """Slice requests on the direct client, everything else on aiohttp's (each a pool of
    ``pool_size`` connections). ``warnings`` and ``count``: where both clients say and
    count (by kind) the origin bytes they drop."""
    direct = DirectTransport(
        pool_size=pool_size, keepalive_seconds=keepalive_seconds, warnings=warnings, count=count
    )
    return SliceRouting(
        direct,
        AiohttpTransport(
            pool_size=pool_size, keepalive_seconds=keepalive_seconds, dropped=direct.dropped
        ),
    )
