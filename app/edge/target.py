"""A request target in absolute form, as the origin form the app routes (RFC 9112 3.2.2).

A client talking to a proxy sends ``GET http://host/path HTTP/1.1``, and a server MUST
accept that form. The request is then for the target's host, whatever its Host field
says, and the path of ``http://host`` is ``/`` (3.2.1). Userinfo (``http://user:pw@host/``)
is never sent by a conforming client; a recipient SHOULD treat it as an error (RFC 9110
4.2.4), so it is refused with a 400.

httptools' edge rewrites the target before uvicorn reads it, h11's rewrites the scope
uvicorn made from it (app/edge/httpserver.py, app/edge/h11server.py); both with
:func:`absolute_target`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import httptools


class AbsoluteTarget(NamedTuple):
    origin_form: bytes  # the path ("/" when it has none) and the query, without a fragment
    authority: bytes  # host[:port], an IPv6 literal in brackets
    userinfo: bool  # it names a user: refused
    bare: bool  # neither path nor query: an OPTIONS of it is OPTIONS * (RFC 9112 3.2.4)

    def for_method(self, method: bytes) -> bytes:
        """The target the request is served with: ``*`` for an OPTIONS of a bare authority
        (``OPTIONS http://host HTTP/1.1`` asks about the server, as ``OPTIONS *`` does)."""
        return b"*" if self.bare and method == b"OPTIONS" else self.origin_form


def absolute_target(target: bytes) -> AbsoluteTarget | None:
    """``target`` taken apart if it is in absolute form; None for any other form (origin
    form, ``*``, authority form) or a target that is not a URL at all."""
    if target[:1] in (b"/", b"*") or b"://" not in target:
        return None
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    if not url.schema or not url.host:
        return None
    host = b"[" + url.host + b"]" if b":" in url.host else url.host
    authority = host if url.port is None else b"%s:%d" % (host, url.port)
    origin_form = url.path or b"/"
    if url.query:
        origin_form += b"?" + url.query
    # An "@" in the authority is userinfo, an empty one too (httptools reports none).
    authority_text = re.split(rb"[/?#]", target.partition(b"://")[2], maxsplit=1)[0]
    userinfo = url.userinfo is not None or b"@" in authority_text
    return AbsoluteTarget(origin_form, authority, userinfo, not url.path and not url.query)


def request_target(scope: Any) -> bytes | None:
    """The target's path as the client sent it (None from a server that gives no
    ``raw_path``): uvicorn prefixes the root path (helper-57: under ``--root-path /p``,
    ``OPTIONS *`` came as ``/p*`` and went to the origin)."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        return None
    root = scope.get("root_path", "").encode("latin-1")
    return raw_path[len(root) :] if root and raw_path.startswith(root) else raw_path


def with_authority(
    headers: list[tuple[bytes, bytes]], authority: bytes, http10: bool
) -> list[tuple[bytes, bytes]]:
    """The request's Host field(s) given the target's authority: a server MUST ignore the
    Host it received for an absolute-form target. Their number stays, so a request with
    two is still refused, and an HTTP/1.1 one with none (RFC 9112 3.2); an HTTP/1.0 one
    with none gets one (helper-54: it was keyed and forwarded as the default host's)."""
    if http10 and not any(name == b"host" for name, _ in headers):
        return [*headers, (b"host", authority)]
    return [(name, authority if name == b"host" else value) for name, value in headers]
