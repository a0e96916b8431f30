"""A logical unit: the checks common to every command, then the table's handler.

Rules (SAM-5 5.14, SPC-4 5.13, SPC-4 4.5):
- The CDB was looked up once, on arrival (CommandSet.parse, from TaskSet.submit; here
  for a task that did not come through a task set): execute() reads the entry from
  task.command and its facts from the entry.
- Order of checks for each command: unit attention (reported to every command but those
  whose entry is `ua_exempt`: INQUIRY, REPORT LUNS and REQUEST SENSE, SAM-5 5.14), the
  opcode lookup's outcome (INVALID COMMAND OPERATION CODE, task.rejection), the CDB
  length and the NACA bit of the CONTROL byte (SAM-5 5.2: ACA is not supported),
  reservation conflicts (checked once, here, from the table's `access` and `reserve6`,
  SPC-4 5.13.1), then the handler.
  A sanitize operation in progress, or a failed one, refuses commands right after the
  unit attentions (SBC-4 4.11; the rules are in sanitize.py).
- CheckCondition from anywhere below becomes sense data here and only here, in the
  format D_SENSE of the control mode page asks for.
- Unit attentions are kept per I_T nexus; a nexus seen for the first time gets
  POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
- Medium access is separate from the checks (DESIGN.md principles 1 and 7): a handler
  does every check and state change itself, then hands what touches the store to io() as
  one function of the task and the stores. With `inline_io` (the default, and what the
  server sets for stores that never sleep) it runs at once, inside execute(); otherwise
  it is left in task.io and the shell runs it on a worker thread (perform_io(), which
  touches nothing but the task and the stores) and then finishes the command on the
  event loop (complete_io()). Either way its CheckCondition becomes sense in the one
  place below, and a `then` continuation (PERSISTENT RESERVE OUT's commit) runs on the
  loop after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from target.scsi import reservations, vpd_sbc, xcopy
from target.scsi.modepages import ModePages
from target.scsi.sanitize import SANITIZE_COMMAND_FAILED, SanitizeState
from target.scsi.sense import (
    CAPACITY_DATA_HAS_CHANGED,
    INVALID_MESSAGE_ERROR,
    MEDIUM_NOT_PRESENT,
    POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED,
    Asc,
    CheckCondition,
    SenseKey,
    invalid_field_in_cdb,
    write_protected,
)
from target.scsi.task import Identity, Nexus, ScsiTask, Status, TaskAttr
from target.scsi.taskset import TaskSet

if TYPE_CHECKING:
    from target.backing.base import Store
    from target.scsi.commands import CommandSet
    from target.scsi.device import ScsiDevice

log = logging.getLogger(__name__)

DEFAULT_IO_THREADS = 8  # per LU whose store can sleep (tgt's bs_rdwr runs 16 per LU)


class UnitAttentions:
    """Pending unit attention conditions, per I_T nexus (SAM-5 5.14)."""

    def __init__(self) -> None:
        self._pending: dict[Nexus, list[Asc]] = {}

    def seen(self, nexus: Nexus) -> list[Asc]:
        queue = self._pending.get(nexus)
        if queue is None:
            queue = self._pending[nexus] = [POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED]
        return queue

    def establish(self, code: Asc, *, nexus: Nexus | None = None,
                  exclude: Nexus | None = None) -> None:
        """Queue `code` for one nexus, or for every known nexus but `exclude`."""
        targets = [nexus] if nexus is not None else [n for n in self._pending if n != exclude]
        for n in targets:
            queue = self.seen(n)
            if code in queue:
                continue
            if code.asc == 0x29:  # a reset supersedes what was pending before it
                queue[:] = [c for c in queue if c.asc != 0x29]
                queue.insert(0, code)
            else:
                queue.append(code)

    def peek(self, nexus: Nexus) -> Asc | None:
        queue = self.seen(nexus)
        return queue[0] if queue else None

    def pop(self, nexus: Nexus) -> Asc | None:
        queue = self.seen(nexus)
        return queue.pop(0) if queue else None

    def clear(self, nexus: Nexus) -> None:
        """The nexus is known and has nothing pending: what was queued for it is dropped,
        and it does not get the first-contact 29h/00h (seen() finds it known). This is the
        state a nexus is in once its initiator has been told of every condition (each
        pop() reports one, SAM-5 5.14); forget() is the opposite, a nexus never seen."""
        self._pending[nexus] = []

    def forget(self, nexus: Nexus) -> None:
        """The nexus is gone; a new one with the same name starts afresh (29h/00h)."""
        self._pending.pop(nexus, None)


class LogicalUnit:
    """One LU of the SCSI target device: its store, its state and its command table."""

    def __init__(
        self,
        lun: int,
        store: Store,
        commands: CommandSet,
        *,
        block_size: int = 512,
        identity: Identity | None = None,
        read_only: bool = False,
        thin: bool = False,
        removable: bool = False,
        physical_block_size: int | None = None,
        device: ScsiDevice | None = None,
    ) -> None:
        if block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"block size {block_size} is not one of 512, 1024, 2048, 4096")
        if store.size < block_size:
            raise ValueError(f"store of {store.size} bytes is smaller than one block")
        physical = physical_block_size or block_size
        exponent = (physical // block_size).bit_length() - 1
        if physical % block_size or physical != block_size << exponent or exponent > 15:
            raise ValueError(f"physical block size {physical} is not a power-of-two multiple "
                             f"(at most 2^15) of the logical block size {block_size}")
        self.lun = lun
        self.store = store
        # LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-4 5.20.2, READ CAPACITY(16)).
        self.lbppb_exponent = exponent
        # A fully provisioned LU has no UNMAP (SBC-4 4.7.3.1): its table lacks it.
        self.commands = commands.restricted(frozenset({"thin"}) if thin else frozenset())
        self.block_size = block_size
        self.identity = identity or Identity()
        self.read_only = read_only
        self.thin = thin
        self.removable = removable
        self.device = device
        self.medium_present = True
        # I_T nexuses with medium removal prevented (SBC-4 5.13 PREVENT ALLOW MEDIUM REMOVAL).
        self.prevent: set[Nexus] = set()
        self.max_transfer_blocks = vpd_sbc.max_transfer_blocks(self)
        self.mode = ModePages(self)
        self.ua = UnitAttentions()
        self.reservations = reservations.Reservations(self)
        self.sanitize = SanitizeState()
        self.taskset = TaskSet(self)
        # Medium access runs inside execute() (True), or is left in task.io for the shell to
        # run off the event loop (False: set by the server for stores that can sleep).
        self.inline_io = True
        # Worker threads the server gives the store's calls (0: on the event loop).
        self.io_threads = DEFAULT_IO_THREADS if store.blocking else 0
        self.io_stats = None  # target.shell.dispatch.IoStats, under the server

    @property
    def num_blocks(self) -> int:
        return self.store.size // self.block_size

    def parse(self, task: ScsiTask) -> None:
        """Look the task's CDB up in this LU's table, once, on arrival (CommandSet.parse)."""
        self.commands.parse(task)

    def execute(self, task: ScsiTask) -> None:
        """Run one command to completion; fills task.status, sense and data_in."""
        try:
            cmd = task.command
            if cmd is None and task.rejection is None:  # not come through a task set
                cmd = self.commands.parse(task)
            if cmd is None or not cmd.ua_exempt:
                code = self.ua.pop(task.nexus)
                if code is not None:
                    raise CheckCondition(SenseKey.UNIT_ATTENTION, code)
            if self.sanitize.engaged:  # a sanitize runs, or failed (SBC-4 4.11)
                self.sanitize.check(cmd)
            if cmd is None:
                raise task.rejection
            if task.attr == TaskAttr.ACA:
                # No ACA condition is ever established here (NACA=1 is refused), and an
                # ACA task without one is an error (SAM-5 8.6.5).
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, INVALID_MESSAGE_ERROR)
            cdb = task.cdb
            if len(cdb) < cmd.cdb_length:
                raise invalid_field_in_cdb(0)
            if cdb[cmd.cdb_length - 1] & 0x04:  # NACA (SAM-5 5.2); ACA is not supported
                raise invalid_field_in_cdb(cmd.cdb_length - 1, bit=2)
            if self.reservations.conflicts(task, cmd):
                task.status = Status.RESERVATION_CONFLICT
                return
            cmd.handler(self, task)
        except CheckCondition as cc:
            self._check_condition(task, cc)
        except Exception:  # a bug must not take the session down: report it as such
            log.exception("command %s failed", bytes(task.cdb).hex())
            self._check_condition(task, CheckCondition(SenseKey.HARDWARE_ERROR,
                                                       Asc(0x44, 0x00)))

    # --- medium access ------------------------------------------------------------------

    def io(self, task: ScsiTask, fn: Callable[..., None], *args: Any,
           then: Callable[[ScsiTask, Exception | None], None] | None = None) -> None:
        """The command's medium access: fn(task, *args) touches only the task and stores and
        may raise CheckCondition (MEDIUM ERROR, MISCOMPARE); then(task, error), when given,
        runs on the event loop afterwards with what fn raised (or None) and decides the
        outcome by what it raises. Runs now when inline, else is left for the shell."""
        if self.inline_io and not task.medium_delay:
            if then is None:
                fn(task, *args)
                return
            try:
                fn(task, *args)
            except Exception as exc:
                then(task, exc)
                return
            then(task, None)
            return
        task.io = (fn, args, then)

    @staticmethod
    def perform_io(task: ScsiTask) -> Exception | None:
        """Run a task's medium access (any thread): what it raised, or None."""
        fn, args, _then = task.io
        try:
            fn(task, *args)
        except Exception as exc:
            return exc
        return None

    def complete_io(self, task: ScsiTask, error: Exception | None) -> None:
        """On the event loop, after perform_io(): the continuation, and errors become sense."""
        _fn, _args, then = task.io
        task.io = None
        try:
            if then is not None:
                then(task, error)
            elif error is not None:
                raise error
        except CheckCondition as cc:
            self._check_condition(task, cc)
        except Exception:
            log.exception("medium access of command %s failed", bytes(task.cdb).hex())
            self._check_condition(task, CheckCondition(SenseKey.HARDWARE_ERROR,
                                                       Asc(0x44, 0x00)))

    def check_medium(self) -> None:
        """NOT READY, MEDIUM NOT PRESENT for a removable LU whose medium is ejected."""
        if not self.medium_present:
            raise CheckCondition(SenseKey.NOT_READY, MEDIUM_NOT_PRESENT)

    def check_writable(self) -> None:
        """DATA PROTECT, WRITE PROTECTED on a read-only LU or with SWP set (SBC-4 4.11)."""
        if self.mode.write_protected:
            raise write_protected()

    def _check_condition(self, task: ScsiTask, cc: CheckCondition) -> None:
        task.status = Status.CHECK_CONDITION
        task.sense = cc.sense(self.mode.d_sense)
        task.data_in = None

    def finished_deferred(self) -> list[ScsiTask]:
        """Deferred tasks whose background operation has ended, status and sense set
        (SANITIZE with IMMED=0, SBC-4 5.30: MEDIUM ERROR, SANITIZE COMMAND FAILED when the
        operation failed); the shell completes them."""
        ended, self.sanitize.ended = self.sanitize.ended, []
        for task, ok in ended:
            task.deferred = False
            if not ok:
                self._check_condition(task, CheckCondition(SenseKey.MEDIUM_ERROR,
                                                           SANITIZE_COMMAND_FAILED))
        return [task for task, _ in ended]

    # --- events from the transport and task management -------------------------------

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus ended (logout, connection lost): SPC-2 reservations go with it."""
        self.reservations.nexus_lost(nexus)
        self.ua.forget(nexus)
        self.prevent.discard(nexus)
        xcopy.nexus_lost(self, nexus)  # its kept copy results (SPC-4 6.27)

    def abort_tasks_of(self, victims: list[Nexus], task: ScsiTask) -> None:
        """PREEMPT AND ABORT: the target's task manager aborts the tasks of the preempted
        nexuses on this LU, but `task` (target.scsi.tmf.TaskManager.preempt_and_abort)."""
        if self.device is not None:
            self.device.tmf.preempt_and_abort(self.lun, victims, task)

    def refresh_capacity(self, nexus: Nexus | None = None) -> bool:
        """The store changed size (an image file grown or cut behind our back): every
        nexus but `nexus` gets CAPACITY DATA HAS CHANGED, 2Ah/09h (SBC-4 4.9)."""
        if not self.store.refresh_size():
            return False
        self.ua.establish(CAPACITY_DATA_HAS_CHANGED, exclude=nexus)
        return True

    def reset(self, code: Asc) -> None:
        """LOGICAL UNIT RESET or a target reset (SAM-5 6.6): UA to every nexus."""
        self.reservations.reset()
        self.mode.reset()
        self.prevent.clear()  # SBC-4 5.13: a reset allows medium removal again
        xcopy.reset(self)
        self.ua.establish(code)

    def close(self) -> None:
        self.store.close()
