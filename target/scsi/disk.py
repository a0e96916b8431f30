"""A direct-access block device (SBC-4 4.1): the SPC-4 table joined with the SBC-4 table.

Rules:
- DISK_COMMANDS = spc.COMMANDS | sbc.COMMANDS | sanitize.COMMANDS (SANITIZE, SBC-4 5.30)
  | defects.COMMANDS (READ DEFECT DATA, SBC-4 5.23/5.24) | xcopy.COMMANDS (EXTENDED COPY
  (LID1) and RECEIVE COPY RESULTS, SPC-4 6.4, 6.27); their VPD pages are joined with them.
  An opcode (or service action), or a VPD page, defined twice is an error at import time
  (CommandSet.add, add_vpd), so the tables stay disjoint.
- make_disk() builds a LogicalUnit over a store with that table; keyword arguments go to
  LogicalUnit (block_size, identity, read_only, thin, removable, queueing, ...).
- This module is the top of target.scsi's command sets: it imports them, none imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from target.scsi import defects, sanitize, sbc, spc, xcopy
from target.scsi.commands import CommandSet
from target.scsi.lu import LogicalUnit

if TYPE_CHECKING:
    from target.backing.base import Store

DISK_COMMANDS: CommandSet = (spc.COMMANDS | sbc.COMMANDS | sanitize.COMMANDS
                             | defects.COMMANDS | xcopy.COMMANDS)


def make_disk(lun: int, store: Store, **kw: Any) -> LogicalUnit:
    """A disk LU numbered `lun` over `store`."""
    return LogicalUnit(lun, store, DISK_COMMANDS, **kw)
