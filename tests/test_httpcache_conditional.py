"""Conditional requests (RFC 9110 8.8.3, 13.1, 13.2; RFC 9111 3.2, 4.3.1, 4.3.4)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.httpcache.conditional import (
    EntityTag,
    evaluate_client_conditionals,
    merge_304_headers,
    not_modified_matches,
    parse_entity_tag,
    parse_entity_tag_list,
    strong_match,
    validators_for_revalidation,
    weak_match,
)
from app.httpcache.dates import format_http_date

H = list[tuple[str, str]]
T0 = 1_700_000_000
LM = format_http_date(T0)
BEFORE = format_http_date(T0 - 60)
AFTER = format_http_date(T0 + 60)


def evaluate(
    request: H, *, method: str = "GET", etag: str | None = '"v1"', **kw: Any
) -> int | None:
    return evaluate_client_conditionals(method, request, etag, LM, **kw)


# --- entity tags -------------------------------------------------------------------------------


def test_8_8_3_parse_entity_tags() -> None:
    assert parse_entity_tag('"abc"') == EntityTag("abc")
    assert parse_entity_tag('W/"abc"') == EntityTag("abc", weak=True)
    assert parse_entity_tag("abc") == EntityTag("abc")  # lenient: unquoted origin bug
    assert parse_entity_tag("") is None
    assert parse_entity_tag_list(' "a" , W/"b",junk junk, "c"') == [
        EntityTag("a"),
        EntityTag("b", weak=True),
        EntityTag("c"),
    ]
    assert parse_entity_tag_list(" * ") == "*"
    assert parse_entity_tag_list('"a,b", "c"') == [EntityTag("a,b"), EntityTag("c")]


def test_8_8_3_2_comparison_table() -> None:
    # The table of RFC 9110 8.8.3.2.
    w1, w1b, w2, s1 = (
        EntityTag("1", True),
        EntityTag("1", True),
        EntityTag("2", True),
        EntityTag("1"),
    )
    assert not strong_match(w1, w1b) and weak_match(w1, w1b)
    assert not strong_match(w1, w2) and not weak_match(w1, w2)
    assert not strong_match(w1, s1) and weak_match(w1, s1)
    assert strong_match(s1, s1) and weak_match(s1, s1)


# --- 13.2.2 evaluation order ------------------------------------------------------------------


def test_13_1_1_if_match_strong_comparison() -> None:
    assert evaluate([("if-match", '"v1"')]) is None
    assert evaluate([("if-match", '"v0", "v1"')]) is None
    assert evaluate([("if-match", '"v2"')]) == 412
    assert evaluate([("if-match", 'W/"v1"')]) == 412  # weak never matches strongly
    assert evaluate([("if-match", '"v1"')], etag='W/"v1"') == 412
    assert evaluate([("if-match", "*")], etag=None) is None
    assert evaluate([("if-match", '"v1"')], etag=None) == 412


def test_13_1_4_if_unmodified_since() -> None:
    assert evaluate([("if-unmodified-since", BEFORE)]) == 412
    assert evaluate([("if-unmodified-since", LM)]) is None
    assert evaluate([("if-unmodified-since", "garbage")]) is None


def test_13_2_2_if_match_present_ignores_if_unmodified_since() -> None:
    assert evaluate([("if-match", '"v1"'), ("if-unmodified-since", BEFORE)]) is None


def test_13_1_2_if_none_match_weak_comparison() -> None:
    assert evaluate([("if-none-match", 'W/"v1"')]) == 304
    assert evaluate([("if-none-match", '"v1"')], etag='W/"v1"') == 304
    assert evaluate([("if-none-match", '"v2"')]) is None
    assert evaluate([("if-none-match", "*")]) == 304
    assert evaluate([("if-none-match", '"x"'), ("if-none-match", '"v1"')]) == 304


def test_13_1_2_if_none_match_on_unsafe_method_is_412() -> None:
    assert evaluate([("if-none-match", '"v1"')], method="PUT") == 412
    assert evaluate([("if-none-match", '"v1"')], method="HEAD") == 304


def test_13_1_3_if_modified_since() -> None:
    assert evaluate([("if-modified-since", LM)]) == 304
    assert evaluate([("if-modified-since", AFTER)]) == 304
    assert evaluate([("if-modified-since", BEFORE)]) is None
    assert evaluate([("if-modified-since", "yesterday")]) is None
    assert evaluate([("if-modified-since", LM)], method="POST") is None
    assert evaluate([("if-modified-since", LM), ("if-modified-since", LM)]) is None


def test_rfc9111_4_3_2_if_modified_since_without_last_modified_uses_date() -> None:
    """A cache SHOULD evaluate If-Modified-Since against the stored Date when the stored
    response has no Last-Modified, else against the time it was received."""

    def without_lm(request: H, **kw: Any) -> int | None:
        return evaluate_client_conditionals("GET", request, '"v1"', None, **kw)

    assert without_lm([("if-modified-since", LM)], date=LM, received=T0 + 99) == 304
    assert without_lm([("if-modified-since", AFTER)], date=LM) == 304
    assert without_lm([("if-modified-since", BEFORE)], date=LM) is None
    assert without_lm([("if-modified-since", LM)], date=None, received=T0) == 304
    assert without_lm([("if-modified-since", LM)], date="garbage", received=T0 + 1) is None
    assert without_lm([("if-modified-since", LM)]) is None  # nothing known: serve it
    # Last-Modified, when there is one, wins over Date; If-Unmodified-Since never uses Date.
    assert evaluate([("if-modified-since", BEFORE)], date=AFTER) is None
    assert without_lm([("if-unmodified-since", BEFORE)], date=LM) is None


def test_13_2_2_if_none_match_takes_precedence_over_if_modified_since() -> None:
    assert evaluate([("if-none-match", '"v2"'), ("if-modified-since", AFTER)]) is None
    assert evaluate([("if-none-match", '"v1"'), ("if-modified-since", BEFORE)]) == 304


def test_13_2_2_failed_if_match_beats_matching_if_none_match() -> None:
    assert evaluate([("if-match", '"zzz"'), ("if-none-match", '"v1"')]) == 412


def test_13_2_1_preconditions_only_apply_to_2xx() -> None:
    assert evaluate([("if-none-match", '"v1"')], status=404) is None


# --- 4.3.1 revalidation ------------------------------------------------------------------------


def test_4_3_1_validators_for_revalidation() -> None:
    both: H = [("etag", '"v1"'), ("last-modified", LM)]
    assert validators_for_revalidation(both) == [
        ("if-none-match", '"v1"'),
        ("if-modified-since", LM),
    ]
    assert validators_for_revalidation(both, subrange=True) == [("if-none-match", '"v1"')]
    assert validators_for_revalidation([("last-modified", LM)]) == [("if-modified-since", LM)]
    assert validators_for_revalidation([("last-modified", "nope")]) == []
    assert validators_for_revalidation([]) == []


# --- 4.3.4 and 3.2 updating with a 304 --------------------------------------------------------


def test_4_3_4_selecting_the_stored_response_to_update() -> None:
    stored: H = [("etag", '"v1"'), ("last-modified", LM)]
    assert not_modified_matches(stored, [("etag", '"v1"')])
    assert not not_modified_matches(stored, [("etag", '"v2"')])
    assert not_modified_matches(stored, [("etag", 'W/"v1"')])
    assert not not_modified_matches([("last-modified", LM)], [("etag", '"v1"')])
    assert not_modified_matches(stored, [("last-modified", LM)])
    assert not not_modified_matches(stored, [("last-modified", AFTER)])
    assert not_modified_matches(stored, [("date", LM)])  # no validator: the one we asked about


def test_3_2_merge_replaces_present_fields_keeps_others() -> None:
    stored: H = [
        ("content-type", "video/mp4"),
        ("content-length", "1000"),
        ("cache-control", "max-age=60"),
        ("x-old", "1"),
        ("x-multi", "a"),
        ("x-multi", "b"),
        ("date", LM),
        ("content-encoding", "gzip"),
    ]
    not_modified: H = [
        ("cache-control", "max-age=600"),
        ("date", AFTER),
        ("x-multi", "c"),
        ("content-length", "0"),
        ("content-range", "bytes */1000"),
        ("content-encoding", "br"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("transfer-encoding", "chunked"),
        ("set-cookie", "sid=1"),
        ("age", "3"),
    ]
    assert merge_304_headers(stored, not_modified) == [
        ("content-type", "video/mp4"),
        ("content-length", "1000"),
        ("x-old", "1"),
        ("content-encoding", "gzip"),
        ("cache-control", "max-age=600"),
        ("date", AFTER),
        ("x-multi", "c"),
        ("age", "3"),
    ]


# --- properties ---------------------------------------------------------------------------------

_TAGS = st.builds(EntityTag, st.text(alphabet="abc1", max_size=3), st.booleans())


@given(_TAGS, _TAGS)
def test_weak_and_strong_comparison_are_symmetric(a: EntityTag, b: EntityTag) -> None:
    assert weak_match(a, b) == weak_match(b, a)
    assert strong_match(a, b) == strong_match(b, a)
    assert not strong_match(a, b) or weak_match(a, b)


@given(st.lists(_TAGS, min_size=1, max_size=4))
def test_tag_lists_round_trip(tags: list[EntityTag]) -> None:
    assert parse_entity_tag_list(", ".join(str(tag) for tag in tags)) == tags


@given(_TAGS, _TAGS)
def test_if_none_match_outcome_is_symmetric_in_which_side_is_weak(
    a: EntityTag, b: EntityTag
) -> None:
    one = evaluate_client_conditionals("GET", [("if-none-match", str(a))], str(b), None)
    other = evaluate_client_conditionals("GET", [("if-none-match", str(b))], str(a), None)
    assert one == other


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since"]
            ),
            st.one_of(st.text(max_size=20), st.sampled_from(['"v1"', "*", LM, BEFORE, AFTER])),
        ),
        max_size=4,
    ),
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
)
def test_evaluate_never_raises_and_304_only_for_reads(conditions: H, method: str) -> None:
    result = evaluate_client_conditionals(method, conditions, '"v1"', LM)
    assert result in (None, 304, 412)
    if result == 304:
        assert method in ("GET", "HEAD")


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "content-length", "date"]), st.text(max_size=3))),
    st.lists(st.tuples(st.sampled_from(["a", "c", "content-length", "date"]), st.text(max_size=3))),
)
def test_merge_keeps_content_length_and_takes_every_updated_field(stored: H, new: H) -> None:
    merged = merge_304_headers(stored, new)
    assert [v for k, v in merged if k == "content-length"] == [
        v for k, v in stored if k == "content-length"
    ]
    for name in {k for k, _ in new} - {"content-length"}:
        assert [v for k, v in merged if k == name] == [v for k, v in new if k == name]
