"""A logical unit: the checks common to every command, then the table's handler.

Rules (SAM-5 5.14, SPC-4 5.13, SPC-4 4.5):
- The CDB was looked up once, on arrival (CommandSet.parse, from TaskSet.submit, or
  parse() for the shell's fault rules; here for a task that did not come through a task
  set): execute() reads the entry from task.command and its facts from the entry.
- Order of checks for each command: unit attention (reported to every command but those
  whose entry is `ua_exempt`: INQUIRY, REPORT LUNS and REQUEST SENSE, SAM-5 5.14), the
  opcode lookup's outcome (task.rejection: INVALID COMMAND OPERATION CODE, or INVALID
  FIELD IN CDB for an unknown service action), the ACA task attribute (INVALID MESSAGE
  ERROR: no ACA condition exists), the CDB length and the NACA bit of the CONTROL byte
  (SAM-5 5.2: ACA is not supported),
  reservation conflicts (checked once, here, from the table's `access` and `reserve6`,
  SPC-4 5.13.1), then the handler.
  A sanitize operation in progress, or a failed one, refuses commands right after the
  unit attentions (SBC-4 4.11; the rules are in sanitize.py).
- What a command raises (in execute() or its medium access, complete_io()) becomes its
  status here and only here (_ended): CheckCondition
  -> CHECK CONDITION with sense in the format D_SENSE of the control mode page asks for
  (fail(), which callers outside the LU's execution reach through ScsiDevice.fail, or
  directly when they hold the LU: the shell's fault rules),
  ReservationConflict -> RESERVATION CONFLICT, anything else -> HARDWARE ERROR.
- Unit attentions are kept per I_T nexus (ua.py); a nexus seen for the first time gets
  POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
- Built whole (plain construction): its parts (mode pages, unit attentions, reservations,
  sanitize state, copy results, task set from a Queueing) are made here from the
  constructor's arguments and nothing replaces them afterwards; a shell takes the LU over
  with attach_shell(). The parts' modules know the LU only through the Protocol each
  declares (no import cycle: this module builds on them, the command sets build on it).
- Medium access is separate from the checks (DESIGN.md principles 1 and 7): a handler
  does every check and state change itself, then hands what touches the store to io() as
  one function of the task and the stores. With `inline_io` (the default, and what the
  server sets for stores that never sleep) it runs at once, inside execute(); otherwise
  it is left in task.io and the shell runs it on a worker thread (perform_io(), which
  touches nothing but the task and the stores) and then finishes the command on the
  event loop (complete_io()). Either way its CheckCondition becomes sense in the one
  place below, and a `then` continuation (PERSISTENT RESERVE OUT's commit, EXTENDED
  COPY's end, START STOP UNIT's eject) runs on the loop after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from target.scsi import vpd_sbc
from target.scsi.copyresults import CopyManager
from target.scsi.modepages import ModePages
from target.scsi.reservations import Reservations
from target.scsi.sanitize import SANITIZE_COMMAND_FAILED, SanitizeState
from target.scsi.sense import (
    CAPACITY_DATA_HAS_CHANGED,
    INTERNAL_TARGET_FAILURE,
    INVALID_MESSAGE_ERROR,
    MEDIUM_NOT_PRESENT,
    Asc,
    CheckCondition,
    ReservationConflict,
    SenseKey,
    invalid_field_in_cdb,
    write_protected,
)
from target.scsi.task import Identity, Nexus, ScsiTask, Status, TaskAttr
from target.scsi.taskset import Queueing, TaskSet
from target.scsi.ua import UnitAttentions

_ACA = TaskAttr.ACA  # a global: execute() reads it for every command (EnumType's lookup
# of a member through its class costs several global loads)

if TYPE_CHECKING:
    from target.backing.base import Store
    from target.scsi.commands import CommandSet
    from target.scsi.tmf import TaskManager

log = logging.getLogger(__name__)

DEFAULT_IO_THREADS = 8  # per LU whose store can sleep (tgt's bs_rdwr runs 16 per LU)


class Device(Protocol):
    """What an LU knows of the SCSI target device it belongs to (target.scsi.device's
    ScsiDevice, which builds on this module): its name, its LUs and its task manager."""

    name: str
    luns: dict[int, LogicalUnit]
    tmf: TaskManager


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
        queueing: Queueing | None = None,
        sanitize_rate: float = 0.0,
        io_threads: int | None = None,
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
        self.device: Device | None = None  # set by ScsiDevice.add
        self.medium_present = True
        # I_T nexuses with medium removal prevented (SBC-4 5.13 PREVENT ALLOW MEDIUM REMOVAL).
        self.prevent: set[Nexus] = set()
        self.max_transfer_blocks = vpd_sbc.max_transfer_blocks(self)
        q = queueing or Queueing()
        # MEDIUM ROTATION RATE of VPD B1h (SBC-4 6.6.2): the rotational model's spindle
        # speed in rpm when the LU has one, else 0001h, a non-rotating medium.
        self.rotation_rate = q.model.rpm if q.model is not None else 1
        self.mode = ModePages(self)
        self.ua = UnitAttentions()
        self.reservations = Reservations(self)
        self.sanitize = SanitizeState(rate=sanitize_rate)
        self.copies = CopyManager()  # EXTENDED COPY's kept results (target.scsi.xcopy)
        self.taskset = TaskSet(self, policy=q.policy, depth=q.depth, queue_limit=q.queue_limit,
                               max_passes=q.max_passes, deadline=q.deadline,
                               blocks_per_cylinder=q.blocks_per_cylinder, model=q.model,
                               idle_fast_path=q.idle_fast_path)
        # Medium access runs inside execute() (True), or is left in task.io for the shell to
        # run off the event loop (False: the shell says so in attach_shell()).
        self.inline_io = True
        # Worker threads the server gives the store's calls (0: on the event loop).
        if io_threads is None:
            io_threads = DEFAULT_IO_THREADS if store.blocking else 0
        self.io_threads = io_threads
        self.io_stats: Any = None  # target.shell.dispatch.IoStats, under the server

    def attach_shell(self, *, inline_io: bool, io_stats: Any) -> None:
        """A shell takes the LU over (target.shell.dispatch.Dispatcher): medium access runs
        inline or is left in task.io for it, background operations (SANITIZE) are driven by
        it a step at a time, and it keeps its I/O figures in io_stats."""
        self.inline_io = inline_io
        self.sanitize.background = True
        self.io_stats = io_stats

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
            if task.attr == _ACA:
                # No ACA condition is ever established here (NACA=1 is refused), and an
                # ACA task without one is an error (SAM-5 8.6.5).
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, INVALID_MESSAGE_ERROR)
            cdb = task.cdb
            if len(cdb) < cmd.cdb_length:
                raise invalid_field_in_cdb(0)
            if cdb[cmd.cdb_length - 1] & 0x04:  # NACA (SAM-5 5.2); ACA is not supported
                raise invalid_field_in_cdb(cmd.cdb_length - 1, bit=2)
            if self.reservations.conflicts(task, cmd):
                raise ReservationConflict
            cmd.handler(self, task)
        except Exception as exc:
            self._ended(task, exc, "command")

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
        except Exception as exc:
            self._ended(task, exc, "medium access of command")

    def check_medium(self) -> None:
        """NOT READY, MEDIUM NOT PRESENT for a removable LU whose medium is ejected."""
        if not self.medium_present:
            raise CheckCondition(SenseKey.NOT_READY, MEDIUM_NOT_PRESENT)

    def check_writable(self) -> None:
        """DATA PROTECT, WRITE PROTECTED on a read-only LU or with SWP set (SBC-4 4.11)."""
        if self.mode.write_protected:
            raise write_protected()

    def fail(self, task: ScsiTask, cc: CheckCondition) -> None:
        """End a task of this LU in CHECK CONDITION, its sense in the format the control
        mode page's D_SENSE asks for (SPC-4 4.5.1, 7.5.8)."""
        task.check_condition(cc, self.mode.d_sense)

    def _ended(self, task: ScsiTask, exc: Exception, what: str) -> None:
        """What a command raised becomes its status, here and only here: CheckCondition
        -> CHECK CONDITION with sense, ReservationConflict -> RESERVATION CONFLICT, anything
        else (a bug must not take the session down) -> HARDWARE ERROR, INTERNAL TARGET
        FAILURE (44h/00h), logged with its traceback."""
        if isinstance(exc, CheckCondition):
            self.fail(task, exc)
        elif isinstance(exc, ReservationConflict):
            task.status = Status.RESERVATION_CONFLICT
            task.data_in = None
        else:
            log.error("%s %s failed", what, bytes(task.cdb).hex(), exc_info=exc)
            self.fail(task, CheckCondition(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE))

    def finished_deferred(self) -> list[ScsiTask]:
        """Deferred tasks whose background operation has ended, status and sense set
        (SANITIZE with IMMED=0, SBC-4 5.30: MEDIUM ERROR, SANITIZE COMMAND FAILED when the
        operation failed); the shell completes them."""
        ended, self.sanitize.ended = self.sanitize.ended, []
        for task, ok in ended:
            task.deferred = False
            if not ok:
                self.fail(task, CheckCondition(SenseKey.MEDIUM_ERROR, SANITIZE_COMMAND_FAILED))
        return [task for task, _ in ended]

    # --- events from the transport and task management -------------------------------

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus ended (logout, connection lost): SPC-2 reservations go with it."""
        self.reservations.nexus_lost(nexus)
        self.ua.forget(nexus)
        self.prevent.discard(nexus)
        self.copies.nexus_lost(nexus)  # its kept copy results (SPC-4 6.27)

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
        self.copies.reset()
        self.ua.establish(code)

    def close(self) -> None:
        self.store.close()
