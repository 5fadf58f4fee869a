"""Targeted cache control (RFC 9213) and its Structured Field Dictionary parser (RFC 8941)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.httpcache.cache_control import cache_control_of
from app.httpcache.freshness import FreshnessPolicy, StoredResponseInfo, decide, freshness_lifetime
from app.httpcache.storable import storability
from app.httpcache.targeted import (
    CDN_CACHE_CONTROL,
    Token,
    effective_headers,
    parse_dictionary,
    targeted_directives,
    targeted_fields,
)

T0 = 1_700_000_000
TARGETS = (CDN_CACHE_CONTROL,)


# --- the parser, example by example (the suite's cdn-cache-control.mjs values) -----------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=3600", "max-age=3600"),
        ("foobar, max-age=3600", "foobar, max-age=3600"),
        ("max-age=2147483648", "max-age=2147483648"),
        ("max-age=99999999999", "max-age=99999999999"),
        ("no-store", "no-store"),
        ("no-store=?0", ""),  # false: absent
        ("private", "private"),
        ('no-cache="set-cookie"', 'no-cache="set-cookie"'),
        ("max-age=60;foo=bar", "max-age=60"),  # parameters ignored (2.1)
        ("max-age=60,  s-maxage=10", "max-age=60, s-maxage=10"),
        ("max-age=1, max-age=60", "max-age=60"),  # the last duplicate wins (8941 4.2.2)
    ],
)
def test_valid_fields(value: str, expected: str) -> None:
    assert targeted_directives([value]) == expected


@pytest.mark.parametrize(
    "value",
    [
        "max-age =100",  # space before '='
        "max-age= 100",  # space after '='
        "MaX-aGe=3600",  # keys are lowercase
        "max-age=10000, &&&&&",  # unknown type
        'max-age="10000"',  # wrong type for a known directive
        "max-age=1.5",
        "no-store=5",
        "max-age=1234567890123456",  # more than 15 digits
        "max-age=60,",  # trailing comma
        "",
        "   ",
        'private="unterminated',
        "max-age=60 s-maxage=1",
    ],
)
def test_invalid_fields_are_ignored(value: str) -> None:
    assert targeted_directives([value]) is None
    headers = [("cache-control", "no-store"), (CDN_CACHE_CONTROL, value)]
    assert effective_headers(headers, TARGETS) is headers


def test_several_field_lines_are_one_dictionary() -> None:
    assert targeted_directives(["max-age=60", "public"]) == "max-age=60, public"


# --- precedence and the decisions (RFC 9213 2.2) -----------------------------------------


def test_targeted_field_replaces_cache_control_and_expires() -> None:
    headers = [
        ("cache-control", "no-store"),
        ("expires", "0"),
        (CDN_CACHE_CONTROL, "max-age=600"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
    ]
    effective = effective_headers(headers, TARGETS)
    assert cache_control_of(effective).max_age == 600
    assert not any(name == "expires" for name, _ in effective)
    assert storability("GET", 200, [], headers, targeted=TARGETS).store
    assert not storability("GET", 200, [], headers).store  # without targets: no-store
    assert freshness_lifetime(effective).seconds == 600


def test_short_targeted_max_age_wins_over_long_cache_control() -> None:
    headers = [("cache-control", "max-age=3600"), (CDN_CACHE_CONTROL, "max-age=1")]
    stored = StoredResponseInfo(200, headers, T0, T0)
    decision = decide(stored, [], T0 + 3, policy=FreshnessPolicy())
    assert not decision.serve_stored
    assert decide(stored, [], T0 + 3, policy=FreshnessPolicy(targeted_fields=())).serve_stored


def test_targeted_private_and_no_store_refuse_storage() -> None:
    for directive in ("private", "no-store"):
        headers = [("cache-control", "max-age=10000"), (CDN_CACHE_CONTROL, directive)]
        assert not storability("GET", 200, [], headers, targeted=TARGETS).store


def test_first_target_in_list_order_wins_and_invalid_falls_through() -> None:
    targets = targeted_fields("Slicecache-Cache-Control")
    assert targets == ("slicecache-cache-control", CDN_CACHE_CONTROL)
    headers = [
        (CDN_CACHE_CONTROL, "max-age=5"),
        ("slicecache-cache-control", "max-age=500"),
    ]
    assert cache_control_of(effective_headers(headers, targets)).max_age == 500
    broken = [(CDN_CACHE_CONTROL, "max-age=5"), ("slicecache-cache-control", "max-age=x y")]
    assert cache_control_of(effective_headers(broken, targets)).max_age == 5
    assert targeted_fields("") == (CDN_CACHE_CONTROL,)
    assert targeted_fields("CDN-Cache-Control") == (CDN_CACHE_CONTROL,)


# --- properties --------------------------------------------------------------------------

_KEYS = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,8}", fullmatch=True)
_TOKENS = st.from_regex(r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+\-.^_`|~]{0,8}", fullmatch=True)
_STRINGS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_ITEMS = st.one_of(
    st.integers(-(10**15) + 1, 10**15 - 1),
    st.booleans(),
    _TOKENS.map(Token),
    _STRINGS,
)


def _serialize(value: object) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


@given(st.dictionaries(_KEYS, _ITEMS, min_size=1, max_size=6), st.sampled_from([",", ", ", ",\t"]))
def test_serialized_dictionaries_parse_back(members: dict[str, object], separator: str) -> None:
    """RFC 8941 round trip: what a conforming serializer writes, the parser reads back."""
    text = separator.join(
        key if value is True else f"{key}={_serialize(value)}" for key, value in members.items()
    )
    parsed = parse_dictionary([text])
    assert parsed is not None, text
    assert {key: item for key, (item, _params) in parsed.items()} == members
    for key, (item, _params) in parsed.items():
        assert isinstance(item, Token) == isinstance(members[key], Token)


@given(st.text(max_size=40))
def test_parser_never_raises_and_invalid_means_ignored(text: str) -> None:
    directives = targeted_directives([text])
    headers = [("cache-control", "no-store"), (CDN_CACHE_CONTROL, text)]
    effective = effective_headers(headers, TARGETS)
    if directives is None:
        assert effective is headers
    else:
        assert ("cache-control", "no-store") not in effective
        assert cache_control_of(effective) == cache_control_of(
            [("cache-control", directives)] if directives else []
        )


@given(st.integers(0, 10**9), st.sampled_from(["max-age=0", "no-store", "max-age=99", ""]))
def test_a_valid_targeted_max_age_decides_the_lifetime(seconds: int, general: str) -> None:
    headers = [
        ("cache-control", general),
        ("expires", "0"),
        (CDN_CACHE_CONTROL, f"max-age={seconds}"),
    ]
    effective = effective_headers(headers, TARGETS)
    assert freshness_lifetime(effective, response_time=T0).seconds == min(seconds, 2**31)
    assert storability("GET", 200, [], headers, targeted=TARGETS).store


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_forwarded_headers_are_never_changed(value: str) -> None:
    """effective_headers builds a new list; the caller's (stored, forwarded) one is intact."""
    headers = [("cache-control", "max-age=1"), (CDN_CACHE_CONTROL, value), ("expires", "0")]
    before = list(headers)
    effective_headers(headers, TARGETS)
    assert headers == before
