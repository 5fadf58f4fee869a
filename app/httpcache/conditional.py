"""Conditional requests: validators, client preconditions, 304 merging.

RFC 9110 section 8.8.3 (entity tags and their comparison), 13.1 and 13.2 (preconditions
and the order they are evaluated in), RFC 9111 3.2, 4.3.1 and 4.3.4 (revalidation and
updating stored responses with a 304).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ._fields import HOP_BY_HOP, HeaderList, Headers, connection_tokens, get_all, get_first
from .dates import parse_http_date

__all__ = [
    "NON_UPDATABLE_FIELDS",
    "EntityTag",
    "evaluate_client_conditionals",
    "merge_304_headers",
    "not_modified_matches",
    "parse_entity_tag",
    "parse_entity_tag_list",
    "strong_match",
    "validators_for_revalidation",
    "weak_match",
]

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412

_TAG = re.compile(r'[ \t]*(W/)?("[^"]*"|[^",\s]+)[ \t]*(?:,|$)')


@dataclass(frozen=True)
class EntityTag:
    """An entity-tag (RFC 9110 8.8.3): ``opaque`` is the text between the quotes."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


def parse_entity_tag(value: str) -> EntityTag | None:
    """Parse one ETag field value; None if empty or not an entity-tag.

    Lenient on one point: an unquoted token (``ETag: abc``, a common origin bug) is taken
    as the tag ``"abc"``, so it still matches a client that echoes it back verbatim.
    """
    tags = parse_entity_tag_list(value)
    if tags == "*" or len(tags) != 1:
        return None
    return tags[0]


