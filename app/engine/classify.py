"""Is an origin answer what was asked, of the version we hold? One set of checks, pure.

The probe (slice 0 of an unknown or revalidated object, :mod:`app.engine.probe`) and every
slice fetch (:mod:`app.engine.fetcher`) classify the origin's answer here before a byte of
it is used; each maps the verdict to what it does (adopt, relay, pass through, retry,
drop the object). Nothing here does I/O, so the checks are property-tested
(tests/test_classify.py).

The rules (DESIGN.md step 6):

- A 206 is used only if its ``Content-Range`` is exactly the asked span (clipped to the
  object's size), its total is the pinned size, its ``Content-Length`` (if any) the span's
  length, and its validator the pinned one (a strong ETag, else Last-Modified).
- A 200 to a slice request is the whole object: of the pinned version and size; its
  bytes before the asked span are skipped. To the probe, a 200 of at most one slice is a
  whole small body; a larger one means the origin ignores Range.
- An object larger than one answer is sliced only under a validator that pins its
  version (:attr:`ObjectMeta.pins_version`): two versions are never spliced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.edge.headers import Headers, get
from app.engine.objectmeta import ObjectMeta

CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes first-last/total`` (total None for ``*``), or None if malformed."""
    if value is None:
        return None
    match = CONTENT_RANGE.match(value)
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


@dataclass(frozen=True, slots=True)
class Answer:
    """The parts of an origin's answer the checks read."""

    status: int
    content_range: str | None = None
    content_length: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    date: str | None = None

    @classmethod
    def read(cls, status: int, field: Callable[[str], str | None]) -> Answer:
        return cls(
            status,
            field("content-range"),
            field("content-length"),
            field("etag"),
            field("last-modified"),
            field("date"),
        )

    @classmethod
    def of_response(cls, response: httpx.Response) -> Answer:
        return cls.read(response.status_code, response.headers.get)

    @classmethod
    def of_headers(cls, status: int, headers: Headers) -> Answer:
        return cls.read(status, lambda name: get(headers, name))


# --- verdicts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sliceable:
    """A 206 of exactly the asked span of an object of ``size`` bytes."""

    size: int


@dataclass(frozen=True, slots=True)
class WholeBody:
    """The whole object (``size`` bytes) in one body; the first ``skip`` are not asked."""

    size: int
    skip: int = 0


@dataclass(frozen=True, slots=True)
class Unsized:
    """Probe: a 200/204 with neither length nor range: small only if its body ends soon."""


