"""The reference polled dump path (target.dump.polled) against real targets, and its
behaviour under the faults a dumping driver must survive or report.

illumos sd.c sddump() is the oracle (and sd_ddi_scsi_poll, sd_setup_rw_pkt/sd_cdbtab,
sd_reset_target, sd_send_polled_RQS): RESET_ALL (TARGET WARM RESET) and a REQUEST SENSE
first, the CDB group from the last LBA, the inner poll's 1 s / at-once / 10 ms retries over
a pkt_time budget, 12 outer attempts. Faults are set at run time through the target's
control socket (target.faults), as a user would; tgtd is the peer where it can produce
the condition.
"""

from __future__ import annotations

import errno
import os
import struct
import time

import pytest

from target.dump.polled import (
    GROUP1,
    GROUP4,
    GROUP5,
    RESET_ALL,
    RESET_LUN,
    RESET_TARGET,
    RETRIES,
    PolledDumper,
    cdb_limits,
    dump_image,
    write_cdb,
)
from target.iscsi.pdu import Op, TmfFunction
from target.scsi.task import Status, encode_lun
from target.shell.control import request
from target.shell.initiator import Initiator
from target.testing.servers import OurTarget, Tgtd, find_program

pytestmark = pytest.mark.integration

SIZE = 64 << 20
DUMP_LBA = 65536          # the dump area starts at 32 MiB
IMAGE = 1 << 20
BIG = 2 << 30             # a sparse LU reaching past WRITE(6)'s 1FFFFFh


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


def server_for(kind, tmp_path, path, block_size=512):
    """(server, LUN) of our target or tgtd serving `path`."""
    if kind == "tgtd":
        if not find_program("tgtd"):
            pytest.skip("needs tgtd (`make test` installs Debian package tgt)")
        return Tgtd(path, block_size, workdir=tmp_path / "tgtd"), 1
    return OurTarget(["--backing", str(path), "--block-size", str(block_size)],
                     workdir=tmp_path / "ours"), 0


def add_fault(target, **rule) -> int:
    answer = request(target.control, {"command": "fault-add", "rule": rule})
    assert answer["ok"], answer
    return answer["id"]


def fault_list(target) -> dict:
    return {f["id"]: f for f in request(target.control, {"command": "fault-list"})["faults"]}


def dumper_for(t, lun: int, **kw) -> PolledDumper:
    """tgtd answers TARGET WARM RESET "not supported" (5): there RESET_TARGET/RESET_ALL go
    as LU RESET (test_tgtd_refuses_the_target_reset_so_sddump_fails shows the default)."""
    kw.setdefault("timeout", 5.0)
    if isinstance(t, Tgtd):
        kw.setdefault("target_reset_tmf", TmfFunction.LOGICAL_UNIT_RESET)
    return PolledDumper("127.0.0.1", t.port, t.iqn, lun, **kw)


