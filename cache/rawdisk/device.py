"""The device file: creation, space reservation, exclusive lock, positional I/O, O_DIRECT.

Data is written with ``os.pwritev`` in worker threads (the GIL is released during the
syscall). Slices are read through a read-only shared mapping of the whole device
(:meth:`Device.mapping`, ``MAP_SHARED``/``PROT_READ``): a response writes to the socket
straight from the page cache, with no copy in user space. That is safe now because:

* the space is reserved up front (:meth:`reserve`: ``posix_fallocate`` of a regular file,
  a size check of a block device) and never shrinks while the store holds its exclusive
  ``flock``, so every mapped page is backed by allocated blocks: a full disk cannot turn a
  read of the mapping into SIGBUS (writes still go through ``pwritev`` and fail with an
  ``OSError`` on one request). Only a hand truncation of the device file (``flock`` is
  advisory) could, as it could corrupt any store;
* the mapping is read-only: a bug cannot scribble over the device through it;
* an extent being read stays unallocatable until its last reader (lease) lets go
  (:meth:`cache.rawdisk.tables.Tables.begin_read`), so the bytes seen through the mapping
  are never overwritten under a response.

Metadata (superblock, checkpoints, journal) and the fallback path use ``os.pread``.

With ``use_direct_io`` (the default) extents are written through a second descriptor
opened with ``O_DIRECT``: the device reads the bytes from a page-aligned staging buffer
(one per writer thread, reused), instead of the CPU copying them into fresh page-cache
pages. That copy is a pass over every byte, and on this VM, when the page cache grows
into memory the guest has not touched yet, each new page also costs a host fault: it was
then most of the miss path's CPU (``copy_folio_from_iter_atomic``, 37-53 % of a cold
100 MiB's samples under ``perf``). It also kept a second copy in RAM of bytes L1 already
holds, and filled the page cache with every miss, read again or not. Reads still go
through the shared mapping: a direct write invalidates the extent's clean cached pages
(mapped ones included: the kernel unmaps them first), an extent being written has no
lease and so no reader, and every read verifies the record's generation and checksum, so
a stale page can only fail a read, never be served.
The price: the first read of an extent after its write comes from the disk, in a worker
thread (``madvise(WILLNEED)``), and only then is it in the page cache. On this VM
(2026-12-05) the first L2 pass over a 1 GiB object just fetched took 1.1-1.2 s instead of
0.45-0.48 s; the miss path's CPU fell from 1.34-3.3 to 0.95-1.05 s/GB and the cold
100 MiB from 0.46 to 0.40 s (``bench.run --only peers`` and ``bench.cold_miss
--prefill-mib 1024``, each way). With ``use_direct_io=false`` every write goes through
the page cache: for a cache that mostly re-reads what it has just written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import shutil
import stat
import threading

from cache.rawdisk.errors import RawDiskError
from cache.rawdisk.layout import REGION_ALIGN

log = logging.getLogger("slicecache.rawdisk")

DIRECT_ALIGN = REGION_ALIGN
# Extents up to this size are staged in the writer thread's reused buffer (a slice of the
# default 1 MiB plus its record header fits); larger ones get a buffer of their own.
STAGING_KEEP = 4 * 1024 * 1024


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class Device:
    def __init__(self, path: str, fd: int, is_block_device: bool, created: bool) -> None:
        self.path = path
        self.fd = fd
        self.data_fd = fd
        self.is_block_device = is_block_device
        self.created = created
        self.direct_io = False
        self.direct_io_reason = "use_direct_io=false"
        self._map: mmap.mmap | None = None
        self._staging = threading.local()  # per writer thread: its aligned buffer

    # --- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, read_only: bool = False) -> Device:
        """Open (creating if missing) and lock ``path``. Space is reserved by :meth:`reserve`.

        ``read_only`` (the admin CLI's info and verify) opens O_RDONLY with a shared lock:
        it never creates or writes, and still refuses a device a server holds.
        """
        if read_only:
            return cls._open_read_only(path)
        created = False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:  # e.g. a path under a regular file (ENOTDIR), EACCES
            raise RawDiskError(f"cannot use L2 device {path}: {exc.strerror}") from None
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise RawDiskError(f"{path} is neither a regular file nor a block device")
        flags = os.O_RDWR | os.O_CLOEXEC
        if st is None:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise RawDiskError(f"cannot create directory {parent}: {exc.strerror}") from None
            flags |= os.O_CREAT | os.O_EXCL
            created = True
        try:
            # O_NONBLOCK: never wait on a FIFO swapped in after the stat above.
            fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            raise RawDiskError(f"cannot open L2 device {path}: {exc.strerror}") from None
        mode = _checked_and_locked(fd, path, fcntl.LOCK_EX)
        return cls(path, fd, stat.S_ISBLK(mode), created)

    @classmethod
    def _open_read_only(cls, path: str) -> Device:
        try:
            # O_NONBLOCK: a read-only open of a FIFO would otherwise wait for a writer
            # forever (startup and `verify` hung); it is refused just below instead.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise RawDiskError(f"cannot open L2 device {path}: {exc.strerror}") from None
        mode = _checked_and_locked(fd, path, fcntl.LOCK_SH)
        device = cls(path, fd, stat.S_ISBLK(mode), False)
        device.read_only = True
        return device

    read_only = False

    def size(self) -> int:
        if self.is_block_device:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def reserve(self, total_size: int) -> None:
        """Make sure ``total_size`` bytes are backed by real disk blocks.

        A regular file is extended and reserved with posix_fallocate, so running out of disk
        is this startup error rather than a failed write later. A block device must simply
        be large enough.
        """
        if self.is_block_device:
            size = self.size()
            if size < total_size:
                raise RawDiskError(
                    f"block device {self.path} holds {size} bytes, less than total_size "
                    f"{total_size}"
                )
            return
        try:
            os.posix_fallocate(self.fd, 0, total_size)
        except OSError as exc:
            free = None
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(os.path.dirname(os.path.abspath(self.path))).free
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                reason = f"not enough disk space ({reason})"
            where = f"; the filesystem has {free} bytes free" if free is not None else ""
            raise RawDiskError(
                f"cannot reserve total_size={total_size} bytes for L2 device {self.path}: "
                f"{reason}{where}"
            ) from None

    def enable_direct_io(self, block_size: int, probe_offset: int) -> None:
        """Open the O_DIRECT data descriptor, or record why it is impossible."""
        if not hasattr(os, "O_DIRECT"):
            self.direct_io_reason = "this platform has no O_DIRECT"
            return
        if block_size % DIRECT_ALIGN:
            self.direct_io_reason = (
                f"block_size {block_size} is not a multiple of {DIRECT_ALIGN}, the alignment "
                "O_DIRECT needs"
            )
            return
        try:
            dfd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_DIRECT)
        except OSError as exc:
            self.direct_io_reason = f"the filesystem refuses O_DIRECT ({exc.strerror})"
            return
        buf = mmap.mmap(-1, DIRECT_ALIGN)
        try:
            os.preadv(dfd, [buf], probe_offset)
        except OSError as exc:
            os.close(dfd)
            self.direct_io_reason = f"an aligned O_DIRECT read failed ({exc.strerror})"
            return
        finally:
            buf.close()
        self.data_fd = dfd
        self.direct_io = True
        self.direct_io_reason = "O_DIRECT enabled"

    def mapping(self, size: int) -> mmap.mmap | None:
        """The read-only shared mapping of the first ``size`` bytes (made on first use), or
        None once closed."""
        if self.fd < 0:
            return None
        if self._map is None:
            self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        return self._map

    def close(self) -> None:
        if self._map is not None:
            # A view still exported (a lease outliving the store) keeps the mapping alive;
            # the garbage collector unmaps it when the last view goes.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self.data_fd != self.fd:
            os.close(self.data_fd)
            self.data_fd = self.fd
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1

    # --- metadata I/O (page cache) ------------------------------------------------------

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def sync_meta(self) -> None:
        os.fdatasync(self.fd)

    def sync_data(self) -> None:
        os.fdatasync(self.data_fd)

    # --- data I/O -----------------------------------------------------------------------

    def write_extent(self, parts: list[bytes | memoryview], offset: int) -> None:
        total = sum(len(p) for p in parts)
        if self.direct_io:
            size = _round_up(total, DIRECT_ALIGN)
            buf = self._staging_buffer(size)
            try:
                pos = 0
                for part in parts:
                    buf[pos : pos + len(part)] = part
                    pos += len(part)
                buf[pos:size] = bytes(size - pos)  # the tail of the last block: no stale bytes
                with memoryview(buf) as view:
                    done = 0
                    while done < size:
                        done += os.pwrite(self.data_fd, view[done:size], offset + done)
            finally:
                if size > STAGING_KEEP:
                    buf.close()
            return
        done = os.pwritev(self.fd, parts, offset)
        if done < total:  # rare: finish the remainder as one buffer
            rest = b"".join(bytes(p) for p in parts)[done:]
            self.pwrite(rest, offset + done)

    def read_extent(self, length: int, offset: int) -> bytes:
        if self.direct_io:
            size = _round_up(length, DIRECT_ALIGN)
            buf = mmap.mmap(-1, size)
            try:
                got = os.preadv(self.data_fd, [buf], offset)
                return buf[: min(got, length)]
            finally:
                buf.close()
        data = os.pread(self.fd, length, offset)
        if len(data) < length and data:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            data += more
        return data

    def prefetch(self, offset: int, length: int) -> None:
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def _staging_buffer(self, size: int) -> mmap.mmap:
        """A page-aligned buffer of at least ``size`` bytes for an O_DIRECT write: the
        calling thread's own, reused (its pages stay faulted in), unless ``size`` is above
        STAGING_KEEP; then one for this write, closed after it."""
        if size > STAGING_KEEP:
            return mmap.mmap(-1, size)
        buf: mmap.mmap | None = getattr(self._staging, "buf", None)
        if buf is None or len(buf) < size:
            if buf is not None:
                buf.close()
            buf = self._staging.buf = mmap.mmap(-1, max(size, 1024 * 1024 + DIRECT_ALIGN))
        return buf


def _checked_and_locked(fd: int, path: str, lock: int) -> int:
    """Refuse anything but a regular file or block device, take ``lock`` without waiting,
    and return the file's mode; ``fd`` is closed on every refusal."""
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise RawDiskError(f"{path} is neither a regular file nor a block device")
        os.set_blocking(fd, True)
        fcntl.flock(fd, lock | fcntl.LOCK_NB)
        return mode
    except BlockingIOError:
        os.close(fd)
        raise RawDiskError(
            f"L2 device {path} is in use by another process (exclusive lock held); "
            "a device belongs to exactly one slicecache process"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise RawDiskError(f"cannot lock L2 device {path}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
