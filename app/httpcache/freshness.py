"""Freshness, age and the reuse decision of a shared cache (RFC 9111 section 4.2, RFC 5861).

Times are POSIX timestamps in seconds (floats welcome); ``now`` is always a parameter.
Ages and lifetimes are whole seconds (``int``), with ages rounded down, so that
"fresh" is exactly ``lifetime > age`` (4.2) on the real-valued age.

The building blocks are usable one by one — :func:`freshness_lifetime`,
:func:`current_age`, :func:`is_fresh`, :func:`request_allows`, :func:`can_serve_stale`,
:func:`stale_if_error_window` — and :func:`decide` composes them into one
:class:`ServeDecision` for a stored response and a new request.

Policy decisions (see :class:`FreshnessPolicy`):

* ``s-maxage`` implies ``proxy-revalidate`` in a shared cache (5.2.2.10), so a stale
  response with ``s-maxage`` is never served on the client's ``max-stale`` nor on the
  operator's default stale-if-error window. An *explicit* ``stale-while-revalidate`` or
  ``stale-if-error`` from the origin next to ``s-maxage`` is honoured (the more specific
  statement of the origin's intent, and what CDNs do); set
  ``explicit_stale_overrides_s_maxage=False`` for the strict reading.
* ``must-revalidate``, ``proxy-revalidate`` and unqualified ``no-cache`` are never
  overridden (4.2.4: a cache MUST NOT generate a stale response they prohibit).
* A response that is still fresh may be served when a revalidation forced by the client
  fails (4.3.3), except with ``no-cache``: :attr:`ServeDecision.stale_if_error_until`
  is then at least the expiry time.
* Windows (``stale-while-revalidate``, ``stale-if-error``) of W seconds cover the W
  seconds after expiry: staleness ``< W``. ``max-stale=N`` accepts staleness ``<= N``
  ("exceeded by no more than N").

One module (~580 lines) on purpose: RFC 9111 section 4.2 as pure functions, and the
prepared form of the same decision that hits use beside it, so that the two cannot drift
(a property test holds them equal).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from ._fields import DELTA_SECONDS_MAX, Headers, get_all, parse_delta_seconds, split_list
from .cache_control import CacheControl, cache_control_of, request_cache_control
from .dates import parse_http_date
from .storable import is_heuristically_cacheable
from .targeted import CDN_CACHE_CONTROL, effective_headers

__all__ = [
    "FreshnessPolicy",
    "Lifetime",
    "LifetimeSource",
    "Outcome",
    "RequestVerdict",
    "PreparedFreshness",
    "ServeDecision",
    "StoredAge",
    "StoredResponseInfo",
    "can_serve_stale",
    "current_age",
    "decide",
    "decide_prepared",
    "freshness_lifetime",
    "is_fresh",
    "on_miss",
    "prepare_freshness",
    "request_allows",
    "stale_if_error_window",
]

LifetimeSource = Literal["s-maxage", "max-age", "expires", "heuristic", "default", "none"]

GATEWAY_TIMEOUT = 504

DEFAULT_TTL_STATUSES: frozenset[int] = frozenset({200, 203, 204})
"""Statuses the operator's ``default_ttl`` may make fresh: successes only, so that a
transient 404 or a redirect the origin said nothing about is never pinned for the TTL."""


@dataclass(frozen=True)
class Lifetime:
    """A freshness lifetime in whole seconds (never negative) and where it came from."""

    seconds: int
    source: LifetimeSource

    @property
    def explicit(self) -> bool:
        """True when the origin stated it (s-maxage, max-age or Expires)."""
        return self.source in ("s-maxage", "max-age", "expires")


def _single_date(headers: Headers, name: str) -> tuple[bool, int | None]:
    """(present, timestamp) of a singleton date field; conflicting lines are invalid."""
    values = [value.strip(" \t") for value in get_all(headers, name)]
    if not values:
        return False, None
    if len(set(values)) > 1:
        return True, None
    return True, parse_http_date(values[0])


def _date_value(headers: Headers, response_time: float | None) -> float | None:
    _, date = _single_date(headers, "date")
    if date is not None:
        return float(date)
    # RFC 9110 6.6.1: a message without Date was generated when it was received.
    return response_time


def freshness_lifetime(
    response_headers: Headers,
    *,
    status: int = 200,
    shared: bool = True,
    heuristic_fraction: float = 0.1,
    heuristic_max: int = 86400,
    default_ttl: int | None = None,
    response_time: float | None = None,
) -> Lifetime:
    """The freshness lifetime of a response (RFC 9111 4.2.1, first match wins).

    1. ``s-maxage`` (shared caches only);
    2. ``max-age``;
    3. ``Expires - Date``; an invalid Expires (e.g. ``0``) or two different Expires
       mean already expired (5.3); without Date, ``response_time`` stands in for it;
    4. only when heuristics are allowed — no explicit freshness, and a heuristically
       cacheable status (RFC 9110 15.1) or ``public`` (4.2.2) —
       ``heuristic_fraction * (Date - Last-Modified)`` capped at ``heuristic_max``;
    5. then, for a 200, 203 or 204 only (:data:`DEFAULT_TTL_STATUSES`), ``default_ttl``:
       the operator's explicit "origin said nothing" lifetime (nginx ``proxy_cache_valid``,
       Varnish ``default_ttl``); ``None`` or ``0`` is RFC 9111's answer, no lifetime;
    6. else 0 (``"none"``).

    Never negative; delta-seconds are clamped to 2^31 (1.2.2).
    """
    cc = cache_control_of(response_headers)
    if shared and cc.s_maxage is not None:
        return Lifetime(cc.s_maxage, "s-maxage")
    if cc.max_age is not None:
        return Lifetime(cc.max_age, "max-age")
    expires_present, expires = _single_date(response_headers, "expires")
    if expires_present:
        date = _date_value(response_headers, response_time)
        if expires is None or date is None:
            return Lifetime(0, "expires")
        return Lifetime(int(max(0.0, min(expires - date, DELTA_SECONDS_MAX))), "expires")

    if not (is_heuristically_cacheable(status) or cc.public):
        return Lifetime(0, "none")
    _, last_modified = _single_date(response_headers, "last-modified")
    date = _date_value(response_headers, response_time)
    if last_modified is not None and date is not None:
        estimate = heuristic_fraction * max(0.0, date - last_modified)
        return Lifetime(int(max(0.0, min(estimate, heuristic_max, DELTA_SECONDS_MAX))), "heuristic")
    if default_ttl and status in DEFAULT_TTL_STATUSES:
        return Lifetime(max(0, min(default_ttl, DELTA_SECONDS_MAX)), "default")
    return Lifetime(0, "none")


def age_value(response_headers: Headers) -> int:
    """The Age field in seconds (RFC 9111 5.1): first member of a list, invalid -> 0."""
    members = split_list(get_all(response_headers, "age"))
    if not members:
        return 0
    seconds = parse_delta_seconds(members[0])
    return 0 if seconds is None else seconds


def current_age(
    response_headers: Headers, request_time: float, response_time: float, now: float
) -> int:
    """The current age of a stored response, in whole seconds (RFC 9111 4.2.3).

    ``request_time`` / ``response_time`` are when the request that produced the stored
    response was sent and when its response was received; ``response_headers`` are the
    stored headers as received (with their Age and Date)::

        apparent_age = max(0, response_time - date_value)
        response_delay = response_time - request_time
        corrected_age_value = age_value + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)
        resident_time = now - response_time
        current_age = corrected_initial_age + resident_time

    Clock skew never makes an age go backwards: a negative response delay or resident
    time counts as 0. So the result is ``>= age_value`` and non-decreasing in ``now``.
    """
    return StoredAge.of(response_headers, request_time, response_time).at(now)


# How much earlier than computed :meth:`StoredAge.steady_until` ends: float rounding of an
# epoch time (~2e-7 s) must not carry an age past the second it changes.
STEADY_MARGIN = 1e-6


@dataclass(frozen=True, slots=True)
class StoredAge:
    """What :func:`current_age` needs of a stored response, parsed once (its Age and Date
    do not change while it is stored): the age at any instant is then two additions."""

    age_value: int
    corrected_initial_age: float
    response_time: float

    @classmethod
    def of(cls, response_headers: Headers, request_time: float, response_time: float) -> StoredAge:
        age = age_value(response_headers)
        _, date = _single_date(response_headers, "date")
        apparent_age = max(0.0, response_time - date) if date is not None else 0.0
        response_delay = max(0.0, response_time - request_time)
        return cls(age, max(apparent_age, age + response_delay), response_time)

    def at(self, now: float) -> int:
        total = self.corrected_initial_age + max(0.0, now - self.response_time)
        if not math.isfinite(total):
            return DELTA_SECONDS_MAX
        return max(self.age_value, int(math.floor(total)))

    def steady_until(self, now: float) -> float:
        """An instant up to which (exclusive) :meth:`at` answers what it answers at ``now``:
        the age moves when the elapsed time crosses a whole second. Never later than the
        true instant (a microsecond early, against rounding), ``now`` itself when unknown."""
        if now < self.response_time:
            return self.response_time  # the clock has not reached the response: age constant
        total = self.corrected_initial_age + (now - self.response_time)
        if not math.isfinite(total):
            return now
        return max(now, now + (math.floor(total) + 1 - total) - STEADY_MARGIN)


def is_fresh(lifetime: int, age: int) -> bool:
    """RFC 9111 4.2: fresh while ``freshness_lifetime > current_age``."""
    return lifetime > age


class RequestVerdict(StrEnum):
    """What the request's own Cache-Control says about reusing a stored response."""

    FRESH_OK = "fresh-ok"
    """Fresh and within every request constraint."""
    STALE_ACCEPTED = "stale-accepted"
    """Stale, and the client accepts it (``max-stale``)."""
    NO_PREFERENCE = "no-preference"
    """Stale; the client said nothing, so the origin's stale directives decide."""
    REVALIDATE = "revalidate"
    """The client wants it validated (``no-cache``, ``max-age``, ``min-fresh``, ...)."""


