"""The sliced path end to end: ranges, slice boundaries, caching, coalescing, origin faults."""

from __future__ import annotations

import concurrent.futures
import re
import socket
import time

import httpx
import pytest

from bench.origin import etag_for, expected_bytes, expected_sha256
from tests.conftest import Origin, ProxyFactory, ServerErrors, sha256
from tests.servers import run_asgi_in_thread
from tests.waiting import wait_for, wait_until_held

# Every proxy test runs with the protocol's fast path for plain fresh hits and without
# it (tests/conftest.py, app/fasthit.py): both paths answer the same tests.
BOTH_PATHS = True

SLICE = 64 * 1024


def _ranges_sent(origin: Origin, path: str) -> list[tuple[int, int]]:
    spans = []
    for entry in origin.requests_for(path):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", entry["range"] or "")
        assert match is not None, entry
        spans.append((int(match.group(1)), int(match.group(2))))
    return sorted(spans)


def assert_each_byte_fetched_once(origin: Origin, path: str, size: int) -> None:
    """The origin sent every byte of the object exactly once (any grouping into requests)."""
    covered = 0
    for first, last in _ranges_sent(origin, path):
        assert first == covered, _ranges_sent(origin, path)
        covered = last + 1
    assert covered == size


@pytest.mark.parametrize(
    ("name", "size"),
    [("256k-exact.bin", 4 * SLICE), ("300000-odd.bin", 300_000)],
)
@pytest.mark.parametrize(
    "spec",
    [
        "0-65535",  # ends exactly on a slice boundary
        "0-65534",  # one before
        "0-65536",  # one after
        "65535-65536",  # straddles a boundary
        "65536-131071",  # exactly one slice
        "1000-",  # open-ended
        "-1",  # suffix: last byte
        "-70000",  # suffix across a boundary
        "-999999",  # suffix longer than the object: the whole object
        "100-9999999",  # end past EOF clamped
    ],
)
def test_single_ranges_match_origin_bytes(
    proxy: ProxyFactory, name: str, size: int, spec: str
) -> None:
    with proxy(slice_size=SLICE) as url:
        response = httpx.get(f"{url}/files/{name}", headers={"Range": f"bytes={spec}"})
    assert response.status_code == 206
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers["content-range"])
    assert match is not None
    first, last, total = map(int, match.groups())
    assert total == size
    assert response.content == expected_bytes(name, 1, first, last)
    assert response.headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize("name", ["0.bin", "1.bin", "65536.bin", "65537.bin", "1m.bin"])
def test_whole_objects_of_boundary_sizes(proxy: ProxyFactory, name: str) -> None:
    with proxy(slice_size=SLICE) as url:
        cold = httpx.get(f"{url}/files/{name}")
        warm = httpx.get(f"{url}/files/{name}")
    for response in (cold, warm):
        assert response.status_code == 200
        assert sha256(response.content) == expected_sha256(name)
    assert warm.headers["x-cache"] == "HIT"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0-9,70000-70009,299990-", [(0, 9), (70000, 70009), (299990, 299999)]),
        # RFC 9110 14.6: in the order asked, a coalesced part where its first range was.
        # Cold, the probe's slice 0 is read last here; warm, from the cache.
        ("299990-,70000-70009,0-9,70005-70020", [(299990, 299999), (70000, 70020), (0, 9)]),
    ],
    ids=["ascending", "as-asked"],
)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_multi_range_is_multipart_with_origin_bytes(
    proxy: ProxyFactory, spec: str, expected: list[tuple[int, int]], warm: bool
) -> None:
    name = f"300000-multi-{len(spec)}-{warm}.bin"
    with proxy(slice_size=SLICE) as url:
        if warm:
            assert httpx.get(f"{url}/files/{name}").status_code == 200
        response = httpx.get(f"{url}/files/{name}", headers={"Range": f"bytes={spec}"})
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    assert int(response.headers["content-length"]) == len(response.content)
    boundary = content_type.split("boundary=")[1].encode()
    parts = response.content.split(b"--" + boundary)[1:-1]
    got = []
    for part in parts:
        head, _, body = part.partition(b"\r\n\r\n")
        first, last = map(int, re.search(rb"bytes (\d+)-(\d+)/300000", head).groups())  # type: ignore[union-attr]
        got.append((first, last))
        assert body[:-2] == expected_bytes(name, 1, first, last)
    assert got == expected


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_two_range_fields_are_ignored(proxy: ProxyFactory, warm: bool) -> None:
    """Range is not a list field: two of them are invalid, and an invalid Range is
    ignored (RFC 9110 5.3, 14.2); the first one was served (helper-47 finding 5)."""
    name = f"300000-two-ranges-{warm}.bin"
    with proxy(slice_size=SLICE) as url:
        if warm:
            assert httpx.get(f"{url}/files/{name}").status_code == 200
        response = httpx.get(
            f"{url}/files/{name}", headers=[("Range", "bytes=0-9"), ("Range", "bytes=20-29")]
        )
    assert response.status_code == 200
    assert sha256(response.content) == expected_sha256(name)


