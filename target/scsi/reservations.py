"""Reservations: RESERVE/RELEASE (SPC-2 7.21, 7.16) and persistent reservations (SPC-4 5.13).

Rules:
- State per logical unit: the SPC-2 reservation holder (an I_T nexus or None), the
  persistent registrations (I_T nexus -> reservation key), the persistent reservation
  (holder, type; scope is always LU_SCOPE) and the PRgeneration counter (SPC-4 6.15.2).
- conflicts(task, cmd) is asked once per command, before dispatch (lu.py), and answers
  from the command's table entry:
  * SPC-2 reservation held by another nexus: every command with `reserve6` set conflicts
    (INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE are the exceptions, SPC-2 5.5.1).
  * While an SPC-2 reservation is held, PERSISTENT RESERVE IN (but REPORT CAPABILITIES)
    and PERSISTENT RESERVE OUT conflict from every nexus (SPC-4 5.13.3).
  * Persistent reservation held and the nexus is not a holder (SPC-4 5.13.1 table 62,
    SBC-4 table 15): Access.ALLOWED never conflicts; Access.READ conflicts under the
    Exclusive Access types; Access.WRITE and Access.EXCLUSIVE conflict under every type.
    Under the Registrants Only and All Registrants types a registered nexus does not
    conflict at all (the "from a registered I_T nexus" columns are all Allowed).
- Holders (SPC-4 5.13.9): for the All Registrants types every registered nexus; for the
  other types the nexus that made the reservation.
- Keys are 64-bit; registration is per I_T nexus (SPC-4 5.13.5). ALL_TG_PT, SPEC_I_PT and
  APTPL are not supported (REPORT CAPABILITIES says so) and are INVALID FIELD IN
  PARAMETER LIST when set.
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

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from target.scsi.commands import Access
from target.scsi.sense import (
    REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED,
    RESERVATIONS_RELEASED,
    Asc,
)

if TYPE_CHECKING:
    from target.scsi.commands import Command
    from target.scsi.lu import LogicalUnit
    from target.scsi.task import Nexus, ScsiTask

PERSISTENT_RESERVE_IN = 0x5E
PERSISTENT_RESERVE_OUT = 0x5F
REPORT_CAPABILITIES = 0x02


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

    def __init__(self, lu: LogicalUnit) -> None:
        self.lu = lu
        self.spc2_holder: Nexus | None = None
        self.registrations: dict[Nexus, int] = {}  # insertion order = registration order
        self.reservation: PersistentReservation | None = None
        self.generation = 0
        self.nexuses: dict[tuple[str, str], Nexus] = {}  # every nexus seen, for TransportIDs

    # --- the check before dispatch ------------------------------------------------------

    def conflicts(self, task: ScsiTask, cmd: Command) -> bool:
        nexus = task.nexus
        if nexus.key not in self.nexuses:
            self.nexuses[nexus.key] = nexus
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
            self.lu.ua.establish(REGISTRATIONS_PREEMPTED, nexus=n)
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
                self.lu.ua.establish(code, nexus=n)
