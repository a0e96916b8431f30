"""SANITIZE (48h): the sanitize operations of SBC-4 4.11, the command of SBC-4 5.30, and the
sanitize state every LU keeps.

Rules:
- Service actions (SBC-4 5.30, SANITIZE service action codes): OVERWRITE 01h, BLOCK ERASE
  02h, CRYPTOGRAPHIC ERASE 03h, EXIT FAILURE MODE 1Fh, each its own table entry (RSOC
  lists all four); any other is INVALID FIELD IN CDB at byte 1 bit 4 (CommandSet.lookup).
- CDB: IMMED byte 1 bit 7, AUSE bit 5, SERVICE ACTION bits 4-0, PARAMETER LIST LENGTH
  bytes 7-8. ZNR (bit 6) is defined for zoned block devices only; this LU is not zoned,
  so the bit is reserved here like bytes 2-6: nonzero is INVALID FIELD IN CDB with the
  field pointer.
- PARAMETER LIST LENGTH (SBC-4 5.30, service action table): OVERWRITE more than 4 and less
  than the logical block length + 5; the other service actions 0; anything else is
  INVALID FIELD IN CDB pointing at byte 7. Fewer Data-Out bytes than the length are
  PARAMETER LIST LENGTH ERROR.
- OVERWRITE parameter list (SBC-4 5.30, OVERWRITE service action): INVERT byte 0 bit 7,
  TEST bits 6-5 (00b only; the vendor test modes are not offered), OVERWRITE COUNT bits
  4-0 (00h is reserved), INITIALIZATION PATTERN LENGTH bytes 2-3 (1 .. the logical block
  length, and equal to the pattern bytes the list holds); INVALID FIELD IN PARAMETER LIST
  otherwise. The pattern is repeated to fill each logical block, every block starting
  with its first byte; OVERWRITE COUNT passes are written over every LBA. With INVERT=1
  the pattern is inverted between consecutive passes and the first pass writes the
  inversion when the count is even, so the last pass always writes the pattern as given.
- BLOCK ERASE and CRYPTOGRAPHIC ERASE deallocate every LBA with store.discard() (memory
  pages released, a file's hole punched, zeros written by a store that cannot
  deallocate). Reads afterwards complete with GOOD status: the Block Device
  Characteristics VPD page says so with WABEREQ = WACEREQ = 01b (vpd_sbc). The stores have
  no media encryption; a cryptographic erase is emulated by the same deallocation, which
  is all an initiator can observe of a changed key (the old data never comes back).
- Every operation ends with store.flush(): the sanitized medium is durable before the
  operation is complete.
- OVERWRITE, BLOCK ERASE and CRYPTOGRAPHIC ERASE on a write-protected LU (read_only, SWP
  of the control mode page) end in DATA PROTECT, WRITE PROTECTED; a LU without a medium
  answers NOT READY, MEDIUM NOT PRESENT. Reservations: Access.WRITE (SANITIZE conflicts
  under Write Exclusive and Exclusive Access, and with another nexus's RESERVE(6)).
- While a sanitize operation is in progress (SBC-4 4.11), every command but INQUIRY,
  REPORT LUNS and REQUEST SENSE (their table entries say `in_sanitize`) ends in NOT
  READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (04h/1Bh) with the progress
  indication (SKSV=1, progress / 65536) in the sense-key specific field (SPC-4
  4.5.2.4.4); REQUEST SENSE returns that same sense data as its parameter data (SPC-4
  6.39). lu.execute calls SanitizeState.check() before the
  table's handler, after unit attentions and before an opcode the table refused.
- Completion (SBC-4 4.11): an operation that fails (StoreError) leaves the LU in sanitize
  failure mode: every command but INQUIRY, REPORT LUNS, REQUEST SENSE and SANITIZE ends in
  MEDIUM ERROR, SANITIZE COMMAND FAILED (31h/03h), and REQUEST SENSE returns that sense
  (entries with `in_sanitize_failure`: the same three, and SANITIZE's).
  Unrestricted completion mode (AUSE=1 on the failed operation): EXIT FAILURE MODE ends
  the failure mode as if the operation had completed without error. Restricted mode
  (AUSE=0): EXIT FAILURE MODE, and a new sanitize that asks for AUSE=1, are INVALID FIELD
  IN CDB; only a new sanitize that completes without error ends it. EXIT FAILURE MODE
  with no failed operation has nothing to exit and completes with GOOD.
- IMMED=0: status once the operation is complete (MEDIUM ERROR, SANITIZE COMMAND FAILED
  when it failed); IMMED=1: GOOD once the CDB and parameter list are valid, a failure is
  then reported to the commands that follow.
- An Operation runs in bounded steps (STEP_BYTES each) and reports its progress. Without
  a shell (state.background False: unit tests, tools) the handler runs it to completion
  at once. Under the server's shell (LogicalUnit.attach_shell sets background) the handler only
  starts it: the shell calls advance() until it ends (or, when the LU's store calls run
  on worker threads, next_step(), Operation.step() on a worker, then stepped()), waiting
  STEP_BYTES / rate between
  steps when the LU has a sanitize rate (config sanitize_mb_s: a real drive's sanitize
  takes minutes to hours, and an initiator's handling of that is what gets tested), and
  an IMMED=0 SANITIZE task is `deferred`: its status is set when the operation ends and
  the shell then completes it (it holds no place in the task set meanwhile; the other
  commands meet the NOT READY rule above).
- Resets and I_T nexus loss neither stop an operation nor end the failure mode (SBC-4
  4.11); the state lives with the LU in this process, not across a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from target.backing.base import StoreError
from target.scsi.commands import Access, Command, CommandSet, Handler
from target.scsi.sense import (
    LU_NOT_READY_SANITIZE_IN_PROGRESS,
    Asc,
    CheckCondition,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)
from target.scsi.task import Direction

if TYPE_CHECKING:
    from target.backing.base import Store
    from target.scsi.task import ScsiTask


class Unit(Protocol):
    """What SANITIZE uses of its LU (target.scsi.lu.LogicalUnit, which builds on this
    module, as it keeps a SanitizeState): the store and geometry it overwrites, its
    checks and its sanitize state."""

    store: Store
    block_size: int
    sanitize: SanitizeState

    @property
    def num_blocks(self) -> int: ...

    def check_medium(self) -> None: ...

    def check_writable(self) -> None: ...

COMMANDS = CommandSet("sanitize")

OPCODE = 0x48
OVERWRITE = 0x01
BLOCK_ERASE = 0x02
CRYPTOGRAPHIC_ERASE = 0x03
EXIT_FAILURE_MODE = 0x1F

SANITIZE_COMMAND_FAILED = Asc(0x31, 0x03)

STEP_BYTES = 8 << 20  # medium bytes one step() writes or deallocates
_CHUNK = 1 << 20      # bytes per store.write() of an overwrite pass



class Operation:
    """One sanitize operation over every LBA, done in bounded steps.

    `block` is one logical block of initialization pattern for an overwrite, None for an
    erase (deallocation)."""

    def __init__(self, store: Store, length: int, *, ause: bool, block: bytes | None = None,
                 passes: int = 1, invert: bool = False) -> None:
        self.store = store
        self.length = length  # bytes: every LBA
        self.ause = ause
        self.passes = passes if block is not None else 1
        self.total = length * self.passes
        self.done = 0
        self._chunks: tuple[bytes, bytes] | None = None
        self._invert = invert
        if block is not None:
            per = max(1, _CHUNK // len(block))
            plain = block * per
            self._chunks = (plain, bytes(b ^ 0xFF for b in block) * per if invert else plain)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def progress(self) -> int:
        """The progress indication: a fraction of 65536 (SPC-4 4.5.2.4.4)."""
        if self.total == 0:
            return 0xFFFF
        return min(0xFFFF, self.done * 0x10000 // self.total)

    def _inverted(self, npass: int) -> bool:
        # The last pass writes the pattern as given; the ones before it alternate.
        return self._invert and (self.passes - 1 - npass) % 2 == 1

    def step(self, budget: int = STEP_BYTES) -> bool:
        """Do up to `budget` bytes of the operation; True once it is complete (and durable).
        StoreError propagates: the operation failed."""
        if self.finished:
            return True
        npass, offset = divmod(self.done, self.length)
        n = min(budget, self.length - offset)
        if self._chunks is None:
            self.store.discard(offset, n)
        else:
            chunk = memoryview(self._chunks[1] if self._inverted(npass) else self._chunks[0])
            end = offset + n
            pos = offset
            while pos < end:
                m = min(len(chunk), end - pos)
                self.store.write(pos, chunk[:m])
                pos += m
        self.done += n
        if self.finished:
            self.store.flush()
            return True
        return False


class SanitizeState:
    """A LU's sanitize state (SBC-4 4.11): the operation in progress, or the failure mode."""

    def __init__(self, rate: float = 0.0) -> None:
        self.active: Operation | None = None
        self.failed = False
        # True when commands may be refused (an operation runs, or one failed): a plain
        # attribute, read by every command (LogicalUnit.execute), kept by _settle() at each
        # change of `active` or `failed` (start, _end, exit_failure_mode; nothing else
        # assigns them). It only spares idle LUs the call of check(), which decides.
        self.engaged = False
        self.unrestricted = False  # the failed operation had AUSE=1
        self.background = False  # a shell drives operations with advance() (attach_shell)
        self.rate = rate  # bytes per second of a background operation; 0: as fast as it goes
        self.waiting: list[ScsiTask] = []  # IMMED=0 SANITIZE tasks of the operation
        self.ended: list[tuple[ScsiTask, bool]] = []  # (task, completed without error)

    def _settle(self) -> None:
        self.engaged = self.active is not None or self.failed

    def condition(self) -> CheckCondition | None:
        """The sense a refused command gets, which REQUEST SENSE also returns; None if idle."""
        if self.active is not None:
            return CheckCondition(SenseKey.NOT_READY, LU_NOT_READY_SANITIZE_IN_PROGRESS,
                                  progress=self.active.progress)
        if self.failed:
            return CheckCondition(SenseKey.MEDIUM_ERROR, SANITIZE_COMMAND_FAILED)
        return None

    def check(self, cmd: Command | None) -> None:
        """Refuse a command the sanitize state does not allow (before its handler runs): its
        table entry says whether it is served while an operation runs (`in_sanitize`) and
        in the failure mode (`in_sanitize_failure`); a CDB the table refused is not."""
        if self.active is not None:
            allowed = cmd is not None and cmd.in_sanitize
        elif self.failed:
            allowed = cmd is not None and cmd.in_sanitize_failure
        else:
            return
        if not allowed:
            cc = self.condition()
            assert cc is not None
            raise cc

    def start(self, op: Operation) -> None:
        self.active = op
        self._settle()

    def step(self, budget: int = STEP_BYTES) -> bool:
        """Advance the running operation; True when none is left running. A store failure
        ends it in the failure mode (and is not raised)."""
        op = self.active
        if op is None:
            return True
        try:
            done = op.step(budget)
        except Exception as exc:
            return self._outcome(op, exc)
        return self._outcome(op, done)

    def _outcome(self, op: Operation, outcome: bool | Exception) -> bool:
        """After op.step(): True when the operation has ended (completed, or failed on a
        StoreError); any other exception is a bug: the operation fails and it is raised."""
        if isinstance(outcome, StoreError):
            self._end(op, ok=False)
            return True
        if isinstance(outcome, Exception):
            self._end(op, ok=False)
            raise outcome
        if outcome:
            self._end(op, ok=True)
        return outcome

    def run(self, op: Operation) -> bool:
        """Start `op` and drive it to its end; True when it completed without error."""
        self.start(op)
        while not self.step():
            pass
        return not self.failed

    def advance(self) -> float | None:
        """One step of a background operation: seconds to wait before the next one, None
        when it has ended (the IMMED=0 tasks are then in `ended`)."""
        step = self.next_step()
        if step is None:
            return None
        op, budget = step
        before = op.done
        try:
            outcome: bool | Exception = op.step(budget)
        except Exception as exc:
            outcome = exc
        return self.stepped(op, before, outcome)

    def next_step(self) -> tuple[Operation, int] | None:
        """The running operation and the bytes its next step may do (the shell may run the
        step, op.step(budget), on a worker thread: it touches only the store), or None."""
        op = self.active
        if op is None:
            return None
        # At a rate, steps of a twentieth of a second's worth (at least 64 KiB), then wait.
        budget = STEP_BYTES if self.rate <= 0 else min(STEP_BYTES, max(64 << 10,
                                                                       int(self.rate / 20)))
        return op, budget

    def stepped(self, op: Operation, before: int, outcome: bool | Exception) -> float | None:
        """After a step (what op.step returned or raised): seconds to wait before the next
        one, None when the operation has ended."""
        if self._outcome(op, outcome):
            return None
        return (op.done - before) / self.rate if self.rate > 0 else 0.0

    def _end(self, op: Operation, ok: bool) -> None:
        self.active = None
        self.failed = not ok
        self._settle()
        self.unrestricted = op.ause and not ok
        self.ended += [(task, ok) for task in self.waiting]
        self.waiting = []

    def exit_failure_mode(self) -> None:
        """EXIT FAILURE MODE: allowed after a failure in unrestricted completion mode."""
        if self.failed and not self.unrestricted:
            raise invalid_field_in_cdb(1, bit=4)
        self.failed = False
        self.unrestricted = False
        self._settle()


