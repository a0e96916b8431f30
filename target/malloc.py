"""The C allocator's thresholds for a serving process (glibc mallopt(3)).

Rules:
- Every command's data lives in a fresh buffer: a READ's is filled by the store (preadv,
  or the memory store's copy) and freed as soon as its Data-In has left; a WRITE's is the
  receive buffer of its Data-Out. Buffers of 128 KiB and more are where glibc's defaults
  cost: a chunk above the mmap threshold is mapped and unmapped each time, and a heap
  whose free top passes the trim threshold is given back to the kernel, so the next
  buffers fault their pages in again (and the kernel zeroes them). Measured on 1 MiB
  reads at QD8 from a tmpfs file (qemu-img bench, 3000 requests): 3.0-3.8 s with the
  defaults, 1.2-1.6 s with the thresholds below.
- tune() sets M_MMAP_THRESHOLD to 16 MiB (the buffer of a command of up to 16 MiB,
  MaxBurstLength's largest value in RFC 7143 13.14, comes from the heap) and
  M_TRIM_THRESHOLD to 32 MiB (what QD32 of 1 MiB commands keep in flight stays resident
  instead of being trimmed and faulted in again).
  Freed memory above that still goes back to the kernel; the peak of data in flight is
  what the process keeps. Setting them also ends glibc's dynamic threshold, which rises
  only after the first large free and so differs from run to run.
- The environment wins: MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ set by the user
  leave that threshold alone. On a C library without mallopt (musl) nothing is done.
- Called once by the server's run() (target.shell.server), before it serves.
- trim() is malloc_trim(0) (glibc 2.8 and later give back every whole free page inside
  the heap, not only its top; malloc_trim(3)): the server calls it after a session ends,
  so the buffers of a session that pushed the largest transfers go back to the system
  rather than stay resident until later sessions reuse them (issue 15: 2143 MiB stayed
  for about 205 sessions). Write buffers of BIG_BUFFER bytes or more are mmap'd by the
  connection (target.iscsi.connection) and go back when freed, without a trim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 32 << 20


_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            return None
    return _libc


def trim() -> bool:
    """malloc_trim(0): free heap pages back to the system; False when there is no such
    call (not glibc) or nothing was given back."""
    libc = _c_library()
    if libc is None:
        return False
    try:
        fn = libc.malloc_trim
    except AttributeError:  # not glibc
        return False
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn(0) == 1


def tune() -> dict[str, int]:
    """Set the thresholds the environment does not; returns what was set (by env name)."""
    libc = _c_library()
    if libc is None:
        return {}
    try:
        mallopt = libc.mallopt
    except AttributeError:  # musl
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = {}
    for name, param, value in (("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                               ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if name in os.environ:
            continue
        if mallopt(param, value) == 1:
            done[name] = value
    return done