def request_allows(lifetime: int, age: int, request_cc: CacheControl) -> RequestVerdict:
    """Apply the request directives of RFC 9111 5.2.1 to a stored response.

    * ``no-cache`` (or Pragma, see :func:`request_cache_control`): revalidate (5.2.1.4);
    * ``max-age=N``: age must be ``<= N``; without ``max-stale`` the client does not
      want a stale response either (5.2.1.1);
    * ``min-fresh=N``: ``lifetime - age >= N`` (5.2.1.3);
    * ``max-stale[=N]``: accept a stale response (exceeded by at most N) (5.2.1.2).

    Only the client's side; the response may still forbid serving stale
    (:func:`can_serve_stale`).
    """
    if request_cc.no_cache is not False:
        return RequestVerdict.REVALIDATE
    if request_cc.max_age is not None and age > request_cc.max_age:
        return RequestVerdict.REVALIDATE
    if request_cc.min_fresh is not None and lifetime - age < request_cc.min_fresh:
        return RequestVerdict.REVALIDATE
    if is_fresh(lifetime, age):
        return RequestVerdict.FRESH_OK
    staleness = age - lifetime
    max_stale = request_cc.max_stale
    if max_stale == "any" or (isinstance(max_stale, int) and staleness <= max_stale):
        return RequestVerdict.STALE_ACCEPTED
    if max_stale is not None or request_cc.max_age is not None:
        return RequestVerdict.REVALIDATE
    return RequestVerdict.NO_PREFERENCE