# --- the command ---------------------------------------------------------------------------

def _usage(sa: int) -> list[int]:
    return [OPCODE, 0xA0 | sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]


def _entry(sa: int, name: str) -> Callable[[Handler], Handler]:
    return COMMANDS.command(OPCODE, f"SANITIZE/{name}", _usage(sa), Direction.OUT,
                            service_action=sa, access=Access.WRITE, in_sanitize_failure=True)


def _check_cdb(lu: Unit, task: ScsiTask) -> int:
    """Reserved fields and the PARAMETER LIST LENGTH rule; returns that length."""
    cdb = task.cdb
    if cdb[1] & 0x40:  # ZNR: zoned block devices only
        raise invalid_field_in_cdb(1, bit=6)
    for i in range(2, 7):
        if cdb[i]:
            raise invalid_field_in_cdb(i)
    length = cdb[7] << 8 | cdb[8]
    if cdb[1] & 0x1F == OVERWRITE:
        valid = 4 < length < lu.block_size + 5
    else:
        valid = length == 0
    if not valid:
        raise invalid_field_in_cdb(7)
    task.out_length = length
    return length


def _overwrite_block(lu: Unit, task: ScsiTask, length: int) -> tuple[bytes, int, bool]:
    """The OVERWRITE parameter list: (one block of pattern, OVERWRITE COUNT, INVERT)."""
    data = bytes(task.data_out or b"")[:length]
    if len(data) < length:
        raise parameter_list_length_error()
    b0 = data[0]
    if b0 & 0x60:  # TEST: only 00b
        raise invalid_field_in_parameter_list(0, bit=6)
    count = b0 & 0x1F
    if count == 0:
        raise invalid_field_in_parameter_list(0, bit=4)
    if data[1]:
        raise invalid_field_in_parameter_list(1)
    ipl = data[2] << 8 | data[3]
    if ipl == 0 or ipl > lu.block_size or ipl != length - 4:
        raise invalid_field_in_parameter_list(2)
    pattern = data[4:4 + ipl]
    block = (pattern * -(-lu.block_size // ipl))[:lu.block_size]
    return block, count, bool(b0 & 0x80)


def _sanitize(lu: Unit, task: ScsiTask, block: bytes | None = None, passes: int = 1,
              invert: bool = False) -> None:
    cdb = task.cdb
    lu.check_medium()
    lu.check_writable()
    state = lu.sanitize
    ause = bool(cdb[1] & 0x20)
    if ause and state.failed and not state.unrestricted:
        # Restricted completion mode: only a sanitize with AUSE=0 may end it (SBC-4 4.11).
        raise invalid_field_in_cdb(1, bit=5)
    op = Operation(lu.store, lu.num_blocks * lu.block_size, ause=ause, block=block,
                   passes=passes, invert=invert)
    if state.background:
        state.start(op)
        if not cdb[1] & 0x80:  # IMMED=0: status when the operation has ended
            task.deferred = True
            state.waiting.append(task)
        return
    if not state.run(op) and not cdb[1] & 0x80:  # IMMED=0: report the failure now
        raise CheckCondition(SenseKey.MEDIUM_ERROR, SANITIZE_COMMAND_FAILED)


@_entry(OVERWRITE, "OVERWRITE")
def sanitize_overwrite(lu: Unit, task: ScsiTask) -> None:
    length = _check_cdb(lu, task)
    block, count, invert = _overwrite_block(lu, task, length)
    _sanitize(lu, task, block, count, invert)


@_entry(BLOCK_ERASE, "BLOCK ERASE")
def sanitize_block_erase(lu: Unit, task: ScsiTask) -> None:
    _check_cdb(lu, task)
    _sanitize(lu, task)


@_entry(CRYPTOGRAPHIC_ERASE, "CRYPTOGRAPHIC ERASE")
def sanitize_cryptographic_erase(lu: Unit, task: ScsiTask) -> None:
    _check_cdb(lu, task)
    _sanitize(lu, task)


@_entry(EXIT_FAILURE_MODE, "EXIT FAILURE MODE")
def sanitize_exit_failure_mode(lu: Unit, task: ScsiTask) -> None:
    _check_cdb(lu, task)
    lu.sanitize.exit_failure_mode()
