"""app/engine/heaptrim.py: freed slice memory is handed back only when the engine is idle."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import pytest

from app.engine import fills
from app.engine.heaptrim import HeapTrim


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
    fills.slice_buffer(1 << 20, first_byte_waits=False)
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
    fills.slice_buffer(1 << 20, first_byte_waits=True)  # a mapping: nothing to trim
    await trim.pass_once()
    assert calls == [0]
    fills.slice_buffer(4096, first_byte_waits=False)
    await trim.pass_once()
    assert calls == [0, 0] and trim.passes == 2


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


async def test_slices_held_only_by_reference_cycles_are_collected_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle process allocates nothing, so CPython's collector never runs: slices held
    by cycles a burst left (fills, frames, tracebacks) stayed (helper-60)."""
    trim = HeapTrim(_Engine())  # type: ignore[arg-type]
    order: list[str] = []

    def collected(*_: object) -> int:
        order.append("collect")
        return 0

    monkeypatch.setattr(gc, "collect", collected)

    def recorded(pad: int) -> int:
        order.append("trim")
        return 1

    trim.trim = recorded
    fills.slice_buffer(4096, first_byte_waits=False)
    await trim.pass_once()
    assert order == ["collect", "trim"]


def test_the_c_library_here_has_malloc_trim() -> None:
    assert HeapTrim(_Engine()).trim is not None  # type: ignore[arg-type]
