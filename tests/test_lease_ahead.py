"""An L2 hit reads the next slice's lease while the current slice is written
(``SliceEngine.stream``: ``leasing``), so the worker thread's read overlaps the socket's
drain. The lease asked for ahead has one owner whatever happens: used by the next claim,
or released when the response ends first, is cut while it waits, or the slice turns out
to be in flight elsewhere."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.context import SliceStats
from app.engine.budget import ByteBudget
from app.engine.objectmeta import ObjectMeta
from app.engine.slicer import SliceEngine
from cache.protocol import SliceLease

SLICE = 1024
SLICES = 8
ENTRY = "http://o/obj"


class LeasingFront:
    """A store holding every slice; each lease is counted until released. ``delay``: how
    long a lease takes to read (an L2 read waits on a worker thread)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.asked: list[int] = []
        self.held = 0
        self.epoch = 0

    def contains_slice(self, key: str) -> bool:
        return True

    def purged_since(self, epoch: int, key: str) -> bool:
        return False

    async def lease_slice(
        self, key: str, *, next_key: str | None = None, size_hint: int | None = None
    ) -> SliceLease | None:
        index = int(key.rsplit(" ", 1)[1])
        self.asked.append(index)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.held += 1

        def release() -> None:
            self.held -= 1

        return SliceLease(memoryview(bytes([index]) * SLICE), release)


def _engine(front: LeasingFront) -> SliceEngine:
    return SliceEngine(
        upstream=None,  # type: ignore[arg-type]  # every slice is stored
        store=front,  # type: ignore[arg-type]
        slice_size=SLICE,
        lookahead=4,
        max_retries=0,
        budget=ByteBudget(1 << 20),
    )


META = ObjectMeta(SLICES * SLICE, '"v1"', None, [], 0.0, 0.0)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_next_lease_is_asked_for_before_the_current_slice_is_consumed() -> None:
    async def scenario() -> tuple[list[int], bytes]:
        front = LeasingFront()
        stream = _engine(front).stream(ENTRY, "/obj", META, 0, META.size - 1, [], SliceStats())
        first = bytes(await anext(stream))
        await _settle()
        asked = list(front.asked)
        body = first + b"".join([bytes(piece) async for piece in stream])
        assert front.held == 0
        return asked, body

    asked, body = asyncio.run(scenario())
    assert asked == [0, 1], "slice 1 is read while slice 0 is still being written"
    assert body == b"".join(bytes([i]) * SLICE for i in range(SLICES))


@settings(max_examples=60, deadline=None)
@given(
    keep=st.integers(min_value=0, max_value=SLICES),
    delay=st.sampled_from([0.0, 0.001]),
    cancel=st.booleans(),
    first=st.integers(min_value=0, max_value=SLICES * SLICE - 1),
)
def test_every_lease_is_released_however_the_response_ends(
    keep: int, delay: float, cancel: bool, first: int
) -> None:
    """The response takes ``keep`` pieces of a range starting anywhere, then ends: closed
    by its consumer, or its task cancelled while it waits for a lease."""

    async def scenario() -> int:
        front = LeasingFront(delay)
        stream = _engine(front).stream(ENTRY, "/obj", META, first, META.size - 1, [], SliceStats())

        async def consume() -> None:
            async with contextlib.aclosing(stream):
                taken = 0
                async for _ in stream:
                    taken += 1
                    if taken >= keep:
                        break

        task = asyncio.get_running_loop().create_task(consume())
        if cancel:
            await asyncio.sleep(delay * (keep + 0.5))
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(2 * delay)
        await _settle()
        return front.held

    assert asyncio.run(scenario()) == 0


def test_a_lease_asked_ahead_for_a_slice_now_in_flight_is_released() -> None:
    """Between the lease asked ahead and its turn, the slice may have become a fill that
    another response started: the claim joins the fill and the lease goes back."""
    from app.engine.fills import SliceFill
    from cache import keys

    async def scenario() -> tuple[int, int]:
        front = LeasingFront()
        engine = _engine(front)
        leasing = engine._lease_task(ENTRY, META, 1)
        await _settle()
        assert leasing.done() and front.held == 1
        key = keys.slice_key(ENTRY, META.version, 1)
        engine.inflight.fills[key] = SliceFill(key, SLICE, 2 * SLICE - 1)
        got = await engine._claim(ENTRY, "/obj", META, 1, 1, [], SliceStats(), True, True, leasing)
        assert got[0].fill is engine.inflight.fills[key] and got[0].lease is None
        got[0].release(abandon=True)
        return front.held, len(got)

    held, claimed = asyncio.run(scenario())
    assert (held, claimed) == (0, 1)


@pytest.mark.parametrize("delay", [0.0, 0.002])
def test_a_lease_task_cancelled_after_its_read_still_releases(delay: float) -> None:
    from app.engine.slicer import drop_lease_task

    async def scenario() -> int:
        front = LeasingFront(delay)
        task = _engine(front)._lease_task(ENTRY, META, 3)
        await asyncio.sleep(delay / 2)
        drop_lease_task(task)
        await asyncio.sleep(2 * delay)
        await _settle()
        return front.held

    assert asyncio.run(scenario()) == 0


def test_a_promotion_cancelled_midway_releases_the_l2_lease() -> None:
    """TieredStore.lease_slice holds the L2 lease while it promotes the slice into L1; a
    response cancelled there (a lease asked ahead, then dropped) must not pin the extent."""
    from cache.memory import MemoryStore
    from cache.tiered import TieredStore

    class L2(LeasingFront):
        name = "l2"

        def stats(self) -> dict[str, float]:
            return {"capacity_bytes": 1 << 20}

    class SlowL1(MemoryStore):
        async def put_slice(self, *args: object, **kwargs: object) -> bool:
            await asyncio.sleep(3600)
            return True

    async def scenario() -> int:
        l2 = L2()
        tiers = TieredStore(SlowL1(1 << 20), l2)  # type: ignore[arg-type]
        task = asyncio.get_running_loop().create_task(tiers.lease_slice(f"{ENTRY} v 0"))
        await _settle()
        assert l2.held == 1  # read, now being promoted
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return l2.held

    assert asyncio.run(scenario()) == 0
