"""A small record kept in a file beside an image file (base.py Sidecar; FileStore.sidecar).

Rules:
- The record is the file `name` (`<image><suffix>`, `<image>.pr` for the APTPL state of
  persistent reservations). read() returns its bytes, or None when nothing has that name
  (os.path.lexists): a name that exists but cannot be read (a dangling symlink, no
  permission) is OSError, not "no record".
- replace(data) writes a temporary file in the same directory (mkstemp: `<name>.XXXX.tmp`,
  mode 0600), fsyncs it, renames it over the record (os.replace: rename(2) replaces the
  name atomically, so a crash leaves the old record or the new one) and fsyncs the
  directory, which is what makes the rename itself durable (fsync(2): "Calling fsync()
  does not necessarily ensure that the entry in the directory containing the file has
  also reached disk. For that an explicit fsync() on a file descriptor for the directory
  is also needed."). When anything fails the temporary is removed, the record is the old
  one, and the OSError propagates.
- remove() unlinks the record (already absent is done) and fsyncs the directory.
- FileSidecar.open() first removes the temporaries an interrupted replace() left behind
  (the process killed between mkstemp and the rename): that replace() never returned, so
  what they hold was never acknowledged. Each removal is logged as a warning, as is a
  temporary that cannot be removed. Only this record's own temporaries go
  (`<name>.<tag>.tmp`, tag as mkstemp makes it): other images', and any other file
  beside the record, stay.
- Every call touches only the file system: they may run on a worker thread.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

from target.backing.base import Sidecar

log = logging.getLogger(__name__)


class FileSidecar(Sidecar):
    def __init__(self, name: str) -> None:
        self.name = name
        self.directory = os.path.dirname(name) or "."
        self._base = os.path.basename(name)

    @classmethod
    def open(cls, name: str) -> FileSidecar:
        """The record at `name`, with the leftovers of an interrupted replace() removed."""
        sidecar = cls(name)
        sidecar.remove_stale_temporaries()
        return sidecar

    def remove_stale_temporaries(self) -> None:
        pattern = re.compile(re.escape(self._base) + r"\.[A-Za-z0-9_]+\.tmp")
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for entry in names:
            if pattern.fullmatch(entry):
                try:
                    os.unlink(os.path.join(self.directory, entry))
                    log.warning("removed %s, left by an interrupted update of %s", entry,
                                self.name)
                except OSError as exc:
                    log.warning("cannot remove %s: %s", entry, exc.strerror)

    def exists(self) -> bool:
        return os.path.lexists(self.name)

    def read(self) -> bytes | None:
        try:
            with open(self.name, "rb") as f:
                return f.read()
        except FileNotFoundError:
            if os.path.lexists(self.name):  # a dangling symlink: not "no record"
                raise
            return None

    def replace(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self._base + ".", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.name)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._sync_directory()

    def remove(self) -> None:
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass
        self._sync_directory()

    def _sync_directory(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
