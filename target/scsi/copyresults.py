"""The copy manager's kept results: what RECEIVE COPY RESULTS reports (SPC-4 6.27).

Rules:
- One CopyManager per LU (LogicalUnit.copies), made with the LU. Copy status is kept per
  (I_T nexus, LIST IDENTIFIER) for LIST ID USAGE 00b and 10b (SPC-4 6.4), at most
  MAX_STATUS entries, the oldest dropped first; 11b (no list identifier) keeps nothing.
- A LIST IDENTIFIER still in use by a copy of the same I_T nexus is OPERATION IN PROGRESS
  (00h/16h); one whose copy has ended is reused (its old results are replaced).
- I_T nexus loss discards what was kept for that nexus (nexus_lost); a logical unit reset
  discards everything (reset).
- State only: the commands that fill and read it are in target.scsi.xcopy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from target.scsi.sense import OPERATION_IN_PROGRESS, CheckCondition, SenseKey
from target.scsi.task import Nexus, Status

MAX_STATUS = 1024  # copy status entries kept per LU

# LIST ID USAGE (SPC-4 6.4, table of the parameter list header).
USAGE_HOLD = 0b00
USAGE_NO_HOLD = 0b10
USAGE_NO_LIST_ID = 0b11

# COPY MANAGER STATUS (RECEIVE COPY RESULTS, COPY STATUS).
IN_PROGRESS = 0x00
COMPLETED = 0x01
FAILED = 0x02


@dataclass
class CopyStatus:
    """What RECEIVE COPY RESULTS reports about one EXTENDED COPY (LID1)."""

    list_id: int
    usage: int
    state: int = IN_PROGRESS
    segments: int = 0  # SEGMENTS PROCESSED
    transferred: int = 0  # bytes written to copy destinations
    scsi_status: int = Status.GOOD
    sense: bytes = b""  # kept until FAILED SEGMENT DETAILS has returned it


class CopyManager:
    """The copy manager of one LU: copy status per (I_T nexus, LIST IDENTIFIER)."""

    def __init__(self) -> None:
        self._status: OrderedDict[tuple[tuple[str, str], int], CopyStatus] = OrderedDict()

    def begin(self, nexus: Nexus, list_id: int, usage: int) -> CopyStatus:
        status = CopyStatus(list_id, usage)
        if usage == USAGE_NO_LIST_ID:
            return status  # not identified: nothing is kept
        key = (nexus.key, list_id)
        old = self._status.get(key)
        if old is not None and old.state == IN_PROGRESS:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, OPERATION_IN_PROGRESS,
                                 field=0, cd=False)
        self._status.pop(key, None)
        self._status[key] = status
        while len(self._status) > MAX_STATUS:
            self._status.popitem(last=False)
        return status

    def find(self, nexus: Nexus, list_id: int) -> CopyStatus | None:
        return self._status.get((nexus.key, list_id))

    def nexus_lost(self, nexus: Nexus) -> None:
        for key in [k for k in self._status if k[0] == nexus.key]:
            del self._status[key]

    def reset(self) -> None:
        self._status.clear()
