"""Conformance probes beyond the port of the suite's required tests (tests/test_conformance.py).

Same machinery (scripted raw HTTP/1.1 origin, default configuration, virtual clock), cases
taken from the suite's optional/check tests and from RFC 9111/9110 requirements the suite does
not exercise. Each case says which RFC text it checks.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from tests.test_conformance import (  # noqa: F401  (the fixtures are found by name)
    Case,
    Config,
    SuiteRunner,
    cache_url,
    cases,
    clock,
    fresh,
    scripted,
    suite,
)


@pytest.fixture
def runner(request: pytest.FixtureRequest) -> SuiteRunner:
    """The port's ``suite`` fixture (one cache for this module, in front of its origin)."""
    return cast(SuiteRunner, request.getfixturevalue("suite"))


def _one_then(headers: list[list[Any]], expected: str, **second: Any) -> list[Config]:
    return [
        {"response_headers": headers, "setup": True, "pause_after": True},
        {"expected_type": expected, **second},
    ]


def _status(code: int, phrase: str, headers: list[list[Any]], expected: str) -> list[Config]:
    body = None if code == 204 else f"body-{code}"
    return [
        {
            "response_status": [code, phrase],
            "response_headers": headers,
            "response_body": body,
            "setup": True,
            "pause_after": True,
        },
        {"expected_type": expected, "response_status": [code, phrase], "response_body": body},
    ]


LM = ["Last-Modified", -24 * 60 * 60]

