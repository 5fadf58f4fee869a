"""The byte budget: a global cap on bytes being fetched from the origin at once, and
:class:`FetchHold`, the one owner of a fetch's grant and its open origin response."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx


class BudgetWaiter:
    """One request waiting for budget; ``urgent`` when a reader waits for its bytes now."""

    __slots__ = ("amount", "budget", "future", "urgent")

    def __init__(self, budget: ByteBudget, amount: int, urgent: bool) -> None:
        self.budget = budget
        self.amount = amount
        self.urgent = urgent
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def promote(self) -> None:
        if not self.urgent and not self.future.done():
            self.urgent = True
            self.budget.grant_waiting()


class ByteBudget:
    """A global cap on bytes being fetched from the origin at once.

    Granted in arrival order within two classes: ``urgent`` requests (a probe, a slice a
    reader waits for now) before fetch-ahead, which never takes budget an urgent request
    waits for. Fetch-ahead of clients that read nothing cannot lock out the others.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: list[BudgetWaiter] = []
        # Called when a request has to wait: the engine stops fetches nobody reads.
        self.on_pressure: Callable[[], None] | None = None

    def try_acquire(self, amount: int, *, urgent: bool = False) -> bool:
        """Take ``amount`` now if nothing of its class or above waits and it fits."""
        # One request bigger than the whole budget still runs, alone.
        amount = min(amount, self.capacity)
        ahead = [w for w in self._waiters if w.urgent] if urgent else self._waiters
        if not ahead and self.in_use + amount <= self.capacity:
            self.in_use += amount
            return True
        return False

    async def acquire(
        self,
        amount: int,
        *,
        urgent: bool = False,
        on_wait: Callable[[BudgetWaiter | None], None] | None = None,
    ) -> None:
        """``on_wait`` is told the waiter while the request waits (None once it is over)."""
        if self.try_acquire(amount, urgent=urgent):
            return
        amount = min(amount, self.capacity)
        waiter = BudgetWaiter(self, amount, urgent)
        self._waiters.append(waiter)
        if self.on_pressure is not None:
            self.on_pressure()  # may release budget, even to this waiter
        self.grant_waiting()
        if on_wait is not None:
            on_wait(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(amount)  # granted just as we were cancelled: give it back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                self.grant_waiting()  # it may have held back smaller requests
            raise
        finally:
            if on_wait is not None:
                on_wait(None)

    def release(self, amount: int) -> None:
        self.in_use -= min(amount, self.capacity)
        self.grant_waiting()

    def grant_waiting(self) -> None:
        for urgent in (True, False):
            for waiter in [w for w in self._waiters if w.urgent is urgent]:
                if waiter.future.done():
                    self._waiters.remove(waiter)
                    continue
                if self.in_use + waiter.amount > self.capacity:
                    return  # in order within a class; fetch-ahead waits for urgent ones
                self._waiters.remove(waiter)
                self.in_use += waiter.amount
                waiter.future.set_result(None)


class FetchHold:
    """What one origin fetch holds: its byte-budget grant and its open origin response.

    The one owner of both. The fetch task uses them; the engine releases them from the
    task's done-callback, so that they are released whatever the task's fate (finished,
    failed, cancelled mid-way, or cancelled before its first step). Releasing is
    idempotent.
    """

    def __init__(self, budget: ByteBudget, granted: int, response: httpx.Response | None):
        self.budget = budget
        self.granted = granted
        self.response = response

    def pass_on(self) -> FetchHold:
        """A new hold with this one's grant and response; this one is left empty, so that
        whoever still has it (a probe after handing slice 0 to its fill) releases nothing."""
        taken = FetchHold(self.budget, self.granted, self.response)
        self.granted, self.response = 0, None
        return taken

    def release_budget(self) -> None:
        granted, self.granted = self.granted, 0
        if granted:
            self.budget.release(granted)

    async def close(self) -> None:
        response, self.response = self.response, None
        if response is not None:
            await response.aclose()

    def close_soon(self) -> asyncio.Task[None] | None:
        """Close the response from a synchronous callback; the caller keeps the task."""
        if self.response is None:
            return None
        return asyncio.get_running_loop().create_task(self.close())
