# Writer for the "newc" cpio format the Linux kernel unpacks as an initramfs.
#
# Rules:
# - Format: SVR4 "newc" (magic 070701, thirteen 8-digit hex fields, name NUL-terminated
#   and padded to 4 bytes, data padded to 4 bytes, closed by "TRAILER!!!"), as read by
#   the kernel's init/initramfs.c (Documentation/driver-api/early-userspace/
#   buffer-format.rst).
# - Reproducible: every entry is owned by root with mtime 0 and inode numbers assigned
#   in write order, and a tree is written in sorted path order, so the same inputs give
#   the same bytes.
# - Device nodes are written as entries, so no privileges are needed to build an image
#   that has /dev/console.
# - Names are relative (no leading "/"); a directory must be written before its entries.

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class NewcWriter:
    """Appends newc entries to a binary stream; call close() to write the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        name = name.lstrip("/")
        if name in self._names:
            raise ValueError(f"cpio: duplicate entry {name!r}")
        self._names.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad(len(header) + len(encoded)))
        self._out.write(data + _pad(len(data)))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def add_tree(self, root: Path) -> None:
        """Every directory, file and symlink under root, in sorted order."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            for name in dirnames:
                self._add_path(root, base / name)
            for name in sorted(filenames):
                self._add_path(root, base / name)

    def _add_path(self, root: Path, path: Path) -> None:
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.add_symlink(rel, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            self.add_dir(rel, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self.add_file(rel, path.read_bytes(), stat.S_IMODE(st.st_mode))
        else:
            raise ValueError(f"cpio: unsupported file type at {path}")

    def close(self) -> None:
        self._entry(TRAILER, 0, nlink=1)
