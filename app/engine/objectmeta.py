"""What the cache remembers about one object: size, validators, stored headers, timing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from app.httpcache.dates import parse_http_date
from cache.keys import version_tag

# Fields a stored response does not keep: they describe one message, not the object, or
# (Set-Cookie) belong to one client. Date and Age are kept: age is computed from them.
NOT_STORED = frozenset(
    {"content-length", "content-range", "server", "set-cookie", "x-request-id", "accept-ranges"}
)


@dataclass(slots=True)
class ObjectMeta:
    size: int
    etag: str | None
    last_modified: str | None
    headers: list[tuple[str, str]]  # stored response headers, lowercase names
    request_time: float  # RFC 9111 4.2.3 request_time of the exchange that stored/validated it
    response_time: float  # ... and its response_time
    vary: list[str] | None = None  # request fields the response varies on
    whole: bool = False  # stored from a 200 of one slice: the origin may not serve ranges
    status: int = 200  # a whole object may be a cached 301, 404, 410...

    @property
    def validator(self) -> str | None:
        """What pins one version: a strong ETag, else Last-Modified plus size, else nothing."""
        if self.etag and not self.etag.startswith("W/"):
            return "etag:" + self.etag
        if self.last_modified:
            return f"lm:{self.last_modified}:{self.size}"
        return None

    @property
    def pins_version(self) -> bool:
        """May bytes of two separate origin answers be joined as one version?

        Only under a strong validator: a strong ETag, or a Last-Modified at least one
        second older than the response's Date (RFC 9110 8.8.2.2; a same-second date is
        weak: two versions may share it). Otherwise an object is not sliced across origin
        requests, and a retry re-reads its slice from the first byte.
        """
        if self.etag and not self.etag.startswith("W/"):
            return True
        if not self.last_modified:
            return False
        modified = parse_http_date(self.last_modified)
        date = self.header("date")
        sent = parse_http_date(date) if date is not None else None
        return modified is not None and sent is not None and sent - modified >= 1

    @property
    def version(self) -> str:
        """Part of every slice key: slices of two versions can never be read as one."""
        validator = self.validator
        return version_tag(validator if validator is not None else f"unvalidated:{self.size}")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> ObjectMeta:
        raw = json.loads(blob)
        raw["headers"] = [tuple(pair) for pair in raw["headers"]]
        return cls(**raw)
