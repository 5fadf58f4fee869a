"""Unit and property tests for app/edge/ranges.py (RFC 9110 section 14 semantics)."""

from __future__ import annotations

import email
import email.policy
import random
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.edge.ranges import (
    DEFAULT_COALESCE_GAP,
    ByteRange,
    RangeDecision,
    RangeOutcome,
    content_range,
    if_range_allows,
    multipart_boundary,
    multipart_content_type,
    multipart_length,
    multipart_part_header,
    multipart_trailer,
    parse_range_header,
    unsatisfied_content_range,
)
from app.httpcache.dates import parse_http_date

# Every proxy test runs with the protocol's fast path for plain fresh hits and without
# it (tests/conftest.py, app/fasthit.py): both paths answer the same tests.
BOTH_PATHS = True

FULL = RangeOutcome.FULL
PARTIAL = RangeOutcome.PARTIAL
UNSAT = RangeOutcome.UNSATISFIABLE


def partial(*pairs: tuple[int, int]) -> RangeDecision:
    return RangeDecision(PARTIAL, tuple(ByteRange(a, b) for a, b in pairs))


# --- parse_range_header: one test per rule ---------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, partial((0, 0))),
        ("bytes=2-5", 10, partial((2, 5))),
        ("bytes=3-", 10, partial((3, 9))),
        ("bytes=0-", 10, partial((0, 9))),
        ("bytes=-4", 10, partial((6, 9))),
        ("bytes=-100", 10, partial((0, 9))),  # suffix longer than the object: all of it
        ("bytes=5-100", 10, partial((5, 9))),  # last past EOF is clamped
        ("bytes=9-9", 10, partial((9, 9))),
        ("bytes=0-99999999999999999999", 10, partial((0, 9))),  # 2**64-ish last-pos
        ("bytes=000-0003", 10, partial((0, 3))),  # leading zeros are still 1*DIGIT
    ],
)
def test_single_ranges(header: str, size: int, expected: RangeDecision) -> None:
    assert parse_range_header(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=10-",  # first == size
        "bytes=10-20",
        "bytes=11-11",
        "bytes=-0",  # a zero-length suffix selects nothing
        "bytes=-0,10-",
    ],
)
def test_unsatisfiable(header: str) -> None:
    assert parse_range_header(header, 10) == RangeDecision(UNSAT, ())


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ,",
        "0-1",  # no unit
        "items=0-1",
        "bytes:0-1",
        "bytes=1-0",  # last < first makes the whole set invalid
        "bytes=0-1,5-4",
        "bytes=a-b",
        "bytes=1",
        "bytes=-",
        "bytes=--1",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=0x1-2",
        "bytes=1-2-3",
        "bytes=1 -2",  # OWS is allowed around list elements, not inside one
        "bytes=\u0663-5",  # ARABIC-INDIC DIGIT THREE: str.isdigit() but not DIGIT
        "bytes=0-1;2-3",
        "bytes=0-" + "9" * 50,  # absurd position: ignored rather than int()-parsed
    ],
)
def test_invalid_headers_are_ignored(header: str | None) -> None:
    assert parse_range_header(header, 1000) == RangeDecision(FULL, ())


def test_unit_is_case_insensitive_and_whitespace_tolerant() -> None:
    expected = partial((0, 1), (100, 101))
    assert parse_range_header("BYTES=0-1,100-101", 1000) == expected
    assert parse_range_header("Bytes=0-1,100-101", 1000) == expected
    assert parse_range_header(" bytes= 0-1 ,\t100-101\t", 1000) == expected
    assert parse_range_header("bytes=0-1,,, ,100-101,", 1000) == expected


def test_unsatisfiable_members_are_dropped_when_one_is_satisfiable() -> None:
    assert parse_range_header("bytes=50-60,0-1,-0", 10) == partial((0, 1))


