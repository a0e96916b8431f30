"""The SCSI target device: its logical units and the answers with no LU behind them.

Rules (SAM-5 4.6, SPC-4 6.6.2, 6.33, 6.39):
- A task is routed to the LU its LUN names. To a LUN with no LU behind it, INQUIRY
  answers with PERIPHERAL QUALIFIER 011b / DEVICE TYPE 1Fh, REPORT LUNS lists the LUs
  (both when the device has at least one LU; with none they end as any other command),
  REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as data, and any other command ends in
  CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h).
- Every CHECK CONDITION that does not come out of an LU's own execution (the
  transport's data errors, an absent LU) ends through fail(), which takes the sense
  format from the addressed LU (LogicalUnit.fail), fixed when there is none; both end in
  ScsiTask.check_condition, the one place that sets the status.
- Task management is the task manager's (target.scsi.tmf, `tmf`: one per device, as the
  target resets span its LUs); the LU state resets it asks for (lu_reset, target_reset)
  and I_T nexus loss are fanned out to the LUs here.
"""

from __future__ import annotations

from collections.abc import Iterable

from target.scsi import spc
from target.scsi.lu import LogicalUnit
from target.scsi.sense import (
    BUS_DEVICE_RESET_FUNCTION_OCCURRED,
    LOGICAL_UNIT_NOT_SUPPORTED,
    POWER_ON_OCCURRED,
    CheckCondition,
    SenseKey,
)
from target.scsi.task import Nexus, ScsiTask, Status
from target.scsi.tmf import TaskManager

INQUIRY = 0x12
REPORT_LUNS = 0xA0
REQUEST_SENSE = 0x03


class ScsiDevice:
    """The LUs of one SCSI target (one iSCSI target name)."""

    def __init__(self, name: str, luns: Iterable[LogicalUnit] = ()) -> None:
        self.name = name
        self.luns: dict[int, LogicalUnit] = {}
        self.tmf = TaskManager(self)  # task management; the transport's nexuses attach
        for lu in luns:
            self.add(lu)

    def add(self, lu: LogicalUnit) -> None:
        if lu.lun in self.luns:
            raise ValueError(f"LUN {lu.lun} is defined twice in target {self.name}")
        lu.device = self
        self.luns[lu.lun] = lu

    def execute(self, task: ScsiTask) -> None:
        lu = self.luns.get(task.lun)
        if lu is not None:
            lu.execute(task)
            return
        self.execute_no_lu(task)

    def execute_no_lu(self, task: ScsiTask) -> None:
        opcode = task.cdb[0]
        try:
            if opcode in (INQUIRY, REPORT_LUNS) and self.luns:
                # Served with the absent LUN's view (SPC-4 6.6.2, 6.33).
                spc.absent_lun(list(self.luns), task)
                return
            cc = CheckCondition(SenseKey.ILLEGAL_REQUEST, LOGICAL_UNIT_NOT_SUPPORTED)
            if opcode == REQUEST_SENSE:  # the condition as parameter data (SPC-4 6.39)
                task.status = Status.GOOD
                desc = bool(task.cdb[1] & 1) if len(task.cdb) > 1 else False
                alloc = task.cdb[4] if len(task.cdb) > 4 else 0
                task.data_in = cc.sense(desc)[:alloc]
                return
            raise cc
        except CheckCondition as cc:
            self.fail(task, cc)

    def fail(self, task: ScsiTask, cc: CheckCondition) -> None:
        """End a task in CHECK CONDITION, for a caller outside the LU's own execution (the
        transport's data errors, fault rules, an absent LU): the sense format is the
        addressed LU's (LogicalUnit.fail: its D_SENSE), fixed when no LU is behind the LUN
        (SPC-4 4.5.1: no control mode page asks for descriptors)."""
        lu = self.luns.get(task.lun)
        if lu is not None:
            lu.fail(task, cc)
        else:
            task.check_condition(cc, False)

    # --- task management spanning LUs --------------------------------------------------

    def nexus_lost(self, nexus: Nexus) -> None:
        for lu in self.luns.values():
            lu.nexus_lost(nexus)

    def lu_reset(self, lun: int) -> bool:
        lu = self.luns.get(lun)
        if lu is None:
            return False
        lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
        return True

    def target_reset(self, cold: bool) -> None:
        code = POWER_ON_OCCURRED if cold else BUS_DEVICE_RESET_FUNCTION_OCCURRED
        for lu in self.luns.values():
            lu.reset(code)

    def close(self) -> None:
        """Flush and close every LU's store; one failing store does not stop the others."""
        errors = []
        for lu in self.luns.values():
            try:
                lu.close()
            except Exception as exc:  # reported after the others are closed
                errors.append(f"LUN {lu.lun}: {exc}")
        if errors:
            raise OSError(f"closing target {self.name}: " + "; ".join(errors))
