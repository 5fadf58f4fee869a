"""What the object directory answers for a GET (:meth:`ObjectDirectory.open`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from app.edge.headers import Headers
from app.engine.fills import SliceFill
from app.engine.objectmeta import ObjectMeta
from app.httpcache.cache_status import CacheStatus, Fwd


@dataclass(frozen=True, slots=True)
class ObjectRequest:
    """A GET as the directory sees it."""

    object_key: str  # the cache key: what the origin sees (see Runtime.object_key)
    target: str  # path and query, as sent to the origin
    headers: Headers  # the client's: they decide Vary, freshness and storability
    # What the origin is sent (its own Host, no hop-by-hop fields, X-Forwarded-*, Via):
    # the base of every probe and slice request.
    origin_headers: Headers


@dataclass(slots=True)
class Opened:
    """Serve ``meta`` from slices under ``entry_key``."""

    meta: ObjectMeta
    entry_key: str
    status: CacheStatus
    probed: bool = False  # this request's own probe fetched slice 0
    shareable: bool = True  # False: private to this response
    stored: bool = True  # False: its slices are not written to the cache
    first_fill: SliceFill | None = None  # slice 0 as the probe fetched it, done or not
    # Set-Cookie of the origin's answer, for the request that fetched it only (never stored).
    cookies: list[tuple[str, str]] = field(default_factory=list)
    # Run once the response has ended, however it ended: drops a stored copy that this
    # response still reads (a 304 made it unstorable; RFC 9111 4.3.4).
    after: Callable[[], Awaitable[object]] | None = None
    # The instant the Cache-Status TTL was computed at: the Age sent with it is computed
    # at the same one, so that Age + TTL is the lifetime (None: when the answer starts).
    decided_at: float | None = None


@dataclass(slots=True)
class Forward:
    """Not served from slices: relay ``response`` if given, else pass the request through."""

    reason: str
    response: httpx.Response | None = None


@dataclass(slots=True)
class Refuse:
    status: int
    reason: str


Opening = Opened | Forward | Refuse


def forwarded(result: Opened | Forward, fwd: Fwd) -> Opened | Forward:
    """``result`` with Cache-Status ``fwd`` set to why the request went forward, when the
    probe that made it could not know (it only saw the origin's answer)."""
    if not isinstance(result, Opened) or result.status.fwd not in ("uri-miss", "stale"):
        return result
    if result.status.served_stale:
        return result
    return dataclasses.replace(result, status=dataclasses.replace(result.status, fwd=fwd))
