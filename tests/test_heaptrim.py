"""app/engine/heaptrim.py: freed slice memory is handed back only when the engine is idle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

import app.main as app_main
from app.engine import fills, heaptrim
from app.engine.heaptrim import HeapTrim
from tests.conftest import ProxyFactory
from tests.waiting import wait_for


@dataclass
class _Budget:
    in_use: int = 0


@dataclass
class _Engine:
    budget: _Budget = field(default_factory=_Budget)
    fills: dict[str, object] = field(default_factory=dict)


def _recording(trim: HeapTrim) -> list[int]:
    calls: list[int] = []

    def recorded(pad: int) -> int:
        calls.append(pad)
        return 1

    trim.trim = recorded
    return calls


async def test_a_pass_trims_once_after_heap_slices_and_only_when_idle() -> None:
    engine = _Engine()
    trim = HeapTrim(engine)  # type: ignore[arg-type]
    calls = _recording(trim)
    await trim.pass_once()
    assert calls == []  # nothing changed since it started
    fills.slice_buffer(1 << 20)
    engine.budget.in_use = 1 << 20
    await trim.pass_once()
    engine.budget.in_use = 0
    engine.fills["k"] = object()
    await trim.pass_once()
    assert calls == []  # bytes in flight: the heap is about to be used again
    engine.fills.clear()
    await trim.pass_once()
    await trim.pass_once()
    assert calls == [0]  # once per burst, not every interval
    fills.slice_buffer(4096)
    await trim.pass_once()
    assert calls == [0, 0] and trim.passes == 2


async def test_a_trickle_after_a_burst_does_not_keep_the_heap_at_its_peak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """helper-61: one slow download kept the process at the burst's peak until it ended."""
    engine = _Engine()
    engine.budget.in_use = 1 << 20  # the slow download's slice, all along
    trim = HeapTrim(engine)  # type: ignore[arg-type]
    calls = _recording(trim)
    burst = heaptrim.BUSY_TRIM_SLICE_BYTES + heaptrim.QUIET_SLICE_BYTES + 1
    monkeypatch.setattr(fills, "heap_slice_bytes", fills.heap_slice_bytes + burst)
    await trim.pass_once()
    assert calls == []  # the burst runs: a trim now is faulted back in
    await trim.pass_once()
    assert calls == [0]  # it is over; the download goes on
    for _ in range(3):  # the download's slices: a trickle, not another burst
        monkeypatch.setattr(fills, "heap_slice_bytes", fills.heap_slice_bytes + (1 << 20))
        await trim.pass_once()
    assert calls == [0]
    engine.budget.in_use = 0
    await trim.pass_once()
    assert calls == [0, 0]  # idle again: what the trickle left goes too
    await trim.pass_once()
    assert calls == [0, 0]


async def test_what_was_in_flight_at_a_busy_pass_is_trimmed_once_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """helper-62: a pass while busy saw the last allocation; the burst's slices were freed
    after it, nothing was allocated since, and no pass followed."""
    engine = _Engine()
    engine.budget.in_use = 64 << 20
    trim = HeapTrim(engine)  # type: ignore[arg-type]
    calls = _recording(trim)
    burst = heaptrim.BUSY_TRIM_SLICE_BYTES + heaptrim.QUIET_SLICE_BYTES + 1
    monkeypatch.setattr(fills, "heap_slice_bytes", fills.heap_slice_bytes + burst)
    await trim.pass_once()
    await trim.pass_once()
    assert calls == [0]  # the busy pass
    engine.budget.in_use = 0  # the fetches end: their slices are free
    await trim.pass_once()
    await trim.pass_once()
    assert calls == [0, 0]


async def test_what_l1_lets_go_without_a_new_slice_is_trimmed_too() -> None:
    """A PURGE or an expiry frees slices and allocates none (helper-60)."""
    held = [8 << 20]
    trim = HeapTrim(_Engine(), held=lambda: held[0])  # type: ignore[arg-type]
    calls = _recording(trim)
    await trim.pass_once()
    assert calls == []
    held[0] = 0
    await trim.pass_once()
    await trim.pass_once()
    assert calls == [0]


async def test_young_reference_cycles_are_collected_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle process allocates nothing, so CPython's collector never runs on its own."""
    trim = HeapTrim(_Engine())  # type: ignore[arg-type]
    order: list[str] = []

    def collected(generation: int = 2) -> int:
        order.append(f"collect {generation}")
        return 0

    monkeypatch.setattr(gc, "collect", collected)

    def recorded(pad: int) -> int:
        order.append("trim")
        return 1

    trim.trim = recorded
    fills.slice_buffer(4096)
    await trim.pass_once()
    # The young generations only: a full collection walks every object L1 holds, on the
    # loop (100-500 ms with a full L1: helper-61).
    assert order == ["collect 1", "trim"]