def test_parts_keep_the_order_asked() -> None:
    """RFC 9110 14.6: parts in the order of the range-specs (helper-47 finding 5); a
    coalesced part goes where the first of its ranges was asked."""
    assert parse_range_header("bytes=500-600,0-10", 1000) == partial((500, 600), (0, 10))
    assert parse_range_header("bytes=900-910,500-600,0-10,505-700", 1000) == partial(
        (900, 910), (500, 700), (0, 10)
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-10,5-20", partial((0, 20))),  # overlap
        ("bytes=0-10,2-3", partial((0, 10))),  # contained
        ("bytes=0-10,11-20", partial((0, 20))),  # adjacent
        ("bytes=0-10,91-100", partial((0, 100))),  # gap of exactly 80 bytes: coalesced
        ("bytes=0-10,92-100", partial((0, 10), (92, 100))),  # gap of 81: two parts
        ("bytes=-10,0-5", partial((990, 999), (0, 5))),  # in the order asked
        ("bytes=900-,-50", partial((900, 999))),
        ("bytes=0-0,0-0,0-0", partial((0, 0))),
    ],
)
def test_coalescing(header: str, expected: RangeDecision) -> None:
    assert parse_range_header(header, 1000) == expected


def test_coalesce_gap_is_configurable() -> None:
    assert parse_range_header("bytes=0-0,2-2", 10, coalesce_gap=0) == partial((0, 0), (2, 2))
    assert parse_range_header("bytes=0-0,1-1", 10, coalesce_gap=0) == partial((0, 1))


def test_too_many_ranges_is_ignored() -> None:
    many = ",".join(f"{i * 1000}-{i * 1000}" for i in range(33))
    assert parse_range_header("bytes=" + many, 100_000).outcome is FULL
    assert parse_range_header("bytes=" + many, 100_000, max_ranges=33).outcome is PARTIAL
    # The limit counts range specs, before coalescing: 33 copies of one range is still 33.
    assert parse_range_header("bytes=" + ",".join(["0-0"] * 33), 10).outcome is FULL
    assert parse_range_header("bytes=" + ",".join(["0-0"] * 32), 10) == partial((0, 0))


@pytest.mark.parametrize(
    ("header", "outcome"),
    [
        ("bytes=0-", UNSAT),
        ("bytes=0-0", UNSAT),
        ("bytes=-0", UNSAT),
        # RFC 9110 14.1.1 calls a non-zero suffix satisfiable on an empty representation,
        # but a 206 cannot carry zero bytes, so the whole (empty) body is served with 200.
        ("bytes=-5", FULL),
        ("bytes=0-,-1", FULL),
        ("bytes=1-0", FULL),
    ],
)
def test_zero_length_object(header: str, outcome: RangeOutcome) -> None:
    assert parse_range_header(header, 0) == RangeDecision(outcome, ())


def test_negative_size_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        parse_range_header("bytes=0-1", -1)


def test_byte_range_length() -> None:
    assert ByteRange(0, 0).length == 1
    assert ByteRange(5, 14).length == 10


# --- property test against an independent model -------------------------------------------

MAX_RANGES = 32

ows = st.sampled_from(["", " ", "\t", "  "])
Spec = tuple[str, int, int | None]


@st.composite
def range_headers(draw: st.DrawFn, size: int) -> tuple[str, list[Spec]]:
    # Positions mostly inside the object (so parts and gaps get exercised), some past EOF.
    position = st.one_of(st.integers(0, size + 100), st.integers(0, 12_000))
    length = st.one_of(st.none(), st.integers(0, 200), st.integers(0, 12_000))
    int_spec = st.tuples(position, length).map(
        lambda t: ("int", t[0], None if t[1] is None else t[0] + t[1])
    )
    suffix_spec = st.one_of(st.integers(0, 300), st.integers(0, 12_000)).map(
        lambda n: ("suffix", n, None)
    )
    specs = draw(st.lists(st.one_of(int_spec, suffix_spec), min_size=1, max_size=MAX_RANGES + 4))
    unit = draw(st.sampled_from(["bytes", "BYTES", "Bytes"]))
    parts = []
    for kind, a, b in specs:
        text = f"-{a}" if kind == "suffix" else f"{a}-{'' if b is None else b}"
        parts.append(draw(ows) + text + draw(ows))
    return f"{unit}={','.join(parts)}", specs


