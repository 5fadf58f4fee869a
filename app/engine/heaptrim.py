"""Freed slice memory goes back to the system once the engine is idle.

Slice buffers are heap memory (app/engine/fills.py says why). glibc keeps what is freed
in the middle of its heap for the next allocation, so after a burst of cold misses the
process held its peak (~500 MiB of anonymous memory with the default settings, against
~100 MiB when slices were mappings: helper-59) until the next burst reused it. Every
``interval`` seconds this task checks whether anything changed since its last pass
(slice buffers allocated, or the bytes L1 holds) while nothing is in flight (no fill, no
byte of the budget in use), or while only a trickle is (``_due``); then it collects the
young generations of reference cycles and ``malloc_trim(0)`` returns the free pages of
the heap.

Why the young generations only: a full collection walks every object L1 holds, and it
runs on the loop: with a full L1 that stalled every request for 100-500 ms, every time
L1 changed (helper-61). A burst's cycles that reached the old generation no longer hold
slice memory (a census found ~200 MiB in them after a burst of origin resets and client
disconnects): a fill its fetch and readers are done with drops its task and its error's
frames, and its buffer if it failed (``SliceFill.forget``); a closed origin connection
drops its scratch buffer. tests/test_heaptrim.py checks that such a burst leaves none.
Why L1's bytes: a PURGE, an expiry or an eviction frees slices without allocating any.
The trim runs in a worker thread: on this VM it took 27 ms for 400 MiB of freed chunks.
Where the C library has no ``malloc_trim`` (musl), only the collection runs.
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
YOUNG_GENERATIONS = 1  # gc.collect(1): generations 0 and 1, never the oldest
# While something is in flight, a pass runs once a burst is over: at most this many slice
# bytes allocated in the last interval (a slow download, a trickle of cold ranges)...
QUIET_SLICE_BYTES = 16 << 20
# ... after at least this many since the last pass (a burst freed what it allocated).
BUSY_TRIM_SLICE_BYTES = 64 << 20


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
        self.checked = fills.heap_slice_bytes  # allocated as of the last check
        self.busy_pass = False  # the last pass ran while slices were in flight
        self.passes = 0

    def _state(self) -> tuple[int, int]:
        return fills.heap_slice_bytes, self.held()

    def _due(self, idle: bool) -> bool:
        """Something changed since the last pass, and the engine is idle, or busy with a
        trickle after a burst: one slow download must not keep the heap at the burst's
        peak until it ends (helper-61: 270-300 MiB against 140). Never while a burst
        runs: it would fault back in what the trim gave away."""
        state = self._state()
        recent, self.checked = state[0] - self.checked, state[0]
        if idle:
            # What was in flight at a busy pass is free now, with nothing allocated since
            # (helper-62: 36-50 MiB stayed until the next burst).
            return state != self.seen or self.busy_pass
        if state == self.seen:
            return False
        return recent <= QUIET_SLICE_BYTES and state[0] - self.seen[0] >= BUSY_TRIM_SLICE_BYTES

    def _idle(self) -> bool:
        return self.engine.budget.in_use == 0 and not self.engine.fills

    async def pass_once(self) -> None:
        idle = self._idle()
        if not self._due(idle):
            return
        self.seen = self._state()
        self.busy_pass = not idle
        gc.collect(YOUNG_GENERATIONS)
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
