"""The backing-store interface every store implements.

Rules:
- Offsets and lengths are in bytes; the logical unit has checked them against `size`.
- read() returns a buffer that holds the medium as it was at the call and that nothing
  changes afterwards (no view into storage that later writes change): the caller sends it
  as it is, however long the send takes (DESIGN.md principle 5, SAM-5 task order).
- write() takes any buffer (memoryview of a receive buffer) and does not keep it.
- flush() makes every completed write durable (fdatasync for files): SYNCHRONIZE CACHE,
  FUA, and writes when the write cache is disabled (WCE=0, SBC-4 4.15).
- discard() deallocates a range; reads of it return zeros afterwards (LBPRZ, SBC-4 4.7.4).
- extents() reports mapped and deallocated ranges (GET LBA STATUS, SBC-4 5.8).
- `blocking` says whether its calls can sleep on a device (a file on a disk, a block
  device): the server then runs them on worker threads, off the event loop (DESIGN.md
  principle 7). A store whose calls only copy memory (the memory store, a file on tmpfs)
  is not blocking and is called on the loop. Calls may come from several threads at once,
  for different block ranges (the task set orders overlapping ones).
- sidecar(suffix) is the store's one place for a small record kept beside the medium
  that must survive a restart (the APTPL state of persistent reservations, SPC-4
  5.13.5.1): a Sidecar, or None where the store has no such place (the default; the
  memory store; a block device). The SCSI core hands it bytes and reads bytes back; how
  and where they are kept is the store's (file.py). A Sidecar's rules:
  * read() is what the last completed replace() wrote, or None when there is no record;
    an existing record that cannot be read is OSError (the caller decides what a lost
    record means).
  * replace(data) is atomic: after a crash at any point the record is either the old one
    or the new one, never a mixture or nothing; it returns once the new one is durable.
    remove() deletes the record, durably. Both raise OSError when they cannot, and then
    leave the old record in place.
  * Opening it (sidecar()) clears what an interrupted replace() left behind: that
    replace() never returned, so its caller never acknowledged the data.
  * Its calls touch only the file system (no store state, no loop): they may run on a
    worker thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

Buffer = bytes | bytearray | memoryview  # collections.abc.Buffer is 3.12+


class StoreError(Exception):
    """An I/O error of the store, reported to the initiator as MEDIUM ERROR."""


class Sidecar(ABC):
    """A small record kept beside a store's medium (see the module rules)."""

    name: str  # where it is kept, for messages (a path)

    @abstractmethod
    def read(self) -> bytes | None: ...

    @abstractmethod
    def replace(self, data: bytes) -> None: ...

    @abstractmethod
    def remove(self) -> None: ...


class Store(ABC):
    size: int  # bytes
    description: str
    blocking: bool = False  # its calls can sleep on a device: run them off the event loop

    @abstractmethod
    def read(self, offset: int, length: int) -> Buffer: ...

    @abstractmethod
    def write(self, offset: int, data: Buffer) -> None: ...

    def flush(self) -> None:  # noqa: B027 - a store without a cache has nothing to do
        """Make completed writes durable."""

    def discard(self, offset: int, length: int) -> None:
        """Deallocate; the default writes zeros."""
        chunk = 1 << 20
        zeros = bytes(min(chunk, length))
        end = offset + length
        while offset < end:
            n = min(chunk, end - offset)
            self.write(offset, memoryview(zeros)[:n])
            offset += n

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, mapped) runs covering the range; default: all mapped."""
        return [(offset, length, True)]

    def refresh_size(self) -> bool:
        """Look at the medium's size again; True when it changed (a grown image file)."""
        return False

    def sidecar(self, suffix: str) -> Sidecar | None:
        """The record `suffix` kept beside the medium; None: this store has no place for
        one that survives a restart."""
        return None

    def close(self) -> None:  # noqa: B027
        """Flush and release the store."""