def _hard_forbidden(response_cc: CacheControl, shared: bool) -> bool:
    """Directives that forbid serving stale in every case (4.2.4, 5.2.2.2, 5.2.2.8)."""
    return (
        response_cc.no_cache_all
        or response_cc.must_revalidate
        or (shared and response_cc.proxy_revalidate)
    )


class Outcome(StrEnum):
    """What to do with a stored response for one request."""

    FRESH = "fresh"
    """Serve it: fresh and acceptable to the client."""
    STALE_OK = "stale-ok"
    """Serve it stale: the client accepts stale (``max-stale``) and nothing forbids it."""
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    """Serve it stale now, and revalidate in the background (once: coalesce)."""
    MUST_REVALIDATE = "must-revalidate"
    """Send a conditional request (:func:`validators_for_revalidation`) before reuse."""
    ONLY_IF_CACHED_MISS = "only-if-cached-miss"
    """The client sent ``only-if-cached`` and the stored response can't be used: 504."""


def can_serve_stale(
    lifetime: int,
    age: int,
    response_cc: CacheControl,
    request_cc: CacheControl,
    *,
    shared: bool = True,
    explicit_stale_overrides_s_maxage: bool = True,
) -> Outcome:
    """For a stale response: STALE_WHILE_REVALIDATE, STALE_OK or MUST_REVALIDATE.

    Combines the client's ``max-stale`` (via :func:`request_allows`) with the response's
    ``no-cache``, ``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` (which implies
    proxy-revalidate in a shared cache) and ``stale-while-revalidate``. A fresh response
    gets MUST_REVALIDATE here too: this function only grants staleness.
    """
    if is_fresh(lifetime, age):
        return Outcome.MUST_REVALIDATE
    verdict = request_allows(lifetime, age, request_cc)
    if verdict is RequestVerdict.REVALIDATE or _hard_forbidden(response_cc, shared):
        return Outcome.MUST_REVALIDATE
    s_maxage_forbids = shared and response_cc.s_maxage is not None
    staleness = age - lifetime
    window = response_cc.stale_while_revalidate
    if (
        window is not None
        and staleness < window
        and (not s_maxage_forbids or explicit_stale_overrides_s_maxage)
    ):
        return Outcome.STALE_WHILE_REVALIDATE
    if verdict is RequestVerdict.STALE_ACCEPTED and not s_maxage_forbids:
        return Outcome.STALE_OK
    return Outcome.MUST_REVALIDATE


