"""target.malloc, judged by glibc's own accounting (mallinfo2, glibc >= 2.33: hblkhd, the
bytes in mmapped chunks, before and after a fresh 4 MiB data buffer): with the defaults the
buffer is an mmapped chunk, after tune() it comes from the heap, and a threshold the
environment sets is left alone."""

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, ctypes.util, json, sys
from target import malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Mallinfo2
tuned = malloc.tune() if sys.argv[1] == "tune" else {}
before = libc.mallinfo2().hblkhd
buf = bytearray(4 << 20)
print(json.dumps({"tuned": tuned, "mmapped": libc.mallinfo2().hblkhd - before}))
"""


def probe(mode: str, env: dict | None = None) -> dict:
    import json
    import os

    ctypes_ok = subprocess.run([sys.executable, "-c", "import ctypes, ctypes.util;"
                                "ctypes.CDLL(ctypes.util.find_library('c')).mallinfo2"],
                               capture_output=True)
    if ctypes_ok.returncode:
        pytest.skip("the C library has no mallinfo2 (glibc >= 2.33 needed to look)")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


@pytest.mark.unit
def test_default_thresholds_map_a_large_buffer():
    r = probe("plain")
    assert r["mmapped"] >= 4 << 20  # glibc's default: above 128 KiB, its own mapping


@pytest.mark.unit
def test_tune_puts_data_buffers_on_the_heap():
    r = probe("tune")
    assert r["tuned"] == {"MALLOC_MMAP_THRESHOLD_": 16 << 20, "MALLOC_TRIM_THRESHOLD_": 32 << 20}
    assert r["mmapped"] == 0


@pytest.mark.unit
def test_the_environment_wins():
    r = probe("tune", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    assert r["tuned"] == {"MALLOC_TRIM_THRESHOLD_": 32 << 20}
    assert r["mmapped"] >= 4 << 20  # the user's 1 MiB threshold holds
