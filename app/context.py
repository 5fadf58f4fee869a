"""What one request carries through the app: its parsed target, headers and log record."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

from app.edge.headers import Headers, decode_raw, get
from app.edge.writtenout import WRITTEN_OUT, WriteWatch

SCOPE_KEY = "slicecache.request"


@dataclass(slots=True)
class SliceStats:
    """Where one response's slices came from: the store, a new fetch, another's fetch."""

    hit: int = 0
    miss: int = 0
    coalesced: int = 0


@dataclass(slots=True)
class RequestLog:
    """Filled by the handlers, written as one JSON line by the access-log middleware."""

    request_id: str
    cache: str = "-"
    upstream_seconds: float = 0.0
    aborted: str | None = None  # why a started response was cut short
    # Bytes of the response written and then discarded by a reset of the connection (the
    # send timeout's): not counted as sent.
    discarded: int = 0
    slices: SliceStats | None = None  # set on the sliced path


@dataclass(slots=True)
class RequestContext:
    method: str
    target: str  # path plus "?query", exactly as the client sent it (still percent-encoded)
    path: str
    headers: Headers
    client_ip: str | None
    scheme: str
    log: RequestLog
    # The server's "slicecache.written_out" extension (app.edge.writtenout), if offered:
    # how much of what was written the transport still holds.
    written_out: WriteWatch | None = None

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestContext:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        target = raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        client = scope.get("client")
        log = scope.get(SCOPE_KEY)
        if log is None:
            log = RequestLog(request_id="-")
        return cls(
            method=scope["method"],
            target=target,
            path=raw_path.decode("latin-1"),
            headers=decode_raw(scope["headers"]),
            client_ip=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            log=log,
            written_out=scope.get("extensions", {}).get(WRITTEN_OUT, {}).get("watch"),
        )

    def header(self, name: str) -> str | None:
        return get(self.headers, name)

    @property
    def has_body(self) -> bool:
        """RFC 9112 6.3: a request has a body only with Content-Length > 0 or Transfer-Encoding."""
        if self.header("transfer-encoding") is not None:
            return True
        length = self.header("content-length")
        return length is not None and length.strip() not in {"", "0"}
