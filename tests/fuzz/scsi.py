"""Fuzz target `cdb`: every CDB handler of the disk table, with random CDBs and parameter
lists, against a memory LU, through the LU's execute path as the dispatcher calls it.

Rules:
- CDBs are built per command of target.scsi.disk.DISK_COMMANDS (the table dispatch, RSOC
  and the trace read): its opcode, service action and CDB length, the other bytes random
  and mostly masked by the entry's CDB usage data (SPC-4 6.34.4: the bits a command
  uses), so that most CDBs pass the reserved-bit check and reach the handler; some keep
  every bit, some set the block range fields (SBC-4 4.3: LBA and TRANSFER LENGTH at the
  layout's offsets, target.scsi.extent) to the edges (0, the last LBA, the capacity,
  2^32-1, 2^64-1); one in sixteen is any opcode at all.
- Parameter lists (Data-Out) are random bytes of a length near what the CDB asks, with
  their first length field sometimes set to agree with the list (the header of MODE
  SELECT, PERSISTENT RESERVE OUT, UNMAP, EXTENDED COPY...).
- The path is target.shell.dispatch's: LogicalUnit.parse (the table lookup), execute,
  then the medium access (perform_io, complete_io) when the LU left one on the task, and
  the deferred tasks (SANITIZE, IMMED=0) collected. A sequence of up to 8 commands from
  two I_T nexuses runs against one LU, so that state (reservations, mode pages, a
  sanitize, the medium) carries from one to the next.
- Allowed: any SAM status with its sense (CHECK CONDITION must carry sense). A handler's
  exception becomes HARDWARE ERROR 44h/00h with a logged traceback: a finding (harness).
"""

from __future__ import annotations

from target.backing.memory import MemoryStore
from target.scsi.device import ScsiDevice
from target.scsi.disk import DISK_COMMANDS, make_disk
from target.scsi.task import Nexus, ScsiTask, Status, TaskAttr
from tests.fuzz.harness import Finding, Target
from tests.fuzz.provider import Provider

TARGET_NAME = "iqn.2026-12.local.fuzz:disk"
COMMANDS = DISK_COMMANDS.sorted()
_STATUSES = frozenset(int(s) for s in Status)
_ATTRS = (TaskAttr.SIMPLE, TaskAttr.SIMPLE, TaskAttr.ORDERED, TaskAttr.HEAD_OF_QUEUE,
          TaskAttr.UNTAGGED, TaskAttr.ACA)
# (LBA offset, LBA bytes, length offset, length bytes) per block layout (SBC-4 4.3).
_FIELDS = {"6": (1, 3, 4, 1), "10": (2, 4, 7, 2), "12": (2, 4, 6, 4), "16": (2, 8, 10, 4),
           "caw": (2, 8, 13, 1), "atomic16": (2, 8, 12, 2)}


def nexus(i: int) -> Nexus:
    name = f"iqn.2026-12.local.fuzz:host{i}"
    return Nexus(f"{name},i,0x40000000000{i}", f"{TARGET_NAME},t,0x0001",
                 initiator_name=name, target_name=TARGET_NAME, isid=0x400000000000 + i)


def _edge(p: Provider, nbytes: int, blocks: int) -> int:
    top = (1 << 8 * nbytes) - 1
    value = p.pick((0, 1, blocks - 1, blocks, blocks + 1, top, top - 1, 1 << 31,
                    p.int_in_range(0, top)))
    return value & top


