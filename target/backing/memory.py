"""In-memory store: an anonymous shared mapping, zero-filled and allocated lazily.

Rules:
- The mapping is made with mmap(-1, size): pages cost memory only once written, so the
  default 1 GiB LUN starts at (almost) nothing.
- read() returns a copy of the blocks (bytes): the medium as it was when the read was
  processed (SAM-5 8.6, SPC-4 7.5.8). A view into the mapping would be sent as it is
  only after later commands ran, so a WRITE to the same blocks processed after the READ
  (in the same receive burst, or from another session while the Data-In waits in the
  send queue) would change the READ's data before it left. The copy is the one memcpy a
  file store's preadv also makes; nothing is copied again on the way out.
- discard() gives the pages back (MADV_DONTNEED on a private anonymous mapping reads
  back as zeros) and extents() reports which pages were written since: a page map (one
  byte per page, set by write(), cleared for the whole pages discard() releases) answers
  GET LBA STATUS from the store itself.
- sidecar() is None (base.py default): nothing in memory survives a restart, so an LU
  here is PTPL_C=0 for persistent reservations (SPC-4 6.15.4).
"""

from __future__ import annotations

import mmap

from target.backing.base import Buffer, Store

PAGE = mmap.PAGESIZE


class MemoryStore(Store):
    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"memory store size must be positive, not {size}")
        self.size = size
        self.description = "memory"
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._view = memoryview(self._map)
        self._mapped = bytearray(-(-size // PAGE))  # 1: the page holds written data

    def read(self, offset: int, length: int) -> bytes:
        return self._view[offset : offset + length].tobytes()

    def write(self, offset: int, data: Buffer) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._view[offset : offset + n] = data
        if n:
            first, last = offset // PAGE, (offset + n - 1) // PAGE
            if first == last:
                self._mapped[first] = 1
            else:
                self._mapped[first : last + 1] = b"\x01" * (last + 1 - first)

    def discard(self, offset: int, length: int) -> None:
        # Whole pages are released; the partial pages at either end are zeroed.
        start = -(-offset // PAGE) * PAGE
        end = ((offset + length) // PAGE) * PAGE
        if start < end:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
            self._mapped[start // PAGE : end // PAGE] = bytes((end - start) // PAGE)
            self._zero(offset, start)
            self._zero(end, offset + length)
        else:
            self._zero(offset, offset + length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, mapped) runs over [offset, offset + length), from the page map;
        the first run starts at `offset` exactly."""
        end = offset + length
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        pages = self._mapped
        while pos < end:
            page = pos // PAGE
            mapped = bool(pages[page])
            other = pages.find(b"\x00" if mapped else b"\x01", page)
            stop = end if other < 0 else min(end, other * PAGE)
            runs.append((pos, stop - pos, mapped))
            pos = stop
        return runs

    def _zero(self, start: int, end: int) -> None:
        if end > start:
            self._view[start:end] = bytes(end - start)

    def close(self) -> None:
        try:
            self._view.release()
            self._map.close()
        except BufferError:
            # A slice is still referenced (a write's source or a caller's view); the
            # mapping is freed with the last reference.
            pass
