"""The fetch-ahead estimator (app/engine/lookahead.py): its bounds, as properties."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
from hypothesis import given
from hypothesis import strategies as st

from app.context import SliceStats
from app.engine.budget import ByteBudget
from app.engine.fills import SliceClaim, SliceFill
from app.engine.lookahead import MIN_SAMPLE_BYTES, OriginPace, lookahead_slices
from app.engine.objectmeta import ObjectMeta
from app.engine.slicer import SliceEngine
from app.upstream.client import UpstreamClient
from tests.waiting import async_wait_for

MiB = 1024 * 1024

latencies = st.floats(min_value=0, max_value=10, allow_nan=False)
rates = st.floats(min_value=0, max_value=10e9, allow_nan=False)
slice_sizes = st.sampled_from([64 * 1024, 256 * 1024, MiB, 4 * MiB, 64 * MiB])
runs = st.integers(min_value=1, max_value=64)
caps = st.integers(min_value=1, max_value=64)
budgets = st.integers(min_value=1, max_value=1 << 34)
responses = st.integers(min_value=0, max_value=10_000)


@given(latencies, latencies, rates, slice_sizes, runs, caps, budgets, responses)
def test_monotone_in_latency(
    a: float, b: float, rate: float, size: int, run: int, cap: int, budget: int, n: int
) -> None:
    low, high = sorted((a, b))
    kw = {"slice_size": size, "run_length": run, "cap": cap, "budget": budget, "responses": n}
    assert lookahead_slices(low, rate, **kw) <= lookahead_slices(high, rate, **kw)


@given(latencies, rates, rates, slice_sizes, runs, caps, budgets, responses)
def test_monotone_in_throughput(
    latency: float, a: float, b: float, size: int, run: int, cap: int, budget: int, n: int
) -> None:
    low, high = sorted((a, b))
    kw = {"slice_size": size, "run_length": run, "cap": cap, "budget": budget, "responses": n}
    assert lookahead_slices(latency, low, **kw) <= lookahead_slices(latency, high, **kw)


@given(
    st.one_of(st.none(), latencies),
    st.one_of(st.none(), rates),
    slice_sizes,
    runs,
    caps,
    budgets,
    responses,
)
def test_at_least_one_and_within_the_cap_and_the_budget_share(
    latency: float | None,
    rate: float | None,
    size: int,
    run: int,
    cap: int,
    budget: int,
    n: int,
) -> None:
    got = lookahead_slices(
        latency, rate, slice_size=size, run_length=run, cap=cap, budget=budget, responses=n
    )
    assert got >= 1
    assert got <= cap * run
    # Never more bytes than the response's share of the budget, but for the one slice
    # every response needs.
    assert got == 1 or got * size <= budget // max(4, n)


@given(latencies, rates, slice_sizes, runs, caps, budgets, responses, responses)
def test_more_responses_never_widen_a_window(
    latency: float, rate: float, size: int, run: int, cap: int, budget: int, a: int, b: int
) -> None:
    few, many = sorted((a, b))
    kw = {"slice_size": size, "run_length": run, "cap": cap, "budget": budget}
    assert lookahead_slices(latency, rate, responses=many, **kw) <= lookahead_slices(
        latency, rate, responses=few, **kw
    )


@given(latencies, rates, slice_sizes, runs, caps, budgets, responses, st.integers(1, 64))
def test_a_starved_response_adds_lanes_within_the_same_bounds(
    latency: float, rate: float, size: int, run: int, cap: int, budget: int, n: int, lanes: int
) -> None:
    kw = {"slice_size": size, "run_length": run, "cap": cap, "budget": budget, "responses": n}
    one = lookahead_slices(latency, rate, **kw)
    more = lookahead_slices(latency, rate, lanes=lanes, **kw)
    assert one <= more <= max(1, min(cap * run, budget // max(4, n) // size))
    assert more <= lookahead_slices(latency, rate, lanes=lanes + 1, **kw)


def test_the_bandwidth_delay_product_of_the_bench_origin() -> None:
    # +50 ms first byte, 100 MB/s per request, 1 MiB slices in runs of 4: 5 MB in flight
    # per request's latency is 4.8 slices, so 6 requests (24 slices) under a cap of 8.
    kw = {"slice_size": MiB, "run_length": 4, "cap": 8, "budget": 256 * MiB}
    assert lookahead_slices(0.05, 100e6, **kw) == 24
    assert lookahead_slices(0.001, 1e9, **kw) == 8  # loopback: 2 requests keep up
    assert lookahead_slices(None, None, **kw) == 32  # nothing measured: the cap
    assert lookahead_slices(0.05, 100e6, responses=32, **kw) == 8  # 1/32 of the budget
    assert lookahead_slices(0.05, 100e6, lanes=2, **kw) == 32  # starved: 12 requests, cap 8


def test_the_pace_follows_its_samples() -> None:
    pace = OriginPace()
    pace.saw_transfer(MIN_SAMPLE_BYTES - 1, 0.001)  # too short to say anything
    assert pace.throughput is None
    pace.saw_latency(0.05)
    pace.saw_transfer(4 * MiB, 0.04)
    assert pace.latency == 0.05
    assert pace.throughput == 4 * MiB / 0.04
    for _ in range(30):
        pace.saw_latency(0.2)
    assert pace.latency is not None and abs(pace.latency - 0.2) < 1e-3
    pace.saw_transfer(MiB, 0.0)  # no time measured: ignored
    assert pace.throughput is not None


# --- the engine asks the estimator: requests in flight follow the origin's pace -----------

SLICE = 64 * 1024
SLICES = 24


class _FixedPace(OriginPace):
    """The pace a test sets: the first slice's instant answer does not move it."""

    def saw_latency(self, seconds: float) -> None:
        pass

    def saw_transfer(self, nbytes: int, seconds: float) -> None:
        pass


