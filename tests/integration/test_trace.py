"""The CDB trace of a real server driven by QEMU's iscsi:// block driver."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from target.testing.servers import OurTarget
from target.trace import read as read_trace

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("qemu-io"),
                                 reason="needs qemu-io (qemu-utils; `make test` installs it)")]


def test_trace_records_what_qemu_sent(tmp_path):
    """qemu-io writes 64 KiB at byte 1 MiB and reads it back: the trace has that WRITE and
    READ at LBA 2048 for 128 blocks (512-byte blocks), the INQUIRY and READ CAPACITY of
    QEMU's probe, all GOOD; it is complete after SIGINT (flushed at shutdown), and
    `scsi-target trace` summarises it per opcode."""
    trace = tmp_path / "t.trace"
    with OurTarget(["--size", "64M", "--trace", str(trace)], workdir=tmp_path) as t:
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k",
                        "-c", "read -P 0x5a 1M 64k", t.url], check=True, capture_output=True,
                       timeout=60)
    recs = list(read_trace(trace))
    ops = {r["op"] for r in recs}
    assert {"INQUIRY", "READ CAPACITY(16)"} <= ops
    writes = [r for r in recs if r["op"].startswith("WRITE(") and r.get("lba") == 2048]
    reads = [r for r in recs if r["op"].startswith("READ(") and r.get("lba") == 2048]
    assert writes and writes[0]["blocks"] == 128 and writes[0]["out"] == 65536
    assert reads and reads[0]["blocks"] == 128 and reads[0]["in"] == 65536
    assert all(r["status"] == "GOOD" for r in writes + reads)
    summary = subprocess.run([sys.executable, "-m", "target", "trace", str(trace)],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    assert "INQUIRY" in summary and writes[0]["op"] in summary and reads[0]["op"] in summary
