"""Freed slice memory goes back to the system once the engine is idle.

Slice buffers are heap memory (app/engine/fills.py says why). glibc keeps what is freed
in the middle of its heap for the next allocation, so after a burst of cold misses the
process held its peak (~500 MiB of anonymous memory with the default settings, against
~100 MiB when slices were mappings: helper-59) until the next burst reused it. Every
``interval`` seconds this task checks whether anything changed since its last pass
(slice buffers allocated, or the bytes L1 holds) while nothing is in flight (no fill, no
byte of the budget in use); then it collects reference cycles and ``malloc_trim(0)``
returns the free pages of the heap.

Why collect: a burst leaves fills, frames and tracebacks in cycles that still hold
slice buffers, and an idle process allocates nothing, so CPython's collector never ran:
helper-60 found 95 MiB of slices held that way with L1 empty. Why L1's bytes: a PURGE,
an expiry or an eviction frees slices without allocating any. The collection runs on
the loop (it must); the trim runs in a worker thread: on this VM it took 27 ms for
400 MiB of freed chunks. Where the C library has no ``malloc_trim`` (musl), only the
collection runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

from app.engine import fills
from app.engine.slicer import SliceEngine

log = logging.getLogger("slicecache")

HEAP_TRIM_INTERVAL_SECONDS = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    with contextlib.suppress(OSError):
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
        if trim is not None:
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            return trim  # type: ignore[no-any-return]
    return None


class HeapTrim:
    def __init__(self, engine: SliceEngine, held: Callable[[], int] = lambda: 0) -> None:
        self.engine = engine
        self.held = held  # the bytes L1 holds now
        self.trim = _malloc_trim()
        self.seen = self._state()  # what the last pass saw
        self.passes = 0

    def _state(self) -> tuple[int, int]:
        return fills.heap_slice_bytes, self.held()

    def due(self) -> bool:
        engine = self.engine
        return self._state() != self.seen and engine.budget.in_use == 0 and not engine.fills

    async def pass_once(self) -> None:
        if not self.due():
            return
        self.seen = self._state()
        gc.collect()
        if self.trim is not None:
            await asyncio.to_thread(self.trim, 0)
        self.passes += 1

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.pass_once()
            except Exception:  # returning memory is an economy: never stop the proxy for it
                log.exception("heap trim failed")