PROBES = [
    # cc-parse / RFC 9111 1.2.2, 4.2.1
    Case(
        "max-age-two-stale-fresh-same",
        _one_then([["Cache-Control", "max-age=1, max-age=1800", False]], "not_cached"),
    ),
    Case("max-age-quoted", _one_then([["Cache-Control", 'max-age="3600"', False]], "cached")),
    Case("max-age-a100", _one_then([["Cache-Control", "max-age=a3600", False]], "not_cached")),
    Case("max-age-100a", _one_then([["Cache-Control", "max-age=3600a", False]], "not_cached")),
    Case(
        "max-age-huge",
        _one_then([["Cache-Control", "max-age=99999999999999999999", False]], "cached"),
    ),
    Case("max-age-2-31", _one_then([["Cache-Control", "max-age=2147483648", False]], "cached")),
    Case("max-age-upper", _one_then([["Cache-Control", "MAX-AGE=3600", False]], "cached")),
    Case(
        "s-maxage-0-over-max-age",
        _one_then([["Cache-Control", "max-age=3600, s-maxage=0"]], "not_cached"),
    ),
    Case(
        "s-maxage-over-max-age-0",
        _one_then([["Cache-Control", "max-age=0, s-maxage=3600"]], "cached"),
    ),
    Case(
        "s-maxage-over-expires-past",
        _one_then([["Cache-Control", "s-maxage=3600"], ["Expires", -3600], ["Date", 0]], "cached"),
    ),
    Case(
        "max-age-over-expires-past",
        _one_then([["Cache-Control", "max-age=3600"], ["Expires", -3600], ["Date", 0]], "cached"),
    ),
    Case("public-max-age", _one_then([["Cache-Control", "public, max-age=3600"]], "cached")),
    Case(
        "private-qualified-stores-or-not",
        _one_then(
            [["Cache-Control", 'private="Foo", max-age=3600'], ["Foo", "bar"]],
            "cached",
            expected_response_headers_missing=["Foo"],
        ),
    ),
    Case(
        "no-cache-qualified",
        _one_then(
            [["Cache-Control", 'no-cache="Foo", max-age=3600'], ["Foo", "bar"]],
            "cached",
            expected_response_headers_missing=["Foo"],
        ),
    ),
    Case(
        "must-understand-no-store-200",
        _one_then([["Cache-Control", "max-age=3600, no-store, must-understand"]], "cached"),
    ),
    Case(
        "no-store-second-line",
        _one_then([["Cache-Control", "max-age=3600"], ["Cache-Control", "no-store"]], "not_cached"),
    ),
    Case(
        "no-cache-second-line",
        _one_then([["Cache-Control", "max-age=3600"], ["Cache-Control", "no-cache"]], "not_cached"),
    ),
    Case(
        "private-second-line",
        _one_then([["Cache-Control", "max-age=3600"], ["Cache-Control", "private"]], "not_cached"),
    ),
    Case(
        "max-age-param-ext",
        _one_then([["Cache-Control", 'foo=bar, max-age=3600, baz="a,b"']], "cached"),
    ),
    Case(
        "no-store-in-quoted",
        _one_then([["Cache-Control", 'foo="no-store", max-age=3600']], "cached"),
    ),
    # age-parse / RFC 9111 5.1
    Case(
        "age-nonnumeric",
        _one_then([["Cache-Control", "max-age=3600"], ["Age", "abc", False]], "cached"),
    ),
    Case(
        "age-negative",
        _one_then([["Cache-Control", "max-age=3600"], ["Age", "-7200", False]], "cached"),
    ),
    Case(
        "age-float",
        _one_then([["Cache-Control", "max-age=3600"], ["Age", "7200.0", False]], "cached"),
    ),
    Case(
        "age-large",
        _one_then([["Cache-Control", "max-age=3600"], ["Age", "2147483649", False]], "not_cached"),
    ),
    Case(
        "age-dup-old",
        _one_then(
            [["Cache-Control", "max-age=3600"], ["Age", "7200", False], ["Age", "0", False]],
            "not_cached",
        ),
    ),
    Case(
        "age-dup-0-first",
        _one_then(
            [["Cache-Control", "max-age=3600"], ["Age", "0", False], ["Age", "7200", False]],
            "cached",
        ),
    ),
    Case(
        "age-leading-plus",
        _one_then([["Cache-Control", "max-age=3600"], ["Age", "+7200", False]], "cached"),
    ),
    Case(
        "age-suffix",
        _one_then([["Cache-Control", "max-age=3600"], ["Age", "7200a", False]], "cached"),
    ),
    Case("age-expires", _one_then([["Expires", 3600], ["Date", 0], ["Age", "7200"]], "not_cached")),
    # expires-parse / RFC 9111 5.3
    Case("expires-0", _one_then([["Expires", "0", False], ["Date", 0]], "not_cached")),
    Case("expires-invalid", _one_then([["Expires", "foo", False], ["Date", 0]], "not_cached")),
    Case(
        "expires-rfc850",
        [
            {
                "response_headers": [["Expires", 3600], ["Date", 0]],
                "rfc850date": ["expires"],
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "cached"},
        ],
    ),
    Case("expires-asctime", _one_then([["Expires", "Sun Nov  6 08:49:37 2094", False]], "cached")),
    Case(
        "expires-past-asctime",
        _one_then([["Expires", "Sun Nov  6 08:49:37 1994", False]], "not_cached"),
    ),
    Case(
        "expires-year-2100",
        _one_then([["Expires", "Fri, 01 Jan 2100 00:00:00 GMT", False]], "cached"),
    ),
    Case(
        "expires-utc",
        _one_then([["Expires", "Fri, 01 Jan 2100 00:00:00 UTC", False]], "not_cached"),
    ),
    Case(
        "expires-lowercase",
        _one_then([["Expires", "fri, 01 jan 2100 00:00:00 gmt", False]], "not_cached"),
    ),
    Case(
        "expires-date-skew",
        _one_then(
            [
                ["Expires", "Fri, 01 Jan 2100 00:00:02 GMT", False],
                ["Date", "Fri, 01 Jan 2100 00:00:00 GMT", False],
            ],
            "not_cached",
        ),
    ),
    # RFC 9111 4.2.1: a duplicate Expires is either the first value or stale; never the second.
    Case(
        "expires-dup-first-stale",
        _one_then([["Expires", -3600, False], ["Expires", 3600, False], ["Date", 0]], "not_cached"),
    ),
    Case(
        "expires-single-digit-day",
        _one_then([["Expires", "Fri, 1 Jan 2100 00:00:00 GMT", False]], "not_cached"),
    ),
    # heuristic freshness (RFC 9110 15.1: heuristically cacheable statuses)
    *[
        Case(f"heuristic-{c}-cached", _status(c, p, [LM, ["Date", 0]], "cached"))
        for c, p in [
            (200, "OK"),
            (203, "NAI"),
            (204, "No Content"),
            (300, "Multiple Choices"),
            (301, "Moved"),
            (308, "Permanent"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (410, "Gone"),
            (414, "URI Too Long"),
            (501, "Not Implemented"),
        ]
    ],
    *[
        Case(f"heuristic-{c}-not-cached", _status(c, p, [LM, ["Date", 0]], "not_cached"))
        for c, p in [
            (302, "Found"),
            (303, "See Other"),
            (307, "Temp"),
            (400, "Bad"),
            (401, "Unauth"),
            (500, "ISE"),
            (299, "Whatever"),
        ]
    ],
    Case(
        "heuristic-public-lm",
        _status(302, "Found", [LM, ["Date", 0], ["Cache-Control", "public"]], "cached"),
    ),
    Case(
        "heuristic-lm-future",
        _status(200, "OK", [["Last-Modified", 3600], ["Date", 0]], "not_cached"),
    ),
    Case(
        "heuristic-lm-invalid",
        _status(200, "OK", [["Last-Modified", "garbage", False], ["Date", 0]], "not_cached"),
    ),
    # fresh statuses
    *[
        Case(f"status-{c}-fresh", _status(c, p, [["Cache-Control", "max-age=3600"]], "cached"))
        for c, p in [
            (200, "OK"),
            (201, "Created"),
            (202, "Accepted"),
            (203, "NAI"),
            (204, "No Content"),
            (299, "W"),
            (300, "MC"),
            (301, "Moved"),
            (302, "Found"),
            (303, "See Other"),
            (307, "Temp"),
            (308, "Perm"),
            (400, "Bad"),
            (403, "Forbidden"),
            (404, "NF"),
            (405, "MNA"),
            (410, "Gone"),
            (414, "URI"),
            (499, "W"),
            (500, "ISE"),
            (501, "NI"),
            (502, "BG"),
            (503, "SU"),
            (504, "GT"),
            (599, "W"),
        ]
    ],
    Case(
        "status-599-must-understand-fresh-no-store",
        _status(
            599, "W", [["Cache-Control", "max-age=3600, no-store, must-understand"]], "not_cached"
        ),
    ),
]

FRESH_H: list[list[Any]] = [
    ["Expires", 100000],
    ["Cache-Control", "max-age=100000"],
    ["Last-Modified", 0],
    ["Date", 0],
]


def _loc(target: str, **extra: Any) -> Config:
    return {"filename": target, "response_headers": FRESH_H, **extra}


def _lcl(method: str, status: list[Any] | None = None) -> Config:
    config: Config = {
        "request_method": method,
        "request_body": "abc",
        "setup": True,
        "magic_locations": True,
        "response_headers": [
            ["Location", "location_target"],
            ["Content-Location", "content_location_target"],
        ],
    }
    if status:
        config["response_status"] = status
    return config


def _vary(
    req1: list[list[str]], req2: list[list[str]], vary: list[list[Any]], expected: str
) -> list[Config]:
    return [
        {
            "request_headers": req1,
            "response_headers": [["Cache-Control", "max-age=5000"], ["Date", 0], *vary],
            "setup": True,
        },
        {"request_headers": req2, "expected_type": expected},
    ]


RANGE_BODY = "0123456789abcdef"


def _range(
    req_headers: list[list[str]],
    status: int,
    text: str | None,
    headers: list[Any] | None = None,
    resp: list[list[Any]] | None = None,
) -> list[Config]:
    return [
        {
            "response_headers": resp
            or [
                ["Cache-Control", "max-age=3600"],
                ["ETag", '"abc"'],
                ["Last-Modified", -3600],
                ["Date", 0],
            ],
            "response_body": RANGE_BODY,
            "setup": True,
        },
        {
            "request_headers": req_headers,
            # A 416 is the cache's own answer, without the stored fields.
            "expected_type": "cached" if status != 416 else None,
            "expected_status": status,
            "expected_response_text": text,
            "expected_response_headers": headers or [],
            "response_body": RANGE_BODY,
        },
    ]


FRESH_ETAG: list[list[Any]] = [
    ["Cache-Control", "max-age=3600"],
    ["ETag", '"abc"'],
    ["Last-Modified", -3600],
    ["Date", 0],
]


def _cond(
    req_headers: list[list[Any]], status: int, etag: str = '"abc"', **extra: Any
) -> list[Config]:
    return [
        {
            "response_headers": [
                ["Cache-Control", "max-age=3600"],
                ["ETag", etag],
                ["Last-Modified", -3600],
                ["Date", 0],
            ],
            "setup": True,
        },
        {
            "request_headers": req_headers,
            "expected_type": "cached",
            "expected_status": status,
            **extra,
        },
    ]


PROBES2 = [
    # invalidation.mjs (required: -location, -cl) and optimal -failed
    *[
        Case(
            f"invalidate-{m}-location",
            [
                _loc("location_target", setup=True),
                _lcl("POST"),
                _loc("location_target", expected_type="not_cached"),
            ],
        )
        for m in ("POST",)
    ],
    *[
        Case(
            f"invalidate-{m}-cl",
            [
                _loc("content_location_target", setup=True),
                _lcl(m),
                _loc("content_location_target", expected_type="not_cached"),
            ],
        )
        for m in ("POST", "PUT", "DELETE", "M-SEARCH")
    ],
    *[
        Case(
            f"invalidate-{m}-failed",
            [
                fresh(),
                {
                    "request_method": m,
                    "request_body": "abc",
                    "response_status": [500, "ISE"],
                    "setup": True,
                },
                {"expected_type": "cached"},
            ],
        )
        for m in ("POST", "PUT", "DELETE", "M-SEARCH")
    ],
    Case(
        "invalidate-PATCH",
        [
            fresh(),
            {"request_method": "PATCH", "request_body": "abc", "setup": True},
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "invalidate-POST-204",
        [
            fresh(),
            {
                "request_method": "POST",
                "request_body": "abc",
                "response_status": [204, "No Content"],
                "setup": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "invalidate-POST-303",
        [
            fresh(),
            {
                "request_method": "POST",
                "request_body": "abc",
                "response_status": [303, "See Other"],
                "setup": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "no-invalidate-OPTIONS",
        [fresh(), {"request_method": "OPTIONS", "setup": True}, {"expected_type": "cached"}],
    ),
    Case(
        "post-not-served-from-get",
        [fresh(), {"request_method": "POST", "request_body": "abc", "expected_type": "not_cached"}],
    ),
    # method: HEAD
    Case("head-after-get", [fresh(), {"request_method": "HEAD", "expected_type": "cached"}]),
    Case(
        "get-after-head-not-bodyless",
        [
            {
                "request_method": "HEAD",
                "response_headers": FRESH_H,
                "setup": True,
                "pause_after": True,
            },
            {"expected_status": 200},
        ],
    ),
    # vary
    Case("vary-match", _vary([["Foo", "1"]], [["Foo", "1"]], [["Vary", "Foo"]], "cached")),
    Case("vary-case-name", _vary([["Foo", "1"]], [["Foo", "1"]], [["Vary", "fOO"]], "cached")),
    Case("vary-no-match", _vary([["Foo", "1"]], [["Foo", "2"]], [["Vary", "Foo"]], "not_cached")),
    Case("vary-value-case", _vary([["Foo", "a"]], [["Foo", "A"]], [["Vary", "Foo"]], "not_cached")),
    Case("vary-absent-absent", _vary([], [], [["Vary", "Foo"]], "cached")),
    Case("vary-absent-then-empty", _vary([], [["Foo", ""]], [["Vary", "Foo"]], "not_cached")),
    Case(
        "vary-2-match",
        _vary(
            [["Foo", "1"], ["Bar", "x"]],
            [["Foo", "1"], ["Bar", "x"]],
            [["Vary", "Foo, Bar"]],
            "cached",
        ),
    ),
    Case(
        "vary-2-lines-no-match",
        _vary(
            [["Foo", "1"], ["Bar", "x"]],
            [["Foo", "1"], ["Bar", "y"]],
            [["Vary", "Foo", False], ["Vary", "Bar", False]],
            "not_cached",
        ),
    ),
    Case(
        "vary-combine-lines",
        _vary([["Foo", "1, 2"]], [["Foo", "1"], ["Foo", "2"]], [["Vary", "Foo"]], "cached"),
    ),
    Case(
        "vary-accept-encoding-differ",
        _vary(
            [["Accept-Encoding", "gzip"]],
            [["Accept-Encoding", "br"]],
            [["Vary", "Accept-Encoding"]],
            "not_cached",
        ),
    ),
    Case(
        "vary-cookie",
        _vary([["Cookie", "a=1"]], [["Cookie", "a=2"]], [["Vary", "Cookie"]], "not_cached"),
    ),
    Case(
        "vary-two-variants",
        [
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "setup": True,
                "response_body": "one",
            },
            {
                "request_headers": [["Foo", "2"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "setup": True,
                "response_body": "two",
            },
            {
                "request_headers": [["Foo", "1"]],
                "expected_type": "cached",
                "expected_response_text": "one",
            },
            {
                "request_headers": [["Foo", "2"]],
                "expected_type": "cached",
                "expected_response_text": "two",
            },
        ],
    ),
    # conditional requests from the client (RFC 9110 13.1, 13.2.2; RFC 9111 4.3.2)
    Case("inm-strong-match", _cond([["If-None-Match", '"abc"']], 304)),
    Case("inm-weak-req", _cond([["If-None-Match", 'W/"abc"']], 304)),
    Case("inm-weak-stored", _cond([["If-None-Match", '"abc"']], 304, etag='W/"abc"')),
    Case("inm-list", _cond([["If-None-Match", '"x", "abc"']], 304)),
    Case("inm-list-nospace", _cond([["If-None-Match", '"x","abc"']], 304)),
    Case("inm-two-lines", _cond([["If-None-Match", '"x"'], ["If-None-Match", '"abc"']], 304)),
    Case("inm-star", _cond([["If-None-Match", "*"]], 304)),
    Case("inm-nomatch", _cond([["If-None-Match", '"xyz"']], 200)),
    Case(
        "inm-304-headers",
        _cond(
            [["If-None-Match", '"abc"']],
            304,
            expected_response_headers=[["ETag", '"abc"'], ["Cache-Control", "max-age=3600"]],
        ),
    ),
    Case(
        "ims-match",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Last-Modified", -3600],
                    ["Date", 0],
                ],
                "setup": True,
            },
            {
                "request_headers": [["If-Modified-Since", 0]],
                "magic_ims": True,
                "expected_type": "cached",
                "expected_status": 304,
            },
        ],
    ),
    Case(
        "ims-older",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Last-Modified", -3600],
                    ["Date", 0],
                ],
                "setup": True,
            },
            {
                "request_headers": [["If-Modified-Since", -7200]],
                "magic_ims": True,
                "expected_type": "cached",
                "expected_status": 200,
            },
        ],
    ),
    Case(
        "ims-invalid",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Last-Modified", -3600],
                    ["Date", 0],
                ],
                "setup": True,
            },
            {
                "request_headers": [["If-Modified-Since", "garbage"]],
                "expected_type": "cached",
                "expected_status": 200,
            },
        ],
    ),
    Case(
        "ims-ignored-with-inm",
        [
            {"response_headers": FRESH_ETAG, "setup": True},
            {
                "request_headers": [["If-None-Match", '"nope"'], ["If-Modified-Since", 0]],
                "expected_type": "cached",
                "expected_status": 200,
            },
        ],
    ),
    Case(
        "ims-on-head",
        [
            {"response_headers": FRESH_ETAG, "setup": True},
            {
                "request_method": "HEAD",
                "request_headers": [["If-None-Match", '"abc"']],
                "expected_type": "cached",
                "expected_status": 304,
            },
        ],
    ),
    Case(
        "im-no-match-412",
        [
            {"response_headers": FRESH_ETAG, "setup": True},
            {
                "request_headers": [["If-Match", '"zzz"']],
                "expected_status": 412,
                "check_body": False,
            },
        ],
    ),
    # ranges from the cache (RFC 9110 14)
    Case(
        "range-simple",
        _range([["Range", "bytes=2-5"]], 206, "2345", [["Content-Range", "bytes 2-5/16"]]),
    ),
    Case(
        "range-suffix",
        _range([["Range", "bytes=-3"]], 206, "def", [["Content-Range", "bytes 13-15/16"]]),
    ),
    Case(
        "range-open",
        _range([["Range", "bytes=14-"]], 206, "ef", [["Content-Range", "bytes 14-15/16"]]),
    ),
    Case(
        "range-past-end",
        _range([["Range", "bytes=10-100"]], 206, "abcdef", [["Content-Range", "bytes 10-15/16"]]),
    ),
    Case(
        "range-unsatisfiable",
        _range([["Range", "bytes=100-"]], 416, None, [["Content-Range", "bytes */16"]]),
    ),
    Case("range-invalid-ignored", _range([["Range", "bytes=5-2"]], 200, RANGE_BODY)),
    Case("range-other-unit", _range([["Range", "items=0-1"]], 200, RANGE_BODY)),
    Case("range-if-range-etag", _range([["Range", "bytes=0-1"], ["If-Range", '"abc"']], 206, "01")),
    Case(
        "range-if-range-mismatch",
        _range([["Range", "bytes=0-1"], ["If-Range", '"zzz"']], 200, RANGE_BODY),
    ),
    Case(
        "range-if-range-weak",
        _range([["Range", "bytes=0-1"], ["If-Range", 'W/"abc"']], 200, RANGE_BODY),
    ),
    Case(
        "range-if-range-weak-stored",
        _range(
            [["Range", "bytes=0-1"], ["If-Range", '"abc"']],
            200,
            RANGE_BODY,
            resp=[["Cache-Control", "max-age=3600"], ["ETag", 'W/"abc"'], ["Date", 0]],
        ),
    ),
    Case("range-zero-length-suffix", _range([["Range", "bytes=-0"]], 416, None)),
    # pragma / request cache-control (RFC 9111 5.2.1, 5.4)
    Case(
        "req-no-cache",
        [
            fresh(),
            {"request_headers": [["Cache-Control", "no-cache"]], "expected_type": "not_cached"},
        ],
    ),
    Case(
        "req-max-age-0",
        [
            fresh(),
            {"request_headers": [["Cache-Control", "max-age=0"]], "expected_type": "not_cached"},
        ],
    ),
    Case(
        "req-no-store-not-stored",
        [
            {
                "request_headers": [["Cache-Control", "no-store"]],
                "response_headers": FRESH_H,
                "setup": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "req-only-if-cached-miss",
        [
            {
                "request_headers": [["Cache-Control", "only-if-cached"]],
                "expected_status": 504,
                "check_body": False,
            }
        ],
    ),
    Case(
        "req-only-if-cached-hit",
        [
            fresh(),
            {"request_headers": [["Cache-Control", "only-if-cached"]], "expected_type": "cached"},
        ],
    ),
    Case(
        "resp-pragma-no-cache-ignored-with-max-age",
        _one_then([["Cache-Control", "max-age=3600"], ["Pragma", "no-cache"]], "cached"),
    ),
    # 304 update (RFC 9111 3.2 / 4.3.4)
    Case(
        "update304-new-header",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1"],
                    ["ETag", '"abc"'],
                    ["Date", 0],
                    ["A", "1"],
                ],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["ETag", '"abc"'],
                    ["Date", 0],
                    ["A", "2"],
                    ["B", "3"],
                ],
                "expected_type": "etag_validated",
                "expected_response_headers": [["A", "2"], ["B", "3"]],
                "setup": True,
            },
            {"expected_type": "cached", "expected_response_headers": [["A", "2"], ["B", "3"]]},
        ],
    ),
    Case(
        "update304-etag-mismatch-no-update",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1"],
                    ["ETag", '"abc"'],
                    ["Date", 0],
                    ["A", "1"],
                ],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["ETag", '"abc"'],
                    ["Date", 0],
                    ["A", "2"],
                ],
                "expected_type": "etag_validated",
                "setup": True,
            },
            {"expected_type": "cached"},
        ],
    ),
]


