"""Object metadata and the shared-cache decisions around it (RFC 9111).

:meth:`ObjectDirectory.open` answers "how do I serve this GET?": from the stored object
(fresh, or stale where allowed), after revalidating it, or from a new probe. A probe is
one ``Range: bytes=0-(S-1)`` request whose answer carries the size and validators and is
itself slice 0; a revalidation is the same request with the stored validators, so a 304
refreshes the headers and keeps every slice. Concurrent requests share one probe.

A response that may not be stored (``private``, ``no-store``, ``Vary: *``...) is served
to the request that fetched it under a key of its own, never shared with another client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field

import httpx
from cachetools import LRUCache

from app.edge.headers import Headers, decode_raw, end_to_end, get, shared_fill_headers
from app.engine.fills import SliceFill
from app.engine.objectmeta import NOT_STORED, ObjectMeta
from app.engine.slicer import SliceEngine, SliceError, parse_content_range
from app.engine.unframed import peek_small_body
from app.httpcache.cache_status import CacheStatus, Fwd
from app.httpcache.conditional import (
    merge_304_headers,
    not_modified_matches,
    validators_for_revalidation,
)
from app.httpcache.freshness import (
    FreshnessPolicy,
    Outcome,
    StoredResponseInfo,
    decide,
    decide_prepared,
    on_miss,
)
from app.httpcache.storable import storability
from app.httpcache.vary import selecting_headers, vary_field_names
from cache import keys
from cache.indexed import ObjectIndexedLRU
from cache.protocol import CacheFront

log = logging.getLogger("slicecache.objects")

# Key, entry and index bookkeeping a tier spends per slice (L1 counts ~256 B + the key).
PER_SLICE_OVERHEAD_BYTES = 1024
# How long an origin that ignored Range for a large object is not probed again.
UNSLICEABLE_MEMORY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ObjectRequest:
    """A GET as the directory sees it."""

    object_key: str  # the cache key: what the origin sees (see Runtime.object_key)
    target: str  # path and query, as sent to the origin
    headers: Headers  # the client's: they decide Vary, freshness and storability
    # What the origin is sent (its own Host, no hop-by-hop fields, X-Forwarded-*, Via):
    # the base of every probe and slice request.
    origin_headers: Headers


def _forwarded(result: Opened | Forward, fwd: Fwd) -> Opened | Forward:
    """``result`` with Cache-Status ``fwd`` set to why the request went forward, when the
    probe that made it could not know (it only saw the origin's answer)."""
    if not isinstance(result, Opened) or result.status.fwd not in ("uri-miss", "stale"):
        return result
    if result.status.served_stale:
        return result
    return dataclasses.replace(result, status=dataclasses.replace(result.status, fwd=fwd))


@dataclass(slots=True)
class Opened:
    """Serve ``meta`` from slices under ``entry_key``."""

    meta: ObjectMeta
    entry_key: str
    status: CacheStatus
    probed: bool = False  # this request's own probe fetched slice 0
    shareable: bool = True  # False: private to this response
    stored: bool = True  # False: its slices are not written to the cache
    first_fill: SliceFill | None = None  # slice 0 as the probe fetched it, done or not
    # Set-Cookie of the origin's answer, for the request that fetched it only (never stored).
    cookies: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Forward:
    """Not served from slices: relay ``response`` if given, else pass the request through."""

    reason: str
    response: httpx.Response | None = None


@dataclass(slots=True)
class Refuse:
    status: int
    reason: str


Opening = Opened | Forward | Refuse


@dataclass(slots=True)
class _Probe:
    future: asyncio.Future[Opened | Forward]
    relay: httpx.Response | None = None  # for the request that started the probe only
    budget_handed_over: bool = False  # slice 0's budget grant went to its fill
    # The origin's answer while the probe reads its headers: closed when the probe ends
    # unless it went to slice 0's fill or to the relay (on every path, exceptions included).
    open_response: httpx.Response | None = None


@dataclass
class ObjectDirectory:
    engine: SliceEngine
    store: CacheFront | None
    policy: FreshnessPolicy
    # Indexed by object (as are _unstored and the engine's recent slices): an invalidation
    # costs the object's own entries, not a scan.
    _metas: ObjectIndexedLRU[str, ObjectMeta] = field(
        default_factory=lambda: ObjectIndexedLRU(maxsize=4096)
    )
    _unsliceable: LRUCache[str, float] = field(default_factory=lambda: LRUCache(maxsize=4096))
    _probes: dict[str, _Probe] = field(default_factory=dict)
    # Metadata of objects shared in flight but too large to store: later clients join the
    # fills (and the engine's recent slices) instead of probing again.
    _unstored: ObjectIndexedLRU[str, ObjectMeta] = field(
        default_factory=lambda: ObjectIndexedLRU(maxsize=1024)
    )
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    # --- lookup --------------------------------------------------------------------------

    async def open(self, request: ObjectRequest) -> Opening:
        """How to serve this GET: from the stored object, after revalidating it, or from a
        new (shared) probe."""
        object_key, request_headers = request.object_key, request.headers
        until = self._unsliceable.get(object_key)
        if until is not None and until > time.time():
            return Forward("origin does not serve ranges of this object")
        entry_key, meta = await self._lookup(object_key, request_headers)
        in_store = True
        if meta is None:
            meta = self._unstored.get(entry_key)
            in_store = False
        if meta is None:
            if on_miss(request_headers) is not None:
                return Refuse(504, "only-if-cached: not in cache")
            result = await self._probe_shared(entry_key, request, None)
            # Another variant of this URI is stored (RFC 9211 2.2: vary-miss).
            return _forwarded(result, "vary-miss") if entry_key != object_key else result

        # Parsed once per stored response (ObjectMeta.freshness), not on every hit.
        decision = decide_prepared(meta.freshness(self.policy), request_headers, time.time())
        if decision.serve_stored:
            if decision.outcome is Outcome.FRESH:
                by_operator = decision.lifetime.source == "default"
                status = CacheStatus.fresh_hit(decision.ttl, "default-ttl" if by_operator else None)
            else:
                status = CacheStatus.stale_hit(decision.ttl, decision.reason)
            if decision.revalidate_in_background:
                self._revalidate_in_background(entry_key, request)
            if not in_store:
                status = CacheStatus.bypass("too-large")
            return Opened(meta, entry_key, status, stored=in_store)
        if decision.error_status is not None:
            return Refuse(decision.error_status, "only-if-cached: stored response is stale")

        try:
            result = _forwarded(
                await self._probe_shared(entry_key, request, meta),
                # RFC 9211 2.2: the client's directives forced it, or what was stored was
                # stale (or no-cache): never a uri-miss, whatever the origin answered.
                "request" if decision.reason == "request" else "stale",
            )
        except (httpx.TransportError, SliceError):
            if decision.may_serve_on_error(time.time()):
                return Opened(meta, entry_key, CacheStatus.stale_on_error(decision.ttl, None))
            raise
        if (
            isinstance(result, Forward)
            and result.response is not None
            and result.response.status_code >= 500
            and decision.may_serve_on_error(time.time())
        ):
            code = result.response.status_code
            await result.response.aclose()
            return Opened(meta, entry_key, CacheStatus.stale_on_error(decision.ttl, code))
        return result

    async def _lookup(
        self, object_key: str, request_headers: Headers
    ) -> tuple[str, ObjectMeta | None]:
        """The entry key for this request (its Vary variant) and what is stored there."""
        base = await self.cached_meta(object_key)
        if base is None or not base.vary:
            return object_key, base
        entry_key = self._entry_key(object_key, base, request_headers)
        return entry_key, await self.cached_meta(entry_key)

    async def cached_meta(self, key: str) -> ObjectMeta | None:
        meta = self._metas.get(key)
        if meta is not None or self.store is None:
            return meta
        blob = await self.store.get_meta(key)
        if blob is None:
            return None
        try:
            meta = ObjectMeta.from_bytes(blob)
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable metadata dropped", extra={"fields": {"key": key}})
            await self.store.delete(key)
            return None
        self._metas[key] = meta
        return meta

    # --- invalidation --------------------------------------------------------------------

    async def forget(self, object_key: str) -> int:
        """Drop the object, its variants and slices from every tier (change, purge, 4.4)."""
        for cache in (self._metas, self._unstored, self.engine.recent):
            cache.pop_object(object_key)
        self._unsliceable.pop(object_key, None)
        return await self.store.delete(object_key) if self.store is not None else 0

    async def object_changed(self, entry_key: str, version: str) -> None:
        """The origin no longer serves ``version`` of the entry: forget the object, unless
        what is stored is already a newer version (the change concerned only responses
        still reading the old one, e.g. stale ones; the new version stays)."""
        object_key = entry_key.split(keys.SEPARATOR, 1)[0]
        current = self._unstored.get(entry_key) or await self.cached_meta(entry_key)
        if current is not None and current.version != version:
            return
        await self.forget(object_key)

    def mark_unsliceable(self, object_key: str) -> None:
        """The origin answered a slice's Range with a 200: pass the object through for a
        while (the engine reads running responses' slices out of that 200)."""
        self._unsliceable[object_key] = time.time() + UNSLICEABLE_MEMORY_SECONDS

    async def forget_prefix(self, prefix: str) -> int:
        for cache in (self._metas, self._unstored, self.engine.recent):
            for key in [k for k in cache if k.startswith(prefix)]:
                cache.pop(key, None)
        for key in [k for k in self._unsliceable if k.startswith(prefix)]:
            self._unsliceable.pop(key, None)
        return await self.store.delete_prefix(prefix) if self.store is not None else 0

    async def forget_all(self) -> int:
        self._metas.clear()
        self._unstored.clear()
        self.engine.recent.clear()
        self._unsliceable.clear()
        return await self.store.clear() if self.store is not None else 0

    # --- probes --------------------------------------------------------------------------

    def _revalidate_in_background(self, entry_key: str, request: ObjectRequest) -> None:
        if entry_key in self._probes:
            return  # one refresh at a time

        async def refresh() -> None:
            meta = await self.cached_meta(entry_key)
            try:
                result = await self._probe_shared(entry_key, request, meta)
            except Exception as error:
                log.info("background revalidation failed", extra={"fields": {"error": str(error)}})
                return
            if isinstance(result, Forward) and result.response is not None:
                await result.response.aclose()

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _probe_shared(
        self, probe_key: str, request: ObjectRequest, stored: ObjectMeta | None
    ) -> Opened | Forward:
        probe = self._probes.get(probe_key)
        if probe is not None:
            result = await asyncio.shield(probe.future)
            if isinstance(result, Opened) and result.shareable:
                if self._variant_of(result, request) == result.entry_key:
                    status = dataclasses.replace(result.status, collapsed=True)
                    return dataclasses.replace(result, probed=False, status=status, cookies=[])
            return Forward("the shared origin answer is not reusable for this request")
        loop = asyncio.get_running_loop()
        probe = _Probe(loop.create_future())
        self._probes[probe_key] = probe
        task = loop.create_task(self._run_probe(probe, request, stored))
        task.add_done_callback(lambda _: self._probes.pop(probe_key, None))
        try:
            result = await asyncio.shield(probe.future)
        except asyncio.CancelledError:
            task.add_done_callback(lambda _: self._drop_relay(probe))
            raise
        if isinstance(result, Forward) and probe.relay is not None:
            relay, probe.relay = probe.relay, None
            return Forward(result.reason, relay)
        return result

    def _variant_of(self, opened: Opened, request: ObjectRequest) -> str:
        return self._entry_key(request.object_key, opened.meta, request.headers)

    def _drop_relay(self, probe: _Probe) -> None:
        if probe.relay is not None:
            relay, probe.relay = probe.relay, None
            self._background.add(asyncio.get_running_loop().create_task(relay.aclose()))

    async def _run_probe(
        self, probe: _Probe, request: ObjectRequest, stored: ObjectMeta | None
    ) -> None:
        try:
            result = await self._probe_origin(probe, request, stored)
        except BaseException as error:
            if not probe.future.done():
                probe.future.set_exception(error)
                probe.future.exception()  # marked retrieved: each waiter re-raises it
            if not isinstance(error, Exception):
                raise
            return
        if not probe.future.done():
            probe.future.set_result(result)

    async def _probe_origin(
        self, probe: _Probe, request: ObjectRequest, stored: ObjectMeta | None
    ) -> Opened | Forward:
        engine = self.engine
        headers = engine.slice_request_headers(
            request.origin_headers, 0, engine.slice_size - 1, None
        )
        if stored is not None:
            headers += validators_for_revalidation(stored.headers)
        # Slice 0's share of the byte budget is taken before the request goes out: a probe
        # holding an origin connection while it waits for budget could deadlock with fills
        # that hold budget while they wait for a connection.
        try:
            async with asyncio.timeout(engine.upstream.timeouts.read):
                await engine.budget.acquire(engine.slice_size, urgent=True)
        except TimeoutError:
            raise httpx.PoolTimeout("no byte budget for the first slice in time") from None
        try:
            return await self._probe_with_budget(probe, request, stored, headers)
        finally:
            if not probe.budget_handed_over:
                engine.budget.release(engine.slice_size)
            leftover, probe.open_response = probe.open_response, None
            if (
                leftover is not None
                and not probe.budget_handed_over
                and leftover is not probe.relay
            ):
                await leftover.aclose()

    async def _probe_with_budget(
        self,
        probe: _Probe,
        request: ObjectRequest,
        stored: ObjectMeta | None,
        headers: Headers,
    ) -> Opened | Forward:
        engine = self.engine
        object_key, target, request_headers = request.object_key, request.target, request.headers
        request_time = time.time()
        # The purge epoch of this origin request: every write of what it brings (metadata,
        # slice 0) carries it, so a purge after this instant is never undone by them.
        epoch = engine.store_epoch()
        response = probe.open_response = await engine.upstream.send("GET", target, headers)
        response_time = time.time()
        response_headers = decode_raw(response.headers.raw)
        status = response.status_code

        if status == 304 and stored is not None:
            await response.aclose()
            if not not_modified_matches(stored.headers, response_headers):
                # Not the response we hold: fetch it plainly (same budget grant).
                plain = engine.slice_request_headers(
                    request.origin_headers, 0, engine.slice_size - 1, None
                )
                return await self._probe_with_budget(probe, request, None, plain)
            meta = dataclasses.replace(
                stored,
                headers=merge_304_headers(stored.headers, response_headers),
                request_time=request_time,
                response_time=response_time,
            )
            info = StoredResponseInfo(meta.status, meta.headers, request_time, response_time)
            ttl = decide(info, [], time.time(), policy=self.policy).ttl
            # The 304's fields may have made the response private or no-store: the stored
            # copy goes, and this answer is this client's alone (RFC 9111 4.3.4, 3). Only
            # the response decides here: this client's Authorization or no-store concerns
            # its own request, not the copy everybody shares.
            decision = storability(
                "GET", meta.status, [], meta.headers, targeted=self.policy.targeted_fields
            )
            withheld = _withheld(meta, decision.headers_to_strip)
            if not decision.store:
                await self.forget(object_key)
                private = keys.private_key(object_key)
                return Opened(
                    meta,
                    private,
                    CacheStatus.revalidated(ttl),
                    shareable=False,
                    stored=False,
                    cookies=withheld,
                )
            if engine.purged_since(epoch, object_key):
                # Purged while we revalidated: serve this once, store nothing.
                private = keys.private_key(object_key)
                return Opened(
                    meta, private, CacheStatus.revalidated(ttl), shareable=False, stored=False
                )
            if self._too_large(meta.size):
                entry_key = self._share_unstored(object_key, meta, request_headers)
                return Opened(meta, entry_key, CacheStatus.revalidated(ttl), stored=False)
            entry_key = await self._adopt(object_key, meta, request_headers, epoch)
            return Opened(meta, entry_key, CacheStatus.revalidated(ttl))

        size: int | None = None
        whole = False
        in_hand: httpx.Response | None = response
        if status == 206:
            first, last, total = parse_content_range(get(response_headers, "content-range")) or (
                -1,
                -1,
                None,
            )
            if first != 0 or total is None or last != min(engine.slice_size, total) - 1:
                # The origin's ranges cannot be trusted: the request passes through whole.
                await response.aclose()
                self._unsliceable[object_key] = time.time() + UNSLICEABLE_MEMORY_SECONDS
                return Forward("origin answered the first slice with a wrong Content-Range")
            size = total
        elif status != 416:
            length = get(response_headers, "content-length")
            small = length is not None and length.isdigit() and int(length) <= engine.slice_size
            # One slice or less: cached whole, whatever the origin does with ranges. A
            # status other than 200 only if it may be stored at all (301, 404, 410...).
            if small and (
                status == 200
                or storability(
                    "GET",
                    status,
                    request_headers,
                    response_headers,
                    targeted=self.policy.targeted_fields,
                )
            ):
                size, whole = int(length or 0), True
            elif (
                length is None
                and status in (200, 204)
                and "content-range" not in dict(response_headers)
            ):
                # Chunked or close-delimited: stored whole if it ends within one slice.
                in_hand, body_size = await peek_small_body(response, engine.slice_size)
                if body_size is not None:
                    size, whole = body_size, True
        elif status == 416:
            if (get(response_headers, "content-range") or "").replace(" ", "") == "bytes*/0":
                size = 0
            await response.aclose()
            in_hand = None
        if size is None:
            probe.relay = in_hand
            if status == 200:
                self._unsliceable[object_key] = time.time() + UNSLICEABLE_MEMORY_SECONDS
                return Forward("origin ignores Range for this object")
            return Forward(f"origin answered {status}")

        meta = self._meta_from(response_headers, size, request_time, response_time, whole)
        meta.status = 200 if status in (206, 416) else status
        decision = storability(
            "GET",
            meta.status,
            request_headers,
            response_headers,
            targeted=self.policy.targeted_fields,
        )
        # RFC 9111 5.2.2.7/5.2.2.4: fields named by a qualified private/no-cache never reach
        # the shared copy; the response that fetched them still gets them, like Set-Cookie.
        withheld = _withheld(meta, decision.headers_to_strip)
        if decision.store and engine.purged_since(epoch, object_key):
            decision = dataclasses.replace(decision, store=False, reason="purged")
        # Public content may be shared in flight even when it is not stored.
        shareable = decision.store
        if decision.store and self._too_large(size):
            # It would only evict itself (and everything else) on the way through.
            decision = dataclasses.replace(decision, store=False, reason="too-large")
        if not meta.pins_version and size > engine.slice_size:
            # Without a strong validator two versions could be spliced: never sliced.
            if in_hand is not None:
                await in_hand.aclose()
            return Forward("no validator to pin the object's version")
        if decision.store:
            entry_key = await self._adopt(object_key, meta, request_headers, epoch)
            cache_status = CacheStatus.miss(fwd_status=status, stored=True)
        elif shareable:
            entry_key = self._share_unstored(object_key, meta, request_headers)
            cache_status = CacheStatus.bypass(decision.reason)
        else:
            entry_key = keys.private_key(object_key)
            cache_status = CacheStatus.bypass(decision.reason)
        first_fill = None
        if in_hand is not None and size > 0:
            first_fill = engine.start_fill(
                keys.slice_key(entry_key, meta.version, 0),
                (0, min(engine.slice_size, size) - 1),
                target,
                meta,
                # Its retries are shared fetches: they carry nothing of this client's.
                shared_fill_headers(request.origin_headers, meta.vary)
                if shareable
                else request.origin_headers,
                in_hand,
                store=decision.store,
                prepaid=engine.slice_size,
                epoch=epoch,
            )
            probe.budget_handed_over = True
        elif in_hand is not None:
            await in_hand.aclose()
        return Opened(
            meta,
            entry_key,
            cache_status,
            probed=True,
            shareable=shareable,
            stored=decision.store,
            first_fill=first_fill,
            cookies=[(k, v) for k, v in response_headers if k == "set-cookie"] + withheld,
        )

    def _too_large(self, size: int) -> bool:
        """Would the object, with each slice's bookkeeping, not fit in the tiers at all?

        An object a little larger than the cache is the worst case of LRU: every slice a
        sequential read inserts evicts the next one it is about to read.
        """
        if self.store is None:
            return False
        slices = size // self.engine.slice_size + 2
        return size + slices * PER_SLICE_OVERHEAD_BYTES > self.store.capacity_bytes

    def _meta_from(
        self,
        headers: Headers,
        size: int,
        request_time: float,
        response_time: float,
        whole: bool,
    ) -> ObjectMeta:
        vary = vary_field_names(headers)
        return ObjectMeta(
            size=size,
            etag=get(headers, "etag"),
            last_modified=get(headers, "last-modified"),
            # A whole object replays its own Content-Range (if a 200 had one); a sliced
            # one's belongs to the probe, not to the object.
            headers=end_to_end(headers, NOT_STORED - {"content-range"} if whole else NOT_STORED),
            request_time=request_time,
            response_time=response_time,
            vary=list(vary) if vary and vary != "*" else None,
            whole=whole,
        )

    @staticmethod
    def _entry_key(object_key: str, meta: ObjectMeta, request_headers: Headers) -> str:
        """The object's own key, or for a response with Vary the variant this request selects."""
        if not meta.vary:
            return object_key
        selecting = selecting_headers(tuple(meta.vary), request_headers)
        return keys.variant_key(object_key, selecting or [])

    def _share_unstored(self, object_key: str, meta: ObjectMeta, request_headers: Headers) -> str:
        """Too large to store: remembered in memory only, so later clients join its fills."""
        entry_key = self._entry_key(object_key, meta, request_headers)
        self._unstored[entry_key] = meta
        return entry_key

    async def _adopt(
        self, object_key: str, meta: ObjectMeta, request_headers: Headers, epoch: int
    ) -> str:
        """Store ``meta`` as the current version; returns the entry key it lives under.

        ``epoch``: the purge epoch of the origin request that brought ``meta``. A purge
        since then (even one that lands during the awaits here) wins: nothing is stored.
        """
        entry_key = self._entry_key(object_key, meta, request_headers)
        old = await self.cached_meta(entry_key)
        if old is not None and old.validator != meta.validator and self.store is not None:
            # A new version: the old one's slices are garbage once no response reads them
            # (a stale answer may still be sending them). Only they go: a purge of the
            # whole object would also cover this adoption's own writes.
            await self.engine.retire_version(entry_key, old.version)
        if self.engine.purged_since(epoch, entry_key):
            return entry_key  # purged since the request went out: the store refuses it too
        blob = meta.to_bytes()
        self._metas[entry_key] = meta
        if self.store is not None:
            await self.store.put_meta(entry_key, blob, None, epoch=epoch)
        if entry_key != object_key and not self.engine.purged_since(epoch, object_key):
            # The object's own key remembers what it varies on, for the next lookup.
            self._metas[object_key] = meta
            if self.store is not None:
                await self.store.put_meta(object_key, blob, None, epoch=epoch)
        return entry_key

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()


def _withheld(meta: ObjectMeta, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Take the fields ``names`` out of ``meta``'s stored headers; returns what was taken."""
    if not names:
        return []
    drop = frozenset(names)
    taken = [(k, v) for k, v in meta.headers if k in drop]
    meta.headers = [(k, v) for k, v in meta.headers if k not in drop]
    return taken