def read_back(t, lun: int, lba: int, nbytes: int, bs: int = 512) -> bytes:
    with Initiator("127.0.0.1", t.port, t.iqn) as ini:
        ini.login()
        out = b""
        while len(out) < nbytes:
            n = min(256 << 10, nbytes - len(out))
            cdb = struct.pack(">BBIBHB", 0x28, 0, lba + len(out) // bs, 0, n // bs, 0)
            r = ini.command(cdb, lun=lun, read=n)
            if r.status != Status.GOOD:  # a unit attention first
                r = ini.command(cdb, lun=lun, read=n)
            assert r.status == Status.GOOD
            out += r.data
        return out


WRITE_OPS = ["WRITE(6)", "WRITE(10)"]


def test_sd_cdbtab_choice():
    """sd_setup_rw_pkt over sd_cdbtab: the first group holding the LAST LBA (lba+count-1)
    and the count; WRITE(6) only from un_mincdb GROUP0 (sd_init_cdb_limits: a non-fibre,
    fixed disk); WRITE(12) before WRITE(16); removable media stop at GROUP5."""
    assert write_cdb(0x1FFFF8, 8)[0] == 0x0A and len(write_cdb(0x1FFFF8, 8)) == 6
    assert write_cdb(0x1FFFF8, 8)[1:5] == bytes([0x1F, 0xFF, 0xF8, 8])
    assert write_cdb(0x1FFFF9, 8)[0] == 0x2A        # its last LBA is 200000h
    assert write_cdb(0, 256)[0] == 0x2A             # 256 > sc_maxlen 0xFF
    assert write_cdb(100, 70000)[0] == 0xAA
    assert write_cdb(1 << 32, 8)[0] == 0x8A and len(write_cdb(1 << 32, 8)) == 16
    assert write_cdb(0, 8, read=True)[0] == 0x08
    mn, mx = cdb_limits(fibre=True)
    assert (mn, mx) == (GROUP1, GROUP4) and write_cdb(8, 8, mincdb=mn)[0] == 0x2A
    assert cdb_limits(removable=True) == (GROUP1, GROUP5)
    with pytest.raises(ValueError, match="CDB_TOO_SMALL"):
        write_cdb(1 << 32, 8, mincdb=GROUP1, maxcdb=GROUP5)


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_reference_dump_writes_the_image(tmp_path, backing, kind):
    """RESET_ALL (TARGET WARM RESET) succeeds before any WRITE, a REQUEST SENSE follows
    and returns the reset's UNIT ATTENTION (SAM-5 29h/xx); the image goes down as polled
    WRITE(6)s (LBAs below 1FFFFFh, 128 blocks) and reads back identical."""
    image = os.urandom(IMAGE)
    server, lun = server_for(kind, tmp_path, backing)
    with server as t, dumper_for(t, lun) as d:
        assert dump_image(d, image, DUMP_LBA) == 0, d.result
        r = d.result
        assert r.resets == [(RESET_ALL, True)]
        assert r.request_senses   # sent; ours hands it the reset's UA, tgtd does not
        if kind == "ours":
            assert (r.request_senses[0].key, r.request_senses[0].asc) == (0x6, 0x29)
        assert set(r.opcodes) == {0x0A} and r.commands == IMAGE // 512 // 128
        assert read_back(t, lun, DUMP_LBA, IMAGE) == image


def test_tgtd_refuses_the_target_reset_so_sddump_fails(tmp_path, backing):
    """tgtd answers TARGET WARM RESET with 5 (function not supported, RFC 7143 11.6.1):
    scsi_reset(RESET_ALL) returns 0, and sddump gives EIO before any WRITE."""
    server, lun = server_for("tgtd", tmp_path, backing)
    with server as t, dumper_for(t, lun, target_reset_tmf=TmfFunction.TARGET_WARM_RESET) as d:
        assert d.dump(os.urandom(65536), DUMP_LBA, 128) == errno.EIO
        assert d.result.resets == [(RESET_ALL, False)] and d.result.sent == 0


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_write6_or_write10_by_the_last_lba(tmp_path, kind):
    """A request whose last LBA is 1FFFFFh goes as WRITE(6), one block further as
    WRITE(10) (sd_cdbtab); the target takes both (SBC-4 5.39, 5.40)."""
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(BIG)
    a, b = os.urandom(8 * 512), os.urandom(8 * 512)
    server, lun = server_for(kind, tmp_path, path)
    with server as t, dumper_for(t, lun) as d:
        assert d.dump(a, 0x1FFFF8, 8) == 0, d.result
        assert d.dump(b, 0x1FFFF9 + 8, 8) == 0, d.result
        ops = d.result.opcodes   # a WRITE sent again after a UA (tgtd) counts once
        assert [o for i, o in enumerate(ops) if not i or ops[i - 1] != o] == [0x0A, 0x2A]
        assert read_back(t, lun, 0x1FFFF8, 4096) == a
        assert read_back(t, lun, 0x1FFFF9 + 8, 4096) == b


def test_our_target_saw_write6_then_write10(tmp_path):
    """Our target's own opcode table (a fault rule that never fires counts the commands it
    matched) confirms the CDBs on the wire."""
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(BIG)
    control = tmp_path / "ctl" / "t.sock"
    with OurTarget(["--backing", str(path), "--control", str(control)],
                   workdir=tmp_path) as t:
        t.control = control
        w6 = add_fault(t, action="busy", op="WRITE(6)", every=1 << 30)
        w10 = add_fault(t, action="busy", op="WRITE(10)", every=1 << 30)
        with dumper_for(t, 0) as d:
            assert d.dump(bytes(4096), 0x1FFFF8, 8) == 0
            assert d.dump(bytes(4096), 0x1FFFF9, 8) == 0
        faults = fault_list(t)
        assert faults[w6]["matched"] == 1 and faults[w10]["matched"] == 1


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_unit_attention_after_another_sessions_reset_is_retried_at_once(
        tmp_path, backing, kind):
    """Another initiator's LU RESET between two dump calls gives the dump's nexus a UNIT
    ATTENTION (SAM-5 5.7); sd_ddi_scsi_poll sends the WRITE again at once."""
    server, lun = server_for(kind, tmp_path, backing)
    with server as t, dumper_for(t, lun) as d:
        assert d.dump(os.urandom(65536), DUMP_LBA, 128) == 0
        with Initiator("127.0.0.1", t.port, t.iqn,
                       initiator_name="iqn.2026-11.local:other") as other:
            other.login()
            assert other.task_management(TmfFunction.LOGICAL_UNIT_RESET, lun=lun) == 0
        before = d.result.retries
        t0 = time.monotonic()
        assert d.dump(os.urandom(65536), DUMP_LBA + 128, 128) == 0, d.result
        assert d.result.retries == before + 1 and time.monotonic() - t0 < 0.9
        assert d.result.attempts == 2   # one sd_scsi_poll per dump call


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_partition_relative_blocks_and_range(tmp_path, backing, kind):
    """sddump adds the partition start (cmlb_partinfo) and refuses with EINVAL, sending
    nothing, a request that ends beyond the partition."""
    data = os.urandom(65536)
    server, lun = server_for(kind, tmp_path, backing)
    with server as t, dumper_for(t, lun, partition_start=DUMP_LBA, partition_blocks=256) as d:
        assert d.dump(data, 128, 128) == 0, d.result
        sent = d.result.sent
        assert d.dump(data, 129, 128) == errno.EINVAL
        assert d.result.sent == sent
        assert read_back(t, lun, DUMP_LBA + 128, 65536) == data


@pytest.mark.parametrize("kind", ["ours", "tgtd"])
def test_4096_byte_lu_fixed_einval_removable_read_modify_write(tmp_path, backing, kind):
    """A fixed disk's system block is its target block (sd_update_block_info): a dump not
    on 4096-byte boundaries is EINVAL. On removable media (un_sys_blocksize DEV_BSIZE,
    NOT_DEVBSIZE) the same request is read-modify-write: the covering block is READ, the
    512 bytes laid in at their offset, the block written; its neighbours keep their data."""
    server, lun = server_for(kind, tmp_path, backing, 4096)
    piece = os.urandom(512)
    with server as t:
        with dumper_for(t, lun, block_size=4096) as d:
            assert d.dump(os.urandom(4096), 8 * 100, 8) == 0, d.result
            assert d.dump(piece, 8 * 100 + 3, 1) == errno.EINVAL
            assert d.dump(bytes(4096), 8 * 100 + 4, 8) == errno.EINVAL
        before = read_back(t, lun, 100, 4096, 4096)
        with dumper_for(t, lun, block_size=4096, removable=True) as d:
            assert d.dump(piece, 8 * 100 + 3, 1) == 0, d.result
            assert d.result.rmw_reads == 1 and d.result.opcodes[-2:] == [0x28, 0x2A]
        after = read_back(t, lun, 100, 4096, 4096)
        assert after == before[:1536] + piece + before[2048:]


def test_busy_for_3_s_still_completes(ours):
    """BUSY is sent again once a second inside sd_ddi_scsi_poll (100 ticks of its budget):
    three BUSY answers cost 3 s and no outer attempt."""
    add_fault(ours, action="busy", op=WRITE_OPS, first=3)
    with dumper_for(ours, 0) as d:
        t0 = time.monotonic()
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == 0, d.result
        assert time.monotonic() - t0 >= 3.0
        r = d.result
        assert r.retries == 3 and r.attempts == r.commands == IMAGE // 512 // 128


@pytest.mark.parametrize("sense", ["03/0C/00", "05/24/00"])
def test_check_condition_on_every_write_fails_after_12_attempts(ours, sense):
    """sddump retries any CHECK CONDITION (MEDIUM ERROR, ILLEGAL REQUEST) 12 times, with
    no reset (its `continue` skips the resets and the bus reset after the 7th)."""
    add_fault(ours, action="check-condition", op=WRITE_OPS, every=1, sense=sense)
    with dumper_for(ours, 0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == errno.EIO
        r = d.result
        assert r.attempts == RETRIES and r.sent == RETRIES and r.commands == 0
        key, asc, ascq = (int(x, 16) for x in sense.split("/"))
        assert (r.sense.key, r.sense.asc, r.sense.ascq) == (key, asc, ascq)
        assert r.status == Status.CHECK_CONDITION
        assert r.resets == [(RESET_ALL, True)]


def test_medium_error_on_a_range_ends_the_dump_there(ours):
    add_fault(ours, action="check-condition", op=WRITE_OPS,
              lba=f"{DUMP_LBA + 256}-{DUMP_LBA + 257}", sense="03/0C/00")
    with dumper_for(ours, 0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == errno.EIO
        r = d.result
        assert (r.sense.key, r.sense.asc) == (0x3, 0x0C) and r.commands == 2
        assert r.attempts == 2 + RETRIES


def test_unit_attention_storm_is_retried_at_once(ours):
    """sd_ddi_scsi_poll sends again at once after a UNIT ATTENTION, counting 1 s of the
    pkt_time budget (5 s here): 20 UAs take 4 exhausted sd_scsi_poll calls, no delay."""
    add_fault(ours, action="check-condition", op=WRITE_OPS, first=20, sense="06/29/00")
    with dumper_for(ours, 0) as d:
        t0 = time.monotonic()
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == 0, d.result
        assert time.monotonic() - t0 < 2.0
        r = d.result
        assert r.retries == 20 and r.attempts == r.commands + 4


def test_busy_forever_eio_after_12_attempts_with_resets(ours):
    """BUSY to the end of every budget (pkt_time 1 s): each failed attempt resets the
    target (un_f_lun_reset_enabled off) and senses; after the 7th, RESET_ALL too."""
    add_fault(ours, action="busy", op=WRITE_OPS, every=1)
    with dumper_for(ours, 0, timeout=1.0) as d:
        assert dump_image(d, os.urandom(IMAGE), DUMP_LBA) == errno.EIO
        r = d.result
        assert r.attempts == RETRIES and r.status == Status.BUSY
        levels = [lvl for lvl, _ in r.resets]
        assert levels == [RESET_ALL] + [RESET_TARGET] * 7 + [RESET_ALL] + \
            [RESET_TARGET] * 5


def test_busy_with_lun_reset_enabled_resets_the_lun(ours):
    add_fault(ours, action="busy", op=WRITE_OPS, first=1)
    with dumper_for(ours, 0, timeout=1.0, lun_reset_enabled=True) as d:
        assert dump_image(d, os.urandom(65536), DUMP_LBA) == 0, d.result
        assert [lvl for lvl, _ in d.result.resets] == [RESET_ALL, RESET_LUN]


def test_a_failed_reset_is_eio_before_any_write(ours):
    """scsi_reset(RESET_ALL) == 0 on the first call: EIO, nothing written (the target saw
    no WRITE); the state is restored, so the next call resets again and dumps."""
    rid = add_fault(ours, action="tmf-reject", tmf="TARGET_WARM_RESET", once=True)
    seen = add_fault(ours, action="busy", op=WRITE_OPS, every=1 << 30)
    with dumper_for(ours, 0) as d:
        assert d.dump(os.urandom(65536), DUMP_LBA, 128) == errno.EIO
        assert d.result.resets == [(RESET_ALL, False)] and d.result.sent == 0
        faults = fault_list(ours)
        assert faults[rid]["hits"] == 1 and faults[seen]["matched"] == 0
        assert d.dump(os.urandom(65536), DUMP_LBA, 128) == 0, d.result
        assert d.result.resets[-1] == (RESET_ALL, True)


def test_reservation_conflict_resets_the_target_and_retries(tmp_path, backing):
    """RESERVATION CONFLICT is not CHECK or BUSY: sd_reset_target; the target reset frees
    the RESERVE(6) of the other initiator (SPC-2 5.5.1), and the retry is written."""
    server, lun = server_for("ours", tmp_path, backing)
    with server as t:
        with Initiator("127.0.0.1", t.port, t.iqn,
                       initiator_name="iqn.2026-11.local:holder") as other:
            other.login()
            r = other.command(bytes(6), lun=lun)            # TEST UNIT READY: the UA
            assert other.command(bytes([0x16, 0, 0, 0, 0, 0]), lun=lun).status == 0
            with dumper_for(t, lun, fibre=True,              # no first reset
                            partition_blocks=SIZE // 512) as d:  # no READ CAPACITY
                assert d.dump(os.urandom(65536), DUMP_LBA, 128) == 0, d.result
                assert d.result.resets[0] == (RESET_TARGET, True)
                assert d.result.attempts == 2
        del r


def test_dropped_connection_is_retried_on_a_new_login(ours, backing):
    image = os.urandom(IMAGE)
    add_fault(ours, action="drop", op=WRITE_OPS, once=True)
    with dumper_for(ours, 0) as d:
        assert dump_image(d, image, DUMP_LBA) == 0, d.result
        assert d.result.reconnects == 1
        assert d.result.resets[1] == (RESET_TARGET, True)   # sd_reset_target
    with open(backing, "rb") as f:
        f.seek(DUMP_LBA * 512)
        assert f.read(IMAGE) == image


def test_a_device_gone_ends_the_dump(tmp_path, backing):
    """The target goes away: the link drops and no login is possible (CMD_DEV_GONE):
    sddump stops at once, without the 12 attempts."""
    t = OurTarget(["--backing", str(backing)], workdir=tmp_path / "ours")
    with t, dumper_for(t, 0) as d:
        assert d.dump(os.urandom(65536), DUMP_LBA, 128) == 0
        t.stop()
        attempts = d.result.attempts
        assert d.dump(os.urandom(65536), DUMP_LBA + 128, 128) == errno.EIO
        assert "device gone" in d.result.reason
        assert d.result.attempts - attempts <= 2


def test_a_completion_while_dumping_is_dropped_not_resubmitted(ours):
    """A READ still outstanding when the dump's writes begin (issued after the reset,
    which would have aborted it) completes while the dump polls: the path drops it."""
    add_fault(ours, action="delay", op="READ(10)", once=True, delay_ms=10)
    with dumper_for(ours, 0) as d:
        assert d.start() == 0
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