@cases(*PROBES2)
def test_probe2(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


@cases(*PROBES)
def test_probe(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


def _p206(cr: str = "bytes 4-9/10", req_range: str = "bytes=-5") -> Config:
    return {
        "request_headers": [["Range", req_range]],
        "response_status": [206, "Partial Content"],
        "response_headers": [["Cache-Control", "max-age=3600"], ["Content-Range", cr]],
        "response_body": "01234",
        "setup": True,
    }


def _cdn(headers: list[list[Any]], expected: str) -> list[Config]:
    return _one_then([[n, v, False] for n, v in headers], expected)


PROBES3 = [
    # partial.mjs (optional) and never wrong bytes
    Case(
        "partial-then-full-not-partial",
        [
            _p206(),
            {
                "expected_status": 200,
                "response_body": "0123456789",
                "expected_response_text": "0123456789",
            },
        ],
    ),
    Case(
        "partial-then-other-range-right-bytes",
        [
            _p206(),
            {
                "request_headers": [["Range", "bytes=0-1"]],
                "response_status": [206, "Partial Content"],
                "response_headers": [["Content-Range", "bytes 0-1/10"]],
                "response_body": "ab",
                "expected_status": 206,
                "expected_response_text": "ab",
            },
        ],
    ),
    Case(
        "partial-complete-reuse-partial",
        [
            {
                "response_headers": [["Cache-Control", "max-age=3600"]],
                "response_body": "01234567890",
                "setup": True,
            },
            {
                "request_headers": [["Range", "bytes=1-"]],
                "expected_type": "cached",
                "expected_status": 206,
                "expected_response_text": "1234567890",
            },
        ],
    ),
    # authorization (RFC 9111 3.5)
    Case(
        "auth-max-age-not-reused",
        [
            {
                "request_headers": [["Authorization", "Basic YTpi"]],
                "response_headers": [["Cache-Control", "max-age=3600"]],
                "setup": True,
            },
            {"request_headers": [["Authorization", "Basic YTpi"]], "expected_type": "not_cached"},
        ],
    ),
    Case(
        "auth-max-age-not-reused-other",
        [
            {
                "request_headers": [["Authorization", "Basic YTpi"]],
                "response_headers": [["Cache-Control", "max-age=3600"]],
                "setup": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "auth-public",
        [
            {
                "request_headers": [["Authorization", "Basic YTpi"]],
                "response_headers": [["Cache-Control", "public, max-age=3600"]],
                "setup": True,
            },
            {"request_headers": [["Authorization", "Basic YTpi"]], "expected_type": "cached"},
        ],
    ),
    Case(
        "auth-s-maxage",
        [
            {
                "request_headers": [["Authorization", "Basic YTpi"]],
                "response_headers": [["Cache-Control", "s-maxage=3600"]],
                "setup": True,
            },
            {"request_headers": [["Authorization", "Basic YTpi"]], "expected_type": "cached"},
        ],
    ),
    Case(
        "auth-must-revalidate",
        [
            {
                "request_headers": [["Authorization", "Basic YTpi"]],
                "response_headers": [["Cache-Control", "max-age=3600, must-revalidate"]],
                "setup": True,
            },
            {"request_headers": [["Authorization", "Basic YTpi"]], "expected_type": "cached"},
        ],
    ),
    Case(
        "auth-cdn-cc-only",
        [
            {
                "request_headers": [["Authorization", "Basic YTpi"]],
                "response_headers": [["CDN-Cache-Control", "max-age=3600", False]],
                "setup": True,
            },
            {"request_headers": [["Authorization", "Basic YTpi"]], "expected_type": "not_cached"},
        ],
    ),
    # CDN-Cache-Control (RFC 9213 + RFC 8941)
    Case("cdn-uppercase-key-invalid", _cdn([["CDN-Cache-Control", "Max-Age=3600"]], "not_cached")),
    Case(
        "cdn-two-lines-no-store",
        _cdn(
            [["CDN-Cache-Control", "max-age=3600"], ["CDN-Cache-Control", "no-store"]], "not_cached"
        ),
    ),
    Case("cdn-decimal-invalid", _cdn([["CDN-Cache-Control", "max-age=3600.5"]], "not_cached")),
    Case(
        "cdn-negative",
        _cdn(
            [["CDN-Cache-Control", "max-age=-3600"], ["Cache-Control", "max-age=3600"]],
            "not_cached",
        ),
    ),
    Case("cdn-s-maxage", _cdn([["CDN-Cache-Control", "s-maxage=3600"]], "cached")),
    Case(
        "cdn-no-store-cc-fresh-public",
        _cdn(
            [["CDN-Cache-Control", "no-store"], ["Cache-Control", "public, max-age=3600"]],
            "not_cached",
        ),
    ),
    Case(
        "cdn-max-age-cc-no-cache",
        _cdn([["CDN-Cache-Control", "max-age=3600"], ["Cache-Control", "no-cache"]], "cached"),
    ),
    Case(
        "cdn-max-age-cc-private",
        _cdn([["CDN-Cache-Control", "max-age=3600"], ["Cache-Control", "private"]], "cached"),
    ),
    Case(
        "cdn-invalid-falls-back",
        _cdn(
            [["CDN-Cache-Control", "max-age=3600, ,,"], ["Cache-Control", "max-age=3600"]], "cached"
        ),
    ),
    Case(
        "cdn-invalid-fallback-no-store",
        _cdn(
            [["CDN-Cache-Control", "max-age=3600, ,,"], ["Cache-Control", "no-store"]], "not_cached"
        ),
    ),
    Case(
        "cdn-empty", _cdn([["CDN-Cache-Control", ""], ["Cache-Control", "no-store"]], "not_cached")
    ),
    Case("cdn-true-max-age", _cdn([["CDN-Cache-Control", "max-age"]], "not_cached")),
    Case("cdn-params", _cdn([["CDN-Cache-Control", "max-age=3600;foo=bar"]], "cached")),
    Case(
        "cdn-max-age-heuristic-not",
        _cdn(
            [["CDN-Cache-Control", "must-revalidate"], ["Cache-Control", "max-age=3600"]],
            "not_cached",
        ),
    ),
    # headers: hop-by-hop (RFC 9110 7.6.1, RFC 9111 3.1)
    Case(
        "connection-two-tokens",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Connection", "a, B", False],
                    ["A", "1", False],
                    ["b", "2", False],
                    ["C", "3"],
                ],
                "setup": True,
            },
            {
                "expected_type": "cached",
                "expected_response_headers_missing": ["A", "B"],
                "expected_response_headers": [["C", "3"]],
            },
        ],
    ),
    Case(
        "connection-two-lines",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Connection", "a", False],
                    ["Connection", "b", False],
                    ["A", "1", False],
                    ["b", "2", False],
                ],
                "setup": True,
            },
            {"expected_type": "cached", "expected_response_headers_missing": ["A", "B"]},
        ],
    ),
    Case(
        "connection-listed-on-miss",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Connection", "a", False],
                    ["A", "1", False],
                ],
                "expected_response_headers_missing": ["A"],
            },
        ],
    ),
    # Age on a hit (RFC 9111 5.1): present and counting
    Case(
        "age-on-hit",
        [fresh(), {"expected_type": "cached", "expected_response_headers": [["Age", ">", 2]]}],
    ),
    Case(
        "age-added-to-origin-age",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Age", "100"],
                    ["Date", 0],
                ],
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "cached", "expected_response_headers": [["Age", ">", 102]]},
        ],
    ),
    # stale-if-error / stale-while-revalidate (RFC 5861)
    Case(
        "sie-500",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, stale-if-error=60"]],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_status": [500, "ISE"],
                "expected_status": 200,
                "expected_type": "cached",
                "setup_tests": [],
            },
        ],
    ),
    Case(
        "sie-expired-window",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, stale-if-error=1"]],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_status": [500, "ISE"],
                "expected_status": 500,
                "response_body": "err",
                "expected_response_text": "err",
            },
        ],
    ),
    Case(
        "sie-no-error-on-404",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, stale-if-error=60"]],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_status": [404, "NF"],
                "expected_status": 404,
                "response_body": "nf",
                "expected_response_text": "nf",
            },
        ],
    ),
    Case(
        "swr-outside-window",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, stale-while-revalidate=1"]],
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "swr-must-revalidate",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1, stale-while-revalidate=60, must-revalidate"]
                ],
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "sie-no-cache-must-not",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1, stale-if-error=60, must-revalidate"]
                ],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_status": [500, "ISE"],
                "expected_status": 500,
                "response_body": "err",
                "expected_response_text": "err",
            },
        ],
    ),
    Case(
        "req-max-stale-must-revalidate",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, must-revalidate"]],
                "setup": True,
                "pause_after": True,
            },
            {"request_headers": [["Cache-Control", "max-stale=60"]], "expected_type": "not_cached"},
        ],
    ),
    Case(
        "req-max-stale",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"]],
                "setup": True,
                "pause_after": True,
            },
            {"request_headers": [["Cache-Control", "max-stale=60"]], "expected_type": "cached"},
        ],
    ),
    Case(
        "req-min-fresh",
        [
            fresh(),
            {
                "request_headers": [["Cache-Control", "min-fresh=200000"]],
                "expected_type": "not_cached",
            },
        ],
    ),
    Case(
        "req-pragma-no-cache",
        [fresh(), {"request_headers": [["Pragma", "no-cache"]], "expected_type": "cached"}],
    ),
]


