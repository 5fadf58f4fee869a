"""In-flight fills and the byte budget: readers tail a fill, errors reach every reader."""

from __future__ import annotations

import asyncio
import sys

import pytest

from app.engine.budget import ByteBudget
from app.engine.fills import (
    FillAbandoned,
    SliceClaim,
    SliceFill,
    SliceOverflow,
    unzeroed_bytearray,
)


async def collect(fill: SliceFill, lo: int, hi: int) -> bytes:
    return b"".join([bytes(piece) async for piece in fill.read(lo, hi)])


async def test_readers_tail_the_fill_while_it_grows() -> None:
    fill = SliceFill("k", 0, 9)
    early = asyncio.create_task(collect(fill, 0, 10))
    middle = asyncio.create_task(collect(fill, 3, 7))
    await asyncio.sleep(0)
    fill.append(b"0123")
    await asyncio.sleep(0)
    assert not early.done()
    fill.append(b"456789")
    fill.finish()
    assert await early == b"0123456789"
    assert await middle == b"3456"


async def test_a_failed_fill_is_an_error_for_every_reader_never_eof() -> None:
    fill = SliceFill("k", 0, 9)
    readers = [asyncio.create_task(collect(fill, 0, 10)) for _ in range(3)]
    await asyncio.sleep(0)
    fill.append(b"01")
    fill.fail(ConnectionResetError("origin reset"))
    for reader in readers:
        with pytest.raises(ConnectionResetError):
            await reader


async def test_a_fill_that_ends_short_is_an_error() -> None:
    fill = SliceFill("k", 0, 9)
    fill.append(b"0123")
    fill.finish()
    with pytest.raises(RuntimeError):
        await collect(fill, 0, 10)
    assert await collect(fill, 0, 4) == b"0123"


def test_overflow_is_refused() -> None:
    fill = SliceFill("k", 10, 13)
    with pytest.raises(SliceOverflow):
        fill.append(b"12345")


async def test_abandoning_the_last_claim_cancels_the_fetch() -> None:
    fill = SliceFill("k", 0, 9)
    fill.task = asyncio.create_task(asyncio.sleep(60))
    first, second = SliceClaim(fill=fill), SliceClaim(fill=fill)
    fill.readers = 2
    first.release(abandon=True)
    first.release(abandon=True)  # twice is once
    await asyncio.sleep(0)
    assert not fill.task.cancelled()
    second.release(abandon=True)
    assert isinstance(fill.error, FillAbandoned)  # nobody can join it any more
    with pytest.raises(asyncio.CancelledError):
        await fill.task


async def test_a_stored_fill_outlives_readers_that_got_their_bytes() -> None:
    fill = SliceFill("k", 0, 9)
    fill.task = asyncio.create_task(asyncio.sleep(60))
    claim = SliceClaim(fill=fill)
    fill.readers = 1
    claim.release(abandon=False)  # a small range: the slice is still fetched and cached
    await asyncio.sleep(0)
    assert not fill.task.cancelled() and fill.error is None
    fill.task.cancel()


async def test_an_unstored_fill_stops_when_its_last_reader_is_done() -> None:
    fill = SliceFill("k", 0, 9)
    fill.stored = False
    fill.task = asyncio.create_task(asyncio.sleep(60))
    claim = SliceClaim(fill=fill)
    fill.readers = 1
    claim.release(abandon=False)
    with pytest.raises(asyncio.CancelledError):
        await fill.task


async def test_byte_budget_grants_in_order_and_never_over_capacity() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    waiter_a = asyncio.create_task(budget.acquire(50))
    waiter_b = asyncio.create_task(budget.acquire(10))
    await asyncio.sleep(0)
    assert not waiter_a.done() and not waiter_b.done()  # b waits behind a: no starvation
    budget.release(60)
    await asyncio.gather(waiter_a, waiter_b)
    assert budget.in_use == 60
    budget.release(50)
    budget.release(10)
    assert budget.in_use == 0


async def test_cancelled_budget_waiter_gives_nothing_away() -> None:
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(10)
    assert budget.in_use == 0
    await budget.acquire(1000)  # bigger than the budget: runs alone
    assert budget.in_use == 10


async def test_a_waiter_cancelled_then_granted_away_raises_cancelled_not_valueerror() -> None:
    # The waiter's future is cancelled, then a release pops it from the queue before its
    # task resumes: acquire() must still end with CancelledError (a 504), not ValueError.
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    budget.release(10)  # pops the cancelled waiter before its task runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0
    await budget.acquire(10)
    assert budget.in_use == 10


async def test_a_grant_that_races_a_cancel_is_given_back() -> None:
    """A waiter granted by ``release`` and cancelled before it resumes must return the grant,
    or the budget leaks those bytes for good (every later fill waits on them)."""
    budget = ByteBudget(100)
    await budget.acquire(100)
    waiter = asyncio.create_task(budget.acquire(60))
    await asyncio.sleep(0)  # one loop step: the task runs up to its wait (no clock involved)
    assert len(budget._waiters) == 1
    budget.release(100)  # grants the waiter: its future is done, the task not resumed yet
    assert budget.in_use == 60
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0
    await budget.acquire(100)  # the whole budget is usable again
    assert budget.in_use == 100


async def test_each_reader_of_a_failed_fill_gets_the_error_with_its_own_frames_only() -> None:
    """The fill's one error is raised to every reader: without care each raise appends the
    reader's frames to the same traceback, so the N-th reader's error holds (and logs)
    the frames of all N, and keeps their locals alive."""

    async def depth_seen() -> int:
        try:
            await collect(fill, 0, 10)
        except SliceOverflow as error:
            depth, tb = 0, error.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            return depth
        raise AssertionError("no error")

    fill = SliceFill("k", 0, 9)
    fill.fail(SliceOverflow("origin sent more"))
    depths = [await depth_seen() for _ in range(5)]
    assert depths[-1] == depths[0], depths


def test_unzeroed_slice_memory_is_a_plain_bytearray_that_is_freed() -> None:
    buffer = unzeroed_bytearray(1 << 20)
    assert type(buffer) is bytearray and len(buffer) == 1 << 20
    buffer[:3] = b"abc"
    buffer[-1] = 7
    assert buffer[:3] == b"abc" and buffer[-1] == 7
    # One reference (ours, plus getrefcount's argument): ctypes kept none, so it is freed.
    assert sys.getrefcount(buffer) == 2
    assert unzeroed_bytearray(0) == bytearray()


async def test_a_heap_slice_is_read_only_as_far_as_it_was_filled() -> None:
    # Heap slices are not zeroed (slice_buffer): leave stale bytes where one may land.
    for _ in range(8):
        stale = bytearray(b"\xaa" * (1 << 20))
        del stale
    fill = SliceFill("k", 1 << 20, (2 << 20) - 1)  # not slice 0: a heap buffer
    reader = asyncio.create_task(collect(fill, 0, 1 << 20))
    await asyncio.sleep(0)
    fill.append(b"x" * 1000)
    fill.fail(ConnectionResetError("origin reset"))
    with pytest.raises(ConnectionResetError):
        await reader
    assert isinstance(fill.buffer, bytearray)
    assert await collect_until_error(fill, 0, 1 << 20) == b"x" * 1000


async def collect_until_error(fill: SliceFill, lo: int, hi: int) -> bytes:
    pieces: list[bytes] = []
    with pytest.raises(ConnectionResetError):
        async for piece in fill.read(lo, hi):
            pieces.append(bytes(piece))
    return b"".join(pieces)
