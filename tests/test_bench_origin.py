"""The demo origin's own Range and HTTP-date handling, checked against trivially correct models.

The origin is the partner of every end-to-end test, so it must not share the proxy's
parsers (a bug both had would be invisible): one test proves it imports nothing from
``app``; the others check its answers byte by byte against Python slicing of the file.
"""

from __future__ import annotations

import email.utils
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import origin_http
from bench.origin import create_origin_app, expected_bytes
from tests.servers import run_asgi_in_thread

GAP = origin_http.COALESCE_GAP


@dataclass(frozen=True)
class Spec:
    """One range-spec as a client would write it: closed a-b, open a-, or suffix -n."""

    kind: str
    a: int = 0
    b: int = 0

    def text(self) -> str:
        if self.kind == "closed":
            return f"{self.a}-{self.b}"
        if self.kind == "open":
            return f"{self.a}-"
        return f"-{self.a}"

    def picks(self, data: bytes) -> list[int]:
        """The model: the byte indices Python slicing of the whole file selects."""
        index = list(range(len(data)))
        if self.kind == "closed":
            return index[self.a : self.b + 1]
        if self.kind == "open":
            return index[self.a :]
        return index[-self.a :] if self.a else []  # index[-0:] would be everything


def model(specs: list[Spec], size: int) -> tuple[int, list[tuple[int, int]]]:
    """(status, parts) the origin must answer, from first principles, byte by byte."""
    if not specs or len(specs) > origin_http.MAX_RANGES:
        return 200, []
    if any(s.kind == "closed" and s.b < s.a for s in specs):
        return 200, []  # a syntactically invalid spec voids the whole header
    if size == 0 and any(s.kind == "suffix" and s.a > 0 for s in specs):
        return 200, []
    data = bytes(size)
    wanted = sorted({i for s in specs for i in s.picks(data)})
    if not wanted:
        return 416, []
    parts = [[wanted[0], wanted[0]]]
    for i in wanted[1:]:  # walk every byte: a new part only after a gap of more than GAP
        if i > parts[-1][1] + 1 + GAP:
            parts.append([i, i])
        else:
            parts[-1][1] = i
    return 206, [(a, b) for a, b in parts]


positions = st.integers(0, 3000)
specs_strategy = st.lists(
    st.one_of(
        st.builds(Spec, st.just("closed"), positions, positions),
        st.builds(Spec, st.just("open"), positions),
        st.builds(Spec, st.just("suffix"), positions),
    ),
    min_size=1,
    max_size=6,
)


def header(specs: list[Spec], ows: str, unit: str) -> str:
    return f"{unit}=" + f",{ows}".join(s.text() for s in specs)


@given(
    specs=specs_strategy,
    size=st.integers(0, 2500),
    ows=st.sampled_from(["", " ", "\t "]),
    unit=st.sampled_from(["bytes", "Bytes", "BYTES"]),
)
def test_parse_ranges_matches_the_slice_model(
    specs: list[Spec], size: int, ows: str, unit: str
) -> None:
    status, parts = model(specs, size)
    got = origin_http.parse_ranges(header(specs, ows, unit), size)
    if status == 200:
        assert got is None
    elif status == 416:
        assert got == []
    else:
        assert got == parts


@given(
    first=st.integers(0, 500),
    length=st.integers(1, 300),
    gap=st.sampled_from([0, 1, GAP - 1, GAP, GAP + 1, GAP + 2]),
    size=st.integers(0, 1500),
    reverse=st.booleans(),
)
def test_coalescing_at_the_gap_boundary(
    first: int, length: int, gap: int, size: int, reverse: bool
) -> None:
    """Two ranges exactly around the coalescing distance (random positions rarely hit it)."""
    one = Spec("closed", first, first + length - 1)
    two_first = first + length + gap
    specs = [one, Spec("closed", two_first, two_first + length - 1)]
    if reverse:
        specs.reverse()
    status, parts = model(specs, size)
    got = origin_http.parse_ranges(header(specs, "", "bytes"), size)
    assert got == (None if status == 200 else parts)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "items=0-1",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=-",
        "bytes=\u0661-2",
        "bytes=" + "9" * 41 + "-",
        "bytes=" + ",".join(["0-0"] * 33),
    ],
)
def test_malformed_or_excessive_range_headers_are_ignored(value: str | None) -> None:
    assert origin_http.parse_ranges(value, 1000) is None


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_asgi_in_thread(create_origin_app(), http="httptools") as url:
        yield url


