"""Fault rules (target.faults): matching by LUN, operation, LBA range, initiator and count,
the statuses they answer with, and the errors that name a bad rule."""

from __future__ import annotations

import struct

import pytest

from target.faults import FaultError, Faults, parse_rule
from target.scsi.disk import DISK_COMMANDS
from target.scsi.task import Nexus, ScsiTask, Status

pytestmark = pytest.mark.unit

NEXUS = Nexus("i,i,0x1", "t,t,0x1", initiator_name="iqn.2026-11.test:a")


def arrived(task: ScsiTask) -> ScsiTask:
    """As the dispatcher hands a task to the rules: parsed by its LU's table."""
    DISK_COMMANDS.parse(task)
    return task


def write(lba: int, blocks: int = 8, lun: int = 0) -> ScsiTask:
    return arrived(ScsiTask(NEXUS, lun, struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)))


def read(lba: int, blocks: int = 8) -> ScsiTask:
    return arrived(ScsiTask(NEXUS, 0, struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)))


def test_lba_range_and_operation_select_the_commands():
    f = Faults([parse_rule({"action": "check-condition", "op": "WRITE(10)",
                            "lba": "100-200"})])
    assert f.match(write(50), "t") is None          # before the range
    assert f.match(write(96), "t") is not None      # 96..104 overlaps
    assert f.match(write(200), "t") is None         # TO is exclusive
    assert f.match(read(150), "t") is None          # not a WRITE(10)


def test_default_sense_is_a_medium_error_fitting_the_direction():
    """MEDIUM ERROR with WRITE ERROR (0Ch/00h) for writes, UNRECOVERED READ ERROR (11h/00h)
    for reads (SPC-4 annex D)."""
    f = Faults([parse_rule({"action": "check-condition"})])
    w = f.match(write(1), "t")
    r = f.match(read(1), "t")
    ws, rs = w.check.sense(False), r.check.sense(False)  # fixed format (SPC-4 4.5.3)
    assert w.status is None and ws[2] == 0x03 and ws[12] == 0x0C
    assert rs[12] == 0x11


@pytest.mark.parametrize("count,expected", [({"first": 2}, [1, 1, 0, 0, 0, 0]),
                                            ({"every": 3}, [0, 0, 1, 0, 0, 1]),
                                            ({"once": True}, [1, 0, 0, 0, 0, 0])])
def test_counts(count, expected):
    f = Faults([parse_rule({"action": "busy", **count})])
    got = [int(f.match(write(i), "t") is not None) for i in range(6)]
    assert got == expected
    assert f.rules[0].hits == sum(expected) and f.rules[0].matched == 6


def test_target_lun_and_initiator_filters():
    f = Faults([parse_rule({"action": "task-set-full", "target": "iqn.x:t", "lun": 1,
                            "initiator": "iqn.2026-11.test:a"})])
    assert f.match(write(0, lun=1), "iqn.x:other") is None
    assert f.match(write(0, lun=0), "iqn.x:t") is None
    assert f.match(write(0, lun=1), "iqn.x:t").status == Status.TASK_SET_FULL


@pytest.mark.parametrize("rule,what", [
    ({"action": "explode"}, "action"),
    ({"action": "busy", "op": "FROB"}, "unknown command"),
    ({"action": "busy", "lba": "9-3"}, "empty range"),
    ({"action": "busy", "sense": "03/0C/00"}, "only for action check-condition"),
    ({"action": "check-condition", "sense": "zz"}, "KEY/ASC/ASCQ"),
    ({"action": "delay"}, "delay_ms"),
    ({"action": "busy", "every": 2, "first": 1}, "one of them"),
    ({"action": "busy", "colour": 1}, "unknown field"),
])
def test_bad_rules_name_the_field(rule, what):
    with pytest.raises(FaultError, match=what):
        parse_rule(rule)


def test_clear_one_or_all():
    f = Faults([parse_rule({"action": "busy"}), parse_rule({"action": "drop"})])
    assert f.clear(1) == 1 and [r.id for r in f.rules] == [2]
    assert f.clear() == 1 and f.rules == []


def test_tmf_reject_matches_task_management_only():
    """A tmf-reject rule answers the chosen TMFs Function rejected (255, RFC 7143 11.6.1),
    by function, LUN and count, and never matches a command."""
    from target.iscsi.pdu import TmfFunction

    f = Faults([parse_rule({"action": "tmf-reject", "tmf": "TARGET_WARM_RESET", "lun": 0,
                            "once": True})])
    assert f.match(write(0), "t") is None
    assert f.match_tmf(TmfFunction.LOGICAL_UNIT_RESET, 0, "t", None) is None
    assert f.match_tmf(TmfFunction.TARGET_WARM_RESET, 1, "t", None) is None
    assert f.match_tmf(TmfFunction.TARGET_WARM_RESET, 0, "t", None) == 255
    assert f.match_tmf(TmfFunction.TARGET_WARM_RESET, 0, "t", None) is None  # once
    assert f.rules[0].hits == 1 and f.rules[0].matched == 2
    assert Faults([parse_rule({"action": "tmf-reject"})]).match_tmf(5, 3, "t", "i") == 255


@pytest.mark.parametrize("rule,what", [
    ({"action": "tmf-reject", "tmf": "FROB"}, "unknown task management"),
    ({"action": "busy", "tmf": 6}, "only for action tmf-reject"),
    ({"action": "tmf-reject", "op": "WRITE(10)"}, "matches task management"),
])
def test_bad_tmf_rules_name_the_field(rule, what):
    with pytest.raises(FaultError, match=what):
        parse_rule(rule)
