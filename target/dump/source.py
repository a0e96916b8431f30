"""Where a dump is read from: an image file, or a LUN read over iSCSI; and windows into it.

Rules:
- open_source("iscsi://HOST:PORT/IQN/LUN") reads the LUN with the project's initiator:
  READ CAPACITY(16) for the size, READ(16) of whole blocks for every read (SBC-4 5.16,
  5.18), a unit attention answered once per command by retrying it. Anything else is a
  file path (an image or a block device), opened read-only.
- Both are io.RawIOBase (seekable, read-only) wrapped in a BufferedReader, so the format
  readers (target.dump.formats) read them like files, and never load a whole dump.
- Window(f, offset, length) is a view starting at `offset`: a dump that sits inside a
  device (kdump's at 64 MiB, illumos' dump area) reads as if it began at 0.
"""

from __future__ import annotations

import io
import os
import struct
from urllib.parse import unquote, urlparse

from target.scsi.task import Status
from target.shell.initiator import Initiator, InitiatorError

READ16 = 0x88
READ_CAPACITY16 = (0x9E, 0x10)
CHUNK_BLOCKS = 512


class SourceError(OSError):
    pass


class LunReader(io.RawIOBase):
    """A LUN as a read-only, seekable raw stream."""

    def __init__(self, url: str, initiator_name: str = "iqn.2026-11.local.scsi-target:inspect"
                 ) -> None:
        super().__init__()
        u = urlparse(url)
        parts = unquote(u.path).strip("/").split("/")
        if u.scheme != "iscsi" or not u.hostname or len(parts) != 2 or not parts[1].isdigit():
            raise SourceError(f"{url}: expected iscsi://HOST:PORT/IQN/LUN")
        self.url = url
        self.lun = int(parts[1])
        self.ini = Initiator(u.hostname, u.port or 3260, parts[0],
                             initiator_name=initiator_name)
        try:
            self.ini.connect()
            self.ini.login()
            r = self._command(struct.pack(">BB8xIBB", *READ_CAPACITY16, 32, 0, 0), 32)
        except (OSError, InitiatorError) as exc:
            raise SourceError(f"{url}: {exc}") from None
        last_lba, self.block_size = struct.unpack_from(">QI", r, 0)
        self.size = (last_lba + 1) * self.block_size
        self.pos = 0

    def _command(self, cdb: bytes, read: int) -> bytes:
        for _ in range(3):
            r = self.ini.command(cdb, lun=self.lun, read=read)
            if r.status == Status.GOOD:
                return r.data
            if r.status != Status.CHECK_CONDITION or (r.sense[2] & 0x0F) != 0x06:
                break
        raise SourceError(f"{self.url}: command {cdb[0]:#04x} ended with status "
                          f"{r.status:#04x} sense {r.sense.hex()}")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        want = min(len(b), self.size - self.pos)
        if want <= 0:
            return 0
        bs = self.block_size
        first = self.pos // bs
        blocks = min(CHUNK_BLOCKS, -(-(self.pos + want) // bs) - first)
        data = self._command(struct.pack(">BBQIBB", READ16, 0, first, blocks, 0, 0),
                             blocks * bs)
        skip = self.pos - first * bs
        n = min(want, len(data) - skip)
        b[:n] = data[skip:skip + n]
        self.pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self.ini.close()
            except OSError:
                pass
        super().close()


class Window(io.RawIOBase):
    """Bytes [offset, offset + length) of a seekable stream, as a stream of their own."""

    def __init__(self, f, offset: int, length: int) -> None:
        super().__init__()
        self.f, self.offset, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def open_source(spec: str) -> tuple[io.BufferedReader, int]:
    """(a buffered reader, the size in bytes) for a LUN URL or a file path."""
    if spec.startswith("iscsi://"):
        raw: io.RawIOBase = LunReader(spec)
        size = raw.size  # type: ignore[attr-defined]
    else:
        try:
            fd = os.open(spec, os.O_RDONLY)
        except OSError as exc:
            raise SourceError(f"{spec}: {exc.strerror}") from None
        raw = io.FileIO(fd, "rb", closefd=True)
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
    return io.BufferedReader(raw, buffer_size=1 << 20), size
