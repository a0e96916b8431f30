"""Unit attention conditions, kept per I_T nexus (SAM-5 5.14).

Rules:
- Each LU keeps a queue per I_T nexus. A nexus seen for the first time gets POWER ON,
  RESET, OR BUS DEVICE RESET OCCURRED (29h/00h) first (seen()).
- establish() queues a condition for one nexus or every known nexus but one; the same
  condition is not queued twice, and a reset (29h/xx) supersedes the reset conditions
  pending before it and goes first.
- pop() reports one condition per command (the LU's execute, for every command whose
  entry is not `ua_exempt`); clear() makes a nexus known with nothing pending; forget()
  is I_T nexus loss (a new nexus of the same name starts afresh with 29h/00h).
- The queue of the nexus last looked up is remembered with that Nexus object, so that the
  check every command makes (pop) finds it without hashing the nexus (a Python
  __hash__): for the same object the dict would return the same list, since only clear()
  and forget() replace or remove an entry (seen() adds one only when none is there), and
  both drop what is remembered.
"""

from __future__ import annotations

from target.scsi.sense import POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED, Asc
from target.scsi.task import Nexus


class UnitAttentions:
    """Pending unit attention conditions, per I_T nexus (SAM-5 5.14)."""

    def __init__(self) -> None:
        self._pending: dict[Nexus, list[Asc]] = {}
        self._last: Nexus | None = None  # the nexus seen() looked up last, and its queue
        self._last_queue: list[Asc] = []

    def seen(self, nexus: Nexus) -> list[Asc]:
        if nexus is self._last:
            return self._last_queue
        queue = self._pending.get(nexus)
        if queue is None:
            queue = self._pending[nexus] = [POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED]
        self._last, self._last_queue = nexus, queue
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
        queue = self._last_queue if nexus is self._last else self.seen(nexus)  # seen()'s memo
        return queue.pop(0) if queue else None

    def clear(self, nexus: Nexus) -> None:
        """The nexus is known and has nothing pending: what was queued for it is dropped,
        and it does not get the first-contact 29h/00h (seen() finds it known). This is the
        state a nexus is in once its initiator has been told of every condition (each
        pop() reports one, SAM-5 5.14); forget() is the opposite, a nexus never seen."""
        self._pending[nexus] = []
        self._last = None

    def forget(self, nexus: Nexus) -> None:
        """The nexus is gone; a new one with the same name starts afresh (29h/00h)."""
        self._pending.pop(nexus, None)
        self._last = None
