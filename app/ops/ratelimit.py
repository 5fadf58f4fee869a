"""Warnings that repeat under load, at most one line per kind per interval.

The first occurrence of a kind is logged at once (an operator sees the start of a problem
without waiting); later ones within the interval are only counted, and the next line
says how many were folded into it. Used for origin failures, L2 write-behind drops and
evictions under pressure; anything on a hot path that may fail thousands of times a
second should log through this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, kind: str, message: str, **fields: Any) -> bool:
        """Log ``message`` unless ``kind`` was logged less than ``interval`` ago."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._folded[kind] = self._folded.get(kind, 0) + 1
            return False
        self._last[kind] = now
        folded = self._folded.pop(kind, 0)
        entry = {"event": kind, **fields}
        if folded:
            entry["suppressed"] = folded  # same kind, not logged since the previous line
        self.logger.warning(message, extra={"fields": entry})
        return True