def test_unsatisfiable_and_invalid_ranges(proxy: ProxyFactory) -> None:
    name = "300000-416.bin"
    with proxy(slice_size=SLICE) as url:
        unsatisfiable = httpx.get(f"{url}/files/{name}", headers={"Range": "bytes=300000-"})
        invalid = httpx.get(f"{url}/files/{name}", headers={"Range": "bytes=abc"})
        head = httpx.head(f"{url}/files/{name}", headers={"Range": "bytes=10-19"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == "bytes */300000"
    assert invalid.status_code == 200 and sha256(invalid.content) == expected_sha256(name)
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-range"] == "bytes 10-19/300000"


def test_if_range(proxy: ProxyFactory) -> None:
    name = "200000-ifrange.bin"
    with proxy(slice_size=SLICE) as url:
        same = httpx.get(
            f"{url}/files/{name}",
            headers={"Range": "bytes=5-9", "If-Range": etag_for(name)},
        )
        other = httpx.get(
            f"{url}/files/{name}", headers={"Range": "bytes=5-9", "If-Range": '"stale"'}
        )
    assert same.status_code == 206 and same.content == expected_bytes(name, 1, 5, 9)
    assert other.status_code == 200 and len(other.content) == 200_000


def test_second_download_is_served_from_cache(proxy: ProxyFactory, origin: Origin) -> None:
    path = "/files/1m-twice.bin"
    with proxy(slice_size=SLICE) as url:
        first = httpx.get(f"{url}{path}")
        requests_after_first = len(origin.requests_for(path))
        seek = httpx.get(f"{url}{path}", headers={"Range": "bytes=500000-600000"})
        second = httpx.get(f"{url}{path}")
    assert first.headers["x-cache"] == "MISS"
    assert first.headers["x-cache-slices"] == "hit=0, miss=16"
    assert second.headers["x-cache"] == "HIT"
    assert seek.headers["x-cache"] == "HIT"
    # The probe is slice 0 (no extra HEAD), then runs of 4 slices per request.
    assert requests_after_first == 1 + 4
    assert len(origin.requests_for(path)) == requests_after_first
    assert_each_byte_fetched_once(origin, path, 1024 * 1024)
    assert sha256(second.content) == expected_sha256(path.rsplit("/", 1)[1])


def test_partial_when_some_slices_are_cached(proxy: ProxyFactory) -> None:
    path = "/files/512k-partial.bin"
    with proxy(slice_size=SLICE) as url:
        httpx.get(f"{url}{path}", headers={"Range": "bytes=0-131071"})
        response = httpx.get(f"{url}{path}")
    assert response.headers["x-cache"] == "PARTIAL"
    assert response.headers["x-cache-slices"] == "hit=2, miss=6"


def test_concurrent_cold_clients_fetch_each_slice_once(proxy: ProxyFactory, origin: Origin) -> None:
    name = "2m-coalesce.bin"
    path = f"/files/{name}"
    with proxy(slice_size=SLICE, max_concurrent_subrequests=4) as url:

        def download(_: int) -> str:
            return sha256(httpx.get(f"{url}{path}?latency_ms=30", timeout=30).content)

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            digests = list(pool.map(download, range(10)))
    assert digests == [expected_sha256(name)] * 10
    assert_each_byte_fetched_once(origin, path, 2 * 1024 * 1024)


def test_object_changed_mid_download_aborts_and_recovers(
    proxy: ProxyFactory,
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
    server_errors: ServerErrors,
) -> None:
    name = "4m-change.bin"
    path = f"/files/{name}"
    caplog.set_level("INFO")
    with proxy(slice_size=SLICE, max_concurrent_subrequests=2) as url:
        server_errors.watch()
        received = 0
        with (
            pytest.raises(httpx.TransportError),
            httpx.stream("GET", f"{url}{path}?bandwidth_mbps=4", timeout=30) as response,
        ):
            for chunk in response.iter_raw():
                received += len(chunk)
                if received >= 3 * SLICE and origin.app.version(name) == 1:
                    origin.app.bump(name)
        assert received < 4 * 1024 * 1024  # never completed with a splice of two versions
        fresh = httpx.get(f"{url}{path}?bandwidth_mbps=4", timeout=30)
    # The query differs from the aborted request's, so compare with the new version.
    assert fresh.status_code == 200
    assert sha256(fresh.content) == expected_sha256(name, version=2)
    # Cut short on purpose: the change is logged (rate-limited) as an origin event; the
    # cut response is not also a server error (uvicorn's "returned without completing").
    assert server_errors() == []
    messages = [r.getMessage() for r in caplog.records]
    events = [getattr(r, "fields", {}).get("event") for r in caplog.records]
    assert events.count("origin_object_changed") == 1, messages


def test_a_changed_last_modified_without_etag_is_never_spliced(
    proxy: ProxyFactory, origin: Origin
) -> None:
    """No ETag: Last-Modified is the validator. Slice 0 cached at version 1, the object
    changes (same size, new Last-Modified), a range over slices 0-1 must not join them."""
    name = "300000-change-lm.bin"
    target = f"/files/{name}?etag=0"
    wanted = {"Range": f"bytes=0-{2 * SLICE - 1}"}
    with proxy(slice_size=SLICE) as url:
        first = httpx.get(f"{url}{target}", headers={"Range": "bytes=0-10"})
        assert "etag" not in first.headers and "last-modified" in first.headers
        origin.app.bump(name)
        try:
            body: bytes | None = httpx.get(f"{url}{target}", headers=wanted).content
        except httpx.TransportError:
            body = None  # aborted once the change showed after bytes went out: no splice
        again = httpx.get(f"{url}{target}", headers=wanted)
    assert body is None or body == expected_bytes(name, 2, 0, 2 * SLICE - 1), "spliced"
    assert again.status_code == 206
    assert again.content == expected_bytes(name, 2, 0, 2 * SLICE - 1)


class ResizingOrigin:
    """One object with a fixed, old Last-Modified and no ETag whose size (and bytes)
    change when ``grown`` is set: only the Content-Range total shows the new version."""

    LAST_MODIFIED = "Wed, 01 Jan 2020 00:00:00 GMT"

    def __init__(self, size: int, grown_size: int) -> None:
        self.bodies = {
            False: bytes((i * 7 + 1) % 251 for i in range(size)),
            True: bytes((i * 11 + 3) % 251 for i in range(grown_size)),
        }
        self.grown = False

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        body = self.bodies[self.grown]
        size = len(body)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"last-modified", self.LAST_MODIFIED.encode()),
            (b"cache-control", b"public, max-age=3600"),
        ]
        first, last, status = 0, size - 1, 200
        spec = dict(scope["headers"]).get(b"range")
        if spec is not None:
            lo, _, hi = spec.decode().split("=", 1)[1].partition("-")
            first, last, status = int(lo), min(int(hi) if hi else size - 1, size - 1), 206
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        headers.append((b"content-length", str(last - first + 1).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body[first : last + 1]})  # type: ignore[operator]