def requested_mask(size: int, specs: list[Spec]) -> bytearray:
    """Which byte positions the client asked for, straight from RFC 9110 14.1.2."""
    mask = bytearray(size)
    for kind, a, b in specs:
        if kind == "suffix":
            if a > 0:
                mask[max(0, size - a) : size] = b"\x01" * (size - max(0, size - a))
        elif a < size:
            last = size - 1 if b is None else min(b, size - 1)
            mask[a : last + 1] = b"\x01" * (last + 1 - a)
    return mask


def spec_bounds(specs: list[Spec], size: int) -> list[tuple[int, int] | None]:
    """Each spec's clamped first and last byte, None for one that selects nothing."""
    bounds: list[tuple[int, int] | None] = []
    for kind, a, b in specs:
        if kind == "suffix":
            bounds.append((max(0, size - a), size - 1) if a > 0 else None)
        elif a < size:
            bounds.append((a, size - 1 if b is None else min(b, size - 1)))
        else:
            bounds.append(None)
    return bounds


def serve(
    decision: RangeDecision, obj: bytes, content_type: str | None, boundary: str = "b0undary"
) -> bytes:
    """The body a server would send for the decision, built with the multipart helpers."""
    if decision.outcome is FULL:
        return obj
    if decision.outcome is UNSAT:
        return b""
    if len(decision.ranges) == 1:
        r = decision.ranges[0]
        return obj[r.first : r.last + 1]
    body = b"".join(
        multipart_part_header(r, len(obj), content_type, boundary) + obj[r.first : r.last + 1]
        for r in decision.ranges
    ) + multipart_trailer(boundary)
    assert len(body) == multipart_length(decision.ranges, len(obj), content_type, boundary)
    return body


_CONTENT_RANGE = re.compile(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)\r\n")


def parse_multipart(body: bytes, size: int) -> list[tuple[int, int, bytes]]:
    """Walk a multipart/byteranges body by its delimiters (RFC 2046), not our helpers."""
    assert body.startswith(b"\r\n--")
    boundary = body[4 : body.index(b"\r\n", 4)]
    delimiter = b"\r\n--" + boundary
    parts: list[tuple[int, int, bytes]] = []
    pos = 0
    while True:
        assert body.startswith(delimiter, pos)
        pos += len(delimiter)
        if body.startswith(b"--\r\n", pos):
            assert pos + 4 == len(body)
            return parts
        head_end = body.index(b"\r\n\r\n", pos)
        m = _CONTENT_RANGE.search(body, pos, head_end + 2)
        assert m is not None
        first, last, total = (int(g) for g in m.groups())
        assert total == size
        data_start = head_end + 4
        parts.append((first, last, body[data_start : data_start + last - first + 1]))
        pos = data_start + last - first + 1


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.integers(0, 10_000), seed=st.integers(0, 2**32))
def test_decision_matches_rfc_model(data: st.DataObject, size: int, seed: int) -> None:
    value, specs = data.draw(range_headers(size))
    obj = random.Random(seed).randbytes(size)
    decision = parse_range_header(value, size, max_ranges=MAX_RANGES)
    mask = requested_mask(size, specs)
    body = serve(decision, obj, "video/mp4")

    if len(specs) > MAX_RANGES:
        assert decision == RangeDecision(FULL, ())
        return
    if size == 0:
        any_suffix = any(kind == "suffix" and a > 0 for kind, a, _ in specs)
        assert decision == RangeDecision(FULL if any_suffix else UNSAT, ())
        assert body == b""
        return
    if not any(mask):
        assert decision == RangeDecision(UNSAT, ())
        return

    assert decision.outcome is PARTIAL
    served = decision.ranges
    # Disjoint, and separated by more than the coalescing gap.
    by_position = sorted(served, key=lambda r: r.first)
    for before, after in zip(by_position, by_position[1:], strict=False):
        assert after.first - before.last - 1 > DEFAULT_COALESCE_GAP
    # In the order asked: each part where the first spec it serves was (RFC 9110 14.6).
    bounds = spec_bounds(specs, size)
    asked = [
        min(i for i, b in enumerate(bounds) if b is not None and r.first <= b[0] <= r.last)
        for r in served
    ]
    assert asked == sorted(asked)
    for r in served:
        assert 0 <= r.first <= r.last < size
        # Each part starts and ends on a requested byte, and any unrequested bytes it
        # carries are gaps between requested ones no longer than the coalescing gap.
        assert mask[r.first] and mask[r.last]
        too_long_gap = rb"\x00{%d,}" % (DEFAULT_COALESCE_GAP + 1)
        assert re.search(too_long_gap, mask[r.first : r.last + 1]) is None
    covered = bytearray(size)
    for r in served:
        covered[r.first : r.last + 1] = b"\x01" * r.length
    assert all(c for m, c in zip(mask, covered, strict=True) if m), "a requested byte is missing"

    # The bytes on the wire are the object's bytes at those positions, part by part.
    if len(served) == 1:
        assert body == obj[served[0].first : served[0].last + 1]
    else:
        parts = parse_multipart(body, size)
        assert [(a, b) for a, b, _ in parts] == [(r.first, r.last) for r in served]
        for first, last, payload in parts:
            assert payload == obj[first : last + 1]


