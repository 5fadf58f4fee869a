"""L2 writes in batches (issue 17): ``put_many`` crosses to the worker threads at most
twice per batch, answers each put as ``put_slice``/``put_meta`` would in that order, and
a delete during the batch still wins; the write-behind queue hands L2 what is queued."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cache.memory import MemoryStore
from cache.protocol import PutRequest, Store
from cache.rawdisk import RawDiskStore
from cache.tiered import TieredStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, check_consistent, payload

Make = Callable[..., RawDiskCacheSettings]


def _counting_crossings(store: RawDiskStore) -> list[str]:
    """Records the name of every function L2 runs in its worker threads."""
    core = store._core
    run = core.run
    seen: list[str] = []

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await run(fn, *args)

    core.run = counted  # type: ignore[method-assign]
    return seen


async def test_a_batch_crosses_to_the_worker_threads_twice(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(enable_compression=True))
    try:
        assert isinstance(store, Store)  # put_many is part of the store protocol
        crossings = _counting_crossings(store)
        requests = [
            PutRequest(f"http://o/{n} v 0", b"compressible " * 700, None, "slice", None)
            for n in range(10)
        ] + [PutRequest(f"http://o/{n}", b'{"size": 1}', None, "meta", False) for n in range(10)]
        assert await store.put_many(requests) == [True] * 20
        assert crossings == ["_encode_all", "_write_records"]
        for n in range(10):
            assert await store.get_slice(f"http://o/{n} v 0") == b"compressible " * 700
            assert await store.get_meta(f"http://o/{n}") == b'{"size": 1}'
        assert store.stats()["compressed_writes_total"] == 10
        check_consistent(store)
    finally:
        await store.close()


async def test_each_put_of_a_batch_is_answered_in_order(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        too_big = store.max_payload + 1
        requests = [
            PutRequest("http://o/a v 0", payload("http://o/a v 0", 1, 5000), None, "slice", None),
            PutRequest("http://o/b v 0", b"x" * too_big, None, "slice", False),  # declined
            PutRequest("http://o/c v 0", b"old", 1.0, "slice", None),  # expired: declined
            PutRequest("http://o/a v 0", payload("http://o/a v 0", 2, 7000), None, "slice", None),
        ]
        assert await store.put_many(requests) == [True, False, False, True]
        got = await store.get_slice("http://o/a v 0")
        assert got is not None and bytes(got) == payload("http://o/a v 0", 2, 7000)
        assert sorted(store.keys()) == ["http://o/a v 0"]
        check_consistent(store)
    finally:
        await store.close()


async def test_a_delete_while_the_batch_is_written_wins(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    writes = store._writes
    write_records = writes._write_records
    in_thread, go_on = threading.Event(), threading.Event()

    def held(puts: list[Any]) -> list[int | BaseException]:
        in_thread.set()
        go_on.wait(10)
        return write_records(puts)

    writes._write_records = held  # type: ignore[method-assign]
    try:
        keys = ["http://o/keep v 0", "http://o/gone v 0", "http://o/gone v 1"]
        batch = asyncio.create_task(
            store.put_many([PutRequest(k, payload(k, 1, 3000), None, "slice", False) for k in keys])
        )
        assert await asyncio.to_thread(in_thread.wait, 10)
        await store.delete("http://o/gone")  # lands while the extents are being written
        go_on.set()
        assert await asyncio.wait_for(batch, 10) == [True, False, False]
        assert sorted(store.keys()) == ["http://o/keep v 0"]
        assert store.stats()["discarded_puts_total"] == 2
        check_consistent(store)
    finally:
        go_on.set()
        await store.close()


async def test_the_write_behind_queue_hands_l2_what_is_queued(make_settings: Make) -> None:
    l2 = await RawDiskStore.open(make_settings())
    calls: list[int] = []
    put_many = l2.put_many

    async def counted(requests: Sequence[PutRequest]) -> list[bool]:
        calls.append(len(requests))
        return await put_many(requests)

    l2.put_many = counted  # type: ignore[method-assign]
    store = TieredStore(MemoryStore(64 * MiB), l2, queue_size=64)
    try:
        for n in range(20):
            await store.put_meta(f"http://o/{n}", b"{}", None, epoch=store.epoch)
            await store.put_slice(f"http://o/{n} v 0", b"s" * 4096, None, epoch=store.epoch)
        await store.flush()
        assert store.counters["write_behind_written"] == 40
        assert sum(calls) == 40 and len(calls) < 40, calls
        for n in range(20):
            assert await l2.get_meta(f"http://o/{n}") == b"{}"
            assert await l2.get_slice(f"http://o/{n} v 0") == b"s" * 4096
    finally:
        await store.close()


@pytest.mark.parametrize("size", [1, 3])
async def test_a_purge_between_queueing_and_the_batch_discards_only_what_it_covers(
    make_settings: Make, size: int
) -> None:
    l2 = await RawDiskStore.open(make_settings())
    store = TieredStore(MemoryStore(64 * MiB), l2, queue_size=64)
    try:
        epoch = store.epoch
        for n in range(size):
            await store.put_slice(f"http://o/gone v {n}", b"g" * 100, None, epoch=epoch)
            await store.put_slice(f"http://o/kept v {n}", b"k" * 100, None, epoch=epoch)
        await store.delete("http://o/gone")  # before the writer's turn: the batch drops it
        await store.flush()
        assert sorted(l2.keys()) == [f"http://o/kept v {n}" for n in range(size)]
        assert store.counters["stale_writes_discarded"] == size
        assert store.counters["write_behind_written"] == size
    finally:
        await store.close()


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.one_of(
            st.lists(
                st.tuples(
                    st.integers(0, 7),  # key (odd: a metadata blob)
                    st.integers(0, 40_000),  # size
                    st.booleans(),  # compressible content
                ),
                min_size=1,
                max_size=12,
            ),
            st.sampled_from(["delete", "restart"]),
        ),
        max_size=12,
    )
)
def test_batches_store_what_the_same_puts_one_by_one_would(
    make_settings: Make, steps: list[list[tuple[int, int, bool]] | str]
) -> None:
    settings = make_settings(reformat=True)

    async def run() -> None:
        store = await RawDiskStore.open(settings)
        model: dict[str, bytes] = {}
        try:
            for n, step in enumerate(steps):
                if step == "delete":
                    await store.delete("o1")
                    model = {k: v for k, v in model.items() if not k.startswith("o1 ")}
                elif step == "restart":
                    await store.close()
                    store = await RawDiskStore.open(settings)
                else:
                    assert isinstance(step, list)
                    requests = []
                    for k, size, plain in step:
                        key = f"o{k % 3} {k}"
                        data = b"z" * size if plain else payload(key, n, size)
                        kind: Literal["slice", "meta"] = "meta" if k % 2 else "slice"
                        requests.append(PutRequest(key, data, None, kind, None))
                    answers = await store.put_many(requests)
                    assert answers == [True] * len(requests)  # room and time for all
                    for request in requests:
                        model[request.key] = bytes(request.data)
                check_consistent(store)
                assert sorted(store.keys()) == sorted(model)
            for key, data in model.items():
                meta = int(key.rsplit(" ", 1)[1]) % 2
                got = await (store.get_meta(key) if meta else store.get_slice(key))
                assert got is not None and bytes(got) == data
        finally:
            await store.close()

    if os.path.exists(settings.device_path):
        os.unlink(settings.device_path)
    asyncio.run(run())


async def test_a_batch_larger_than_the_index_loses_no_acknowledged_put(
    make_settings: Make,
) -> None:
    # helper-70: 12,000 puts in one batch on a store of 1,024 entries were all acknowledged
    # (the batch's own rows and journal records were not counted until they committed);
    # the checkpoint then did not fit its slot and 1,720 were gone after a clean reopen.
    settings = make_settings(block_size=512)
    store = await RawDiskStore.open(settings)
    try:
        requests = [
            PutRequest(f"http://o/{n:05d} v 0", b"x" * 64, None, "slice", False)
            for n in range(12_000)
        ]
        answers = await store.put_many(requests)
        acknowledged = {r.key for r, ok in zip(requests, answers, strict=True) if ok}
        stats = store.stats()
        assert 0 < len(acknowledged) <= stats["max_entries"]
        assert stats["journal_fill_ratio"] <= 1.0
    finally:
        await store.close()
    assert store.stats()["checkpoint_failures_total"] == 0
    store = await RawDiskStore.open(settings)
    try:
        check_consistent(store)
        kept = set(store.keys())
        # Maintenance may evict below its watermark at reopen; nothing may be lost silently
        # beyond that: what is kept was acknowledged, and reads back exact.
        assert kept <= acknowledged
        assert store.stats()["evictions_total"] >= len(acknowledged) - len(kept)
        for key in list(kept)[:50]:
            assert await store.get_slice(key) == b"x" * 64
    finally:
        await store.close()


async def test_a_put_racing_close_is_declined_not_raised(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(enable_compression=True))
    requests = [
        PutRequest(f"http://o/{n} v 0", b"compressible " * 5000, None, "slice", None)
        for n in range(32)
    ]
    batch = asyncio.create_task(store.put_many(requests))
    await asyncio.sleep(0)  # admitted; compression is scheduled
    await store.close()  # shuts the worker pool down under the batch
    answers = await asyncio.wait_for(batch, 10)  # helper-70: RuntimeError before
    assert len(answers) == 32


async def test_a_put_the_store_cannot_make_is_declined_alone(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        requests = [
            PutRequest("http://o/a v 0", b"a", None, "slice", False),
            PutRequest("http://o/\ud800 v 0", b"b", None, "slice", False),  # lone surrogate
            PutRequest("http://o/c v 0", b"c", float("nan"), "slice", False),
            PutRequest("http://o/d v 0", b"d", None, "slice", False),
        ]
        assert await store.put_many(requests) == [True, False, False, True]
        assert not store._writes.deletes._inflight, "a put's delete-log entry leaked"
        assert store._writes._journal_reserved == 0 and store._writes._rows_reserved == 0
        check_consistent(store)
    finally:
        await store.close()


async def test_a_write_l2_declines_is_counted_as_declined_not_written(
    make_settings: Make,
) -> None:
    # helper-71: write_behind_written counted puts L2 had turned down (no space, admission).
    l2 = await RawDiskStore.open(make_settings())
    store = TieredStore(MemoryStore(64 * MiB), l2, queue_size=64)
    try:
        too_big = b"x" * (l2.max_payload + 1)
        await store.put_slice("http://o/big v 0", too_big, None, epoch=store.epoch)
        await store.put_slice("http://o/small v 0", b"s", None, epoch=store.epoch)
        await store.flush()
        assert store.counters["write_behind_written"] == 1
        assert store.counters["l2_declined"] == 1
    finally:
        await store.close()


async def test_close_counts_every_write_a_stuck_l2_never_took() -> None:
    # helper-71: with L2 stuck, close() cut the batch in flight and the queue short, and
    # those writes were counted nowhere.
    class StuckL2(MemoryStore):
        name = "l2"

        async def put_many(self, requests: Sequence[PutRequest]) -> list[bool]:
            await asyncio.Event().wait()  # never returns
            return []

    store = TieredStore(MemoryStore(MiB), StuckL2(MiB), queue_size=4)
    for n in range(3):
        await store.put_slice(f"http://o/s v {n}", b"x", None, epoch=store.epoch)
    await asyncio.sleep(0.01)  # the writer takes what is queued and gets stuck with it
    await store.put_slice("http://o/s v 3", b"x", None, epoch=store.epoch)  # queued behind
    await store.flush(timeout=0.05)
    # close() waits 10 s for the queue to drain; here it never will.
    store.flush = functools.partial(TieredStore.flush, store, 0.05)  # type: ignore[method-assign]
    await store.close()
    counted = store.counters["write_behind_dropped"] + store.counters["write_behind_written"]
    assert counted == 4
