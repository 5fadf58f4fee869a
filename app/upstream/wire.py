"""What both origin clients (aiohttp's, app/upstream/direct.py) agree on: the request
extensions :class:`~app.upstream.client.UpstreamClient` sets, and the field checks every
origin answer passes before it is used."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Request extension: the target (path and query) exactly as the client sent it.
RAW_TARGET = "slicecache.raw_target"
# Request extension: a slice request, for the direct client (app/upstream/direct.py).
DIRECT = "slicecache.direct"

# What uvicorn refuses to write in a field value (its HEADER_VALUE_RE): CTLs but HTAB.
_FIELD_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def control_character_in(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """RFC 9110 5.5: no control character but HTAB in a field value. uvicorn refuses to
    write one (a traceback and no answer at all), and a cache must not store it."""
    return any(_FIELD_CTL.search(value) for _, value in fields)


def transfer_coding_refused(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response's Transfer-Encoding, over all its field lines, is anything but
    one ``chunked`` (what nginx accepts). Any other coding would reach the client as
    bytes it cannot read, its field being hop-by-hop; and a client that read only the
    first line framed ``identity`` + ``chunked`` on two lines as the connection's end
    while the parser decoded chunks (helper-35: chunk-size lines in a cached body). Empty
    list elements count too: llhttp reads ``chunked ,`` as not chunked."""
    codings: list[bytes] = []
    for name, value in fields:
        if name.lower() == b"transfer-encoding":
            codings.extend(part.strip().lower() for part in value.split(b","))
    return bool(codings) and codings != [b"chunked"]
