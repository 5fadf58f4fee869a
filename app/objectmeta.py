"""What the cache remembers about one object: size, validators, stored headers, freshness."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from cache.keys import version_tag

# Fields a stored response must not replay: they describe one message, not the object.
NOT_STORED = frozenset(
    {"content-length", "content-range", "date", "server", "age", "set-cookie", "x-request-id"}
)


@dataclass(slots=True)
class ObjectMeta:
    size: int
    etag: str | None
    last_modified: str | None
    headers: list[tuple[str, str]]  # end-to-end response headers to replay (lowercase names)
    request_time: float  # when we asked the origin (RFC 9111 4.2.3 request_time)
    response_time: float  # when the answer arrived (response_time)
    expires_at: float  # end of freshness, unix seconds
    date_value: float | None = None  # the origin's Date, for age computation
    age_value: int = 0  # the origin's Age header when stored

    @property
    def validator(self) -> str | None:
        """What pins one version: a strong ETag, else Last-Modified plus size, else nothing."""
        if self.etag and not self.etag.startswith("W/"):
            return "etag:" + self.etag
        if self.last_modified:
            return f"lm:{self.last_modified}:{self.size}"
        return None

    @property
    def version(self) -> str:
        validator = self.validator
        if validator is None:
            raise ValueError("an object without a validator has no version")
        return version_tag(validator)

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
