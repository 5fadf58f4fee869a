"""HTTP-date parsing (RFC 9110 5.6.7)."""

from __future__ import annotations

import calendar

from hypothesis import given
from hypothesis import strategies as st

from app.httpcache.dates import format_http_date, parse_http_date

NOV_6_1994 = calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0))
NOW_2026 = calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))


def test_5_6_7_imf_fixdate() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == NOV_6_1994


def test_5_6_7_obsolete_rfc850() -> None:
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == NOV_6_1994


def test_5_6_7_obsolete_asctime() -> None:
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == NOV_6_1994


def test_5_6_7_rfc850_two_digit_year_more_than_50_years_ahead_is_in_the_past() -> None:
    # In 2026, "94" would be 2094 (68 years ahead) -> 1994; "30" is 2030.
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=NOW_2026) == NOV_6_1994
    in_2030 = parse_http_date("Wednesday, 06-Nov-30 08:49:37 GMT", now=NOW_2026)
    assert in_2030 == calendar.timegm((2030, 11, 6, 8, 49, 37, 0, 0, 0))


def test_surrounding_whitespace_tolerated_but_case_matters() -> None:
    # RFC 9110 5.6.7: HTTP-date is case-sensitive (one parser serves If-Range, whose
    # tests require that too); optional whitespace around a field value is not part of it.
    assert parse_http_date("  Sun, 06 Nov 1994 08:49:37 GMT ") == NOV_6_1994
    assert parse_http_date("sun, 06 nov 1994 08:49:37 gmt") is None


def test_leap_second_is_accepted() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") is not None


def test_invalid_dates_are_none() -> None:
    for garbage in (
        "0",
        "-1",
        "",
        "tomorrow",
        "Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 PST",  # only GMT is an HTTP-date
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
    ):
        assert parse_http_date(garbage) is None, garbage


def test_format_is_imf_fixdate() -> None:
    assert format_http_date(NOV_6_1994) == "Sun, 06 Nov 1994 08:49:37 GMT"


@given(st.integers(min_value=0, max_value=253402300799))
def test_format_then_parse_round_trips(timestamp: int) -> None:
    assert parse_http_date(format_http_date(timestamp)) == timestamp


@given(st.text())
def test_parse_never_raises(text: str) -> None:
    result = parse_http_date(text)
    assert result is None or isinstance(result, int)
