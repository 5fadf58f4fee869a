"""Invalidation by unsafe requests (RFC 9111 section 4.4).

A non-error response (2xx, 3xx) to an unsafe method — anything but GET, HEAD, OPTIONS,
TRACE, including methods we do not know — invalidates the target URI, and the URIs in
Location and Content-Location when they have the same origin (scheme, host, port) as
the target: a cross-origin one is never invalidated, so one origin cannot flush another's
entries.

URIs are returned in the cache's object-key shape (``cache/keys.py``):
``scheme://host:port/path?query``, with scheme and host lowercased, the port always
explicit, an empty path as ``/``, percent-encodings normalized
(:func:`normalize_percent_encoding`) and no fragment.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from ._fields import Headers, get_first

__all__ = [
    "SAFE_METHODS",
    "invalidated_uris",
    "normalize_percent_encoding",
    "normalize_uri",
    "same_origin",
]

SAFE_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""RFC 9110 9.2.1. Method names are case-sensitive: ``get`` is an unknown, unsafe method."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3986 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~", but ".": "%2E%2E" decoded would key
# as a dot segment, which an origin may resolve ("/a/../b" is "/b") where it serves
# "/a/%2E%2E/b" otherwise; the two must not share an entry (helper-67 saw the question).
_DECODED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")


def _normalized_octet(match: re.Match[str]) -> str:
    octet = int(match.group()[1:], 16)
    return chr(octet) if octet in _DECODED else match.group().upper()


def normalize_percent_encoding(target: str) -> str:
    """``target`` with percent-encoded unreserved characters but "." decoded and the hex
    digits of the other percent-encodings in upper case (RFC 3986 6.2.2.1-6.2.2.2).

    Every URI producer and server treats the spellings as the same resource (RFC 3986
    2.3: they are equivalent), so they are one cache entry, and a PURGE of one spelling
    purges the others (helper-65: ``/4k%2Dx.bin`` stayed cached after a PURGE of
    ``/4k-x.bin``; nginx keys ``$uri`` decoded). Reserved characters stay encoded:
    ``%2F`` is not ``/``. Only the key: the origin gets the target as sent.

    A target with a ``%`` that does not start an escape is left as it is: decoding next
    to it would make new escapes (``%%32F`` into ``%2F``, ``%2%44`` into ``%2D``), the key
    of another resource (helper-66: cross-resource cache poisoning). Left alone, it
    contains a stray ``%`` that no normalized key has, so it can only equal itself.
    """
    if "%" not in target or _STRAY_PERCENT.search(target):
        return target
    return _PERCENT_ENCODED.sub(_normalized_octet, target)


def _origin(uri: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URI; None if not one or malformed."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def same_origin(a: str, b: str) -> bool:
    """True when two absolute http(s) URIs share scheme, host and port (RFC 9110 4.3.1)."""
    origin_a = _origin(a)
    return origin_a is not None and origin_a == _origin(b)


def normalize_uri(uri: str) -> str | None:
    """``scheme://host:port/path?query`` of an absolute http(s) URI, None if not one."""
    origin = _origin(uri)
    if origin is None:
        return None
    scheme, host, port = origin
    parts = urlsplit(uri)
    if ":" in host:  # an IPv6 literal goes back in brackets
        host = f"[{host}]"
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}:{port}{normalize_percent_encoding(path + query)}"


def invalidated_uris(
    method: str, status: int, request_url: str, response_headers: Headers
) -> list[str]:
    """The URIs whose stored responses must be invalidated after this exchange.

    ``request_url`` is the absolute effective request URI. Empty for a safe method or an
    error/informational status. Otherwise the target URI first, then Location and
    Content-Location resolved against it (relative references allowed) when same-origin;
    duplicates removed.
    """
    if method in SAFE_METHODS or not 200 <= status <= 399:
        return []
    target = normalize_uri(request_url)
    if target is None:
        return []
    uris = [target]
    for name in ("location", "content-location"):
        value = get_first(response_headers, name)
        if value is None or not value.strip():
            continue
        try:
            resolved = urljoin(request_url, value.strip())
        except ValueError:
            continue
        normalized = normalize_uri(resolved)
        if normalized is not None and same_origin(normalized, target):
            uris.append(normalized)
    return list(dict.fromkeys(uris))
