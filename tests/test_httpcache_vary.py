"""Vary and variant selection (RFC 9111 4.1)."""

from __future__ import annotations

from app.httpcache.vary import selecting_headers, variant_matches, vary_field_names


def test_4_1_field_names_are_lowercase_sorted_unique() -> None:
    headers = [("vary", "Accept-Encoding, accept"), ("vary", "ACCEPT-ENCODING")]
    assert vary_field_names(headers) == ("accept", "accept-encoding")
    assert vary_field_names([]) == ()
    assert vary_field_names([("vary", "accept, *")]) == "*"
    # A member that is not a field-name (RFC 9110 12.5.5) selects nothing knowable.
    assert vary_field_names([("vary", "Foo Bar")]) == "*"
    assert vary_field_names([("vary", "foo;")]) == "*"
    assert vary_field_names([("vary", '"foo"')]) == "*"
    assert vary_field_names([("vary", "foo, , bar")]) == ("bar", "foo")


def test_4_1_matching_normalises_whitespace_and_combines_lines() -> None:
    vary = ("accept-encoding",)
    assert variant_matches(
        vary,
        [("accept-encoding", "gzip,br")],
        [("accept-encoding", "gzip"), ("accept-encoding", " br")],
    )
    assert not variant_matches(vary, [("accept-encoding", "gzip")], [("accept-encoding", "br")])


def test_4_1_absent_in_both_matches_absent_in_one_does_not() -> None:
    vary = ("accept-language",)
    assert variant_matches(vary, [], [])
    assert not variant_matches(vary, [], [("accept-language", "fr")])
    # "If a header field is absent from a request, it can only match another request if it
    # is also absent there": a present but empty field is not absent.
    assert not variant_matches(vary, [], [("accept-language", "")])
    assert not variant_matches(vary, [("accept-language", " ")], [])
    assert variant_matches(vary, [("accept-language", "")], [("accept-language", " , ")])


def test_4_1_vary_star_never_matches() -> None:
    assert not variant_matches("*", [], [])
    assert selecting_headers("*", []) is None
    assert selecting_headers(("a",), [("a", "1")]) == [("a", "1")]
