"""SBC-4 commands through LogicalUnit.execute with the real disk table, over memory and
file stores (the flush-counting store double is the only test double)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from target.backing.file import FileStore
from target.backing.memory import MemoryStore
from target.scsi.disk import DISK_COMMANDS
from target.scsi.lu import LogicalUnit
from target.scsi.task import Nexus, ScsiTask, Status

pytestmark = pytest.mark.unit

NEXUS = Nexus("iqn.2026-11.local.test:i,i,0x400000000001", "iqn.2026-11.local.test:t,t,0x0001")


def lu_over(store, bs: int = 512, **kw) -> LogicalUnit:
    lu = LogicalUnit(0, store, DISK_COMMANDS, block_size=bs, **kw)
    lu.ua.clear(NEXUS)  # a known nexus with no unit attention pending
    return lu


def run(lu: LogicalUnit, cdb: bytes, data_out: bytes | None = None) -> ScsiTask:
    task = ScsiTask(NEXUS, 0, cdb, data_out=memoryview(data_out) if data_out is not None
                    else None)
    lu.execute(task)
    return task


def sense(task: ScsiTask) -> tuple[int, int, int]:
    s = task.sense
    return s[2] & 0x0F, s[12], s[13]


def read10(lba, n, flags=0):
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, n, 0)


def write10(lba, n, flags=0):
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, n, 0)


def read16(lba, n, flags=0):
    return struct.pack(">BBQIBB", 0x88, flags, lba, n, 0, 0)


def write16(lba, n, flags=0):
    return struct.pack(">BBQIBB", 0x8A, flags, lba, n, 0, 0)


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore(4 << 20)
    return FileStore(tmp_path / "disk.img", size=4 << 20, create=True)


@pytest.mark.parametrize("bs", [512, 4096])
def test_write_read_round_trip_every_size(store, bs):
    """SBC-4 5.13-5.16 / 5.40-5.43: WRITE then READ (6/10/12/16) return the same blocks."""
    lu = lu_over(store, bs)
    data = bytes((i * 31) & 0xFF for i in range(3 * bs))
    assert run(lu, write10(5, 3), data).status == Status.GOOD
    for cdb in (bytes([0x08, 0, 0, 5, 3, 0]), read10(5, 3),
                struct.pack(">BBIIBB", 0xA8, 0, 5, 3, 0, 0), read16(5, 3)):
        task = run(lu, cdb)
        assert task.status == Status.GOOD and bytes(task.data_in) == data
    assert run(lu, write16(7, 1), b"z" * bs).status == Status.GOOD
    assert bytes(run(lu, read10(7, 1)).data_in) == b"z" * bs


def test_read6_zero_length_means_256_blocks():
    """SBC-4 5.13: a TRANSFER LENGTH of 0 in READ(6) transfers 256 blocks."""
    lu = lu_over(MemoryStore(1 << 20))
    assert len(run(lu, bytes([0x08, 0, 0, 0, 0, 0])).data_in) == 256 * 512


def test_out_of_range():
    """SBC-4 4.5: LBA + length beyond the capacity: LOGICAL BLOCK ADDRESS OUT OF RANGE."""
    lu = lu_over(MemoryStore(1 << 20))
    last = (1 << 20) // 512 - 1
    assert run(lu, read10(last, 1)).status == Status.GOOD
    task = run(lu, read10(last, 2))
    assert task.status == Status.CHECK_CONDITION and sense(task) == (0x05, 0x21, 0x00)
    assert sense(run(lu, write16(last + 1, 1), bytes(512))) == (0x05, 0x21, 0x00)


@pytest.mark.parametrize("bs", [512, 4096])
def test_out_of_range_on_a_medium_with_a_partial_last_block(bs):
    """SBC-4 4.5 and READ CAPACITY(10) (5.20): the capacity is the whole blocks the medium
    holds (RETURNED LOGICAL BLOCK ADDRESS + 1), a partial block at its end is not one;
    READ(10) and WRITE(10) of the last whole block are GOOD, of the next one LOGICAL
    BLOCK ADDRESS OUT OF RANGE."""
    lu = lu_over(MemoryStore((1 << 20) + bs - 1), bs)
    cap = run(lu, bytes([0x25]) + bytes(9))
    last = struct.unpack(">II", cap.data_in)[0]
    assert last == (1 << 20) // bs - 1
    assert run(lu, read10(last, 1)).status == Status.GOOD
    assert run(lu, write10(last, 1), bytes(bs)).status == Status.GOOD
    for task in (run(lu, read10(last, 2)), run(lu, read10(last + 1, 1)),
                 run(lu, write10(last + 1, 1), bytes(bs)),
                 run(lu, write10(last, 2), bytes(2 * bs))):
        assert task.status == Status.CHECK_CONDITION and sense(task) == (0x05, 0x21, 0x00)


def test_protection_fields_are_refused_with_field_pointer():
    """SBC-4 4.22 with no protection information: RDPROTECT != 0 is INVALID FIELD IN CDB,
    the sense-key specific field pointing at CDB byte 1 bit 7 (SPC-4 4.5.2.4.2)."""
    lu = lu_over(MemoryStore(1 << 20))
    task = run(lu, read10(0, 1, flags=0x20))
    assert sense(task) == (0x05, 0x24, 0x00)
    assert task.sense[15] == 0x80 | 0x40 | 0x08 | 7 and task.sense[16:18] == b"\x00\x01"


def test_write_protected():
    """SBC-4 4.11: a read-only LU ends writes in DATA PROTECT / WRITE PROTECTED."""
    lu = lu_over(MemoryStore(1 << 20), read_only=True)
    assert sense(run(lu, write10(0, 1), bytes(512))) == (0x07, 0x27, 0x00)
    assert run(lu, read10(0, 1)).status == Status.GOOD


def test_short_data_out_writes_only_whole_blocks_received():
    """RFC 7143 11.4.5.1 as libiscsi's Write10Residuals checks it: with less Data-Out than
    the CDB asks for, only the blocks received are written, and out_length says what the
    CDB wanted so the transport can report the overflow."""
    lu = lu_over(MemoryStore(1 << 20))
    run(lu, write10(0, 2), b"a" * 1024)
    task = run(lu, write10(0, 2), b"b" * 512)
    assert task.status == Status.GOOD and task.out_length == 1024
    assert bytes(run(lu, read10(0, 2)).data_in) == b"b" * 512 + b"a" * 512


class CountingStore(MemoryStore):
    def __init__(self, size):
        super().__init__(size)
        self.flushes = 0

    def flush(self):
        self.flushes += 1


def test_fua_and_wce_flush():
    """SBC-4 4.15: FUA=1 (or WCE=0 in the caching mode page) makes the write durable."""
    store = CountingStore(1 << 20)
    lu = lu_over(store)
    run(lu, write10(0, 1), bytes(512))
    assert store.flushes == 0
    run(lu, write10(0, 1, flags=0x08), bytes(512))
    assert store.flushes == 1
    lu.mode.wce = False
    run(lu, write10(0, 1), bytes(512))
    assert store.flushes == 2
    assert run(lu, struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0)).status == Status.GOOD
    assert store.flushes == 3


def test_verify_bytchk_miscompare_reports_offset():
    """SBC-4 5.33: VERIFY with BYTCHK=01b compares; MISCOMPARE / 1Dh/00h with the offset of
    the first differing byte in the INFORMATION field (fixed sense bytes 3-6)."""
    lu = lu_over(MemoryStore(1 << 20))
    run(lu, write10(10, 2), b"q" * 1024)
    verify = struct.pack(">BBIBHB", 0x2F, 0x02, 10, 0, 2, 0)
    assert run(lu, verify, b"q" * 1024).status == Status.GOOD
    bad = bytearray(b"q" * 1024)
    bad[700] ^= 1
    task = run(lu, verify, bytes(bad))
    assert sense(task) == (0x0E, 0x1D, 0x00)
    assert task.sense[0] & 0x80 and struct.unpack(">I", task.sense[3:7])[0] == 700
    assert run(lu, struct.pack(">BBIBHB", 0x2F, 0x00, 10, 0, 2, 0)).status == Status.GOOD


def test_compare_and_write():
    """SBC-4 5.3: equal → the write half lands; different → MISCOMPARE with the offset and
    nothing written; a Data-Out other than 2 x NoLB blocks is INVALID FIELD IN CDB."""
    lu = lu_over(MemoryStore(1 << 20))
    run(lu, write10(3, 1), b"A" * 512)
    caw = struct.pack(">BBQxxxBBB", 0x89, 0, 3, 1, 0, 0)
    assert run(lu, caw, b"A" * 512 + b"B" * 512).status == Status.GOOD
    assert bytes(run(lu, read10(3, 1)).data_in) == b"B" * 512
    task = run(lu, caw, b"A" * 512 + b"C" * 512)
    assert sense(task) == (0x0E, 0x1D, 0x00) and struct.unpack(">I", task.sense[3:7])[0] == 0
    assert bytes(run(lu, read10(3, 1)).data_in) == b"B" * 512
    assert sense(run(lu, caw, b"B" * 512)) == (0x05, 0x24, 0x00)


def test_write_same_and_unmap_bit():
    """SBC-4 5.50: one block repeated over the range; UNMAP=1 on a fully provisioned LU is
    refused (LBPWS10=0 in its provisioning page, SBC-4 6.6.6)."""
    lu = lu_over(MemoryStore(1 << 20))
    ws = struct.pack(">BBIBHB", 0x41, 0, 20, 0, 4, 0)
    assert run(lu, ws, b"\x5a" * 512).status == Status.GOOD
    assert bytes(run(lu, read10(20, 4)).data_in) == b"\x5a" * 2048
    unmap_ws = struct.pack(">BBIBHB", 0x41, 0x08, 20, 0, 4, 0)
    assert sense(run(lu, unmap_ws, bytes(512))) == (0x05, 0x24, 0x00)


def test_thin_lu_unmap_reads_zeros_and_reports_deallocated(tmp_path):
    """SBC-4 5.30 UNMAP and 5.8 GET LBA STATUS on a thin LU over a sparse file: the range
    reads back as zeros (LBPRZ) and is reported deallocated."""
    store = FileStore(tmp_path / "thin.img", size=1 << 20, create=True)
    lu = lu_over(store, thin=True)
    run(lu, write10(0, 64), b"\xff" * 64 * 512)
    params = struct.pack(">HH4xQI4x", 22, 16, 8, 16)
    assert run(lu, struct.pack(">BBxxxxBHB", 0x42, 0, 0, len(params), 0), params).status == 0
    assert bytes(run(lu, read10(8, 16)).data_in) == bytes(16 * 512)
    status = run(lu, struct.pack(">BBQIBB", 0x9E, 0x12, 8, 64, 0, 0))
    data = bytes(status.data_in)
    lba, count, prov = struct.unpack_from(">QIB", data, 8)
    assert (lba, prov) == (8, 1) and count >= 8
    rc16 = bytes(run(lu, struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)).data_in)
    assert rc16[14] & 0xC0 == 0xC0  # LBPME and LBPRZ (SBC-4 5.16)


def test_read_capacity():
    """SBC-4 5.15/5.16: the last LBA and the block length."""
    lu = lu_over(MemoryStore(8 << 20), bs=4096)
    rc10 = bytes(run(lu, bytes(10).replace(b"\x00", b"\x25", 1)).data_in)
    assert struct.unpack(">II", rc10) == ((8 << 20) // 4096 - 1, 4096)
    rc16 = bytes(run(lu, struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)).data_in)
    assert struct.unpack_from(">QI", rc16) == ((8 << 20) // 4096 - 1, 4096)
    assert rc16[14] & 0xC0 == 0  # fully provisioned


def test_prefetch_condition_met():
    """SBC-4 5.11: the range fits in the cache: CONDITION MET."""
    lu = lu_over(MemoryStore(1 << 20))
    assert run(lu, struct.pack(">BBIBHB", 0x34, 0, 0, 0, 8, 0)).status == Status.CONDITION_MET


def test_orwrite():
    """SBC-4 5.9: the Data-Out is ORed into the medium."""
    lu = lu_over(MemoryStore(1 << 20))
    run(lu, write10(0, 1), b"\x0f" * 512)
    assert run(lu, struct.pack(">BBQIBB", 0x8B, 0, 0, 1, 0, 0), b"\xf0" * 512).status == 0
    assert bytes(run(lu, read10(0, 1)).data_in) == b"\xff" * 512


def test_file_store_errors_name_the_path(tmp_path):
    """A missing image, a directory and a size mismatch are clear errors naming the path."""
    with pytest.raises(FileNotFoundError, match="missing.img"):
        FileStore(tmp_path / "missing.img")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        FileStore(tmp_path)
    FileStore(tmp_path / "a.img", size=1 << 20, create=True).close()
    with pytest.raises(ValueError, match="a.img has 1048576 bytes"):
        FileStore(tmp_path / "a.img", size=2 << 20)
    with pytest.raises(FileNotFoundError, match="ro.img does not exist, and a read-only"):
        FileStore(tmp_path / "ro.img", size=1 << 20, create=True, read_only=True)
    assert not (tmp_path / "ro.img").exists()


def test_file_store_blocking_by_file_system(tmp_path):
    """A file on tmpfs is served on the event loop (its calls copy memory); a file on
    another file system is blocking: its calls run on worker threads (base.py)."""
    on_disk = FileStore(tmp_path / "d.img", size=1 << 20, create=True)
    assert on_disk.blocking == (_fs_type(tmp_path) not in ("tmpfs", "ramfs"))
    on_disk.close()
    if _fs_type(Path("/dev/shm")) == "tmpfs":
        shm = FileStore(f"/dev/shm/st-{os.getpid()}.img", size=1 << 20, create=True)
        assert not shm.blocking
        shm.close()
        os.unlink(shm.path)
    assert not MemoryStore(1 << 20).blocking


def _fs_type(path) -> str:
    """The file system type of `path`, from /proc/self/mounts (longest mount prefix)."""
    best, kind = "", ""
    real = os.path.realpath(path)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mnt, fstype = line.split()[:3]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, kind = mnt, fstype
    return kind


def test_file_store_is_sparse_and_punches_holes(tmp_path):
    """A new file store is created sparse; discard() punches a hole that extents() sees."""
    path = tmp_path / "s.img"
    store = FileStore(path, size=64 << 20, create=True)
    assert path.stat().st_blocks * 512 < (1 << 20)
    store.write(0, b"x" * (1 << 20))
    store.discard(4096, 65536)
    assert bytes(store.read(4096, 65536)) == bytes(65536)
    runs = store.extents(0, 1 << 20)
    assert (4096, 65536, False) in runs and runs[0] == (0, 4096, True)
    store.close()


def test_grown_image_raises_capacity_changed(tmp_path):
    """SBC-4 4.9 / SPC-4 5.14: when the medium's capacity changes, the nexus that reads the
    new capacity sees it, every other nexus gets UNIT ATTENTION, CAPACITY DATA HAS CHANGED
    (2Ah/09h) on its next command."""
    path = tmp_path / "grow.img"
    lu = lu_over(FileStore(path, size=1 << 20, create=True))
    other = Nexus("iqn.2026-11.local.test:j,i,0x400000000002", NEXUS.target_port)
    lu.ua.clear(other)
    with open(path, "r+b") as f:
        f.truncate(2 << 20)
    rc10 = bytes(run(lu, bytes([0x25]) + bytes(9)).data_in)
    assert struct.unpack(">II", rc10) == ((2 << 20) // 512 - 1, 512)
    task = ScsiTask(other, 0, read10(0, 1))
    lu.execute(task)
    assert sense(task) == (0x06, 0x2A, 0x09)
    assert run(lu, read10(0, 1)).status == Status.GOOD  # the reader itself got no UA


@pytest.mark.parametrize("cdb,field", [
    (read10(0, 0xFFFF), 7),
    (struct.pack(">BBIIBB", 0xA8, 0, 0, 0x100000, 0, 0), 6),
    (read16(0, 0x100000), 10),
])
def test_transfer_over_maximum_points_at_transfer_length(cdb, field):
    """SBC-4 6.6.4: a transfer over MAXIMUM TRANSFER LENGTH is INVALID FIELD IN CDB, the
    field pointer (SPC-4 4.5.2.4.2) at the TRANSFER LENGTH field of that CDB size."""
    lu = lu_over(MemoryStore(1 << 30))
    task = run(lu, cdb)
    assert sense(task) == (0x05, 0x24, 0x00)
    assert struct.unpack(">H", task.sense[16:18])[0] == field
