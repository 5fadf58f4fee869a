"""Process state the admin routes report: starting, ready, draining."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Lifecycle:
    ready: bool = False
    draining: bool = False
    active_requests: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def request_started(self) -> None:
        self.active_requests += 1
        self.idle.clear()

    def request_finished(self) -> None:
        self.active_requests -= 1
        if self.active_requests == 0:
            self.idle.set()

    @property
    def accepting(self) -> bool:
        """What readyz answers: ready and not draining."""
        return self.ready and not self.draining
