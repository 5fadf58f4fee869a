"""Warnings that repeat under load, at most one line per kind per interval.

The first occurrence of a kind is logged at once (an operator sees the start of a problem
without waiting); later ones within the interval are only counted, and the next line
says how many were folded into it. Used for origin failures, evictions under pressure,
and the L2 tier's write-behind drops, failed reads and writes, records that fail
verification and skipped checkpoints; anything on a hot path that may fail thousands of
times a second should log through this. Here, below ``app``, so both layers use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

# Seconds between two lines of one kind when nobody says otherwise (the app passes its
# WARNING_INTERVAL_SECONDS, whose default this is).
DEFAULT_INTERVAL = 10.0


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
        return self.log(logging.WARNING, kind, message, **fields)

    def error(self, kind: str, message: str, **fields: Any) -> bool:
        return self.log(logging.ERROR, kind, message, **fields)

    def exception(self, kind: str, message: str, **fields: Any) -> bool:
        """An error with the traceback of the exception being handled."""
        return self.log(logging.ERROR, kind, message, exc_info=True, **fields)

    def log(
        self, level: int, kind: str, message: str, *, exc_info: bool = False, **fields: Any
    ) -> bool:
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
        self.logger.log(level, message, exc_info=exc_info, extra={"fields": entry})
        return True