# --- If-Range --------------------------------------------------------------------------

LM = "Sun, 06 Nov 1994 08:49:37 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"  # a stored Date one second on: LM is strong


@pytest.mark.parametrize(
    ("if_range", "etag", "last_modified", "allowed"),
    [
        (None, '"a"', LM, True),
        (None, None, None, True),
        ('"abc"', '"abc"', LM, True),
        (' "abc"\t', '"abc"', None, True),
        ('"abc"', '"abd"', LM, False),
        ('"abc"', None, LM, False),
        ('W/"abc"', 'W/"abc"', LM, False),  # weak tags never match, even identical ones
        ('W/"abc"', '"abc"', LM, False),
        ('"abc"', 'W/"abc"', LM, False),
        ('"ab"c"', '"ab"c"', LM, False),  # not a valid entity-tag
        ('"abc', '"abc', LM, False),
        (LM, '"abc"', LM, True),
        (LM, None, LM, True),
        ("Sunday, 06-Nov-94 08:49:37 GMT", None, LM, True),  # rfc850-date, same instant
        ("Sun Nov  6 08:49:37 1994", None, LM, True),  # asctime-date, same instant
        (LM, None, "Sun Nov  6 08:49:37 1994", True),
        ("Sun, 06 Nov 1994 08:49:38 GMT", None, LM, False),  # one second off
        ("Sat, 05 Nov 1994 08:49:37 GMT", None, LM, False),
        (LM, '"abc"', None, False),  # a date, but the object has no Last-Modified
        (LM, None, "yesterday", False),  # ... or an invalid one
        ("sun, 06 nov 1994 08:49:37 gmt", None, LM, False),  # HTTP-date is case-sensitive
        ("Sun, 06 Nov 1994 08:49:37 UTC", None, LM, False),
        ("", '"abc"', LM, False),
        ("garbage", '"abc"', LM, False),
    ],
)
def test_if_range(
    if_range: str | None, etag: str | None, last_modified: str | None, allowed: bool
) -> None:
    assert if_range_allows(if_range, etag, last_modified, LATER) is allowed


@pytest.mark.parametrize(
    ("date", "allowed"),
    [
        (LATER, True),
        ("Mon, 07 Nov 1994 08:49:37 GMT", True),
        (LM, False),  # same second: two versions may share it (RFC 9110 8.8.2.2)
        ("Sun, 06 Nov 1994 08:49:37 GMT", False),
        ("Sat, 05 Nov 1994 08:49:37 GMT", False),  # Date before Last-Modified
        (None, False),  # strength cannot be deduced
        ("garbage", False),
    ],
)
def test_if_range_date_only_when_last_modified_is_strong(date: str | None, allowed: bool) -> None:
    """RFC 9110 13.1.5 step 1: an If-Range date that is not a strong validator is false;
    a cache deduces strength from its stored Date (8.8.2.2). An entity-tag is unaffected."""
    assert if_range_allows(LM, None, LM, date) is allowed
    assert if_range_allows('"abc"', '"abc"', LM, date) is True


