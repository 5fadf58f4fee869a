"""Client ``Range`` handling (RFC 9110 section 14): pure functions, no I/O.

The decision for a request is a :class:`RangeDecision`:

* ``FULL``: serve 200 with the whole representation. The header was absent, syntactically
  invalid, used a unit other than ``bytes``, or asked for more than ``max_ranges`` ranges.
  RFC 9110 14.2 lets a server ignore any Range header, so FULL is always a safe answer.
* ``PARTIAL``: serve 206 with ``ranges`` (clamped, overlapping or nearby ranges
  coalesced, in the order asked: a coalesced part where the first of its ranges was).
  One range -> single-part 206 with ``Content-Range``; several -> ``multipart/byteranges``
  built with the ``multipart_*`` helpers below.
* ``UNSATISFIABLE``: serve 416 with ``Content-Range: bytes */size``.

Multipart body layout (the same framing nginx emits; RFC 2046 section 5.1.1)::

    CRLF "--" boundary CRLF                       <- multipart_part_header(), every part
    "Content-Type: " type CRLF                    <- omitted when content_type is None
    "Content-Range: bytes first-last/size" CRLF
    CRLF
    <the part's bytes>
    ... next part header, which starts with the CRLF that ends the previous part ...
    CRLF "--" boundary "--" CRLF                  <- multipart_trailer()

Every part header, including the first, starts with CRLF: before the first delimiter
that CRLF is an empty preamble, which RFC 2046 allows and every multipart parser skips.
Keeping all part headers identical means the caller needs no "is this the first part"
state, and :func:`multipart_length` cannot disagree with what the caller emits.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from app.httpcache.dates import parse_http_date

__all__ = [
    "ByteRange",
    "RangeDecision",
    "RangeOutcome",
    "content_range",
    "if_range_allows",
    "multipart_boundary",
    "multipart_content_type",
    "multipart_length",
    "multipart_part_header",
    "multipart_trailer",
    "parse_range_header",
    "unsatisfied_content_range",
]

# Ranges separated by at most this many bytes are served as one part: a multipart part
# header costs ~80 bytes, so sending the gap is no dearer than a new part (RFC 9110 14.6).
DEFAULT_COALESCE_GAP = 80

# Positions longer than this are no real object offset; rather than feed int() attacker
# sized digit strings we ignore such a header (serve 200), which RFC 9110 14.2 permits.
_MAX_DIGITS = 40

_OWS = " \t"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Inclusive byte positions ``first..last``, already clamped to the object."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class RangeOutcome(enum.Enum):
    FULL = "full"
    PARTIAL = "partial"
    UNSATISFIABLE = "unsatisfiable"


@dataclass(frozen=True, slots=True)
class RangeDecision:
    outcome: RangeOutcome
    # Empty unless PARTIAL; merged, in the order asked: exactly the parts to serve.
    ranges: tuple[ByteRange, ...] = ()


_FULL = RangeDecision(RangeOutcome.FULL)
_UNSATISFIABLE = RangeDecision(RangeOutcome.UNSATISFIABLE)


def _position(text: str) -> int | None:
    """1*DIGIT as an int; None when not ASCII digits (``isdigit`` alone admits '²')."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > _MAX_DIGITS:
        return None
    return int(text)


def parse_range_header(
    value: str | None,
    size: int,
    *,
    max_ranges: int = 32,
    coalesce_gap: int = DEFAULT_COALESCE_GAP,
) -> RangeDecision:
    """Decide how to answer ``Range: value`` for a representation of ``size`` bytes.

    Grammar (RFC 9110 14.1.1): ``bytes=`` then a comma list of ``first-last``,
    ``first-`` or ``-suffix``; the unit is case-insensitive, OWS around list elements
    and empty list elements are tolerated. Any syntax error, ``last < first``, or an
    unknown unit ignores the whole header (FULL). More than ``max_ranges`` range specs
    also gives FULL: honouring thousands of tiny ranges is an amplification vector.

    A zero-length object has no byte to put in a 206, so a suffix range on it (the only
    form RFC 9110 14.1.1 calls satisfiable there) is answered with FULL, i.e. 200 and
    an empty body; every other range set on it is UNSATISFIABLE.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if value is None:
        return _FULL
    unit, eq, range_set = value.strip(_OWS).partition("=")
    if not eq or unit.strip(_OWS).lower() != "bytes":
        return _FULL

    satisfiable: list[ByteRange] = []
    specs = 0
    empty_suffix_hit = False  # a non-zero suffix on a zero-length object
    for element in range_set.split(","):
        spec = element.strip(_OWS)
        if not spec:
            continue  # RFC 9110 5.6.1.2: recipients ignore empty list elements
        specs += 1
        if specs > max_ranges:
            return _FULL
        first_text, dash, last_text = spec.partition("-")
        if not dash:
            return _FULL
        if not first_text:
            suffix = _position(last_text)
            if suffix is None:
                return _FULL
            if suffix == 0:
                continue  # "-0" is valid syntax but selects nothing
            if size == 0:
                empty_suffix_hit = True
                continue
            satisfiable.append(ByteRange(max(0, size - suffix), size - 1))
            continue
        first = _position(first_text)
        if first is None:
            return _FULL
        if last_text:
            last = _position(last_text)
            if last is None or last < first:
                return _FULL
        else:
            last = size - 1
        if first < size:
            satisfiable.append(ByteRange(first, min(last, size - 1)))

    if specs == 0:
        return _FULL  # "bytes=" or "bytes=,,": 1#range-spec needs one element
    if not satisfiable:
        return _FULL if empty_suffix_hit else _UNSATISFIABLE
    return RangeDecision(RangeOutcome.PARTIAL, _coalesce(satisfiable, coalesce_gap))


def _coalesce(ranges: list[ByteRange], gap: int) -> tuple[ByteRange, ...]:
    """Overlapping or nearby ranges merged; the parts in the order they were asked, a
    merged part where the first of its ranges was (RFC 9110 14.6: a server SHOULD send the
    parts in the order of the range-specs, but for those it coalesced)."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i].first)
    merged: list[tuple[int, ByteRange]] = []  # (where it was first asked, the part)
    asked, current = order[0], ranges[order[0]]
    for i in order[1:]:
        r = ranges[i]
        if r.first <= current.last + 1 + gap:
            if r.last > current.last:
                current = ByteRange(current.first, r.last)
            asked = min(asked, i)
        else:
            merged.append((asked, current))
            asked, current = i, r
    merged.append((asked, current))
    merged.sort(key=lambda pair: pair[0])
    return tuple(part for _, part in merged)