def test_a_changed_size_under_the_same_last_modified_is_never_spliced(
    proxy: ProxyFactory,
) -> None:
    """Slice 1 answered with another total than the cached object's: the object changed
    (validator = Last-Modified + size), so its bytes must not join the cached slice 0."""
    resizing = ResizingOrigin(300_000, 310_000)
    wanted = {"Range": f"bytes=0-{2 * SLICE - 1}"}
    with run_asgi_in_thread(resizing) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:
            assert httpx.get(f"{url}/obj.bin", headers={"Range": "bytes=0-10"}).status_code == 206
            resizing.grown = True
            try:
                body: bytes | None = httpx.get(f"{url}/obj.bin", headers=wanted).content
            except httpx.TransportError:
                body = None  # aborted once the change showed after bytes went out
            again = httpx.get(f"{url}/obj.bin", headers=wanted)
    assert body is None or body == resizing.bodies[True][: 2 * SLICE], "two versions spliced"
    assert again.status_code == 206
    assert again.headers["content-range"] == f"bytes 0-{2 * SLICE - 1}/310000"
    assert again.content == resizing.bodies[True][: 2 * SLICE]


class RangeCappingOrigin:
    """Answers every Range with at most ``cap`` bytes, correctly labelled (origins that cap
    range sizes exist): the probe's answer is not slice 0, so the object is not sliceable."""

    def __init__(self, size: int, cap: int) -> None:
        self.body = bytes((i * 7 + 1) % 251 for i in range(size))
        self.cap = cap

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        size = len(self.body)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"etag", b'"capped-v1"'),
            (b"cache-control", b"public, max-age=3600"),
        ]
        first, last, status = 0, size - 1, 200
        spec = dict(scope["headers"]).get(b"range")
        if spec is not None:
            lo, _, hi = spec.decode().split("=", 1)[1].partition("-")
            first = int(lo)
            last = min(int(hi) if hi else size - 1, size - 1, first + self.cap - 1)
            status = 206
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        headers.append((b"content-length", str(last - first + 1).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": self.body[first : last + 1]})  # type: ignore[operator]


def test_a_probe_answered_with_a_shorter_range_passes_through(proxy: ProxyFactory) -> None:
    """Slice 0 asked, bytes 0-999 answered: the proxy must not slice the object (its later
    slices would come back short too) but relay the origin's own answers, every time."""
    capping = RangeCappingOrigin(300_000, 1000)
    with run_asgi_in_thread(capping) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:
            answers = [httpx.get(f"{url}/obj.bin", timeout=30) for _ in range(2)]
            ranged = httpx.get(f"{url}/obj.bin", headers={"Range": "bytes=500-2999"})
    for whole in answers:
        assert whole.status_code == 200
        assert whole.content == capping.body
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == "bytes 500-1499/300000"  # the origin's answer
    assert ranged.content == capping.body[500:1500]


class MismatchedNotModifiedOrigin:
    """Serves version 1 (ETag "v1"), then version 2 (ETag "v2"), and once switched answers
    every conditional request with a 304 carrying "v2": a 304 about another response
    (two backends behind one name), which must not refresh the stored version 1."""

    def __init__(self, size: int) -> None:
        self.bodies = {
            1: bytes((i * 7 + 1) % 251 for i in range(size)),
            2: bytes((i * 11 + 3) % 251 for i in range(size)),
        }
        self.version = 1

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        request_headers = dict(scope["headers"])
        body = self.bodies[self.version]
        size = len(body)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"etag", f'"v{self.version}"'.encode()),
            (b"cache-control", b"public, max-age=0"),
        ]
        if self.version == 2 and b"if-none-match" in request_headers:
            await send({"type": "http.response.start", "status": 304, "headers": headers})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]
            return
        first, last, status = 0, size - 1, 200
        spec = request_headers.get(b"range")
        if spec is not None:
            lo, _, hi = spec.decode().split("=", 1)[1].partition("-")
            first, last, status = int(lo), min(int(hi) if hi else size - 1, size - 1), 206
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        headers.append((b"content-length", str(last - first + 1).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body[first : last + 1]})  # type: ignore[operator]


