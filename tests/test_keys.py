"""The key format (cache/keys.py): what builds a key and what parses it agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache import keys

# An object key is a URL: never a raw space (the separator) inside.
object_keys = st.text(
    alphabet=st.characters(exclude_characters=keys.SEPARATOR),
    min_size=1,
    max_size=60,
)
headers = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=3)


@st.composite
def entry_keys(draw: st.DrawFn) -> tuple[str, str]:
    """(object key, entry key): the object itself, a Vary variant or a private entry."""
    object_key = draw(object_keys)
    kind = draw(st.sampled_from(["object", "variant", "private"]))
    if kind == "variant":
        return object_key, keys.variant_key(object_key, draw(headers))
    if kind == "private":
        return object_key, keys.private_key(object_key)
    return object_key, object_key


versions = st.text(max_size=40).map(keys.version_tag)
indexes = st.integers(min_value=0, max_value=10**12)


@given(entry_keys(), versions, indexes)
def test_a_slice_key_splits_back_into_what_built_it(
    pair: tuple[str, str], version: str, index: int
) -> None:
    object_key, entry_key = pair
    key = keys.slice_key(entry_key, version, index)
    assert keys.split_slice_key(key) == (entry_key, version, index)
    assert keys.object_key_of(key) == object_key
    assert keys.object_key_of(entry_key) == object_key
    assert keys.belongs_to(key, object_key)
    assert keys.belongs_to(entry_key, object_key)
    assert key.startswith(keys.version_prefix(entry_key, version))
    assert key.startswith(keys.object_prefix(entry_key))


@given(entry_keys(), versions, versions, indexes)
def test_a_version_prefix_holds_that_version_only(
    pair: tuple[str, str], version: str, other: str, index: int
) -> None:
    _, entry_key = pair
    key = keys.slice_key(entry_key, other, index)
    assert key.startswith(keys.version_prefix(entry_key, version)) == (other == version)


@given(entry_keys(), versions, indexes, object_keys)
def test_a_key_belongs_to_exactly_its_own_object(
    pair: tuple[str, str], version: str, index: int, other: str
) -> None:
    object_key, entry_key = pair
    key = keys.slice_key(entry_key, version, index)
    for candidate in (other, object_key + other, object_key[:-1]):
        if candidate:
            assert keys.belongs_to(key, candidate) == (candidate == object_key)


@given(entry_keys())
def test_an_entry_key_is_not_a_slice_key(pair: tuple[str, str]) -> None:
    _object_key, entry_key = pair
    with pytest.raises(ValueError):
        keys.split_slice_key(entry_key)


@pytest.mark.parametrize(
    "key",
    ["e v 01", "e v -1", "e v +1", "e v 1_0", "e v \u0661", "e v ", "e  1", " v 1", "e v x"],
)
def test_only_what_slice_key_can_build_parses(key: str) -> None:
    with pytest.raises(ValueError):
        keys.split_slice_key(key)
