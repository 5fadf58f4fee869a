"""uvicorn's httptools protocol, with a Date on the replies uvicorn writes by itself.

The app writes Date (the origin's on relayed and cached responses), so uvicorn's own Date
header is off; its 400 for a malformed request would then go out without one, which RFC
9110 6.6.1 does not allow.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.accesslog import http_date_now


class HttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        state = self.server_state
        defaults = state.default_headers
        state.default_headers = [*defaults, (b"date", http_date_now())]
        try:
            super().send_400_response(msg)
        finally:
            state.default_headers = defaults
