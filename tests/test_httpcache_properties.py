"""Property tests of the freshness model (RFC 9111 4.2) over generated responses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.httpcache.cache_control import cache_control_of
from app.httpcache.dates import format_http_date
from app.httpcache.freshness import (
    FreshnessPolicy,
    Outcome,
    StoredResponseInfo,
    current_age,
    decide,
    freshness_lifetime,
    is_fresh,
)

H = list[tuple[str, str]]
T0 = 1_700_000_000

_DIRECTIVES = st.sampled_from(
    [
        "max-age=0",
        "max-age=60",
        "max-age=-1",
        "max-age=x",
        "s-maxage=30",
        "no-cache",
        'no-cache="set-cookie"',
        "must-revalidate",
        "proxy-revalidate",
        "public",
        "private",
        "stale-while-revalidate=20",
        "stale-if-error=100",
        "immutable",
        "max-age=99999999999999999999",
    ]
)
_REQUEST_DIRECTIVES = st.sampled_from(
    [
        "max-age=0",
        "max-age=30",
        "min-fresh=10",
        "max-stale",
        "max-stale=15",
        "no-cache",
        "only-if-cached",
        "stale-if-error=50",
    ]
)
_DATES = st.integers(T0 - 10**6, T0 + 10**4).map(format_http_date)
_GARBAGE = st.sampled_from(["0", "-1", "", "soon", "Sun, 31 Feb 1994 08:49:37 GMT"])


def _cache_control(directives: st.SearchStrategy[str]) -> st.SearchStrategy[H]:
    return st.lists(directives, max_size=4).map(
        lambda parts: [("cache-control", ", ".join(parts))] if parts else []
    )


_RESPONSE_HEADERS = st.builds(
    lambda cc, rest: cc + rest,
    _cache_control(_DIRECTIVES),
    st.lists(
        st.tuples(
            st.sampled_from(["date", "expires", "last-modified", "age"]),
            st.one_of(_DATES, _GARBAGE, st.integers(0, 10**6).map(str), st.text(max_size=10)),
        ),
        max_size=5,
    ),
)
_REQUEST_HEADERS = st.builds(
    lambda cc, pragma: cc + pragma,
    _cache_control(_REQUEST_DIRECTIVES),
    st.sampled_from([[], [("pragma", "no-cache")]]),
)
_STATUS = st.sampled_from([200, 206, 301, 302, 404, 500])
_POLICY = st.builds(
    FreshnessPolicy,
    shared=st.booleans(),
    default_ttl=st.one_of(st.none(), st.integers(0, 10**5)),
    default_stale_if_error=st.integers(0, 1000),
    honour_request_no_cache=st.booleans(),
    explicit_stale_overrides_s_maxage=st.booleans(),
)


@given(
    _RESPONSE_HEADERS,
    _STATUS,
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 10**6)),
    st.floats(0, 1),
)
def test_freshness_lifetime_is_never_negative(
    headers: H, status: int, shared: bool, default_ttl: int | None, fraction: float
) -> None:
    lifetime = freshness_lifetime(
        headers,
        status=status,
        shared=shared,
        default_ttl=default_ttl,
        heuristic_fraction=fraction,
        response_time=T0,
    )
    assert 0 <= lifetime.seconds <= 2**31


@given(
    _RESPONSE_HEADERS,
    st.floats(-100, 100),
    st.floats(0, 10**6),
    st.floats(0, 10**6),
)
def test_current_age_at_least_age_header_and_monotonic_in_now(
    headers: H, request_offset: float, later: float, more: float
) -> None:
    """4.2.3: the age never goes below what upstream caches said, never goes back."""
    age_header = next((v for k, v in headers if k == "age"), None)
    first = current_age(headers, T0 + request_offset, T0, T0 + later)
    second = current_age(headers, T0 + request_offset, T0, T0 + later + more)
    assert 0 <= first <= second
    if age_header is not None and age_header.strip().isdigit():
        assert first >= min(int(age_header), 2**31)


@given(_RESPONSE_HEADERS, _STATUS, _REQUEST_HEADERS, _POLICY, st.integers(-50, 10**5))
def test_once_stale_stays_stale(
    headers: H, status: int, request: H, policy: FreshnessPolicy, step: int
) -> None:
    """is_fresh / decide are monotonic in now: nothing becomes fresher by waiting."""
    info = StoredResponseInfo(status, headers, T0, T0)
    times = [T0 + step, T0 + step + 1, T0 + step + 60, T0 + step + 10**5]
    decisions = [decide(info, request, now, policy=policy) for now in times]
    fresh = [is_fresh(d.lifetime.seconds, d.age) for d in decisions]
    served = [d.serve_stored for d in decisions]
    assert fresh == sorted(fresh, reverse=True)
    assert served == sorted(served, reverse=True)
    for earlier, later in zip(decisions, decisions[1:], strict=False):
        assert later.ttl <= earlier.ttl
        if earlier.outcome is not Outcome.FRESH:
            assert later.outcome is not Outcome.FRESH


@given(_RESPONSE_HEADERS, _STATUS, _REQUEST_HEADERS, _POLICY, st.integers(0, 10**5))
def test_stale_if_error_deadline_does_not_drift_with_now(
    headers: H, status: int, request: H, policy: FreshnessPolicy, step: int
) -> None:
    info = StoredResponseInfo(status, headers, T0, T0)
    first = decide(info, request, T0, policy=policy)
    later = decide(info, request, T0 + step, policy=policy)
    assert first.stale_if_error_until == later.stale_if_error_until
    if first.stale_if_error_until is not None:
        assert first.stale_if_error_until >= T0 + first.ttl


@given(_RESPONSE_HEADERS, _STATUS, _REQUEST_HEADERS, _POLICY, st.integers(0, 10**5))
def test_decide_respects_the_hard_rules(
    headers: H, status: int, request: H, policy: FreshnessPolicy, step: int
) -> None:
    info = StoredResponseInfo(status, headers, T0, T0)
    decision = decide(info, request, T0 + step, policy=policy)
    response_cc = cache_control_of(headers)
    fresh = is_fresh(decision.lifetime.seconds, decision.age)
    if decision.outcome is Outcome.FRESH:
        assert fresh
    if decision.serve_stored and not fresh:
        # 4.2.4: never serve stale against must-revalidate / no-cache
        assert not response_cc.must_revalidate and not response_cc.no_cache_all
        if policy.shared:
            assert not response_cc.proxy_revalidate
    if response_cc.no_cache_all:
        assert decision.outcome in (Outcome.MUST_REVALIDATE, Outcome.ONLY_IF_CACHED_MISS)
    if decision.outcome is Outcome.ONLY_IF_CACHED_MISS:
        assert decision.error_status == 504
