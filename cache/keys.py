"""Cache key scheme shared by every tier.

``object key``  what the origin sees: ``scheme://host:port/path?query``.
``entry key``   the object key, or for a Vary variant ``<object key> vary:<digest>``.
``slice key``   ``<entry key> <version> <index>``: the version is a digest of the object's
                validator, so slices of two versions of a file can never be read as one.

Request targets never contain a raw space, so :data:`SEPARATOR` cannot occur inside an
object key, and "everything belonging to object K" is exactly the keys equal to K or
starting with ``K + SEPARATOR``.
"""

from __future__ import annotations

import functools
import hashlib
import uuid

SEPARATOR = " "


def variant_key(object_key: str, selecting_headers: list[tuple[str, str]]) -> str:
    """The entry key of one Vary variant, from the (name, value) pairs the response varies on."""
    canonical = "\n".join(f"{name.lower()}:{value}" for name, value in selecting_headers)
    digest = hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()
    return f"{object_key}{SEPARATOR}vary:{digest}"


@functools.lru_cache(maxsize=4096)  # asked once per slice of every response
def version_tag(validator: str) -> str:
    """A short, key-safe digest of an object's validator (strong ETag, or Last-Modified+size)."""
    return hashlib.blake2b(validator.encode(), digest_size=8).hexdigest()


def private_key(object_key: str) -> str:
    """An entry key no other request will use: a response that must not be shared."""
    return f"{object_key}{SEPARATOR}private:{uuid.uuid4().hex}"


def slice_key(entry_key: str, version: str, index: int) -> str:
    """The key of slice ``index`` (0-based) of one version of an entry."""
    return slice_key_prefix(entry_key, version) + str(index)


def slice_key_prefix(entry_key: str, version: str) -> str:
    """What every slice key of one version of an entry starts with (then the index)."""
    return f"{entry_key}{SEPARATOR}{version}{SEPARATOR}"


def split_slice_key(key: str) -> tuple[str, str, int]:
    """``(entry key, version, index)`` of a key built by :func:`slice_key`.

    The exact inverse of :func:`slice_key`: raises ValueError for anything it cannot have
    built (no version, an index that is not a canonical non-negative decimal).
    """
    parts = key.rsplit(SEPARATOR, 2)
    if len(parts) != 3:
        raise ValueError(f"not a slice key: {key!r}")
    entry_key, version, index_text = parts
    if (
        not entry_key
        or not version
        or not (index_text.isascii() and index_text.isdigit())
        or str(int(index_text)) != index_text
    ):
        raise ValueError(f"not a slice key: {key!r}")
    return entry_key, version, int(index_text)


def version_prefix(entry_key: str, version: str) -> str:
    """What every slice key of one version of an entry starts with."""
    return f"{entry_key}{SEPARATOR}{version}{SEPARATOR}"


def object_key_of(key: str) -> str:
    """The object key that an object, variant, private or slice key belongs to."""
    return key.split(SEPARATOR, 1)[0]


def object_prefix(object_key: str) -> str:
    """What every slice, variant and private key of the object starts with."""
    return object_key + SEPARATOR


def belongs_to(key: str, object_key: str) -> bool:
    """True when ``key`` is the object's own key or one of its slice or variant keys."""
    return key == object_key or key.startswith(object_prefix(object_key))
