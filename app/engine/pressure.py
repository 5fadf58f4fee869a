"""Cache pressure an operator should hear about: L2 write-behind drops, evictions, errors.

The stores only count; this task compares their counters once per interval and logs one
warning per kind that moved (through :class:`RateLimitedLog`, so a slow interval never
repeats a line). Nothing is added to the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cache.ratelimit import RateLimitedLog
from cache.tiered import TieredStore

log = logging.getLogger("slicecache")

# (where, counter, event, what it means): store.counters first, then the L2's stats.
WATCHED = (
    (
        "tiered",
        "write_behind_dropped",
        "write_behind_dropped",
        "L2 write-behind queue full: {n} slices were not written to L2 (the disk is slower "
        "than the fills; raise SLICECACHE_WRITE_BEHIND_QUEUE_SIZE or use a faster disk)",
    ),
    ("tiered", "l2_errors", "l2_errors", "{n} L2 reads or writes failed"),
    (
        "l2",
        "evictions_total",
        "l2_evictions",
        "L2 full: {n} entries evicted to make room",
    ),
    (
        "l2",
        "no_space_total",
        "l2_no_space",
        "L2 full: {n} writes refused even after eviction",
    ),
)


class PressureWatch:
    def __init__(self, store: TieredStore, warnings: RateLimitedLog) -> None:
        self.store = store
        self.warnings = warnings
        self.seen: dict[str, float] = self._read()

    def _read(self) -> dict[str, float]:
        figures: dict[str, float] = {}
        l2 = self.store.l2.stats() if self.store.l2 is not None else {}
        for where, counter, _, _ in WATCHED:
            source = self.store.counters if where == "tiered" else l2
            if counter in source:
                figures[counter] = float(source[counter])
        return figures

    def check(self) -> None:
        """Log once for every watched count that grew since the previous check."""
        now = self._read()
        for _, counter, event, text in WATCHED:
            grown = now.get(counter, 0.0) - self.seen.get(counter, 0.0)
            if grown > 0:
                self.warnings.warning(event, text.format(n=int(grown)), count=int(grown))
        self.seen = now

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # a report must never stop the proxy
                self.check()