@cases(*[c for c in PROBES3 if not c.id.startswith("partial-then")])
def test_probe3(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


class _NoRetryCheck(SuiteRunner):
    """The suite's 'retry' setup check fails whenever the origin sees a request twice; a
    slicing cache asks for the first slice, then the whole object when an origin's 206 does
    not match it (README). These probes only judge what the client gets."""

    def _check_response(self, uuid: str, requests: list[Config], idx: int, response: Any) -> None:
        headers = response.headers
        if "request-numbers" in headers:
            del headers["request-numbers"]
        super()._check_response(uuid, requests, idx, response)

    def _check_server_requests(
        self, requests: list[Config], responses: list[Any], server_state: list[Any]
    ) -> None:
        pass  # the origin saw more requests than the client made (above)


@cases(*[c for c in PROBES3 if c.id.startswith("partial-then")])
def test_partial_bytes(runner: SuiteRunner, case: Case) -> None:
    runner = _NoRetryCheck(runner.origin, runner.url, runner.client, runner.clock)
    runner.run(case.requests, real_pause=case.real_pause)


PROBES4 = [
    # heuristic freshness (RFC 9111 4.2.2): 10% of Date - Last-Modified, never over explicit info
    Case("heuristic-short-expires", _one_then([["Last-Modified", -10], ["Date", 0]], "not_cached")),
    Case(
        "heuristic-not-with-invalid-expires",
        _one_then([["Expires", "0", False], ["Last-Modified", -100000], ["Date", 0]], "not_cached"),
    ),
    Case(
        "heuristic-not-with-max-age-0",
        _one_then(
            [["Cache-Control", "max-age=0"], ["Last-Modified", -100000], ["Date", 0]], "not_cached"
        ),
    ),
    Case(
        "heuristic-not-with-no-cache",
        _one_then(
            [["Cache-Control", "no-cache"], ["Last-Modified", -100000], ["Date", 0]], "not_cached"
        ),
    ),
    Case(
        "heuristic-not-with-past-expires",
        _one_then([["Expires", -1], ["Last-Modified", -100000], ["Date", 0]], "not_cached"),
    ),
    Case(
        "heuristic-not-with-bad-max-age",
        _one_then(
            [["Cache-Control", "max-age=-1"], ["Last-Modified", -100000], ["Date", 0]], "not_cached"
        ),
    ),
    Case("heuristic-lm-no-date", _one_then([["Last-Modified", -100000]], "cached")),
    # apparent age (RFC 9111 4.2.3)
    Case(
        "apparent-age-date-old",
        _one_then([["Cache-Control", "max-age=3600"], ["Date", -7200]], "not_cached"),
    ),
    Case(
        "apparent-age-expires-date-old",
        _one_then([["Expires", -5000], ["Date", -10000]], "not_cached"),
    ),
    Case("date-future-expires", _one_then([["Expires", 7200], ["Date", 3600]], "cached")),
    # combos
    Case(
        "s-maxage-private", _one_then([["Cache-Control", "s-maxage=3600, private"]], "not_cached")
    ),
    Case(
        "s-maxage-no-cache", _one_then([["Cache-Control", "s-maxage=3600, no-cache"]], "not_cached")
    ),
    Case(
        "max-age-dup-same", _one_then([["Cache-Control", "max-age=3600, max-age=3600"]], "cached")
    ),
    Case("max-age-empty", _one_then([["Cache-Control", "max-age="]], "not_cached")),
    Case(
        "max-age-no-value-lm",
        _one_then(
            [["Cache-Control", "max-age"], ["Last-Modified", -100000], ["Date", 0]], "not_cached"
        ),
    ),
    # revalidation (RFC 9111 4.3.1)
    Case(
        "reval-lm",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1"],
                    ["Last-Modified", "Sat, 01 Jan 2000 00:00:00 GMT"],
                    ["Date", 0],
                ],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Last-Modified", "Sat, 01 Jan 2000 00:00:00 GMT"],
                    ["Date", 0],
                ],
                "expected_type": "lm_validated",
                "expected_status": 200,
            },
        ],
    ),
    Case(
        "reval-then-fresh",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"e"']],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"e"']],
                "expected_type": "etag_validated",
                "setup": True,
            },
            {"expected_type": "cached"},
        ],
    ),
    Case(
        "reval-200-replaces",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"e"']],
                "response_body": "old",
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"f"']],
                "response_body": "new",
                "setup": True,
            },
            {"expected_type": "cached", "expected_response_text": "new"},
        ],
    ),
    Case(
        "client-inm-stale-reval-304",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"e"']],
                "setup": True,
                "pause_after": True,
            },
            {
                "request_headers": [["If-None-Match", '"e"']],
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"e"']],
                "expected_type": "etag_validated",
                "expected_status": 304,
            },
        ],
    ),
    Case(
        "req-no-cache-reval",
        [
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"e"']],
                "setup": True,
            },
            {
                "request_headers": [["Cache-Control", "no-cache"]],
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"e"']],
                "expected_type": "etag_validated",
                "expected_status": 200,
            },
        ],
    ),
    # If-Match / If-Range strong comparison (RFC 9110 8.8.3.2, 13.1.1, 13.1.5)
    Case(
        "if-match-weak-stored",
        [
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", 'W/"abc"']],
                "setup": True,
            },
            {
                "request_headers": [["If-Match", 'W/"abc"']],
                "expected_status": 412,
                "check_body": False,
            },
        ],
    ),
    Case(
        "if-match-strong-ok",
        [
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"abc"']],
                "setup": True,
            },
            {
                "request_headers": [["If-Match", '"abc"']],
                "expected_status": 200,
                "expected_type": "cached",
            },
        ],
    ),
    Case(
        "if-unmodified-since-fail",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Last-Modified", 0],
                    ["Date", 0],
                ],
                "setup": True,
                "pause_after": True,
            },
            {
                "request_headers": [["If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"]],
                "expected_status": 412,
                "check_body": False,
            },
        ],
    ),
    Case(
        "range-if-range-date",
        _range(
            [["Range", "bytes=0-1"], ["If-Range", "Sat, 01 Jan 2000 00:00:00 GMT"]],
            206,
            "01",
            resp=[
                ["Cache-Control", "max-age=3600"],
                ["Last-Modified", "Sat, 01 Jan 2000 00:00:00 GMT"],
                ["Date", 0],
            ],
        ),
    ),
    Case(
        "range-if-range-date-old",
        _range(
            [["Range", "bytes=0-1"], ["If-Range", "Sat, 01 Jan 2000 00:00:00 GMT"]], 200, RANGE_BODY
        ),
    ),
    Case(
        "range-if-range-date-weak-lm",
        _range(
            # RFC 9110 13.1.5: a Last-Modified not 1 s older than Date is weak; no range.
            [["Range", "bytes=0-1"], ["If-Range", "Sat, 01 Jan 2000 00:00:00 GMT"]],
            200,
            RANGE_BODY,
            resp=[
                ["Cache-Control", "max-age=2147483648"],
                ["Last-Modified", "Sat, 01 Jan 2000 00:00:00 GMT"],
                ["Date", "Sat, 01 Jan 2000 00:00:00 GMT"],
            ],
        ),
    ),
    Case(
        "range-head",
        [
            {"response_headers": FRESH_ETAG, "response_body": RANGE_BODY, "setup": True},
            {
                "request_method": "HEAD",
                "expected_type": "cached",
                "expected_response_headers": [["Content-Length", "16"]],
            },
        ],
    ),
    # RFC 9110 14.2: ranges separated by a small gap, or overlapping, may be coalesced.
    Case(
        "range-multi-coalesced",
        _range([["Range", "bytes=0-1,4-5"]], 206, "012345", [["Content-Range", "bytes 0-5/16"]]),
    ),
    Case("range-overlapping-many", _range([["Range", "bytes=0-1,0-1,0-1"]], 206, "01")),
    Case("range-space", _range([["Range", "bytes= 2-5"]], 206, "2345")),
    Case("range-bytes-uppercase", _range([["Range", "Bytes=2-5"]], 206, "2345")),
    # Content-Location absolute same-origin invalidation
]


