"""What the proxy answers itself instead of forwarding (RFC 9110 7.6.2, 9.3.7, 9.3.8).

An OPTIONS or TRACE request carrying ``Max-Forwards: 0`` must not be forwarded: the proxy
answers it as its final recipient (an OPTIONS with an empty 200, a TRACE with its own
message reflected). With a larger value the request is forwarded with the value
decremented, which is how a client finds out what each hop of a chain says. An
``OPTIONS *`` (asterisk-form: the server in general, RFC 9112 3.2.4) is answered here
too: from the client's side this gateway is the server, and the origin's request line
could not carry it. Any other method with that target is a 400.
"""

from __future__ import annotations

from typing import NamedTuple

from starlette.types import Scope

from app.edge.headers import declares_body
from app.edge.target import request_target

# The largest Max-Forwards forwarded (RFC 9110 7.6.2: "the recipient's maximum supported
# value"); longer digit strings are not parsed at all (int() refuses > 4300 digits).
MAX_FORWARDS_CAP = 255
# Fields left out of a reflected TRACE (RFC 9110 9.3.8: "likely to contain sensitive data").
SENSITIVE = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"x-api-key", b"x-auth-token"}
)


class FinalAnswer(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[str, str]]


def final_answer(scope: Scope) -> FinalAnswer | None:
    """What to answer here, or None to forward the request.

    A forwarded OPTIONS or TRACE has its Max-Forwards decremented in ``scope`` (in place:
    whatever reads the request's fields later forwards the new value).
    """
    method = scope["method"]
    asterisk = request_target(scope) == b"*"
    if asterisk and method != "OPTIONS":
        return _bad("the target * is for OPTIONS only", scope)
    if method not in ("OPTIONS", "TRACE"):
        return None
    values = [value for name, value in scope["headers"] if name == b"max-forwards"]
    remaining: int | None = None
    if values:
        if len(values) > 1 or not values[0].strip().isdigit():
            return _bad("Max-Forwards is not one decimal number", scope)
        digits = values[0].strip().lstrip(b"0") or b"0"
        remaining = MAX_FORWARDS_CAP + 1 if len(digits) > 3 else int(digits)
    if remaining is None and not asterisk:
        return None
    if remaining == 0 or asterisk:
        return _answered_here(scope)
    assert remaining is not None
    forwarded = str(min(remaining - 1, MAX_FORWARDS_CAP)).encode("ascii")
    scope["headers"] = [
        (name, forwarded if name == b"max-forwards" else value) for name, value in scope["headers"]
    ]
    return None


def _answered_here(scope: Scope) -> FinalAnswer:
    if scope["method"] == "OPTIONS":
        # RFC 9110 9.3.7: no content, so a Content-Length of 0.
        return FinalAnswer(200, b"", _closing(scope))
    target = scope.get("raw_path") or scope["path"].encode("latin-1")
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    version = scope.get("http_version", "1.1")
    lines = [b"TRACE " + target + b" HTTP/" + version.encode("ascii")]
    lines += [
        name + b": " + value.strip(b" \t")  # httptools keeps a value's trailing whitespace
        for name, value in scope["headers"]
        if name not in SENSITIVE
    ]
    body = b"\r\n".join(lines) + b"\r\n\r\n"
    return FinalAnswer(200, body, [("content-type", "message/http"), *_closing(scope)])


def _bad(reason: str, scope: Scope) -> FinalAnswer:
    body = f"Bad Request: {reason}\n".encode()
    return FinalAnswer(400, body, [("content-type", "text/plain; charset=utf-8"), *_closing(scope)])


def _closing(scope: Scope) -> list[tuple[str, str]]:
    """Close after the answer when the request has a body: it is not read here, and what
    is left of it on the connection must not be taken for the next request."""
    return [("connection", "close")] if declares_body(scope["headers"]) else []
