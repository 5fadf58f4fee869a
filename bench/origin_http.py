"""The demo origin's own Range, multipart and HTTP-date handling (RFC 9110 14, 5.6.7).

Deliberately independent of the proxy: the origin is a test partner, so it must not share
``app.edge.ranges`` or ``app.httpcache.dates``. A parser bug both sides shared would be
invisible to every end-to-end test (the proxy would ask for, and get, the same wrong bytes).
Written the short way on purpose, a different shape from the proxy's code: a regex per
range spec, Python ``range`` objects for the arithmetic, a table of month names for dates.

Behaviour the tests of the origin rely on (and that a real origin such as nginx shares):

* ``parse_ranges`` -> ``None`` (serve 200: no header, other unit, bad syntax, ``last <
  first``, more than ``MAX_RANGES`` specs), ``[]`` (416: nothing satisfiable), or the
  ranges to serve as inclusive ``(first, last)`` pairs, sorted, overlapping ones and ones
  at most ``COALESCE_GAP`` bytes apart merged.
* A zero-length file has no byte to send in a 206: a suffix range on it gives 200.
"""

from __future__ import annotations

import calendar
import re
import secrets
import time

MAX_RANGES = 32
COALESCE_GAP = 80  # a multipart part header costs about this much: send the gap instead

_SPEC = re.compile(r"(\d*)-(\d*)", re.ASCII)
_MAX_DIGITS = 40  # longer positions are not offsets: ignore the header (200) instead
Span = tuple[int, int]  # inclusive first, last


def _span(spec: str, size: int) -> range | None:
    """The byte indices one ``range-spec`` selects, or None if the spec is malformed."""
    m = _SPEC.fullmatch(spec)
    if m is None or not (m.group(1) or m.group(2)):
        return None
    first_text, last_text = m.groups()
    if len(first_text) > _MAX_DIGITS or len(last_text) > _MAX_DIGITS:
        return None
    everything = range(size)
    if not first_text:  # "-N": the last N bytes; "-0" selects nothing
        n = int(last_text)
        return everything[size - min(n, size) :] if n else range(0)
    first = int(first_text)
    if not last_text:
        return everything[first:]
    last = int(last_text)
    if last < first:
        return None
    return everything[first : last + 1]


def parse_ranges(header: str | None, size: int) -> list[Span] | None:
    """None: serve the whole file (200); []: 416; else the ranges to serve (206)."""
    if header is None:
        return None
    unit, sep, specs = header.strip(" \t").partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None
    elements = [e.strip(" \t") for e in specs.split(",")]
    elements = [e for e in elements if e]  # empty list elements are ignored (RFC 9110 5.6.1)
    if not elements or len(elements) > MAX_RANGES:
        return None
    picked: list[range] = []
    for element in elements:
        span = _span(element, size)
        if span is None:
            return None
        picked.append(span)
    if size == 0 and any(e.startswith("-") and e != "-0" for e in elements):
        return None  # 200 with the empty body: the only way to satisfy a suffix of nothing
    spans = sorted((r[0], r[-1]) for r in picked if len(r))
    merged: list[Span] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1 + COALESCE_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def content_range(span: Span, size: int) -> str:
    return f"bytes {span[0]}-{span[1]}/{size}"


def boundary() -> str:
    return secrets.token_hex(16)


def multipart_type(bound: str) -> str:
    return f"multipart/byteranges; boundary={bound}"


def part_header(span: Span, size: int, content_type: str, bound: str) -> bytes:
    """CRLF --boundary CRLF headers CRLF CRLF: every part alike (the first CRLF is a preamble)."""
    text = (
        f"\r\n--{bound}\r\nContent-Type: {content_type}\r\n"
        f"Content-Range: {content_range(span, size)}\r\n\r\n"
    )
    return text.encode("latin-1")


def trailer(bound: str) -> bytes:
    return f"\r\n--{bound}--\r\n".encode("latin-1")


# --- HTTP-date ---------------------------------------------------------------------------

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_WEEKDAYS = "Mon Tue Wed Thu Fri Sat Sun".split()
_HMS = r"(?P<H>\d\d):(?P<M>\d\d):(?P<S>\d\d)"
_DATE_FORMS = tuple(
    re.compile(form.replace("HMS", _HMS), re.ASCII)
    for form in (
        # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        r"[A-Z][a-z]{2}, (?P<d>\d\d) (?P<m>[A-Z][a-z]{2}) (?P<y>\d{4}) HMS GMT",
        # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        r"[A-Z][a-z]+day, (?P<d>\d\d)-(?P<m>[A-Z][a-z]{2})-(?P<y>\d\d) HMS GMT",
        # asctime: Sun Nov  6 08:49:37 1994
        r"[A-Z][a-z]{2} (?P<m>[A-Z][a-z]{2}) (?P<d>[ \d]\d) HMS (?P<y>\d{4})",
    )
)


def format_date(timestamp: float) -> str:
    """IMF-fixdate, built from ``time.gmtime`` (no locale, no shared formatter)."""
    t = time.gmtime(int(timestamp))
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_date(text: str) -> int | None:
    """POSIX seconds of an HTTP-date in any of the three forms; None if it is not one."""
    for form in _DATE_FORMS:
        m = form.fullmatch(text.strip(" \t"))
        if m is None:
            continue
        year = int(m["y"])
        if len(m["y"]) == 2:
            year += 1900 if year >= 70 else 2000
        if year < 1:
            return None
        hh, mm, ss = int(m["H"]), int(m["M"]), int(m["S"])
        if m["m"] not in _MONTHS:
            return None
        month = _MONTHS.index(m["m"]) + 1
        day = int(m["d"])
        if not (1 <= day <= calendar.monthrange(year, month)[1]):
            return None
        if hh > 23 or mm > 59 or ss > 60:
            return None
        return calendar.timegm((year, month, day, hh, mm, min(ss, 59), 0, 0, 0))
    return None


def if_range_matches(if_range: str | None, etag: str | None, modified: str | None) -> bool:
    """RFC 9110 13.1.5 for the origin itself: a strong ETag equal to the current one, or
    the exact current Last-Modified date. No If-Range: True."""
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    if value.startswith(('"', "W/")):
        return etag is not None and not etag.startswith("W/") and value == etag
    asked = parse_date(value)
    return asked is not None and modified is not None and asked == parse_date(modified)
