"""HTTP caching decisions of a shared cache, as pure functions (RFC 9111, 9110, 9211, 5861).

No I/O and no framework imports: headers are ``list[tuple[str, str]]`` with lowercase
names, times are POSIX timestamps passed in by the caller. Modules:

``cache_control``  parse Cache-Control / Pragma
``storable``       may this response be stored, and without which fields
``freshness``      lifetime, age, and the reuse decision (:func:`decide`)
``conditional``    validators, client preconditions, 304 merging
``invalidation``   URIs invalidated by unsafe requests
``vary``           variant selection
``cache_status``   Cache-Status (RFC 9211) and X-Cache values
``dates``          HTTP-date parsing and formatting
"""

from __future__ import annotations

from .cache_control import (
    CacheControl,
    cache_control_of,
    parse_cache_control,
    pragma_no_cache,
    request_cache_control,
)
from .cache_status import CacheStatus, XCache, append_cache_status, kept_upstream_members
from .conditional import (
    EntityTag,
    evaluate_client_conditionals,
    merge_304_headers,
    not_modified_matches,
    validators_for_revalidation,
)
from .dates import format_http_date, parse_http_date
from .freshness import (
    FreshnessPolicy,
    Lifetime,
    Outcome,
    ServeDecision,
    StoredResponseInfo,
    can_serve_stale,
    current_age,
    decide,
    freshness_lifetime,
    is_fresh,
    on_miss,
    request_allows,
)
from .invalidation import invalidated_uris
from .storable import Storable, headers_for_storage, storability
from .vary import selecting_headers, variant_matches, vary_field_names

__all__ = [
    "CacheControl",
    "CacheStatus",
    "EntityTag",
    "FreshnessPolicy",
    "Lifetime",
    "Outcome",
    "ServeDecision",
    "Storable",
    "StoredResponseInfo",
    "XCache",
    "append_cache_status",
    "kept_upstream_members",
    "cache_control_of",
    "can_serve_stale",
    "current_age",
    "decide",
    "evaluate_client_conditionals",
    "format_http_date",
    "freshness_lifetime",
    "headers_for_storage",
    "invalidated_uris",
    "is_fresh",
    "merge_304_headers",
    "not_modified_matches",
    "on_miss",
    "parse_cache_control",
    "parse_http_date",
    "pragma_no_cache",
    "request_allows",
    "request_cache_control",
    "selecting_headers",
    "storability",
    "validators_for_revalidation",
    "variant_matches",
    "vary_field_names",
]
