"""One probe, many waiters (app/engine/probe.py ProbeRun): each waits on its own future."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine.opening import Forward
from app.engine.probe import ProbeRun


def test_each_waiter_gets_the_outcome_and_a_cancelled_one_leaves_the_probe_alone() -> None:
    async def run() -> list[Any]:
        probe = ProbeRun(asyncio.get_running_loop().create_future())
        first, second, late = probe.join(), probe.join(), probe.join()
        late.cancel()  # its request left: nothing else is cancelled
        await asyncio.sleep(0)
        assert not probe.future.done() and not first.done()
        outcome = Forward("answered")
        probe.settle(outcome, None)
        after = probe.join()  # joined once it is over: the outcome at once
        assert after.done() and after.result() is outcome
        return [await first, await second, late.cancelled()]

    first, second, cancelled = asyncio.run(run())
    assert first is second and first.reason == "answered" and cancelled


def test_a_failed_probe_raises_in_every_waiter() -> None:
    async def run() -> None:
        probe = ProbeRun(asyncio.get_running_loop().create_future())
        waiters = [probe.join(), probe.join()]
        probe.settle(None, ConnectionResetError("origin reset"))
        for waiter in waiters:
            with pytest.raises(ConnectionResetError):
                await waiter
        with pytest.raises(ConnectionResetError):
            await probe.join()

    asyncio.run(run())


def test_an_outcome_reaches_a_waiter_in_one_turn_of_the_loop() -> None:
    """asyncio.shield relayed it in two: a turn of the loop is a read of the first
    slice's bytes before a cold response's first byte."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        probe = ProbeRun(loop.create_future())
        resumed_at: list[int] = []
        turns = 0

        async def wait() -> None:
            await probe.join()
            resumed_at.append(turns)

        waiting = loop.create_task(wait())
        await asyncio.sleep(0)  # it waits now
        probe.settle(Forward("x"), None)
        while not resumed_at:
            turns += 1
            await asyncio.sleep(0)
        await waiting
        return resumed_at[0]

    assert asyncio.run(run()) == 1
