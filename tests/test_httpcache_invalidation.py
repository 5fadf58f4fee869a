"""Invalidation by unsafe methods (RFC 9111 4.4)."""

from __future__ import annotations

import re
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from app.httpcache.invalidation import (
    invalidated_uris,
    normalize_percent_encoding,
    normalize_uri,
    same_origin,
)

URL = "https://Example.com/a/b?x=1"
STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
KEY = "https://example.com:443/a/b?x=1"


def test_4_4_unsafe_method_with_success_invalidates_target() -> None:
    assert invalidated_uris("POST", 201, URL, []) == [KEY]
    assert invalidated_uris("DELETE", 204, URL, []) == [KEY]
    assert invalidated_uris("PURGE", 200, URL, []) == [KEY]  # unknown method: unsafe


def test_4_4_redirect_status_also_invalidates() -> None:
    assert invalidated_uris("PUT", 303, URL, []) == [KEY]


def test_4_4_safe_methods_and_error_statuses_do_not() -> None:
    for method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        assert invalidated_uris(method, 200, URL, []) == []
    for status in (100, 400, 404, 500, 503):
        assert invalidated_uris("POST", status, URL, []) == []


def test_method_names_are_case_sensitive() -> None:
    assert invalidated_uris("get", 200, URL, []) == [KEY]


def test_4_4_location_and_content_location_same_origin_relative_resolved() -> None:
    headers = [("location", "/new"), ("content-location", "c?y=2")]
    assert invalidated_uris("POST", 201, URL, headers) == [
        KEY,
        "https://example.com:443/new",
        "https://example.com:443/a/c?y=2",
    ]


def test_4_4_other_origins_are_never_invalidated() -> None:
    for other in (
        "https://evil.example/a",
        "http://example.com/a",  # other scheme
        "https://example.com:8443/a",  # other port
        "//evil.example/x",  # scheme-relative
    ):
        assert invalidated_uris("POST", 200, URL, [("location", other)]) == [KEY], other


def test_default_port_is_the_same_origin() -> None:
    headers = [("location", "https://EXAMPLE.com:443/z#frag")]
    assert invalidated_uris("POST", 200, URL, headers) == [KEY, "https://example.com:443/z"]


def test_duplicates_and_garbage_are_dropped() -> None:
    headers = [("location", URL), ("content-location", "http://[::1")]
    assert invalidated_uris("POST", 200, URL, headers) == [KEY]
    assert invalidated_uris("POST", 200, "not a url", []) == []


def test_normalize_uri() -> None:
    assert normalize_uri("http://h") == "http://h:80/"
    assert normalize_uri("http://[::1]:8080/p") == "http://[::1]:8080/p"
    assert normalize_uri("ftp://h/") is None


_HOSTS = st.sampled_from(["example.com", "EXAMPLE.com", "evil.example", "127.0.0.1"])
_SCHEMES = st.sampled_from(["http", "https", "HTTP"])
_PORTS = st.sampled_from(["", ":80", ":443", ":8080", ":99999", ":x"])
_PATHS = st.text(alphabet="abc/?.#%:@", max_size=8)
_ABSOLUTE = st.builds(lambda s, h, p, q: f"{s}://{h}{p}/{q}", _SCHEMES, _HOSTS, _PORTS, _PATHS)
_REFERENCE = st.one_of(_ABSOLUTE, _PATHS, st.builds(lambda h, q: f"//{h}/{q}", _HOSTS, _PATHS))


@given(
    st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "get"]),
    st.integers(100, 599),
    _ABSOLUTE,
    _REFERENCE,
    _REFERENCE,
)
def test_never_invalidates_another_origin(
    method: str, status: int, url: str, location: str, content_location: str
) -> None:
    headers = [("location", location), ("content-location", content_location)]
    uris = invalidated_uris(method, status, url, headers)
    assert len(uris) == len(set(uris))
    for uri in uris:
        assert same_origin(uri, url)
        assert "#" not in uri


def test_percent_encodings_are_normalized_as_rfc_3986_6_2_2_says() -> None:
    assert normalize_percent_encoding("/a%2Db%7e%41") == "/a-b~A"  # unreserved: decoded
    assert normalize_percent_encoding("/a%2fb%3f%c3%a9") == "/a%2Fb%3F%C3%A9"  # upper case
    assert normalize_percent_encoding("/100%25/%41") == "/100%25/A"  # "%25" is "%" itself
    # "." stays encoded: "/a/%2E%2E/b" must not key as the dot segment an origin resolves.
    assert normalize_percent_encoding("/a/%2e%2E/b") == "/a/%2E%2E/b"
    # A "%" that starts no escape: the target is left as sent, else decoding next to it
    # would make new escapes, the key of another resource (helper-66).
    for stray in ("/%%32F", "/a%2%44b", "/%2%35", "/?a=%%32%36b=1", "/%2", "/%zz%41", "/%"):
        assert normalize_percent_encoding(stray) == stray
    assert normalize_percent_encoding("/plain?q=1") == "/plain?q=1"
    assert normalize_uri("http://o/a%2db?x=%7E%2f") == "http://o:80/a-b?x=~%2F"


# Targets built from escapes, stray "%"s and the characters that would complete one.
TARGETS = st.lists(
    st.sampled_from(
        ["%", "%2", "%32", "%44", "%2D", "%2f", "%2e", "%41", "%25", "F", "D", "-", ".", "/"]
    ),
    max_size=6,
).map("".join)


@settings(max_examples=400)
@given(TARGETS)
def test_percent_normalization_keeps_the_resource_and_is_idempotent(target: str) -> None:
    once = normalize_percent_encoding(target)
    assert normalize_percent_encoding(once) == once
    assert unquote(once) == unquote(target)  # the same characters once decoded
    assert once.count("%") <= target.count("%")


@settings(max_examples=400)
@given(TARGETS, TARGETS)
def test_two_targets_share_a_key_only_if_they_name_one_resource(a: str, b: str) -> None:
    """Equal keys only for spellings of one resource: the same octets once every escape
    is decoded, and every "%" of both starting an escape (how an origin reads a stray
    "%" is its own business; helper-66 poisoned the cache through one)."""
    if normalize_percent_encoding(a) == normalize_percent_encoding(b) and a != b:
        assert unquote(a) == unquote(b)
        assert not STRAY_PERCENT.search(a) and not STRAY_PERCENT.search(b)
