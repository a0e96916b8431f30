"""A direct-access block device (SBC-4 4.1): the SPC-4 table joined with the SBC-4 table.

Rules:
- DISK_COMMANDS = spc.COMMANDS | sbc.COMMANDS | sanitize.COMMANDS (SANITIZE, SBC-4 5.30)
  | defects.COMMANDS (READ DEFECT DATA, SBC-4 5.23/5.24); an opcode (or service action)
  defined twice is an error at import time (CommandSet.add), so the tables stay disjoint.
- | xcopy.COMMANDS: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.27).
- make_disk() builds a LogicalUnit over a store with that table; keyword arguments go to
  LogicalUnit (block_size, identity, read_only, thin, removable, device).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from target.scsi import defects, sanitize, spc, xcopy
from target.scsi.commands import CommandSet
from target.scsi.lu import LogicalUnit

if TYPE_CHECKING:
    from target.backing.base import Store


def _sbc_commands() -> CommandSet:
    try:
        sbc = importlib.import_module("target.scsi.sbc")
    except ModuleNotFoundError as exc:  # sbc.py not written yet: SPC commands only
        if exc.name != "target.scsi.sbc":
            raise
        return CommandSet("sbc")
    return sbc.COMMANDS


DISK_COMMANDS: CommandSet = (spc.COMMANDS | _sbc_commands() | sanitize.COMMANDS
                             | defects.COMMANDS | xcopy.COMMANDS)


def make_disk(lun: int, store: Store, **kw: Any) -> LogicalUnit:
    """A disk LU numbered `lun` over `store`."""
    return LogicalUnit(lun, store, DISK_COMMANDS, **kw)