def stale_if_error_window(
    response_cc: CacheControl,
    request_cc: CacheControl | None = None,
    *,
    shared: bool = True,
    default: int = 0,
    explicit_stale_overrides_s_maxage: bool = True,
) -> int | None:
    """Seconds after expiry during which the stored response may stand in for an error.

    ``None``: never, not even while fresh (unqualified ``no-cache``: no reuse without
    successful validation). ``0``: only while still fresh (``must-revalidate``,
    ``proxy-revalidate``; ``s-maxage`` unless an explicit ``stale-if-error`` overrides
    it). Otherwise the response's ``stale-if-error`` (RFC 5861 4), else the operator's
    ``default``, widened by a request ``stale-if-error`` (the client's own permission).
    """
    if response_cc.no_cache_all:
        return None
    if _hard_forbidden(response_cc, shared):
        return 0
    explicit = response_cc.stale_if_error
    if shared and response_cc.s_maxage is not None:
        if explicit is not None and explicit_stale_overrides_s_maxage:
            return explicit
        return 0
    window = explicit if explicit is not None else default
    if request_cc is not None and request_cc.stale_if_error is not None:
        window = max(window, request_cc.stale_if_error)
    return max(0, window)


@dataclass(frozen=True)
class FreshnessPolicy:
    """The operator's knobs for :func:`decide` (all pure data)."""

    shared: bool = True
    heuristic_fraction: float = 0.1
    heuristic_max: int = 86400
    default_ttl: int | None = None
    """Lifetime of a 200/203/204 the origin says nothing about (settings.cache_ttl);
    None or 0: none, the RFC 9111 default."""
    default_stale_if_error: int = 0
    """Seconds past expiry a stored response may replace an origin error, when the origin
    gives no stale-if-error and no directive forbids serving stale."""
    honour_request_no_cache: bool = True
    """False: ignore a client's ``no-cache``/``Pragma: no-cache`` (reload storms)."""
    targeted_fields: tuple[str, ...] = (CDN_CACHE_CONTROL,)
    """Lowercase targeted cache-control fields this cache obeys, first match wins
    (RFC 9213); they replace Cache-Control and Expires when present and valid."""
    explicit_stale_overrides_s_maxage: bool = True


