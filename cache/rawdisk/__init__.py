"""L2: the raw-disk store. One preallocated file or block device holds every cached slice."""

from cache.rawdisk.errors import RawDiskError
from cache.rawdisk.store import RawDiskStore

__all__ = ["RawDiskError", "RawDiskStore"]
