"""Command sets as opcode tables (DESIGN.md principle 2).

Rules:
- One Command per operation code, or per (operation code, service action) for the
  opcodes whose service action is in CDB byte 1 bits 4-0 (SPC-4 4.2.5.1: 5Eh/5Fh, 9Eh,
  A3h, A4h, 48h ...). Dispatch, REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), the
  reservation checks and the trace decoder all read the same entries.
- `usage` is the CDB USAGE DATA that RSOC returns (SPC-4 6.35.3): one byte per CDB byte,
  byte 0 the opcode, each bit set where the device server looks at that CDB bit.
- `access` says how the command meets a persistent reservation held by someone else
  (SPC-4 5.13.1, table 62 / SBC-4 table 15); `reserve6` says whether a RESERVE(6)
  held by another I_T nexus makes it conflict (SPC-2 7.21.2).
- `queue` says whether the command may wait behind queued I/O in the task set, or is
  served at once (INQUIRY, REPORT LUNS, REQUEST SENSE: issue 4's "never held").
- `serial` commands run one at a time on a LU, each after the previous one ended, whatever
  the task attributes and the queue algorithm modifier: PERSISTENT RESERVE OUT, whose
  transaction (state file written off the event loop, then commit or rollback) must start
  from the state the previous one left.
- VPD pages are registered in the same tables (CommandSet.vpd: page code, name, builder),
  each by the module whose commands it describes: spc.py 00h, 80h, 83h, 86h; sbc.py B0h,
  B1h, B2h (built in vpd_sbc.py); xcopy.py 8Fh. Joining tables joins their pages (a page
  defined twice is an error), so an LU lists and serves exactly the pages of its table.
- `requires` names the LU features the command exists for ("thin": UNMAP). A LU without
  them uses the table restricted() to its features: the command is then unsupported
  there in every respect (INVALID COMMAND OPERATION CODE, absent from RSOC), as its VPD
  pages say (SBC-4 6.6.4: MAXIMUM UNMAP LBA COUNT 0 = UNMAP not implemented).
- `block` is the command's block-range layout (target.scsi.extent.BlockCdb: where the
  LBA and the length sit, whether it writes, 0 = through the last LBA, atomic), None for
  commands that address no blocks.
- `ua_exempt` commands are not stopped by a pending unit attention (SAM-5 5.14: INQUIRY,
  REPORT LUNS, REQUEST SENSE); `in_sanitize` ones are served while a sanitize operation
  runs and `in_sanitize_failure` ones in the sanitize failure mode (SBC-4 4.11: the same
  three, and SANITIZE itself in the failure mode).
- Parse once (LIO's model, tgt's table layout): CommandSet.parse() looks a task's CDB up once, on
  arrival (TaskSet.submit, LogicalUnit.parse for the shell's fault rules, or
  LogicalUnit.execute for a task that did not come through a task set),
  and keeps on the task the entry (ScsiTask.command), the decoded block range (ScsiTask.lba,
  ScsiTask.blocks, by the entry's layout) and, for a CDB the table refuses, the CheckCondition it
  ends in (ScsiTask.rejection: raised by the LU after the unit attention and sanitize checks, which
  come first). Nothing looks the CDB up or decodes its range again.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from target.scsi import extent
from target.scsi.sense import CheckCondition, invalid_field_in_cdb, invalid_opcode
from target.scsi.task import Direction, Nexus, ScsiTask

# A handler is called with the LU that received the command (target.scsi.lu.LogicalUnit,
# which builds on this module, so the type names no LU here) and the task.
Handler = Callable[[Any, ScsiTask], None]
# A VPD page builder: the whole page, header included (SPC-4 7.8), for an LU and a nexus.
PageBuilder = Callable[[Any, Nexus], bytes]

# Opcodes whose service action is CDB byte 1, bits 4-0 (SPC-4 4.2.5.1).
SERVICE_ACTION_OPCODES = frozenset({0x48, 0x5E, 0x5F, 0x83, 0x84, 0x9E, 0x9F, 0xA3, 0xA4})


class Access(Enum):
    """How a command meets another initiator's persistent reservation (SPC-4 table 62)."""

    ALLOWED = "allowed"  # never conflicts (INQUIRY, REPORT LUNS, PR IN/OUT, ...)
    READ = "read"  # reads: conflicts only under the Exclusive Access types
    WRITE = "write"  # writes the medium: conflicts under Write Exclusive and Exclusive Access
    EXCLUSIVE = "exclusive"  # conflicts under every type (e.g. MODE SELECT, FORMAT)


@dataclass(frozen=True)
class Command:
    opcode: int
    name: str
    cdb_length: int
    direction: Direction
    handler: Handler
    usage: bytes
    service_action: int | None = None
    access: Access = Access.EXCLUSIVE
    reserve6: bool = True
    queue: bool = True
    requires: frozenset[str] = frozenset()
    serial: bool = False
    block: extent.BlockCdb | None = None
    ua_exempt: bool = False
    in_sanitize: bool = False
    in_sanitize_failure: bool = False

    def __post_init__(self) -> None:
        if len(self.usage) != self.cdb_length:
            raise ValueError(f"{self.name}: usage mask has {len(self.usage)} bytes, "
                             f"CDB has {self.cdb_length}")


@dataclass(frozen=True)
class VpdPage:
    """One VPD page a command set brings (SPC-4 7.8): INQUIRY with EVPD=1 and this PAGE
    CODE returns build(lu, nexus); the Supported VPD Pages page (00h) lists the codes."""

    code: int
    name: str
    build: PageBuilder
    requires: frozenset[str] = frozenset()


