"""Poll for a condition with a generous deadline: the test's outcome is the condition's.

A fixed ``sleep()`` before an assertion about background work decides the outcome by how
busy the machine is; these helpers wait exactly as long as needed and fail with a message
when the condition never holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEADLINE = 30.0  # generous: a loaded 2-core box, never a figure the test depends on


def wait_for(
    condition: Callable[[], T], message: str = "", timeout: float = DEADLINE, every: float = 0.01
) -> T:
    """Return ``condition()``'s first truthy value; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {message or condition}")
        time.sleep(every)
    return value


async def async_wait_for(
    condition: Callable[[], T], message: str = "", timeout: float = DEADLINE, every: float = 0.005
) -> T:
    """As :func:`wait_for`, inside an event loop."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {message or condition}")
        await asyncio.sleep(every)
    return value


def wait_until_held(app: Any, token: str, count: int = 1) -> None:
    """Wait until ``count`` origin requests are held with ``hold=<token>`` (bench.origin)."""
    wait_for(lambda: app.holding.get(token, 0) >= count, f"{count} request(s) held on {token}")
