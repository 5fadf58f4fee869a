"""Cache-Control parsing (RFC 9111 section 5.2) and the legacy Pragma (section 5.4).

One parser serves requests and responses: a :class:`CacheControl` holds every directive
either side can send, and each consumer reads the ones that apply to it.

Robustness rules (the wire is full of garbage, and a cache must not crash on it):

* directive names are case-insensitive; arguments may be tokens or quoted-strings
  (5.2: recipients ought to accept both forms);
* commas inside quoted-strings do not split directives;
* an invalid or conflicting freshness directive (``max-age``, ``s-maxage``: negative,
  non-integer, two different values) is read as ``0``, which makes the response stale
  (4.2.1: "caches are encouraged to consider responses that have invalid freshness
  information to be stale"); the name is recorded in :attr:`CacheControl.invalid`;
* other duplicated directives keep the most restrictive value (4.2.1: "the most
  restrictive directive should be honored"): the smaller stale window, the larger
  ``min-fresh``, an unqualified ``no-cache``/``private`` over a qualified one;
* a delta-seconds larger than 2^31 is 2^31 (1.2.2);
* unknown directives are kept in :attr:`CacheControl.extensions` and otherwise ignored
  (5.2.3).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ._fields import Headers, get_all, has, parse_delta_seconds, split_list, unquote

__all__ = [
    "CacheControl",
    "FieldNames",
    "cache_control_of",
    "parse_cache_control",
    "pragma_no_cache",
    "request_cache_control",
]

FieldNames = tuple[str, ...]
"""Lowercase field names of a qualified ``no-cache="..."`` or ``private="..."``."""


@dataclass(frozen=True)
class CacheControl:
    """Every Cache-Control directive this cache understands, parsed.

    ``no_cache`` and ``private`` are ``False`` (absent), ``True`` (unqualified) or a
    non-empty tuple of lowercase field names (qualified form, e.g. ``no-cache="Set-Cookie"``).
    Delta-seconds directives are ``None`` when absent. ``max_stale`` is ``"any"`` when sent
    without a value (5.2.1.2).
    """

    # response directives (5.2.2) and those shared with requests
    no_store: bool = False
    no_cache: bool | FieldNames = False
    private: bool | FieldNames = False
    public: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    immutable: bool = False  # RFC 8246
    stale_while_revalidate: int | None = None  # RFC 5861
    stale_if_error: int | None = None  # RFC 5861 (request or response)
    # request directives (5.2.1)
    max_stale: int | Literal["any"] | None = None
    min_fresh: int | None = None
    only_if_cached: bool = False
    # bookkeeping
    invalid: FieldNames = ()
    """Names of directives whose argument was invalid or conflicting."""
    extensions: tuple[tuple[str, str | None], ...] = field(default=())
    """Unrecognised directives as (lowercase name, unquoted argument or None)."""

    @property
    def no_cache_all(self) -> bool:
        """The unqualified ``no-cache``: the whole response needs validation before reuse."""
        return self.no_cache is True

    @property
    def no_cache_fields(self) -> FieldNames:
        """Field names of a qualified ``no-cache``, else ``()``."""
        return self.no_cache if isinstance(self.no_cache, tuple) else ()

    @property
    def private_all(self) -> bool:
        """The unqualified ``private``: a shared cache must not store the response."""
        return self.private is True

    @property
    def private_fields(self) -> FieldNames:
        """Field names of a qualified ``private``, else ``()``."""
        return self.private if isinstance(self.private, tuple) else ()


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
"""A field name (RFC 9110 5.6.2 token), lowercase."""

_BOOLEAN = {
    "no-store": "no_store",
    "public": "public",
    "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate",
    "must-understand": "must_understand",
    "no-transform": "no_transform",
    "immutable": "immutable",
    "only-if-cached": "only_if_cached",
}


def _split_directive(member: str) -> tuple[str, str | None]:
    name, sep, argument = member.partition("=")
    name = name.strip(" \t").lower()
    if not sep:
        return name, None
    return name, unquote(argument.strip(" \t"))


def _merge_qualified(current: bool | FieldNames, argument: str | None) -> bool | FieldNames:
    """Combine an occurrence of no-cache/private with what was seen before."""
    if current is True:
        return True
    if argument is None:
        return True
    names = tuple(
        dict.fromkeys(
            part.strip(" \t").lower() for part in argument.split(",") if part.strip(" \t")
        )
    )
    if not names or not all(_TOKEN.fullmatch(name) for name in names):
        # no-cache="" names nothing, no-cache="a b names garbage: read either as the
        # unqualified form, the more restrictive one.
        return True
    if current is False:
        return names
    return tuple(dict.fromkeys(current + names))


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Parse every Cache-Control field line of one message into a :class:`CacheControl`.

    ``values`` are the field line values in order (several lines are one list, RFC 9110
    5.3). Never raises; see the module docstring for invalid and duplicate directives.
    """
    return _parse_lines(tuple(values))