@cases(*PROBES4)
def test_probe4(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


PROBES5 = [
    Case(
        "must-understand-unknown-status",
        _status(599, "W", [["Cache-Control", "max-age=3600, must-understand"]], "not_cached"),
    ),
    Case(
        "must-understand-200",
        _status(200, "OK", [["Cache-Control", "max-age=3600, must-understand"]], "cached"),
    ),
    Case("private-upper", _one_then([["Cache-Control", "max-age=3600, PRIVATE"]], "not_cached")),
    Case(
        "public-then-private",
        _one_then([["Cache-Control", "public, max-age=3600, private"]], "not_cached"),
    ),
    Case("lm-equals-date", _one_then([["Last-Modified", 0], ["Date", 0]], "not_cached")),
    Case(
        "post-fresh-not-for-get",
        [
            {
                "request_method": "POST",
                "request_body": "abc",
                "response_headers": FRESH_H,
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "put-fresh-not-for-get",
        [
            {
                "request_method": "PUT",
                "request_body": "abc",
                "response_headers": FRESH_H,
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "options-fresh-not-for-get",
        [
            {
                "request_method": "OPTIONS",
                "response_headers": FRESH_H,
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
    Case(
        "invalidate-all-variants",
        [
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "setup": True,
            },
            {
                "request_headers": [["Foo", "2"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "setup": True,
            },
            {"request_method": "POST", "request_body": "abc", "setup": True},
            {"request_headers": [["Foo", "1"]], "expected_type": "not_cached"},
            {"request_headers": [["Foo", "2"]], "expected_type": "not_cached"},
        ],
    ),
    Case(
        "invalidate-query",
        [
            {"query_arg": "a=1", "response_headers": FRESH_H, "setup": True},
            {"query_arg": "a=1", "request_method": "POST", "request_body": "abc", "setup": True},
            {"query_arg": "a=1", "expected_type": "not_cached"},
        ],
    ),
    Case(
        "no-invalidate-other-query",
        [
            {"query_arg": "a=1", "response_headers": FRESH_H, "setup": True},
            {"query_arg": "a=2", "request_method": "POST", "request_body": "abc", "setup": True},
            {"query_arg": "a=1", "expected_type": "cached"},
        ],
    ),
    Case(
        "invalidate-head-stored",
        [
            fresh(),
            {"request_method": "DELETE", "setup": True},
            {"request_method": "HEAD", "expected_type": "not_cached"},
        ],
    ),
    Case(
        "range-miss-no-store",
        [
            {
                "request_headers": [["Range", "bytes=2-5"]],
                "response_headers": [["Cache-Control", "no-store"]],
                "response_body": RANGE_BODY,
                "expected_status": None,
                "check_body": False,
                "setup": True,
            },
        ],
    ),
    Case(
        "range-miss-stored-then-hit",
        [
            {
                "request_headers": [["Range", "bytes=2-5"]],
                "response_headers": [["Cache-Control", "max-age=3600"]],
                "response_body": RANGE_BODY,
                "expected_status": 206,
                "expected_response_text": "2345",
            },
            {"expected_type": "cached", "response_body": RANGE_BODY},
        ],
    ),
    Case(
        "sie-503",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, stale-if-error=60"]],
                "setup": True,
                "pause_after": True,
            },
            {"response_status": [503, "SU"], "expected_status": 200, "expected_type": "cached"},
        ],
    ),
    Case(
        "sie-disconnect",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1, stale-if-error=60"]],
                "setup": True,
                "pause_after": True,
            },
            {"disconnect": True, "expected_status": 200, "expected_type": "cached"},
        ],
    ),
    Case(
        "req-only-if-cached-stale",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"]],
                "setup": True,
                "pause_after": True,
            },
            {
                "request_headers": [["Cache-Control", "only-if-cached"]],
                "expected_status": 504,
                "check_body": False,
            },
        ],
    ),
    Case(
        "age-invalid-on-hit",
        [
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["Age", "abc", False]],
                "setup": True,
                "pause_after": True,
            },
            {"expected_type": "cached", "expected_response_headers": [["Age", ">", 2]]},
        ],
    ),
]


@cases(*PROBES5)
def test_probe5(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


VARY_ETAG: list[list[Any]] = [["Cache-Control", "max-age=5000"], ["Vary", "Foo"], ["ETag", '"a"']]

PROBES6 = [
    Case(
        "inm-other-variant-not-304",
        [
            {"request_headers": [["Foo", "1"]], "response_headers": VARY_ETAG, "setup": True},
            {
                "request_headers": [["Foo", "2"], ["If-None-Match", '"a"']],
                "expected_type": "not_cached",
                "expected_status": 200,
            },
        ],
    ),
    Case(
        "inm-304-has-vary",
        [
            {"request_headers": [["Foo", "1"]], "response_headers": VARY_ETAG, "setup": True},
            {
                "request_headers": [["Foo", "1"], ["If-None-Match", '"a"']],
                "expected_type": "cached",
                "expected_status": 304,
                "expected_response_headers": [["Vary", "Foo"], ["ETag", '"a"']],
            },
        ],
    ),
    Case(
        "range-other-variant",
        [
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": VARY_ETAG,
                "response_body": "AAAAAAAAAA",
                "setup": True,
            },
            {
                "request_headers": [["Foo", "2"], ["Range", "bytes=0-1"]],
                "response_headers": VARY_ETAG,
                "response_body": "BBBBBBBBBB",
                "expected_response_text": "BB",
                "expected_status": 206,
            },
        ],
    ),
    Case(
        "vary-changes",
        [
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "response_body": "A",
                "setup": True,
            },
            {
                "request_headers": [["Foo", "2"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Bar"]],
                "response_body": "B",
                "setup": True,
            },
            {
                "request_headers": [["Foo", "2"], ["Bar", "x"]],
                "expected_type": "not_cached",
                "response_body": "C",
            },
        ],
    ),
    Case("range-inm-304", _cond([["If-None-Match", '"abc"'], ["Range", "bytes=0-1"]], 304)),
    Case(
        "req-max-age-older",
        [
            fresh(),
            {"request_headers": [["Cache-Control", "max-age=1"]], "expected_type": "not_cached"},
        ],
    ),
    Case(
        "req-max-age-younger",
        [
            fresh(),
            {"request_headers": [["Cache-Control", "max-age=100"]], "expected_type": "cached"},
        ],
    ),
    Case(
        "no-cache-revalidates",
        [
            {
                "response_headers": [["Cache-Control", "max-age=3600, no-cache"], ["ETag", '"n"']],
                "setup": True,
            },
            {
                "response_headers": [["Cache-Control", "max-age=3600, no-cache"], ["ETag", '"n"']],
                "expected_type": "etag_validated",
            },
        ],
    ),
    Case(
        "expires-epoch",
        _one_then([["Expires", "Thu, 01 Jan 1970 00:00:00 GMT", False]], "not_cached"),
    ),
    Case(
        "expires-9999", _one_then([["Expires", "Fri, 31 Dec 9999 23:59:59 GMT", False]], "cached")
    ),
    Case(
        "expires-2-digit-year-rfc850",
        _one_then([["Expires", "Sunday, 06-Nov-94 08:49:37 GMT", False]], "not_cached"),
    ),
    Case(
        "swr-serves-stale-then-refreshes",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1, stale-while-revalidate=3600"],
                    ["ETag", '"s"'],
                ],
                "response_body": "one",
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"t"']],
                "response_body": "two",
                "expected_type": "cached",
                "expected_response_text": "one",
                "pause_after": True,
            },
            {"expected_type": "cached", "expected_response_text": "two"},
        ],
    ),
]