class CommandSet:
    """A table of Commands keyed by opcode (and service action), and the VPD pages that
    come with them (keyed by page code)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_opcode: dict[int, Command] = {}
        self._by_sa: dict[int, dict[int, Command]] = {}
        self._restricted: dict[frozenset[str], CommandSet] = {}
        self.vpd_pages: dict[int, VpdPage] = {}

    def command(
        self,
        opcode: int,
        name: str,
        usage: bytes | list[int],
        direction: Direction = Direction.NONE,
        *,
        service_action: int | None = None,
        access: Access = Access.EXCLUSIVE,
        reserve6: bool = True,
        queue: bool = True,
        requires: frozenset[str] = frozenset(),
        serial: bool = False,
        block: extent.BlockCdb | None = None,
        ua_exempt: bool = False,
        in_sanitize: bool = False,
        in_sanitize_failure: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering `handler` as the entry for opcode (and service action)."""

        def register(handler: Handler) -> Handler:
            self.add(Command(opcode, name, len(usage), direction, handler, bytes(usage),
                             service_action, access, reserve6, queue, requires, serial,
                             block, ua_exempt, in_sanitize, in_sanitize_failure))
            return handler

        return register

    def vpd(self, code: int, name: str, *, requires: frozenset[str] = frozenset()
            ) -> Callable[[PageBuilder], PageBuilder]:
        """Decorator registering `build` as VPD page `code` of this table."""

        def register(build: PageBuilder) -> PageBuilder:
            self.add_vpd(VpdPage(code, name, build, requires))
            return build

        return register

    def add_vpd(self, page: VpdPage) -> None:
        if page.code in self.vpd_pages:
            raise ValueError(f"VPD page {page.code:#04x} registered twice")
        self.vpd_pages[page.code] = page

    def add(self, cmd: Command) -> None:
        if cmd.service_action is None:
            if cmd.opcode in self._by_opcode or cmd.opcode in self._by_sa:
                raise ValueError(f"opcode {cmd.opcode:#04x} registered twice")
            self._by_opcode[cmd.opcode] = cmd
        else:
            if cmd.opcode in self._by_opcode:
                raise ValueError(f"opcode {cmd.opcode:#04x} has no service actions")
            actions = self._by_sa.setdefault(cmd.opcode, {})
            if cmd.service_action in actions:
                raise ValueError(f"{cmd.opcode:#04x}/{cmd.service_action:#x} registered twice")
            actions[cmd.service_action] = cmd

    def __or__(self, other: CommandSet) -> CommandSet:
        merged = CommandSet(f"{self.name}+{other.name}")
        for cmd in [*self, *other]:
            merged.add(cmd)
        for page in [*self.vpd_pages.values(), *other.vpd_pages.values()]:
            merged.add_vpd(page)
        return merged

    def restricted(self, features: frozenset[str]) -> CommandSet:
        """This table without the commands needing a feature not in `features` (cached)."""
        if all(e.requires <= features for e in [*self, *self.vpd_pages.values()]):
            return self
        table = self._restricted.get(features)
        if table is None:
            table = CommandSet(self.name)
            for cmd in self:
                if cmd.requires <= features:
                    table.add(cmd)
            for page in self.vpd_pages.values():
                if page.requires <= features:
                    table.add_vpd(page)
            self._restricted[features] = table
        return table

    def __iter__(self) -> Iterator[Command]:
        yield from self._by_opcode.values()
        for actions in self._by_sa.values():
            yield from actions.values()

    def sorted(self) -> list[Command]:
        return sorted(self, key=lambda c: (c.opcode, c.service_action or 0))

    def lookup(self, cdb: bytes | memoryview) -> Command:
        """The entry for this CDB; CheckCondition when the opcode or action is unsupported."""
        opcode = cdb[0]
        cmd = self._by_opcode.get(opcode)
        if cmd is not None:
            return cmd
        actions = self._by_sa.get(opcode)
        if actions is None:
            raise invalid_opcode()
        cmd = actions.get(cdb[1] & 0x1F) if len(cdb) > 1 else None
        if cmd is None:
            raise invalid_field_in_cdb(1, bit=4)
        return cmd

    def parse(self, task: ScsiTask) -> Command | None:
        """Look the task's CDB up once, on arrival: the entry and its decoded block range go
        on the task (command; lba, blocks); a CDB the table refuses leaves command None and the
        CheckCondition it ends in as task.rejection. Returns the entry (or None)."""
        cdb = task.cdb
        cmd = self._by_opcode.get(cdb[0]) if cdb else None
        if cmd is None:
            try:
                if not cdb:
                    raise invalid_opcode()
                cmd = self.lookup(cdb)
            except CheckCondition as cc:
                task.rejection = cc
                return None
        task.command = cmd
        block = cmd.block
        if block is not None:  # the one decode of its range: LBA and length on the task
            try:
                task.lba, task.blocks = block.fields(cdb)
            except (struct.error, IndexError):  # too short: the LU rejects it
                pass
        return cmd

    def find(self, opcode: int, service_action: int | None = None) -> Command | None:
        """The entry for RSOC's one-command forms, or None."""
        if service_action is None:
            return self._by_opcode.get(opcode)
        return self._by_sa.get(opcode, {}).get(service_action)

    def has_service_actions(self, opcode: int) -> bool:
        return opcode in self._by_sa
