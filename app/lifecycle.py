"""Process state the admin routes report: starting, ready, draining."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lifecycle:
    ready: bool = False
    draining: bool = False
    active_requests: int = 0

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        self.active_requests -= 1

    @property
    def accepting(self) -> bool:
        """What readyz answers: ready and not draining."""
        return self.ready and not self.draining
