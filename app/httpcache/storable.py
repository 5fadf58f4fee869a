"""May a shared cache store this response? (RFC 9111 section 3).

:func:`storability` answers with a :class:`Storable` decision: ``store``, a short
``reason`` usable in logs and in Cache-Status ``detail``, and the fields that must be
removed from the stored copy. :func:`headers_for_storage` applies that removal.

Product decisions (beyond the RFC, documented here so they are not rediscovered):

* Only GET responses are stored. A HEAD response could freshen a stored GET response
  (9111 4.3.5; :func:`app.httpcache.conditional.merge_304_headers` does the merge), but it
  never creates an entry.
* ``Set-Cookie``: a response carrying one is stored only when the origin explicitly says
  ``public`` (or names Set-Cookie in a qualified ``private``/``no-cache``), and the stored
  copy never keeps the cookie. A cookie is per user by nature; replaying it from a shared
  cache is a session-fixation bug waiting to happen. The client of the miss still gets
  its cookie from the live response.
* 206 responses are stored only when the caller says so (``allow_partial=True``): the
  slicing layer stores the slices it asked for, nothing else does.
* ``Vary: *`` is never stored: it can never match a later request (4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._fields import (
    HOP_BY_HOP,
    HeaderList,
    Headers,
    connection_tokens,
    has,
)
from .cache_control import cache_control_of
from .targeted import effective_headers
from .vary import vary_field_names

__all__ = [
    "HEURISTICALLY_CACHEABLE",
    "STORABLE_METHODS",
    "Storable",
    "headers_for_storage",
    "is_heuristically_cacheable",
    "storability",
    "understood_statuses",
]

HEURISTICALLY_CACHEABLE: frozenset[int] = frozenset(
    {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}
)
"""RFC 9110 15.1: status codes cacheable by default (heuristic freshness allowed)."""

_EXPLICITLY_CACHEABLE_UNDERSTOOD: frozenset[int] = frozenset({302, 303, 307})
"""Cacheable only with explicit freshness; we implement their semantics (plain reuse)."""

STORABLE_METHODS: frozenset[str] = frozenset({"GET"})
"""Methods whose responses we store (HEAD: see module docstring)."""

ALWAYS_STRIPPED: tuple[str, ...] = ("set-cookie",)
"""Fields never kept in a stored response (the Set-Cookie decision above)."""


def understood_statuses(*, allow_partial: bool = False) -> frozenset[int]:
    """Status codes whose caching requirements this cache understands (9111 3, 5.2.2.3)."""
    codes = HEURISTICALLY_CACHEABLE | _EXPLICITLY_CACHEABLE_UNDERSTOOD
    return codes if allow_partial else codes - {206}


def is_heuristically_cacheable(status: int) -> bool:
    """RFC 9110 15.1: may this status get a heuristic freshness lifetime?"""
    return status in HEURISTICALLY_CACHEABLE


@dataclass(frozen=True)
class Storable:
    """The storage decision for one response.

    ``reason`` is ``"ok"`` when storing, else one short token naming the first rule that
    refused: ``method``, ``status``, ``partial``, ``must-understand``, ``no-store``,
    ``private``, ``authorization``, ``vary-star``, ``set-cookie``, ``no-freshness``.
    ``headers_to_strip`` (lowercase names) must be removed before storing.
    """

    store: bool
    reason: str
    headers_to_strip: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.store


def _refuse(reason: str) -> Storable:
    return Storable(store=False, reason=reason)


def storability(
    method: str,
    status: int,
    request_headers: Headers,
    response_headers: Headers,
    *,
    shared: bool = True,
    allow_partial: bool = False,
    targeted: tuple[str, ...] = (),
) -> Storable:
    """Decide whether a response may be stored, per RFC 9111 section 3 (in rule order).

    1. method understood and storable (GET only);
    2. final status (not 1xx), and not 304 (a 304 updates, it is not stored, 4.3.4);
    3. 206 only with ``allow_partial``; with ``must-understand`` the status must be
       understood, and then a response ``no-store`` is ignored (5.2.2.3);
    4. no ``no-store`` in the request (5.2.1.5) or the response (5.2.2.5);
    5. shared: no unqualified ``private``; a qualified one strips its fields (5.2.2.7);
    6. shared: a request with Authorization only with ``public``, ``s-maxage`` or
       ``must-revalidate`` in the response (3.5);
    7. not ``Vary: *`` (4.1);
    8. Set-Cookie only with ``public`` (product decision, see module docstring);
    9. something that makes it cacheable: ``public``, ``max-age``, ``s-maxage`` (shared),
       ``Expires``, ``private`` (private caches only), or a heuristically cacheable status.

    ``targeted``: the targeted fields this cache obeys (RFC 9213, see
    :mod:`app.httpcache.targeted`); the first valid one stands in for Cache-Control and
    Expires in every rule above.
    """
    response_headers = effective_headers(response_headers, targeted)
    request_cc = cache_control_of(request_headers)
    cc = cache_control_of(response_headers)

    if method not in STORABLE_METHODS:
        return _refuse("method")
    if status < 200 or status > 599 or status == 304:
        return _refuse("status")
    if status == 206 and not allow_partial:
        return _refuse("partial")
    understood = status in understood_statuses(allow_partial=allow_partial)
    if cc.must_understand and not understood:
        return _refuse("must-understand")
    if request_cc.no_store:
        return _refuse("no-store")
    if cc.no_store and not (cc.must_understand and understood):
        return _refuse("no-store")

    strip: list[str] = list(ALWAYS_STRIPPED)
    if shared:
        if cc.private_all:
            return _refuse("private")
        strip.extend(cc.private_fields)
        if has(request_headers, "authorization") and not (
            cc.public or cc.s_maxage is not None or cc.must_revalidate
        ):
            return _refuse("authorization")
    # A qualified no-cache field may not be reused without validation: not storing it at
    # all is the simplest way to honour that.
    strip.extend(cc.no_cache_fields)

    if vary_field_names(response_headers) == "*":
        return _refuse("vary-star")  # or a Vary member that names no field (vary.py)
    named = set(cc.private_fields) | set(cc.no_cache_fields)
    if has(response_headers, "set-cookie") and not (cc.public or "set-cookie" in named):
        return _refuse("set-cookie")

    cacheable = (
        cc.public
        or cc.max_age is not None
        or (shared and cc.s_maxage is not None)
        or has(response_headers, "expires")
        or (not shared and cc.private is not False)
        or is_heuristically_cacheable(status)
    )
    if not cacheable:
        return _refuse("no-freshness")
    return Storable(store=True, reason="ok", headers_to_strip=tuple(dict.fromkeys(strip)))


def forbids_storing(response_headers: Headers, targeted: tuple[str, ...] = ()) -> bool:
    """Whether a response says a shared cache must not store it (``no-store``, an
    unqualified ``private``), read as :func:`storability` reads it. For an answer that
    only continues an object already judged storable: a later slice's own say."""
    cc = cache_control_of(effective_headers(response_headers, targeted))
    return bool(cc.no_store and not cc.must_understand) or bool(cc.private_all)


def headers_for_storage(response_headers: Headers, decision: Storable) -> HeaderList:
    """The header section to store: hop-by-hop fields, fields named in Connection
    (9111 3.1, 9110 7.6.1) and ``decision.headers_to_strip`` removed; order kept."""
    drop = HOP_BY_HOP | connection_tokens(response_headers) | set(decision.headers_to_strip)
    return [(name, value) for name, value in response_headers if name.lower() not in drop]
