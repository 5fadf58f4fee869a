"""What the L2 store acknowledges (a write, a checkpoint, a purge) holds, also under load."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from cache.rawdisk import RawDiskStore, codec
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, check_consistent, payload

Make = Callable[..., RawDiskCacheSettings]


async def test_put_compressing_across_a_covering_delete_is_dropped(
    make_settings: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put whose compression is still running when a delete covers its key is dropped."""
    store = await RawDiskStore.open(make_settings(enable_compression=True))
    gate = threading.Event()
    entered = threading.Event()
    original = codec.encode

    def slow_encode(*args: Any) -> Any:
        entered.set()
        gate.wait(10)
        return original(*args)

    monkeypatch.setattr(codec, "encode", slow_encode)
    try:
        key = "http://o/a v 0"
        put = asyncio.create_task(store.put_slice(key, b"stale " * 2000, None))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        assert await store.delete("http://o/a") == 0
        gate.set()
        assert not await put
        assert await store.get_slice(key) is None
        assert store.stats()["discarded_puts_total"] == 1
        check_consistent(store)
    finally:
        gate.set()
        await store.close()
