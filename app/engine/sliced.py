"""The sliced path of a GET/HEAD: client ranges answered from slices, in order, as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator

import httpx
from starlette.types import Receive, Send

from app.context import RequestContext, SliceStats
from app.edge import ranges
from app.edge.asgi_io import DisconnectWatch, send_body, send_start, send_text
from app.edge.headers import Headers, get_all, shared_fill_headers, with_via
from app.edge.passthrough import (
    kind,
    origin_request_headers,
    pass_through,
    relay_response,
    reply_upstream_error,
)
from app.engine.leasewriter import LEASE_HANDOVER, LeaseWriter
from app.engine.objectmeta import NOT_REPLAYED, ObjectMeta
from app.engine.objects import Forward, ObjectDirectory, ObjectRequest, Opened, Refuse
from app.engine.slicer import ObjectChanged, SliceEngine, SliceError
from app.httpcache.cache_status import CacheStatus, XCache, append_cache_status
from app.httpcache.conditional import evaluate_client_conditionals
from app.httpcache.freshness import current_age
from cache.protocol import SliceData
from cache.ratelimit import RateLimitedLog

log = logging.getLogger("slicecache.sliced")

# RFC 9110 15.4.5: a 304 carries the validators and caching fields, not content metadata.
NOT_IN_304 = frozenset({"content-type", "content-encoding", "content-language", "accept-ranges"})


class ResponseAborted(Exception):
    """Bytes were already sent; the only honest end is a reset connection."""


def x_cache(status: CacheStatus, hit: int, total: int) -> str:
    """HIT/PARTIAL/MISS by slices for fresh or fetched objects; STALE, REVALIDATED, BYPASS."""
    summary = status.x_cache()
    if summary not in (XCache.HIT, XCache.MISS):
        return str(summary)
    if total == 0 or hit == total:
        return "HIT" if status.hit else str(summary)
    return "MISS" if hit == 0 else "PARTIAL"


def replay_headers(meta: ObjectMeta, now: float) -> Headers:
    """The stored response as replayed, parsed from scratch: the reference that
    :func:`response_headers` (what a hit sends, from the prepared block) must equal."""
    # Stored headers were made end-to-end when stored: only this hop's own fields go.
    headers = with_via([(k, v) for k, v in meta.headers if k not in NOT_REPLAYED])
    age = current_age(meta.headers, meta.request_time, meta.response_time, now)
    headers.append(("age", str(age)))
    headers.append(("accept-ranges", "bytes"))
    return headers


def response_headers(meta: ObjectMeta, status: CacheStatus, now: float) -> Headers:
    """The replayed fields, Age, Accept-Ranges and Cache-Status of a response served from
    ``meta``: the stored part comes prepared (:meth:`ObjectMeta.replay`), once per stored
    response; only what changes per response is computed here."""
    block = meta.replay()
    headers = list(block.fields)
    headers.append(("age", str(block.age.at(now))))
    headers.append(("accept-ranges", "bytes"))
    headers.append(
        ("cache-status", append_cache_status(block.upstream_cache_status, status.header_value()))
    )
    return headers


async def serve_sliced(
    ctx: RequestContext,
    receive: Receive,
    send: Send,
    directory: ObjectDirectory,
    object_key: str,
    *,
    preserve_host: bool,
) -> None:
    engine = directory.engine
    origin_headers = origin_request_headers(ctx, engine.upstream, preserve_host)
    if not preserve_host:
        # What fills the shared cache must not depend on what is not in the cache key: the
        # client's Host would reach stored answers (absolute URLs built from it).
        origin_headers = [(k, v) for k, v in origin_headers if k != "x-forwarded-host"]
    # One restart is allowed: the object changed before we sent a byte of it.
    for attempt in range(2):
        try:
            opened = await directory.open(
                ObjectRequest(object_key, ctx.target, ctx.headers, origin_headers)
            )
        except (httpx.TransportError, SliceError) as error:
            ctx.log.cache = "MISS"
            if isinstance(error, httpx.TransportError):
                await reply_upstream_error(send, ctx, error)
            else:
                await send_text(send, 502, f"Bad Gateway: {error}")
            return
        if isinstance(opened, Refuse):
            ctx.log.cache = "MISS"
            await send_text(send, opened.status, f"Gateway Timeout: {opened.reason}")
            return
        if isinstance(opened, Forward):
            ctx.log.cache = "BYPASS"
            if opened.response is not None:
                await relay_response(ctx, receive, send, opened.response, detail=opened.reason)
            else:
                await pass_through(
                    ctx,
                    receive,
                    send,
                    engine.upstream,
                    preserve_host=preserve_host,
                    detail=opened.reason,
                )
            return
        try:
            await _answer(ctx, receive, send, engine, opened, origin_headers)
            return
        except ObjectChanged:
            if attempt == 0:
                log.info("object changed before the response started; restarting")
                continue
            await send_text(send, 502, "Bad Gateway: the origin object keeps changing")
            return
        except ResponseAborted:
            # Counted and logged where it was cut (the access line's `aborted`).
            if ctx.written_out is not None:
                ctx.written_out.end_early()
            return
        finally:
            if opened.after is not None:
                _run_after_response(opened.after)


# Work left for when a response ends, kept referenced until it is done: run as its own
# task, so that a client that disconnects (a cancelled response) cannot cut it short.
_AFTER_RESPONSE: set[asyncio.Task[object]] = set()


def _run_after_response(work: Callable[[], Awaitable[object]]) -> None:
    async def run() -> object:
        return await work()

    task = asyncio.get_running_loop().create_task(run())
    _AFTER_RESPONSE.add(task)
    task.add_done_callback(_after_response_done)


def _after_response_done(task: asyncio.Task[object]) -> None:
    _AFTER_RESPONSE.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("work after a response failed: %r", task.exception())


async def _answer(
    ctx: RequestContext,
    receive: Receive,
    send: Send,
    engine: SliceEngine,
    opened: Opened,
    origin_headers: Headers,
) -> None:
    meta, entry_key = opened.meta, opened.entry_key
    size = meta.size
    if opened.shareable:
        origin_headers = shared_fill_headers(origin_headers, meta.vary)
    at = opened.decided_at if opened.decided_at is not None else time.time()
    headers = response_headers(meta, opened.status, at)
    headers.extend(opened.cookies)  # the fetching request's own Set-Cookie, never stored

    precondition = evaluate_client_conditionals(
        ctx.method,
        ctx.headers,
        meta.etag,
        meta.last_modified,
        status=meta.status,
        date=meta.header("date"),
        received=meta.response_time,
    )
    if precondition == 304:
        ctx.log.cache = str(opened.status.x_cache())
        not_modified = [(k, v) for k, v in headers if k not in NOT_IN_304]
        await send_start(send, 304, not_modified)
        await send_body(send, b"", more=False)
        return
    if precondition == 412:
        await send_text(send, 412, "Precondition Failed")
        return

    # Range is no list: two Range fields make it invalid, and it is ignored (RFC 9110 5.3,
    # 14.2; the fast path leaves such a request to this one).
    range_fields = get_all(ctx.headers, "range") if meta.status == 200 else []
    range_header = range_fields[0] if len(range_fields) == 1 else None
    if range_header is not None and not ranges.if_range_allows(
        ctx.header("if-range"), meta.etag, meta.last_modified, meta.header("date")
    ):
        range_header = None
    decision = ranges.parse_range_header(range_header, size)

    if decision.outcome is ranges.RangeOutcome.UNSATISFIABLE:
        ctx.log.cache = "HIT"
        await send_text(
            send,
            416,
            "Range Not Satisfiable",
            [("content-range", ranges.unsatisfied_content_range(size))],
        )
        return

    if decision.outcome is ranges.RangeOutcome.PARTIAL:
        spans = [(r.first, r.last) for r in decision.ranges]
        status = 206
        headers = [(k, v) for k, v in headers if k != "content-range"]
        if len(decision.ranges) == 1:
            only = decision.ranges[0]
            headers.append(("content-range", ranges.content_range(only, size)))
            headers.append(("content-length", str(only.length)))
            boundary = None
        else:
            boundary = ranges.multipart_boundary()
            content_type = meta.header("content-type")
            headers = [(k, v) for k, v in headers if k != "content-type"]
            headers.append(("content-type", ranges.multipart_content_type(boundary)))
            length = ranges.multipart_length(decision.ranges, size, content_type, boundary)
            headers.append(("content-length", str(length)))
    else:
        spans = [(0, size - 1)] if size else []
        status = meta.status
        boundary = None
        if status != 204:  # RFC 9110 8.6: a 204 has no Content-Length
            headers.append(("content-length", str(size)))

    total_slices = sum(
        len(range(first // engine.slice_size, last // engine.slice_size + 1))
        for first, last in spans
    )
    cached = sum(engine.cached_slices(entry_key, meta, first, last) for first, last in spans)
    if opened.probed and spans and spans[0][0] < engine.slice_size:
        cached = max(0, cached - 1)  # slice 0 came with this request's own probe
    summary = x_cache(opened.status, cached, total_slices)
    headers.append(("x-cache", summary))
    headers.append(("x-cache-slices", f"hit={cached}, miss={total_slices - cached}"))
    ctx.log.cache = summary

    if ctx.method == "HEAD" or not spans:
        await send_start(send, status, headers)
        await send_body(send, b"", more=False)
        return

    stats = ctx.log.slices = SliceStats()
    if opened.probed and opened.first_fill is not None:
        # Slice 0 came from the origin with this request's own probe: a miss like any
        # slice the engine fetches (the engine reads it from the fill without a claim).
        stats.miss += 1
        engine.counters.slices["miss"] += 1
    if boundary is None:
        pieces = engine.stream(
            entry_key,
            ctx.target,
            meta,
            spans[0][0],
            spans[0][1],
            origin_headers,
            stats,
            opened.first_fill,
            opened.stored,
        )
    else:
        pieces = _multipart(
            engine, entry_key, ctx, meta, decision.ranges, boundary, stats, opened, origin_headers
        )
    # One stored slice is one piece, sent at once: nothing to cancel on a disconnect, so
    # no watcher task (its creation and cancellation cost a hit more than the send).
    watch = not (total_slices == 1 and cached == 1 and opened.first_fill is None)
    # The first bytes are slice 0's, whose answer the probe checked: the head goes out
    # as the origin's arrives, as nginx's does (the price: see _send_stream's head_first).
    head_first = opened.first_fill is not None and spans[0][0] < engine.slice_size
    await _send_stream(
        ctx,
        receive,
        send,
        status,
        headers,
        pieces,
        watch=watch,
        head_first=head_first,
        warnings=engine.warnings,
    )


async def _multipart(
    engine: SliceEngine,
    entry_key: str,
    ctx: RequestContext,
    meta: ObjectMeta,
    parts: tuple[ranges.ByteRange, ...],
    boundary: str,
    stats: SliceStats,
    opened: Opened,
    origin_headers: Headers,
) -> AsyncGenerator[SliceData, None]:
    content_type = meta.header("content-type")
    for part in parts:
        yield ranges.multipart_part_header(part, meta.size, content_type, boundary)
        stream = engine.stream(
            entry_key,
            ctx.target,
            meta,
            part.first,
            part.last,
            origin_headers,
            stats,
            opened.first_fill,
            opened.stored,
        )
        async with contextlib.aclosing(stream):
            async for piece in stream:
                yield piece
    yield ranges.multipart_trailer(boundary)


async def _send_stream(
    ctx: RequestContext,
    receive: Receive,
    send: Send,
    status: int,
    headers: Headers,
    pieces: AsyncGenerator[SliceData, None],
    *,
    watch: bool = True,
    head_first: bool = False,
    warnings: RateLimitedLog,
) -> None:
    """Headers go out with the first bytes, so a change found before then can restart.

    ``watch``: cancel the response when the client disconnects (see DisconnectWatch).
    ``head_first``: the headers go out at once; a failure before the first bytes (a
    reset, a stall, an object change found by a retry) then cuts the response short,
    detectably, instead of answering 502/504 or restarting it (helper-40).
    ``warnings``: where a failed slice is logged (once per kind per interval).
    """
    started = False
    with _lease_writer(send, ctx) as writer:
        async with contextlib.aclosing(pieces):
            try:
                async with DisconnectWatch(receive) if watch else contextlib.nullcontext():
                    if head_first:
                        await send_start(send, status, headers)
                        started = True
                    async for piece in pieces:
                        if not started:
                            await send_start(send, status, headers)
                            started = True
                        await writer.write(piece)
                    if not started:
                        await send_start(send, status, headers)
                    await writer.finish()
                    await send_body(send, b"", more=False)
            except ObjectChanged:
                if not started:
                    raise
                ctx.log.aborted = "origin object changed mid-response"
                raise ResponseAborted() from None
            except Exception as error:
                reason = kind(error) if isinstance(error, httpx.TransportError) else str(error)
                expected = isinstance(error, httpx.TransportError | SliceError)
                # A transport error was already logged, rate-limited, with the origin, request,
                # exception class and retry (app/upstream/transport.py); the access line carries
                # `aborted`. An invalid answer (an origin 5xx, a wrong Content-Range) repeats for
                # every reader of the object: once per interval; a bug, with its traceback.
                if not isinstance(error, httpx.TransportError):
                    if expected:
                        warnings.warning("slice_invalid", "slice fetch failed", error=reason)
                    else:
                        warnings.exception("slice_fetch_bug", "slice fetch failed", error=reason)
                if not started:
                    # Nothing of what was found in the cache went out: the answer is the
                    # origin's failure, logged and counted as every other one (not a HIT).
                    ctx.log.cache = "MISS"
                    if isinstance(error, httpx.TimeoutException):
                        await send_text(send, 504, f"Gateway Timeout: {reason}")
                    else:
                        await send_text(send, 502, f"Bad Gateway: {reason}")
                    return
                ctx.log.aborted = f"slice fetch failed mid-response: {reason}"
                raise ResponseAborted() from None


@contextlib.contextmanager
def _lease_writer(send: Send, ctx: RequestContext) -> Iterator[LeaseWriter]:
    """Owns the L2 leases of the slices written until the transport is done with them."""
    writer = LeaseWriter(send, ctx.written_out)
    handover = LEASE_HANDOVER.set(writer)
    try:
        yield writer
    finally:
        LEASE_HANDOVER.reset(handover)
        writer.close()
