"""Freshness, age and reuse decisions (RFC 9111 4.2, 4.2.4, 5.2; RFC 5861)."""

from __future__ import annotations

from app.httpcache.cache_control import CacheControl, parse_cache_control
from app.httpcache.dates import format_http_date
from app.httpcache.freshness import (
    FreshnessPolicy,
    Lifetime,
    Outcome,
    RequestVerdict,
    StoredResponseInfo,
    can_serve_stale,
    current_age,
    decide,
    freshness_lifetime,
    is_fresh,
    on_miss,
    request_allows,
    stale_if_error_window,
)

H = list[tuple[str, str]]
T0 = 1_700_000_000.0  # when the stored response was received; an arbitrary instant
DATE: H = [("date", format_http_date(T0))]


def cc(value: str) -> H:
    return [("cache-control", value)]


def stored(headers: H, *, status: int = 200) -> StoredResponseInfo:
    return StoredResponseInfo(status=status, headers=headers, request_time=T0, response_time=T0)


# --- 4.2.1 freshness lifetime -------------------------------------------------------------


def test_4_2_1_s_maxage_wins_in_a_shared_cache_only() -> None:
    headers = cc("max-age=10, s-maxage=20")
    assert freshness_lifetime(headers) == Lifetime(20, "s-maxage")
    assert freshness_lifetime(headers, shared=False) == Lifetime(10, "max-age")


def test_5_3_max_age_overrides_expires() -> None:
    headers = cc("max-age=10") + DATE + [("expires", format_http_date(T0 + 999))]
    assert freshness_lifetime(headers) == Lifetime(10, "max-age")


def test_4_2_1_expires_minus_date() -> None:
    headers = DATE + [("expires", format_http_date(T0 + 300))]
    assert freshness_lifetime(headers) == Lifetime(300, "expires")


def test_4_2_1_expires_without_date_uses_the_receive_time() -> None:
    headers: H = [("expires", format_http_date(T0 + 300))]
    assert freshness_lifetime(headers, response_time=T0) == Lifetime(300, "expires")


def test_5_3_invalid_expires_means_already_expired() -> None:
    for value in ("0", "-1", "never"):
        headers = DATE + [("expires", value)]
        assert freshness_lifetime(headers, default_ttl=999) == Lifetime(0, "expires")


def test_4_2_1_conflicting_expires_lines_mean_stale() -> None:
    headers = DATE + [
        ("expires", format_http_date(T0 + 300)),
        ("expires", format_http_date(T0 + 600)),
    ]
    assert freshness_lifetime(headers).seconds == 0


def test_expires_in_the_past_is_zero_not_negative() -> None:
    headers = DATE + [("expires", format_http_date(T0 - 300))]
    assert freshness_lifetime(headers) == Lifetime(0, "expires")


def test_4_2_2_heuristic_is_a_fraction_of_the_age_of_last_modified() -> None:
    headers = DATE + [("last-modified", format_http_date(T0 - 1000))]
    assert freshness_lifetime(headers) == Lifetime(100, "heuristic")
    assert freshness_lifetime(headers, heuristic_fraction=0.5).seconds == 500


def test_4_2_2_heuristic_is_capped() -> None:
    headers = DATE + [("last-modified", format_http_date(T0 - 10**8))]
    assert freshness_lifetime(headers, heuristic_max=3600) == Lifetime(3600, "heuristic")


def test_4_2_2_no_heuristics_for_status_not_heuristically_cacheable() -> None:
    headers = DATE + [("last-modified", format_http_date(T0 - 1000))]
    assert freshness_lifetime(headers, status=302, default_ttl=60) == Lifetime(0, "none")
    public = headers + cc("public")
    assert freshness_lifetime(public, status=302).source == "heuristic"


def test_default_ttl_only_when_heuristics_allowed_and_nothing_else() -> None:
    assert freshness_lifetime(DATE, default_ttl=3600) == Lifetime(3600, "default")
    assert freshness_lifetime(DATE, status=204, default_ttl=60) == Lifetime(60, "default")
    assert freshness_lifetime(DATE) == Lifetime(0, "none")
    assert freshness_lifetime(DATE, default_ttl=0) == Lifetime(0, "none")
    assert freshness_lifetime(DATE, status=500, default_ttl=3600) == Lifetime(0, "none")


def test_default_ttl_is_narrow_never_an_error_or_a_redirect() -> None:
    """The operator's override makes successes fresh, not a transient 404 (seen: one
    served for an hour) nor a redirect, even one the origin marked public."""
    for status in (301, 308, 404, 410, 500):
        assert freshness_lifetime(DATE, status=status, default_ttl=3600).source != "default"
    assert freshness_lifetime(DATE + cc("public"), status=500, default_ttl=60).seconds == 0


def test_4_2_1_invalid_max_age_is_stale_not_heuristic() -> None:
    headers = cc("max-age=banana") + DATE
    assert freshness_lifetime(headers, default_ttl=3600) == Lifetime(0, "max-age")


# --- 4.2.3 age ------------------------------------------------------------------------------


