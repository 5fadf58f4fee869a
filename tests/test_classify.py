"""The pure classifier of origin answers (app/engine/classify.py), property-tested.

One set of checks serves the probe (nothing pinned yet) and the slice fetches (the
object's size and validator pinned): a Content-Range whose span is not the asked one, a
validator other than the pinned one, a Content-Length that is not the span's length are
never accepted; a weak pinned ETag is compared weakly (another opaque tag is a change).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.engine.classify import (
    Answer,
    IgnoresRange,
    Invalid,
    Mismatch,
    OtherStatus,
    Sliceable,
    Unpinnable,
    Unsized,
    WholeBody,
    classify,
    parse_content_range,
)
from app.engine.objectmeta import ObjectMeta

SLICE = 1024
OLD_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"
NEW_DATE = "Tue, 02 Jan 2024 00:00:00 GMT"

etags = st.sampled_from([None, '"a"', '"b"', 'W/"a"', 'W/"b"'])
dates = st.sampled_from([None, OLD_DATE, NEW_DATE])
sizes = st.integers(min_value=1, max_value=10 * SLICE)


@st.composite
def asked_spans(draw: st.DrawFn, size: int) -> tuple[int, int]:
    first = draw(st.integers(min_value=0, max_value=size - 1))
    last = draw(st.integers(min_value=first, max_value=size - 1))
    return first, last


@st.composite
def content_ranges(draw: st.DrawFn, size: int, first: int, last: int) -> str | None:
    """Mostly right, often off by a little, sometimes malformed."""
    kind = draw(st.sampled_from(["exact", "shifted", "total", "star", "junk", "none"]))
    if kind == "exact":
        return f"bytes {first}-{last}/{size}"
    if kind == "shifted":
        a = first + draw(st.integers(-2, 2))
        b = last + draw(st.integers(-2, 2))
        return f"bytes {max(a, 0)}-{max(b, 0)}/{size}"
    if kind == "total":
        return f"bytes {first}-{last}/{size + draw(st.integers(-3, 3))}"
    if kind == "star":
        return f"bytes {first}-{last}/*"
    if kind == "junk":
        return draw(st.sampled_from(["bytes 0-/5", "items 0-1/2", "bytes=0-1/2", ""]))
    return None


@st.composite
def partial_answers(draw: st.DrawFn, size: int, first: int, last: int) -> Answer:
    span = last - first + 1
    length = draw(st.sampled_from([None, str(span), str(span + 1), str(max(span - 1, 0))]))
    return Answer(
        206,
        draw(content_ranges(size, first, last)),
        length,
        draw(etags),
        draw(dates),
        draw(dates),
    )


def meta(size: int, etag: str | None, last_modified: str | None, whole: bool = False) -> ObjectMeta:
    return ObjectMeta(size, etag, last_modified, [("date", NEW_DATE)], 0.0, 0.0, whole=whole)


@given(st.data(), sizes, etags, dates)
def test_a_slice_answer_is_accepted_only_for_the_asked_span_of_the_pinned_version(
    data: st.DataObject, size: int, etag: str | None, last_modified: str | None
) -> None:
    first, last = data.draw(asked_spans(size))
    pinned = meta(size, etag, last_modified)
    answer = data.draw(partial_answers(size, first, last))
    verdict = classify(answer, first, last, pinned)
    if not isinstance(verdict, Sliceable):
        assert isinstance(verdict, Mismatch | Invalid)
        assert not (isinstance(verdict, Invalid) and verdict.retryable)
        return
    parsed = parse_content_range(answer.content_range)
    assert parsed is not None
    assert parsed[:2] == (first, last), "never a span other than the asked one"
    assert parsed[2] in (None, size), "never another size"
    assert answer.content_length in (None, str(last - first + 1))
    if etag is not None and not etag.startswith("W/"):
        assert answer.etag == etag, "never another strong validator"
    else:
        if etag is not None and answer.etag is not None:
            assert _opaque(answer.etag) == _opaque(etag), "never another entity tag"
        if last_modified is not None:
            assert answer.last_modified == last_modified, "never another Last-Modified"


def _opaque(etag: str) -> str:
    return etag.removeprefix("W/")


@given(st.data(), sizes, st.sampled_from(['W/"a"', None]))
def test_a_weak_or_absent_pinned_validator_checks_only_the_bytes(
    data: st.DataObject, size: int, etag: str | None
) -> None:
    """A weak ETag pins nothing (a retry of an unpinned slice re-reads and compares its
    bytes instead): an answer without an ETag, or with one that matches it by weak
    comparison, is taken; another opaque tag says the representation changed."""
    first, last = data.draw(asked_spans(size))
    answer_etag = data.draw(etags)
    answer = Answer(
        206,
        f"bytes {first}-{last}/{size}",
        str(last - first + 1),
        answer_etag,
        data.draw(dates),
    )
    verdict = classify(answer, first, last, meta(size, etag, None))
    if etag is None or answer_etag is None or _opaque(answer_etag) == _opaque(etag):
        assert verdict == Sliceable(size)
    else:
        assert isinstance(verdict, Mismatch)


@given(sizes, st.sampled_from(['W/"b"', '"b"']))
def test_another_etag_under_the_same_last_modified_is_a_changed_object(
    size: int, answer_etag: str
) -> None:
    """An object pinned by its Last-Modified (its ETag weak) whose content changed at the
    same size and Last-Modified, with a new ETag: never spliced (helper-40)."""
    pinned = meta(size, 'W/"a"', OLD_DATE)
    answer = Answer(206, f"bytes 0-{size - 1}/{size}", str(size), answer_etag, OLD_DATE)
    assert isinstance(classify(answer, 0, size - 1, pinned), Mismatch)


@given(st.data(), sizes, etags, dates)
def test_a_changed_validator_or_size_is_a_mismatch(
    data: st.DataObject, size: int, etag: str | None, last_modified: str | None
) -> None:
    first, last = data.draw(asked_spans(size))
    pinned = meta(size, etag, last_modified)
    if pinned.validator is None:
        return
    other_etag = data.draw(etags.filter(lambda e: e != etag))
    answer = Answer(
        206,
        f"bytes {first}-{last}/{size}",
        None,
        other_etag if etag and not etag.startswith("W/") else etag,
        last_modified if etag and not etag.startswith("W/") else OLD_DATE + "x",
    )
    assert isinstance(classify(answer, first, last, pinned), Mismatch)
    resized = Answer(206, f"bytes {first}-{last}/{size + 1}", None, etag, last_modified)
    assert isinstance(classify(resized, first, last, pinned), Mismatch)


@given(st.data(), sizes, etags, dates, dates)
def test_the_probe_accepts_the_first_slice_span_only(
    data: st.DataObject, size: int, etag: str | None, last_modified: str | None, date: str | None
) -> None:
    end = min(SLICE, size) - 1
    answer = data.draw(partial_answers(size, 0, end))
    answer = Answer(206, answer.content_range, answer.content_length, etag, last_modified, date)
    verdict = classify(answer, 0, SLICE - 1, None)
    parsed = parse_content_range(answer.content_range)
    # The probe learns the size from the total: any total, if the span is its first slice.
    total = parsed[2] if parsed is not None else None
    right = (
        parsed is not None
        and total is not None
        and parsed[:2] == (0, min(SLICE, total) - 1)
        and answer.content_length in (None, str(min(SLICE, total)))
    )
    if not right:
        assert isinstance(verdict, Invalid)
        return
    strong = bool(etag and not etag.startswith("W/")) or (
        last_modified == OLD_DATE and date == NEW_DATE
    )
    assert total is not None
    if total > SLICE and not strong:
        assert verdict == Unpinnable(total), "two versions could be spliced"
    else:
        assert verdict == Sliceable(total)


@given(
    st.sampled_from([200, 204, 301, 304, 404, 410, 500, 503]),
    st.one_of(st.none(), st.integers(0, 3 * SLICE).map(str), st.just("12x")),
    st.sampled_from([None, "bytes 0-9/10"]),
)
def test_the_probe_sorts_other_statuses_as_before(
    status: int, length: str | None, content_range: str | None
) -> None:
    verdict = classify(Answer(status, content_range, length), 0, SLICE - 1, None)
    if length is not None and length.isdigit() and int(length) <= SLICE:
        assert verdict == WholeBody(int(length))
    elif length is None and status in (200, 204) and content_range is None:
        assert verdict == Unsized()
    elif status == 200:
        assert isinstance(verdict, IgnoresRange)
    else:
        assert verdict == OtherStatus(status)


def test_the_probe_sizes_an_empty_object_from_its_416() -> None:
    assert classify(Answer(416, "bytes */0"), 0, SLICE - 1, None) == Sliceable(0)
    assert classify(Answer(416, "bytes */10"), 0, SLICE - 1, None) == OtherStatus(416)


@given(st.data(), sizes, etags, dates, st.booleans())
def test_a_200_to_a_slice_request_is_the_whole_pinned_object_or_nothing(
    data: st.DataObject, size: int, etag: str | None, last_modified: str | None, whole: bool
) -> None:
    first, last = data.draw(asked_spans(size))
    pinned = meta(size, etag, last_modified, whole)
    answer = Answer(
        200,
        None,
        data.draw(st.sampled_from([None, str(size), str(size + 1)])),
        data.draw(etags),
        data.draw(dates),
    )
    verdict = classify(answer, first, last, pinned)
    if whole and first != 0:
        assert verdict == Invalid("origin answered 200 to a range request")
        return
    if isinstance(verdict, WholeBody):
        assert verdict == WholeBody(size, skip=first)
        assert answer.content_length in (None, str(size))
        assert answer.content_length is not None or whole
        if pinned.validator is not None:
            assert (answer.etag, answer.last_modified) == (etag, last_modified)
    else:
        assert isinstance(verdict, Mismatch | Invalid)


@given(st.sampled_from([412, 416]), sizes)
def test_a_failed_precondition_is_a_changed_object(status: int, size: int) -> None:
    assert isinstance(classify(Answer(status), 0, 0, meta(size, '"a"', None)), Mismatch)


@given(st.integers(500, 599))
def test_a_server_error_is_retryable(status: int) -> None:
    assert classify(Answer(status), 0, 0, meta(10, '"a"', None)) == Invalid(
        f"origin answered {status}", retryable=True
    )


def test_compressed_content_is_known_from_its_headers() -> None:
    def meta(*headers: tuple[str, str]) -> ObjectMeta:
        return ObjectMeta(10, None, None, list(headers), 0.0, 0.0)

    for already in (
        meta(("content-type", "video/mp4")),
        meta(("content-type", "Audio/MPEG; rate=44100")),
        meta(("content-type", "image/jpeg")),
        meta(("content-type", "application/zip")),
        meta(("content-type", "text/plain"), ("content-encoding", "gzip")),
        meta(("content-type", "font/woff2")),
    ):
        assert already.compressible is False, already.headers
    for unknown in (
        meta(("content-type", "application/octet-stream")),
        meta(("content-type", "image/svg+xml")),
        meta(("content-type", "text/html"), ("content-encoding", "identity")),
        meta(),
    ):
        assert unknown.compressible is None, unknown.headers