def cdb(p: Provider, blocks: int) -> bytes:
    """One CDB: a table entry's, or (one in sixteen) any opcode."""
    if p.chance(16):
        return p.exact_bytes(p.pick((6, 10, 12, 16, 32)))
    cmd = p.pick(COMMANDS)
    raw = bytearray(p.exact_bytes(cmd.cdb_length))
    if not p.chance(8):  # the used bits only (SPC-4 6.34.4's CDB USAGE DATA)
        raw = bytearray(b & u for b, u in zip(raw, cmd.usage, strict=True))
    raw[0] = cmd.opcode
    if cmd.service_action is not None:
        raw[1] = (raw[1] & 0xE0) | cmd.service_action
    if cmd.block is not None and p.bool():
        lba_at, lba_n, len_at, len_n = _FIELDS[cmd.block.layout]
        lba = _edge(p, lba_n, blocks)
        raw[lba_at:lba_at + lba_n] = lba.to_bytes(lba_n, "big")
        if cmd.block.layout == "6":
            raw[1] = (raw[1] & 0xE0) | (lba >> 16 & 0x1F)
        raw[len_at:len_at + len_n] = _edge(p, len_n, blocks).to_bytes(len_n, "big")
    if p.chance(4):  # the control byte's NACA and LINK (SAM-5 5.2)
        raw[-1] = p.int_in_range(0, 255)
    return bytes(raw)


def parameter_list(p: Provider, block_size: int) -> bytes:
    """Data-Out: random bytes near a length the CDB may ask, a length field made true."""
    n = p.pick((0, 8, 24, block_size, 2 * block_size, 512, p.int_in_range(0, 600)))
    data = bytearray(p.exact_bytes(n))
    if n >= 4 and p.bool():
        at, width = p.pick(((0, 1), (0, 2), (0, 4), (1, 1), (2, 2)))
        value = max(0, n - at - width - p.int_in_range(0, 8))
        data[at:at + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "big")
    return bytes(data)


def execute(lu, task: ScsiTask) -> None:
    """What target.shell.dispatch does with one task of an inline LU."""
    lu.parse(task)
    lu.execute(task)
    if task.io is not None:
        lu.complete_io(task, lu.perform_io(task))


def outcome(task: ScsiTask) -> None:
    """The status is a SAM-5 one, and CHECK CONDITION carries sense (SAM-5 5.3.1)."""
    if task.status not in _STATUSES:
        raise Finding(f"status {task.status:#x} for CDB {bytes(task.cdb).hex()}")
    if task.status == Status.CHECK_CONDITION and len(task.sense) < 8:
        raise Finding(f"CHECK CONDITION without sense for CDB {bytes(task.cdb).hex()}")


def run(data: bytes) -> None:
    p = Provider(data)
    block_size = p.pick((512, 4096))
    blocks = p.pick((256, 64, 2048))
    lu = make_disk(0, MemoryStore(blocks * block_size), block_size=block_size,
                   thin=not p.chance(4), removable=p.chance(4), read_only=p.chance(8),
                   physical_block_size=block_size * p.pick((1, 1, 8)))
    ScsiDevice(TARGET_NAME, [lu])
    nexuses = (nexus(0), nexus(1))
    if not p.chance(8):  # mostly past the power-on unit attention (SAM-5 5.14)
        for n in nexuses:
            lu.ua.clear(n)
    for tag in range(p.int_in_range(1, 8)):
        c = cdb(p, blocks)
        out = parameter_list(p, block_size)
        task = ScsiTask(p.pick(nexuses), 0, c, tag, p.pick(_ATTRS),
                        data_out=memoryview(out),
                        expected_in=p.pick((0, 512, 4096, 0xFFFFFFFF, p.int_in_range(0, 9000))))
        execute(lu, task)
        outcome(task)
        for done in lu.finished_deferred():
            outcome(done)
    if p.bool():  # what a lost nexus and a reset do to what the commands left behind
        lu.nexus_lost(nexuses[0])


def seed_inputs() -> list[bytes]:
    """A first corpus: each table entry twice, its used CDB bits all set and all clear, one
    command on a 512-byte, 256-block thin LU, an empty parameter list (every draw but the
    entry's pick reads an exhausted provider: the first choice)."""
    seeds = []
    for i, cmd in enumerate(COMMANDS):
        # Integers come from the end: nine zero draws (block size, blocks, thin, removable,
        # read-only, physical, no unit attention, one command, not a raw CDB), then the
        # entry's index.
        ints = bytes(reversed(bytes(9) + bytes([i])))
        seeds.append(bytes(cmd.usage) + ints)
        seeds.append(bytes(cmd.cdb_length) + ints)
    return seeds


CDB = Target("cdb", run, "every CDB handler of DISK_COMMANDS against a memory LU",
             seed_inputs)
