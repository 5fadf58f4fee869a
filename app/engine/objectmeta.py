"""What the cache remembers about one object: size, validators, stored headers, timing."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields

from app.edge.headers import Headers, with_via
from app.httpcache.cache_status import kept_upstream_members
from app.httpcache.dates import parse_http_date
from app.httpcache.freshness import (
    FreshnessPolicy,
    PreparedFreshness,
    StoredAge,
    StoredResponseInfo,
    prepare_freshness,
)
from cache.keys import version_tag

# Fields a stored response does not keep: they describe one message, not the object, or
# (Set-Cookie) belong to one client. Date and Age are kept: age is computed from them.
NOT_STORED = frozenset(
    {"content-length", "content-range", "server", "set-cookie", "x-request-id", "accept-ranges"}
)

# Fields of the stored response this hop restates when replaying it. Date is replayed:
# with Age it tells a downstream cache how old the response is (RFC 9111 4.2.3).
NOT_REPLAYED = frozenset({"server", "age", "content-length", "accept-ranges"})


@dataclass(frozen=True, slots=True)
class ReplayBlock:
    """The replayed part of every response served from one stored response, built once.

    ``fields``: the stored end-to-end fields this hop replays, with our Via, without the
    stored Cache-Status (whose members go in front of ours: ``upstream_cache_status``).
    A hit adds only ``age`` (from ``age``), Accept-Ranges, Cache-Status and what the
    request changes. ``source``: the header list it was built from.

    Tuples, not lists: every cached object's metadata keeps a block (thousands), and
    CPython's full collections walk every list on the event loop, where it leaves a tuple
    of strings out (a full collection with 40k objects requested: 6.4-11.9 ms against
    13.4-20.3 ms with lists).
    """

    source: Headers
    request_time: float
    response_time: float
    fields: tuple[tuple[str, str], ...]
    upstream_cache_status: tuple[str, ...]
    age: StoredAge

    @classmethod
    def of(cls, headers: Headers, request_time: float, response_time: float) -> ReplayBlock:
        replayed = with_via([(k, v) for k, v in headers if k not in NOT_REPLAYED])
        return cls(
            source=headers,
            request_time=request_time,
            response_time=response_time,
            fields=tuple((k, v) for k, v in replayed if k != "cache-status"),
            upstream_cache_status=kept_upstream_members(
                v for k, v in headers if k == "cache-status"
            ),
            age=StoredAge.of(headers, request_time, response_time),
        )


@functools.lru_cache(maxsize=4096)
def _version_of(validator: str) -> str:
    return version_tag(validator)


# application/* media types whose format is compressed already (archives, packages, an audio
# container): compressing their slices again only costs CPU.
COMPRESSED_APPLICATION_TYPES = frozenset(
    {
        "zip",
        "gzip",
        "x-gzip",
        "zstd",
        "x-xz",
        "x-bzip2",
        "x-7z-compressed",
        "vnd.rar",
        "x-rar-compressed",
        "java-archive",
        "vnd.android.package-archive",
        "x-apple-diskimage",
        "ogg",
    }
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
    # What every hit would otherwise parse again: prepared on first use after the response
    # was stored or revalidated (a 304 makes a new ObjectMeta), checked against the
    # headers and times it was made from (``_withheld`` replaces the header list).
    _freshness: PreparedFreshness | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _replay: ReplayBlock | None = field(default=None, init=False, repr=False, compare=False)

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
        return _version_of(validator if validator is not None else f"unvalidated:{self.size}")

    def freshness(self, policy: FreshnessPolicy) -> PreparedFreshness:
        """The stored response's parsed freshness (RFC 9111 4.2), computed once."""
        prepared = self._freshness
        if prepared is None or not prepared.matches(
            self.headers, self.status, self.request_time, self.response_time, policy
        ):
            info = StoredResponseInfo(
                self.status, self.headers, self.request_time, self.response_time
            )
            prepared = self._freshness = prepare_freshness(info, policy)
        return prepared

    def replay(self) -> ReplayBlock:
        """The replayed header block of this stored response, built once."""
        block = self._replay
        if (
            block is None
            or block.source is not self.headers
            or block.request_time != self.request_time
            or block.response_time != self.response_time
        ):
            block = self._replay = ReplayBlock.of(
                self.headers, self.request_time, self.response_time
            )
        return block

    @property
    def compressible(self) -> bool | None:
        """False when the stored headers say the body is already compressed (a content
        coding, or a media type that is compressed by its format): L2 then makes no
        compression attempt on its slices. None: unknown, L2 tries a sample."""
        coding = self.header("content-encoding")
        if coding is not None and coding.strip().lower() not in ("", "identity"):
            return False
        media = (self.header("content-type") or "").split(";", 1)[0].strip().lower()
        kind, _, subtype = media.partition("/")
        if kind in ("video", "audio", "font") or (kind == "image" and "svg" not in subtype):
            return False
        if kind == "application" and subtype in COMPRESSED_APPLICATION_TYPES:
            return False
        return None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def to_bytes(self) -> bytes:
        # Only what the constructor takes: the prepared blocks are rebuilt after a load.
        record = {name: getattr(self, name) for name in _STORED_FIELDS}
        return _ENCODE(record).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> ObjectMeta:
        raw = json.loads(blob)
        raw["headers"] = [tuple(pair) for pair in raw["headers"]]
        return cls(**raw)


# What to_bytes writes (the constructor's fields), and one compact encoder for every call:
# json.dumps with arguments builds a new encoder each time.
_STORED_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ObjectMeta) if f.init)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
