"""Header rewriting at the proxy boundary (RFC 9110 section 7.6)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

VIA_TOKEN = "1.1 slicecache"

# RFC 9110 7.6.1 connection-specific fields, plus the de-facto ones (Proxy-Connection,
# Keep-Alive) and the proxy authentication fields (11.7) that only concern the next hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

RawHeaders = list[tuple[bytes, bytes]]
Headers = list[tuple[str, str]]


def _connection_tokens(values: Iterable[str]) -> set[str]:
    tokens: set[str] = set()
    for value in values:
        tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


def end_to_end(headers: Headers, also_drop: frozenset[str] = frozenset()) -> Headers:
    """Drop hop-by-hop fields, those named in Connection, and ``also_drop`` (lowercase)."""
    named = _connection_tokens(value for name, value in headers if name.lower() == "connection")
    drop = HOP_BY_HOP | named | also_drop
    return [(name, value) for name, value in headers if name.lower() not in drop]


def declares_body(raw: Iterable[tuple[bytes, bytes]]) -> bool:
    """A request head frames a body (RFC 9112 6.3): Transfer-Encoding, or a Content-Length
    other than 0 (a parser has checked that it is one number)."""
    for name, value in raw:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t0")):
            return True
    return False


def decode_raw(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]


def encode(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def get(headers: Headers, name: str) -> str | None:
    """The first value of ``name`` (lowercase), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def get_all(headers: Headers, name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def with_via(headers: Headers) -> Headers:
    """Append our hop to Via (RFC 9110 7.6.3), keeping earlier hops."""
    existing = get_all(headers, "via")
    rest = [(k, v) for k, v in headers if k != "via"]
    return [*rest, ("via", ", ".join([*existing, VIA_TOKEN]))]


def upstream_request_headers(
    client_headers: Headers,
    *,
    client_ip: str | None,
    scheme: str,
    origin_host: str,
    preserve_host: bool,
    request_id: str,
) -> Headers:
    """What the origin sees: end-to-end fields, the right Host, X-Forwarded-* and Via."""
    # Expect is answered by this hop (uvicorn sends 100 Continue when the body is read).
    headers = end_to_end(client_headers, also_drop=frozenset({"expect", "host"}))
    client_host = get(client_headers, "host")
    forwarded_for = get_all(headers, "x-forwarded-for")
    headers = [
        (k, v)
        for k, v in headers
        if k not in {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}
    ]
    if client_ip:
        forwarded_for.append(client_ip)
    # RFC 9110 5.5: a value excludes its surrounding whitespace; aiohttp refuses "3 ".
    # Leading zeros go too: an origin reading "010" as octal (strtol base 0) would take
    # 8 bytes and see the other 2 as the next request on the pooled connection.
    headers = [(k, _content_length(v) if k == "content-length" else v) for k, v in headers]
    host = client_host if preserve_host and client_host else origin_host
    headers.insert(0, ("host", host))
    if forwarded_for:
        headers.append(("x-forwarded-for", ", ".join(forwarded_for)))
    headers.append(("x-forwarded-proto", scheme))
    if client_host:
        headers.append(("x-forwarded-host", client_host))
    headers.append(("x-request-id", request_id))
    return with_via(headers)


# RFC 3986 3.2.2 reg-name: unreserved / pct-encoded / sub-delims (an empty name is allowed).
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_PORT = re.compile(r"[0-9]*")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``uri-host [ ":" port ]`` (RFC 9110 7.2) as (lowercase host, port or None); None if not.

    IPv6 literals come back in brackets. A value that is not exactly that — a path, a
    query, a fragment, userinfo, spaces — is refused: it is the client's claim about
    which URL it asks for, and a cache key is built from it.
    """
    if value.startswith("["):
        literal, sep, rest = value[1:].partition("]")
        if not sep:
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        host = f"[{literal.lower()}]"
    else:
        host, _, _ = value.partition(":")
        rest = value[len(host) :]
        if not _REG_NAME.fullmatch(host):
            return None
        host = host.lower()
    if not rest:
        return host, None
    if not rest.startswith(":") or not _PORT.fullmatch(port := rest[1:]):
        return None
    if not port:
        return host, None  # "host:" means the default port (RFC 3986 3.2.3)
    if len(port) > 5:
        return None
    number = int(port)
    return (host, number) if number <= 65535 else None


def shared_fill_headers(origin_headers: Headers, vary: Iterable[str] | None) -> Headers:
    """What a slice fetch shared by many clients sends: the origin's Host and the fields
    the object varies on (equal for every client of the entry by construction), nothing
    that belongs to the client who happened to start it (Cookie, Authorization,
    X-Forwarded-For...). An origin that refuses or tailors its answer to one client then
    cannot break, or purge, another client's download."""
    # X-Forwarded-Proto names this hop's listener, not a client; origins behind a TLS
    # terminator redirect requests without it.
    keep = {"host", "x-forwarded-proto"} | {name.lower() for name in vary or ()}
    headers = [(k, v) for k, v in origin_headers if k in keep]
    headers.append(("via", VIA_TOKEN))
    return headers


def _content_length(value: str) -> str:
    """The canonical decimal form (the parser has already refused anything but digits)."""
    value = value.strip(" \t")
    return str(int(value)) if value.isdigit() and value.isascii() else value
