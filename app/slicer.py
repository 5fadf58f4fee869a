"""The slicing engine: objects cut into aligned slices, fetched ahead, coalesced, checked.

Flow (DESIGN.md steps 3-7): :meth:`SliceEngine.open` finds an object's metadata, or learns
it from one ``Range: bytes=0-(S-1)`` request whose 206 answer gives the total size and the
validators and is itself slice 0 (no HEAD round trip; concurrent openers share that probe).
:meth:`SliceEngine.stream` then yields the bytes of a range in order. Each slice comes
from the store or from an in-flight fill; missing slices are fetched up to
``max_concurrent_subrequests`` ahead of the one being sent, under a global byte budget,
and every origin answer is checked (206, exact Content-Range, length, validator) before a
byte of it is used. A validator mismatch raises :class:`ObjectChanged` and drops the
object's cached slices: two versions are never spliced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import httpx
from cachetools import LRUCache

from app.fills import ByteBudget, SliceClaim, SliceFill
from app.headers import Headers, decode_raw, end_to_end, get
from app.httpcache.freshness import freshness_lifetime
from app.objectmeta import NOT_STORED, ObjectMeta
from app.slices import clip, slice_bounds, slices_for_range
from app.upstream import UpstreamClient
from cache import keys
from cache.protocol import SliceData, Store

log = logging.getLogger("slicecache.slicer")

CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)

# How long an origin that ignored Range (or gave no validator) is not probed again.
UNSLICEABLE_MEMORY_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0


class ObjectChanged(Exception):
    """The origin's object is not the version the cached slices belong to."""


class SliceError(Exception):
    """The origin answered a slice request wrongly; ``retryable`` if trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(slots=True)
class SliceStats:
    """How one response's slices were served, for X-Cache and metrics."""

    hit: int = 0
    miss: int = 0
    coalesced: int = 0


@dataclass(slots=True)
class Unsliceable:
    """The object must be relayed as-is. ``response`` is an origin answer to relay, if any."""

    reason: str
    response: httpx.Response | None = None


@dataclass(slots=True)
class _Probe:
    future: asyncio.Future[ObjectMeta | Unsliceable]
    relay: httpx.Response | None = None  # handed to the request that started the probe


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if value is None:
        return None
    match = CONTENT_RANGE.match(value)
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


