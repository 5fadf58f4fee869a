"""Small header helpers shared by the modules of this package (internal).

Headers are ``Sequence[tuple[str, str]]`` with lowercase names, as decoded at the proxy
boundary. Every lookup here lowercases the name it is given and the names it reads, so a
caller that forgets to lowercase still gets the right answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.edge.headers import HOP_BY_HOP as HOP_BY_HOP  # re-exported for this package

Headers = Sequence[tuple[str, str]]
"""A header section: (lowercase name, value) pairs in wire order, repeated names allowed."""

HeaderList = list[tuple[str, str]]

DELTA_SECONDS_MAX = 2**31
"""RFC 9111 1.2.2: a delta-seconds too large to represent is taken as 2^31."""


def get_all(headers: Headers, name: str) -> list[str]:
    """Every value of field ``name``, in order."""
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def get_first(headers: Headers, name: str) -> str | None:
    """The first value of field ``name``, or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def has(headers: Headers, name: str) -> bool:
    """True when field ``name`` occurs at least once (even with an empty value)."""
    name = name.lower()
    return any(key.lower() == name for key, _ in headers)


def split_list(values: Iterable[str]) -> list[str]:
    """Members of a comma-separated list field (RFC 9110 5.6.1), quotes respected.

    Commas inside a quoted-string do not split; empty members are dropped; members are
    stripped of optional whitespace. Never raises: an unterminated quote runs to the end.
    """
    members: list[str] = []
    for value in values:
        current: list[str] = []
        in_quote = False
        escaped = False
        for char in value:
            if in_quote:
                current.append(char)
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_quote = False
            elif char == '"':
                in_quote = True
                current.append(char)
            elif char == ",":
                member = "".join(current).strip(" \t")
                if member:
                    members.append(member)
                current = []
            else:
                current.append(char)
        member = "".join(current).strip(" \t")
        if member:
            members.append(member)
    return members


def unquote(value: str) -> str:
    """The content of a quoted-string (RFC 9110 5.6.4), or ``value`` itself if unquoted."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return value


def parse_delta_seconds(value: str) -> int | None:
    """A non-negative delta-seconds (RFC 9111 1.2.2), clamped to 2^31; None if invalid.

    Digits only (no sign, no whitespace inside, no decimals): ``"5"`` is valid, ``"-1"``,
    ``"1.5"``, ``"0x10"``, ``""`` are not.
    """
    text = value.strip(" \t")
    if not text or not text.isascii() or not text.isdigit():
        return None
    # int() of a huge digit string is slow and may hit the int-str limit: clamp by length.
    if len(text) > 10:
        return DELTA_SECONDS_MAX
    return min(int(text), DELTA_SECONDS_MAX)


def connection_tokens(headers: Headers) -> set[str]:
    """Lowercase field names listed in Connection (RFC 9110 7.6.1)."""
    return {member.lower() for member in split_list(get_all(headers, "connection"))}
