"""The pass-through path: stream a request to the origin and its answer back, both ways.

Used for everything that is not served through slices: other methods, uncacheable
requests, origins without range support. Nothing here holds a whole body.
"""

from __future__ import annotations

import time

import httpx
from starlette.types import Receive, Send

from app.context import RequestContext
from app.edge.asgi_io import (
    ClientGone,
    DisconnectWatch,
    RequestBody,
    send_body,
    send_start,
    send_text,
)
from app.edge.headers import Headers, decode_raw, end_to_end, upstream_request_headers, with_via
from app.httpcache.cache_status import (
    CacheStatus,
    XCache,
    append_cache_status,
    kept_upstream_members,
)
from app.upstream.client import UpstreamClient

# Statuses whose responses never carry a body (RFC 9110 6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})


def origin_request_headers(
    ctx: RequestContext, upstream: UpstreamClient, preserve_host: bool
) -> Headers:
    return upstream_request_headers(
        ctx.headers,
        client_ip=ctx.client_ip,
        scheme=ctx.scheme,
        origin_host=upstream.origin_host,
        preserve_host=preserve_host,
        request_id=ctx.log.request_id,
    )


# The origin's Date is relayed as it is (RFC 9110 6.6.1; a response without one gets ours
# from the access-log middleware). Server names this hop, like nginx's.
REPLACED_BY_THIS_HOP = frozenset({"server"})


# Methods whose answers this cache may serve; others bypass it by method (RFC 9211 2.2).
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


def client_response_headers(
    response: httpx.Response, method: str, detail: str | None = None
) -> Headers:
    """The origin's end-to-end fields, Via, and what this cache did: nothing (a relayed
    answer says so in Cache-Status and X-Cache, as one served from slices does)."""
    headers = end_to_end(decode_raw(response.headers.raw), REPLACED_BY_THIS_HOP)
    status = CacheStatus.bypass(
        detail, method=method not in CACHEABLE_METHODS, fwd_status=response.status_code
    )
    upstream = kept_upstream_members(value for name, value in headers if name == "cache-status")
    headers = [(name, value) for name, value in headers if name != "cache-status"]
    headers.append(("cache-status", append_cache_status(upstream, status.header_value())))
    headers.append(("x-cache", XCache.BYPASS.value))
    return with_via(headers)


async def reply_upstream_error(send: Send, ctx: RequestContext, error: Exception) -> None:
    """502 for an origin we could not reach or that broke the protocol, 504 for a timeout."""
    if isinstance(error, httpx.TimeoutException):
        await send_text(send, 504, f"Gateway Timeout: no answer from the origin ({kind(error)})")
        return
    await send_text(send, 502, f"Bad Gateway: the origin could not be reached ({kind(error)})")


def kind(error: Exception) -> str:
    """A short, stable name for an upstream failure, for replies, logs and metrics labels."""
    names = {
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.ConnectError: "connection refused or failed",
        httpx.RemoteProtocolError: "protocol error",
        httpx.ReadError: "connection reset",
    }
    for cls, name in names.items():
        if isinstance(error, cls):
            return name
    return type(error).__name__


async def pass_through(
    ctx: RequestContext,
    receive: Receive,
    send: Send,
    upstream: UpstreamClient,
    *,
    preserve_host: bool,
    detail: str | None = None,
) -> tuple[int, Headers] | None:
    """Relay one exchange; returns the origin's status and headers, None if it failed.
    ``detail`` says why the cache was bypassed (Cache-Status)."""
    body = RequestBody(receive) if ctx.has_body else None
    headers = origin_request_headers(ctx, upstream, preserve_host)
    started = time.perf_counter()
    try:
        response = await upstream.send(ctx.method, ctx.target, headers, body)
    except ClientGone:
        ctx.log.aborted = "client disconnected during upload"
        return None
    except httpx.TransportError as error:
        # Logged, rate-limited, by the origin transport; the access line has the 502/504.
        ctx.log.upstream_seconds = time.perf_counter() - started
        await reply_upstream_error(send, ctx, error)
        return None
    ctx.log.upstream_seconds = time.perf_counter() - started
    if ctx.log.cache == "-":
        ctx.log.cache = "BYPASS"
    body_done = body is None or body.complete
    answer = response.status_code, decode_raw(response.headers.raw)
    await relay_response(ctx, receive, send, response, request_body_done=body_done, detail=detail)
    return answer


# Bodies up to this size are relayed without a disconnect watcher.
SMALL_BODY_BYTES = 64 * 1024


def _small(response: httpx.Response) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES


async def relay_response(
    ctx: RequestContext,
    receive: Receive,
    send: Send,
    response: httpx.Response,
    *,
    request_body_done: bool = True,
    detail: str | None = None,
) -> None:
    """Stream an origin response to the client; abort the client connection on origin failure.
    ``detail`` says why the cache was bypassed (Cache-Status)."""
    try:
        headers = client_response_headers(response, ctx.method, detail)
        await send_start(send, response.status_code, headers)
        if ctx.method == "HEAD" or response.status_code in NO_BODY_STATUSES:
            await send_body(send, b"", more=False)
            return
        if not request_body_done or _small(response):
            # A small body is done in a write or two, not worth a watcher task. And when
            # the origin answered before reading the whole upload, nobody else may call
            # receive(), so such a response streams without the disconnect watch.
            async for chunk in response.aiter_raw():
                await send_body(send, chunk)
            await send_body(send, b"", more=False)
            return
        async with DisconnectWatch(receive):
            async for chunk in response.aiter_raw():
                await send_body(send, chunk)
            await send_body(send, b"", more=False)
    except httpx.TransportError as error:
        # Never end a broken body cleanly: the connection closes without the final message,
        # so the client sees a truncated transfer. The failure was logged (rate-limited) by
        # the origin transport; the access line carries `aborted`.
        ctx.log.aborted = f"origin failed mid-body: {kind(error)}"
        if ctx.written_out is not None:
            ctx.written_out.end_early()
    finally:
        await response.aclose()