def test_a_304_with_another_etag_does_not_refresh_the_stored_response(
    proxy: ProxyFactory,
) -> None:
    """RFC 9111 4.3.4: a 304 whose strong ETag is not the stored one's updates nothing;
    the proxy fetches the response plainly and serves that, never the old body."""
    origin = MismatchedNotModifiedOrigin(300_000)
    with run_asgi_in_thread(origin) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:
            first = httpx.get(f"{url}/obj.bin")
            origin.version = 2
            second = httpx.get(f"{url}/obj.bin")
    assert first.status_code == 200 and first.content == origin.bodies[1]
    assert second.status_code == 200
    assert second.headers["etag"] == '"v2"'
    assert second.content == origin.bodies[2], "the stored body was served under a foreign 304"


def test_changed_object_before_first_byte_restarts_on_new_version(
    proxy: ProxyFactory, origin: Origin
) -> None:
    name = "300000-restart.bin"
    path = f"/files/{name}"
    with proxy(slice_size=SLICE) as url:
        httpx.get(f"{url}{path}", headers={"Range": "bytes=0-10"})  # caches meta + slice 0
        origin.app.bump(name)
        # Slice 0 is cached (old version), slice 4 is not: fetching it reveals the change
        # before any byte was sent, so the response restarts and serves version 2 only.
        response = httpx.get(f"{url}{path}", headers={"Range": "bytes=290000-290009"})
    assert response.status_code == 206
    assert response.content == expected_bytes(name, 2, 290000, 290009)


