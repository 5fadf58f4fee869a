"""The fills in flight, and what each fetch holds when it ends.

One entry per slice being fetched (coalescing: every reader of a slice joins its fill).
A fetch's budget grant and origin response belong to its :class:`FetchHold`; when the
fetch task ends, however it ends, :meth:`InFlight.run_ended` (a done-callback: a task
cancelled before its first step never runs its own ``finally``) hands each complete
slice's share of the grant to the slice while readers still have to send it, and
releases the rest. Under budget pressure, fetches nobody reads and slices held for
readers that stopped reading give way.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field

from app.engine.budget import ByteBudget, FetchHold
from app.engine.fills import FillAbandoned, SliceFill, abandon_run


@dataclass
class InFlight:
    budget: ByteBudget
    fills: dict[str, SliceFill] = field(default_factory=dict)
    # Complete slices holding budget for readers that have not started sending them.
    _holding: weakref.WeakSet[SliceFill] = field(default_factory=weakref.WeakSet)
    # Origin responses of ended fetches being closed (a reference keeps the task alive).
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.budget.on_pressure = self.stop_unread_fills

    def joinable(self, key: str) -> SliceFill | None:
        """The fill of ``key`` if a reader may join it: not failed or abandoned (start
        afresh rather than inherit its error), not gone (the cache has its bytes)."""
        fill = self.fills.get(key)
        if fill is not None and (fill.error is not None or fill.gone):
            return None
        return fill

    def register(self, fills: list[SliceFill], task: asyncio.Task[None], store: bool) -> None:
        members = tuple(fills)
        for fill in fills:
            fill.run = members
            fill.task = task
            fill.stored = store
            self.fills[fill.key] = fill

    def run_ended(self, fills: list[SliceFill], hold: FetchHold) -> None:
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
            fill.retire()

    def stop_unread_fills(self) -> None:
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

    async def close(self) -> None:
        for fill in list(self.fills.values()):
            if fill.task is not None:
                fill.task.cancel()
        for fill in list(self.fills.values()):
            if fill.task is not None:
                with contextlib.suppress(BaseException):
                    await fill.task
