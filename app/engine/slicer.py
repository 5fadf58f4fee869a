"""The slicing engine: objects cut into aligned slices, fetched ahead, coalesced, checked.

Flow (DESIGN.md steps 5-7; the object's metadata comes from :mod:`app.engine.objects`):
:meth:`SliceEngine.stream` yields the bytes of a range in order. Each slice comes from the
store or from an in-flight fill (coalesced: one origin fetch per slice, readers tail it);
missing slices are fetched ahead of the one being sent, ``lookahead`` Range requests of up
to ``run_length`` consecutive slices each, under a global byte budget. Every origin answer
is checked (206, exact Content-Range, length, validator) before a byte of it is used. A
validator mismatch raises :class:`ObjectChanged` and drops the object's cached slices:
two versions are never spliced into one response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from app.context import SliceStats
from app.edge.headers import Headers
from app.engine.fills import (
    BudgetWaiter,
    ByteBudget,
    FetchHold,
    FillAbandoned,
    SliceClaim,
    SliceFill,
    SliceGone,
    SliceOverflow,
    abandon_run,
)
from app.engine.objectmeta import ObjectMeta
from app.engine.slices import clip, slice_bounds, slices_for_range
from app.ops.metrics import EngineCounters
from app.upstream.client import UpstreamClient
from cache import keys
from cache.indexed import ObjectIndexedLRU
from cache.protocol import CacheFront, SliceData

log = logging.getLogger("slicecache.slicer")

CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0
# At most this many index lookups count a range's cached slices for X-Cache-Slices.
CACHED_SLICES_SAMPLE = 512


def version_slices_prefix(entry_key: str, version: str) -> str:
    """What every slice key of one version of an entry starts with."""
    return f"{entry_key}{keys.SEPARATOR}{version}{keys.SEPARATOR}"


class ObjectChanged(Exception):
    """The origin's object is not the version the cached slices belong to."""


