"""One origin fetch of a run of consecutive slices: the Range request, its checks, retries.

:meth:`SliceFetcher.fetch` fills the run's :class:`SliceFill`\\ s from one Range request,
resuming after a transport error or a short answer with a new request for what is still
missing (exponential backoff with jitter, at most ``max_retries`` times). Each answer is
classified (:mod:`app.engine.classify`) before a byte is used: a changed object raises
:class:`ObjectChanged`, an answer that is not the asked bytes :class:`SliceError`. The
fetch owns nothing itself: the budget grant and the open response are the
:class:`FetchHold`'s, and what happens to a finished slice is the caller's ``keep``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.edge.headers import Headers
from app.engine.budget import FetchHold
from app.engine.classify import Answer, Invalid, Mismatch, Sliceable, WholeBody, classify
from app.engine.fills import SliceFill
from app.engine.lookahead import OriginPace
from app.engine.objectmeta import ObjectMeta
from app.httpcache.storable import forbids_storing
from app.ops.metrics import EngineCounters
from app.upstream.client import UpstreamClient
from app.upstream.direct import reads_into

BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0

# Fields of the client's request a slice request never carries: slices are shared by
# every client, so they are fetched as the identity representation, never conditionally
# on one client's validators.
NOT_IN_SLICE_REQUESTS = frozenset(
    {
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "accept-encoding",
        "content-length",
    }
)


class ObjectChanged(Exception):
    """The origin's object is not the version the cached slices belong to."""