def test_parse_http_date_formats() -> None:
    # If-Range dates are parsed by the one HTTP-date parser (app.httpcache.dates).
    instant = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == instant.timestamp()
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == instant.timestamp()
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == instant.timestamp()
    assert parse_http_date("Sun Nov 16 08:49:37 1994") == instant.replace(day=16).timestamp()
    assert parse_http_date("Mon, 30 Feb 2015 00:00:00 GMT") is None
    assert parse_http_date("Mon, 01 Jan 2015 24:00:00 GMT") is None
    assert parse_http_date("Mon, 1 Jan 2015 00:00:00 GMT") is None
    assert parse_http_date("") is None


def test_rfc850_two_digit_year_is_never_more_than_50_years_ahead() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()

    def year_of(yy: str) -> int | None:
        parsed = parse_http_date(f"Friday, 01-Jan-{yy} 00:00:00 GMT", now=now)
        return None if parsed is None else datetime.fromtimestamp(parsed, UTC).year

    assert year_of("80") == 2080
    assert year_of("81") == 1981
    assert year_of("29") == 2029


# --- Content-Range and multipart -------------------------------------------------------


def test_content_range_strings() -> None:
    assert content_range(ByteRange(0, 499), 1234) == "bytes 0-499/1234"
    assert unsatisfied_content_range(1234) == "bytes */1234"


def test_boundary_is_a_fresh_token() -> None:
    boundaries = {multipart_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for b in boundaries:
        assert re.fullmatch(r"[0-9a-f]{32}", b)
    assert multipart_content_type("xyz") == "multipart/byteranges; boundary=xyz"


def test_part_header_and_trailer_bytes() -> None:
    r = ByteRange(10, 19)
    assert multipart_part_header(r, 100, "text/plain", "B0") == (
        b"\r\n--B0\r\nContent-Type: text/plain\r\nContent-Range: bytes 10-19/100\r\n\r\n"
    )
    assert multipart_part_header(r, 100, None, "B0") == (
        b"\r\n--B0\r\nContent-Range: bytes 10-19/100\r\n\r\n"
    )
    assert multipart_trailer("B0") == b"\r\n--B0--\r\n"


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain; a=b"])
def test_multipart_length_is_exact(content_type: str | None) -> None:
    obj = bytes(range(256)) * 40
    ranges = (ByteRange(0, 0), ByteRange(100, 9999), ByteRange(10_239, 10_239))
    boundary = multipart_boundary()
    body = b"".join(
        multipart_part_header(r, len(obj), content_type, boundary) + obj[r.first : r.last + 1]
        for r in ranges
    ) + multipart_trailer(boundary)
    assert multipart_length(ranges, len(obj), content_type, boundary) == len(body)
    assert multipart_length((), 10, content_type, boundary) == len(multipart_trailer(boundary))


def test_multipart_body_parses_with_the_stdlib_mime_parser() -> None:
    # Interop check with an independent parser; ASCII payloads keep email's line handling out.
    obj = b"".join(b"%05d\n" % i for i in range(1000))
    decision = parse_range_header("bytes=0-5,600-611,-6", len(obj))
    assert len(decision.ranges) == 3
    boundary = multipart_boundary()
    body = serve(decision, obj, "text/plain", boundary)
    message = email.message_from_bytes(
        f"Content-Type: {multipart_content_type(boundary)}\r\n\r\n".encode() + body,
        policy=email.policy.HTTP,
    )
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        content_range(r, len(obj)) for r in decision.ranges
    ]
    for part, r in zip(parts, decision.ranges, strict=True):
        assert part["Content-Type"] == "text/plain"
        assert part.get_payload(decode=True) == obj[r.first : r.last + 1]


@pytest.mark.parametrize("boundary", ["", "a" * 71, "ends with space ", "semi;colon", "ü"])
def test_invalid_boundaries_are_rejected(boundary: str) -> None:
    with pytest.raises(ValueError):
        multipart_part_header(ByteRange(0, 0), 1, None, boundary)
    with pytest.raises(ValueError):
        multipart_trailer(boundary)


def test_header_injection_through_content_type_is_rejected() -> None:
    with pytest.raises(ValueError):
        multipart_part_header(ByteRange(0, 0), 1, "text/plain\r\nX-Evil: 1", "B")
