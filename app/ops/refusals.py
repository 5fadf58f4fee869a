"""The heads the HTTP edge refuses before the app sees them: counted and logged.

400 (malformed), 408 (head not complete in time), 414/431 (head too large) and 503
(connection cap) are written by the protocol (app/edge/httpserver.py,
app/edge/h11server.py), so neither the access log nor the request metrics see them. Each
is counted in ``slicecache_edge_refusals_total{status}`` and logged through a
:class:`RateLimitedLog` (one line per status per ``WARNING_INTERVAL_SECONDS``, with the
client and the cause; the rest folded into the next line): a flood of bad heads is
visible without costing a log line each.

A client that stops taking a response's bytes (nginx's ``send_timeout``) is not a refused
head but is reported here too: ``slicecache_client_send_timeouts_total`` and a line.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from cache.ratelimit import RateLimitedLog

log = logging.getLogger("slicecache.edge")


class EdgeRefusalLog:
    def __init__(
        self, counter: Counter, send_timeouts: Counter, ignored: Counter, warning_interval: float
    ) -> None:
        self.counter = counter
        self.send_timeouts = send_timeouts
        self.ignored = ignored
        self.warnings = RateLimitedLog(log, warning_interval)

    def send_timed_out(self, client: tuple[str, int] | None, held: int) -> None:
        """A client took none of its response for SEND_TIMEOUT: its connection was closed."""
        self.send_timeouts.inc()
        peer = _peer(client)
        self.warnings.warning(
            "edge_send_timeout",
            f"closed the connection of {peer or 'an unknown client'}: it took none of its "
            f"response for the send timeout ({held} bytes waiting)",
            client=peer,
            held=held,
        )

    def upgrade_ignored(self, protocol: str, client: tuple[str, int] | None) -> None:
        """Not a refusal: the request is answered in HTTP/1.1 (RFC 9110 7.8), the Upgrade
        ignored. Counted, and noted at info level once per interval."""
        self.ignored.labels("upgrade").inc()
        self.warnings.log(
            logging.INFO,
            "upgrade_ignored",
            f"Upgrade to {protocol!r} ignored: answered in HTTP/1.1",
            protocol=protocol,
            client=_peer(client),
        )

    def trailer_dropped(self, client: tuple[str, int] | None) -> None:
        """Not a refusal: a chunked request's trailer fields were dropped, never merged into
        its head (RFC 9110 6.5.1), and the request answered. Counted, and noted at info
        level once per interval."""
        self.ignored.labels("trailer").inc()
        peer = _peer(client)
        self.warnings.log(
            logging.INFO,
            "trailer_dropped",
            f"dropped the trailer fields of a request from {peer or 'an unknown client'}",
            client=peer,
        )

    def refused(self, status: int, cause: str, client: tuple[str, int] | None) -> None:
        self.counter.labels(str(status)).inc()
        peer = _peer(client)
        self.warnings.warning(
            f"edge_refused_{status}",
            f"refused a request head from {peer or 'an unknown client'}: {status} ({cause})",
            status=status,
            cause=cause,
            client=peer,
        )


def _peer(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None