def test_4_2_3_age_header_plus_response_delay_plus_resident_time() -> None:
    headers = DATE + [("age", "30")]
    # request sent 2 s before the response arrived, and 10 s resident since.
    assert current_age(headers, T0 - 2, T0, T0 + 10) == 42


def test_4_2_3_apparent_age_from_a_date_in_the_past() -> None:
    headers: H = [("date", format_http_date(T0 - 100))]
    assert current_age(headers, T0, T0, T0 + 5) == 105


def test_4_2_3_date_in_the_future_does_not_make_age_negative() -> None:
    headers: H = [("date", format_http_date(T0 + 500))]
    assert current_age(headers, T0, T0, T0) == 0


def test_5_1_age_list_uses_first_member_invalid_is_ignored() -> None:
    assert current_age([("age", "7, 100")], T0, T0, T0) == 7
    assert current_age([("age", "-3")], T0, T0, T0) == 0
    assert current_age([("age", "soon")], T0, T0, T0) == 0


def test_age_is_rounded_down_so_fresh_means_lifetime_greater_than_age() -> None:
    assert current_age(DATE, T0, T0, T0 + 9.99) == 9
    assert is_fresh(10, 9) and not is_fresh(10, 10)


# --- 5.2.1 request directives -----------------------------------------------------------------


def test_5_2_1_4_request_no_cache_revalidates() -> None:
    assert request_allows(100, 0, parse_cache_control(["no-cache"])) is RequestVerdict.REVALIDATE


def test_5_2_1_1_request_max_age() -> None:
    assert request_allows(100, 5, parse_cache_control(["max-age=5"])) is RequestVerdict.FRESH_OK
    assert request_allows(100, 6, parse_cache_control(["max-age=5"])) is RequestVerdict.REVALIDATE
    # stale, max-age satisfied, but no max-stale: the client does not want stale
    assert request_allows(10, 20, parse_cache_control(["max-age=60"])) is RequestVerdict.REVALIDATE
    accepted = request_allows(10, 20, parse_cache_control(["max-age=60, max-stale"]))
    assert accepted is RequestVerdict.STALE_ACCEPTED


def test_5_2_1_3_min_fresh() -> None:
    min_fresh = parse_cache_control(["min-fresh=30"])
    assert request_allows(100, 70, min_fresh) is RequestVerdict.FRESH_OK
    assert request_allows(100, 71, min_fresh) is RequestVerdict.REVALIDATE


def test_5_2_1_2_max_stale() -> None:
    assert request_allows(10, 15, parse_cache_control(["max-stale=5"])) is (
        RequestVerdict.STALE_ACCEPTED
    )
    assert request_allows(10, 16, parse_cache_control(["max-stale=5"])) is (
        RequestVerdict.REVALIDATE
    )
    assert request_allows(10, 10**6, parse_cache_control(["max-stale"])) is (
        RequestVerdict.STALE_ACCEPTED
    )
    assert request_allows(10, 11, parse_cache_control([])) is RequestVerdict.NO_PREFERENCE


# --- stale serving (4.2.4, 5.2.2, RFC 5861) --------------------------------------------------


def test_4_2_4_stale_response_with_must_revalidate_ignores_max_stale() -> None:
    for forbidding in ("max-age=10, must-revalidate", "max-age=10, no-cache", "s-maxage=10"):
        outcome = can_serve_stale(10, 12, parse_cache_control([forbidding]), any_stale())
        assert outcome is Outcome.MUST_REVALIDATE, forbidding


def test_5_2_2_8_proxy_revalidate_only_binds_shared_caches() -> None:
    response = parse_cache_control(["max-age=10, proxy-revalidate"])
    assert can_serve_stale(10, 12, response, any_stale()) is Outcome.MUST_REVALIDATE
    assert can_serve_stale(10, 12, response, any_stale(), shared=False) is Outcome.STALE_OK


def test_5_2_2_10_s_maxage_with_explicit_swr_is_honoured_by_policy() -> None:
    response = parse_cache_control(["s-maxage=10, stale-while-revalidate=30"])
    no_pref = parse_cache_control([])
    assert can_serve_stale(10, 12, response, no_pref) is Outcome.STALE_WHILE_REVALIDATE
    strict = can_serve_stale(10, 12, response, no_pref, explicit_stale_overrides_s_maxage=False)
    assert strict is Outcome.MUST_REVALIDATE


def test_rfc5861_3_stale_while_revalidate_window() -> None:
    response = parse_cache_control(["max-age=10, stale-while-revalidate=30"])
    no_pref = parse_cache_control([])
    assert can_serve_stale(10, 39, response, no_pref) is Outcome.STALE_WHILE_REVALIDATE
    assert can_serve_stale(10, 40, response, no_pref) is Outcome.MUST_REVALIDATE
    # the client's own max-age forbids stale; SWR does not override the client
    strict_client = parse_cache_control(["max-age=60"])
    assert can_serve_stale(10, 12, response, strict_client) is Outcome.MUST_REVALIDATE


