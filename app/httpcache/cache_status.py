"""The Cache-Status response header (RFC 9211) and the X-Cache summary.

:class:`CacheStatus` records what happened to one request; :meth:`CacheStatus.header_value`
renders this cache's member (``slicecache; hit; ttl=123``,
``slicecache; fwd=uri-miss; fwd-status=200; stored``), :func:`append_cache_status` adds
it after the members of caches nearer the origin, and :meth:`CacheStatus.x_cache` gives
the one-word X-Cache value:

==============  ====================================================================
X-Cache         when
==============  ====================================================================
``HIT``         served from cache, fresh, without contacting the origin
``STALE``       served a stale stored response (max-stale, stale-while-revalidate,
                stale-if-error)
``REVALIDATED`` the origin answered 304 to our conditional request; stored body served
``PARTIAL``     some slices came from cache, the rest from the origin (``fwd=partial``)
``BYPASS``      not cacheable, not looked up (``fwd=bypass`` or ``fwd=method``)
``MISS``        everything else that came from the origin (miss, changed on
                revalidation, client-forced refetch)
==============  ====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from http_sfv.list import List as SfList

__all__ = [
    "CacheStatus",
    "Fwd",
    "XCache",
    "append_cache_status",
    "kept_upstream_members",
    "sf_item",
]

Fwd = Literal["bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"]
"""RFC 9211 2.2 reasons for forwarding a request."""

CACHE_NAME = "slicecache"

_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*")


class XCache(StrEnum):
    """The X-Cache summary values (see the module table)."""

    HIT = "HIT"
    MISS = "MISS"
    PARTIAL = "PARTIAL"
    STALE = "STALE"
    REVALIDATED = "REVALIDATED"
    BYPASS = "BYPASS"


def sf_item(value: str) -> str:
    """``value`` as a Structured Field bare item (RFC 8941): a token when it is one, else
    an sf-string with ``"`` and ``\\`` escaped and non-printable characters dropped."""
    if _TOKEN.fullmatch(value):
        return value
    printable = "".join(char for char in value if " " <= char <= "~")
    escaped = printable.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class CacheStatus:
    """What this cache did with one request (RFC 9211 2.1-2.8 parameters).

    ``hit`` and ``fwd`` are exclusive (a hit was not forwarded); ``served_stale`` is not
    a Cache-Status parameter (a negative ``ttl`` says it) but selects X-Cache STALE.
    """

    hit: bool = False
    fwd: Fwd | None = None
    fwd_status: int | None = None
    ttl: int | None = None
    stored: bool = False
    collapsed: bool = False
    key: str | None = None
    detail: str | None = None
    served_stale: bool = False

    @classmethod
    def fresh_hit(cls, ttl: int, detail: str | None = None) -> CacheStatus:
        """Served fresh from cache (``detail="default-ttl"``: fresh only by the operator's
        SLICECACHE_CACHE_TTL, the origin said nothing)."""
        return cls(hit=True, ttl=ttl, detail=detail)

    @classmethod
    def stale_hit(cls, ttl: int, detail: str) -> CacheStatus:
        """Served stale without forwarding (``detail``: max-stale, stale-while-revalidate)."""
        return cls(hit=True, ttl=ttl, detail=detail, served_stale=True)

    @classmethod
    def stale_on_error(cls, ttl: int, fwd_status: int | None) -> CacheStatus:
        """The origin failed (``fwd_status`` None: no answer); stored response served."""
        return cls(
            fwd="stale", fwd_status=fwd_status, ttl=ttl, detail="stale-if-error", served_stale=True
        )

    @classmethod
    def revalidated(cls, ttl: int, *, forced_by_client: bool = False) -> CacheStatus:
        """A 304 to our conditional request refreshed the stored response."""
        return cls(fwd="request" if forced_by_client else "stale", fwd_status=304, ttl=ttl)

    @classmethod
    def miss(
        cls, fwd_status: int, *, stored: bool, fwd: Fwd = "uri-miss", ttl: int | None = None
    ) -> CacheStatus:
        """Fetched from the origin (``fwd``: uri-miss, vary-miss, stale, request)."""
        return cls(fwd=fwd, fwd_status=fwd_status, stored=stored, ttl=ttl)

    @classmethod
    def partial(cls, fwd_status: int, *, stored: bool) -> CacheStatus:
        """Some slices from cache, some from the origin."""
        return cls(fwd="partial", fwd_status=fwd_status, stored=stored)

    @classmethod
    def bypass(
        cls, detail: str | None = None, *, method: bool = False, fwd_status: int | None = None
    ) -> CacheStatus:
        """Not a cacheable request or answer; the cache was not consulted or not used."""
        return cls(fwd="method" if method else "bypass", fwd_status=fwd_status, detail=detail)

    def header_value(self, cache_name: str = CACHE_NAME) -> str:
        """This cache's Cache-Status list member, e.g. ``slicecache; hit; ttl=12``."""
        parts = [sf_item(cache_name)]
        if self.hit:
            parts.append("hit")
        elif self.fwd is not None:
            parts.append(f"fwd={self.fwd}")
        if self.fwd_status is not None and not self.hit:
            parts.append(f"fwd-status={self.fwd_status}")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.stored:
            parts.append("stored")
        if self.collapsed:
            parts.append("collapsed")
        if self.key is not None:
            escaped = "".join(c for c in self.key if " " <= c <= "~")
            escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'key="{escaped}"')
        if self.detail is not None:
            parts.append(f"detail={sf_item(self.detail)}")
        return "; ".join(parts)

    def x_cache(self) -> XCache:
        """The X-Cache value (see the module table)."""
        if self.served_stale:
            return XCache.STALE
        if self.hit:
            return XCache.HIT
        if self.fwd in ("bypass", "method"):
            return XCache.BYPASS
        if self.fwd == "partial":
            return XCache.PARTIAL
        if self.fwd in ("stale", "request") and self.fwd_status == 304:
            return XCache.REVALIDATED
        return XCache.MISS


def kept_upstream_members(lines: Iterable[str]) -> tuple[str, ...]:
    """The upstream caches' Cache-Status field lines worth relaying: those that parse as
    an RFC 8941 list. Any other line (an unterminated string or inner list, an empty
    member, obs-text) would make the joined field invalid, and a parser drops an invalid
    field whole, our member with it; joined as it came, ``detail="open`` even swallowed
    ours into its string (helper-74, helper-75). Run when a response is stored or
    relayed, not on each hit."""
    return tuple(line for value in lines if (line := value.strip()) and _is_sf_list(line))


def _is_sf_list(line: str) -> bool:
    try:
        SfList().parse(line.encode("latin-1"))
    except (ValueError, UnicodeEncodeError):
        return False
    return True


def append_cache_status(upstream: Sequence[str], member: str) -> str:
    """The Cache-Status to send: the upstream caches' members (``upstream``, from
    :func:`kept_upstream_members`, nearest the origin first) followed by ours (RFC 9211
    2)."""
    return ", ".join([*upstream, member])
