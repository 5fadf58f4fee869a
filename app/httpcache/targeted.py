"""Targeted cache control (RFC 9213): ``CDN-Cache-Control`` and fields like it.

A targeted field is a Structured Field Dictionary (RFC 8941 3.2) of cache directives
aimed at one class of caches. A cache with a list of targeted fields uses the first one
present with a valid, non-empty value, and then ignores ``Cache-Control`` and
``Expires`` of that response (RFC 9213 2.2); without one, those apply as usual.

:func:`effective_headers` is the whole interface for the decision code: it returns the
response headers as this cache must read them (the targeted directives rendered as the
only ``Cache-Control``, ``Expires`` gone), and the caller keeps forwarding and storing the
origin's headers unchanged (targeted fields are for every cache of the class on the
path, 2.2: forward them).

Product decisions:

* A parse error anywhere in the field, or a directive this cache knows with a value of
  the wrong type (``max-age="10"``, ``no-store=5``), makes the whole field invalid: it is
  ignored, and Cache-Control (which the origin wrote for everyone) applies. Half a
  targeted policy is worse than the general one.
* Parameters on members are ignored (2.1); ``no-store=?0`` means the directive is absent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._fields import HeaderList, Headers, get_all

__all__ = [
    "CDN_CACHE_CONTROL",
    "effective_headers",
    "parse_dictionary",
    "targeted_directives",
    "targeted_fields",
]

CDN_CACHE_CONTROL = "cdn-cache-control"


class Token(str):
    """An sf-token (kept apart from an sf-string: ``max-age=abc`` vs ``max-age="abc"``)."""

    __slots__ = ()


BareItem = int | float | str | bool | bytes  # a str may be a Token
Item = tuple[BareItem | list[tuple[BareItem, dict[str, BareItem]]], dict[str, BareItem]]


class ParseError(ValueError):
    pass


_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_OWS = " \t"


class _Parser:
    """RFC 8941 4.2 parsing of a Dictionary, one character position at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.pos += 1

    def key(self) -> str:
        match = _KEY.match(self.text, self.pos)
        if match is None:
            raise ParseError(f"bad key at {self.pos}")
        self.pos = match.end()
        return match.group()

    def bare_item(self) -> BareItem:
        char = self.peek()
        if char == "-" or char.isdigit():
            return self.number()
        if char == '"':
            return self.string()
        if char == "?":
            value = self.text[self.pos + 1 : self.pos + 2]
            if value not in ("0", "1"):
                raise ParseError("bad boolean")
            self.pos += 2
            return value == "1"
        if char == ":":
            match = _BYTES.match(self.text, self.pos)
            if match is None:
                raise ParseError("bad byte sequence")
            self.pos = match.end()
            return match.group(1).encode("ascii")
        if char and (char.isascii() and char.isalpha() or char == "*"):
            match = _TOKEN.match(self.text, self.pos)
            assert match is not None  # the first character matches
            self.pos = match.end()
            return Token(match.group())
        raise ParseError(f"bad item at {self.pos}")

    def number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:
            raise ParseError("bad number")
        text = match.group()
        digits = text.lstrip("-")
        if match.group(1) is None:
            if len(digits) > 15:
                raise ParseError("integer too long")
            self.pos = match.end()
            return int(text)
        whole, fraction = digits.split(".")
        if len(whole) > 12 or len(fraction) > 3:
            raise ParseError("decimal too long")
        self.pos = match.end()
        return float(text)

    def string(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\"):
                    raise ParseError("bad escape")
                out.append(escaped)
                self.pos += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise ParseError("bad string character")
            else:
                out.append(char)
        raise ParseError("unterminated string")

    def parameters(self) -> dict[str, BareItem]:
        params: dict[str, BareItem] = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            name = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[name] = value
        return params

    def item_or_inner_list(self) -> Item:
        if self.peek() != "(":
            return self.bare_item(), self.parameters()
        self.pos += 1
        members: list[tuple[BareItem, dict[str, BareItem]]] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.pos += 1
                return members, self.parameters()
            members.append((self.bare_item(), self.parameters()))
            if self.peek() not in (" ", ")"):
                raise ParseError("bad inner list")

    def dictionary(self) -> dict[str, Item]:
        members: dict[str, Item] = {}
        while self.pos < len(self.text):
            name = self.key()
            if self.peek() == "=":
                self.pos += 1
                members[name] = self.item_or_inner_list()
            else:
                members[name] = (True, self.parameters())
            self.skip(_OWS)
            if self.pos >= len(self.text):
                return members
            if self.peek() != ",":
                raise ParseError(f"expected ',' at {self.pos}")
            self.pos += 1
            self.skip(_OWS)
            if self.pos >= len(self.text):
                raise ParseError("trailing comma")
        return members


def parse_dictionary(values: Sequence[str]) -> dict[str, Item] | None:
    """An RFC 8941 Dictionary from a field's lines (joined with commas, 4.2), or None
    when it does not parse. Duplicate keys: the last one wins (4.2.2)."""
    text = ",".join(values).strip(" ")
    if not text.isascii():
        return None
    try:
        return _Parser(text).dictionary()
    except ParseError:
        return None


_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})
_BOOLEAN_DIRECTIVES = frozenset(
    {
        "no-store",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "must-understand",
        "no-transform",
        "immutable",
    }
)
_QUALIFIED_DIRECTIVES = frozenset({"private", "no-cache"})


