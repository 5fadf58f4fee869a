"""Cache-Status (RFC 9211) and X-Cache values."""

from __future__ import annotations

from http_sfv.list import List as SfList
from hypothesis import given
from hypothesis import strategies as st

from app.httpcache.cache_status import (
    CacheStatus,
    XCache,
    append_cache_status,
    kept_upstream_members,
    sf_item,
)


def test_9211_2_1_hit_with_ttl() -> None:
    status = CacheStatus.fresh_hit(123)
    assert status.header_value() == "slicecache; hit; ttl=123"
    assert status.x_cache() is XCache.HIT


def test_9211_2_2_miss_stored() -> None:
    status = CacheStatus.miss(200, stored=True)
    assert status.header_value() == "slicecache; fwd=uri-miss; fwd-status=200; stored"
    assert status.x_cache() is XCache.MISS


def test_9211_revalidated_with_304() -> None:
    status = CacheStatus.revalidated(600)
    assert status.header_value() == "slicecache; fwd=stale; fwd-status=304; ttl=600"
    assert status.x_cache() is XCache.REVALIDATED
    forced = CacheStatus.revalidated(600, forced_by_client=True)
    assert forced.header_value().startswith("slicecache; fwd=request;")
    assert forced.x_cache() is XCache.REVALIDATED


def test_changed_on_revalidation_is_a_miss() -> None:
    assert CacheStatus.miss(200, stored=True, fwd="stale").x_cache() is XCache.MISS


def test_stale_served() -> None:
    swr = CacheStatus.stale_hit(-5, "stale-while-revalidate")
    assert swr.header_value() == "slicecache; hit; ttl=-5; detail=stale-while-revalidate"
    assert swr.x_cache() is XCache.STALE
    on_error = CacheStatus.stale_on_error(-30, 503)
    assert on_error.header_value() == (
        "slicecache; fwd=stale; fwd-status=503; ttl=-30; detail=stale-if-error"
    )
    assert on_error.x_cache() is XCache.STALE


def test_partial_and_bypass() -> None:
    assert CacheStatus.partial(206, stored=True).x_cache() is XCache.PARTIAL
    bypass = CacheStatus.bypass("no-store")
    assert bypass.header_value() == "slicecache; fwd=bypass; detail=no-store"
    assert bypass.x_cache() is XCache.BYPASS
    assert CacheStatus.bypass(method=True).header_value() == "slicecache; fwd=method"


def test_hit_never_renders_fwd_and_key_collapsed_are_rendered() -> None:
    status = CacheStatus(hit=True, fwd="stale", fwd_status=200, collapsed=True, key='a "b"')
    assert status.header_value() == 'slicecache; hit; collapsed; key="a \\"b\\""'


def test_9211_2_our_member_goes_last() -> None:
    upstream = kept_upstream_members(["OriginCDN; hit", " "])
    assert append_cache_status(upstream, "slicecache; hit") == "OriginCDN; hit, slicecache; hit"


def test_an_upstream_line_that_is_no_valid_list_is_left_out() -> None:
    """Joined as it came, ``detail="open`` or ``(a b`` would make ours part of its string
    or inner list, and any invalid line makes a parser drop the whole field."""
    lines = [
        'Broken; detail="open',
        'Fine; detail="a \\" b"',
        "(a b",
        "CDN; detail=(",
        "CDN; hit, ",
        "CDN, ,X",
        'Caf; detail="caf\xe9"',
        'Esc; detail="x\\\\"',
        'Tail; detail="x\\"',
        "A; hit, B; fwd=uri-miss; fwd-status=200",
    ]
    assert kept_upstream_members(lines) == (
        'Fine; detail="a \\" b"',
        'Esc; detail="x\\\\"',
        "A; hit, B; fwd=uri-miss; fwd-status=200",
    )


def test_detail_that_is_not_a_token_is_an_sf_string() -> None:
    assert sf_item("plain-token") == "plain-token"
    assert sf_item('two words "q"') == '"two words \\"q\\""'
    assert sf_item("1abc") == '"1abc"'  # tokens start with a letter or *
    assert sf_item("é\n") == '""'


@given(st.text(max_size=20))
def test_sf_item_is_printable_ascii_without_separators_when_unquoted(value: str) -> None:
    item = sf_item(value)
    assert all(" " <= char <= "~" for char in item)
    if not item.startswith('"'):
        assert "," not in item and ";" not in item and " " not in item


@given(st.lists(st.text(alphabet='ab;=" \\,()\xe9', max_size=12), max_size=4))
def test_our_member_stays_last_and_whole_whatever_came_before(lines: list[str]) -> None:
    """The joined field parses (RFC 8941), and its last member is ours, parameters and all."""
    ours = CacheStatus.fresh_hit(5).header_value()
    joined = SfList()
    joined.parse(append_cache_status(kept_upstream_members(lines), ours).encode("latin-1"))
    assert str(joined[-1]) == "slicecache;hit;ttl=5"
    assert len(joined) == 1 + sum(len(_parsed(line)) for line in kept_upstream_members(lines))


def _parsed(line: str) -> SfList:
    members = SfList()
    members.parse(line.encode("latin-1"))
    return members