class SliceError(Exception):
    """The origin answered a slice request wrongly; ``retryable`` if trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _error_kind(error: Exception) -> str:
    """Why a slice fetch failed for good (each failed origin request is counted as an
    ``upstream_*`` error by the client already)."""
    if isinstance(error, httpx.TimeoutException):
        return "slice_timeout"
    if isinstance(error, httpx.TransportError):
        return "slice_connection"
    if isinstance(error, SliceError):
        return "slice_invalid"
    return "internal"


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
    store: CacheFront | None
    slice_size: int
    lookahead: int
    max_retries: int
    budget: ByteBudget
    # Consecutive missing slices fetched by one Range request.
    run_length: int = 1
    # Seconds a client may wait in all for the bytes of one slice, every retry included
    # (None: unbounded). Without it a stalled slice cost (1 + max_retries) read timeouts.
    slice_wait_timeout: float | None = None
    # Called with the object key when the origin answered a slice's Range with a 200.
    on_unsliceable: Callable[[str], None] | None = None
    # Called with (entry key, version) when the origin's object changed under a fill of
    # that version: the directory forgets the object unless it already holds a newer one.
    on_object_changed: Callable[[str, str], Awaitable[object]] | None = None
    fills: dict[str, SliceFill] = field(default_factory=dict)
    # Origin responses of ended fetches being closed (a reference keeps the task alive).
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    # Completed slices of objects that are shared but not stored (too large for the
    # cache), kept only while other responses stream the same object, so that clients a
    # little behind the one that fetched a slice still find it. Sized in __post_init__.
    recent: ObjectIndexedLRU[str, bytearray] = field(init=False)
    # Responses streaming each entry right now.
    streaming: dict[str, int] = field(default_factory=dict)
    # Responses reading each version (key: the version's slice-key prefix) right now, and
    # replaced versions whose slices are deleted when their last such response ends: a
    # stale response must not lose its slices to the revalidation it started.
    reading: dict[str, int] = field(default_factory=dict)
    # Complete slices holding budget for readers that have not started sending them.
    _holding: weakref.WeakSet[SliceFill] = field(default_factory=weakref.WeakSet)
    _retired: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.budget.on_pressure = self._stop_unread_fills
        # The drift between concurrent readers worth bridging: two lookahead windows, or a
        # half of the in-flight budget (32 curl clients on 2 cores drift tens of MiB apart).
        window = self.lookahead * self.run_length * self.slice_size
        capacity = max(2 * window, self.budget.capacity // 2)
        self.recent = ObjectIndexedLRU(maxsize=capacity, getsizeof=len)

    counters: EngineCounters = field(default_factory=EngineCounters)

    # --- streaming a range -------------------------------------------------------------

    def cached_slices(self, entry_key: str, meta: ObjectMeta, first: int, last: int) -> int:
        """How many of the range's slices the store holds right now (for X-Cache)."""
        if self.store is None or meta.size == 0:
            return 0
        contains = self.store.contains_slice
        version = meta.version
        indexes = slices_for_range(first, last, self.slice_size)
        # Counted before the first byte, on the event loop: a 4 GiB object of 64 KiB
        # slices would cost 65,536 lookups (~80 ms). A long range is sampled instead, at
        # evenly spaced slices including its first and last, and the count estimated.
        step = max(1, -(-len(indexes) // CACHED_SLICES_SAMPLE))
        sampled = [*indexes[::step]]
        if sampled[-1] != indexes[-1]:
            sampled.append(indexes[-1])
        held = sum(1 for index in sampled if contains(keys.slice_key(entry_key, version, index)))
        if held == len(sampled):
            return len(indexes)
        return round(held * len(indexes) / len(sampled))

    async def stream(
        self,
        entry_key: str,
        target: str,
        meta: ObjectMeta,
        first: int,
        last: int,
        request_headers: Headers,
        stats: SliceStats,
        first_fill: SliceFill | None = None,
        store: bool = True,
    ) -> AsyncGenerator[SliceData, None]:
        """Bytes ``first..last`` in order, as soon as they exist.

        Missing slices are fetched ahead of the one being sent: up to ``lookahead`` runs of
        ``run_length`` slices. Cached slices are read only when their turn comes, so a hit
        costs one slice of memory per response, not a window of copies. The window moves
        only as the client reads, so a slow client stops it.
        ``first_fill`` is slice 0 as a probe fetched it: read from it even if it is already
        complete and (for a private or not yet written entry) in no store. ``store=False``:
        slices this response fetches are not written to the cache (private, too large).
        """
        indexes = slices_for_range(first, last, self.slice_size)
        claims: dict[int, SliceClaim] = {}
        if first_fill is not None and indexes.start == 0 and first_fill.error is None:
            first_fill.readers += 1
            claims[0] = SliceClaim(fill=first_fill)
        # Read-ahead per response: the lookahead, but never more than a quarter of the
        # budget, so that a few clients that stop reading cannot hold all of it.
        window = max(
            1,
            min(self.lookahead * self.run_length, self.budget.capacity // (4 * self.slice_size)),
        )
        run_length = min(self.run_length, window)
        scheduled = indexes.start
        self.streaming[entry_key] = self.streaming.get(entry_key, 0) + 1
        version_prefix = version_slices_prefix(entry_key, meta.version)
        self.reading[version_prefix] = self.reading.get(version_prefix, 0) + 1

        async def claim_from(index: int, most: int, urgent: bool) -> None:
            # A run never reaches into slices this response already holds.
            limit = 1
            while limit < most and index + limit < indexes.stop and index + limit not in claims:
                limit += 1
            got = await self._claim(
                entry_key, target, meta, index, limit, request_headers, stats, store, urgent
            )
            for offset, claim in enumerate(got):
                claims[index + offset] = claim

        try:
            for index in indexes:
                while scheduled < indexes.stop and scheduled < index + window:
                    if scheduled not in claims and (
                        scheduled == index or not self._cached(entry_key, meta, scheduled)
                    ):
                        await claim_from(scheduled, run_length, scheduled == index)
                    scheduled += 1
                if index not in claims:  # cached when the window passed it
                    await claim_from(index, 1, True)
                claim = claims.pop(index)
                lo, hi = clip(index, self.slice_size, meta.size, first, last)
                while True:
                    done = gone = False
                    try:
                        async for piece in claim.read(lo, hi, self.slice_wait_timeout):
                            yield piece
                        done = True
                    except SliceGone:
                        done = gone = True  # not a byte read: the cache has it now
                    finally:
                        claim.release(abandon=not done)
                    if not gone:
                        break
                    got = await self._claim(
                        entry_key, target, meta, index, 1, request_headers, stats, store, True
                    )
                    claim = got[0]
        finally:
            # Claims still held here were never read: the response ended early.
            for claim in claims.values():
                claim.release(abandon=True)
            self._stream_ended(entry_key)
            self._version_read(version_prefix)

    def _cached(self, entry_key: str, meta: ObjectMeta, index: int) -> bool:
        """Held by a tier or the recent buffer (an index lookup: no bytes are read)."""
        key = keys.slice_key(entry_key, meta.version, index)
        if key in self.recent:
            return True
        if key in self.fills:
            return False  # in flight: joined now, so that it keeps a reader
        return self.store is not None and self.store.contains_slice(key)

    async def _claim(
        self,
        entry_key: str,
        target: str,
        meta: ObjectMeta,
        index: int,
        limit: int,
        request_headers: Headers,
        stats: SliceStats,
        store: bool,
        urgent: bool = False,
    ) -> list[SliceClaim]:
        """Claim slice ``index``; a missing one starts a run of up to ``limit`` missing slices."""
        key = keys.slice_key(entry_key, meta.version, index)
        fill = self.fills.get(key)
        if fill is not None and (fill.error is not None or fill.gone):
            # failed or abandoned: start afresh rather than inherit its error; gone: the
            # cache has its bytes
            fill = None
        recent = self.recent.get(key) if fill is None else None
        if recent is not None:
            stats.coalesced += 1
            self.counters.slices["coalesced"] += 1
            return [SliceClaim(data=memoryview(recent))]
        if fill is None and self.store is not None:
            lease = await self.store.lease_slice(
                key,
                next_key=keys.slice_key(entry_key, meta.version, index + 1),
                size_hint=meta.size,
            )
            first, last = slice_bounds(index, self.slice_size, meta.size)
            if lease is not None:
                if len(lease.view) == last - first + 1:
                    stats.hit += 1
                    return [SliceClaim(data=lease.view, lease=lease)]
                lease.release()
            fill = self.fills.get(key)  # someone may have started it while we looked
            if fill is not None and (fill.error is not None or fill.gone):
                fill = None
        if fill is None and meta.whole:
            # A whole object came from one plain GET; its evicted body is fetched again
            # the same way, by a new probe, not by a range request the origin may ignore.
            if self.on_object_changed is not None:
                await self.on_object_changed(entry_key, meta.version)
            raise ObjectChanged("the cached body of a whole object was evicted")
        if fill is not None:
            stats.coalesced += 1
            self.counters.slices["coalesced"] += 1
            fill.readers += 1
            return [SliceClaim(fill=fill)]
        run = [(key, slice_bounds(index, self.slice_size, meta.size))]
        for following in range(index + 1, index + limit):
            next_key = keys.slice_key(entry_key, meta.version, following)
            if next_key in self.fills or (
                self.store is not None and self.store.contains_slice(next_key)
            ):
                break  # the run stops where the cache (or another fill) takes over
            run.append((next_key, slice_bounds(following, self.slice_size, meta.size)))
        stats.miss += len(run)
        self.counters.slices["miss"] += len(run)
        fills = self.start_run(run, target, meta, request_headers, None, store=store, urgent=urgent)
        for started in fills:
            started.readers += 1
        return [SliceClaim(fill=started) for started in fills]

    # --- filling slices from the origin --------------------------------------------------

    def start_fill(
        self,
        key: str,
        bounds: tuple[int, int],
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        response: httpx.Response | None,
        *,
        store: bool,
        prepaid: int = 0,
        epoch: int | None = None,
    ) -> SliceFill:
        """Fetch one slice in a task of its own; ``response`` is an answer already in hand,
        ``prepaid`` bytes of the byte budget already granted to it, ``epoch`` the purge
        epoch taken when the request that brought ``response`` went out."""
        run = [(key, bounds)]
        return self.start_run(
            run, target, meta, request_headers, response, store=store, prepaid=prepaid, epoch=epoch
        )[0]

    def start_run(
        self,
        run: list[tuple[str, tuple[int, int]]],
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        response: httpx.Response | None,
        *,
        store: bool,
        prepaid: int = 0,
        epoch: int | None = None,
        urgent: bool = False,
    ) -> list[SliceFill]:
        """Fetch consecutive slices with one Range request, in one task, fill by fill.

        One request for several slices pays the origin's first-byte latency once: with
        20 ms of latency and 1 MiB slices at 50 MB/s, single-slice requests spend half
        their time waiting.
        """
        fills = [SliceFill(key, *bounds) for key, bounds in run]
        hold = FetchHold(self.budget, prepaid, response)
        task = asyncio.get_running_loop().create_task(
            self._run_fills(fills, target, meta, request_headers, hold, store, epoch, urgent)
        )
        # The hold is released here whatever the task's fate: a task cancelled before its
        # first step never runs its own ``finally``.
        task.add_done_callback(lambda _: self._run_ended(fills, hold))
        members = tuple(fills)
        for fill in fills:
            fill.run = members
            fill.task = task
            fill.stored = store
            self.fills[fill.key] = fill
        return fills

    def _run_ended(self, fills: list[SliceFill], hold: FetchHold) -> None:
        # A complete slice that readers still have to send keeps its share of the grant
        # until its last reader is done with it: memory held for slow clients is bounded
        # by the budget, not by the number of clients.
        remaining, hold.granted = hold.granted, 0
        for fill in fills:
            share = min(fill.length, remaining)
            remaining -= share
            if (
                share
                and fill.error is None
                and fill.done
                and fill.readers > 0
                and fill.sending == 0  # a slice being sent is the per-connection constant
            ):
                fill.held, fill.budget = share, self.budget
                self._holding.add(fill)
            elif share:
                self.budget.release(share)
        if remaining:
            self.budget.release(remaining)
        closing = hold.close_soon()
        if closing is not None:
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        for fill in fills:
            fill.fail(FillAbandoned(f"fetch of {fill.key!r} ended before the slice did"))
            fill.run = ()
            if self.fills.get(fill.key) is fill:
                del self.fills[fill.key]

    async def _run_fills(
        self,
        fills: list[SliceFill],
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        hold: FetchHold,
        store: bool,
        epoch: int | None = None,
        urgent: bool = False,
    ) -> None:
        # The budget grant and the response in hand belong to ``hold``, released by
        # :meth:`_run_ended` once this task is over, however it ended.
        def waiting(ticket: BudgetWaiter | None) -> None:
            for fill in fills:
                fill.ticket = ticket  # a reader that reaches a waiting fill promotes it

        try:
            if not hold.granted:
                size = sum(fill.length for fill in fills)
                await self.budget.acquire(size, urgent=urgent, on_wait=waiting)
                hold.granted = min(size, self.budget.capacity)
            await self._fetch_run(fills, target, meta, request_headers, hold, store, epoch)
        except ObjectChanged as error:
            for fill in fills:
                fill.fail(error)
            entry_key = keys.split_slice_key(fills[0].key)[0]
            log.warning("origin object changed", extra={"fields": {"key": entry_key}})
            if self.on_object_changed is not None:
                await self.on_object_changed(entry_key, meta.version)
        except asyncio.CancelledError:
            # Only readers that are themselves leaving remain; they must still see an error.
            for fill in fills:
                fill.fail(SliceError("slice fetch cancelled", retryable=False))
            raise
        except Exception as error:
            for fill in fills:
                fill.fail(error)
            self.counters.error(_error_kind(error))
        finally:
            await hold.close()

    def store_epoch(self) -> int:
        """The store's purge epoch now (0 without a store)."""
        return self.store.epoch if self.store is not None else 0

    def purged_since(self, epoch: int, key: str) -> bool:
        return self.store is not None and self.store.purged_since(epoch, key)

    def _stop_unread_fills(self) -> None:
        """Budget is short: fetches that outlived all their readers (kept going only to fill
        the cache) give way to requests somebody is waiting for."""
        for fill in list(self.fills.values()):
            run = fill.run or (fill,)
            if fill.error is None and not fill.done and all(f.readers == 0 for f in run):
                abandon_run(fill)
        # Complete slices held for readers that have not reached them (clients reading
        # nothing): let go, and fetched again when their reader gets there.
        for held in list(self._holding):
            self._holding.discard(held)
            if held.held:
                held.let_go()

    def _stream_ended(self, entry_key: str) -> None:
        remaining = self.streaming.get(entry_key, 1) - 1
        if remaining > 0:
            self.streaming[entry_key] = remaining
            return
        self.streaming.pop(entry_key, None)
        prefix = entry_key + keys.SEPARATOR
        for key in self.recent.keys_of(entry_key, within=prefix):
            self.recent.pop(key, None)

    def _version_read(self, prefix: str) -> None:
        remaining = self.reading.get(prefix, 1) - 1
        if remaining > 0:
            self.reading[prefix] = remaining
            return
        self.reading.pop(prefix, None)
        if prefix in self._retired and self.store is not None:
            self._retired.discard(prefix)
            deleting = asyncio.get_running_loop().create_task(self._delete_version(prefix))
            self._closing.add(deleting)
            deleting.add_done_callback(self._closing.discard)

    async def retire_version(self, entry_key: str, version: str) -> None:
        """A newer version replaced this one: its slices are garbage once no response
        reads them any more (now, or when the last reader ends)."""
        prefix = version_slices_prefix(entry_key, version)
        if self.reading.get(prefix, 0) > 0:
            self._retired.add(prefix)
            return
        await self._delete_version(prefix)

    async def _delete_version(self, prefix: str) -> None:
        if self.store is not None:
            await self.store.delete_prefix(prefix)

    async def _keep(self, fill: SliceFill, store: bool, epoch: int) -> None:
        """A complete slice goes to the cache, or (shared, unstored) maybe to ``recent``.

        ``epoch``: taken when the origin request that fetched it went out; the store
        discards the write if a purge since then covers it. The write may wait for room in
        the L2 queue: this fill's next bytes wait with it (backpressure on fetch-ahead).
        """
        if store and self.store is not None:
            await self.store.put_slice(fill.key, memoryview(fill.buffer), None, epoch=epoch)
            return
        if self.purged_since(epoch, fill.key):
            return  # fetched before a purge that covers it: never kept
        entry_key = keys.split_slice_key(fill.key)[0]
        if self.streaming.get(entry_key, 0) > 1 and fill.length <= self.recent.maxsize:
            self.recent[fill.key] = fill.buffer

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

    async def _fetch_run(
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
        current = 0  # the fill being written; earlier ones are complete
        last = fills[-1].last
        pinned = meta.pins_version
        while True:
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
                if response is None:
                    headers = self.slice_request_headers(request_headers, first, last, meta.etag)
                    epoch = self.store_epoch()
                    response = hold.response = await self.upstream.send("GET", target, headers)
                    skip = self.check_slice_response(response, first, last, meta)
                    if skip or (response.status_code == 200 and not meta.whole):
                        self._ranges_ignored(fills[0].key)
                wanted = last - first + 1  # what this answer may still give us
                async for chunk in response.aiter_raw():
                    self.counters.upstream_bytes += len(chunk)
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
                            raise SliceOverflow(f"origin sent more than bytes {first}-{last}")
                        fill.append(view[:room])
                        view = view[room:]
                        if fill.filled == fill.length:
                            fill.finish()
                            await self._keep(fill, store, epoch)
                            current = min(current + 1, len(fills) - 1)
                    if fills[-1].done and response.status_code == 200:
                        break
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

    def check_slice_response(
        self, response: httpx.Response, first: int, last: int, meta: ObjectMeta
    ) -> int:
        """A slice answer is used only if it is exactly the bytes asked, of the same version.

        Returns how many leading bytes of the answer come before ``first`` (a 200 that
        ignored the Range) and are skipped.
        """
        status = response.status_code
        if status == 200 and meta.whole and first == 0:
            self._check_whole(response, meta)
            return 0
        if status == 200 and not meta.whole:
            # The origin ignored the Range (after honouring the first one): the whole body
            # of the same version serves, read from ``first`` on.
            self._check_whole(response, meta)
            return first
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
        return 0

    def _check_whole(self, response: httpx.Response, meta: ObjectMeta) -> None:
        """A 200 for a slice: the whole object, which must be the same version and size."""
        headers = response.headers
        if meta.validator is not None and (
            headers.get("etag") != meta.etag or headers.get("last-modified") != meta.last_modified
        ):
            raise ObjectChanged("validator changed")
        length = headers.get("content-length")
        if length is not None and length.strip() != str(meta.size):
            raise ObjectChanged("size changed")
        if length is None and not meta.whole:
            raise SliceError("a 200 without a Content-Length for a slice", retryable=True)

    def _ranges_ignored(self, slice_key: str) -> None:
        """New requests for the object pass through whole; running ones read this 200."""
        if self.on_unsliceable is not None:
            self.on_unsliceable(keys.object_key_of(slice_key))

    async def close(self) -> None:
        for fill in list(self.fills.values()):
            if fill.task is not None:
                fill.task.cancel()
        for fill in list(self.fills.values()):
            if fill.task is not None:
                with contextlib.suppress(BaseException):
                    await fill.task