def test_the_c_library_here_has_malloc_trim() -> None:
    assert HeapTrim(_Engine()).trim is not None  # type: ignore[arg-type]


@contextlib.contextmanager
def _cyclic_garbage() -> Iterator[list[object]]:
    """What only unreachable reference cycles hold, found by a full collection that keeps
    what it finds (released again when the block ends)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _slice_bytes_in_cyclic_garbage() -> int:
    """Bytes of the buffers (of 64 KiB and more: slices, origin scratch) in cyclic garbage."""
    with _cyclic_garbage() as garbage:
        return sum(
            len(held)
            for cyclic in garbage
            for held in gc.get_referents(cyclic)
            if isinstance(held, bytearray) and len(held) >= 64 * 1024
        )


def _in_flight_bytes(url: str) -> float:
    for line in httpx.get(f"{url}/_slicecache/metrics").text.splitlines():
        if line.startswith("slicecache_in_flight_bytes "):
            return float(line.split()[1])
    raise AssertionError("no slicecache_in_flight_bytes in /metrics")


def test_a_burst_of_failures_and_disconnects_leaves_no_slice_to_the_cycle_collector(
    proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle pass collects the young generations only, so nothing a burst leaves in the
    old one may hold slice memory: failed fetches (fill, error, traceback, frame, fill),
    clients that left mid-body, ranges (helper-60 found 95 MiB, helper-61 ~200 MiB)."""
    monkeypatch.setattr(app_main, "HEAP_TRIM_INTERVAL_SECONDS", 3600.0)  # no pass collects
    gc.collect()
    gc.disable()  # what the burst leaves in cycles stays for the count
    try:
        with proxy(l1_cache_size_bytes=2 << 20, slice_size=256 * 1024) as url:

            async def burst() -> None:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:

                    async def one(i: int) -> None:
                        path = f"/files/4m-cycles-{i}"
                        if i % 3 == 0:  # the client leaves mid-body
                            async with client.stream("GET", path) as response:
                                async for _ in response.aiter_bytes():
                                    break
                        elif i % 3 == 1:
                            await client.get(path, headers={"Range": "bytes=300000-2999999"})
                        else:  # the origin resets mid-object
                            with contextlib.suppress(httpx.HTTPError):
                                await client.get(f"{path}?fault=reset&fault_from=1000000")

                    await asyncio.gather(*(one(i) for i in range(18)))

            asyncio.run(burst())
            wait_for(lambda: _in_flight_bytes(url) == 0, "the burst's fetches to end")
            held = _slice_bytes_in_cyclic_garbage()
    finally:
        gc.enable()
    assert held == 0


def _request_state_in_cyclic_garbage(port: int) -> list[str]:
    """Type names of the proxy's per-request objects (its uvicorn cycles, on ``port``, the
    written-out and disconnect watches) in cyclic garbage. The demo origin runs in this
    process too."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from app.edge.asgi_io import DisconnectWatch
    from app.edge.writtenout import WrittenOut

    def proxys(o: object) -> bool:
        if isinstance(o, RequestResponseCycle):
            server = o.scope["server"]
            return server is not None and server[1] == port
        return isinstance(o, WrittenOut | DisconnectWatch)

    with _cyclic_garbage() as garbage:
        return [type(o).__name__ for o in garbage if proxys(o)]


def test_finished_requests_leave_no_reference_cycles(proxy: ProxyFactory) -> None:
    """Each request's state is freed by reference counting once its response ends. A cycle
    per request (the disconnect watch's cancelled task holding its own frame, the early-hint
    wrapper and the written-out watch holding the cycle they hang on) sent every request's
    state to the oldest generation, and a full collection ran every ~0.5 s under cold misses,
    stalling every response 30-80 ms each time."""
    with proxy(fast_path=False, slice_size=256 * 1024) as url:
        gc.collect()  # what earlier tests left
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(3):
                assert client.get(f"/files/1m-nocycle-{i}.bin").status_code == 200  # miss
                assert client.get(f"/files/1m-nocycle-{i}.bin").status_code == 200  # hit
                ranged = client.get(f"/files/1m-nocycle-{i}.bin", headers={"Range": "bytes=5-9"})
                assert ranged.status_code == 206
                assert client.head(f"/files/1m-nocycle-{i}.bin").status_code == 200
                with client.stream("GET", f"/files/4m-nocycle-{i}.bin") as response:
                    for _ in response.iter_bytes():
                        break  # the client leaves mid-body
                client.post(f"/files/1m-nocycle-{i}.bin", content=b"x")  # passed through
        wait_for(lambda: _in_flight_bytes(url) == 0, "the fetches to end")
        leftovers = _request_state_in_cyclic_garbage(httpx.URL(url).port or 80)
    assert leftovers == []