@dataclass
class SliceEngine:
    upstream: UpstreamClient
    store: Store | None
    slice_size: int
    lookahead: int
    max_retries: int
    default_ttl: int
    budget: ByteBudget
    _fills: dict[str, SliceFill] = field(default_factory=dict)
    _probes: dict[str, _Probe] = field(default_factory=dict)
    # Parsed metadata of recently used objects (the store holds the authoritative copy).
    _metas: LRUCache[str, ObjectMeta] = field(default_factory=lambda: LRUCache(maxsize=4096))
    _unsliceable: LRUCache[str, float] = field(default_factory=lambda: LRUCache(maxsize=4096))
    origin_requests: int = 0
    retries: int = 0

    # --- object metadata ---------------------------------------------------------------

    async def open(
        self, object_key: str, target: str, request_headers: Headers
    ) -> tuple[ObjectMeta | Unsliceable, bool]:
        """The object's metadata, from cache or a (shared) probe of slice 0.

        The flag is True when this call's own probe fetched the metadata (and slice 0).
        """
        until = self._unsliceable.get(object_key)
        if until is not None:
            if until > time.time():
                return Unsliceable("origin does not serve ranges of this object"), False
            del self._unsliceable[object_key]
        meta = await self.cached_meta(object_key)
        if meta is not None and meta.expires_at > time.time():
            return meta, False
        probe = self._probes.get(object_key)
        if probe is not None:
            result = await asyncio.shield(probe.future)
            if isinstance(result, ObjectMeta):
                return result, False
            return Unsliceable(result.reason), False
        probe = _Probe(asyncio.get_running_loop().create_future())
        self._probes[object_key] = probe
        task = asyncio.get_running_loop().create_task(
            self._probe(probe, object_key, target, request_headers)
        )
        task.add_done_callback(lambda _: self._probes.pop(object_key, None))
        try:
            result = await asyncio.shield(probe.future)
        except asyncio.CancelledError:
            # Our client left; an answer meant for it to relay must not hold a connection.
            task.add_done_callback(lambda _: self._drop_relay(probe))
            raise
        if isinstance(result, Unsliceable) and probe.relay is not None:
            relay, probe.relay = probe.relay, None
            return Unsliceable(result.reason, relay), True
        return result, True

    def _drop_relay(self, probe: _Probe) -> None:
        if probe.relay is not None:
            relay, probe.relay = probe.relay, None
            asyncio.get_running_loop().create_task(relay.aclose())

    async def cached_meta(self, object_key: str) -> ObjectMeta | None:
        meta = self._metas.get(object_key)
        if meta is not None:
            return meta
        if self.store is None:
            return None
        blob = await self.store.get_meta(object_key)
        if blob is None:
            return None
        try:
            meta = ObjectMeta.from_bytes(blob)
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable metadata dropped", extra={"fields": {"key": object_key}})
            await self.store.delete(object_key)
            return None
        self._metas[object_key] = meta
        return meta

    async def forget(self, object_key: str) -> None:
        """Drop everything cached for the object, in every tier (after a change or a purge)."""
        self._metas.pop(object_key, None)
        if self.store is not None:
            await self.store.delete(object_key)

    async def _probe(
        self, probe: _Probe, object_key: str, target: str, request_headers: Headers
    ) -> None:
        try:
            result = await self._probe_origin(probe, object_key, target, request_headers)
        except BaseException as error:
            if not probe.future.done():
                probe.future.set_exception(error)
                probe.future.exception()  # retrieved: waiters re-raise it themselves
            if not isinstance(error, Exception):
                raise
            return
        if not probe.future.done():
            probe.future.set_result(result)

    async def _probe_origin(
        self, probe: _Probe, object_key: str, target: str, request_headers: Headers
    ) -> ObjectMeta | Unsliceable:
        last = self.slice_size - 1
        headers = self.slice_request_headers(request_headers, 0, last, etag=None)
        request_time = time.time()
        self.origin_requests += 1
        response = await self.upstream.send("GET", target, headers)
        response_time = time.time()
        response_headers = decode_raw(response.headers.raw)
        status = response.status_code
        if status == 206:
            content_range = parse_content_range(get(response_headers, "content-range"))
            first, end, size = content_range or (-1, -1, None)
            if first != 0 or size is None:
                await response.aclose()
                raise SliceError("origin's 206 has no usable Content-Range", retryable=False)
            if end != min(last, size - 1):
                await response.aclose()
                raise SliceError(f"origin sent bytes 0-{end} for 0-{last}", retryable=False)
            meta = self._meta_from(response_headers, size, request_time, response_time)
            if meta.validator is None:
                await response.aclose()
                return self._remember_unsliceable(object_key, "no validator to pin the version")
            await self._adopt(object_key, meta)
            key = keys.slice_key(object_key, meta.version, 0)
            fill = SliceFill(key, 0, end)
            self._start_fill(fill, object_key, target, meta, request_headers, response)
            return meta
        if status == 416:
            await response.aclose()
            unsatisfied = UNSATISFIED_RANGE.match(get(response_headers, "content-range") or "")
            if unsatisfied is not None and int(unsatisfied.group(1)) == 0:
                meta = self._meta_from(response_headers, 0, request_time, response_time)
                if meta.validator is not None:
                    await self._adopt(object_key, meta)
                return meta
            raise SliceError("origin refused the first slice (416)", retryable=False)
        # 200 (ranges unsupported), errors, redirects: relay this very answer.
        probe.relay = response
        if status == 200:
            return self._remember_unsliceable(object_key, "origin ignores Range")
        return Unsliceable(f"origin answered {status}")

    def _remember_unsliceable(self, object_key: str, reason: str) -> Unsliceable:
        self._unsliceable[object_key] = time.time() + UNSLICEABLE_MEMORY_SECONDS
        return Unsliceable(reason)

    def _meta_from(
        self, headers: Headers, size: int, request_time: float, response_time: float
    ) -> ObjectMeta:
        stored = end_to_end(headers, NOT_STORED - {"date", "age"})
        lifetime = freshness_lifetime(
            stored, status=200, default_ttl=self.default_ttl, response_time=response_time
        )
        return ObjectMeta(
            size=size,
            etag=get(headers, "etag"),
            last_modified=get(headers, "last-modified"),
            headers=stored,
            request_time=request_time,
            response_time=response_time,
            expires_at=response_time + lifetime.seconds,
        )

    async def _adopt(self, object_key: str, meta: ObjectMeta) -> None:
        old = self._metas.get(object_key) or await self.cached_meta(object_key)
        if old is not None and old.validator != meta.validator:
            await self.forget(object_key)
        self._metas[object_key] = meta
        if self.store is not None:
            await self.store.put_meta(object_key, meta.to_bytes(), None)

    # --- streaming a range -------------------------------------------------------------

    def cached_slices(self, object_key: str, meta: ObjectMeta, first: int, last: int) -> int:
        """How many of the range's slices the store holds right now (for X-Cache)."""
        contains = getattr(self.store, "contains_slice", None)
        if contains is None or meta.size == 0:
            return 0
        version = meta.version
        return sum(
            1
            for index in slices_for_range(first, last, self.slice_size)
            if contains(keys.slice_key(object_key, version, index))
        )

    async def stream(
        self,
        object_key: str,
        target: str,
        meta: ObjectMeta,
        first: int,
        last: int,
        request_headers: Headers,
        stats: SliceStats,
    ) -> AsyncGenerator[SliceData, None]:
        """Bytes ``first..last`` in order, as soon as they exist."""
        indexes = slices_for_range(first, last, self.slice_size)
        claims: dict[int, SliceClaim] = {}
        scheduled = indexes.start
        try:
            for index in indexes:
                # Keep the lookahead window claimed; a slow client stops it moving.
                while scheduled < indexes.stop and scheduled < index + self.lookahead:
                    claims[scheduled] = await self._claim(
                        object_key, target, meta, scheduled, request_headers, stats
                    )
                    scheduled += 1
                claim = claims.pop(index)
                lo, hi = clip(index, self.slice_size, meta.size, first, last)
                try:
                    async for piece in claim.read(lo, hi):
                        yield piece
                finally:
                    claim.release()
        finally:
            for claim in claims.values():
                claim.release()

    async def _claim(
        self,
        object_key: str,
        target: str,
        meta: ObjectMeta,
        index: int,
        request_headers: Headers,
        stats: SliceStats,
    ) -> SliceClaim:
        key = keys.slice_key(object_key, meta.version, index)
        fill = self._fills.get(key)
        if fill is None and self.store is not None:
            data = await self.store.get_slice(key)
            first, last = slice_bounds(index, self.slice_size, meta.size)
            if data is not None and len(data) == last - first + 1:
                stats.hit += 1
                return SliceClaim(data=data)
            fill = self._fills.get(key)  # someone may have started it while we looked
        if fill is not None:
            stats.coalesced += 1
            fill.readers += 1
            return SliceClaim(fill=fill)
        stats.miss += 1
        first, last = slice_bounds(index, self.slice_size, meta.size)
        fill = SliceFill(key, first, last)
        self._start_fill(fill, object_key, target, meta, request_headers, None)
        fill.readers += 1
        return SliceClaim(fill=fill)

    # --- filling a slice from the origin -------------------------------------------------

    def _start_fill(
        self,
        fill: SliceFill,
        object_key: str,
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        response: httpx.Response | None,
    ) -> None:
        self._fills[fill.key] = fill
        fill.task = asyncio.get_running_loop().create_task(
            self._run_fill(fill, object_key, target, meta, request_headers, response)
        )

    async def _run_fill(
        self,
        fill: SliceFill,
        object_key: str,
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        response: httpx.Response | None,
    ) -> None:
        try:
            await self.budget.acquire(fill.length)
            try:
                await self._fetch_into(fill, target, meta, request_headers, response)
                response = None
            finally:
                self.budget.release(fill.length)
            fill.finish()
            if self.store is not None and self._metas.get(object_key) is meta:
                await self.store.put_slice(fill.key, memoryview(fill.buffer), None)
        except ObjectChanged as error:
            fill.fail(error)
            log.warning("origin object changed", extra={"fields": {"key": object_key}})
            await self.forget(object_key)
        except asyncio.CancelledError:
            # Only readers that are themselves leaving remain; they must still see an error.
            fill.fail(SliceError("slice fetch cancelled", retryable=False))
            raise
        except Exception as error:
            fill.fail(error)
        finally:
            if response is not None:
                await response.aclose()
            if self._fills.get(fill.key) is fill:
                del self._fills[fill.key]

    def slice_request_headers(
        self, request_headers: Headers, first: int, last: int, etag: str | None
    ) -> Headers:
        # Slices are shared by every client, so they are fetched as the identity
        # representation, never conditionally on one client's validators.
        dropped = frozenset(
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
        headers = [(k, v) for k, v in request_headers if k not in dropped]
        headers.append(("range", f"bytes={first}-{last}"))
        headers.append(("accept-encoding", "identity"))
        if etag is not None and not etag.startswith("W/"):
            # A changed object then costs a 412, not a slice of the wrong version.
            headers.append(("if-match", etag))
        return headers

    async def _fetch_into(
        self,
        fill: SliceFill,
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        response: httpx.Response | None,
    ) -> None:
        attempt = 0
        while True:
            first = fill.first + fill.filled  # resume after what readers already have
            try:
                if response is None:
                    headers = self.slice_request_headers(
                        request_headers, first, fill.last, meta.etag
                    )
                    self.origin_requests += 1
                    response = await self.upstream.send("GET", target, headers)
                    self.check_slice_response(response, first, fill.last, meta)
                async for chunk in response.aiter_raw():
                    fill.append(chunk)
                if fill.filled != fill.length:
                    raise SliceError(
                        f"origin sent {fill.filled} of {fill.length} bytes", retryable=True
                    )
                return
            except (httpx.TransportError, SliceError) as error:
                retryable = isinstance(error, httpx.TransportError) or error.retryable
                if not retryable or attempt >= self.max_retries:
                    raise
                attempt += 1
                self.retries += 1
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
                await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter
            finally:
                if response is not None:
                    await response.aclose()
                    response = None

    def check_slice_response(
        self, response: httpx.Response, first: int, last: int, meta: ObjectMeta
    ) -> None:
        """A slice answer is used only if it is exactly the bytes asked, of the same version."""
        status = response.status_code
        if status in (412, 416):
            raise ObjectChanged(f"origin answered {status} for a slice of a known object")
        if status >= 500:
            raise SliceError(f"origin answered {status}", retryable=True)
        if status != 206:
            raise SliceError(f"origin answered {status} to a range request", retryable=False)
        headers = response.headers
        etag = headers.get("etag")
        if meta.etag and not meta.etag.startswith("W/"):
            if etag != meta.etag:
                raise ObjectChanged(f"ETag {etag!r} is not {meta.etag!r}")
        elif meta.last_modified and headers.get("last-modified") != meta.last_modified:
            raise ObjectChanged("Last-Modified changed")
        content_range = parse_content_range(headers.get("content-range"))
        if content_range is None:
            raise SliceError("slice answer without a Content-Range", retryable=False)
        got_first, got_last, total = content_range
        if total is not None and total != meta.size:
            raise ObjectChanged(f"size changed from {meta.size} to {total}")
        if (got_first, got_last) != (first, last):
            raise SliceError(
                f"asked bytes {first}-{last}, got {got_first}-{got_last}", retryable=False
            )
        length = headers.get("content-length")
        if length is not None and length.strip() != str(last - first + 1):
            raise SliceError(f"Content-Length {length} for {last - first + 1} B", retryable=False)

    async def close(self) -> None:
        for fill in list(self._fills.values()):
            if fill.task is not None:
                fill.task.cancel()
        for fill in list(self._fills.values()):
            if fill.task is not None:
                with contextlib.suppress(BaseException):
                    await fill.task
