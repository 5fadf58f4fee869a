"""app/pulse.py: the wake-up of the slice fills and origin connections."""

from __future__ import annotations

import asyncio

from app.pulse import Pulse


async def test_fire_wakes_the_waiters_of_that_moment_only() -> None:
    pulse = Pulse()
    first = [asyncio.create_task(pulse.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    pulse.fire()
    later = asyncio.create_task(pulse.wait())
    assert await asyncio.gather(*first) == [True, True, True]
    await asyncio.sleep(0.01)
    assert not later.done()  # it waits for the next pulse
    pulse.fire()
    assert await later is True


async def test_a_time_limit_or_a_cancel_ends_one_waiter_and_no_other() -> None:
    pulse = Pulse()
    patient = asyncio.create_task(pulse.wait())
    hurried = asyncio.create_task(pulse.wait(0.01))
    cancelled = asyncio.create_task(pulse.wait(10))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await hurried is False
    await asyncio.gather(cancelled, return_exceptions=True)
    assert cancelled.cancelled() and not patient.done()
    assert len(pulse._waiters) == 1  # the ones that left took themselves off the list
    pulse.fire()
    assert await patient is True
    assert pulse._waiters == []
    # A fire before the limit: True, and the timer is gone (no late False).
    quick = asyncio.create_task(pulse.wait(0.05))
    await asyncio.sleep(0)
    pulse.fire()
    assert await quick is True
    await asyncio.sleep(0.06)
