"""The slicing engine: objects cut into aligned slices, fetched ahead, coalesced, checked.

Flow (DESIGN.md steps 5-7; the object's metadata comes from :mod:`app.engine.objects`):
:meth:`SliceEngine.stream` yields the bytes of a range in order. Each slice comes from the
store or from an in-flight fill (coalesced: one origin fetch per slice, readers tail it);
missing slices are fetched ahead of the one being sent, ``lookahead`` Range requests of up
to ``run_length`` consecutive slices each, under a global byte budget. This module is the
window of one response and the start and outcome of each fetch task; the fetch itself
(request, checks, retries) is :mod:`app.engine.fetcher`, the fills in flight and what
they hold :mod:`app.engine.inflight`, who reads which version :mod:`app.engine.readers`.
A validator mismatch raises :class:`ObjectChanged` and drops the object's cached slices:
two versions are never spliced into one response.

Length (~600 lines): the window of a response (stream, claim, the lease asked ahead) and
the start and outcome of its fetch tasks share one state, the claims of a response and the
fills they join; the
fetch, the registry of fills, the readers' bookkeeping and the window's size
(:mod:`app.engine.lookahead`) are already split out. Lines that another branch rewrites
(slice-key helpers) stay here until that merge.

The engine never calls the object directory: what it reports (an origin that ignores
Range, an object that changed) goes to the two callbacks it was given, and its public
methods are what the directory uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.context import SliceStats
from app.edge.headers import Headers
from app.engine.budget import BudgetWaiter, ByteBudget, FetchHold
from app.engine.fetcher import ObjectChanged as ObjectChanged
from app.engine.fetcher import SliceError as SliceError
from app.engine.fetcher import SliceFetcher, error_kind, slice_request_headers
from app.engine.fills import SliceBuffer, SliceClaim, SliceFill, SliceGone
from app.engine.inflight import InFlight
from app.engine.lookahead import OriginPace, lookahead_slices
from app.engine.objectmeta import ObjectMeta
from app.engine.readers import Readers
from app.engine.slices import clip, slice_bounds, slices_for_range
from app.ops.metrics import EngineCounters
from app.upstream.client import UpstreamClient
from cache import keys
from cache.indexed import ObjectIndexedLRU
from cache.protocol import CacheFront, SliceData, SliceLease
from cache.ratelimit import DEFAULT_INTERVAL, RateLimitedLog

log = logging.getLogger("slicecache.slicer")


def drop_lease_task(task: asyncio.Task[SliceLease | None]) -> None:
    """Nobody will use this lease: release it, now or whenever the task has it."""
    if not task.done():
        task.cancel()
        task.add_done_callback(drop_lease_task)
        return
    if not task.cancelled() and task.exception() is None:
        lease = task.result()
        if lease is not None:
            lease.release()


# At most this many index lookups count a range's cached slices for X-Cache-Slices.
CACHED_SLICES_SAMPLE = 512


@dataclass
class SliceEngine:
    upstream: UpstreamClient
    store: CacheFront | None
    slice_size: int
    # At most this many Range requests in flight per response (MAX_CONCURRENT_SUBREQUESTS);
    # how many it really takes follows the origin's pace (app/engine/lookahead.py).
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
    counters: EngineCounters = field(default_factory=EngineCounters)
    # Origin events that may repeat for every reader of a busy object (its version changed
    # under a fill): one line per kind per interval (the app passes its shared log).
    warnings: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, DEFAULT_INTERVAL))
    # The targeted Cache-Control fields this cache obeys (app/httpcache/targeted.py).
    targeted_fields: tuple[str, ...] = ()
    # The origin's first-byte latency and per-request throughput, as slice fetches see them.
    pace: OriginPace = field(default_factory=OriginPace)
    inflight: InFlight = field(init=False)
    readers: Readers = field(init=False)
    fetcher: SliceFetcher = field(init=False)

    def __post_init__(self) -> None:
        self.inflight = InFlight(self.budget)
        # The drift between concurrent readers worth bridging: two lookahead windows, or a
        # half of the in-flight budget (32 curl clients on 2 cores drift tens of MiB apart).
        window = self.lookahead * self.run_length * self.slice_size
        capacity = max(2 * window, self.budget.capacity // 2)
        # Completed slices of objects that are shared but not stored (too large for the
        # cache), kept only while other responses stream the same object.
        self.readers = Readers(self.store, ObjectIndexedLRU(maxsize=capacity, getsizeof=len))
        self.fetcher = SliceFetcher(
            self.upstream,
            self.max_retries,
            self.counters,
            self.store_epoch,
            self._keep,
            self._ranges_ignored,
            self.pace,
            self.targeted_fields,
        )
        # Responses reading slices from origin fetches now: they share the byte budget.
        self.fetching = 0

    @property
    def fills(self) -> dict[str, SliceFill]:
        """Slices being fetched now, by slice key."""
        return self.inflight.fills

    @property
    def recent(self) -> ObjectIndexedLRU[str, SliceBuffer]:
        return self.readers.recent

    @property
    def streaming(self) -> dict[str, int]:
        return self.readers.streaming

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
        ``run_length`` slices. Cached slices are read when their turn comes, the next one's
        lease asked for while the current one is written (an L2 read then overlaps the
        socket's drain; a lease is a view of the mapped device, not a copy), so a hit
        holds at most four extents per response (the one being written, the next, and up
        to ``leasewriter.MAX_PENDING_LEASES`` whose bytes its socket still holds), not a
        window of copies. The window moves only as the client reads, so a slow client
        stops it.
        ``first_fill`` is slice 0 as a probe fetched it: read from it even if it is already
        complete and (for a private or not yet written entry) in no store. ``store=False``:
        slices this response fetches are not written to the cache (private, too large).
        """
        indexes = slices_for_range(first, last, self.slice_size)
        claims: dict[int, SliceClaim] = {}
        if first_fill is not None and indexes.start == 0 and first_fill.error is None:
            first_fill.readers += 1
            claims[0] = SliceClaim(fill=first_fill)
        scheduled = indexes.start
        version_prefix = self.readers.started(entry_key, meta.version)
        fetching = False  # counted in ``self.fetching``
        lanes = 1  # one more each time the window did not cover a slice (lookahead.py)

        # The store's answer for the slice after the one being sent, asked for while that
        # one is written (an L2 record not in memory is read in a worker thread): at most
        # one, by index.
        leasing: dict[int, asyncio.Task[SliceLease | None]] = {}

        async def claim_from(index: int, most: int, urgent: bool) -> None:
            nonlocal fetching
            # A run never reaches into slices this response already holds.
            limit = 1
            while limit < most and index + limit < indexes.stop and index + limit not in claims:
                limit += 1
            got = await self._claim(
                entry_key,
                target,
                meta,
                index,
                limit,
                request_headers,
                stats,
                store,
                urgent,
                leasing.pop(index, None),
            )
            for offset, claim in enumerate(got):
                claims[index + offset] = claim
            if not fetching and any(claim.fill is not None for claim in got):
                fetching = True
                self.fetching += 1

        async def schedule(index: int, reach: int) -> None:
            nonlocal scheduled
            while scheduled < indexes.stop and scheduled < index + reach:
                if scheduled not in claims and (
                    scheduled == index or not self._cached(entry_key, meta, scheduled)
                ):
                    await claim_from(scheduled, run_length, scheduled == index)
                scheduled += 1

        # The read-ahead starts once the first bytes are out: starting its origin requests
        # first would put their CPU between the origin's first byte and the client's.
        ahead_pending = True
        try:
            for index in indexes:
                # Read-ahead per response, from the origin's pace, re-read as it changes;
                # never more than a share of the budget, so that a few clients that stop
                # reading cannot hold all of it.
                window = self.lookahead_window(lanes)
                run_length = min(self.run_length, window)
                await schedule(index, 1 if ahead_pending else window)
                if index not in claims:  # cached when the window passed it
                    await claim_from(index, 1, True)
                claim = claims.pop(index)
                for stale in [i for i in leasing if i <= index]:
                    drop_lease_task(leasing.pop(stale))
                following = index + 1
                if (
                    claim.lease is not None
                    and following < indexes.stop
                    and following not in claims
                    and not leasing
                ):
                    leasing[following] = self._lease_task(entry_key, meta, following)
                lanes = self._lanes_after(claim, lanes, index - indexes.start >= window)
                lo, hi = clip(index, self.slice_size, meta.size, first, last)
                while True:
                    done = gone = False
                    try:
                        async for piece in claim.read(lo, hi, self.slice_wait_timeout):
                            yield piece
                            if ahead_pending:
                                ahead_pending = False
                                await schedule(index, window)
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
            for task in leasing.values():
                drop_lease_task(task)
            if fetching:
                self.fetching -= 1
            self.readers.ended(entry_key, version_prefix)

    def _lanes_after(self, claim: SliceClaim, lanes: int, covered: bool) -> int:
        """The lanes a response wants after reaching a slice it claimed ``covered`` (a
        whole window ago): one more when that slice has no byte yet (the origin is behind
        this client), one fewer when it is complete (the client is behind the origin, and
        a wider window would only hold more bytes for it)."""
        fill = claim.fill
        if fill is None or not covered:
            return lanes
        if fill.filled == 0 and not fill.done:
            return min(lanes + 1, self.lookahead)
        if fill.done:
            return max(lanes - 1, 1)
        return lanes

    def lookahead_window(self, lanes: int = 1) -> int:
        """Slices a response keeps in flight ahead of the one it sends, now."""
        return lookahead_slices(
            self.pace.latency,
            self.pace.throughput,
            slice_size=self.slice_size,
            run_length=self.run_length,
            cap=self.lookahead,
            budget=self.budget.capacity,
            responses=self.fetching,
            lanes=lanes,
        )

    def _cached(self, entry_key: str, meta: ObjectMeta, index: int) -> bool:
        """Held by a tier or the recent buffer (an index lookup: no bytes are read)."""
        key = keys.slice_key(entry_key, meta.version, index)
        if key in self.recent:
            return True
        if key in self.fills:
            return False  # in flight: joined now, so that it keeps a reader
        return self.store is not None and self.store.contains_slice(key)

    def _lease(
        self, entry_key: str, meta: ObjectMeta, index: int
    ) -> Coroutine[Any, Any, SliceLease | None]:
        """The store's lease of slice ``index`` (None if it holds none), the next slice
        named so that a tier can read it in."""
        assert self.store is not None
        return self.store.lease_slice(
            keys.slice_key(entry_key, meta.version, index),
            next_key=keys.slice_key(entry_key, meta.version, index + 1),
            size_hint=meta.size,
        )

    def _lease_task(
        self, entry_key: str, meta: ObjectMeta, index: int
    ) -> asyncio.Task[SliceLease | None]:
        """:meth:`_lease` in a task of its own: asked for ahead, while another slice is
        written."""
        return asyncio.get_running_loop().create_task(self._lease(entry_key, meta, index))

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
        leasing: asyncio.Task[SliceLease | None] | None = None,
    ) -> list[SliceClaim]:
        """Claim slice ``index``; a missing one starts a run of up to ``limit`` missing slices.

        ``leasing``: the store's lease of this slice asked for earlier; this call owns it."""
        key = keys.slice_key(entry_key, meta.version, index)
        fill = self.fills.get(key)
        if fill is not None and (fill.error is not None or fill.gone):
            # failed or abandoned: start afresh rather than inherit its error; gone: the
            # cache has its bytes
            fill = None
        recent = self.recent.get(key) if fill is None else None
        if (fill is not None or recent is not None or self.store is None) and leasing:
            drop_lease_task(leasing)
            leasing = None
        if recent is not None:
            stats.coalesced += 1
            self.counters.slices["coalesced"] += 1
            return [SliceClaim(data=memoryview(recent))]
        if fill is None and self.store is not None:
            if leasing is None:  # asked for now, in this task (no task of its own to pay)
                lease = await self._lease(entry_key, meta, index)
            else:
                try:
                    lease = await leasing
                except asyncio.CancelledError:  # cancelled with us; it may have one still
                    drop_lease_task(leasing)
                    raise
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
        fills = self.start_run(run, target, meta, request_headers, store=store, urgent=urgent)
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
        *,
        store: bool,
        epoch: int | None = None,
        hold: FetchHold | None = None,
    ) -> SliceFill:
        """Fetch one slice in a task of its own. ``hold``: the budget grant and origin
        answer of a fetch started elsewhere (the probe), taken over whole; ``epoch`` the
        purge epoch taken when the request that brought that answer went out."""
        run = [(key, bounds)]
        return self.start_run(
            run, target, meta, request_headers, store=store, epoch=epoch, hold=hold
        )[0]

    def start_run(
        self,
        run: list[tuple[str, tuple[int, int]]],
        target: str,
        meta: ObjectMeta,
        request_headers: Headers,
        *,
        store: bool,
        epoch: int | None = None,
        urgent: bool = False,
        hold: FetchHold | None = None,
    ) -> list[SliceFill]:
        """Fetch consecutive slices with one Range request, in one task, fill by fill.

        One request for several slices pays the origin's first-byte latency once: with
        20 ms of latency and 1 MiB slices at 50 MB/s, single-slice requests spend half
        their time waiting.
        """
        fills = [SliceFill(key, *bounds) for key, bounds in run]
        # One owner: the hold handed in is emptied into this fetch's own.
        taken = hold.pass_on() if hold is not None else FetchHold(self.budget, 0, None)
        task = asyncio.get_running_loop().create_task(
            self._run_fills(fills, target, meta, request_headers, taken, store, epoch, urgent)
        )
        # The hold is released here whatever the task's fate: a task cancelled before its
        # first step never runs its own ``finally``.
        task.add_done_callback(lambda _: self.inflight.run_ended(fills, taken))
        self.inflight.register(fills, task, store)
        return fills

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
        # :meth:`InFlight.run_ended` once this task is over, however it ended.
        def waiting(ticket: BudgetWaiter | None) -> None:
            for fill in fills:
                fill.ticket = ticket  # a reader that reaches a waiting fill promotes it

        try:
            if not hold.granted:
                size = sum(fill.length for fill in fills)
                await self.budget.acquire(size, urgent=urgent, on_wait=waiting)
                hold.granted = min(size, self.budget.capacity)
            if hold.response is not None:
                # A probe's answer, handed over as its request wakes up: that request
                # sends its client the head first, then this task reads the body (the
                # bytes are in the socket already; the head is what the client waits for).
                await asyncio.sleep(0)
            await self.fetcher.fetch(fills, target, meta, request_headers, hold, store, epoch)
        except ObjectChanged as error:
            for fill in fills:
                fill.fail(error)
            entry_key = keys.split_slice_key(fills[0].key)[0]
            self.counters.error("object_changed")
            self.warnings.warning(
                "origin_object_changed",
                "origin object changed under a fill: its readers are cut short",
                key=entry_key,
            )
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
            self.counters.error(error_kind(error))
        finally:
            await hold.close()

    def store_epoch(self) -> int:
        """The store's purge epoch now (0 without a store)."""
        return self.store.epoch if self.store is not None else 0

    def purged_since(self, epoch: int, key: str) -> bool:
        return self.store is not None and self.store.purged_since(epoch, key)

    async def retire_version(self, entry_key: str, version: str) -> None:
        """A newer version replaced this one: its slices go once no response reads them."""
        await self.readers.retire_version(entry_key, version)

    def forget(self, object_key: str) -> None:
        """The directory dropped the object: so do the engine's recent slices of it."""
        self.readers.forget_object(object_key)

    def forget_prefix(self, prefix: str) -> None:
        self.readers.forget_prefix(prefix)

    def forget_all(self) -> None:
        self.readers.forget_all()

    async def first_slice_hold(self) -> FetchHold:
        """The budget of slice 0, for a probe, in a hold that owns it from now on.

        Taken before the probe's request goes out: a probe holding an origin connection
        while it waits for budget could deadlock with fills that hold budget while they
        wait for a connection.
        """
        if self.budget.try_acquire(self.slice_size, urgent=True):
            # The usual case, without a timer armed and cancelled on a cold answer's path.
            return FetchHold(self.budget, self.slice_size, None)
        try:
            async with asyncio.timeout(self.upstream.timeouts.read):
                await self.budget.acquire(self.slice_size, urgent=True)
        except TimeoutError:
            raise httpx.PoolTimeout("no byte budget for the first slice in time") from None
        return FetchHold(self.budget, self.slice_size, None)

    async def _keep(self, fill: SliceFill, store: bool, epoch: int, meta: ObjectMeta) -> None:
        """A complete slice goes to the cache, or (shared, unstored) maybe to ``recent``.

        ``epoch``: taken when the origin request that fetched it went out; the store
        discards the write if a purge since then covers it. The write may wait for room in
        the L2 queue: this fill's next bytes wait with it (backpressure on fetch-ahead).
        """
        if store and self.store is not None:
            await self.store.put_slice(
                fill.key,
                memoryview(fill.buffer),
                None,
                epoch=epoch,
                compressible=meta.compressible,
            )
            return
        if self.purged_since(epoch, fill.key):
            return  # fetched before a purge that covers it: never kept
        entry_key = keys.split_slice_key(fill.key)[0]
        if self.streaming.get(entry_key, 0) > 1 and fill.length <= self.recent.maxsize:
            self.recent[fill.key] = fill.buffer

    def slice_request_headers(
        self, request_headers: Headers, first: int, last: int, etag: str | None
    ) -> Headers:
        return slice_request_headers(request_headers, first, last, etag)

    def _ranges_ignored(self, slice_key: str) -> None:
        """New requests for the object pass through whole; running ones read this 200."""
        if self.on_unsliceable is not None:
            self.on_unsliceable(keys.object_key_of(slice_key))

    async def close(self) -> None:
        await self.inflight.close()