def test_origin_ignoring_range_is_streamed_through(proxy: ProxyFactory) -> None:
    name = "300000-norange.bin"
    with proxy(slice_size=SLICE) as url:
        first = httpx.get(f"{url}/files/{name}?fault=norange")
        second = httpx.get(f"{url}/files/{name}?fault=norange")
    for response in (first, second):
        assert response.status_code == 200
        assert sha256(response.content) == expected_sha256(name)


def test_short_206_never_reaches_the_client_as_a_clean_body(proxy: ProxyFactory) -> None:
    name = "300000-short.bin"
    with proxy(slice_size=SLICE, max_retries=1) as url:
        try:
            response = httpx.get(f"{url}/files/{name}?fault=short")
        except httpx.TransportError:
            response = None  # aborted mid-body: the right outcome once bytes went out
        if response is not None:
            assert response.status_code in (502, 504)
        again = httpx.get(f"{url}/files/{name}?fault=short", headers={"Range": "bytes=0-9"})
    assert again.status_code in (502, 504) or again.content == expected_bytes(name, 1, 0, 9)


def test_wrong_content_range_on_the_probe_passes_through_uncached(
    proxy: ProxyFactory, origin: Origin
) -> None:
    name = "300000-wrong.bin"
    with proxy(slice_size=SLICE) as url:
        response = httpx.get(f"{url}/files/{name}?fault=wrongrange")
        again = httpx.get(f"{url}/files/{name}?fault=wrongrange")
    # The shifted range is never served as slice 0: the plain GET passes through instead.
    for answer in (response, again):
        assert answer.status_code == 200
        assert sha256(answer.content) == expected_sha256(name)
        # Passed through: never labelled as served from the cache, and saying why.
        assert answer.headers["x-cache"] == "BYPASS", answer.headers
        status = answer.headers["cache-status"]
        assert status.startswith("slicecache; fwd=bypass; fwd-status=200; detail="), status
    assert [e["range"] is None for e in origin.requests_for(f"/files/{name}")] == [
        False,
        True,
        True,
    ]


def test_wrong_content_range_on_a_later_slice_aborts(proxy: ProxyFactory, origin: Origin) -> None:
    name = "300000-wrong-later.bin"
    path = f"/files/{name}"
    with proxy(slice_size=SLICE) as url:
        httpx.get(f"{url}{path}", headers={"Range": "bytes=0-0"})  # slice 0 and metadata
        origin.app.set_fault(name, "wrongrange")
        try:
            with (
                pytest.raises(httpx.TransportError),
                httpx.stream("GET", f"{url}{path}") as response,
            ):
                for _ in response.iter_raw():
                    pass
            slice_only = httpx.get(f"{url}{path}", headers={"Range": "bytes=70000-70009"})
            metrics = httpx.get(f"{url}/_slicecache/metrics").text
        finally:
            origin.app.set_fault(name, "")
    assert slice_only.status_code == 502  # nothing was sent yet: a clean 502
    # The metadata was a hit, but the answer is the origin's failure: counted as a miss.
    assert _five_xx(metrics) == {"MISS": "1.0"}


def _five_xx(metrics: str) -> dict[str, str]:
    """slicecache_requests_total of GET 5xx answers, by cache label."""
    row = r'slicecache_requests_total\{cache="(\w+)",method="GET",status_class="5xx"\} (\S+)'
    return dict(re.findall(row, metrics))


def test_a_hit_whose_slice_cannot_be_read_or_fetched_is_a_502_miss(origin: Origin) -> None:
    """The index says the slice is stored (X-Cache would say HIT), the store cannot give it
    (a damaged L2 record) and the origin fails the refetch: a clean 502, counted and logged
    as a miss, not as a hit that answered 5xx."""
    from tests.test_fasthit import served

    name = "300000-hit-fails.bin"
    path = f"/files/{name}"
    with served(origin, slice_size=SLICE, max_retries=0) as (url, app):
        assert httpx.get(f"{url}{path}", headers={"Range": "bytes=0-0"}).status_code == 206
        engine = app.state.runtime.directory.engine
        engine.cached_slices = lambda *args: 1  # the index's word; the bytes are not there
        origin.app.set_fault(name, "status500")
        try:
            answer = httpx.get(f"{url}{path}", headers={"Range": "bytes=70000-70009"})
            metrics = httpx.get(f"{url}/_slicecache/metrics").text
        finally:
            origin.app.set_fault(name, "")
    assert answer.status_code == 502
    assert _five_xx(metrics) == {"MISS": "1.0"}


