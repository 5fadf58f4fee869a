"""RFC 9111 shared-cache behaviour end to end, over L1 only, L2 only and both tiers."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.origin import etag_for, expected_bytes, expected_sha256
from tests.conftest import Origin, ProxyFactory, sha256
from tests.waiting import wait_for

# Every proxy test runs with the protocol's fast path for plain fresh hits and without
# it (tests/conftest.py, app/fasthit.py): both paths answer the same tests.
BOTH_PATHS = True

SLICE = 64 * 1024
CacheProxy = Callable[..., AbstractContextManager[str]]


@pytest.fixture(autouse=True)
def fresh_origin(origin: Origin) -> None:
    """Each test (and tier) starts from version 1 of every file and an empty origin log."""
    origin.app.clear_log()
    origin.app.versions.clear()
    origin.app.sticky_faults.clear()


@pytest.fixture(params=["l1", "l2", "both"])
def cache_proxy(request: pytest.FixtureRequest, proxy: ProxyFactory, tmp_path: Path) -> CacheProxy:
    tier = request.param

    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        overrides.setdefault("slice_size", SLICE)
        if tier in ("l2", "both"):
            overrides["enable_l2_cache"] = True
            overrides["raw_disk_cache"] = {
                "device_path": str(tmp_path / "l2.bin"),
                "total_size": 64 * 1024 * 1024,
            }
        if tier == "l2":
            overrides["l1_cache_size_bytes"] = 0
        with proxy(**overrides) as url:
            yield url

    return start


def settle(url: str) -> None:
    """Wait until write-behind has reached L2 (L2-only runs read what L2 holds)."""

    def drained() -> bool:
        stats = httpx.get(f"{url}/_slicecache/stats").json()
        return bool(stats["tiers"].get("write_behind", {}).get("queue_depth", 0) == 0)

    wait_for(drained, "the write-behind queue drains")


def get(url: str, path: str, **headers: str) -> httpx.Response:
    """GET with headers given as keywords (``if_none_match=`` sends If-None-Match)."""
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    response = httpx.get(f"{url}{path}", headers=fields, timeout=30)
    settle(url)
    return response


def origin_hits(origin: Origin, path: str) -> int:
    return len(origin.requests_for(path))


# --- storing (section 3) -------------------------------------------------------------------


def test_fresh_response_is_stored_and_served(cache_proxy: CacheProxy, origin: Origin) -> None:
    path = "/files/100000-store.bin"
    with cache_proxy() as url:
        first = get(url, path)
        second = get(url, path)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert "hit" in second.headers["cache-status"]
    assert sha256(second.content) == expected_sha256(path.rsplit("/", 1)[1])
    assert origin_hits(origin, path) == 2  # two slices, once each


@pytest.mark.parametrize(
    "query",
    [
        "cc=no-store",
        "cc=private,%20max-age%3D60",
        "vary=*",
        "setcookie=session%3D1&cc=max-age%3D60",
    ],
)
def test_unstorable_responses_are_not_stored(
    cache_proxy: CacheProxy, origin: Origin, query: str
) -> None:
    name = f"1000-nostore-{abs(hash(query))}.bin"
    path = f"/files/{name}?{query}"
    with cache_proxy() as url:
        first = get(url, path)
        second = get(url, path)
    assert first.status_code == second.status_code == 200
    assert second.content == expected_bytes(name)
    assert second.headers["x-cache"] == "BYPASS"
    assert origin_hits(origin, f"/files/{name}") == 2
    # Not stored, so the origin's Set-Cookie goes to the client it was meant for, and
    # nothing else adds one.
    assert ("set-cookie" in second.headers) == ("setcookie" in query), second.headers


def test_set_cookie_stored_only_when_public_and_never_replayed(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-cookie-public.bin"
    path = f"/files/{name}?setcookie=a%3D1&cc=public,%20max-age%3D60"
    with cache_proxy() as url:
        get(url, path)
        second = get(url, path)
    assert second.headers["x-cache"] == "HIT"
    assert "set-cookie" not in second.headers
    assert origin_hits(origin, f"/files/{name}") == 1


def test_authorization_needs_explicit_permission(cache_proxy: CacheProxy, origin: Origin) -> None:
    private = "/files/1000-auth-private.bin?cc=max-age%3D60"
    public = "/files/1000-auth-public.bin?cc=public,%20max-age%3D60"
    with cache_proxy() as url:
        for path in (private, public):
            get(url, path, authorization="Bearer x")
            get(url, path, authorization="Bearer x")
    assert origin_hits(origin, "/files/1000-auth-private.bin") == 2
    assert origin_hits(origin, "/files/1000-auth-public.bin") == 1


def test_vary_keys_variants_on_the_named_request_headers(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-vary.bin"
    path = f"/files/{name}?vary=Accept-Language"
    with cache_proxy() as url:
        en1 = get(url, path, accept_language="en")
        de1 = get(url, path, accept_language="de")
        en2 = get(url, path, accept_language="en")
        de2 = get(url, path, accept_language="de")
    assert [r.headers["x-cache"] for r in (en1, de1, en2, de2)] == ["MISS", "MISS", "HIT", "HIT"]
    assert origin_hits(origin, f"/files/{name}") == 2


def test_variants_asked_together_while_the_object_is_unknown_are_each_stored(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    # The first request's probe is shared with the others; its answer reveals the Vary,
    # and a request whose variant it is not looks again and probes its own (helper-69:
    # they were passed through, unstored, and missed again on the next round).
    name = "1000-vary-together.bin"
    path = f"/files/{name}?vary=Accept-Language&latency_ms=300"
    languages = ["en", "de", "fr", "it"]
    with cache_proxy() as url, httpx.Client(timeout=30) as client:

        def fetch(language: str) -> httpx.Response:
            return client.get(f"{url}{path}", headers={"accept-language": language})

        with concurrent.futures.ThreadPoolExecutor(len(languages)) as pool:
            first = list(pool.map(fetch, languages))
        settle(url)
        second = [get(url, path, accept_language=language) for language in languages]
    assert all(r.status_code == 200 and r.content == expected_bytes(name) for r in first)
    assert [r.headers["x-cache"] for r in second] == ["HIT"] * len(languages)
    assert origin_hits(origin, f"/files/{name}") == len(languages)


# --- freshness (section 4.2) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "fresh"),
    [
        ("cc=max-age%3D60", True),
        ("cc=max-age%3D0,%20s-maxage%3D60", True),  # s-maxage wins in a shared cache
        ("cc=s-maxage%3D0,%20max-age%3D60", False),
        ("cc=&expires=60", True),  # Expires against Date
        ("cc=&expires=-10", False),
        ("cc=&expires=0", False),  # an invalid Expires means already expired
        ("cc=", True),  # heuristic: Last-Modified in 2020, 10 % rule
        ("cc=&lm=0", False),  # no Last-Modified, no freshness: RFC 9111, not reused
    ],
)
def test_freshness_sources(
    cache_proxy: CacheProxy, origin: Origin, query: str, fresh: bool
) -> None:
    name = f"1000-fresh-{abs(hash(query))}.bin"
    with cache_proxy() as url:
        get(url, f"/files/{name}?{query}")
        second = get(url, f"/files/{name}?{query}")
    assert second.status_code == 200
    assert second.content == expected_bytes(name)
    if fresh:
        assert second.headers["x-cache"] == "HIT"
        assert origin_hits(origin, f"/files/{name}") == 1
    else:
        assert second.headers["x-cache"] in ("REVALIDATED", "MISS")
        assert origin_hits(origin, f"/files/{name}") == 2


def test_cache_ttl_fallback_applies_only_when_heuristics_are_allowed(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-ttl0.bin"
    with cache_proxy(cache_ttl=0) as url:
        get(url, f"/files/{name}?cc=&lm=0")
        second = get(url, f"/files/{name}?cc=&lm=0")
    assert second.headers["x-cache"] != "HIT"
    assert origin_hits(origin, f"/files/{name}") == 2


def test_default_settings_do_not_reuse_a_response_the_origin_said_nothing_about(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    """RFC 9111 4.2: no explicit freshness, no Last-Modified -> no reuse without asking."""
    name = "1000-default-ttl.bin"
    with cache_proxy() as url:
        get(url, f"/files/{name}?cc=&lm=0")
        second = get(url, f"/files/{name}?cc=&lm=0")
    assert second.headers["x-cache"] != "HIT"
    assert origin_hits(origin, f"/files/{name}") == 2


def test_operator_cache_ttl_applies_and_says_so_in_cache_status(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-operator-ttl.bin"
    with cache_proxy(cache_ttl=600) as url:
        get(url, f"/files/{name}?cc=&lm=0")
        second = get(url, f"/files/{name}?cc=&lm=0")
        heuristic = get(url, f"/files/{name}?cc=")
        heuristic = get(url, f"/files/{name}?cc=")
    assert second.headers["x-cache"] == "HIT"
    assert "detail=default-ttl" in second.headers["cache-status"]
    assert origin_hits(origin, f"/files/{name}") == 2
    # Fresh by Last-Modified (RFC heuristic), not by the operator: no detail.
    assert heuristic.headers["x-cache"] == "HIT"
    assert "default-ttl" not in heuristic.headers["cache-status"]


def test_age_and_cache_status_are_sent(cache_proxy: CacheProxy) -> None:
    with cache_proxy() as url:
        get(url, "/files/1000-age.bin")
        second = get(url, "/files/1000-age.bin")
    assert int(second.headers["age"]) >= 0
    assert second.headers["cache-status"].startswith("slicecache; hit; ttl=")


# --- validation (section 4.3) --------------------------------------------------------------


def test_stale_entry_is_revalidated_with_304_and_keeps_its_slices(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "300000-reval.bin"
    path = f"/files/{name}?cc=max-age%3D0"
    with cache_proxy() as url:
        get(url, path)
        second = get(url, path)
    assert second.headers["x-cache"] == "REVALIDATED"
    assert second.headers["x-cache-slices"] == "hit=5, miss=0"
    assert sha256(second.content) == expected_sha256(name)
    conditional = [e for e in origin.requests_for(f"/files/{name}") if e["status"] == 304]
    assert len(conditional) == 1


def test_changed_object_replaces_the_stored_one(cache_proxy: CacheProxy, origin: Origin) -> None:
    name = "300000-replace.bin"
    path = f"/files/{name}?cc=max-age%3D0"
    with cache_proxy() as url:
        get(url, path)
        origin.app.bump(name)
        second = get(url, path)
        third = get(url, path)
    assert sha256(second.content) == expected_sha256(name, version=2)
    assert second.headers["etag"] == etag_for(name, 2)
    assert third.headers["x-cache"] == "REVALIDATED"


def test_no_cache_response_is_revalidated_every_time(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-nocache.bin"
    with cache_proxy() as url:
        for _ in range(3):
            last = get(url, f"/files/{name}?cc=no-cache")
    assert last.headers["x-cache"] == "REVALIDATED"
    assert origin_hits(origin, f"/files/{name}") == 3


def test_client_conditional_is_answered_from_cache(cache_proxy: CacheProxy, origin: Origin) -> None:
    name = "1000-inm.bin"
    with cache_proxy() as url:
        get(url, f"/files/{name}")
        not_modified = get(url, f"/files/{name}", if_none_match=etag_for(name))
        modified = get(url, f"/files/{name}", if_none_match='"other"')
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag_for(name)
    assert modified.status_code == 200
    assert origin_hits(origin, f"/files/{name}") == 1


# --- serving stale (RFC 5861, section 4.2.4) -----------------------------------------------


def test_stale_if_error_serves_stale_when_the_origin_fails(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-sie.bin"
    with cache_proxy() as url:
        get(url, f"/files/{name}?cc=max-age%3D0,%20stale-if-error%3D60")
        origin.app.set_fault(name, "status500")
        try:
            stale = get(url, f"/files/{name}?cc=max-age%3D0,%20stale-if-error%3D60")
        finally:
            origin.app.set_fault(name, "")
    assert stale.status_code == 200
    assert stale.headers["x-cache"] == "STALE"
    assert stale.content == expected_bytes(name)


def test_must_revalidate_never_serves_stale_on_error(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-mustreval.bin"
    query = "cc=max-age%3D0,%20must-revalidate,%20stale-if-error%3D60"
    with cache_proxy(stale_if_error_seconds=600) as url:
        get(url, f"/files/{name}?{query}")
        origin.app.set_fault(name, "status500")
        try:
            response = get(url, f"/files/{name}?{query}")
        finally:
            origin.app.set_fault(name, "")
    assert response.status_code >= 500


@pytest.mark.parametrize("window", [0, 600])
def test_operator_stale_on_error_window(
    cache_proxy: CacheProxy, origin: Origin, window: int
) -> None:
    name = f"1000-operator-sie-{window}.bin"
    with cache_proxy(stale_if_error_seconds=window) as url:
        get(url, f"/files/{name}?cc=max-age%3D0")
        origin.app.set_fault(name, "status500")
        try:
            response = get(url, f"/files/{name}?cc=max-age%3D0")
        finally:
            origin.app.set_fault(name, "")
    assert (response.status_code == 200) == (window > 0)


def test_stale_while_revalidate_serves_stale_and_refreshes_once(
    cache_proxy: CacheProxy, origin: Origin
) -> None:
    name = "1000-swr.bin"
    path = f"/files/{name}?cc=max-age%3D0,%20stale-while-revalidate%3D60"
    with cache_proxy() as url:
        get(url, path)
        stale = get(url, path)
        deadline = time.monotonic() + 5
        while origin_hits(origin, f"/files/{name}") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert stale.headers["x-cache"] == "STALE"
    assert stale.content == expected_bytes(name)
    assert origin_hits(origin, f"/files/{name}") == 2  # the one background refresh


# --- invalidation (section 4.4) ------------------------------------------------------------


def test_unsafe_request_invalidates_the_target(cache_proxy: CacheProxy, origin: Origin) -> None:
    path = "/echo/invalidate-me"
    with cache_proxy(cache_ttl=3600) as url:  # /echo says nothing about freshness
        get(url, path)
        assert get(url, path).headers["x-cache"] == "HIT"
        assert httpx.post(f"{url}{path}", content=b"change").status_code == 200
        settle(url)
        after = get(url, path)
    assert after.headers["x-cache"] == "MISS"


# --- request directives (section 5.2.1) ----------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"cache-control": "no-cache"}, {"REVALIDATED"}),
        # RFC 9111 5.2.1.1: an age of 0 s still satisfies max-age=0; older ones do not.
        ({"cache-control": "max-age=0"}, {"HIT", "REVALIDATED"}),
        ({"pragma": "no-cache"}, {"REVALIDATED"}),
        ({"pragma": "no-cache", "cache-control": "max-stale"}, {"HIT"}),
        ({"cache-control": "min-fresh=999999"}, {"REVALIDATED"}),
        ({"cache-control": "max-age=600"}, {"HIT"}),
    ],
)
def test_request_directives(
    cache_proxy: CacheProxy, headers: dict[str, str], expected: set[str]
) -> None:
    name = f"1000-reqdir-{abs(hash(tuple(sorted(headers.items()))))}.bin"
    with cache_proxy() as url:
        get(url, f"/files/{name}?cc=max-age%3D300")
        response = get(url, f"/files/{name}?cc=max-age%3D300", **headers)
    assert response.headers["x-cache"] in expected
    assert response.content == expected_bytes(name)


def test_max_stale_accepts_a_stale_entry(cache_proxy: CacheProxy, origin: Origin) -> None:
    name = "1000-maxstale.bin"
    with cache_proxy() as url:
        get(url, f"/files/{name}?cc=max-age%3D0")
        response = get(url, f"/files/{name}?cc=max-age%3D0", cache_control="max-stale=600")
    assert response.headers["x-cache"] == "STALE"
    assert origin_hits(origin, f"/files/{name}") == 1


def test_only_if_cached(cache_proxy: CacheProxy, origin: Origin) -> None:
    with cache_proxy() as url:
        miss = get(url, "/files/1000-oic.bin", cache_control="only-if-cached")
        get(url, "/files/1000-oic.bin")
        hit = get(url, "/files/1000-oic.bin", cache_control="only-if-cached")
    assert miss.status_code == 504
    assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
    assert origin_hits(origin, "/files/1000-oic.bin") == 1


def test_request_no_store_is_not_stored(cache_proxy: CacheProxy, origin: Origin) -> None:
    with cache_proxy() as url:
        get(url, "/files/1000-reqnostore.bin", cache_control="no-store")
        second = get(url, "/files/1000-reqnostore.bin")
    assert second.headers["x-cache"] == "MISS"
    assert origin_hits(origin, "/files/1000-reqnostore.bin") == 2


def test_cache_disabled_bypasses_everything(proxy: ProxyFactory, origin: Origin) -> None:
    with proxy(enable_cache=False) as url:
        for _ in range(2):
            response = httpx.get(f"{url}/files/1000-disabled.bin")
    # RFC 9211 2.2: fwd=bypass, "the cache was configured to not handle this request".
    assert response.headers["x-cache"] == "BYPASS"
    assert response.headers["cache-status"] == "slicecache; fwd=bypass; fwd-status=200"
    assert origin_hits(origin, "/files/1000-disabled.bin") == 2


def test_age_is_taken_at_the_instant_the_ttl_was(
    proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Age and the Cache-Status TTL of one answer come from one clock reading: read
    twice, a second boundary between them gave Age = max-age on an answer called fresh.
    Here the answer is built 5 s after the decision; Age + TTL is still the lifetime."""
    import types

    import app.engine.sliced as sliced

    later = types.SimpleNamespace(time=lambda: time.time() + 5, monotonic=time.monotonic)
    with proxy() as url:
        path = "/files/4k-one-clock?cc=public,%20max-age=100"
        httpx.get(url + path)
        monkeypatch.setattr(sliced, "time", later)
        # A field the protocol's fast path leaves to the normal one.
        hit = httpx.get(url + path, headers={"x-normal-path": "1"})
    ttl = int(hit.headers["cache-status"].rsplit("ttl=", 1)[1])
    assert hit.headers["x-cache"] == "HIT"
    assert int(hit.headers["age"]) + ttl == 100
