"""What both origin clients (aiohttp's, app/upstream/direct.py) agree on: the request
extensions :class:`~app.upstream.client.UpstreamClient` sets, and the field checks every
origin answer passes before it is used."""

from __future__ import annotations

import re
from collections.abc import Iterable

import httpx

# Request extension: the target (path and query) exactly as the client sent it.
RAW_TARGET = "slicecache.raw_target"
# Request extension: a slice request, for the direct client (app/upstream/direct.py).
DIRECT = "slicecache.direct"


def target_of(request: httpx.Request) -> str:
    """The request's target as the origin gets it: :data:`RAW_TARGET` when set (every
    request :class:`~app.upstream.client.UpstreamClient` sends; a slice request's URL then
    names only the origin), else the URL's path and query."""
    target = request.extensions.get(RAW_TARGET)
    return target if isinstance(target, str) else request.url.raw_path.decode("latin-1")


# What uvicorn refuses to write in a field value (its HEADER_VALUE_RE): CTLs but HTAB.
_FIELD_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def control_character_in(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """RFC 9110 5.5: no control character but HTAB in a field value. uvicorn refuses to
    write one (a traceback and no answer at all), and a cache must not store it."""
    return any(_FIELD_CTL.search(value) for _, value in fields)


def transfer_codings(fields: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """A response's transfer codings over all its Transfer-Encoding lines, in order,
    lowercased; empty list elements kept (llhttp reads ``chunked ,`` as not chunked)."""
    codings: list[bytes] = []
    for name, value in fields:
        if name.lower() == b"transfer-encoding":
            codings.extend(part.strip().lower() for part in value.split(b","))
    return codings


def transfer_coding_refused(codings: list[bytes]) -> bool:
    """Whether ``chunked`` comes with any other coding (over all the lines). A lone
    ``chunked`` is decoded; codings without it delimit the body by the connection's end
    (RFC 9112 6.3), as llhttp reads them. Anything else would reach the client as bytes
    it cannot read (the field is hop-by-hop, the coding under the chunks stays), or is
    not HTTP at all (``chunked`` twice, or not last). helper-35: a client that read only
    the first line framed ``identity`` + ``chunked`` on two lines as close-delimited
    while llhttp decoded chunks, and served and stored the chunk framing as the body.
    ``chunked`` with parameters is refused too: it has none (RFC 9112 7.1), and llhttp
    reads ``chunked;x=1`` as another coding, so the chunk framing was served (helper-36)."""
    named = any(coding.partition(b";")[0].strip() == b"chunked" for coding in codings)
    return named and codings != [b"chunked"]
