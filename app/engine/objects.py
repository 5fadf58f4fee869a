"""The object directory: how a GET is served, by RFC 9111 (the facade of the directory).

:meth:`ObjectDirectory.open` answers "how do I serve this GET?": from the stored object
(fresh, or stale where allowed), after revalidating it, or from a new probe. The parts:

- :mod:`app.engine.probe_sharing`: concurrent requests share one probe; background
  revalidation (stale-while-revalidate);
- :mod:`app.engine.probe`: one probe (slice 0, or a revalidation) and what its answer
  means (checked by :mod:`app.engine.classify`, then stored, shared, or private);
- :mod:`app.engine.adoption`: what is remembered of each object, adoption of a new
  version, invalidation (change, purge);
- :mod:`app.engine.opening`: the answers (:class:`Opened`, :class:`Forward`,
  :class:`Refuse`).

The directory uses the engine (budget, fills, store epochs); the engine never calls the
directory: it reports an origin that ignores Range and a changed object through the two
callbacks the directory gives it here, at construction.

A response that may not be stored (``private``, ``no-store``, ``Vary: *``...) is served
to the request that fetched it under a key of its own, never shared with another client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from app.edge.headers import Headers
from app.engine.adoption import ObjectRecords, entry_key_for
from app.engine.objectmeta import ObjectMeta
from app.engine.opening import Forward as Forward
from app.engine.opening import ObjectRequest as ObjectRequest
from app.engine.opening import Opened as Opened
from app.engine.opening import Opening as Opening
from app.engine.opening import Refuse as Refuse
from app.engine.opening import forwarded
from app.engine.probe import Prober
from app.engine.probe_sharing import OTHER_VARIANT, SharedProbes
from app.engine.slicer import SliceEngine, SliceError
from app.httpcache.cache_status import CacheStatus
from app.httpcache.freshness import (
    FreshnessPolicy,
    Outcome,
    decide_prepared,
    on_miss,
)
from cache.protocol import CacheFront


@dataclass
class ObjectDirectory:
    engine: SliceEngine
    store: CacheFront | None
    policy: FreshnessPolicy
    records: ObjectRecords = field(init=False)
    probes: SharedProbes = field(init=False)

    def __post_init__(self) -> None:
        self.records = ObjectRecords(self.engine, self.store)
        self.probes = SharedProbes(Prober(self.engine, self.records, self.policy), self.records)
        # What the engine reports about an object comes here (it never imports us).
        self.engine.on_unsliceable = self.records.mark_unsliceable
        self.engine.on_object_changed = self.records.object_changed

    # --- lookup: the RFC 9111 decision ---------------------------------------------------

    async def open(self, request: ObjectRequest, *, again: bool = True) -> Opening:
        """How to serve this GET: from the stored object, after revalidating it, or from a
        new (shared) probe. ``again``: it may look once more when a probe it joined turned
        out to be another variant's."""
        object_key, request_headers = request.object_key, request.headers
        if self.records.is_unsliceable(object_key):
            return Forward("origin does not serve ranges of this object")
        entry_key, meta = await self._lookup(object_key, request_headers)
        in_store = True
        if meta is None:
            meta = self.records.unstored(entry_key)
            in_store = False
        if meta is None:
            if on_miss(request_headers) is not None:
                return Refuse(504, "only-if-cached: not in cache")
            result = await self.probes.probe(entry_key, request, None)
            if again and isinstance(result, Forward) and result.reason == OTHER_VARIANT:
                return await self.open(request, again=False)
            # Another variant of this URI is stored (RFC 9211 2.2: vary-miss).
            return forwarded(result, "vary-miss") if entry_key != object_key else result

        # Parsed once per stored response (ObjectMeta.freshness), not on every hit.
        now = time.time()
        decision = decide_prepared(meta.freshness(self.policy), request_headers, now)
        if decision.serve_stored:
            if decision.outcome is Outcome.FRESH:
                by_operator = decision.lifetime.source == "default"
                status = CacheStatus.fresh_hit(decision.ttl, "default-ttl" if by_operator else None)
            else:
                status = CacheStatus.stale_hit(decision.ttl, decision.reason)
            if decision.revalidate_in_background:
                self.probes.revalidate_in_background(entry_key, request)
            if not in_store:
                status = CacheStatus.bypass("too-large")
            return Opened(meta, entry_key, status, stored=in_store, decided_at=now)
        if decision.error_status is not None:
            return Refuse(decision.error_status, "only-if-cached: stored response is stale")

        try:
            result = forwarded(
                await self.probes.probe(entry_key, request, meta),
                # RFC 9211 2.2: the client's directives forced it, or what was stored was
                # stale (or no-cache): never a uri-miss, whatever the origin answered.
                "request" if decision.reason == "request" else "stale",
            )
        except (httpx.TransportError, SliceError):
            if decision.may_serve_on_error(time.time()):
                status = CacheStatus.stale_on_error(decision.ttl, None)
                return Opened(meta, entry_key, status, decided_at=now)
            raise
        if (
            isinstance(result, Forward)
            and result.response is not None
            and result.response.status_code >= 500
            and decision.may_serve_on_error(time.time())
        ):
            code = result.response.status_code
            await result.response.aclose()
            status = CacheStatus.stale_on_error(decision.ttl, code)
            return Opened(meta, entry_key, status, decided_at=now)
        return result

    async def _lookup(
        self, object_key: str, request_headers: Headers
    ) -> tuple[str, ObjectMeta | None]:
        """The entry key for this request (its Vary variant) and what is stored there."""
        base = await self.cached_meta(object_key)
        if base is None or not base.vary:
            return object_key, base
        entry_key = entry_key_for(object_key, base, request_headers)
        return entry_key, await self.cached_meta(entry_key)

    async def cached_meta(self, key: str) -> ObjectMeta | None:
        return await self.records.cached_meta(key)

    def in_flight(self) -> bool:
        """A probe or a background revalidation is running, or adopted metadata is still
        on its way to the store."""
        return self.probes.busy() or self.records.storing()

    # --- invalidation (purge, and what the engine reports) -------------------------------

    async def forget(self, object_key: str) -> int:
        """Drop the object, its variants and slices from every tier (change, purge, 4.4)."""
        return await self.records.forget(object_key)

    async def forget_prefix(self, prefix: str) -> int:
        return await self.records.forget_prefix(prefix)

    async def forget_all(self) -> int:
        return await self.records.forget_all()

    async def object_changed(self, entry_key: str, version: str) -> None:
        await self.records.object_changed(entry_key, version)

    def mark_unsliceable(self, object_key: str) -> None:
        self.records.mark_unsliceable(object_key)

    async def close(self) -> None:
        await self.probes.close()
        await self.records.close()
