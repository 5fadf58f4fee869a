"""The absolute-form request target taken apart (app/edge/target.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.edge.target import absolute_target, with_authority
from app.main import ProxyEndpoint
from settings import Settings

hosts = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
ports = st.none() | st.integers(min_value=0, max_value=65535)
paths = st.from_regex(r"(/[A-Za-z0-9\-._~%!$&'()*+,;=:@]{0,12}){0,4}", fullmatch=True)
queries = st.none() | st.from_regex(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]{0,20}", fullmatch=True)


@given(st.sampled_from(["http", "https", "HTTP"]), hosts, ports, paths, queries)
def test_an_absolute_target_is_its_authority_and_origin_form(
    scheme: str, host: str, port: int | None, path: str, query: str | None
) -> None:
    authority = host if port is None else f"{host}:{port}"
    target = f"{scheme}://{authority}{path}" + ("" if query is None else f"?{query}")
    absolute = absolute_target(target.encode())
    assert absolute is not None
    assert absolute.authority == authority.encode()
    # An empty query is none, as uvicorn reads "/a?" in the origin form.
    expected = (path or "/") + (f"?{query}" if query else "")
    assert absolute.origin_form == expected.encode()
    assert not absolute.userinfo


def test_other_forms_and_non_urls_are_not_absolute() -> None:
    for target in [b"/a/b?c", b"*", b"example.com:443", b"//x/a", b"http:///a", b"http://x:99999/"]:
        assert absolute_target(target) is None


def test_userinfo_an_ipv6_literal_and_a_fragment() -> None:
    user = absolute_target(b"http://u:p@x/a")
    assert user is not None and user.userinfo
    literal = absolute_target(b"http://[::1]:8080/a?b=1#frag")
    assert literal is not None
    assert (literal.authority, literal.origin_form) == (b"[::1]:8080", b"/a?b=1")


def test_every_host_field_takes_the_authority_and_their_number_stays() -> None:
    headers = [(b"host", b"a"), (b"accept", b"*/*"), (b"host", b"b")]
    expected = [(b"host", b"x:1"), (b"accept", b"*/*"), (b"host", b"x:1")]
    assert with_authority(headers, b"x:1", http10=False) == expected
    assert with_authority(headers, b"x:1", http10=True) == expected
    # HTTP/1.1 without Host stays without (a 400); HTTP/1.0 gets the target's.
    assert with_authority([(b"accept", b"*/*")], b"x", http10=False) == [(b"accept", b"*/*")]
    assert with_authority([(b"accept", b"*/*")], b"x", http10=True) == [
        (b"accept", b"*/*"),
        (b"host", b"x"),
    ]


def test_an_empty_userinfo_is_userinfo() -> None:
    for target in [b"http://@x/a", b"http://u@x", b"http://u:p@x:80/?q"]:
        absolute = absolute_target(target)
        assert absolute is not None and absolute.userinfo, target
    for target in [b"http://x/a@b?c=@", b"http://x?q=@", b"http://x/#@"]:
        plain = absolute_target(target)  # an "@" in the path, query or fragment is not
        assert plain is not None and not plain.userinfo, target


def test_an_options_of_a_bare_authority_is_options_asterisk() -> None:
    """RFC 9112 3.2.4: OPTIONS http://host (no path, no query) is served as OPTIONS *."""
    bare = absolute_target(b"http://x:8080")
    assert bare is not None and bare.bare
    assert bare.for_method(b"OPTIONS") == b"*"
    assert bare.for_method(b"GET") == b"/"
    for target in [b"http://x/", b"http://x?q=1", b"http://x/a"]:
        absolute = absolute_target(target)
        assert absolute is not None and not absolute.bare
        assert absolute.for_method(b"OPTIONS") == absolute.origin_form


def _refusal(raw_path: bytes, headers: list[tuple[bytes, bytes]], **scope: Any) -> Any:
    """The app's own rule (ProxyEndpoint._refusal), as any server under it meets it."""
    runtime = SimpleNamespace(settings=Settings(upstream_address="127.0.0.1:1"))
    endpoint = ProxyEndpoint(runtime, None)  # type: ignore[arg-type]
    full = {"raw_path": raw_path, "query_string": b"", "headers": headers, **scope}
    return endpoint._refusal(full)


@pytest.mark.parametrize(
    ("codings", "status"),
    [(b"chunked", None), (b"gzip, chunked", 501), (b"identity", 400), (b"chunked, gzip", 400)],
)
def test_the_app_refuses_a_final_coding_other_than_chunked(codings: bytes, status: int) -> None:
    """RFC 9112 6.3: 400 (a MUST), as httptools' edge answers it; a coding it cannot
    decode before a final chunked is 501."""
    refusal = _refusal(b"/x", [(b"host", b"h"), (b"transfer-encoding", codings)])
    assert (refusal and refusal[0]) == status


def test_the_app_reads_the_target_without_the_root_path() -> None:
    """Under a root path uvicorn prefixes it to raw_path: the limit and the target's form
    are judged on what the client sent."""
    host = [(b"host", b"h")]
    limit = Settings(upstream_address="127.0.0.1:1").max_request_target_bytes
    at_limit = b"/x" + b"a" * (limit - 2)
    assert _refusal(b"/p" + at_limit, host, root_path="/p") is None
    assert _refusal(b"/p" + at_limit + b"a", host, root_path="/p") == (414, "URI Too Long")
    assert _refusal(b"/p*", host, root_path="/p") is None  # OPTIONS * (final_answer)
    assert _refusal(b"/px.example:80", host, root_path="/p")[0] == 400  # authority form