def parse_entity_tag_list(value: str) -> list[EntityTag] | Literal["*"]:
    """Parse an If-Match / If-None-Match value: ``"*"`` or a list of entity-tags.

    Members that are not entity-tags are skipped (never raises).
    """
    text = value.strip(" \t")
    if text == "*":
        return "*"
    tags: list[EntityTag] = []
    position = 0
    while position < len(text):
        match = _TAG.match(text, position)
        if match is None:
            comma = text.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        if match.end() == position:
            break
        weak, raw = match.group(1), match.group(2)
        opaque = raw[1:-1] if raw.startswith('"') else raw
        if raw != "*":
            tags.append(EntityTag(opaque, weak=bool(weak)))
        position = match.end()
    return tags


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """Strong comparison (8.8.3.2): both strong and the same opaque-tag."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """Weak comparison (8.8.3.2): the same opaque-tag, either or both may be weak."""
    return a.opaque == b.opaque


def _field_tags(headers: Headers, name: str) -> list[EntityTag] | Literal["*"] | None:
    """The merged list of every line of an If-Match/If-None-Match field; None if absent."""
    values = get_all(headers, name)
    if not values:
        return None
    tags: list[EntityTag] = []
    for value in values:
        parsed = parse_entity_tag_list(value)
        if parsed == "*":
            return "*"
        tags.extend(parsed)
    return tags


def _single_http_date(headers: Headers, name: str) -> int | None:
    """A date precondition field, None when absent, invalid or given more than once."""
    values = get_all(headers, name)
    if len(values) != 1:
        return None
    return parse_http_date(values[0])


# The request fields the evaluation below reads; without any of them it answers None.
CONDITIONAL_FIELDS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


def evaluate_client_conditionals(
    method: str,
    request_headers: Headers,
    etag: str | None,
    last_modified: str | None,
    *,
    status: int = 200,
    date: str | None = None,
    received: float | None = None,
) -> int | None:
    """Evaluate a client's preconditions against the stored representation.

    ``etag`` / ``last_modified`` are the raw ETag and Last-Modified of the representation
    that would be sent (None when it has none); ``status`` is the status it would be sent
    with: preconditions only apply to a 2xx (RFC 9110 13.2.1), so any other status
    returns None. ``date`` / ``received``: the stored response's Date field and the time
    it was received, which If-Modified-Since is evaluated against when there is no
    Last-Modified (RFC 9111 4.3.2: a cache SHOULD use the Date, else the time received;
    an invalid Date counts as none known). Order of RFC 9110 13.2.2:

    1. If-Match: false -> 412 (strong comparison; ``*`` is true, a representation exists);
    2. else If-Unmodified-Since (valid date, representation has Last-Modified):
       modified after it -> 412;
    3. If-None-Match: true unless a tag matches by weak comparison (or ``*``);
       false -> 304 for GET/HEAD, 412 otherwise;
    4. else, for GET/HEAD, If-Modified-Since (valid date, Last-Modified known):
       not modified since -> 304.

    Returns 304, 412 or None (serve normally). Range/If-Range is the slicer's job.
    """
    if not 200 <= status <= 299:
        return None
    if not any(name.lower() in CONDITIONAL_FIELDS for name, _ in request_headers):
        return None  # nearly every request: nothing to parse the validators for
    current = parse_entity_tag(etag) if etag is not None else None
    modified = parse_http_date(last_modified) if last_modified is not None else None

    if_match = _field_tags(request_headers, "if-match")
    if if_match is not None:
        if if_match != "*" and not (
            current is not None and any(strong_match(tag, current) for tag in if_match)
        ):
            return PRECONDITION_FAILED
    else:
        unmodified_since = _single_http_date(request_headers, "if-unmodified-since")
        if unmodified_since is not None and modified is not None and modified > unmodified_since:
            return PRECONDITION_FAILED

    safe_read = method in ("GET", "HEAD")
    if_none_match = _field_tags(request_headers, "if-none-match")
    if if_none_match is not None:
        matched = if_none_match == "*" or (
            current is not None and any(weak_match(tag, current) for tag in if_none_match)
        )
        if matched:
            return NOT_MODIFIED if safe_read else PRECONDITION_FAILED
        return None
    if safe_read:
        since = _single_http_date(request_headers, "if-modified-since")
        if modified is None and last_modified is None:
            if date is not None:
                modified = parse_http_date(date)
            elif received is not None:
                modified = int(received)
        if since is not None and modified is not None and modified <= since:
            return NOT_MODIFIED
    return None


def validators_for_revalidation(
    stored_headers: Headers, *, subrange: bool = False
) -> list[tuple[str, str]]:
    """Conditional request fields to revalidate one stored response (RFC 9111 4.3.1).

    ``If-None-Match`` with the stored ETag (MUST when there is one), and
    ``If-Modified-Since`` with the stored Last-Modified when it is a valid date and the
    request is not for a subrange (SHOULD; an origin that understands If-None-Match
    ignores it, one that does not still gets a validator). Empty: nothing to validate
    with, fetch unconditionally.
    """
    fields: list[tuple[str, str]] = []
    etags = [value.strip(" \t") for value in get_all(stored_headers, "etag")]
    etags = [value for value in dict.fromkeys(etags) if parse_entity_tag(value) is not None]
    if etags:
        fields.append(("if-none-match", ", ".join(etags)))
    last_modified = get_first(stored_headers, "last-modified")
    if not subrange and last_modified is not None and parse_http_date(last_modified) is not None:
        fields.append(("if-modified-since", last_modified.strip(" \t")))
    return fields


def not_modified_matches(stored_headers: Headers, not_modified_headers: Headers) -> bool:
    """May this 304 update this stored response? (RFC 9111 4.3.4, for one stored response).

    * the 304 has a strong ETag: the stored response must have the same strong ETag;
    * it has a weak ETag: the stored ETag must match it weakly;
    * it has no ETag but a Last-Modified: the stored one must be the same date;
    * it has no validator: yes — we validated exactly one response, so the 304 is about
      it (the RFC's "only one stored response" case, extended to stored validators since
      RFC 9110 15.4.5 obliges the origin to repeat its ETag and many don't).

    False means: do not update; refetch without conditions.
    """
    new_etag_value = get_first(not_modified_headers, "etag")
    stored_etag_value = get_first(stored_headers, "etag")
    new_tag = parse_entity_tag(new_etag_value) if new_etag_value is not None else None
    stored_tag = parse_entity_tag(stored_etag_value) if stored_etag_value is not None else None
    if new_tag is not None:
        if stored_tag is None:
            return False
        if not new_tag.weak:
            return strong_match(new_tag, stored_tag)
        return weak_match(new_tag, stored_tag)
    new_lm = get_first(not_modified_headers, "last-modified")
    if new_lm is not None:
        stored_lm = get_first(stored_headers, "last-modified")
        new_date = parse_http_date(new_lm)
        return (
            stored_lm is not None
            and new_date is not None
            and new_date == parse_http_date(stored_lm)
        )
    return True


NON_UPDATABLE_FIELDS: frozenset[str] = frozenset(
    {
        # RFC 9111 3.2: never replaced from a 304.
        "content-length",
        # Describe the stored bytes themselves; a 304 changing them would corrupt the
        # stored response (3.2 allows omitting fields "necessary to assure integrity").
        "content-range",
        "content-encoding",
        # Never stored in a shared cache (storable.ALWAYS_STRIPPED).
        "set-cookie",
    }
)
"""Fields a 304 never changes in a stored response (hop-by-hop ones excepted too)."""


def merge_304_headers(stored_headers: Headers, not_modified_headers: Headers) -> HeaderList:
    """Update a stored response's headers with a 304's (or a HEAD's) (RFC 9111 3.2, 4.3.4).

    Every field present in the 304 replaces all lines of that field in the stored
    headers (appended at the end, in the 304's order), except hop-by-hop fields, those
    named in the 304's Connection, and :data:`NON_UPDATABLE_FIELDS`. Fields absent from
    the 304 are kept. The new Age and Date come along, so the caller must also reset
    the entry's request/response times to those of the validating exchange, re-check
    :func:`storability` on the result (the 304 may now say ``no-store`` or ``private``:
    serve once, then evict) and strip its ``headers_to_strip`` before storing.

    Call it only when :func:`not_modified_matches` is true.
    """
    excluded = HOP_BY_HOP | NON_UPDATABLE_FIELDS | connection_tokens(not_modified_headers)
    updates = [
        (name.lower(), value)
        for name, value in not_modified_headers
        if name.lower() not in excluded
    ]
    replaced = {name for name, _ in updates}
    kept = [(name, value) for name, value in stored_headers if name.lower() not in replaced]
    return kept + updates