def test_failed_slice_after_start_aborts_never_eof(proxy: ProxyFactory, origin: Origin) -> None:
    name = "1m-fail.bin"
    path = f"/files/{name}"
    with proxy(slice_size=SLICE, max_retries=1) as url:
        # Warm slice 0 and the metadata, then make every further origin request fail.
        httpx.get(f"{url}{path}", headers={"Range": "bytes=0-0"})
        origin.app.set_fault(name, "status500")
        try:
            received = 0
            with (
                pytest.raises(httpx.TransportError),
                httpx.stream("GET", f"{url}{path}") as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += len(chunk)
        finally:
            origin.app.set_fault(name, "")
    # Slice 0 came from the cache; the failure after it is a reset, not a clean short body.
    assert 0 < received < 1024 * 1024


def test_a_cut_response_with_a_request_pipelined_behind_it_is_no_server_error(
    proxy: ProxyFactory, server_errors: ServerErrors
) -> None:
    """A cold miss whose origin fails mid-body is cut short on purpose: its connection
    closes, the request pipelined behind it is never answered there, and the cut is the
    access line's ``aborted``, not uvicorn's "returned without completing response" error
    line (the mark that silences it went to the pipelined request's cycle: helper-40)."""
    target = "/files/256k-pipelined-cut.bin?fault=reset"
    with proxy(slice_size=SLICE, max_retries=0) as url:
        server_errors.watch()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /files/4k-behind.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            )
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"HTTP/1.1" not in body
    assert len(body) < 256 * 1024
    assert server_errors() == []


def test_object_larger_than_the_cache_is_streamed_not_stored(
    proxy: ProxyFactory, origin: Origin
) -> None:
    name = "2m-too-large.bin"
    with proxy(slice_size=SLICE, l1_cache_size_bytes=1024 * 1024) as url:
        first = httpx.get(f"{url}/files/{name}")
        second = httpx.get(f"{url}/files/{name}")
    for response in (first, second):
        assert sha256(response.content) == expected_sha256(name)
    assert second.headers["x-cache"] == "BYPASS"
    assert "too-large" in second.headers["cache-status"]


def _active_requests(url: str) -> float:
    for line in httpx.get(f"{url}/_slicecache/metrics").text.splitlines():
        if line.startswith("slicecache_active_requests"):
            return float(line.split()[-1])
    raise AssertionError("no slicecache_active_requests in /metrics")


def test_too_large_object_is_still_coalesced_in_flight(proxy: ProxyFactory, origin: Origin) -> None:
    name = "2m-too-large-shared.bin"
    path = f"/files/{name}"
    with proxy(slice_size=SLICE, l1_cache_size_bytes=1024 * 1024) as url:

        def download(_: int) -> str:
            query = "hold=too-large-shared&bandwidth_mbps=4"
            return sha256(httpx.get(f"{url}{path}?{query}", timeout=60).content)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(download, n) for n in range(8)]
            # The origin holds the probe until all eight clients are in: they overlap
            # however slowly the threads start (a download's duration decided this).
            wait_until_held(origin.app, "too-large-shared")
            wait_for(lambda: _active_requests(url) >= 8, "eight clients in")
            origin.app.release("too-large-shared")
            digests = [future.result() for future in futures]
        stats = httpx.get(f"{url}/_slicecache/stats").json()
    assert digests == [expected_sha256(name)] * 8
    assert origin.bytes_sent_for(path) <= 1.05 * 2 * 1024 * 1024
    assert stats["tiers"]["l1"]["entries"] == 0  # shared in flight, never stored


def test_private_response_slices_are_never_stored(proxy: ProxyFactory) -> None:
    name = "300000-private-slices.bin"
    with proxy(slice_size=SLICE) as url:
        response = httpx.get(f"{url}/files/{name}?cc=private")
        stats = httpx.get(f"{url}/_slicecache/stats").json()
    assert sha256(response.content) == expected_sha256(name)
    assert stats["tiers"]["l1"]["entries"] == 0