class SliceError(Exception):
    """The origin answered a slice request wrongly; ``retryable`` if trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def error_kind(error: Exception) -> str:
    """Why a slice fetch failed for good (each failed origin request is counted as an
    ``upstream_*`` error by the client already)."""
    if isinstance(error, httpx.TimeoutException):
        return "slice_timeout"
    if isinstance(error, httpx.TransportError):
        return "slice_connection"
    if isinstance(error, SliceError):
        return "slice_invalid"
    return "internal"


def slice_request_headers(
    request_headers: Headers, first: int, last: int, etag: str | None
) -> Headers:
    headers = [(k, v) for k, v in request_headers if k not in NOT_IN_SLICE_REQUESTS]
    headers.append(("range", f"bytes={first}-{last}"))
    headers.append(("accept-encoding", "identity"))
    if etag is not None and not etag.startswith("W/"):
        # A changed object then costs a 412, not a slice of the wrong version.
        headers.append(("if-match", etag))
    return headers


def check_slice_response(response: httpx.Response, first: int, last: int, meta: ObjectMeta) -> int:
    """A slice answer is used only if it is exactly the bytes asked, of the same version.

    Returns how many leading bytes of the answer come before ``first`` (a 200 that
    ignored the Range) and are skipped.
    """
    verdict = classify(Answer.of_response(response), first, last, meta)
    if isinstance(verdict, Sliceable):
        return 0
    if isinstance(verdict, WholeBody):
        return verdict.skip
    if isinstance(verdict, Mismatch):
        raise ObjectChanged(verdict.reason)
    if isinstance(verdict, Invalid):
        raise SliceError(verdict.reason, retryable=verdict.retryable)
    raise SliceError(f"unexpected answer to a slice request: {verdict}", retryable=False)


@dataclass
class SliceFetcher:
    upstream: UpstreamClient
    max_retries: int
    counters: EngineCounters
    # The store's purge epoch now, taken as each origin request goes out.
    store_epoch: Callable[[], int]
    # A complete slice: to the cache (fill, store?, the purge epoch of its request).
    keep: Callable[[SliceFill, bool, int, ObjectMeta], Awaitable[None]]
    # The origin answered a slice's Range with the whole object (the first slice's key).
    ranges_ignored: Callable[[str], None]
    # Told each request's first-byte latency and body throughput (sizes the lookahead).
    pace: OriginPace | None = None
    # The targeted Cache-Control fields this cache obeys (app/httpcache/targeted.py).
    targeted: tuple[str, ...] = ()

    async def fetch(
        self,
        fills: list[SliceFill],
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        hold: FetchHold,
        store: bool,
        epoch: int | None = None,
    ) -> None:
        # The purge epoch of the origin request in hand (``response``), else taken as each
        # request goes out: a purge after it that covers a slice means its bytes are not
        # stored, whenever they arrive.
        if epoch is None:
            epoch = self.store_epoch()
        attempt = 0
        last = fills[-1].last
        pinned = meta.pins_version
        while True:
            # The fill to write next: every one before it is complete. Taken afresh for
            # each attempt, from the fills themselves: an attempt that failed mid-run
            # leaves them as far as it got.
            current = next((i for i, f in enumerate(fills) if not f.done), len(fills))
            if current == len(fills):
                return  # every byte arrived; what failed came after them
            fill = fills[current]
            if pinned:
                first = fill.first + fill.filled  # resume where we stopped
                recheck = 0
            else:
                # Nothing pins the version: the slice is read again from its first byte and
                # the bytes already received must come back identical.
                first = fill.first
                recheck = fill.filled
            try:
                response = hold.response
                skip = 0  # bytes before ``first`` in an answer that ignored the Range
                measured = False  # a request of our own: its latency and rate are the origin's
                if response is None:
                    headers = slice_request_headers(request_headers, first, last, meta.etag)
                    epoch = self.store_epoch()
                    sent = time.monotonic()
                    response = hold.response = await self.upstream.send(
                        "GET", target, headers, direct=True
                    )
                    measured = self.pace is not None
                    if self.pace is not None:
                        self.pace.saw_latency(time.monotonic() - sent)
                    skip = check_slice_response(response, first, last, meta)
                    if store and forbids_storing(response.headers.multi_items(), self.targeted):
                        # The probe's answer allowed storing the object, this one does not
                        # (nginx's slices each obey their own): served, not kept.
                        store = False
                        self.counters.error("slice_store_forbidden")
                    if skip or (response.status_code == 200 and not meta.whole):
                        self.ranges_ignored(fills[0].key)
                body_started = time.monotonic()
                received = 0
                if not skip and not recheck and reads_into(response.stream):
                    received = await self._read_into_fills(
                        response, fills, current, store, epoch, meta, first, last
                    )
                else:
                    received = await self._relay_chunks(
                        response, fills, current, store, epoch, meta, first, last, skip, recheck
                    )
                if measured and self.pace is not None:
                    self.pace.saw_transfer(received, time.monotonic() - body_started)
                if not fills[-1].done:
                    got = sum(fill.filled for fill in fills)
                    total = sum(fill.length for fill in fills)
                    raise SliceError(f"origin sent {got} of {total} bytes", retryable=True)
                return
            except (httpx.TransportError, SliceError) as error:
                retryable = isinstance(error, httpx.TransportError) or error.retryable
                if not retryable or attempt >= self.max_retries:
                    raise
                attempt += 1
                self.counters.retries += 1
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
                await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter
            finally:
                await hold.close()

    async def _relay_chunks(
        self,
        response: httpx.Response,
        fills: list[SliceFill],
        current: int,
        store: bool,
        epoch: int,
        meta: ObjectMeta,
        first: int,
        last: int,
        skip: int,
        recheck: int,
    ) -> int:
        """The answer's body as chunks copied into the fills from ``fills[current]`` on
        (any transport; an answer that ignored the Range, a retry that re-reads bytes
        already received). Returns the bytes received."""
        wanted = last - first + 1  # what this answer may still give us
        received = 0
        async for chunk in response.aiter_raw():
            self.counters.upstream_bytes += len(chunk)
            received += len(chunk)
            view = memoryview(chunk)
            if skip:
                count = min(skip, len(view))
                skip -= count
                view = view[count:]
            if response.status_code == 200 and len(view) > wanted:
                view = view[:wanted]  # a whole body: the bytes after ours are not ours
            wanted -= len(view)
            if recheck:
                fill = fills[current]
                count = min(recheck, len(view))
                offset = fill.filled - recheck
                if memoryview(fill.buffer)[offset : offset + count] != view[:count]:
                    raise ObjectChanged("an unvalidated object changed during a retry")
                recheck -= count
                view = view[count:]
            while view:
                fill = fills[current]
                room = fill.length - fill.filled
                if len(view) > room and current + 1 == len(fills):
                    raise _sent_more(first, last)
                fill.append(view[:room])
                view = view[room:]
                if fill.filled == fill.length:
                    current = await self._completed(fills, current, store, epoch, meta)
            if fills[-1].done and response.status_code == 200:
                break
            if received == len(chunk):
                # A turn for the rest of the loop after the first read: from a
                # fast origin the next bytes are always ready, and the whole run
                # would be taken in before any reader of it (a cold response's
                # first byte) ran. Only then: a turn after every read let the
                # origin connections' buffers fill while fills waited their turn.
                await asyncio.sleep(0)
        return received

    async def _read_into_fills(
        self,
        response: httpx.Response,
        fills: list[SliceFill],
        current: int,
        store: bool,
        epoch: int,
        meta: ObjectMeta,
        first: int,
        last: int,
    ) -> int:
        """The answer's body read straight into the fills' buffers from ``fills[current]``
        on (one kernel copy per byte, app/upstream/direct.py), each complete slice kept as
        it completes. Returns the bytes received."""
        stream: Any = response.stream
        received = 0
        while not fills[-1].done:
            fill = fills[current]
            count = await stream.read_into(fill.room())
            if not count:
                return received  # the body ended short: the caller resumes
            self.counters.upstream_bytes += count
            received += count
            complete = fill.filled + count == fill.length
            if complete and fill is fills[-1] and response.status_code != 200:
                # The body must end here (a 200's rest is not ours, and is not read): an
                # origin fault fails the slice before its readers see its last bytes.
                if await stream.read_into(memoryview(bytearray(1))):
                    raise _sent_more(first, last)
            fill.advance(count)
            if complete:
                current = await self._completed(fills, current, store, epoch, meta)
        return received

    async def _completed(
        self, fills: list[SliceFill], current: int, store: bool, epoch: int, meta: ObjectMeta
    ) -> int:
        """``fills[current]`` is complete: its readers told, the slice kept. Returns the
        fill to write next."""
        fill = fills[current]
        fill.finish()
        await self.keep(fill, store, epoch, meta)
        return min(current + 1, len(fills) - 1)


def _sent_more(first: int, last: int) -> SliceError:
    """An origin fault (a body longer than its Content-Range), not ours: answered and
    counted as an invalid answer, no traceback."""
    return SliceError(f"origin sent more than bytes {first}-{last}", retryable=False)