def split_multipart(response: httpx.Response) -> list[tuple[str, bytes]]:
    m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert m is not None
    delimiter = b"\r\n--" + m.group(1).encode()
    body = response.content
    assert body.endswith(delimiter + b"--\r\n")
    out = []
    for chunk in body[: -len(delimiter) - 4].split(delimiter)[1:]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        out.append((fields["Content-Range"], payload))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(specs=specs_strategy, size=st.integers(0, 2500))
def test_served_bytes_match_the_slice_model(base_url: str, specs: list[Spec], size: int) -> None:
    """End to end over a real server: status, Content-Range and every byte of every part."""
    name = f"{size}.bin"
    data = expected_bytes(name)
    status, parts = model(specs, size)
    r = httpx.get(f"{base_url}/files/{name}", headers={"Range": header(specs, " ", "bytes")})
    assert r.status_code == status
    if status == 200:
        assert r.content == data
    elif status == 416:
        assert r.headers["content-range"] == f"bytes */{size}"
    elif len(parts) == 1:
        (a, b) = parts[0]
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}"
        assert r.content == data[a : b + 1]
    else:
        assert r.headers["content-length"] == str(len(r.content))
        got = split_multipart(r)
        assert [cr for cr, _ in got] == [f"bytes {a}-{b}/{size}" for a, b in parts]
        assert [payload for _, payload in got] == [data[a : b + 1] for a, b in parts]


def test_the_origin_imports_none_of_the_proxys_code() -> None:
    """A fresh interpreter: importing the origin must not load any ``app`` module."""
    code = (
        "import sys, bench.origin; "
        "bad = sorted(m for m in sys.modules if m == 'app' or m.startswith('app.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- HTTP-date ---------------------------------------------------------------------------

instants = st.integers(0, 253_402_300_799)  # 1970 .. 9999-12-31T23:59:59Z


@given(instants)
def test_format_date_is_imf_fixdate(ts: int) -> None:
    # The stdlib's formatter is the model (the origin builds the string itself).
    assert origin_http.format_date(ts) == email.utils.formatdate(ts, usegmt=True)
    assert origin_http.parse_date(origin_http.format_date(ts)) == ts


@given(st.integers(0, 2_147_483_647))
def test_all_three_forms_parse_to_the_same_instant(ts: int) -> None:
    g = time.gmtime(ts)
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    hms = f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
    mon = months[g.tm_mon - 1]
    asctime = f"{days[g.tm_wday][:3]} {mon} {g.tm_mday:2d} {hms} {g.tm_year}"
    assert origin_http.parse_date(asctime) == ts
    if 1970 <= g.tm_year <= 2069:  # two-digit years: 70-99 are 19xx, 00-69 are 20xx
        rfc850 = f"{days[g.tm_wday]}, {g.tm_mday:02d}-{mon}-{g.tm_year % 100:02d} {hms} GMT"
        assert origin_http.parse_date(rfc850) == ts


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
    ],
)
def test_invalid_dates_parse_to_none(value: str) -> None:
    assert origin_http.parse_date(value) is None


def test_if_range_on_the_origin() -> None:
    lm = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert origin_http.if_range_matches(None, '"a"', lm)
    assert origin_http.if_range_matches('"a"', '"a"', lm)
    assert not origin_http.if_range_matches('"b"', '"a"', lm)
    assert not origin_http.if_range_matches('W/"a"', 'W/"a"', lm)  # weak never matches
    assert origin_http.if_range_matches("Sunday, 06-Nov-94 08:49:37 GMT", '"a"', lm)
    assert not origin_http.if_range_matches("Sun, 06 Nov 1994 08:49:38 GMT", '"a"', lm)
    assert not origin_http.if_range_matches(lm, '"a"', None)
