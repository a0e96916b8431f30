"""tools/bench_memory.py: RSS as the kernel counts it, and the growth/written ratio.

Oracles: proc(5) (the /proc/PID/status layout: "VmRSS: Resident set size ... RssAnon +
RssFile + RssShmem", values in kB) and the kernel itself: /proc/self/statm's resident
field (pages; proc(5): "same as VmRSS in /proc/pid/status"), and an anonymous mapping
of known size written here, whose pages the kernel must count once each.
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from bench_memory import Rss, fill_ratio, parse_status, rss, verdict  # noqa: E402

pytestmark = pytest.mark.unit

# Lines in the layout of proc(5)'s /proc/pid/status example (Linux 6.1 order).
STATUS = """Name:\tbash
Umask:\t0022
State:\tS (sleeping)
Tgid:\t17248
Pid:\t17248
VmPeak:\t  131168 kB
VmSize:\t  131168 kB
VmHWM:\t   13484 kB
VmRSS:\t   13484 kB
RssAnon:\t   10264 kB
RssFile:\t    3220 kB
RssShmem:\t       0 kB
Threads:\t1
SigQ:\t0/3067
"""


def test_parse_status_kb_fields_in_bytes() -> None:
    s = parse_status(STATUS)
    assert s["VmRSS"] == 13484 * 1024
    assert s["RssAnon"] == 10264 * 1024
    # proc(5): VmRSS is the sum of RssAnon, RssFile and RssShmem.
    assert s["VmRSS"] == s["RssAnon"] + s["RssFile"] + s["RssShmem"]
    assert "Threads" not in s and "Name" not in s  # not kB fields


def test_rss_agrees_with_statm() -> None:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    here = rss(os.getpid()).rss
    assert abs(here - pages * mmap.PAGESIZE) <= 1 << 20  # a read apart, within 1 MiB


def test_written_anonymous_mapping_counts_once() -> None:
    # 64 MiB of a private anonymous mapping (what the memory LU is), written page by page:
    # RSS must grow by the bytes written, within issue 14's 10%.
    size = 64 << 20
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        before = rss(os.getpid())
        chunk = b"\xa5" * (1 << 20)
        for off in range(0, size, len(chunk)):
            m[off:off + len(chunk)] = chunk
        after = rss(os.getpid())
        r = fill_ratio(before, after, size)
        assert 0.9 <= r <= 1.1, r
        assert verdict(r) == "ok"
        assert after.anon - before.anon >= 0.9 * size
    finally:
        m.close()


def test_verdict_bounds() -> None:
    assert verdict(1.10) == "ok" and verdict(0.90) == "ok"
    assert verdict(2.0).startswith("OVER")  # a second copy of every block
    assert verdict(0.5).startswith("UNDER")
    assert fill_ratio(Rss(100, 0), Rss(300, 0), 100) == 2.0