@dataclass(frozen=True)
class StoredResponseInfo:
    """What :func:`decide` needs to know about a stored response.

    ``headers`` are the stored headers as received (Age and Date untouched);
    ``request_time`` / ``response_time`` those of the exchange that produced or last
    validated them (4.2.3; reset both after a successful 304).
    """

    status: int
    headers: Headers
    request_time: float
    response_time: float


@dataclass(frozen=True)
class ServeDecision:
    """The decision for one request against one stored response.

    ``ttl`` is ``lifetime - age`` (negative when stale), as Cache-Status reports it.
    ``stale_if_error_until`` is the absolute time before which the stored response may
    be served if the origin fails (5xx or no answer, 4.3.3); None when never.
    """

    outcome: Outcome
    age: int
    lifetime: Lifetime
    stale_if_error_until: float | None
    reason: str

    @property
    def ttl(self) -> int:
        return self.lifetime.seconds - self.age

    @property
    def serve_stored(self) -> bool:
        """Serve the stored response now, without waiting for the origin."""
        return self.outcome in (
            Outcome.FRESH,
            Outcome.STALE_OK,
            Outcome.STALE_WHILE_REVALIDATE,
        )

    @property
    def revalidate_in_background(self) -> bool:
        return self.outcome is Outcome.STALE_WHILE_REVALIDATE

    @property
    def error_status(self) -> int | None:
        """504 for ONLY_IF_CACHED_MISS (5.2.1.7), else None."""
        return GATEWAY_TIMEOUT if self.outcome is Outcome.ONLY_IF_CACHED_MISS else None

    def may_serve_on_error(self, now: float) -> bool:
        """After the origin failed at ``now``: may the stored response be served?"""
        return self.stale_if_error_until is not None and now < self.stale_if_error_until


@dataclass(frozen=True, slots=True)
class PreparedFreshness:
    """Everything :func:`decide` reads from a stored response, parsed once.

    A stored response's headers and exchange times change only when it is stored or
    revalidated, so its Cache-Control, lifetime and age inputs are computed then
    (:func:`prepare_freshness`), not on every hit; :func:`decide_prepared` only adds
    what the request and the clock change. ``source`` is the stored header list it was
    prepared from: :meth:`matches` tells a holder whether it still describes it.
    """

    source: Headers
    status: int
    request_time: float
    response_time: float
    policy: FreshnessPolicy
    response_cc: CacheControl
    lifetime: Lifetime
    age: StoredAge

    def matches(
        self,
        headers: Headers,
        status: int,
        request_time: float,
        response_time: float,
        policy: FreshnessPolicy,
    ) -> bool:
        return (
            self.source is headers
            and self.status == status
            and self.request_time == request_time
            and self.response_time == response_time
            and self.policy is policy
        )


def prepare_freshness(
    stored: StoredResponseInfo, policy: FreshnessPolicy = FreshnessPolicy()
) -> PreparedFreshness:
    """Parse what :func:`decide` needs of ``stored`` (see :class:`PreparedFreshness`)."""
    headers = effective_headers(stored.headers, policy.targeted_fields)
    lifetime = freshness_lifetime(
        headers,
        status=stored.status,
        shared=policy.shared,
        heuristic_fraction=policy.heuristic_fraction,
        heuristic_max=policy.heuristic_max,
        default_ttl=policy.default_ttl,
        response_time=stored.response_time,
    )
    return PreparedFreshness(
        source=stored.headers,
        status=stored.status,
        request_time=stored.request_time,
        response_time=stored.response_time,
        policy=policy,
        response_cc=cache_control_of(headers),
        lifetime=lifetime,
        age=StoredAge.of(headers, stored.request_time, stored.response_time),
    )


