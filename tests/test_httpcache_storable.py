"""Storing responses in a shared cache (RFC 9111 section 3)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.httpcache.cache_control import parse_cache_control
from app.httpcache.storable import (
    HEURISTICALLY_CACHEABLE,
    Storable,
    headers_for_storage,
    storability,
)

H = list[tuple[str, str]]
FRESH: H = [("cache-control", "max-age=60")]


def store(
    response: H, request: H | None = None, *, method: str = "GET", status: int = 200, **kw: Any
) -> Storable:
    return storability(method, status, request or [], response, **kw)


def test_3_plain_cacheable_response_is_stored() -> None:
    decision = store(FRESH)
    assert decision.store and decision.reason == "ok" and bool(decision)


def test_3_only_get_is_stored_head_and_post_are_not() -> None:
    assert store(FRESH, method="HEAD").reason == "method"
    assert store(FRESH, method="POST").reason == "method"


def test_3_non_final_and_304_are_not_stored() -> None:
    assert store(FRESH, status=100).reason == "status"
    assert store(FRESH, status=304).reason == "status"


def test_3_206_only_when_the_slicer_asks() -> None:
    assert store(FRESH, status=206).reason == "partial"
    assert store(FRESH, status=206, allow_partial=True).store


def test_5_2_2_5_response_no_store() -> None:
    assert store([("cache-control", "no-store, max-age=60")]).reason == "no-store"


def test_5_2_1_5_request_no_store() -> None:
    assert store(FRESH, [("cache-control", "no-store")]).reason == "no-store"


def test_5_2_2_3_must_understand_overrides_no_store_for_understood_status() -> None:
    assert store([("cache-control", "must-understand, no-store, max-age=60")]).store
    refused = store([("cache-control", "must-understand, no-store, max-age=60")], status=418)
    assert refused.reason == "must-understand"


def test_5_2_2_7_private_is_not_stored_in_a_shared_cache() -> None:
    assert store([("cache-control", "private, max-age=60")]).reason == "private"
    assert store([("cache-control", "private")], shared=False).store


def test_5_2_2_7_qualified_private_stores_without_those_fields() -> None:
    decision = store([("cache-control", 'private="X-User", max-age=60'), ("x-user", "alice")])
    assert decision.store and "x-user" in decision.headers_to_strip


def test_5_2_2_4_qualified_no_cache_fields_are_stripped() -> None:
    decision = store([("cache-control", 'no-cache="X-Token", max-age=60')])
    assert decision.store and "x-token" in decision.headers_to_strip


def test_3_5_authorization_needs_public_s_maxage_or_must_revalidate() -> None:
    auth: H = [("authorization", "Bearer x")]
    assert store(FRESH, auth).reason == "authorization"
    for allowing in ("public", "s-maxage=60", "must-revalidate, max-age=60"):
        assert store([("cache-control", allowing)], auth).store, allowing


def test_4_1_vary_star_is_not_stored() -> None:
    assert store(FRESH + [("vary", "Accept-Encoding, *")]).reason == "vary-star"
    assert store(FRESH + [("vary", "Accept-Encoding")]).store


def test_4_1_vary_with_a_member_that_is_no_field_name_is_like_star() -> None:
    # Vary = #( "*" / field-name ): "Foo Bar" names no field, so a variant stored under it
    # would match every request whatever its Foo or Bar; never selectable, never stored.
    for bad in ("Foo Bar", "Foo;", '"Foo"', "Foo, a/b"):
        assert store(FRESH + [("vary", bad)]).reason == "vary-star", bad
    assert store(FRESH + [("vary", "Foo, , Bar")]).store  # empty members are allowed


def test_set_cookie_needs_public_and_the_cookie_is_never_stored() -> None:
    cookie: H = [("set-cookie", "sid=1")]
    assert store(FRESH + cookie).reason == "set-cookie"
    public = store([("cache-control", "public, max-age=60")] + cookie)
    assert public.store and "set-cookie" in public.headers_to_strip
    named = store([("cache-control", 'private="Set-Cookie", max-age=60')] + cookie)
    assert named.store


def test_3_needs_explicit_freshness_or_heuristically_cacheable_status() -> None:
    assert store([], status=200).store  # heuristically cacheable
    assert store([], status=302).reason == "no-freshness"
    assert store([], status=500).reason == "no-freshness"
    assert store([("expires", "Thu, 01 Dec 2094 16:00:00 GMT")], status=302).store
    assert store([("expires", "0")], status=302).store  # stored, but already stale
    assert store([("cache-control", "max-age=5")], status=307).store
    assert store([("cache-control", "s-maxage=5")], status=500).store
    assert store([("cache-control", "public")], status=500).store


def test_3_1_storage_drops_hop_by_hop_connection_listed_and_stripped_fields() -> None:
    response: H = [
        ("content-type", "video/mp4"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("set-cookie", "sid=1"),
        ("cache-control", "public, max-age=5"),
    ]
    decision = store(response)
    assert headers_for_storage(response, decision) == [
        ("content-type", "video/mp4"),
        ("cache-control", "public, max-age=5"),
    ]


@given(st.integers(100, 599))
def test_heuristically_cacheable_statuses_need_nothing_else(status: int) -> None:
    decision = store([], status=status, allow_partial=True)
    assert decision.store == (status in HEURISTICALLY_CACHEABLE)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["cache-control", "vary", "set-cookie", "expires", "authorization"]),
            st.text(max_size=30),
        ),
        max_size=5,
    ),
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.integers(0, 999),
)
def test_storability_never_raises_and_no_store_always_wins(
    headers: H, method: str, status: int
) -> None:
    decision = store(headers, headers, method=method, status=status)
    assert decision.reason
    # The same headers are the request's: a request no-store forbids storing (5.2.1.5).
    if parse_cache_control([v for k, v in headers if k == "cache-control"]).no_store:
        assert not decision.store
    if decision.store:
        assert method == "GET"
        assert "set-cookie" in decision.headers_to_strip
