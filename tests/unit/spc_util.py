"""Helpers for the SPC unit tests: an LU over a MemoryStore, nexuses, CDBs, sense parsing.

The LU's table is spc.COMMANDS plus two stand-in media commands (READ(10) with
Access.READ, WRITE(10) with Access.WRITE) so that reservation conflicts can be tested
without the SBC table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from target.backing.memory import MemoryStore
from target.scsi import spc
from target.scsi.commands import Access, CommandSet
from target.scsi.device import ScsiDevice
from target.scsi.lu import LogicalUnit
from target.scsi.task import Direction, Identity, Nexus, ScsiTask, Status

TARGET = "iqn.2026-11.local.scsi-target:disk"
TARGET_PORT = TARGET + ",t,0x0001"

_io = CommandSet("test-io")


@_io.command(0x28, "READ(10)", [0x28, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
             Direction.IN, access=Access.READ)
def _read10(lu: LogicalUnit, task: ScsiTask) -> None:
    task.data_in = bytes(lu.block_size)


@_io.command(0x2A, "WRITE(10)", [0x2A, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
             Direction.OUT, access=Access.WRITE)
def _write10(lu: LogicalUnit, task: ScsiTask) -> None:
    task.out_length = lu.block_size


TABLE = spc.COMMANDS | _io

READ10 = bytes.fromhex("28000000000000000100")
WRITE10 = bytes.fromhex("2a000000000000000100")
TUR = bytes(6)


def nexus(i: int) -> Nexus:
    name = f"iqn.1994-05.com.example:host{i}"
    return Nexus(f"{name},i,0x23d00000000{i}", TARGET_PORT, initiator_name=name,
                 target_name=TARGET, isid=0x23D000000000 + i)


def make_lu(lun: int = 0, size: int = 1 << 20, **kw: object) -> LogicalUnit:
    kw.setdefault("identity", Identity(serial="SER0001"))
    return LogicalUnit(lun, MemoryStore(size), TABLE, **kw)  # type: ignore[arg-type]


def make_device(*luns: int) -> ScsiDevice:
    return ScsiDevice(TARGET, [make_lu(n) for n in luns])


def run(target: LogicalUnit | ScsiDevice, n: Nexus, cdb: bytes, data_out: bytes | None = None,
        lun: int = 0) -> ScsiTask:
    task = ScsiTask(n, lun, cdb, data_out=data_out)
    target.execute(task)
    return task


def data(task: ScsiTask) -> bytes:
    assert task.status == Status.GOOD, (task.status, task.sense.hex())
    return bytes(task.data_in or b"")


def ready(target: LogicalUnit | ScsiDevice, *nexuses: Nexus, lun: int = 0) -> None:
    """TEST UNIT READY until GOOD: consumes the first-contact unit attention."""
    for n in nexuses:
        for _ in range(8):
            if run(target, n, TUR, lun=lun).status == Status.GOOD:
                break
        else:
            raise AssertionError("unit attention never cleared")


@dataclass
class Sense:
    response_code: int
    key: int
    asc: int
    ascq: int
    sksv: bool = False
    cd: bool = False
    bpv: bool = False
    bit: int = 0
    field: int = 0

    @property
    def code(self) -> tuple[int, int, int]:
        return (self.key, self.asc, self.ascq)


def parse_sense(sense: bytes) -> Sense:
    code = sense[0] & 0x7F
    if code == 0x70:
        s = Sense(code, sense[2] & 0x0F, sense[12], sense[13])
        sks = sense[15:18]
    elif code == 0x72:
        s = Sense(code, sense[1] & 0x0F, sense[2], sense[3])
        sks = b""
        pos = 8
        while pos < 8 + sense[7]:
            if sense[pos] == 0x02:
                sks = sense[pos + 4 : pos + 7]
            pos += 2 + sense[pos + 1]
    else:
        raise AssertionError(f"bad sense response code {code:#x}")
    if sks and sks[0] & 0x80:
        s.sksv = True
        s.cd = bool(sks[0] & 0x40)
        s.bpv = bool(sks[0] & 0x08)
        s.bit = sks[0] & 0x07
        s.field = struct.unpack(">H", sks[1:3])[0]
    return s


def check(task: ScsiTask) -> Sense:
    assert task.status == Status.CHECK_CONDITION, task.status
    return parse_sense(task.sense)