# Parsed field values, remembered: a response's (or a client's) Cache-Control is read by
# several decisions of one request (storability, freshness, revalidation), and the same
# few values recur across requests. 4-7 us of parsing each time (a missing field
# included) became a dictionary lookup. The result is frozen, so sharing it is safe; a
# client sending ever new values only churns this bounded LRU.
PARSED_KEPT = 1024


@functools.lru_cache(maxsize=PARSED_KEPT)
def _parse_lines(values: tuple[str, ...]) -> CacheControl:
    flags: dict[str, bool] = {}
    no_cache: bool | FieldNames = False
    private: bool | FieldNames = False
    freshness: dict[str, list[int | None]] = {"max-age": [], "s-maxage": []}
    smallest: dict[str, int] = {}
    min_fresh: int | None = None
    max_stale: int | Literal["any"] | None = None
    invalid: list[str] = []
    extensions: list[tuple[str, str | None]] = []

    for member in split_list(values):
        name, argument = _split_directive(member)
        if not name:
            continue
        if name in _BOOLEAN:
            flags[_BOOLEAN[name]] = True
        elif name == "no-cache":
            no_cache = _merge_qualified(no_cache, argument)
        elif name == "private":
            private = _merge_qualified(private, argument)
        elif name in freshness:
            freshness[name].append(None if argument is None else parse_delta_seconds(argument))
        elif name in ("stale-while-revalidate", "stale-if-error"):
            seconds = None if argument is None else parse_delta_seconds(argument)
            if seconds is None:
                invalid.append(name)  # an invalid window grants nothing
            else:
                smallest[name] = min(seconds, smallest.get(name, seconds))
        elif name == "min-fresh":
            seconds = None if argument is None else parse_delta_seconds(argument)
            if seconds is None:
                invalid.append(name)
            else:
                min_fresh = seconds if min_fresh is None else max(min_fresh, seconds)
        elif name == "max-stale":
            if argument is None:
                max_stale = "any" if max_stale is None else max_stale
            else:
                seconds = parse_delta_seconds(argument)
                if seconds is None:
                    # An invalid max-stale accepts no staleness at all (most restrictive).
                    invalid.append(name)
                    max_stale = 0
                elif max_stale is None or max_stale == "any":
                    max_stale = seconds
                else:
                    max_stale = min(max_stale, seconds)
        else:
            extensions.append((name, argument))

    resolved: dict[str, int | None] = {}
    for name, seen in freshness.items():
        if not seen:
            resolved[name] = None
        elif any(value is None for value in seen) or len(set(seen)) > 1:
            invalid.append(name)
            resolved[name] = 0
        else:
            resolved[name] = seen[0]

    return CacheControl(
        no_store=flags.get("no_store", False),
        no_cache=no_cache,
        private=private,
        public=flags.get("public", False),
        max_age=resolved["max-age"],
        s_maxage=resolved["s-maxage"],
        must_revalidate=flags.get("must_revalidate", False),
        proxy_revalidate=flags.get("proxy_revalidate", False),
        must_understand=flags.get("must_understand", False),
        no_transform=flags.get("no_transform", False),
        immutable=flags.get("immutable", False),
        stale_while_revalidate=smallest.get("stale-while-revalidate"),
        stale_if_error=smallest.get("stale-if-error"),
        max_stale=max_stale,
        min_fresh=min_fresh,
        only_if_cached=flags.get("only_if_cached", False),
        invalid=tuple(dict.fromkeys(invalid)),
        extensions=tuple(extensions),
    )


def cache_control_of(headers: Headers) -> CacheControl:
    """The parsed Cache-Control of a header section (all its lines)."""
    return parse_cache_control(get_all(headers, "cache-control"))


def pragma_no_cache(request_headers: Headers) -> bool:
    """True when a request's ``Pragma: no-cache`` is to be honoured (RFC 9111 5.4).

    Pragma is only looked at when the request has no Cache-Control field at all: when
    Cache-Control is present and understood, Pragma is ignored.
    """
    if has(request_headers, "cache-control"):
        return False
    return any(
        member.strip(" \t").lower() == "no-cache"
        for member in split_list(get_all(request_headers, "pragma"))
    )


def request_cache_control(request_headers: Headers) -> CacheControl:
    """A request's Cache-Control, with ``Pragma: no-cache`` folded in as ``no-cache``."""
    if pragma_no_cache(request_headers):
        return CacheControl(no_cache=True)
    return cache_control_of(request_headers)
