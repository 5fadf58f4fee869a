"""The store protocol every cache tier speaks (DESIGN.md, "The store protocol").

A store knows keys, bytes and opaque metadata blobs; it never sees an HTTP request. The
app serialises object metadata itself and hands the store bytes. Keys are built by
:mod:`cache.keys`: every slice key and variant key of an object starts with the object's
key followed by :data:`cache.keys.SEPARATOR`, so deleting an object, a prefix or everything
is a key-prefix operation each tier can do on its own index.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, TypeGuard, runtime_checkable

# A slice's bytes as a store hands them out. A memoryview may point into a store's own
# buffer (for example an L2 mmap); it stays valid until the caller drops it.
SliceData = bytes | memoryview


class SliceLease:
    """A slice's bytes borrowed from a store, zero-copy, until :meth:`release`.

    ``view`` may point into a store's mapping of its device (an L2 extent): the store keeps
    the extent from being freed, recycled or overwritten until the lease is released, so
    the bytes stay the version that was read even if the key is purged, evicted or
    replaced meanwhile (the key itself disappears at once). Release exactly when nothing
    reads ``view`` any more, including a socket buffer still holding a piece of it
    (:func:`borrowed`). ``release`` is idempotent; the lease is also a context manager.
    A lease over bytes a tier holds anyway (L1) has nothing to release.
    """

    __slots__ = ("_on_release", "view")

    def __init__(self, view: memoryview, on_release: Callable[[], None] | None = None) -> None:
        self.view = view
        self._on_release = on_release

    @classmethod
    def of(cls, data: SliceData) -> SliceLease:
        """A lease over bytes nobody recycles (an L1 entry, a decoded copy): a no-op release."""
        return cls(data if isinstance(data, memoryview) else memoryview(data))

    @property
    def pinned(self) -> bool:
        """Does this lease still hold a store's extent?"""
        return self._on_release is not None

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def __enter__(self) -> SliceLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def borrowed(piece: SliceData) -> TypeGuard[memoryview]:
    """Is ``piece`` a view into a store's mapping (valid only while its lease is held)?

    A writer that hands such a piece to a transport which keeps a reference instead of a
    copy (uvloop, asyncio on 3.12) must see it written out before the lease goes.
    """
    return isinstance(piece, memoryview) and isinstance(piece.obj, mmap.mmap)


@dataclass(frozen=True, slots=True)
class PutRequest:
    """One write of a batch (:meth:`Store.put_many`): a slice or a metadata blob."""

    key: str
    data: SliceData
    expires_at: float | None
    kind: Literal["slice", "meta"]
    compressible: bool | None  # False: already compressed, no attempt


@runtime_checkable
class Store(Protocol):
    """One cache tier. All methods are safe to call from the event loop thread."""

    name: str

    async def get_slice(self, key: str, *, next_key: str | None = None) -> SliceData | None:
        """The bytes stored under ``key``, or None when absent, expired or damaged.

        ``next_key``: the caller will probably ask for that key next (the following slice
        of a sequential read); a tier may start fetching it in. A hint only: a tier never
        parses keys to guess it, and may ignore it.
        """
        ...

    async def lease_slice(
        self, key: str, *, next_key: str | None = None, size_hint: int | None = None
    ) -> SliceLease | None:
        """The bytes stored under ``key`` without a copy, held until the lease is released
        (:class:`SliceLease`); None when absent, expired or damaged. ``next_key`` as for
        :meth:`get_slice`; ``size_hint``: the size of the whole object the slice belongs to
        (a front may use it to decide whether to promote the slice to a faster tier).
        """
        ...

    async def put_slice(
        self,
        key: str,
        data: SliceData,
        expires_at: float | None,
        *,
        epoch: int | None = None,
        compressible: bool | None = None,
    ) -> bool:
        """Store ``data`` until ``expires_at`` (unix seconds, None = no expiry).

        ``epoch`` is the purge epoch (:attr:`CacheFront.epoch`) taken when the origin
        request that fetched ``data`` went out: the front discards a write that a later
        purge covers. A tier alone keeps no purge records and may ignore it.
        ``compressible=False``: the content is compressed already (a tier that compresses
        makes no attempt); None: unknown.
        Returns False when the tier declined (too large, not admitted, no space, purged).
        """
        ...

    async def get_meta(self, key: str) -> bytes | None:
        """The metadata blob stored for an object or variant key."""
        ...

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        """Store an object's metadata blob (``epoch``: as for :meth:`put_slice`)."""
        ...

    async def put_many(self, requests: Sequence[PutRequest]) -> list[bool]:
        """Store each request; one answer each, in order, as put_slice/put_meta would.
        The front's write-behind hands a tier what is queued at once: a tier that pays
        per call (L2 crosses to its worker threads) pays once per batch."""
        ...

    async def delete(self, object_key: str) -> int:
        """Remove the object: metadata, every slice, every variant. Returns entries removed."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every entry whose key starts with ``prefix``. Returns entries removed."""
        ...

    async def clear(self) -> int:
        """Remove everything. Returns entries removed."""
        ...

    def keys(self) -> Iterator[str]:
        """Every key held (slices and metadata), in no particular order."""
        ...

    def stats(self) -> dict[str, float]:
        """Figures for /stats and metrics: at least entries, bytes, capacity_bytes."""
        ...

    async def close(self) -> None:
        """Flush what must survive a restart and release resources."""
        ...


async def put_each(store: Store, requests: Sequence[PutRequest]) -> list[bool]:
    """:meth:`Store.put_many` for a tier with nothing to save by batching: each request
    goes the way a single write does (a subclass's put_slice/put_meta included)."""
    return [
        await store.put_slice(r.key, r.data, r.expires_at, compressible=r.compressible)
        if r.kind == "slice"
        else await store.put_meta(r.key, bytes(r.data), r.expires_at)
        for r in requests
    ]


@runtime_checkable
class LeasesNow(Protocol):
    """A tier that can lease a slice synchronously when that costs no I/O (an L2 whose
    record is already in memory): the fast path's read (app/fasthit.py), which cannot
    await."""

    def slice_resident_now(self, key: str) -> bool:
        """Would :meth:`lease_slice_now` find ``key`` and read it without I/O? Counts
        nothing."""
        ...

    def lease_slice_now(self, key: str) -> SliceLease | None:
        """``lease_slice(key)`` done here and now (called right after
        :meth:`slice_resident_now` said yes, with no await in between), counted as
        lease_slice counts; None if it fails after all (damaged: counted as lease_slice
        counts it)."""
        ...


@runtime_checkable
class CacheFront(Store, Protocol):
    """The store the app talks to (``cache.tiered.TieredStore``): a tier plus what request
    handling needs to know without reading bytes."""

    capacity_bytes: int  # what all tiers together can hold

    @property
    def epoch(self) -> int:
        """The purge epoch now: take it when an origin request goes out (or a read starts)
        and pass it with every write of what that request fetched."""
        ...

    def purged_since(self, epoch: int, key: str) -> bool:
        """Did a purge since ``epoch`` cover ``key``?"""
        ...

    def contains_slice(self, key: str) -> bool:
        """Is the slice held by some tier (an index lookup: no bytes are read)?"""
        ...
