"""uvicorn's httptools protocol, with a Date on the replies uvicorn writes by itself and
103 Early Hints.

The app writes Date (the origin's on relayed and cached responses), so uvicorn's own Date
header is off; its 400 for a malformed request would then go out without one, which RFC
9110 6.6.1 does not allow.

uvicorn does not implement the ASGI ``http.response.early_hint`` extension; this class
does, for HTTP/1.1 clients (RFC 9110 15.2: no 1xx to an HTTP/1.0 one), until the final
response starts. A ``status`` (102 or 103) and a ``headers`` list in the message
(app.interim) are written as is, else a 103 with one Link field per ``links`` entry.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.accesslog import http_date_now
from app.interim import EARLY_HINT


class HttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        state = self.server_state
        defaults = state.default_headers
        state.default_headers = [*defaults, (b"date", http_date_now())]
        try:
            super().send_400_response(msg)
        finally:
            state.default_headers = defaults

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        allow_early_hints(cycle)
        super()._start_asgi_task(cycle, app)


def allow_early_hints(cycle: RequestResponseCycle) -> None:
    """Offer the early-hint extension to this request and write its messages as 103s."""
    scope: Any = cycle.scope
    if scope.get("http_version") != "1.1":
        return
    scope.setdefault("extensions", {})[EARLY_HINT] = {}
    send = cycle.send

    async def send_with_early_hints(message: Any) -> None:
        if message["type"] != EARLY_HINT:
            await send(message)
            return
        if cycle.response_started or cycle.disconnected:
            return  # too late: a 1xx after the final response would corrupt the stream
        fields = message.get("headers") or [(b"link", link) for link in message.get("links", [])]
        status = b"102 Processing" if message.get("status") == 102 else b"103 Early Hints"
        lines = b"".join(bytes(name) + b": " + bytes(value) + b"\r\n" for name, value in fields)
        cycle.transport.write(b"HTTP/1.1 " + status + b"\r\n" + lines + b"\r\n")

    cycle.send = send_with_early_hints  # type: ignore[method-assign]