def decide(
    stored: StoredResponseInfo,
    request_headers: Headers,
    now: float,
    *,
    policy: FreshnessPolicy = FreshnessPolicy(),
) -> ServeDecision:
    """Decide how a stored response may satisfy a request (RFC 9111 4, 4.2.4, 5.2; 5861).

    Order: unqualified response ``no-cache`` -> MUST_REVALIDATE; the client's
    constraints (:func:`request_allows`) -> MUST_REVALIDATE; fresh -> FRESH; stale ->
    :func:`can_serve_stale`. With request ``only-if-cached``, MUST_REVALIDATE becomes
    ONLY_IF_CACHED_MISS (answer 504, do not contact the origin); a background
    revalidation of STALE_WHILE_REVALIDATE is the cache's own business and still runs.
    The caller checks Vary and the method (GET/HEAD) before calling.
    """
    return decide_prepared(prepare_freshness(stored, policy), request_headers, now)


# A request without Cache-Control or Pragma (nearly every one) has no directives: parsed
# once here rather than on every hit.
_NO_REQUEST_DIRECTIVES = CacheControl()


def _request_directives(request_headers: Headers) -> CacheControl:
    for name, _ in request_headers:
        if name == "cache-control" or name == "pragma":
            return request_cache_control(request_headers)
    return _NO_REQUEST_DIRECTIVES


def decide_prepared(
    prepared: PreparedFreshness, request_headers: Headers, now: float
) -> ServeDecision:
    """:func:`decide` for a stored response prepared by :func:`prepare_freshness`."""
    policy = prepared.policy
    response_cc = prepared.response_cc
    request_cc = _request_directives(request_headers)
    if not policy.honour_request_no_cache and request_cc.no_cache is not False:
        request_cc = dataclasses.replace(request_cc, no_cache=False)
    lifetime = prepared.lifetime
    age = prepared.age.at(now)
    window = stale_if_error_window(
        response_cc,
        request_cc,
        shared=policy.shared,
        default=policy.default_stale_if_error,
        explicit_stale_overrides_s_maxage=policy.explicit_stale_overrides_s_maxage,
    )
    expires_at = now + (lifetime.seconds - age)
    stale_if_error_until = None if window is None else expires_at + window

    verdict = request_allows(lifetime.seconds, age, request_cc)
    if response_cc.no_cache_all:
        outcome, reason = Outcome.MUST_REVALIDATE, "no-cache"
    elif verdict is RequestVerdict.REVALIDATE:
        outcome, reason = Outcome.MUST_REVALIDATE, "request"
    elif verdict is RequestVerdict.FRESH_OK:
        outcome, reason = Outcome.FRESH, "fresh"
    else:
        outcome = can_serve_stale(
            lifetime.seconds,
            age,
            response_cc,
            request_cc,
            shared=policy.shared,
            explicit_stale_overrides_s_maxage=policy.explicit_stale_overrides_s_maxage,
        )
        reason = "max-stale" if outcome is Outcome.STALE_OK else str(outcome)
        if outcome is Outcome.MUST_REVALIDATE:
            reason = "stale"
    if outcome is Outcome.MUST_REVALIDATE and request_cc.only_if_cached:
        outcome = Outcome.ONLY_IF_CACHED_MISS
    return ServeDecision(outcome, age, lifetime, stale_if_error_until, reason)


def fresh_ttl(prepared: PreparedFreshness, now: float) -> int | None:
    """The TTL of a FRESH answer to a request without Cache-Control or Pragma, else None.

    What :func:`decide_prepared` decides for such a request when its outcome is FRESH
    (``decision.ttl``), without building the decision: the fast path's test
    (tests/test_fasthit.py holds the two equal). Without request directives only the
    response's unqualified ``no-cache`` and the lifetime against the age decide.
    """
    if prepared.response_cc.no_cache_all:
        return None
    lifetime = prepared.lifetime.seconds
    age = prepared.age.at(now)
    return lifetime - age if is_fresh(lifetime, age) else None


def on_miss(request_headers: Headers) -> int | None:
    """Nothing stored for this request: 504 if the client sent ``only-if-cached``
    (5.2.1.7), else None (forward it)."""
    return GATEWAY_TIMEOUT if request_cache_control(request_headers).only_if_cached else None