def test_slow_reader_stops_the_lookahead(proxy: ProxyFactory, origin: Origin) -> None:
    name = "64m-slow-reader.bin"
    path = f"/files/{name}"
    mib = 1024 * 1024
    with (
        proxy(slice_size=mib, max_concurrent_subrequests=4) as url,
        httpx.stream("GET", f"{url}{path}", timeout=30) as response,
    ):
        chunks = response.iter_raw(65536)
        read = len(next(chunks))
        # The client stops reading; the proxy must stop fetching: wait until the origin's
        # count stops growing (steady for half a second), whatever the machine's speed.
        last, steady_since = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sent = origin.bytes_sent_for(path)
            if sent != last:
                last, steady_since = sent, time.monotonic()
            elif time.monotonic() - steady_since > 0.5:
                break
            time.sleep(0.05)
        sent_while_paused = origin.bytes_sent_for(path)
        for chunk in chunks:
            read += len(chunk)
    assert read == 64 * mib
    # What the client holds plus socket buffers plus the 4-slice window, far from 64 MiB.
    assert sent_while_paused < 24 * mib


class ChunkedWholeOrigin:
    """Ignores Range and sends the whole body chunked (no Content-Length), in pieces."""

    def __init__(self, size: int) -> None:
        self.body = bytes((i * 13 + 5) % 251 for i in range(size))

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"etag", b'"chunked-v1"'),
            (b"cache-control", b"public, max-age=3600"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        step = 16 * 1024
        for start in range(0, len(self.body), step):
            piece = self.body[start : start + step]
            await send({"type": "http.response.body", "body": piece, "more_body": True})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


def test_a_large_chunked_answer_to_the_probe_is_relayed_whole(proxy: ProxyFactory) -> None:
    """The probe reads the start of an unframed answer to see whether it is small; a longer
    one is relayed: the bytes read and then the rest, never cut where the peek stopped."""
    chunked = ChunkedWholeOrigin(3 * SLICE + 12345)
    with run_asgi_in_thread(chunked) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:
            answers = [httpx.get(f"{url}/big.bin", timeout=30) for _ in range(2)]
    for whole in answers:
        assert whole.status_code == 200
        assert whole.content == chunked.body


class OverflowingOrigin:
    """Answers a Range that starts after slice 0 with the right Content-Range but no
    Content-Length, and a chunked body longer than the range: only reading it shows the
    origin sent more than was asked."""

    def __init__(self, size: int) -> None:
        self.body = bytes((i * 13 + 5) % 251 for i in range(size))

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        size = len(self.body)
        spec = dict(scope["headers"]).get(b"range", b"bytes=0-").decode()
        lo, _, hi = spec.split("=", 1)[1].partition("-")
        first, last = int(lo), min(int(hi) if hi else size - 1, size - 1)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"etag", b'"overflow-v1"'),
            (b"cache-control", b"public, max-age=3600"),
            (b"content-range", f"bytes {first}-{last}/{size}".encode()),
        ]
        extra = b"" if first == 0 else b"not part of the range"
        await send({"type": "http.response.start", "status": 206, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": self.body[first : last + 1] + extra})  # type: ignore[operator]


def test_a_slice_answer_longer_than_asked_aborts_every_reader_without_a_traceback(
    proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An origin fault, like a short body: each reader of the shared fill gets an aborted
    response (never the extra bytes), and the log says so in one line, not a traceback
    (the fill's one error, re-raised to every reader, once grew by each reader's frames)."""
    caplog.set_level("WARNING", logger="slicecache")
    overflowing = OverflowingOrigin(8 * SLICE)
    with run_asgi_in_thread(overflowing) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:

            def download(_: int) -> tuple[bytes, bool]:
                body = bytearray()
                try:
                    with httpx.stream("GET", f"{url}/obj.bin", timeout=30) as response:
                        for chunk in response.iter_raw():
                            body += chunk
                    return bytes(body), True
                except httpx.HTTPError:
                    return bytes(body), False

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                results = list(pool.map(download, range(6)))
    for body, clean in results:
        assert not clean, "a response with bytes the origin sent past the range ended cleanly"
        assert body == overflowing.body[: len(body)]
    failures = [r for r in caplog.records if r.getMessage() == "slice fetch failed"]
    assert len(failures) == 1, "six readers of one failed fill: one line per interval"
    assert [r for r in failures if r.exc_info] == [], "an origin fault logged as a traceback"
