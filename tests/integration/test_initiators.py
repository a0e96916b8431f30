"""Our target served as a real process and driven by real initiators: libiscsi's tools
(iscsi-ls, iscsi-inq, iscsi-readcapacity16) and QEMU's block layer (qemu-io, qemu-img).

Each test starts its own server on 127.0.0.1 with an ephemeral port and its own backing
file (pytest -n 2 safe); the server is stopped by its PID even when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import threading

import pytest

from target.shell.initiator import Initiator
from target.testing.servers import OurTarget

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("iscsi-ls") or not shutil.which("qemu-io"),
                       reason="needs libiscsi-bin and qemu-utils (installed by `make test`)"),
]

INITIATOR = "iqn.2026-11.local.scsi-target:pytest"


def run(*cmd: str, timeout: float = 60) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture
def backing(tmp_path):
    path = tmp_path / "lun0.img"
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    return path


@pytest.fixture
def target(tmp_path, backing):
    with OurTarget(["--backing", str(backing)], workdir=tmp_path) as t:
        yield t


def test_discovery_lists_the_target_and_lun(target):
    """RFC 7143 12.3 (SendTargets=All) and REPORT LUNS / READ CAPACITY through iscsi-ls."""
    out = run("iscsi-ls", "-i", INITIATOR, "-s", f"iscsi://127.0.0.1:{target.port}")
    assert f"Target:{target.iqn} Portal:127.0.0.1:{target.port},1" in out
    assert re.search(r"Lun:0\s+Type:DIRECT_ACCESS \(Size:6[34]M\)", out), out


def test_inquiry_through_iscsi_inq(target):
    """SPC-4 6.6.2 standard INQUIRY data and VPD page 80h (unit serial number)."""
    out = run("iscsi-inq", "-i", INITIATOR, target.url)
    assert "Peripheral Device Type:DIRECT_ACCESS" in out or "DIRECT_ACCESS" in out
    assert "QEMUSCSI" in out and "scsi-target" in out
    serial = run("iscsi-inq", "-i", INITIATOR, "-e", "1", "-c", "128", target.url)
    assert re.search(r"[Ss]erial", serial), serial


def test_read_capacity16(target):
    """SBC-4 5.16: RETURNED LOGICAL BLOCK ADDRESS = last LBA, block length 512."""
    out = run("iscsi-readcapacity16", "-i", INITIATOR, target.url)
    assert re.search(r"Logical Block Length\s*:\s*512", out, re.I) or "512" in out, out
    assert str((64 << 20) // 512 - 1) in out, out


def test_qemu_io_pattern_lands_in_the_backing_file(target, backing):
    """WRITE(10/16) and READ through QEMU's iscsi:// block driver; the host sees the data
    at the same byte offset in the backing file."""
    run("qemu-io", "-f", "raw", "-c", "write -P 0xa7 1M 2M", "-c", "read -P 0xa7 1M 2M",
        "-c", "read -P 0 0 1M", target.url)
    with open(backing, "rb") as f:
        f.seek(1 << 20)
        assert f.read(2 << 20) == b"\xa7" * (2 << 20)
        f.seek(0)
        assert f.read(1 << 20) == bytes(1 << 20)


def test_host_data_read_by_qemu(target, backing):
    """Data the host puts in the file is what READ returns (no stale cache in the target)."""
    with open(backing, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"\x3c" * 65536)
    run("qemu-io", "-f", "raw", "-c", "read -P 0x3c 5M 64k", target.url)


def test_qemu_img_convert_and_compare(target, tmp_path):
    """Large sequential writes (qemu-img convert) and reads back (qemu-img compare)."""
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        for i in range(16):
            f.write(bytes([i * 13 & 0xFF]) * (1 << 20))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), target.url,
        timeout=120)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), target.url, timeout=120)


def test_header_digests(target, backing):
    """RFC 7143 13.1: HeaderDigest=CRC32C negotiated and used for every PDU, with libiscsi's
    tools (qemu-io crashes with header_digest=crc32c against tgtd as well, so it is not
    used here) and with data in both directions through our own initiator."""
    url = f"{target.url}?header_digest=crc32c"
    assert "QEMUSCSI" in run("iscsi-inq", "-i", INITIATOR, url)
    assert str((64 << 20) // 512 - 1) in run("iscsi-readcapacity16", "-i", INITIATOR, url)
    ini = Initiator("127.0.0.1", target.port, target.iqn, header_digest=True,
                    initiator_name=INITIATOR)
    with ini:
        assert ini.login()["HeaderDigest"] == "CRC32C"
        while ini.command(bytes(6)).status != 0:  # the power-on unit attention first
            pass
        data = bytes(range(256)) * 1024
        write = struct.pack(">BBIBHB", 0x2A, 0, 100, 0, len(data) // 512, 0)
        assert ini.command(write, data=data).status == 0
        read = struct.pack(">BBIBHB", 0x28, 0, 100, 0, len(data) // 512, 0)
        assert ini.command(read, read=len(data)).data == data
    with open(backing, "rb") as f:
        f.seek(100 * 512)
        assert f.read(len(data)) == data


def test_several_sessions_at_once(target):
    """Several sessions write disjoint ranges at the same time; each reads its own back."""
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            off = f"{8 + i * 4}M"
            run("qemu-io", "-f", "raw", "-c", f"write -P {0x20 + i} {off} 4M",
                "-c", f"read -P {0x20 + i} {off} 4M", target.url)
        except AssertionError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_unknown_target_is_refused(target):
    """RFC 7143 11.13.5: a TargetName that does not exist: 02/03 Not found."""
    url = f"iscsi://127.0.0.1:{target.port}/iqn.2026-11.local.nope:x/0"
    proc = subprocess.run(["iscsi-inq", "-i", INITIATOR, url], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert re.search(r"not found|Target not found|0x0203|Login Failed", proc.stderr + proc.stdout,
                     re.I), proc.stderr


@pytest.mark.parametrize("store", ["file", "memory"])
def test_sigint_shuts_down_cleanly(tmp_path, backing, store):
    """Ctrl-C: sessions asked to log out or dropped, stores flushed and closed, exit status
    0 and no traceback, with a session still logged in and reading when it comes."""
    args = ["--backing", str(backing)] if store == "file" else ["--size", "64M"]
    with OurTarget(args, workdir=tmp_path) as t:
        run("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", t.url)
        ini = Initiator("127.0.0.1", t.port, t.iqn, initiator_name=INITIATOR)
        ini.login()
        while ini.command(bytes(6)).status != 0:
            pass
        assert ini.command(struct.pack(">BBIBHB", 0x28, 0, 0, 0, 128, 0), read=65536).status == 0
        pid = t.pid
        t.stop()
        ini.close()
        assert t.proc.returncode == 0
        assert "Traceback" not in t.log_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    if store == "file":
        with open(backing, "rb") as f:
            assert f.read(65536) == b"\x77" * 65536