def _render(name: str, value: object) -> str | None:
    """One directive as Cache-Control syntax; None: absent; ValueError: wrong type."""
    if name in _INTEGER_DIRECTIVES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(name)
        return f"{name}={value}"
    if name in _BOOLEAN_DIRECTIVES:
        if not isinstance(value, bool):
            raise ValueError(name)
        return name if value else None
    if name in _QUALIFIED_DIRECTIVES:
        if value is True:
            return name
        if value is False:
            return None
        if isinstance(value, str) and not isinstance(value, Token):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            return f'{name}="{escaped}"'
        raise ValueError(name)
    # An extension: kept by name (and a simple value), ignored by the decisions anyway.
    if value is True:
        return name
    if isinstance(value, (int, Token)) and not isinstance(value, bool):
        return f"{name}={value}"
    return None


def targeted_directives(values: Sequence[str]) -> str | None:
    """The directives of one targeted field as a Cache-Control value ("" when it only
    has directives that mean nothing), or None when the field is absent or invalid."""
    if not values:
        return None
    members = parse_dictionary(values)
    if not members:
        return None  # empty or unparseable: ignored (RFC 9213 2.1)
    rendered: list[str] = []
    try:
        for name, (value, _params) in members.items():
            text = _render(name, value)
            if text is not None:
                rendered.append(text)
    except ValueError:
        return None
    return ", ".join(rendered)


def effective_headers(headers: Headers, targets: Sequence[str]) -> Headers:
    """``headers`` as this cache reads them for storing and freshness (RFC 9213 2.2).

    ``targets``: lowercase names of the targeted fields this cache obeys, most specific
    first. The first one present and valid replaces Cache-Control and Expires; else
    ``headers`` is returned as is (the same object, so callers can tell).
    """
    for target in targets:
        directives = targeted_directives(get_all(headers, target))
        if directives is None:
            continue
        kept: HeaderList = [
            (name, value)
            for name, value in headers
            if name.lower() not in ("cache-control", "expires")
        ]
        if directives:
            kept.append(("cache-control", directives))
        return kept
    return headers


def targeted_fields(operator_field: str) -> tuple[str, ...]:
    """The target list (RFC 9213 2.2): the operator's own field, then CDN-Cache-Control."""
    own = operator_field.strip().lower()
    return (own, CDN_CACHE_CONTROL) if own and own != CDN_CACHE_CONTROL else (CDN_CACHE_CONTROL,)
