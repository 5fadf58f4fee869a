"""HTTP-date parsing and formatting (RFC 9110 section 5.6.7).

Times are POSIX timestamps (seconds since the epoch, UTC) throughout this package, so
callers inject ``now`` as a number and tests never depend on the wall clock.

Recipients MUST accept all three formats: IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``),
the obsolete RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``) and ANSI C asctime
(``Sun Nov  6 08:49:37 1994``). Anything else is invalid and parses to None; callers decide
what an invalid date means (an invalid Expires means "already expired", RFC 9111 5.3).
"""

from __future__ import annotations

import calendar
import re
from email.utils import formatdate

__all__ = ["format_http_date", "parse_http_date"]

_MONTHS = {
    name: index
    for index, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# RFC 9110 5.6.7: HTTP-date is case-sensitive and every separator is exactly one SP
# (asctime pads a one-digit day with a second SP); anything else is invalid, and an
# invalid Expires means "already expired" (RFC 9111 5.3).
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_IMF_FIXDATE = re.compile(_DAY + r", (\d{2}) ([A-Za-z]{3}) (\d{4}) " + _TIME + r" GMT")
_RFC850 = re.compile(_LONG_DAY + r", (\d{2})-([A-Za-z]{3})-(\d{2}) " + _TIME + r" GMT")
_ASCTIME = re.compile(_DAY + r" ([A-Za-z]{3}) (\d{2}| \d) " + _TIME + r" (\d{4})")
_SECONDS_PER_YEAR = 365.2425 * 86400


def _timestamp(year: int, month_name: str, day: int, hh: int, mm: int, ss: int) -> int | None:
    month = _MONTHS.get(month_name)
    if month is None or year < 1 or year > 9999:
        return None
    if ss == 60:  # a leap second (RFC 9110 allows 60); POSIX time has no room for it
        ss = 59
    if not (1 <= day <= calendar.monthrange(year, month)[1] and hh < 24 and mm < 60 and ss < 60):
        return None
    return calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0))


def _rfc850_year(two_digits: int, now: float | None) -> int:
    if now is None:
        # Without a clock, the POSIX pivot: 70-99 -> 19xx, 00-69 -> 20xx.
        return 1900 + two_digits if two_digits >= 70 else 2000 + two_digits
    # RFC 9110 5.6.7: a year that appears more than 50 years in the future is the most
    # recent past year with the same last two digits.
    this_year = 1970 + int(now // _SECONDS_PER_YEAR)
    year = this_year - this_year % 100 + two_digits
    if year > this_year + 50:
        year -= 100
    elif year <= this_year - 50:
        year += 100
        if year > this_year + 50:
            year -= 100
    return year


def parse_http_date(value: str, *, now: float | None = None) -> int | None:
    """Parse an HTTP-date into a POSIX timestamp; None when it is not a valid HTTP-date.

    Accepts IMF-fixdate, RFC 850 and asctime exactly as the grammar writes them (case
    and single spaces matter, RFC 9110 5.6.7; the weekday is not checked against the
    date). ``now`` only disambiguates the two-digit year of RFC 850 dates. Never raises.
    """
    text = value.strip(" \t")
    match = _IMF_FIXDATE.fullmatch(text)
    if match:
        day, month, year, hh, mm, ss = match.groups()
        return _timestamp(int(year), month, int(day), int(hh), int(mm), int(ss))
    match = _RFC850.fullmatch(text)
    if match:
        day, month, yy, hh, mm, ss = match.groups()
        year = _rfc850_year(int(yy), now)
        return _timestamp(year, month, int(day), int(hh), int(mm), int(ss))
    match = _ASCTIME.fullmatch(text)
    if match:
        month, day, hh, mm, ss, year = match.groups()
        return _timestamp(int(year), month, int(day), int(hh), int(mm), int(ss))
    return None


def format_http_date(timestamp: float) -> str:
    """Format a POSIX timestamp as IMF-fixdate, the only form a sender may generate."""
    return formatdate(int(timestamp), usegmt=True)
