"""Reservations: RESERVE/RELEASE (SPC-2 7.21, 7.16) and persistent reservations (SPC-4 5.13).

Rules:
- State per logical unit: the SPC-2 reservation holder (an I_T nexus or None), the
  persistent registrations (I_T nexus -> reservation key), the persistent reservation
  (holder, type; scope is always LU_SCOPE) and the PRgeneration counter (SPC-4 6.15.2).
- conflicts(task, cmd) is asked once per command, before dispatch (lu.py), and answers
  from the command's table entry:
  * SPC-2 reservation held by another nexus: every command with `reserve6` set conflicts
    (INQUIRY, REPORT LUNS, REQUEST SENSE, LOG SENSE, RELEASE(6)/(10) and RECEIVE COPY
    RESULTS are the exceptions, SPC-2 5.5.1; PERSISTENT RESERVE IN/OUT: the next rule).
  * While an SPC-2 reservation is held, PERSISTENT RESERVE IN (but REPORT CAPABILITIES)
    and PERSISTENT RESERVE OUT conflict from every nexus (SPC-4 5.13.3).
  * Persistent reservation held and the nexus is not a holder (SPC-4 5.13.1 table 62,
    SBC-4 table 15): Access.ALLOWED never conflicts; Access.READ conflicts under the
    Exclusive Access types; Access.WRITE and Access.EXCLUSIVE conflict under every type.
    Under the Registrants Only and All Registrants types a registered nexus does not
    conflict at all (the "from a registered I_T nexus" columns are all Allowed).
- Holders (SPC-4 5.13.9): for the All Registrants types every registered nexus; for the
  other types the nexus that made the reservation.
- Every nexus a command comes from is kept in `nexuses` (key -> Nexus, for TransportIDs)
  until its loss; the check remembers the Nexus object it last kept, so a connection's
  commands after the first do not build and hash its key again.
- Keys are 64-bit; registration is per I_T nexus (SPC-4 5.13.7). ALL_TG_PT and SPEC_I_PT
  are not supported (REPORT CAPABILITIES says so) and are INVALID FIELD IN PARAMETER LIST
  when set.
- Persist through power loss (SPC-4 5.13.5.1, 6.16.3, 6.16.4): the state is kept where
  the LU's store keeps records beside its medium (Store.sidecar(".pr"), backing/base.py;
  this module only produces and consumes its bytes). An LU whose store gives one (a
  regular image file whose directory is writable or that has its `<image>.pr`,
  backing/file.py) is PTPL_C=1; an LU whose store gives none (memory, a block device)
  has nowhere to keep it and is PTPL_C=0, so APTPL=1 in REGISTER, REGISTER AND IGNORE
  EXISTING KEY or REGISTER AND MOVE is INVALID FIELD IN PARAMETER LIST there (6.16.3).
  The APTPL bit of the last successful REGISTER, REGISTER AND IGNORE EXISTING KEY or
  REGISTER AND MOVE decides (5.13.5.1); every other service action ignores the bit
  (6.16.3) and keeps the state. A REGISTER that does nothing (an unregistered nexus
  registering key 0, 5.13.7) leaves it alone too. REPORT CAPABILITIES says PTPL_A (6.15.4).
- Each PERSISTENT RESERVE OUT runs as a transaction (begin, then commit or rollback, from
  spc.py): while APTPL is on, commit writes the registrations (initiator port name, target
  port, key, in registration order), the reservation (holder, type) and the generation to
  the state file (Sidecar.replace: atomic and durable before it returns) when they changed;
  when APTPL goes to 0 it removes the file. The unit attentions the action establishes are
  held until then; if the file cannot be written or removed the state goes back to what it
  was before the command, no unit attention is sent, and the command ends in HARDWARE
  ERROR / INTERNAL TARGET FAILURE (44h/00h). Nothing is persisted without APTPL.
- At start, what a write interrupted before its rename left behind (the target killed
  mid-update) is cleared by the store when it opens the record (backing/sidecar.py): the
  command it belonged to never got its status. Then an existing state file is restored:
  the same registrations with the same keys, the reservation and its type, APTPL on
  (5.13.5.1). The PRgeneration restarts at 0:
  "Regardless of the APTPL bit value the PRgeneration value shall be set to zero by a
  power on" (6.15.2); the saved generation is informational. A state file that cannot
  be read or is not valid is StateFileError (a ValueError, so the LU is not built and the
  server does not start), naming the file and saying to remove it: nothing is thrown away
  behind the user's back (an unrecoverable loss of PR information, 5.13.5.3.3).
- PRgeneration is incremented by every PERSISTENT RESERVE OUT that performs a REGISTER,
  REGISTER AND IGNORE EXISTING KEY, CLEAR, PREEMPT, PREEMPT AND ABORT or REGISTER AND
  MOVE, and by nothing else (SPC-4 6.15.2).
- Unit attentions (SPC-4 5.13.11, 5.13.12): PREEMPT -> REGISTRATIONS PREEMPTED (2Ah/05h)
  to the nexuses whose registrations were removed, RESERVATIONS RELEASED (2Ah/04h) to the
  other registrants when the type changed; CLEAR -> RESERVATIONS PREEMPTED (2Ah/03h) to
  every other registrant; RELEASE of a Registrants Only or All Registrants reservation,
  and the loss of one by unregistering its holder, -> RESERVATIONS RELEASED to the other
  registrants.
- SPC-2 reservations go with I_T nexus loss, logical unit reset and target resets;
  persistent ones survive them (SPC-4 5.13.1). With CRH=1 (SPC-4 5.13.3), RESERVE and
  RELEASE while persistent registrations exist complete with GOOD and do nothing when
  sent by a persistent reservation holder (RESERVE) or a registrant (RELEASE), and end in
  RESERVATION CONFLICT otherwise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from target.scsi.commands import Access
from target.scsi.sense import (
    INTERNAL_TARGET_FAILURE,
    REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED,
    RESERVATIONS_RELEASED,
    Asc,
    CheckCondition,
    SenseKey,
)
from target.scsi.task import Nexus

if TYPE_CHECKING:
    from target.backing.base import Sidecar, Store
    from target.scsi.commands import Command
    from target.scsi.task import ScsiTask
    from target.scsi.ua import UnitAttentions


class Unit(Protocol):
    """What the reservations read of their LU (target.scsi.lu.LogicalUnit, which builds on
    this module): its number, its store (which keeps the APTPL state) and its unit
    attentions."""

    lun: int
    store: Store
    ua: UnitAttentions

log = logging.getLogger(__name__)

PERSISTENT_RESERVE_IN = 0x5E
PERSISTENT_RESERVE_OUT = 0x5F
REPORT_CAPABILITIES = 0x02

STATE_SUFFIX = ".pr"
STATE_FORMAT = "scsi-target persistent reservations"
STATE_VERSION = 1


class StateFileError(ValueError):
    """The persist-through-power-loss state file of an LU cannot be restored."""


class PrType(IntEnum):
    """PERSISTENT RESERVE OUT TYPE codes (SPC-4 6.16.3 table 177)."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8

    @property
    def all_registrants(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                        PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)

    @property
    def registrants(self) -> bool:
        """Registrants Only or All Registrants: registered nexuses have full access."""
        return self >= PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY

    @property
    def exclusive_access(self) -> bool:
        """The Exclusive Access types: reads conflict too."""
        return self in (PrType.EXCLUSIVE_ACCESS, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                        PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)


