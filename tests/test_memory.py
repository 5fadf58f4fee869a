"""The L1 MemoryStore's side of the store protocol: expiry and byte bound (no HTTP here)."""

from __future__ import annotations

from cache.memory import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_an_expired_entry_is_neither_served_nor_contained() -> None:
    """The protocol's ``expires_at``: the app passes None today, the contract still holds."""
    store = MemoryStore(1 << 20)
    clock = FakeClock()
    store._time = clock
    assert await store.put_slice("a v 0", b"slice", clock.now + 10)
    assert await store.put_meta("a", b"meta", clock.now + 10)
    assert await store.put_slice("b v 0", b"kept", None)
    assert store.contains_slice("a v 0")
    assert bytes(await store.get_slice("a v 0") or b"") == b"slice"
    clock.now += 10  # expires_at <= now: expired
    assert not store.contains_slice("a v 0")
    assert await store.get_slice("a v 0") is None
    assert await store.get_meta("a") is None
    assert bytes(await store.get_slice("b v 0") or b"") == b"kept"
    assert store.expired == 2


async def test_an_entry_larger_than_the_store_is_refused_and_evicts_nothing() -> None:
    store = MemoryStore(1000)
    assert await store.put_slice("small v 0", b"x" * 100, None)
    assert not await store.put_slice("big v 0", b"y" * 5000, None)
    assert await store.get_slice("big v 0") is None
    assert bytes(await store.get_slice("small v 0") or b"") == b"x" * 100
