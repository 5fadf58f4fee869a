"""One probe: the origin request for slice 0 of an object, and what its answer means.

A probe is one ``Range: bytes=0-(S-1)`` request whose answer carries the size and
validators and is itself slice 0; a revalidation is the same request with the stored
validators, so a 304 refreshes the headers and keeps every slice. The answer is checked
by :func:`app.engine.classify.classify` (the same checks as every slice fetch); then
RFC 9111 decides whether it is stored, shared in flight only, or this client's alone.

Ownership: slice 0's budget grant and the origin's answer belong to one
:class:`FetchHold` from the moment the grant is taken. It goes whole to slice 0's fill
(:meth:`SliceEngine.start_fill`) or, as the response to relay, to the request that
started the probe; whatever is still in it when the probe ends is released, on every path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.edge.headers import Headers, decode_raw, shared_fill_headers
from app.engine.adoption import ObjectRecords, entry_key_for, meta_from, withheld
from app.engine.budget import FetchHold
from app.engine.classify import (
    Answer,
    Invalid,
    Sliceable,
    Unpinnable,
    Unsized,
    WholeBody,
    classify,
)
from app.engine.objectmeta import ObjectMeta
from app.engine.opening import Forward, ObjectRequest, Opened
from app.engine.slicer import SliceEngine
from app.engine.unframed import peek_small_body
from app.httpcache.cache_status import CacheStatus
from app.httpcache.conditional import (
    merge_304_headers,
    not_modified_matches,
    validators_for_revalidation,
)
from app.httpcache.freshness import FreshnessPolicy, StoredResponseInfo, decide
from app.httpcache.storable import storability
from cache import keys


@dataclass(slots=True)
class ProbeRun:
    """One probe in flight, shared by every request that waits for it.

    Each request waits on a future of its own (:meth:`join`), settled with the probe's
    outcome directly (:meth:`settle`): its cancellation cancels only that future, never
    the probe, and the outcome reaches it in one turn of the loop (``asyncio.shield``'s
    relay took two, a millisecond of a cold response's first byte while the first
    slice's bytes were being read).
    """

    future: asyncio.Future[Opened | Forward]
    relay: httpx.Response | None = None  # for the request that started the probe only
    waiters: list[asyncio.Future[Opened | Forward]] = field(default_factory=list)

    def join(self) -> asyncio.Future[Opened | Forward]:
        waiter: asyncio.Future[Opened | Forward] = asyncio.get_running_loop().create_future()
        if self.future.done():
            _copy_outcome(self.future, waiter)
        else:
            self.waiters.append(waiter)
        return waiter

    def settle(self, result: Opened | Forward | None, error: BaseException | None) -> None:
        """The probe's outcome, to ``future`` and every waiter still waiting."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
            self.future.exception()  # marked retrieved: each waiter re-raises it
        else:
            assert result is not None
            self.future.set_result(result)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            _copy_outcome(self.future, waiter)


def _copy_outcome(source: asyncio.Future[Opened | Forward], waiter: asyncio.Future[Any]) -> None:
    if waiter.done():  # its request was cancelled
        return
    error = source.exception()
    if error is not None:
        waiter.set_exception(error)
        waiter.exception()  # its request re-raises it when it runs, if it still does
    else:
        waiter.set_result(source.result())


@dataclass
class Prober:
    engine: SliceEngine
    records: ObjectRecords
    policy: FreshnessPolicy

    async def probe(
        self, run: ProbeRun, request: ObjectRequest, stored: ObjectMeta | None
    ) -> Opened | Forward:
        """Ask the origin for slice 0 (conditionally on ``stored``'s validators, if any)."""
        engine = self.engine
        headers = engine.slice_request_headers(
            request.origin_headers, 0, engine.slice_size - 1, None
        )
        if stored is not None:
            headers += validators_for_revalidation(stored.headers)
        hold = await engine.first_slice_hold()
        try:
            return await self._ask(run, hold, request, stored, headers)
        finally:
            # Whatever was not handed on (to slice 0's fill, or as the relay) ends here.
            hold.release_budget()
            await hold.close()

    async def _ask(
        self,
        run: ProbeRun,
        hold: FetchHold,
        request: ObjectRequest,
        stored: ObjectMeta | None,
        headers: Headers,
    ) -> Opened | Forward:
        engine = self.engine
        request_time = time.time()
        # The purge epoch of this origin request: every write of what it brings (metadata,
        # slice 0) carries it, so a purge after this instant is never undone by them.
        epoch = engine.store_epoch()
        response = hold.response = await engine.upstream.send(
            "GET", request.target, headers, direct=True
        )
        response_time = time.time()
        response_headers = decode_raw(response.headers.raw)
        if response.status_code == 304 and stored is not None:
            await hold.close()
            if not not_modified_matches(stored.headers, response_headers):
                # Not the response we hold: fetch it plainly (same budget grant).
                plain = engine.slice_request_headers(
                    request.origin_headers, 0, engine.slice_size - 1, None
                )
                return await self._ask(run, hold, request, None, plain)
            meta = dataclasses.replace(
                stored,
                headers=merge_304_headers(stored.headers, response_headers),
                request_time=request_time,
                response_time=response_time,
            )
            # Where the stored slices are: the key of the response as it was stored (the
            # 304 may add a Vary that would name another entry).
            stored_key = entry_key_for(request.object_key, stored, request.headers)
            return await self._revalidated(request, meta, stored_key, epoch)
        return await self._answered(
            run, hold, request, response_headers, request_time, response_time, epoch
        )

    async def _revalidated(
        self, request: ObjectRequest, meta: ObjectMeta, stored_key: str, epoch: int
    ) -> Opened:
        """A 304 for the stored response: ``meta`` with its headers refreshed."""
        object_key, records = request.object_key, self.records
        info = StoredResponseInfo(meta.status, meta.headers, meta.request_time, meta.response_time)
        now = time.time()
        ttl = decide(info, [], now, policy=self.policy).ttl
        # The 304's fields may have made the response private or no-store: the stored
        # copy goes, and this answer is this client's alone (RFC 9111 4.3.4, 3). Only
        # the response decides here: this client's Authorization or no-store concerns
        # its own request, not the copy everybody shares.
        decision = storability(
            "GET", meta.status, [], meta.headers, targeted=self.policy.targeted_fields
        )
        taken = withheld(meta, decision.headers_to_strip)
        if not decision.store:
            # The body is the stored one (RFC 9111 4.3.4): this response reads the stored
            # slices, which go with the rest of the object once it has ended. Forgotten
            # first, they would be fetched again, unconditionally.
            return Opened(
                meta,
                stored_key,
                CacheStatus.revalidated(ttl),
                shareable=False,
                stored=False,
                cookies=taken,
                decided_at=now,
                after=functools.partial(records.forget, object_key),
            )
        if self.engine.purged_since(epoch, object_key):
            # Purged while we revalidated: serve this once, store nothing.
            private = keys.private_key(object_key)
            return Opened(
                meta,
                private,
                CacheStatus.revalidated(ttl),
                shareable=False,
                stored=False,
                decided_at=now,
            )
        if records.too_large(meta.size):
            entry_key = records.share_unstored(object_key, meta, request.headers)
            return Opened(
                meta, entry_key, CacheStatus.revalidated(ttl), stored=False, decided_at=now
            )
        entry_key = await records.adopt(object_key, meta, request.headers, epoch)
        return Opened(meta, entry_key, CacheStatus.revalidated(ttl), decided_at=now)

    async def _answered(
        self,
        run: ProbeRun,
        hold: FetchHold,
        request: ObjectRequest,
        response_headers: Headers,
        request_time: float,
        response_time: float,
        epoch: int,
    ) -> Opened | Forward:
        """Any answer but a matching 304: slice 0 of an object, a whole small body, or a
        response that is relayed or passed through as it is."""
        engine, records = self.engine, self.records
        object_key, request_headers = request.object_key, request.headers
        response = hold.response
        assert response is not None
        status = response.status_code
        size: int | None = None
        whole = False
        verdict = classify(
            Answer.of_headers(status, response_headers), 0, engine.slice_size - 1, None
        )
        if isinstance(verdict, Invalid):
            # The origin's ranges cannot be trusted: the request passes through whole.
            await hold.close()
            records.mark_unsliceable(object_key)
            return Forward(f"origin answered the first slice wrongly: {verdict.reason}")
        if isinstance(verdict, Unpinnable):
            # Without a strong validator two versions could be spliced: never sliced.
            await hold.close()
            return Forward(verdict.reason)
        if isinstance(verdict, Sliceable):
            size = verdict.size
        elif isinstance(verdict, WholeBody):
            # A status other than 200 only if it may be stored at all (301, 404, 410...).
            if status == 200 or storability(
                "GET",
                status,
                request_headers,
                response_headers,
                targeted=self.policy.targeted_fields,
            ):
                size, whole = verdict.size, True
        elif isinstance(verdict, Unsized):
            hold.response, body_size = await peek_small_body(response, engine.slice_size)
            if body_size is not None:
                size, whole = body_size, True
        if size is None:
            if status == 416:
                await hold.close()  # passed through, not relayed
            # The request that started the probe relays the answer: it owns it now.
            run.relay, hold.response = hold.response, None
            if status == 200:
                records.mark_unsliceable(object_key)
                return Forward("origin ignores Range for this object")
            return Forward(f"origin answered {status}")

        meta = meta_from(response_headers, size, request_time, response_time, whole)
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
        taken = withheld(meta, decision.headers_to_strip)
        if decision.store and engine.purged_since(epoch, object_key):
            decision = dataclasses.replace(decision, store=False, reason="purged")
        # Public content may be shared in flight even when it is not stored.
        shareable = decision.store
        if decision.store and records.too_large(size):
            # It would only evict itself (and everything else) on the way through.
            decision = dataclasses.replace(decision, store=False, reason="too-large")
        if decision.store:
            entry_key = await records.adopt(object_key, meta, request_headers, epoch)
            cache_status = CacheStatus.miss(fwd_status=status, stored=True)
        elif shareable:
            entry_key = records.share_unstored(object_key, meta, request_headers)
            cache_status = CacheStatus.bypass(decision.reason)
        else:
            entry_key = keys.private_key(object_key)
            cache_status = CacheStatus.bypass(decision.reason)
        first_fill = None
        if size > 0:
            first_fill = engine.start_fill(
                keys.slice_key(entry_key, meta.version, 0),
                (0, min(engine.slice_size, size) - 1),
                request.target,
                meta,
                # Its retries are shared fetches: they carry nothing of this client's.
                shared_fill_headers(request.origin_headers, meta.vary)
                if shareable
                else request.origin_headers,
                store=decision.store,
                epoch=epoch,
                hold=hold,  # slice 0's grant and the answer go to its fill, whole
            )
        return Opened(
            meta,
            entry_key,
            cache_status,
            probed=True,
            shareable=shareable,
            stored=decision.store,
            first_fill=first_fill,
            cookies=[(k, v) for k, v in response_headers if k == "set-cookie"] + taken,
        )