@cases(*PROBES6)
def test_probe6(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


@pytest.mark.parametrize("authority", ["origin", "cache"])
def test_invalidate_absolute_content_location(
    runner: SuiteRunner, request: pytest.FixtureRequest, authority: str
) -> None:
    """RFC 9111 4.4: an absolute same-origin Content-Location is invalidated. The origin
    sees the upstream authority (the Host this proxy sends it), so that is the one its
    absolute URIs carry; the client-facing authority is another origin to this cache
    (RFC 9111 4.4 makes Location/Content-Location invalidation a MAY)."""
    import uuid as uuidlib

    base = request.getfixturevalue("scripted")[1] if authority == "origin" else runner.url
    uid = str(uuidlib.uuid4())
    runner.origin.configure(
        uid,
        [
            {"response_headers": FRESH_H},
            {"response_headers": [["Content-Location", f"{base}/test/{uid}/target"]]},
            {"response_headers": FRESH_H},
        ],
    )
    target = f"{runner.url}/test/{uid}/target"
    assert runner.client.get(target, headers={"Req-Num": "1"}).status_code == 200
    post = runner.client.post(f"{runner.url}/test/{uid}", headers={"Req-Num": "2"}, content=b"a")
    assert post.status_code == 200
    again = runner.client.get(target, headers={"Req-Num": "3"})
    assert again.headers.get("server-request-count") == ("3" if authority == "origin" else "1")


PROBES7 = [
    Case(
        "request-connection-listed-not-forwarded",
        [
            {
                "request_headers": [
                    ["Connection", "keep-alive, X-Foo"],
                    ["X-Foo", "1"],
                    ["Keep-Alive", "timeout=5"],
                    ["TE", "trailers"],
                    ["Proxy-Connection", "keep-alive"],
                ],
                "expected_request_headers_missing": [
                    "X-Foo",
                    "Keep-Alive",
                    "TE",
                    "Proxy-Connection",
                ],
                "setup_tests": [],
            }
        ],
    ),
    Case(
        "request-via-added",
        [{"expected_request_headers": ["Via"]}],
    ),
    Case(
        "head-miss-then-get",
        [
            {"request_method": "HEAD", "response_headers": FRESH_H, "setup": True},
            {"expected_status": 200},
        ],
    ),
    Case(
        "update304-content-type",
        [
            {
                "response_headers": [
                    ["Cache-Control", "max-age=1"],
                    ["ETag", '"u"'],
                    ["Content-Type", "text/plain"],
                ],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["ETag", '"u"'],
                    ["Content-Type", "text/html"],
                ],
                "expected_type": "etag_validated",
                "setup": True,
            },
            {
                "expected_type": "cached",
                "expected_response_headers": [["Content-Type", "text/html"]],
            },
        ],
    ),
    Case(
        "update304-etag-differs",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"u"'], ["X-A", "1"]],
                "response_body": "old",
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["ETag", '"u"'],
                    ["X-A", "2"],
                ],
                "expected_type": "etag_validated",
                "expected_response_text": "old",
                "setup": True,
            },
        ],
    ),
]


