"""Startup check of the L2 device before the server starts: one clear line, no traceback.

The store itself is opened inside the app's lifespan (its tasks belong to the server's
event loop), where a failure surfaces through uvicorn and Starlette as a logged
traceback. ``check_device`` finds every reason :meth:`RawDiskStore.open` would refuse
the device, without writing, creating or loading anything, so the console script can
refuse to start with one line.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cache.rawdisk.device import Device
from cache.rawdisk.errors import RawDiskError
from cache.rawdisk.layout import compute_geometry
from cache.rawdisk.store import RawDiskStore

if TYPE_CHECKING:
    from settings import RawDiskCacheSettings


def check_device(settings: RawDiskCacheSettings) -> None:
    """Raise :class:`RawDiskError` if the configured L2 device cannot be used."""
    path = settings.device_path
    compute_geometry(settings.total_size, settings.block_size)  # too small a device
    try:
        os.stat(path)
    except FileNotFoundError:
        _check_creatable(path)
        return
    except OSError as exc:
        raise RawDiskError(f"cannot use L2 device {path}: {exc.strerror}") from None
    device = Device.open(path, read_only=True)  # not a file, unreadable, locked
    try:
        RawDiskStore._examine(settings, device, None)  # foreign, damaged, wrong geometry
    finally:
        device.close()


def _check_creatable(path: str) -> None:
    """The nearest existing ancestor must be a directory we may create entries in."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise RawDiskError(f"cannot create L2 device {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RawDiskError(f"cannot create L2 device {path}: {ancestor} is not writable")
