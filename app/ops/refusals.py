"""The heads the HTTP edge refuses before the app sees them: counted and logged.

400 (malformed), 408 (head not complete in time), 414/431 (head too large) and 503
(connection cap) are written by the protocol (app/edge/httpserver.py,
app/edge/h11server.py), so neither the access log nor the request metrics see them. Each
is counted in ``slicecache_edge_refusals_total{status}`` and logged through a
:class:`RateLimitedLog` (one line per status per ``WARNING_INTERVAL_SECONDS``, with the
client and the cause; the rest folded into the next line): a flood of bad heads is
visible without costing a log line each.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from cache.ratelimit import RateLimitedLog

log = logging.getLogger("slicecache.edge")


class EdgeRefusalLog:
    def __init__(self, counter: Counter, warning_interval: float) -> None:
        self.counter = counter
        self.warnings = RateLimitedLog(log, warning_interval)

    def refused(self, status: int, cause: str, client: tuple[str, int] | None) -> None:
        self.counter.labels(str(status)).inc()
        peer = f"{client[0]}:{client[1]}" if client else None
        self.warnings.warning(
            f"edge_refused_{status}",
            f"refused a request head from {peer or 'an unknown client'}: {status} ({cause})",
            status=status,
            cause=cause,
            client=peer,
        )
