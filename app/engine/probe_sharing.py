"""Concurrent requests for one unknown (or stale) object share one probe.

The first request starts the probe in a task of its own (a client that leaves does not
cancel it for the others) and every later one waits for its result: the same
:class:`Opened` if the answer is shareable and selects the same variant, else a
pass-through. An origin answer to relay belongs to the request that started the probe
only; if that request left, it is closed. Background revalidations (stale-while-
revalidate) are probes too, one at a time per entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field

from app.engine.adoption import ObjectRecords, entry_key_for
from app.engine.objectmeta import ObjectMeta
from app.engine.opening import Forward, ObjectRequest, Opened
from app.engine.probe import Prober, ProbeRun

log = logging.getLogger("slicecache.objects")

# A joiner's answer when the shared probe found a Vary that selects another variant for
# it: the directory looks again, now knowing what the object varies on (its own variant
# is probed and stored, not passed through).
OTHER_VARIANT = "the shared origin answer is another variant"


@dataclass
class SharedProbes:
    prober: Prober
    records: ObjectRecords
    _probes: dict[str, ProbeRun] = field(default_factory=dict)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def busy(self) -> bool:
        """A probe or a background revalidation is running."""
        return bool(self._probes or self._background)

    async def probe(
        self, probe_key: str, request: ObjectRequest, stored: ObjectMeta | None
    ) -> Opened | Forward:
        probe = self._probes.get(probe_key)
        if probe is not None:
            result = await probe.join()
            if isinstance(result, Opened) and result.shareable:
                variant = entry_key_for(request.object_key, result.meta, request.headers)
                if variant == result.entry_key:
                    status = dataclasses.replace(result.status, collapsed=True)
                    return dataclasses.replace(result, probed=False, status=status, cookies=[])
                return Forward(OTHER_VARIANT)
            return Forward("the shared origin answer is not reusable for this request")
        loop = asyncio.get_running_loop()
        probe = ProbeRun(loop.create_future())
        self._probes[probe_key] = probe
        task = loop.create_task(self._run(probe, request, stored))
        task.add_done_callback(lambda _: self._probes.pop(probe_key, None))
        try:
            result = await probe.join()
        except asyncio.CancelledError:
            task.add_done_callback(lambda _: self._drop_relay(probe))
            raise
        if isinstance(result, Forward) and probe.relay is not None:
            relay, probe.relay = probe.relay, None
            return Forward(result.reason, relay)
        return result

    def revalidate_in_background(self, entry_key: str, request: ObjectRequest) -> None:
        if entry_key in self._probes:
            return  # one refresh at a time

        async def refresh() -> None:
            meta = await self.records.cached_meta(entry_key)
            try:
                result = await self.probe(entry_key, request, meta)
            except Exception as error:
                log.info("background revalidation failed", extra={"fields": {"error": str(error)}})
                return
            if isinstance(result, Forward) and result.response is not None:
                await result.response.aclose()

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _drop_relay(self, probe: ProbeRun) -> None:
        if probe.relay is not None:
            relay, probe.relay = probe.relay, None
            closing = asyncio.get_running_loop().create_task(relay.aclose())
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)

    async def _run(
        self, probe: ProbeRun, request: ObjectRequest, stored: ObjectMeta | None
    ) -> None:
        try:
            result = await self.prober.probe(probe, request, stored)
        except BaseException as error:
            probe.settle(None, error)
            if not isinstance(error, Exception):
                raise
            return
        probe.settle(result, None)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