@cases(*PROBES7)
def test_probe7(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


PROBES8 = [
    Case(
        "etag-only-revalidated",
        [
            {"response_headers": [["ETag", '"o"']], "setup": True},
            {"response_headers": [["ETag", '"o"']], "expected_type": "etag_validated"},
        ],
    ),
    Case(
        "vary-invalid-space",
        _vary([["Foo", "1"]], [["Foo", "2"]], [["Vary", "Foo Bar", False]], "not_cached"),
    ),
    Case(
        "vary-invalid-semicolon",
        _vary([["Foo", "1"]], [["Foo", "2"]], [["Vary", "Foo;", False]], "not_cached"),
    ),
    Case(
        "vary-invalid-quoted",
        _vary([["Foo", "1"]], [["Foo", "2"]], [["Vary", '"Foo"', False]], "not_cached"),
    ),
    Case(
        "ims-no-lm-uses-date",
        [
            {"response_headers": [["Cache-Control", "max-age=3600"], ["Date", -10]], "setup": True},
            {
                "request_headers": [["If-Modified-Since", 0]],
                "magic_ims": True,
                "expected_type": "cached",
                "expected_status": 304,
            },
        ],
    ),
]


@cases(*PROBES8)
def test_probe8(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


PROBES9 = [
    Case(
        "vary-revalidate-variant",
        [
            {
                "request_headers": [["Foo", "2"]],
                "response_headers": [
                    ["Cache-Control", "max-age=1"],
                    ["Vary", "Foo"],
                    ["ETag", '"v2"'],
                ],
                "response_body": "two",
                "setup": True,
            },
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": [
                    ["Cache-Control", "max-age=1"],
                    ["Vary", "Foo"],
                    ["ETag", '"v1"'],
                ],
                "response_body": "one",
                "setup": True,
                "pause_after": True,
            },
            # The scripted origin validates against the previous answer's ETag: "v1".
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["Vary", "Foo"],
                    ["ETag", '"v1"'],
                ],
                "expected_type": "etag_validated",
                "expected_response_text": "one",
                "setup": True,
            },
            {
                "request_headers": [["Foo", "1"]],
                "expected_type": "cached",
                "expected_response_text": "one",
            },
        ],
    ),
    Case(
        "stale-range-revalidated",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"r"']],
                "response_body": RANGE_BODY,
                "setup": True,
                "pause_after": True,
            },
            {
                "request_headers": [["Range", "bytes=2-5"]],
                "response_headers": [["Cache-Control", "max-age=3600"], ["ETag", '"r"']],
                "expected_type": "etag_validated",
                "expected_status": 206,
                "expected_response_text": "2345",
            },
        ],
    ),
    Case(
        "heuristic-age-exceeds",
        _one_then([["Last-Modified", -100000], ["Date", 0], ["Age", "20000"]], "not_cached"),
    ),
    Case(
        "s-maxage-age-exceeds",
        _one_then([["Cache-Control", "s-maxage=3600"], ["Age", "7200"]], "not_cached"),
    ),
    Case(
        "no-invalidate-location-on-error",
        [
            _loc("location_target", setup=True),
            _lcl("POST", [404, "Not Found"]),
            _loc("location_target", expected_type="cached"),
        ],
    ),
]


