"""What both origin clients (aiohttp's, app/upstream/direct.py) agree on: the request
extensions :class:`~app.upstream.client.UpstreamClient` sets, and the field check every
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