@dataclass(frozen=True, slots=True)
class IgnoresRange:
    """Probe: a 200 larger than one slice, or of unknown framing: not sliceable."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unpinnable:
    """Probe: larger than one answer, and no validator pins its version."""

    size: int
    reason: str = "no validator to pin the object's version"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Not the pinned version (validator, size, 412/416): the object changed."""

    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not the asked bytes (Content-Range, Content-Length, status): never used.

    ``retryable`` if asking again may help (5xx, a 200 without a length)."""

    reason: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class OtherStatus:
    """Probe: a status that is neither a range nor a small whole body (relayed as is)."""

    status: int


Verdict = (
    Sliceable | WholeBody | Unsized | IgnoresRange | Unpinnable | Mismatch | Invalid | OtherStatus
)


def pins_version(etag: str | None, last_modified: str | None, date: str | None) -> bool:
    """Would an answer with these validators pin one version (see ObjectMeta.pins_version)?"""
    headers = [("date", date)] if date is not None else []
    return ObjectMeta(0, etag, last_modified, headers, 0.0, 0.0).pins_version


def classify(answer: Answer, first: int, last: int, pinned: ObjectMeta | None) -> Verdict:
    """The verdict on ``answer`` to a request for bytes ``first..last``.

    ``pinned``: the object as known so far (its size, validators, whether it is whole), or
    None for the probe, which learns them from this answer.
    """
    status = answer.status
    if status == 206:
        return _check_partial(answer, first, last, pinned)
    if pinned is None:
        return _probe_other(answer, first, last)
    if status == 200 and (not pinned.whole or first == 0):
        return _check_whole(answer, first, pinned)
    if status in (412, 416):
        return Mismatch(f"origin answered {status} for a slice of a known object")
    if status >= 500:
        return Invalid(f"origin answered {status}", retryable=True)
    return Invalid(f"origin answered {status} to a range request")


def _check_partial(answer: Answer, first: int, last: int, pinned: ObjectMeta | None) -> Verdict:
    if pinned is not None:
        changed = _validator_changed(answer, pinned)
        if changed is not None:
            return changed
    content_range = parse_content_range(answer.content_range)
    if content_range is None:
        return Invalid("slice answer without a Content-Range")
    got_first, got_last, total = content_range
    if pinned is not None and total is not None and total != pinned.size:
        return Mismatch(f"size changed from {pinned.size} to {total}")
    size = total if total is not None else (pinned.size if pinned is not None else None)
    if size is None:
        return Invalid("a 206 without the object's size")
    # What the origin must send: the asked span, cut at the object's end.
    expected = (first, min(last, size - 1))
    if (got_first, got_last) != expected:
        return Invalid(f"asked bytes {first}-{last}, got {got_first}-{got_last}")
    length = answer.content_length
    if length is not None and length.strip() != str(got_last - got_first + 1):
        return Invalid(f"Content-Length {length} for {got_last - got_first + 1} B")
    if (
        pinned is None
        and size > got_last - got_first + 1
        and not pins_version(answer.etag, answer.last_modified, answer.date)
    ):
        return Unpinnable(size)
    return Sliceable(size)


def _validator_changed(answer: Answer, pinned: ObjectMeta) -> Mismatch | None:
    etag = pinned.etag
    if etag and not etag.startswith("W/"):
        if answer.etag != etag:
            return Mismatch(f"ETag {answer.etag!r} is not {etag!r}")
        return None
    if etag and answer.etag and _opaque(answer.etag) != _opaque(etag):
        # A weak ETag does not pin the bytes (Last-Modified does, here), but another one
        # says the representation changed: the same size and Last-Modified would splice
        # two versions otherwise (RFC 9110 8.8.3.2, weak comparison).
        return Mismatch(f"ETag {answer.etag!r} is not {etag!r}")
    if pinned.last_modified and answer.last_modified != pinned.last_modified:
        return Mismatch("Last-Modified changed")
    return None


def _opaque(etag: str) -> str:
    """The opaque tag of an entity tag, as weak comparison sees it."""
    return etag.strip().removeprefix("W/")


def _check_whole(answer: Answer, first: int, pinned: ObjectMeta) -> Verdict:
    """A 200 for a slice: the whole object, which must be the same version and size."""
    if pinned.validator is not None and (
        answer.etag != pinned.etag or answer.last_modified != pinned.last_modified
    ):
        return Mismatch("validator changed")
    length = answer.content_length
    if length is not None and length.strip() != str(pinned.size):
        return Mismatch("size changed")
    if length is None and not pinned.whole:
        return Invalid("a 200 without a Content-Length for a slice", retryable=True)
    # The origin ignored the Range (after honouring the probe's): the whole body of the
    # same version serves, read from ``first`` on.
    return WholeBody(pinned.size, skip=first)


def _probe_other(answer: Answer, first: int, last: int) -> Verdict:
    """The probe's answer other than a 206: a whole small body, or not sliceable."""
    status = answer.status
    if status == 416:
        if (answer.content_range or "").replace(" ", "") == "bytes*/0":
            return Sliceable(0)  # an empty object: nothing to fetch
        return OtherStatus(status)
    length = answer.content_length
    if length is not None and length.isdigit() and int(length) <= last - first + 1:
        # One slice or less: cached whole, whatever the origin does with ranges (for a
        # status other than 200, if the directory finds it storable).
        return WholeBody(int(length))
    if length is None and status in (200, 204) and answer.content_range is None:
        return Unsized()  # chunked or close-delimited: whole if it ends within one slice
    if status == 200:
        return IgnoresRange("origin ignores Range for this object")
    return OtherStatus(status)
