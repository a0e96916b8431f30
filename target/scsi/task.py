"""The unit of work a transport hands to the SCSI layer (SAM-5 4.7, 5.1, 8).

Rules:
- A ScsiTask is created by the transport (target.iscsi.connection) when the SCSI Command
  PDU arrives; one whose Data-Out is still arriving enters the task set with
  data_pending set and runs only once all of it is in hand. The SCSI layer fills in
  status, sense and data_in, and the transport turns those into its own response
  (residuals included).
- data_out is exactly what the initiator sent (the iSCSI Expected Data Transfer Length),
  which may be shorter or longer than what the CDB asks for. A handler uses no more than
  it has, and records in out_length how many bytes the CDB called for, so the transport
  can report the residual (RFC 7143 11.4.5.1).
- data_in may be any buffer (bytes, bytearray, memoryview of a store); the transport
  sends at most the Expected Data Transfer Length of it and reports the rest as
  residual overflow, or the shortfall as underflow.
- Medium access (the store calls of READ, WRITE, SYNCHRONIZE CACHE ...) may be left in
  `io` for the shell to run on a worker thread (LogicalUnit.io); the task is complete
  only when the LU has finished it (LogicalUnit.complete_io).
- The CDB is looked up in the LU's table once, on arrival (CommandSet.parse): the entry,
  the decoded block range and the refusal, if any, are kept here (command, lba and
  blocks, rejection) and every later stage reads them from the task.
- An I_T nexus is named by its initiator and target port names (RFC 7143 section 4.2.7.1:
  "iqn...,i,0x<ISID>" and "iqn...,t,0x<TPGT>"); the SCSI layer keys unit attentions,
  reservations and registrations on it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from target.scsi.sense import CheckCondition


class Status(IntEnum):
    """SAM-5 table 38."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


_GOOD = Status.GOOD  # a global for ScsiTask.__init__: EnumType's member lookup is slow


class TaskAttr(IntEnum):
    """Task attribute, in the encoding of the iSCSI ATTR field (RFC 7143 11.3.1.1)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class Direction(IntEnum):
    NONE = 0
    IN = 1  # device to initiator (Data-In)
    OUT = 2  # initiator to device (Data-Out)
    BIDI = 3


@dataclass(eq=False)
class Nexus:
    """An I_T nexus: one initiator port talking to one target port (SAM-5 4.7)."""

    initiator_port: str  # e.g. "iqn.1994-05.com.redhat:abc,i,0x23d000000001"
    target_port: str  # e.g. "iqn.2026-11.local.scsi-target:default,t,0x0001"
    initiator_name: str = ""
    target_name: str = ""
    isid: int = 0
    tpgt: int = 1
    relative_target_port: int = 1

    def __hash__(self) -> int:
        return hash((self.initiator_port, self.target_port))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Nexus)
            and self.initiator_port == other.initiator_port
            and self.target_port == other.target_port
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.initiator_port, self.target_port)


class ScsiTask:
    """One SCSI command: CDB and Data-Out in; status, sense and Data-In out."""

    __slots__ = (
        "nexus",
        "lun",
        "cdb",
        "tag",
        "attr",
        "data_out",
        "expected_in",
        "status",
        "sense",
        "data_in",
        "out_length",
        "command",
        "lba",
        "blocks",
        "rejection",
        "transport",
        "shell",
        "deferred",
        "io",
        "medium_delay",
        "completion_delay",
        "data_pending",
    )

    def __init__(
        self,
        nexus: Nexus,
        lun: int,
        cdb: bytes | memoryview,
        tag: int = 0,
        attr: int = TaskAttr.SIMPLE,
        data_out: memoryview | bytes | None = None,
        expected_in: int = 0,
    ) -> None:
        self.nexus = nexus
        self.lun = lun
        self.cdb = cdb
        self.tag = tag
        self.attr = attr
        self.data_out = data_out
        self.expected_in = expected_in  # Expected Data Transfer Length for reads
        self.status: int = _GOOD
        self.sense: bytes = b""
        self.data_in: bytes | bytearray | memoryview | None = None
        self.out_length: int | None = None  # bytes of Data-Out the CDB called for
        # Set once, on arrival, by CommandSet.parse (target.scsi.commands): the table entry,
        # the block range its CDB addresses (LBA and length as the CDB says, by the entry's
        # layout, target.scsi.extent; None without one), or, for a CDB the table refuses,
        # the CheckCondition it ends in.
        self.command = None
        self.lba: int | None = None
        self.blocks: int | None = None
        self.rejection = None
        self.transport: object = None  # the transport's own per-command state
        self.shell: object = None  # the I/O shell's own state while the task is queued
        # The device server ends it later (SANITIZE with IMMED=0 run in the background):
        # the shell completes it when the LU hands it back (LogicalUnit.finished_deferred).
        self.deferred = False
        # Its medium access, when the LU leaves it to the shell to run off the event loop:
        # (function, args, then), see LogicalUnit.io(); None otherwise.
        self.io: tuple | None = None
        self.medium_delay = 0.0  # seconds a slow medium adds to its access (fault rule)
        self.completion_delay = 0.0  # seconds its status is held once it is done (fault rule)
        # Its Data-Out is still arriving: it is in the task set (ordered) but may not run.
        self.data_pending = False

    def check_condition(self, cc: CheckCondition, descriptor: bool) -> None:
        """End in CHECK CONDITION with cc's sense data (SAM-5 5.3.1, SPC-4 4.5): the one
        place a task gets that status. The format, descriptor or fixed, is decided by
        LogicalUnit.fail (its control mode page's D_SENSE) or ScsiDevice.fail (fixed when
        no LU is behind the LUN); nothing else calls this."""
        self.status = Status.CHECK_CONDITION
        self.sense = cc.sense(descriptor)
        self.data_in = None

    def __repr__(self) -> str:
        return f"<ScsiTask tag={self.tag:#x} lun={self.lun} cdb={bytes(self.cdb).hex()}>"


# --- LUN encoding (SAM-5 4.6) -----------------------------------------------------------

_LUN = struct.Struct(">HHHH")


def encode_lun(lun: int) -> bytes:
    """Eight-byte LUN: peripheral device addressing below 256, flat space up to 16383."""
    if lun < 256:
        return bytes((0, lun, 0, 0, 0, 0, 0, 0))
    if lun < 0x4000:
        return _LUN.pack(0x4000 | lun, 0, 0, 0)
    raise ValueError(f"LUN {lun} is beyond the flat addressing range (0..16383)")


def decode_lun(raw: bytes | memoryview) -> int:
    """The LUN number of an eight-byte LUN field; -1 when it names no single-level LUN."""
    first = raw[0] << 8 | raw[1]
    method = first >> 14
    if any(raw[2:8]):
        return -1
    if method == 0:  # peripheral device addressing, bus 0
        return first & 0xFF if (first >> 8) == 0 else -1
    if method == 1:  # flat space addressing
        return first & 0x3FFF
    return -1


@dataclass
class Identity:
    """What INQUIRY says about a logical unit (SPC-4 6.6, 7.8)."""

    vendor: str = "QEMUSCSI"  # T10 vendor identification, 8 ASCII
    product: str = "scsi-target"  # 16 ASCII
    revision: str = "0001"  # 4 ASCII
    serial: str = ""  # unit serial number (VPD 80h)
    naa: bytes = b""  # NAA designator (VPD 83h); derived from the serial when empty
    extra: dict = field(default_factory=dict)