@dataclass
class PersistentReservation:
    holder: Nexus  # the nexus that made it (any registrant holds an All Registrants one)
    type: PrType


class Reservations:
    """The reservation state of one logical unit."""

    def __init__(self, lu: Unit) -> None:
        self.lu = lu
        self.spc2_holder: Nexus | None = None
        self.registrations: dict[Nexus, int] = {}  # insertion order = registration order
        self.reservation: PersistentReservation | None = None
        self.generation = 0
        self.nexuses: dict[tuple[str, str], Nexus] = {}  # every nexus seen, for TransportIDs
        # The Nexus object conflicts() last found (or put) in `nexuses`: its key is there
        # until nexus_lost() removes one (nothing else does), which forgets it.
        self._known: Nexus | None = None
        # Persist through power loss (SPC-4 5.13.5.1): the store keeps the state file.
        self.state: Sidecar | None = lu.store.sidecar(STATE_SUFFIX)
        self.aptpl = False
        self._saved: bytes | None = None  # what the state file holds (None: no file)
        self._undo: tuple[Any, ...] | None = None  # set between begin() and commit()
        self._held_ua: list[tuple[Asc, Nexus]] = []
        self.ptpl_capable = self.state is not None
        if self.state is not None:
            self._restore(self.state)

    # --- the check before dispatch ------------------------------------------------------

    def conflicts(self, task: ScsiTask, cmd: Command) -> bool:
        nexus = task.nexus
        if nexus is not self._known:
            key = nexus.key
            if key not in self.nexuses:
                self.nexuses[key] = nexus
            self._known = nexus
        if self.spc2_holder is not None:
            if cmd.opcode == PERSISTENT_RESERVE_OUT:
                return True
            if cmd.opcode == PERSISTENT_RESERVE_IN:
                return cmd.service_action != REPORT_CAPABILITIES
            if self.spc2_holder != nexus and cmd.reserve6:
                return True
        res = self.reservation
        if res is None or cmd.access is Access.ALLOWED or self.is_holder(nexus):
            return False
        if res.type.registrants and nexus in self.registrations:
            return False
        if cmd.access is Access.READ:
            return res.type.exclusive_access
        return True  # WRITE, EXCLUSIVE

    def is_holder(self, nexus: Nexus) -> bool:
        res = self.reservation
        if res is None:
            return False
        if res.type.all_registrants:
            return nexus in self.registrations
        return res.holder == nexus

    # --- events -------------------------------------------------------------------------

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss releases an SPC-2 reservation (SPC-2 5.5.1); PR state stays."""
        if self.spc2_holder == nexus:
            self.spc2_holder = None
        if nexus not in self.registrations:
            self.nexuses.pop(nexus.key, None)
            self._known = None

    def reset(self) -> None:
        """Logical unit reset or target reset: SPC-2 reservations are released."""
        self.spc2_holder = None

    # --- SPC-2 RESERVE / RELEASE --------------------------------------------------------

    def reserve6(self, nexus: Nexus) -> bool:
        """RESERVE(6)/(10): True on success; False for RESERVATION CONFLICT."""
        if self.registrations:  # CRH=1 (SPC-4 5.13.3)
            return self.is_holder(nexus)
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            return False
        self.spc2_holder = nexus
        return True

    def release6(self, nexus: Nexus) -> bool:
        """RELEASE(6)/(10): True for GOOD (released, or nothing to do); False for conflict."""
        if self.registrations:
            return nexus in self.registrations
        if self.spc2_holder == nexus:
            self.spc2_holder = None
        return True

    # --- persistent reservation state changes (the checks are in spc.py) -----------------

    def register(self, nexus: Nexus, key: int) -> None:
        """Add, change (key != 0) or remove (key == 0) the registration of `nexus`."""
        if key:
            self.registrations[nexus] = key
        elif nexus in self.registrations:
            self._unregister(nexus)
        self.generation += 1

    def _unregister(self, nexus: Nexus) -> None:
        del self.registrations[nexus]
        res = self.reservation
        if res is None:
            return
        if res.type.all_registrants:
            if not self.registrations:
                self.reservation = None
            elif res.holder == nexus:
                res.holder = next(iter(self.registrations))
            return
        if res.holder == nexus:
            self.reservation = None
            if res.type.registrants:
                self._ua_registrants(RESERVATIONS_RELEASED, exclude=nexus)

    def reserve(self, nexus: Nexus, type_: PrType) -> None:
        self.reservation = PersistentReservation(nexus, type_)

    def release(self, nexus: Nexus) -> None:
        res = self.reservation
        assert res is not None
        self.reservation = None
        if res.type.registrants:
            self._ua_registrants(RESERVATIONS_RELEASED, exclude=nexus)

    def clear(self, nexus: Nexus) -> None:
        self._ua_registrants(RESERVATIONS_PREEMPTED, exclude=nexus)
        self.registrations.clear()
        self.reservation = None
        self.generation += 1

    def preempt(self, nexus: Nexus, sa_key: int, type_: PrType) -> list[Nexus]:
        """PREEMPT (SPC-4 5.13.11.4.3); returns the nexuses whose registrations went.

        The caller has checked that `nexus` is registered and that some registration
        matches `sa_key` (or that sa_key is 0 under an All Registrants reservation).
        """
        res = self.reservation
        if res is not None and res.type.all_registrants and sa_key == 0:
            victims = [n for n in self.registrations if n != nexus]
            new_reservation = True
        else:
            victims = [n for n, k in self.registrations.items() if k == sa_key and n != nexus]
            new_reservation = (
                res is not None and not res.type.all_registrants
                and self.registrations.get(res.holder) == sa_key
            )
        for n in victims:
            del self.registrations[n]
            self._ua(REGISTRATIONS_PREEMPTED, n)
        if new_reservation:
            assert res is not None
            if res.type != type_:
                self._ua_registrants(RESERVATIONS_RELEASED, exclude=nexus)
            self.reservation = PersistentReservation(nexus, type_)
        elif res is not None and not self.registrations:
            self.reservation = None
        elif res is not None and res.type.all_registrants and res.holder not in self.registrations:
            res.holder = next(iter(self.registrations))
        self.generation += 1
        return victims

    def move(self, nexus: Nexus, dest: Nexus, sa_key: int, type_: PrType, unreg: bool) -> None:
        """REGISTER AND MOVE (SPC-4 5.13.8): register `dest`, give it the reservation."""
        self.registrations[dest] = sa_key
        self.reservation = PersistentReservation(dest, type_)
        if unreg:
            del self.registrations[nexus]
        self.generation += 1

    def _ua_registrants(self, code: Asc, *, exclude: Nexus) -> None:
        for n in self.registrations:
            if n != exclude:
                self._ua(code, n)

    def _ua(self, code: Asc, nexus: Nexus) -> None:
        if self._undo is not None:  # inside a PERSISTENT RESERVE OUT: held until commit
            self._held_ua.append((code, nexus))
        else:
            self.lu.ua.establish(code, nexus=nexus)

    # --- PERSISTENT RESERVE OUT as a transaction; persist through power loss --------------

    def set_aptpl(self, aptpl: bool) -> None:
        """The APTPL bit of a successful REGISTER, REGISTER AND IGNORE EXISTING KEY or
        REGISTER AND MOVE (SPC-4 5.13.5.1); the caller has checked ptpl_capable."""
        assert self.ptpl_capable or not aptpl
        self.aptpl = aptpl

    def begin(self) -> None:
        """A PERSISTENT RESERVE OUT starts: remember the state to go back to."""
        res = self.reservation
        self._undo = (dict(self.registrations), None if res is None else replace(res),
                      self.generation, self.aptpl)
        self._held_ua = []

    def rollback(self) -> None:
        """The command failed: the state it may have touched goes back, its UAs are dropped."""
        undo = self._undo
        if undo is None:
            return
        self.registrations, self.reservation, self.generation, self.aptpl = undo
        self._undo = None
        self._held_ua = []

    def commit(self) -> None:
        """The command succeeded: write (APTPL=1) or remove (APTPL=0) the state file when
        it changed, then send the held unit attentions. If the file cannot be written, roll
        back and raise HARDWARE ERROR / INTERNAL TARGET FAILURE. No-op outside begin().
        The same in three steps, for a write off the event loop: pending_state(),
        write_state() (file calls only) and committed() or failed()."""
        if self._undo is None:
            return
        changed, data = self.pending_state()
        if changed:
            try:
                self.write_state(data)
            except OSError as exc:
                self.failed(exc)
        self.committed(data)

    def pending_state(self) -> tuple[bool, bytes | None]:
        """Whether the state file must change, and its new contents (None: no file)."""
        if self.state is None:
            return False, self._saved
        data = self.state_bytes() if self.aptpl else None
        return data != self._saved, data

    def committed(self, data: bytes | None) -> None:
        """The state file holds `data`: the transaction is over, its UAs are sent."""
        self._saved = data
        held = self._held_ua
        self._undo = None
        self._held_ua = []
        for code, nexus in held:
            self.lu.ua.establish(code, nexus=nexus)

    def failed(self, exc: OSError) -> None:
        """The state file could not be written: everything goes back; HARDWARE ERROR."""
        log.error("persistent reservations of LUN %d: cannot update %s: %s; the "
                  "PERSISTENT RESERVE OUT fails and changes nothing", self.lu.lun,
                  None if self.state is None else self.state.name, exc.strerror or exc)
        self.rollback()
        raise CheckCondition(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE) from None

    def write_state(self, data: bytes | None) -> None:
        """Replace the state file with `data` (atomic and durable, Sidecar.replace) or
        remove it (None); OSError when the store cannot. Touches nothing but the store's
        record, not this object: it may run on a worker."""
        state = self.state
        assert state is not None
        if data is None:
            state.remove()
        else:
            state.replace(data)

    def state_bytes(self) -> bytes:
        """The state file's contents for the current state (JSON, one registration per
        I_T nexus in registration order; the reservation names its holder by index)."""
        regs = list(self.registrations.items())
        res = self.reservation
        reservation = None
        if res is not None:
            holder = next(i for i, (n, _k) in enumerate(regs) if n == res.holder)
            reservation = {"holder": holder, "type": int(res.type)}
        doc = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "generation": self.generation,
            "registrations": [
                {"initiator_port": n.initiator_port, "target_port": n.target_port,
                 "initiator_name": n.initiator_name, "target_name": n.target_name,
                 "isid": n.isid, "tpgt": n.tpgt,
                 "relative_target_port": n.relative_target_port, "key": f"0x{k:016x}"}
                for n, k in regs
            ],
            "reservation": reservation,
        }
        return (json.dumps(doc, indent=1) + "\n").encode("utf-8")

    def _restore(self, state: Sidecar) -> None:
        """Restore the state saved under APTPL=1 (SPC-4 5.13.5.1), if there is any;
        PRgeneration stays 0 (6.15.2). Anything wrong is StateFileError naming the file."""
        path = state.name
        try:
            raw = state.read()
            if raw is None:
                return
            regs, reservation = _parse_state(raw)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StateFileError(
                f"persistent reservation state file {path} cannot be restored ({why}); "
                f"it holds the registrations and reservation kept with APTPL=1 and is left "
                f"as it is: repair it, or remove it (rm '{path}') to start this LU with no "
                f"registrations and no reservation") from None
        for nexus, key in regs:
            self.registrations[nexus] = key
            self.nexuses[nexus.key] = nexus
        if reservation is not None:
            holder, type_ = reservation
            self.reservation = PersistentReservation(regs[holder][0], type_)
        self.aptpl = True
        self.ptpl_capable = True
        self._saved = raw
        log.info("LUN %d: restored %d registration(s)%s from %s (APTPL)", self.lu.lun,
                 len(regs), " and the reservation" if reservation else "", path)


def _parse_state(raw: bytes) -> tuple[list[tuple[Nexus, int]], tuple[int, PrType] | None]:
    """Validate a state file; ValueError says what is wrong."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ValueError(f"not a {STATE_FORMAT!r} file")
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"version {doc.get('version')!r}, expected {STATE_VERSION}")
    items = doc.get("registrations")
    if not isinstance(items, list):
        raise ValueError("'registrations' is not a list")
    regs: list[tuple[Nexus, int]] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(items):
        where = f"registration {i}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        strs = {}
        for name in ("initiator_port", "target_port", "initiator_name", "target_name"):
            value = item.get(name)
            if not isinstance(value, str) or (not value and name.endswith("_port")):
                raise ValueError(f"{where}: bad {name} {value!r}")
            strs[name] = value
        ints = {}
        for name, limit in (("isid", 1 << 48), ("tpgt", 1 << 16),
                            ("relative_target_port", 1 << 16)):
            value = item.get(name)
            if type(value) is not int or not 0 <= value < limit:
                raise ValueError(f"{where}: bad {name} {value!r}")
            ints[name] = value
        key_text = item.get("key")
        try:
            if not isinstance(key_text, str):
                raise ValueError
            key = int(key_text, 16)
        except ValueError:
            raise ValueError(f"{where}: bad key {key_text!r}") from None
        if not 0 < key < 1 << 64:
            raise ValueError(f"{where}: key {key_text} is out of range")
        nexus = Nexus(**strs, **ints)
        if nexus.key in seen:
            raise ValueError(f"{where}: I_T nexus {nexus.key} is registered twice")
        seen.add(nexus.key)
        regs.append((nexus, key))
    res = doc.get("reservation")
    if res is None:
        return regs, None
    if not isinstance(res, dict):
        raise ValueError("'reservation' is not an object or null")
    holder, type_ = res.get("holder"), res.get("type")
    if type(holder) is not int or not 0 <= holder < len(regs):
        raise ValueError(f"reservation: holder {holder!r} is not a registration")
    try:
        if type(type_) is not int:
            raise ValueError
        pr_type = PrType(type_)
    except ValueError:
        raise ValueError(f"reservation: bad type {type_!r}") from None
    return regs, (holder, pr_type)
