"""The reference polled dump path (target.dump.polled) against real targets, and its
behaviour under the faults a dumping driver must survive or report.

sddump() (illumos sd.c) is the model: LU reset and REQUEST SENSE first, WRITE(10) polled
one at a time, success only on GOOD with no residual, up to 12 attempts for BUSY / UNIT
ATTENTION / becoming ready / a lost link, EIO for anything else. Faults are set at run time
through the target's control socket (target.faults), as a user would.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest

from target.control import request
from target.dump.polled import RETRIES, PolledDumper, dump_image, write_cdb
from target.iscsi.initiator import Initiator
from target.iscsi.pdu import Op
from target.scsi.task import Status, encode_lun
from target.testing.servers import OurTarget, Tgtd, find_program

pytestmark = pytest.mark.integration

SIZE = 64 << 20
DUMP_LBA = 65536          # the dump area starts at 32 MiB
IMAGE = 1 << 20


@pytest.fixture
def backing(tmp_path):
    path = tmp_path / "dump.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


@pytest.fixture
def ours(tmp_path, backing):
    control = tmp_path / "ctl" / "target.sock"
    with OurTarget(["--backing", str(backing), "--control", str(control)],
                   workdir=tmp_path) as t:
        t.control = control
        yield t


def add_fault(target, **rule) -> int:
    answer = request(target.control, {"command": "fault-add", "rule": rule})
    assert answer["ok"], answer
    return answer["id"]


def dumper_for(t, lun: int) -> PolledDumper:
    return PolledDumper("127.0.0.1", t.port, t.iqn, lun, timeout=5.0)


def read_back(t, lun: int, lba: int, nbytes: int) -> bytes:
    with Initiator("127.0.0.1", t.port, t.iqn) as ini:
        ini.login()
        out = b""
        while len(out) < nbytes:
            n = min(256 << 10, nbytes - len(out))
            blocks = n // 512
            cdb = struct.pack(">BBIBHB", 0x28, 0, lba + len(out) // 512, 0, blocks, 0)
            r = ini.command(cdb, lun=lun, read=n)
            if r.status != Status.GOOD:  # a unit attention first
                r = ini.command(cdb, lun=lun, read=n)
            assert r.status == Status.GOOD
            out += r.data
        return out


def test_smallest_write_cdb():
    """sd_setup_rw_pkt's choice: WRITE(10) when it fits, WRITE(12) for more blocks, WRITE(16)
    beyond 32-bit LBAs (SBC-4 5.38-5.41)."""
    assert write_cdb(100, 8)[0] == 0x2A and len(write_cdb(100, 8)) == 10
    assert write_cdb(100, 70000)[0] == 0xAA
    assert write_cdb(1 << 32, 8)[0] == 0x8A and len(write_cdb(1 << 32, 8)) == 16


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_reference_dump_writes_the_image(tmp_path, backing, kind):
    """The whole image goes down as polled WRITEs and reads back identical, after one LU
    reset whose unit attention the REQUEST SENSE took."""
    image = os.urandom(IMAGE)
    if kind == "tgtd":
        if not find_program("tgtd"):
            pytest.skip("needs tgtd (`make test` installs Debian package tgt)")
        server = Tgtd(backing, 512, workdir=tmp_path / "tgtd")
        lun = 1
    else:
        server = OurTarget(["--backing", str(backing)], workdir=tmp_path / "ours")
        lun = 0
    with server as t, dumper_for(t, lun) as d:
        assert dump_image(d, image, DUMP_LBA) == 0, d.result
        assert d.result.resets == 1 and d.result.commands == IMAGE // 512 // 128
        # Ours hands the reset's unit attention to the REQUEST SENSE; tgtd keeps the
        # nexus's power-on UA queued too, and the first WRITEs meet them: sddump's
        # retries are what carry a dump through that.
        assert d.result.retries == 0 if kind == "ours" else d.result.retries <= 2
        assert read_back(t, lun, DUMP_LBA, IMAGE) == image


def test_medium_error_ends_the_dump_with_eio(ours):
    add_fault(ours, action="check-condition", op="WRITE(10)", lba=f"{DUMP_LBA + 256}-"
              f"{DUMP_LBA + 257}", sense="03/0C/00")
    with dumper_for(ours, 0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == errno.EIO
        r = d.result
        assert (r.sense.key, r.sense.asc, r.sense.ascq) == (0x3, 0x0C, 0x00)
        assert r.status == Status.CHECK_CONDITION and r.commands == 2 and r.retries == 0


def test_busy_is_retried_then_succeeds(ours):
    add_fault(ours, action="busy", op="WRITE(10)", first=3)
    with dumper_for(ours, 0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == 0
        assert d.result.retries == 3 and d.result.error == 0


def test_busy_forever_gives_eio_after_the_retries_with_a_reset_halfway(ours):
    add_fault(ours, action="busy", op="WRITE(10)", every=1)
    with dumper_for(ours, 0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == errno.EIO
        r = d.result
        assert r.attempts == RETRIES and r.status == Status.BUSY and r.resets == 2


def test_unit_attention_is_retried(ours):
    add_fault(ours, action="check-condition", op="WRITE(10)", first=2, sense="06/29/00")
    with dumper_for(ours, 0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == 0
        assert d.result.retries == 2


def test_dropped_connection_is_retried_on_a_new_login(ours, backing):
    image = os.urandom(IMAGE)
    add_fault(ours, action="drop", op="WRITE(10)", once=True)
    with dumper_for(ours, 0) as d:
        assert dump_image(d, image, DUMP_LBA) == 0, d.result
        assert d.result.reconnects == 1
    with open(backing, "rb") as f:
        f.seek(DUMP_LBA * 512)
        assert f.read(IMAGE) == image


def test_a_completion_while_dumping_is_dropped_not_resubmitted(ours):
    """A READ still outstanding when the dump's writes begin (issued after the LU reset,
    which would have aborted it) completes while the dump polls: the path drops it."""
    add_fault(ours, action="delay", op="READ(10)", once=True, delay_ms=10)
    with dumper_for(ours, 0) as d:
        d.start()
        ini = d.ini
        itt = ini._next_itt()
        header = bytearray(struct.pack(">BBBBI8sIIII", Op.SCSI_COMMAND, 0xC1, 0, 0, 0,
                                       encode_lun(0), itt, 4096, ini.cmdsn, ini.exp_stat_sn)
                           + bytes(16))
        header[32:42] = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 8, 0)
        ini.cmdsn += 1
        ini.send_pdu(bytes(header))
        assert dump_image(d, os.urandom(8 * IMAGE), DUMP_LBA) == 0  # ~100 polled WRITEs
        assert itt in d.result.dropped


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_reference_dump_of_an_illumos_layout_reads_back_through_dump_inspect(
        tmp_path, backing, kind):
    """The reference path writes an illumos dump as dumpsys() lays it out (dumpsubr.c:
    lzjb-compressed pages in helper stream blocks, the symbol table, translation map and
    pfn table, the headers at dump_start and 64 KiB before the end, the data header) as
    polled WRITEs; `scsi-target dump inspect --expand` reads it over iSCSI from the LUN,
    checks it as savecore's read_dumphdr() does and writes vmcore.0 holding every page at
    dump_data + n * pagesize (savecore.c build_corefile())."""
    import json
    import subprocess
    import sys

    from target.dump import illumos

    rnd = os.urandom(4096)
    pages = b"".join(bytes(4096) if i % 4 == 0 else rnd if i % 4 == 3 else
                     (b"proc_t %d kmem_cache " % i * 40).ljust(4096, b"\0")[:4096]
                     for i in range(600))
    panic = "forced crash dump initiated at user request"
    pieces = illumos.illumos_dump_image(SIZE, pages, panic=panic, crashtime=1_795_000_000)
    if kind == "tgtd":
        if not find_program("tgtd"):
            pytest.skip("needs tgtd (`make test` installs Debian package tgt)")
        server, lun = Tgtd(backing, 512, workdir=tmp_path / "tgtd"), 1
    else:
        server, lun = OurTarget(["--backing", str(backing)], workdir=tmp_path / "ours"), 0
    with server as t:
        with dumper_for(t, lun) as d:
            for offset, piece in pieces:
                piece += bytes(-len(piece) % 512)
                assert dump_image(d, piece, offset // 512) == 0, d.result
        out = tmp_path / "crash"
        proc = subprocess.run([sys.executable, "-m", "target", "dump", "inspect",
                               f"{t.url.rsplit('/', 1)[0]}/{lun}", "--json", "--expand",
                               str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout)
    assert (found["os"], found["panic"], found["release"]) == ("illumos", panic, "5.11")
    assert found["details"]["complete"] is True and found["details"]["compressed"] is True
    assert found["size"] == len(pages) and found["details"]["data_csize"] < len(pages)
    core = (out / "vmcore.0").read_bytes()
    (data_at,) = struct.unpack_from("<q", core, 48)  # dumphdr_t dump_data (amd64)
    assert core[data_at:data_at + len(pages)] == pages
