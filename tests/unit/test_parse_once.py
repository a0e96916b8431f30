"""Each CDB is looked up and its block range decoded once, on arrival (issue 13).

The counts are of the real calls (CommandSet.parse, CommandSet.lookup, extent.decode) made while one
command goes through its task set and its LU, queued or by the idle fast path; and the READ handler
is shown to use the range decoded on arrival (a changed task.lba reads other blocks), not a decode
of its own. The outcomes asserted are the standards': SAM-5 5.14 (a unit attention is reported
before an unsupported opcode, and not to INQUIRY), SBC-4 4.11 (during a sanitize every command but
INQUIRY, REPORT LUNS and REQUEST SENSE ends in NOT READY, 04h/1Bh, including an opcode the table
does not know), SPC-4 4.5 (fixed sense: key in byte 2, ASC/ASCQ in bytes 12-13).
"""

from __future__ import annotations

import struct

import pytest

from target.backing.memory import MemoryStore
from target.scsi import commands, extent
from target.scsi.disk import make_disk
from target.scsi.sanitize import Operation
from target.scsi.sense import POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED
from target.scsi.task import Nexus, ScsiTask, Status, TaskAttr

pytestmark = pytest.mark.unit

NEXUS = Nexus("iqn.2026-11.local.test:host,i,0x1", "iqn.2026-11.local.test:t,t,0x1")


def _lu():
    """A disk LU; NEXUS is new to it, so 29h/00h is pending (cleared where unwanted)."""
    return make_disk(0, MemoryStore(1 << 20))


def _counting(monkeypatch) -> dict[str, int]:
    counts = {"parse": 0, "lookup": 0, "decode": 0}
    parse, lookup, decode = (commands.CommandSet.parse, commands.CommandSet.lookup,
                             extent.decode)

    def counted(name, fn):
        def wrapper(*a, **kw):
            counts[name] += 1
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(commands.CommandSet, "parse", counted("parse", parse))
    monkeypatch.setattr(commands.CommandSet, "lookup", counted("lookup", lookup))
    monkeypatch.setattr(extent, "decode", counted("decode", decode))
    return counts


def _read10(lba: int, blocks: int, attr: int = TaskAttr.SIMPLE) -> ScsiTask:
    cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
    return ScsiTask(NEXUS, 0, cdb, 1, attr, None, blocks * 512)


@pytest.mark.parametrize("queued", [False, True])
def test_one_lookup_and_one_decode_per_command(monkeypatch, queued) -> None:
    lu = _lu()
    lu.ua.seen(NEXUS).clear()
    ts = lu.taskset
    ts.idle_fast_path = not queued
    counts = _counting(monkeypatch)
    task = _read10(8, 2)
    if ts.submit(task, 0.0):
        assert ts.dispatch(0.0) is task
        lu.execute(task)
        ts.done(task, 0.0)
    else:
        lu.execute(task)
    assert task.status == Status.GOOD and len(task.data_in) == 1024
    assert counts == {"parse": 1, "lookup": 0, "decode": 0}
    assert (task.lba, task.blocks) == (8, 2)  # SBC-4 5.14: LBA bytes 2-5, length 7-8
    assert extent.of_task(task) == (8, 2, False, 10, False)


def test_the_handler_reads_the_range_decoded_on_arrival() -> None:
    lu = _lu()
    lu.ua.seen(NEXUS).clear()
    lu.store.write(0, bytes(range(256)) * 8)  # blocks 0-3 differ
    task = _read10(0, 1)
    lu.parse(task)
    task.lba = 3  # what arrival decoded is what the handler uses
    lu.execute(task)
    assert task.status == Status.GOOD and bytes(task.data_in) == (bytes(range(256)) * 2)


def test_unit_attention_comes_before_the_unsupported_opcode() -> None:
    """SAM-5 5.14: the pending 29h/00h is reported first; then INVALID COMMAND OPERATION
    CODE (20h/00h), which the lookup on arrival recorded."""
    lu = _lu()
    task = ScsiTask(NEXUS, 0, bytes([0xC5]) + bytes(15))
    lu.taskset.submit(task)
    assert task.rejection is not None and task.command is None
    lu.execute(task)
    assert task.status == Status.CHECK_CONDITION
    assert (task.sense[2] & 0x0F, task.sense[12], task.sense[13]) == (0x06, 0x29, 0x00)
    again = ScsiTask(NEXUS, 0, bytes([0xC5]) + bytes(15))
    lu.execute(again)
    assert (again.sense[2] & 0x0F, again.sense[12], again.sense[13]) == (0x05, 0x20, 0x00)
    inquiry = ScsiTask(NEXUS, 0, bytes([0x12, 0, 0, 0, 36, 0]), expected_in=36)
    lu.ua.establish(POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED, nexus=NEXUS)
    lu.execute(inquiry)  # exempt: served, the UA stays pending
    assert inquiry.status == Status.GOOD and lu.ua.peek(NEXUS) is not None


def test_sanitize_in_progress_refuses_by_the_entry() -> None:
    """SBC-4 4.11: NOT READY, 04h/1Bh to READ(10) and to an unknown opcode; INQUIRY is
    served."""
    lu = _lu()
    lu.ua.seen(NEXUS).clear()
    lu.sanitize.start(Operation(lu.store, lu.num_blocks * 512, ause=False))
    for cdb in (struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0), bytes([0xC5]) + bytes(9)):
        task = ScsiTask(NEXUS, 0, cdb, expected_in=512)
        lu.execute(task)
        assert task.status == Status.CHECK_CONDITION
        assert (task.sense[2] & 0x0F, task.sense[12], task.sense[13]) == (0x02, 0x04, 0x1B)
    inquiry = ScsiTask(NEXUS, 0, bytes([0x12, 0, 0, 0, 36, 0]), expected_in=36)
    lu.execute(inquiry)
    assert inquiry.status == Status.GOOD