def test_rfc5861_4_stale_if_error_window() -> None:
    none = parse_cache_control([])
    sie = parse_cache_control(["max-age=10, stale-if-error=300"])
    assert stale_if_error_window(sie) == 300
    assert stale_if_error_window(parse_cache_control(["max-age=1"]), default=60) == 60
    assert stale_if_error_window(parse_cache_control(["max-age=1, must-revalidate"])) == 0
    assert stale_if_error_window(parse_cache_control(["s-maxage=1"]), default=60) == 0
    assert stale_if_error_window(parse_cache_control(["s-maxage=1, stale-if-error=9"])) == 9
    assert stale_if_error_window(parse_cache_control(["no-cache"]), default=60) is None
    client = parse_cache_control(["stale-if-error=900"])
    assert stale_if_error_window(sie, client) == 900
    assert stale_if_error_window(sie, none) == 300


def any_stale() -> CacheControl:
    return parse_cache_control(["max-stale"])


# --- decide -----------------------------------------------------------------------------------


def test_decide_fresh_then_stale() -> None:
    info = stored(DATE + cc("max-age=60"))
    fresh = decide(info, [], T0 + 59)
    assert fresh.outcome is Outcome.FRESH and fresh.ttl == 1 and fresh.serve_stored
    stale = decide(info, [], T0 + 60)
    assert stale.outcome is Outcome.MUST_REVALIDATE and stale.ttl == 0 and not stale.serve_stored


def test_decide_5_2_2_4_response_no_cache_always_revalidates() -> None:
    decision = decide(stored(DATE + cc("max-age=60, no-cache")), [], T0)
    assert decision.outcome is Outcome.MUST_REVALIDATE and decision.reason == "no-cache"
    assert decision.stale_if_error_until is None


def test_decide_qualified_no_cache_does_not_force_revalidation() -> None:
    decision = decide(stored(DATE + cc('max-age=60, no-cache="x-token"')), [], T0)
    assert decision.outcome is Outcome.FRESH


def test_decide_5_4_pragma_no_cache_revalidates_unless_policy_ignores_it() -> None:
    info = stored(DATE + cc("max-age=60"))
    assert decide(info, [("pragma", "no-cache")], T0).outcome is Outcome.MUST_REVALIDATE
    lax = FreshnessPolicy(honour_request_no_cache=False)
    assert decide(info, [("pragma", "no-cache")], T0, policy=lax).outcome is Outcome.FRESH


def test_decide_max_stale_serves_stale() -> None:
    decision = decide(stored(DATE + cc("max-age=60")), cc("max-stale=30"), T0 + 80)
    assert decision.outcome is Outcome.STALE_OK and decision.ttl == -20


def test_decide_stale_while_revalidate() -> None:
    info = stored(DATE + cc("max-age=60, stale-while-revalidate=30"))
    decision = decide(info, [], T0 + 70)
    assert decision.outcome is Outcome.STALE_WHILE_REVALIDATE
    assert decision.serve_stored and decision.revalidate_in_background


def test_5_2_1_7_only_if_cached() -> None:
    info = stored(DATE + cc("max-age=60"))
    assert decide(info, cc("only-if-cached"), T0).outcome is Outcome.FRESH
    miss = decide(info, cc("only-if-cached"), T0 + 100)
    assert miss.outcome is Outcome.ONLY_IF_CACHED_MISS and miss.error_status == 504
    assert on_miss(cc("only-if-cached")) == 504
    assert on_miss([]) is None


def test_decide_stale_if_error_deadline() -> None:
    info = stored(DATE + cc("max-age=60, stale-if-error=300"))
    decision = decide(info, [], T0 + 100)
    assert decision.outcome is Outcome.MUST_REVALIDATE
    assert decision.stale_if_error_until == T0 + 360
    assert decision.may_serve_on_error(T0 + 359)
    assert not decision.may_serve_on_error(T0 + 360)


def test_decide_operator_default_stale_if_error() -> None:
    info = stored(DATE + cc("max-age=60"))
    policy = FreshnessPolicy(default_stale_if_error=120)
    assert decide(info, [], T0 + 100, policy=policy).stale_if_error_until == T0 + 180
    strict = stored(DATE + cc("max-age=60, must-revalidate"))
    # must-revalidate: only while still fresh (a client-forced revalidation that fails)
    assert decide(strict, [], T0 + 100, policy=policy).stale_if_error_until == T0 + 60


def test_decide_default_ttl_comes_from_policy() -> None:
    policy = FreshnessPolicy(default_ttl=3600)
    decision = decide(stored(DATE), [], T0 + 100, policy=policy)
    assert decision.outcome is Outcome.FRESH and decision.lifetime == Lifetime(3600, "default")


def test_decide_uses_age_header_from_upstream_caches() -> None:
    info = stored(DATE + cc("max-age=60") + [("age", "55")])
    assert decide(info, [], T0 + 4).outcome is Outcome.FRESH
    assert decide(info, [], T0 + 5).outcome is Outcome.MUST_REVALIDATE
