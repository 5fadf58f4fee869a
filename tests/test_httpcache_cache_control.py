"""Cache-Control parsing (RFC 9111 5.2) and Pragma (5.4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.httpcache import cache_control
from app.httpcache.cache_control import (
    CacheControl,
    parse_cache_control,
    pragma_no_cache,
    request_cache_control,
)


def test_5_2_response_directives() -> None:
    cc = parse_cache_control(
        [
            "public, max-age=60, s-maxage=120, must-revalidate, proxy-revalidate, "
            "must-understand, no-transform, immutable, stale-while-revalidate=30, "
            "stale-if-error=600, no-store"
        ]
    )
    assert cc.public and cc.must_revalidate and cc.proxy_revalidate and cc.must_understand
    assert cc.no_transform and cc.immutable and cc.no_store
    assert (cc.max_age, cc.s_maxage) == (60, 120)
    assert (cc.stale_while_revalidate, cc.stale_if_error) == (30, 600)
    assert cc.invalid == ()


def test_5_2_1_request_directives() -> None:
    cc = parse_cache_control(["max-age=0, min-fresh=5, max-stale=10, only-if-cached, no-cache"])
    assert cc.max_age == 0 and cc.min_fresh == 5 and cc.max_stale == 10
    assert cc.only_if_cached and cc.no_cache is True


def test_5_2_1_2_max_stale_without_value_is_any() -> None:
    assert parse_cache_control(["max-stale"]).max_stale == "any"


def test_5_2_names_case_insensitive_whitespace_and_multiple_lines() -> None:
    cc = parse_cache_control(["  MAX-AGE = 5 ,", "Public", "\tNo-Transform"])
    assert cc.max_age == 5 and cc.public and cc.no_transform


def test_5_2_quoted_arguments_are_accepted() -> None:
    assert parse_cache_control(['max-age="30"']).max_age == 30


def test_5_2_2_4_qualified_no_cache_lists_field_names() -> None:
    cc = parse_cache_control(['no-cache="Set-Cookie, X-Foo", max-age=5'])
    assert cc.no_cache == ("set-cookie", "x-foo")
    assert not cc.no_cache_all and cc.no_cache_fields == ("set-cookie", "x-foo")
    assert cc.max_age == 5  # the comma inside quotes did not split the directive


def test_5_2_2_7_qualified_private_and_unqualified_wins() -> None:
    assert parse_cache_control(['private="X-User"']).private == ("x-user",)
    both = parse_cache_control(['private="X-User"', "private"])
    assert both.private is True and both.private_all


def test_empty_qualified_form_is_read_as_unqualified() -> None:
    assert parse_cache_control(['no-cache=""']).no_cache is True


def test_4_2_1_invalid_max_age_means_stale() -> None:
    for bad in ("max-age=-1", "max-age=abc", "max-age=1.5", "max-age", "max-age="):
        cc = parse_cache_control([bad])
        assert cc.max_age == 0, bad
        assert "max-age" in cc.invalid


def test_4_2_1_conflicting_duplicates_mean_stale_identical_ones_do_not() -> None:
    assert parse_cache_control(["max-age=60, max-age=3600"]).max_age == 0
    assert parse_cache_control(["s-maxage=60", "s-maxage=3600"]).s_maxage == 0
    assert parse_cache_control(["max-age=60, max-age=60"]).max_age == 60


def test_4_2_1_duplicates_keep_the_most_restrictive() -> None:
    cc = parse_cache_control(
        ["stale-while-revalidate=60, stale-while-revalidate=5, min-fresh=1, min-fresh=9"]
    )
    assert cc.stale_while_revalidate == 5 and cc.min_fresh == 9
    assert parse_cache_control(["max-stale, max-stale=7"]).max_stale == 7
    assert parse_cache_control(["max-stale=7, max-stale"]).max_stale == 7
    assert parse_cache_control(["max-stale=bogus"]).max_stale == 0


def test_1_2_2_huge_delta_seconds_clamped_to_2_pow_31() -> None:
    assert parse_cache_control(["max-age=99999999999999999999999"]).max_age == 2**31


def test_5_2_3_unknown_extensions_are_kept_and_ignored() -> None:
    cc = parse_cache_control(['community="UCI", foo'])
    assert cc.extensions == (("community", "UCI"), ("foo", None))


def test_5_4_pragma_no_cache_only_without_cache_control() -> None:
    assert pragma_no_cache([("pragma", "no-cache")])
    assert not pragma_no_cache([("pragma", "no-cache"), ("cache-control", "max-age=5")])
    assert not pragma_no_cache([("pragma", "foo")])
    assert request_cache_control([("pragma", "no-cache")]).no_cache is True
    assert request_cache_control([("cache-control", "max-stale")]).max_stale == "any"


def test_empty_is_all_defaults() -> None:
    assert parse_cache_control([]) == CacheControl()
    assert parse_cache_control([" , ,, "]) == CacheControl()


@given(st.lists(st.text(), max_size=4))
def test_parse_never_raises_on_arbitrary_text(values: list[str]) -> None:
    cc = parse_cache_control(values)
    for seconds in (cc.max_age, cc.s_maxage, cc.min_fresh, cc.stale_if_error):
        assert seconds is None or 0 <= seconds <= 2**31


_DIRECTIVE = st.sampled_from(
    ["max-age", "s-maxage", "no-cache", "private", "public", "max-stale", "min-fresh", "x"]
)
_ARG = st.one_of(
    st.none(), st.integers(-5, 10**12).map(str), st.text(alphabet='a-z0-9 ",=', max_size=6)
)


@given(st.lists(st.tuples(_DIRECTIVE, _ARG), max_size=6))
def test_parse_never_raises_on_directive_soup(pairs: list[tuple[str, str | None]]) -> None:
    text = ", ".join(name if arg is None else f"{name}={arg}" for name, arg in pairs)
    cc = parse_cache_control([text])
    assert cc.no_cache is True or cc.no_cache is False or len(cc.no_cache) > 0


def test_malformed_qualified_form_is_read_as_unqualified() -> None:
    assert parse_cache_control(['no-cache="a, max-age=5']).no_cache is True
    assert parse_cache_control(['private="x y"']).private is True


def test_parsed_values_are_remembered_and_the_memory_is_bounded() -> None:
    first = parse_cache_control(["public, max-age=60"])
    assert parse_cache_control(("public, max-age=60",)) is first  # the same frozen answer
    assert parse_cache_control(["public", "max-age=60"]) == first  # two lines, same meaning
    assert parse_cache_control(["max-age=60, private"]).private_all
    for n in range(cache_control.PARSED_KEPT + 50):  # a client sending ever new values
        parse_cache_control([f"max-age={n}"])
    info = cache_control._parse_lines.cache_info()
    assert info.currsize <= cache_control.PARSED_KEPT
    assert parse_cache_control(["max-age=7"]).max_age == 7
