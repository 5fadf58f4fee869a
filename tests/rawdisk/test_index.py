"""The packed index: open addressing with backward-shift deletion, prefixes, persistence."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from cache.rawdisk.index import NSHARDS, Entry, Index, key_is_storable


def entry(h: int, start: int = 0) -> Entry:
    return Entry(
        key_hash=h,
        gen=1,
        checksum=0,
        start=start,
        nblocks=1,
        stored_len=10,
        orig_len=10,
        expires=0,
        created=0,
        atime=0,
        key_len=0,
        codec=0,
        kind=0,
        freq=0,
        flags=0,
    )


def test_keys_must_be_printable() -> None:
    assert key_is_storable(b"http://a/b 0123 4")
    assert not key_is_storable(b"")
    assert not key_is_storable(b"a\nb")
    assert not key_is_storable(b"a\x1eb")
    assert not key_is_storable(b"x" * 5000)


def test_prefix_marking_counts_and_hides() -> None:
    index = Index()
    for i, key in enumerate([b"a 1", b"a 2", b"ab 1", b"b 1"]):
        index.insert(key, entry(i), index.take_row())
    assert index.count_prefix(b"a ") == 2
    assert index.mark_prefix(b"a ", 0, len(index.arena)) == 2
    assert index.entries == 2
    assert sorted(index.live_keys()) == [b"ab 1", b"b 1"]
    assert sorted(index.dead_rows(10)) == [0, 1]
    # Windows that split the arena anywhere find every match exactly once.
    for window in range(1, 12):
        fresh = Index()
        for i, key in enumerate([b"a 1", b"xa 2", b"a 3", b"a"]):
            fresh.insert(key, entry(i), fresh.take_row())
        total = sum(
            fresh.mark_prefix(b"a", pos, pos + window) for pos in range(0, len(fresh.arena), window)
        )
        assert total == 3
        assert list(fresh.live_keys()) == [b"xa 2"]


keys = st.binary(min_size=1, max_size=12).map(lambda b: b.hex().encode())
ops = st.lists(
    st.tuples(st.sampled_from(["put", "del", "purge", "compact"]), keys, st.integers(0, 7)),
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_index_matches_a_dict_even_with_colliding_hashes(
    operations: list[tuple[str, bytes, int]],
) -> None:
    index = Index()
    model: dict[bytes, int] = {}  # key -> start
    hashes: dict[bytes, int] = {}
    # Hashes drawn from a tiny space: long probe clusters in one shard.
    for n, (op, key, small) in enumerate(operations):
        # Every key in shard 0 with one of 8 home slots; a key keeps its first hash.
        h = hashes.setdefault(key, small * NSHARDS)
        if op == "put":
            row = index.find(key, h)
            if row >= 0:
                assert key in model
                index.replace(row, entry(h, n))
            else:
                assert key not in model
                index.insert(key, entry(h, n), index.take_row())
            model[key] = n
        elif op == "del":
            if key in model:
                row = index.find(key, hashes[key])
                assert row >= 0
                index.remove(row)
                del model[key]
        elif op == "purge":
            prefix = key[:1]
            marked = index.mark_prefix(prefix, 0, len(index.arena))
            doomed = [k for k in model if k.startswith(prefix)]
            assert marked == len(doomed)
            for row in index.dead_rows(10_000):
                index.remove(row)
            for k in doomed:
                del model[k]
        else:
            for _ in index.compact_steps(window=7):
                pass
        assert index.entries == len(model)
        for k, start in model.items():
            row = index.find(k, hashes[k])
            assert row >= 0 and index.extent_of(row)[0] == start and index.is_visible(row)
            assert index.key_of(row) == k
        assert sorted(index.live_keys()) == sorted(model)


def test_sections_round_trip() -> None:
    index = Index()
    for i in range(2000):
        index.insert(f"k{i}".encode(), entry(i * 7919, i), index.take_row())
    for i in range(0, 2000, 3):
        index.remove(index.find(f"k{i}".encode(), i * 7919))
    raw = [bytes(s) for s in index.sections()]
    rows, key_off, arena, free_rows, caps, used, *tables = raw
    loaded = Index.from_sections(
        rows, key_off, arena, free_rows, caps, used, b"".join(tables), index.counters()
    )
    assert loaded.entries == index.entries
    for i in range(2000):
        row = loaded.find(f"k{i}".encode(), i * 7919)
        assert (row >= 0) == (i % 3 != 0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.booleans(), st.booleans()), max_size=60),
    st.integers(0, 2**32 - 1),
    st.integers(0, 70),
    st.integers(0, 70),
)
def test_expired_rows_are_the_visible_rows_expired_by_then(
    rows: list[tuple[int, bool, bool]], now: int, start: int, length: int
) -> None:
    """The strided scan the maintenance loop uses agrees with reading row by row: visible
    (used, not purged) rows of the window whose expiry is set and not after ``now``."""
    index = Index()
    for i, (expires, used, purged) in enumerate(rows):
        row = index.take_row()
        index.insert(b"k%d" % i, dataclasses.replace(entry(i + 1), expires=expires), row)
        if purged:
            index.mark_prefix(b"k%d" % i, 0, len(index.arena))
        if not used:
            index.remove(row)
    stop = min(index.nrows, start + length)
    expected = [
        row
        for row in range(start, stop)
        if index.is_visible(row) and 0 < index.expires_of(row) <= now
    ]
    assert index.expired_rows(start, stop, now) == expected
