"""In-flight slice fills: one origin fetch per slice, any number of readers tailing it.

A :class:`SliceFill` owns a buffer of exactly the slice's length. The fetch task appends
bytes as they arrive; readers follow behind it (read-while-write, the Varnish/Squid model),
so a client starts receiving a slice's first bytes long before the slice is complete, and
ten clients on one cold slice cost the origin one fetch. A fill that fails fails every
reader with the same error: a reader never mistakes a broken fill for the end of a slice.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

import httpx

from app.engine.budget import BudgetWaiter, ByteBudget
from app.engine.leasewriter import LEASE_HANDOVER
from app.pulse import Pulse
from cache.protocol import SliceData, SliceLease


class SliceOverflow(Exception):
    """The origin sent more bytes than the slice holds."""


class SliceStalled(httpx.ReadTimeout):
    """A reader waited longer than it may, in all, for the bytes of one slice (a 504, or an
    aborted response once bytes were sent)."""


class FillAbandoned(Exception):
    """Every reader left before the slice was complete; its fetch was stopped."""


class SliceGone(Exception):
    """The fill's bytes were let go once the cache held them; read the slice from the cache
    (raised before any byte of the slice was read)."""


# A slice's bytes: heap memory, not zeroed (see _unzeroed_allocator).
SliceBuffer = bytearray


# Why the heap: glibc reuses the memory of slices L1 let go (after the first free of a
# 1 MiB chunk it serves such sizes from the heap), so a slice usually costs no page fault.
# A mapping per slice cost a page fault and a kernel zeroing per 4 KiB page, and on this
# VM a host fault whenever the freed memory had gone back to the host (free page
# reporting): a cold 400 MiB miss fell from 2.7-4.4 to 1.8-1.9 CPU-s per GB
# (bench.cold_miss --mib 400, A/B twice).
# Why not zeroed: nothing reads a slice's bytes before the socket wrote them, and
# ``bytearray(n)`` zeroes all of it first: 1 MiB of evicted, cache-cold heap per slice
# (~2 % of a cold miss's CPU under perf), and, where glibc had to grow the heap, a fault
# per page before the first byte could land (1-3 ms before a cold GET's first byte, which
# is why slice 0 used to get a mapping of its own: 3888e4d). Unzeroed, the pages of fresh
# memory fault in as the socket fills them, whatever the slice.
# Freed, such heap memory stays with the process: app/engine/heaptrim.py hands it back
# once the engine is idle, when this count moved since its last pass.
heap_slice_bytes = 0


def _unzeroed_allocator() -> Callable[[int], bytearray]:
    """``bytearray(n)`` without the memset (why: above): CPython's
    ``PyByteArray_FromStringAndSize(NULL, n)`` leaves the bytes as malloc returned them.
    Safe because nothing reads a fill past ``filled`` (its readers, a retry's recheck) and
    only a complete slice is stored. ``bytearray`` where the C API is not reachable."""
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (AttributeError, OSError):
        return bytearray
    make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    make.restype = ctypes.py_object  # a new reference: ctypes takes it over, no leak

    def unzeroed(length: int) -> bytearray:
        return make(None, length)  # type: ignore[no-any-return]

    return unzeroed


unzeroed_bytearray = _unzeroed_allocator()


def slice_buffer(length: int) -> SliceBuffer:
    global heap_slice_bytes
    heap_slice_bytes += length
    return unzeroed_bytearray(length)


class SliceFill:
    def __init__(self, key: str, first: int, last: int) -> None:
        self.key = key
        self.first = first  # absolute offsets in the object, inclusive
        self.last = last
        self._length = last - first + 1
        # Allocated with the first byte, so a fill waiting for the byte budget costs nothing.
        self.buffer: SliceBuffer = bytearray()
        self.filled = 0
        self.done = False
        self.error: BaseException | None = None
        self._error_traceback: TracebackType | None = None
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        # The slices one origin request is filling, while it runs. Emptied when it ends:
        # fills referring to each other would otherwise be freed only by the cycle GC,
        # holding megabytes of buffers long after the last reader.
        self.run: tuple[SliceFill, ...] = ()
        self.stored = True  # its bytes go to the cache when complete
        # Budget this complete slice still holds for readers that have not sent it yet:
        # bytes held for a client count against the budget until sent (see release_held).
        self.held = 0
        self.budget: ByteBudget | None = None
        # ``gone``: its bytes were let go under budget pressure while nobody sent them;
        # readers that reach it later claim the slice again. A client that reads nothing
        # then holds at most the slice it is sending, not its fetch-ahead.
        self.gone = False
        self._sending = 0
        # The budget request of this fill's run while it waits for its grant.
        self.ticket: BudgetWaiter | None = None
        self._progress = Pulse()
        self.retired = False  # its fetch ended and it left the fills in flight

    @property
    def length(self) -> int:
        return self._length

    def release_held(self) -> None:
        held, self.held = self.held, 0
        if held and self.budget is not None:
            self.budget.release(held)

    @property
    def sending(self) -> int:
        """Readers sending this slice's bytes right now."""
        return self._sending

    def let_go(self) -> None:
        """Drop the complete slice's bytes and budget while nobody sends them: readers that
        reach it later get :class:`SliceGone` and claim the slice again (from the cache, or
        from the origin, pinned to the version)."""
        if self.done and self.error is None and self._sending == 0:
            self.gone = True
            self.buffer = bytearray()
            self.release_held()

    def append(self, chunk: bytes | memoryview) -> None:
        end = self.filled + len(chunk)
        if end > self._length:
            raise SliceOverflow(f"slice {self.key!r} got {end} of {self._length} bytes")
        self._allocated()[self.filled : end] = chunk
        self.filled = end
        self._wake()

    def room(self) -> memoryview:
        """The slice's unfilled rest, for bytes read straight into it (then :meth:`advance`)."""
        return memoryview(self._allocated())[self.filled :]

    def _allocated(self) -> SliceBuffer:
        if not self.buffer:
            self.buffer = slice_buffer(self._length)
        return self.buffer

    def advance(self, count: int) -> None:
        """``count`` more bytes were read into :meth:`room`."""
        self.filled += count
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            # Where it was raised; every reader re-raises it from there, so the one error
            # object does not collect the frames of every reader it was raised to.
            self._error_traceback = error.__traceback__
            self.done = True
            self._wake()

    def _wake(self) -> None:
        self._progress.fire()

    def retire(self) -> None:
        """Its fetch ended and it left the fills in flight; forgotten with its last reader."""
        self.retired = True
        if self.readers == 0:
            self.forget()

    def forget(self) -> None:
        """Nobody reads it again: drop what would keep slice memory in a reference cycle
        (fill, task or error, traceback, frame, fill; app/engine/heaptrim.py says why):
        a failed fill's bytes. A complete fill keeps them: the cache holds them anyway, and
        a probe's slice 0 is handed to its response after its fetch ended (``first_fill``)."""
        if self.error is not None:
            self.buffer = bytearray()
            self.error.__traceback__ = None
        self.task = None
        self._error_traceback = None

    async def read(
        self, lo: int, hi: int, patience: float | None = None
    ) -> AsyncIterator[memoryview]:
        """Bytes ``lo..hi-1`` of the slice as they arrive; raises the fill's error if it fails.

        ``patience``: seconds this reader may spend waiting for bytes in all (retries of
        the fetch included), then :class:`SliceStalled`. Time the reader spends elsewhere
        (sending to its client) does not count.
        """
        if self.gone:
            raise SliceGone(self.key)
        self._sending += 1
        # The slice a reader is sending is the per-connection constant of memory, not the
        # budget's: clients that read nothing cannot pin the budget with it.
        self.release_held()
        try:
            async for piece in self._read(lo, hi, patience):
                yield piece
        finally:
            self._sending -= 1

    async def _read(
        self, lo: int, hi: int, patience: float | None = None
    ) -> AsyncIterator[memoryview]:
        loop = asyncio.get_running_loop()
        position = lo
        while position < hi:
            if self.filled > position:
                end = min(self.filled, hi)
                # The buffer exists once a byte arrived and never moves after that.
                yield memoryview(self.buffer)[position:end]
                position = end
                continue
            if self.error is not None:
                raise self.error.with_traceback(self._error_traceback)
            if self.done:
                raise RuntimeError(f"fill of {self.key!r} ended at {self.filled}/{self.length}")
            if self.ticket is not None:
                self.ticket.promote()  # a reader waits for it now: no longer fetch-ahead
            if patience is None:
                await self._progress.wait()
                continue
            if patience <= 0:
                raise SliceStalled(f"no bytes of {self.key!r} in time")
            started = loop.time()
            if not await self._progress.wait(patience):
                raise SliceStalled(f"no bytes of {self.key!r} in time")
            patience -= loop.time() - started


@dataclass(slots=True)
class SliceClaim:
    """A response's hold on one slice: stored bytes, or a fill it reads from."""

    data: SliceData | None = None
    fill: SliceFill | None = None
    released: bool = False
    # A store's lease on ``data`` (an L2 extent read without a copy): released with the
    # claim, i.e. once the response has written the slice out or ended.
    lease: SliceLease | None = None

    async def read(
        self, lo: int, hi: int, patience: float | None = None
    ) -> AsyncIterator[SliceData]:
        if self.data is not None:
            yield memoryview(self.data)[lo:hi]
            return
        assert self.fill is not None
        async for piece in self.fill.read(lo, hi, patience):
            yield piece

    def release(self, *, abandon: bool) -> None:
        """Drop the hold.

        ``abandon=False``: the reader got its bytes. A fill that will be stored runs on to
        the end (a small range of a cold slice still caches the slice, as nginx does); one
        that will not is stopped when nobody else reads it. ``abandon=True``: the client
        left or failed; the origin fetch is stopped if nobody else waits for any unfinished
        slice of it.
        """
        if self.released:
            return
        self.released = True
        if self.lease is not None:
            # The response writing it may still have bytes of it in its transport.
            writer = LEASE_HANDOVER.get()
            if writer is not None:
                writer.take(self.lease)
            else:
                self.lease.release()
        fill = self.fill
        if fill is None:
            return
        fill.readers -= 1
        if fill.readers == 0 and fill.done:
            fill.release_held()  # its last reader has sent (or dropped) the bytes
            if fill.retired:
                fill.forget()
        if not abandon and fill.stored:
            return
        # One request fills the whole run: stop it only when nobody waits for any slice of
        # it that is still unfinished.
        run = fill.run or (fill,)
        if fill.task is None or not all(f.readers == 0 or f.done for f in run):
            return
        if all(f.done for f in run):
            return
        abandon_run(fill)


def abandon_run(fill: SliceFill) -> None:
    """Stop the origin fetch of ``fill``'s run; failed at once, so that nobody joins a fill
    whose cancellation is pending."""
    for member in fill.run or (fill,):
        member.fail(FillAbandoned(f"fetch of {member.key!r} abandoned"))
    if fill.task is not None:
        fill.task.cancel()