# --- If-Range (RFC 9110 13.1.5) -------------------------------------------------------


def _is_strong_etag(value: str) -> bool:
    # entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc excludes DQUOTE, space and CTLs.
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return False
    return all(c == "\x21" or "\x23" <= c <= "\x7e" or c >= "\x80" for c in value[1:-1])


def if_range_allows(
    if_range: str | None,
    etag: str | None,
    last_modified: str | None,
    date: str | None,
    *,
    origin_server: bool = False,
) -> bool:
    """True when the Range header may be honoured given ``If-Range: if_range``.

    No If-Range -> True. An entity-tag matches only by strong comparison: both tags
    strong and identical, so a weak tag on either side never matches. An HTTP-date
    matches only when ``last_modified`` is a valid HTTP-date denoting the same instant
    and is a strong validator: RFC 9110 13.1.5 step 1, and 8.8.2.2 for a cache, which
    may deduce strength only from a stored ``date`` at least one second after it (two
    versions written in the same second share a Last-Modified; a range of one spliced
    into the other is wrong bytes). Anything else (malformed value, missing validator,
    weak date) -> False, and the caller serves 200 with the whole current
    representation, which is always correct. ``origin_server``: the caller is the origin
    comparing against its current validator (8.8.2.2's first rule), ``date`` is unused.
    """
    if if_range is None:
        return True
    candidate = if_range.strip(_OWS)
    if candidate.startswith('"') or candidate.startswith("W/"):
        if etag is None:
            return False
        current = etag.strip(_OWS)
        return _is_strong_etag(candidate) and _is_strong_etag(current) and candidate == current
    asked = parse_http_date(candidate)
    if asked is None or last_modified is None:
        return False
    modified = parse_http_date(last_modified.strip(_OWS))
    if modified is None or asked != modified:
        return False
    if origin_server:
        return True
    sent = parse_http_date(date.strip(_OWS)) if date is not None else None
    return sent is not None and sent - modified >= 1


# --- Content-Range and multipart/byteranges (RFC 9110 14.4, 14.6) ---------------------


def content_range(r: ByteRange, size: int) -> str:
    return f"bytes {r.first}-{r.last}/{size}"


def unsatisfied_content_range(size: int) -> str:
    return f"bytes */{size}"


def multipart_boundary() -> str:
    """A fresh boundary: 32 hex digits, so it is a valid bchars token that is
    vanishingly unlikely to occur in the payload (RFC 2046 5.1.1)."""
    return secrets.token_hex(16)


def multipart_content_type(boundary: str) -> str:
    return f"multipart/byteranges; boundary={boundary}"


_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]", re.ASCII)


def _boundary_bytes(boundary: str) -> bytes:
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    return boundary.encode("ascii")


def multipart_part_header(
    r: ByteRange, size: int, content_type: str | None, boundary: str
) -> bytes:
    """``CRLF --boundary CRLF [Content-Type CRLF] Content-Range CRLF CRLF`` for one part.

    The leading CRLF ends the previous part's bytes (or is an empty preamble before the
    first part); see the module docstring for the whole layout.
    """
    head = b"\r\n--" + _boundary_bytes(boundary) + b"\r\n"
    if content_type is not None:
        if any(c in content_type for c in "\r\n\0"):
            raise ValueError("content type must not contain CR, LF or NUL")
        head += b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
    return head + b"Content-Range: " + content_range(r, size).encode("ascii") + b"\r\n\r\n"


def multipart_trailer(boundary: str) -> bytes:
    """``CRLF --boundary-- CRLF``: ends the last part's bytes and closes the body."""
    return b"\r\n--" + _boundary_bytes(boundary) + b"--\r\n"


def multipart_length(
    ranges: Sequence[ByteRange], size: int, content_type: str | None, boundary: str
) -> int:
    """Exact byte length of the multipart body, for a Content-Length instead of chunking."""
    total = len(multipart_trailer(boundary))
    for r in ranges:
        total += len(multipart_part_header(r, size, content_type, boundary)) + r.length
    return total
