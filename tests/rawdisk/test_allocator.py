"""BlockMap: contiguous extents, next-fit, never a used block handed out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cache.rawdisk.allocator import FREE, HELD, USED, BlockMap, fragmentation_of


def test_allocates_contiguous_runs_next_fit() -> None:
    bm = BlockMap(100)
    a = bm.allocate(10)
    b = bm.allocate(10)
    assert (a, b) == (0, 10)
    bm.free(0, 10)
    # Next-fit: continues after the cursor before wrapping to the freed run.
    assert bm.allocate(5) == 20
    assert bm.free_blocks == 100 - 15


def test_wraps_and_fails_cleanly_when_no_run_fits() -> None:
    bm = BlockMap(30)
    assert bm.allocate(10) == 0
    assert bm.allocate(10) == 10
    assert bm.allocate(10) == 20
    bm.free(5, 3)
    bm.free(15, 3)
    assert bm.allocate(4) == -1  # 6 blocks free, but no run of 4
    assert bm.allocate(3) == 5
    assert bm.free_blocks == 3


def test_held_blocks_are_not_allocatable_and_reload_as_free() -> None:
    bm = BlockMap(8)
    start = bm.allocate(8, HELD)
    assert start == 0 and bm.allocate(1) == -1
    reloaded = BlockMap(8, bytes(bm.map))
    assert reloaded.free_blocks == 8
    bm.mark(0, 8, USED)
    assert BlockMap(8, bytes(bm.map)).free_blocks == 0


def test_fragmentation_metric() -> None:
    assert fragmentation_of(0, 0) == 0.0
    assert fragmentation_of(100, 100) == 0.0
    assert fragmentation_of(100, 10) == 0.9


def test_free_runs() -> None:
    bm = BlockMap(20)
    bm.allocate(20)
    bm.free(2, 3)
    bm.free(10, 5)
    assert bm.free_runs(0, 20) == [(2, 3), (10, 5)]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 40)),
        st.tuples(st.just("free"), st.integers(0, 10_000)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_never_hands_out_a_used_block(operations: list[tuple[str, int]]) -> None:
    blocks = 256
    bm = BlockMap(blocks)
    owned: dict[int, int] = {}  # start -> count
    used: set[int] = set()
    for op, arg in operations:
        if op == "alloc":
            start = bm.allocate(arg)
            if start < 0:
                # No free run of that length really exists.
                assert bytes(arg) not in bytes(bm.map)
                continue
            extent = set(range(start, start + arg))
            assert not extent & used, "handed out a used block"
            assert max(extent) < blocks
            used |= extent
            owned[start] = arg
        elif owned:
            start = sorted(owned)[arg % len(owned)]
            count = owned.pop(start)
            bm.free(start, count)
            used -= set(range(start, start + count))
        expected = bytearray(blocks)
        for block in used:
            expected[block] = USED
        assert bytes(bm.map) == bytes(expected)
        assert bm.free_blocks == blocks - len(used) == bm.map.count(FREE)