@cases(*PROBES9)
def test_probe9(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


# RFC 9211 2.2: fwd says why the request went forward: "stale" when a stored response was
# selected but stale, "request" when the client forced it, "vary-miss" when only other
# variants were stored, "uri-miss" when nothing was stored for the URI.
CACHE_STATUS = [
    Case(
        "cache-status-stale-refetched",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"a"']],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"b"']],
                "expected_response_headers": [
                    ["Cache-Status", "slicecache; fwd=stale; fwd-status=200; stored"]
                ],
            },
        ],
    ),
    Case(
        "cache-status-request-forced",
        [
            {"response_headers": FRESH_H, "setup": True},
            {
                "request_headers": [["Cache-Control", "no-cache"]],
                "response_headers": FRESH_H,
                "expected_response_headers": [
                    ["Cache-Status", "slicecache; fwd=request; fwd-status=200; stored"]
                ],
            },
        ],
    ),
    Case(
        "cache-status-vary-miss",
        [
            {
                "request_headers": [["Foo", "1"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "setup": True,
            },
            {
                "request_headers": [["Foo", "2"]],
                "response_headers": [["Cache-Control", "max-age=5000"], ["Vary", "Foo"]],
                "expected_response_headers": [
                    ["Cache-Status", "slicecache; fwd=vary-miss; fwd-status=200; stored"]
                ],
            },
        ],
    ),
    Case(
        "cache-status-uri-miss",
        [
            {
                "response_headers": FRESH_H,
                "expected_response_headers": [
                    ["Cache-Status", "slicecache; fwd=uri-miss; fwd-status=200; stored"]
                ],
            }
        ],
    ),
]


@cases(*CACHE_STATUS)
def test_cache_status_fwd(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)


PROBES10 = [
    Case(
        "public-invalid-expires",
        _one_then(
            [
                ["Cache-Control", "public"],
                ["Expires", "0", False],
                ["Last-Modified", -100000],
                ["Date", 0],
            ],
            "not_cached",
        ),
    ),
    Case(
        "update304-vary-star",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"v"']],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [
                    ["Cache-Control", "max-age=3600"],
                    ["ETag", '"v"'],
                    ["Vary", "*"],
                ],
                "expected_type": "etag_validated",
                "setup": True,
            },
            {"expected_type": "not_cached"},
        ],
    ),
]


PROBES10.append(
    Case(
        "update304-no-store",
        [
            {
                "response_headers": [["Cache-Control", "max-age=1"], ["ETag", '"u"']],
                "setup": True,
                "pause_after": True,
            },
            {
                "response_headers": [["Cache-Control", "no-store"], ["ETag", '"u"']],
                "expected_type": "etag_validated",
                "setup": True,
            },
            {"expected_type": "not_cached"},
        ],
    )
)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in PROBES10],
)
def test_probe10(runner: SuiteRunner, case: Case) -> None:
    runner.run(case.requests, real_pause=case.real_pause)
