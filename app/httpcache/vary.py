"""Vary: which stored variant a request may use (RFC 9111 section 4.1).

A stored response is only reusable for a request whose header fields nominated by the
stored response's Vary match those of the request that produced it. Values are
normalised before comparison as 4.1 allows: field lines combined, list members stripped
of whitespace. ``Vary: *`` never matches (such responses are not stored anyway).
"""

from __future__ import annotations

import re
from typing import Literal

from ._fields import Headers, get_all, split_list

__all__ = ["selecting_headers", "variant_matches", "vary_field_names"]


_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
"""A field-name is a token (RFC 9110 5.1, 5.6.2); matched after lowercasing."""


def vary_field_names(response_headers: Headers) -> tuple[str, ...] | Literal["*"]:
    """The lowercase field names a response varies on (sorted, unique), or ``"*"``.

    A member that is not a field-name (``Foo Bar``, ``Foo;``, ``"Foo"``) counts as ``*``:
    read as a name no request carries, it would let one variant match every request.
    """
    names = {member.strip().lower() for member in split_list(get_all(response_headers, "vary"))}
    if "*" in names or not all(_FIELD_NAME.fullmatch(name) for name in names):
        return "*"
    return tuple(sorted(names))


ABSENT = "\n"
"""The selecting value of a field the request lacks. 4.1: an absent field "can only match
another request if it is also absent there", so it must differ from every value a present
field normalises to, including ``""`` (``Foo:`` sent empty); no field value holds a LF."""


def _normalised(request_headers: Headers, name: str) -> str:
    values = get_all(request_headers, name)
    if not values:
        return ABSENT
    return ", ".join(split_list(values))


def selecting_headers(
    vary: tuple[str, ...] | Literal["*"], request_headers: Headers
) -> list[tuple[str, str]] | None:
    """(name, normalised value) of each nominated field, for ``cache.keys.variant_key``.

    An absent field gets value :data:`ABSENT` (absent in both requests matches, absent and
    empty do not, 4.1); None for ``Vary: *``.
    """
    if vary == "*":
        return None
    return [(name, _normalised(request_headers, name)) for name in vary]


def variant_matches(
    vary: tuple[str, ...] | Literal["*"],
    stored_request_headers: Headers,
    request_headers: Headers,
) -> bool:
    """True when ``request_headers`` select the variant stored for ``stored_request_headers``."""
    stored = selecting_headers(vary, stored_request_headers)
    return stored is not None and stored == selecting_headers(vary, request_headers)
