"""File and block-device store: os.preadv/os.pwritev at byte offsets, fdatasync to flush.

Rules:
- A regular file is served at its size, or created sparse at `size` (ftruncate) when
  `create` is set and it does not exist; a block device is served at its size
  (BLKGETSIZE64). A directory, a missing file without `create` (or for a read-only LU),
  or an explicit size that differs from an existing file's are errors that name the path.
- read() fills a fresh buffer with preadv (short reads at the end are zero-filled);
  write() hands the caller's memoryview to pwritev, looping over short writes.
- flush() is fdatasync (SYNCHRONIZE CACHE, FUA, WCE=0).
- discard() punches a hole (fallocate PUNCH_HOLE|KEEP_SIZE) in a file, BLKZEROOUT on a
  block device (BLKDISCARD need not read back as zeros, and LBPRZ=1 promises zeros), and
  writes zeros where neither works; extents() reads the holes with
  SEEK_DATA/SEEK_HOLE.
- OSError during I/O becomes StoreError, which the SCSI layer reports as MEDIUM ERROR.
- `blocking` (base.py) is False for a regular file on tmpfs or ramfs (fstatfs), whose
  calls are memory copies, and True for every other file and for block devices.
- sidecar(suffix) (base.py) is the file `<path><suffix>` beside a regular image file
  (sidecar.py keeps it: atomic replace, stale temporaries removed when it is opened) when
  that file exists or the image's directory is writable (os.access W_OK); None for a
  block device (its directory, /dev, does not survive a reboot and is not the device's)
  and for anything else that is not a regular file (fstat of the open descriptor), and
  None where the directory is not writable and there is no record yet. The temporaries
  are cleared for every regular image file, before that decision, so a directory made
  read-only after a crash is still tidied where it can be.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

from target.backing.base import Buffer, Store, StoreError
from target.backing.sidecar import FileSidecar

BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zeroes, deallocating where the device can
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6


def _on_memory_fs(fd: int) -> bool:
    """True when the file lives on tmpfs or ramfs (struct statfs begins with f_type)."""
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every ABI
    if _fstatfs(fd, buf) != 0:
        return False
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return f_type in (TMPFS_MAGIC, RAMFS_MAGIC)


class FileStore(Store):
    def __init__(self, path: str | os.PathLike, size: int | None = None, create: bool = False,
                 read_only: bool = False) -> None:
        self.path = os.fspath(path)
        exists = os.path.exists(self.path)
        if not exists and not create:
            raise FileNotFoundError(errno.ENOENT, f"backing store {self.path} does not exist "
                                    "(give a size to create it)")
        if not exists and read_only:
            raise FileNotFoundError(errno.ENOENT, f"backing store {self.path} does not exist, "
                                    "and a read-only LUN does not create its image")
        if exists and os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, f"backing store {self.path} is a directory")
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if not exists:
            flags |= os.O_CREAT
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open backing store {self.path}: "
                          f"{exc.strerror}") from None
        try:
            st = os.fstat(self.fd)
            self.block_device = stat.S_ISBLK(st.st_mode)
            if self.block_device:
                buf = fcntl.ioctl(self.fd, BLKGETSIZE64, b"\0" * 8)
                self.size = struct.unpack("Q", buf)[0]
            elif not exists:
                os.ftruncate(self.fd, size or 0)
                self.size = size or 0
            else:
                self.size = st.st_size
            if size is not None and exists and size != self.size:
                if self.block_device or read_only:
                    raise ValueError(f"backing store {self.path} has {self.size} bytes, "
                                     f"not the {size} configured")
                if self.size == 0:  # an empty file: grow it sparse
                    os.ftruncate(self.fd, size)
                    self.size = size
                else:
                    raise ValueError(f"backing store {self.path} has {self.size} bytes, "
                                     f"not the {size} configured")
            if self.size == 0:
                raise ValueError(f"backing store {self.path} is empty (give a size)")
        except Exception:
            os.close(self.fd)
            raise
        kind = "block device" if self.block_device else "file"
        self.description = f"{kind} {self.path}"
        self.blocking = self.block_device or not _on_memory_fs(self.fd)

    def _current_size(self) -> int:
        if self.block_device:
            return struct.unpack("Q", fcntl.ioctl(self.fd, BLKGETSIZE64, b"\0" * 8))[0]
        return os.fstat(self.fd).st_size

    def refresh_size(self) -> bool:
        try:
            size = self._current_size()
        except OSError:
            return False
        if size == self.size or size == 0:
            return False
        self.size = size
        return True

    def read(self, offset: int, length: int) -> memoryview:
        buf = bytearray(length)
        view = memoryview(buf)
        done = 0
        try:
            while done < length:
                n = os.preadv(self.fd, [view[done:]], offset + done)
                if n == 0:
                    break  # beyond the end of a file that shrank: zeros
                done += n
        except OSError as exc:
            raise StoreError(f"read of {length} bytes at {offset} from {self.path}: "
                             f"{exc.strerror}") from exc
        return view

    def write(self, offset: int, data: Buffer) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        try:
            while view.nbytes:
                n = os.pwritev(self.fd, [view], offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise StoreError(f"write at {offset} to {self.path}: {exc.strerror}") from exc

    def flush(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise StoreError(f"fdatasync of {self.path}: {exc.strerror}") from exc

    def discard(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        if self.block_device:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                pass
        elif _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                        length) == 0:
            return
        super().discard(offset, length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        if self.block_device:
            return [(offset, length, True)]
        end = offset + length
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        try:
            while pos < end:
                try:
                    data = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole up to the end
                        data = end
                    else:
                        raise
                data = min(data, end)
                if data > pos:
                    runs.append((pos, data - pos, False))
                    pos = data
                    continue
                hole = min(os.lseek(self.fd, pos, os.SEEK_HOLE), end)
                runs.append((pos, hole - pos, True))
                pos = hole
        except OSError:
            return [(offset, length, True)]
        return runs

    def sidecar(self, suffix: str) -> FileSidecar | None:
        if self.block_device or not stat.S_ISREG(os.fstat(self.fd).st_mode):
            return None
        sidecar = FileSidecar.open(self.path + suffix)
        if sidecar.exists() or os.access(sidecar.directory, os.W_OK):
            return sidecar
        return None

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            os.fdatasync(self.fd)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
