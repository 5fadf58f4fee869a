"""bench/origin.py over a real uvicorn server on loopback, driven with httpx."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from bench.origin import (
    PATTERN_LENGTH,
    OriginApp,
    create_origin_app,
    etag_for,
    expected_bytes,
    expected_sha256,
    file_size,
    last_modified,
)
from tests.servers import run_asgi_in_thread

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[OriginApp, str]]:
    app = create_origin_app()
    with run_asgi_in_thread(app, http="httptools") as base_url:
        yield app, base_url


@pytest.fixture
def app(origin: tuple[OriginApp, str]) -> OriginApp:
    origin[0].clear_log()
    return origin[0]


@pytest.fixture
def client(origin: tuple[OriginApp, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=origin[1], timeout=10) as c:
        yield c


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until_idle(app: OriginApp, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while app.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.in_flight == 0, "the abandoned response kept running"


def parse_multipart(response: httpx.Response) -> list[tuple[str, str, bytes]]:
    """(Content-Type, Content-Range, payload) of each part, by RFC 2046 delimiters."""
    m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert m is not None
    delimiter = b"\r\n--" + m.group(1).encode()
    body = response.content
    assert body.endswith(delimiter + b"--\r\n")
    parts = []
    for chunk in body[: -len(delimiter) - 4].split(delimiter)[1:]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        parts.append((fields["Content-Type"], fields["Content-Range"], payload))
    return parts


# --- content model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("0.bin", 0),
        ("12345.dat", 12345),
        ("1k.bin", 1024),
        ("1m.bin", MiB),
        ("100m-a.bin", 100 * MiB),
        ("2g.iso", 2 * 1024 * MiB),
        ("3K", 3072),
        ("abc.bin", None),
        ("", None),
    ],
)
def test_file_size(name: str, size: int | None) -> None:
    assert file_size(name) == size


def test_expected_bytes_is_consistent_across_the_pattern_period() -> None:
    whole = expected_bytes("3m.bin")
    assert len(whole) == 3 * MiB
    assert sha256(whole) == expected_sha256("3m.bin")
    # Ranges straddling the end of the pattern period must continue seamlessly.
    for first, last in [(0, 0), (PATTERN_LENGTH - 10, PATTERN_LENGTH + 10), (3 * MiB - 5, 10**9)]:
        assert expected_bytes("3m.bin", 1, first, last) == whole[first : last + 1]
    assert expected_bytes("3m.bin", 1, 10, 5) == b""
    with pytest.raises(ValueError):
        expected_bytes("nope.bin")


def test_content_differs_between_files_and_versions() -> None:
    a1 = expected_bytes("64k-a.bin")
    assert a1 != expected_bytes("64k-b.bin")
    assert a1 != expected_bytes("64k-a.bin", version=2)
    assert a1 == expected_bytes("64k-a.bin", version=1)
    assert etag_for("64k-a.bin") != etag_for("64k-a.bin", 2)


# --- GET / HEAD --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1m.bin", "12345.dat", "3m-odd.bin"])
def test_full_body(client: httpx.Client, name: str) -> None:
    r = client.get(f"/files/{name}")
    assert r.status_code == 200
    assert sha256(r.content) == expected_sha256(name)
    assert r.headers["content-length"] == str(file_size(name))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == etag_for(name)
    assert re.fullmatch(r'"[0-9a-f]{16}"', r.headers["etag"])
    assert r.headers["last-modified"] == last_modified(1)
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert parsedate_to_datetime(r.headers["date"]) is not None
    assert len(r.headers.get_list("date")) == 1


def test_empty_file(client: httpx.Client) -> None:
    r = client.get("/files/0.bin")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")


def test_head_has_headers_but_no_body(client: httpx.Client, app: OriginApp) -> None:
    get = client.get("/files/1m.bin")
    head = client.head("/files/1m.bin")
    assert head.status_code == 200 and head.content == b""
    for field in ("content-length", "content-type", "etag", "last-modified", "accept-ranges"):
        assert head.headers[field] == get.headers[field]
    ranged = client.head("/files/1m.bin", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == b""
    assert ranged.headers["content-length"] == "100"
    assert ranged.headers["content-range"] == f"bytes 0-99/{MiB}"
    assert [e["bytes_sent"] for e in app.log_entries() if e["method"] == "HEAD"] == [0, 0]


def test_unknown_file_method_and_route(client: httpx.Client) -> None:
    assert client.get("/files/abc.bin").status_code == 404
    assert client.get("/nothing-here").status_code == 404
    r = client.post("/files/1k.bin")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


# --- ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-500", MiB - 500, MiB - 1),
        ("bytes=1048000-", 1048000, MiB - 1),
        ("bytes=1048000-99999999", 1048000, MiB - 1),
    ],
)
def test_single_range(client: httpx.Client, header: str, first: int, last: int) -> None:
    r = client.get("/files/1m.bin", headers={"Range": header})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{MiB}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.content == expected_bytes("1m.bin", 1, first, last)


def test_multi_range(client: httpx.Client) -> None:
    r = client.get(
        "/files/3m.bin?ct=video/mp4", headers={"Range": "bytes=2000000-2000099, 0-9, -10"}
    )
    assert r.status_code == 206
    assert r.headers["content-length"] == str(len(r.content))
    parts = parse_multipart(r)
    size = 3 * MiB
    expected = [(0, 9), (2000000, 2000099), (size - 10, size - 1)]  # served ascending
    assert [p[1] for p in parts] == [f"bytes {a}-{b}/{size}" for a, b in expected]
    for (ctype, _, payload), (a, b) in zip(parts, expected, strict=True):
        assert ctype == "video/mp4"
        assert payload == expected_bytes("3m.bin", 1, a, b)


def test_near_ranges_are_coalesced_into_one_part(client: httpx.Client) -> None:
    r = client.get("/files/1m.bin", headers={"Range": "bytes=0-9,20-29"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-29/{MiB}"


def test_unsatisfiable_range(client: httpx.Client) -> None:
    r = client.get("/files/1k.bin", headers={"Range": "bytes=2000-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */1024"
    assert r.content == b""


def test_invalid_range_is_ignored(client: httpx.Client) -> None:
    r = client.get("/files/1k.bin", headers={"Range": "bytes=9-1"})
    assert r.status_code == 200 and r.content == expected_bytes("1k.bin")


def test_if_range(client: httpx.Client) -> None:
    name, rng = "64k.bin", {"Range": "bytes=10-19"}
    partial = expected_bytes(name, 1, 10, 19)
    current = client.head(f"/files/{name}").headers

    r = client.get(f"/files/{name}", headers={**rng, "If-Range": current["etag"]})
    assert (r.status_code, r.content) == (206, partial)
    r = client.get(f"/files/{name}", headers={**rng, "If-Range": current["last-modified"]})
    assert (r.status_code, r.content) == (206, partial)
    r = client.get(f"/files/{name}", headers={**rng, "If-Range": '"stale"'})
    assert (r.status_code, r.content) == (200, expected_bytes(name))
    r = client.get(f"/files/{name}", headers={**rng, "If-Range": last_modified(2)})
    assert r.status_code == 200
    # A weak validator can never make If-Range true, even when it is the current one.
    weak = client.head(f"/files/{name}?weak=1").headers["etag"]
    assert weak.startswith("W/")
    r = client.get(f"/files/{name}?weak=1", headers={**rng, "If-Range": weak})
    assert r.status_code == 200


# --- conditionals ----------------------------------------------------------------------


def test_not_modified(client: httpx.Client) -> None:
    url = "/files/64k.bin?vary=Accept-Encoding"
    full = client.get(url)
    etag, lm = full.headers["etag"], full.headers["last-modified"]
    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", {etag}'},
        {"If-None-Match": "W/" + etag},  # If-None-Match compares weakly
        {"If-None-Match": "*"},
        {"If-Modified-Since": lm},
        {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    ):
        r = client.get(url, headers=headers)
        assert r.status_code == 304, headers
        assert r.content == b""
        assert "content-length" not in r.headers
        assert r.headers["etag"] == etag and r.headers["vary"] == "Accept-Encoding"
        assert r.headers["cache-control"] == "public, max-age=3600"
    for headers in (
        {"If-None-Match": '"other"'},
        {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
        {"If-Modified-Since": "not a date"},
        # If-None-Match takes precedence: a mismatch there beats a matching date.
        {"If-None-Match": '"other"', "If-Modified-Since": lm},
    ):
        r = client.get(url, headers=headers)
        assert r.status_code == 200, headers
        assert r.content == full.content


def test_bump_changes_etag_content_and_last_modified(client: httpx.Client, app: OriginApp) -> None:
    name = "256k-bump.bin"
    before = client.get(f"/files/{name}")
    bumped = client.post("/_origin/bump", params={"name": name})
    assert bumped.status_code == 200
    assert bumped.json() == {"name": name, "version": 2, "etag": etag_for(name, 2)}
    assert app.version(name) == 2
    after = client.get(f"/files/{name}")
    assert after.headers["etag"] == etag_for(name, 2) != before.headers["etag"]
    assert after.headers["last-modified"] != before.headers["last-modified"]
    assert after.content == expected_bytes(name, 2) != before.content
    # The old validator no longer selects a range of the new version.
    r = client.get(
        f"/files/{name}", headers={"Range": "bytes=0-9", "If-Range": before.headers["etag"]}
    )
    assert (r.status_code, r.content) == (200, after.content)
    assert (
        client.get(f"/files/{name}", headers={"If-None-Match": before.headers["etag"]}).status_code
        == 200
    )
    assert client.post("/_origin/bump").status_code == 400
    app.bump(name)
    assert client.head(f"/files/{name}").headers["etag"] == etag_for(name, 3)


# --- response shaping -------------------------------------------------------------------


def test_query_shaping(client: httpx.Client) -> None:
    url = "/files/1k.bin"
    assert "cache-control" not in client.head(url, params={"cc": ""}).headers
    assert client.head(url, params={"cc": "no-store"}).headers["cache-control"] == "no-store"
    r = client.head(url, params={"expires": "60"})
    ahead = parsedate_to_datetime(r.headers["expires"]) - parsedate_to_datetime(r.headers["date"])
    assert 58 <= ahead.total_seconds() <= 62  # relative to the response's own Date
    assert client.head(url, params={"expires": "0x"}).headers["expires"] == "0x"
    assert client.head(url, params={"vary": "Origin, Accept"}).headers["vary"] == "Origin, Accept"
    assert "etag" not in client.head(url, params={"etag": "0"}).headers
    assert "last-modified" not in client.head(url, params={"lm": "0"}).headers
    assert client.head(url, params={"weak": "1"}).headers["etag"] == "W/" + etag_for("1k.bin")
    assert client.head(url, params={"setcookie": "s=1"}).headers["set-cookie"] == "s=1"
    assert client.head(url, params={"ct": "video/mp4"}).headers["content-type"] == "video/mp4"
    r = client.get(url, params={"status": "404"}, headers={"Range": "bytes=0-1"})
    assert (r.status_code, r.content) == (404, expected_bytes("1k.bin"))
    r = client.get(url, params={"status": "204"})
    assert (r.status_code, r.content) == (204, b"")
    assert client.get(url, params={"status": "42"}).status_code == 400


def test_other_routes(client: httpx.Client) -> None:
    r = client.get("/status/418")
    assert (r.status_code, r.text) == (418, "status 418\n")
    assert client.get("/status/204").content == b""
    assert client.get("/status/99").status_code == 400
    assert client.get("/status/abc").status_code == 400
    r = client.get("/cookies")
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


def test_echo_streams_and_hashes_the_body(client: httpx.Client) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def upload() -> Iterator[bytes]:
        for _ in range(8):
            yield chunk

    r = client.post(
        "/echo/some/path?a=1&b=2",
        content=upload(),
        headers=[("X-Dup", "one"), ("X-Dup", "two")],
    )
    assert r.status_code == 200
    echoed = r.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo/some/path"
    assert echoed["query"] == "a=1&b=2"
    assert echoed["body_length"] == 8 * MiB
    assert echoed["body_sha256"] == sha256(chunk * 8)
    assert [v for k, v in echoed["headers"] if k == "x-dup"] == ["one", "two"]
    assert client.request("PATCH", "/echo").json()["body_length"] == 0


# --- faults -----------------------------------------------------------------------------


def test_fault_norange(client: httpx.Client) -> None:
    r = client.get("/files/64k.bin?fault=norange", headers={"Range": "bytes=0-9"})
    assert (r.status_code, r.content) == (200, expected_bytes("64k.bin"))


def test_fault_nolength(client: httpx.Client) -> None:
    r = client.get("/files/1m.bin?fault=nolength")
    assert r.status_code == 200
    assert "content-length" not in r.headers
    assert r.headers["transfer-encoding"] == "chunked"
    assert sha256(r.content) == expected_sha256("1m.bin")


@pytest.mark.parametrize("fault", ["short", "reset", "nolength,short"])
def test_truncating_faults(client: httpx.Client, app: OriginApp, fault: str) -> None:
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
        with client.stream("GET", f"/files/1m.bin?fault={fault}") as r:
            assert r.status_code == 200
            for data in r.iter_bytes():
                received += data
    assert bytes(received) == expected_bytes("1m.bin", 1, 0, MiB // 2 - 1)
    assert app.log_entries()[-1]["bytes_sent"] == MiB // 2


def test_fault_short_on_a_range(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/files/1m.bin?fault=short", headers={"Range": "bytes=0-99"})


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ((100, 199), (200, 299)),  # shifted forward by one slice of its own length
        ((MiB - 100, MiB - 1), (MiB - 200, MiB - 101)),  # no room ahead: shifted back
    ],
)
def test_fault_wrongrange(
    client: httpx.Client, asked: tuple[int, int], served: tuple[int, int]
) -> None:
    range_header = {"Range": f"bytes={asked[0]}-{asked[1]}"}
    r = client.get("/files/1m.bin?fault=wrongrange", headers=range_header)
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {served[0]}-{served[1]}/{MiB}"
    assert r.content == expected_bytes("1m.bin", 1, *served)


def test_fault_status500(client: httpx.Client) -> None:
    assert client.get("/files/1k.bin?fault=status500").status_code == 500


def test_fault_hang_sends_headers_then_stalls_until_the_client_leaves() -> None:
    app = create_origin_app()
    with run_asgi_in_thread(app) as base_url, httpx.Client(base_url=base_url) as client:
        with pytest.raises(httpx.ReadTimeout):  # noqa: PT012
            with client.stream("GET", "/files/64k.bin?fault=hang", timeout=0.3) as r:
                assert r.status_code == 200  # headers arrived
                r.read()
        wait_until_idle(app)  # the 60 s hang ended when the client went away
        assert app.log_entries()[-1]["bytes_sent"] == 0


def test_fault_hang_eventually_sends_the_body() -> None:
    app = create_origin_app(hang_s=0.2)
    with run_asgi_in_thread(app) as base_url, httpx.Client(base_url=base_url) as client:
        started = time.monotonic()
        r = client.get("/files/64k.bin?fault=hang")
        assert time.monotonic() - started >= 0.2
        assert r.content == expected_bytes("64k.bin")


# --- timing ----------------------------------------------------------------------------


def test_bandwidth_cap_paces_the_body() -> None:
    rate = 10e6
    app = create_origin_app(bandwidth_bytes_per_s=rate)
    with run_asgi_in_thread(app) as base_url, httpx.Client(base_url=base_url) as client:
        started = time.monotonic()
        r = client.get("/files/2m.bin")
        elapsed = time.monotonic() - started
        assert sha256(r.content) == expected_sha256("2m.bin")
        # Lower bound from the token bucket: at most one pacing chunk (10 ms worth) early.
        assert elapsed >= (2 * MiB - rate / 100) / rate
        started = time.monotonic()
        client.get("/files/2m.bin", params={"bandwidth_mbps": "40"})
        faster = time.monotonic() - started
        assert faster < elapsed  # per-request override lifts the cap


def test_abandoned_paced_download_stops_and_counts_what_was_sent() -> None:
    app = create_origin_app(bandwidth_bytes_per_s=5e6)
    with run_asgi_in_thread(app) as base_url, httpx.Client(base_url=base_url) as client:
        with client.stream("GET", "/files/50m.bin") as r:
            next(r.iter_raw())
        wait_until_idle(app)  # would take 10 s if the origin kept producing
        assert 0 < app.log_entries()[-1]["bytes_sent"] < 50 * MiB


def test_latency_delays_the_response() -> None:
    app = create_origin_app(latency_ms=150)
    with run_asgi_in_thread(app) as base_url, httpx.Client(base_url=base_url) as client:
        started = time.monotonic()
        assert client.get("/files/1k.bin").status_code == 200
        assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        assert client.get("/status/200", params={"latency_ms": "300"}).status_code == 200
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        assert client.get("/slow-headers", params={"ms": "200", "latency_ms": "0"}).text == "slow\n"
        assert time.monotonic() - started >= 0.2


# --- log and stats ----------------------------------------------------------------------


def test_log_and_stats(client: httpx.Client, app: OriginApp) -> None:
    assert client.delete("/_origin/log").status_code == 200
    before = client.get("/_origin/stats").json()
    client.get("/files/1k.bin")
    client.get("/files/1m.bin", headers={"Range": "bytes=0-99"})
    client.get("/files/1k.bin?x=1", headers={"Range": "bytes=5000-"})
    log = [
        {k: v for k, v in entry.items() if k not in ("finished", "client_left")}
        for entry in client.get("/_origin/log").json()
    ]
    fields = ("method", "path", "query", "range", "status", "bytes_sent")
    assert log == [
        dict(zip(fields, ("GET", "/files/1k.bin", "", None, 200, 1024), strict=True)),
        dict(zip(fields, ("GET", "/files/1m.bin", "", "bytes=0-99", 206, 100), strict=True)),
        dict(zip(fields, ("GET", "/files/1k.bin", "x=1", "bytes=5000-", 416, 0), strict=True)),
    ]
    assert len(log) == len(app.log_entries())  # control requests are not logged
    assert all(entry["finished"] and not entry["client_left"] for entry in app.log_entries())
    after = client.get("/_origin/stats").json()
    assert after == {"requests": before["requests"] + 3, "bytes_sent": before["bytes_sent"] + 1124}
    assert client.delete("/_origin/log").json() == {"cleared": 3}
    assert client.get("/_origin/log").json() == []
    assert client.get("/_origin/nope").status_code == 404


def test_log_is_bounded_but_counters_are_not() -> None:
    app = create_origin_app(log_limit=2)
    with run_asgi_in_thread(app) as base_url, httpx.Client(base_url=base_url) as client:
        for i in range(5):
            client.get(f"/files/{i + 1}.bin")
        assert [e["path"] for e in app.log_entries()] == ["/files/4.bin", "/files/5.bin"]
        assert app.stats() == {"requests": 5, "bytes_sent": 1 + 2 + 3 + 4 + 5}


# --- other ways to run it -----------------------------------------------------------------


async def test_in_process_with_asgi_transport() -> None:
    app = create_origin_app(date_header=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://origin") as client:
        r = await client.get("/files/100k.bin", headers={"Range": "bytes=0-9,5000-5009"})
        assert r.status_code == 206
        assert [p[2] for p in parse_multipart(r)] == [
            expected_bytes("100k.bin", 1, 0, 9),
            expected_bytes("100k.bin", 1, 5000, 5009),
        ]
        assert parsedate_to_datetime(r.headers["date"]) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serves_with_httptools_and_uvloop() -> None:
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.origin", "--port", str(port), "--latency-ms", "1"],
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/files/1m.bin", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "origin CLI exited"
                assert time.monotonic() < deadline, "origin CLI did not start"
                time.sleep(0.05)
        assert sha256(r.content) == expected_sha256("1m.bin")
        stats = json.loads(httpx.get(f"http://127.0.0.1:{port}/_origin/stats").content)
        assert stats == {"requests": 1, "bytes_sent": MiB}
    finally:
        proc.terminate()
        proc.wait(10)