class _HeldOrigin:
    """Answers each slice Range with a correct 206 whose body never comes, except the
    first slice's (the read-ahead starts once the response's first bytes are out): the
    requests a response starts after it stay in flight, and are counted."""

    def __init__(self, meta: ObjectMeta) -> None:
        self.meta = meta
        self.ranges: list[str] = []

    async def send(
        self, method: str, target: str, headers: list[tuple[str, str]], direct: bool = False
    ) -> Any:
        (spec,) = [v for k, v in headers if k == "range"]
        self.ranges.append(spec)
        first, last = (int(n) for n in spec.removeprefix("bytes=").split("-"))

        class Never(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                if first == 0:
                    yield bytes(last - first + 1)
                    return
                await asyncio.Event().wait()
                yield b""

        return httpx.Response(
            206,
            headers={
                "content-range": f"bytes {first}-{last}/{self.meta.size}",
                "content-length": str(last - first + 1),
                "etag": self.meta.etag or "",
            },
            stream=Never(),
        )


async def _requests_in_flight(pace: OriginPace, cap: int, responses: int = 1) -> int:
    meta = ObjectMeta(SLICES * SLICE, '"v1"', None, [], 0.0, 0.0)
    origin = _HeldOrigin(meta)
    engine = SliceEngine(
        upstream=cast(UpstreamClient, origin),
        store=None,
        slice_size=SLICE,
        lookahead=cap,
        max_retries=0,
        budget=ByteBudget(256 * MiB),
        pace=pace,
    )
    engine.fetching = responses - 1  # others fetching now (they share the budget)

    async def read() -> None:
        async for _ in engine.stream("http://o/f", "/f", meta, 0, meta.size - 1, [], SliceStats()):
            pass

    task = asyncio.create_task(read())
    try:
        # The window is claimed once the first slice's bytes are out; each claim's task
        # sends. The first slice's request is done: it is not in flight.
        await async_wait_for(lambda: len(origin.ranges) > 1, "the read-ahead")
        for _ in range(50):
            await asyncio.sleep(0)
        return len(origin.ranges) - 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()


async def test_requests_in_flight_follow_the_origins_latency() -> None:
    # 10 MB/s per request, 64 KiB slices: 1 ms of latency is 0.15 slices in flight (2
    # requests), 10 ms 1.5 (3), 100 ms 15 (16, over the cap of 8); nothing measured: the cap.
    def pace(latency: float) -> OriginPace:
        return _FixedPace(latency=latency, throughput=10e6)

    assert await _requests_in_flight(pace(0.001), cap=8) == 2
    assert await _requests_in_flight(pace(0.01), cap=8) == 3
    assert await _requests_in_flight(pace(0.1), cap=8) == 8
    assert await _requests_in_flight(_FixedPace(), cap=5) == 5


async def test_many_fetching_responses_share_the_budget() -> None:
    # 256 MiB / 1024 responses = 256 KiB each: 4 slices of 64 KiB, whatever the latency.
    slow = _FixedPace(latency=1.0, throughput=10e6)
    assert await _requests_in_flight(slow, cap=64, responses=1024) == 4


class _StagedOrigin(_HeldOrigin):
    """Slices below ``ready`` answer at once; the others when :meth:`release` says so."""

    def __init__(self, meta: ObjectMeta, ready: int) -> None:
        super().__init__(meta)
        self.released = {index: asyncio.Event() for index in range(SLICES)}
        for index in range(ready):
            self.released[index].set()

    def release(self, index: int) -> None:
        self.released[index].set()

    async def send(
        self, method: str, target: str, headers: list[tuple[str, str]], direct: bool = False
    ) -> Any:
        response = await super().send(method, target, headers)
        first, last = (int(n) for n in self.ranges[-1].removeprefix("bytes=").split("-"))
        gate = self.released[first // SLICE]

        class Staged(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                await gate.wait()
                yield bytes(last - first + 1)

        response.stream = Staged()
        return response


async def test_a_client_that_reaches_a_slice_before_its_first_byte_widens_its_window() -> None:
    # 1 ms and 10 MB/s: 2 requests of one slice in flight. Slices 0-5 come at once, slice 6
    # only when released: the reader reaches it, claimed a window earlier, with no byte
    # yet (the origin is behind this client), and takes another lane: 4 requests ahead.
    meta = ObjectMeta(SLICES * SLICE, '"v1"', None, [], 0.0, 0.0)
    origin = _StagedOrigin(meta, ready=6)
    engine = SliceEngine(
        upstream=cast(UpstreamClient, origin),
        store=None,
        slice_size=SLICE,
        lookahead=8,
        max_retries=0,
        budget=ByteBudget(256 * MiB),
        pace=OriginPace(latency=0.001, throughput=10e6),
    )
    engine.pace.saw_latency = lambda seconds: None  # type: ignore[method-assign]
    engine.pace.saw_transfer = lambda nbytes, seconds: None  # type: ignore[method-assign]
    got = 0

    async def read() -> None:
        nonlocal got
        async for piece in engine.stream(
            "http://o/f", "/f", meta, 0, meta.size - 1, [], SliceStats()
        ):
            got += len(piece)

    task = asyncio.create_task(read())
    try:
        await async_wait_for(lambda: got == 6 * SLICE, "slices 0-5 read")
        await async_wait_for(lambda: len(origin.ranges) >= 8, "the window past slice 6")
        origin.release(6)
        await async_wait_for(lambda: got == 7 * SLICE, "slice 6 read")
        # With one lane the window stays 2 slices: requests for slices 0-8 at most.
        await async_wait_for(lambda: len(origin.ranges) >= 10, "a wider window")
        assert len(origin.ranges) <= 7 + 8  # never more than the cap ahead
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()


def test_lanes_grow_on_a_slice_with_no_byte_and_shrink_on_a_complete_one() -> None:
    engine = SliceEngine(
        upstream=cast(UpstreamClient, None),
        store=None,
        slice_size=SLICE,
        lookahead=3,
        max_retries=0,
        budget=ByteBudget(MiB),
    )
    empty, partial, complete = (SliceFill(f"k {n}", 0, SLICE - 1) for n in range(3))
    partial.buffer = bytearray(SLICE)
    partial.filled = 1
    complete.buffer, complete.filled, complete.done = bytearray(SLICE), SLICE, True
    lanes_after = engine._lanes_after  # noqa: SLF001
    assert lanes_after(SliceClaim(fill=empty), 1, covered=True) == 2
    assert lanes_after(SliceClaim(fill=empty), 3, covered=True) == 3  # the cap
    assert lanes_after(SliceClaim(fill=empty), 1, covered=False) == 1  # not yet its turn
    assert lanes_after(SliceClaim(fill=partial), 2, covered=True) == 2
    assert lanes_after(SliceClaim(fill=complete), 2, covered=True) == 1
    assert lanes_after(SliceClaim(fill=complete), 1, covered=True) == 1
    assert lanes_after(SliceClaim(data=b"x"), 2, covered=True) == 2  # cached: no signal
