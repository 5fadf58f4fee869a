"""Interim (1xx) responses of the origin, relayed to the client before the final one.

The upstream transport reports each interim response it reads to the sink of the request
that caused it (a context variable, so the probe and fill tasks a request starts inherit
it); the sink turns a 103 Early Hints into the ASGI ``http.response.early_hint`` message,
which ``app.edge.httpserver.HttpProtocol`` writes to the client as long as the final response
has not started. Interim responses are never stored: they never reach the cache code.

103 and 102 are relayed (102 Processing, from WebDAV, says "still working" to a client
that would otherwise time out). 100 Continue belongs to each hop (uvicorn answers the
client's ``Expect`` itself), and 101 ends HTTP on the connection: a proxy without
tunnels cannot honour it (aiohttp hands it over as the final answer, never stored).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from app.edge.headers import HOP_BY_HOP

EARLY_HINT = "http.response.early_hint"
RELAYED_STATUSES = frozenset({102, 103})

RawHeaders = Sequence[tuple[bytes, bytes]]
InterimSink = Callable[[int, RawHeaders], Awaitable[None]]

interim_sink: ContextVar[InterimSink | None] = ContextVar("interim_sink", default=None)


def relay_interim_to(scope: Any, send: Callable[[Any], Awaitable[None]]) -> None:
    """Relay the origin's 103s of this request (task) to its client, when the server
    supports the early-hint extension. Set once per request task; its children inherit."""
    if EARLY_HINT not in (scope.get("extensions") or {}):
        return

    async def sink(status: int, headers: RawHeaders) -> None:
        if status not in RELAYED_STATUSES:
            return
        fields = [
            (name.lower(), value)
            for name, value in headers
            if name.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        links = [value for name, value in fields if name == b"link"]
        # "status" and "headers" are this project's superset of the extension: the
        # origin's interim status and every end-to-end field of it, not only its links.
        await send({"type": EARLY_HINT, "links": links, "status": status, "headers": fields})

    interim_sink.set(sink)
