"""A wake-up for the tasks waiting right now, each with its own time limit.

What ``asyncio.Event`` (a fresh one per round) plus ``asyncio.timeout`` did for the slice
fills and the origin connections, once per chunk of every miss. On CPython 3.11 each of
``asyncio.timeout``, ``Timeout.__aenter__``, ``current_task`` and a new Event's first
``wait`` asks ``get_running_loop()``, which checks the process id with a ``getpid()``
system call: py-spy put those calls at 4 % of the event loop's busy time on a cold
100 MiB miss. Here the loop is looked up once per pulse and the limit is a plain timer.
"""

from __future__ import annotations

import asyncio


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Pulse:
    """``fire()`` wakes every task in ``wait()`` at that moment (later waiters wait for
    the next one). A waiter cancelled or timed out leaves the others untouched."""

    __slots__ = ("_loop", "_waiters")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[bool]] = []

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    async def wait(self, timeout: float | None = None) -> bool:
        """True once fired; False after ``timeout`` seconds (None: no limit)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:  # timed out or cancelled: fire() did not take it
                self._waiters.remove(waiter)
