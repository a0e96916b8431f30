"""In-memory store: an anonymous shared mapping, zero-filled and allocated lazily.

Rules:
- The mapping is made with mmap(-1, size): pages cost memory only once written, so the
  default 1 GiB LUN starts at (almost) nothing.
- read() returns a memoryview into the mapping; it is sent as it is (no copy). An
  initiator sees a command's data only after its status, so a later overlapping write
  cannot change data already being sent for a completed read.
- discard() gives the pages back (MADV_DONTNEED on a private anonymous mapping reads
  back as zeros) and extents() reports which pages were ever written since.
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

    def read(self, offset: int, length: int) -> memoryview:
        return self._view[offset : offset + length]

    def write(self, offset: int, data: Buffer) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._view[offset : offset + n] = data

    def discard(self, offset: int, length: int) -> None:
        # Whole pages are released; the partial pages at either end are zeroed.
        start = -(-offset // PAGE) * PAGE
        end = ((offset + length) // PAGE) * PAGE
        if start < end:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
            self._zero(offset, start)
            self._zero(end, offset + length)
        else:
            self._zero(offset, offset + length)

    def _zero(self, start: int, end: int) -> None:
        if end > start:
            self._view[start:end] = bytes(end - start)

    def close(self) -> None:
        try:
            self._view.release()
            self._map.close()
        except BufferError:
            # A slice is still referenced (data of a read being sent on a connection that
            # is going away); the mapping is freed with the last reference.
            pass
