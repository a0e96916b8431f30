"""The fuzz harness: one function per target, and the one check every input goes through.

Rules (issue 15's fuzzer):
- A target is a function of one input (bytes) that builds its structure with
  tests.fuzz.provider.Provider and drives one part of the product in-process, sans-IO.
  It returns when the outcome is one the product's rules allow: a Reject, a CHECK
  CONDITION, a closed connection (CloseWanted), or the module's own error type
  (ConfigError, TraceError, DumpFormatError, ProtocolError...), which the target catches.
- Everything else is a finding, and check() raises it: any other exception; an error the
  product logged with a traceback (LogicalUnit._ended turns a handler's bug into HARDWARE
  ERROR 44h/00h and logs it, so the session survives but the bug is real); an input that
  runs over its bound of CPU time (Hang, from an interval timer, so the traceback shows
  where);
  or a traced peak of Python memory over the target's bound (MemoryBound, with
  tracemalloc on: the replay test turns it on, the fuzzing runs bound the process's RSS).
- The same check() serves tools/fuzz (both engines) and tests/fuzz/test_replay.py.
"""

from __future__ import annotations

import logging
import signal
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

TIME_LIMIT = 2.0  # CPU seconds per input (the dump reader: its own bound below)
MEMORY_LIMIT = 256 << 20  # peak traced bytes per input


class Finding(Exception):
    """An outcome no rule allows."""


class Hang(Finding):
    """The input ran over its time bound."""


class MemoryBound(Finding):
    """The input's traced peak of memory went over its bound."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    doc: str
    seeds: Callable[[], list[bytes]] = list  # inputs the corpus starts from
    time_limit: float = TIME_LIMIT
    memory_limit: int = MEMORY_LIMIT


class _Logged(logging.Handler):
    """Keeps the records logged at ERROR or above (the product's 'this is a bug' path)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_logged = _Logged()


def quiet_logs() -> tuple[int, bool]:
    """The product's loggers report errors to the harness only: warnings (each Reject,
    each failed login) would cost more than the input itself. Returns what to give
    restore_logs() (the "target" logger's level and propagation before)."""
    root = logging.getLogger("target")
    before = (root.level, root.propagate)
    if _logged not in root.handlers:
        root.addHandler(_logged)
    root.setLevel(logging.ERROR)
    root.propagate = False
    return before


def restore_logs(before: tuple[int, bool]) -> None:
    """Undo quiet_logs(), so that tests run after an input (pytest's caplog, in the same
    process) see the product's warnings again."""
    root = logging.getLogger("target")
    root.removeHandler(_logged)
    root.setLevel(before[0])
    root.propagate = before[1]


def _alarm(signum, frame) -> None:
    raise Hang("over the time bound")


def check(target: Target, data: bytes, *, memory: bool = False) -> None:
    """Run one input; raise a Finding (or the exception itself) unless the outcome is one
    the rules allow."""
    logs = quiet_logs()
    _logged.records.clear()
    # CPU time (ITIMER_VIRTUAL, SIGVTALRM): the targets compute and do no waiting, a
    # loaded machine does not make an input hang, and SIGALRM stays libFuzzer's (its
    # -timeout) and pytest-timeout's.
    previous = signal.signal(signal.SIGVTALRM, _alarm)
    signal.setitimer(signal.ITIMER_VIRTUAL, target.time_limit)
    traced = memory and not tracemalloc.is_tracing()
    if traced:
        tracemalloc.start()
    try:
        target.run(data)
        if memory:
            peak = tracemalloc.get_traced_memory()[1]
            if peak > target.memory_limit:
                raise MemoryBound(f"{peak} bytes traced, bound {target.memory_limit}")
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)
        if traced:
            tracemalloc.stop()
        restore_logs(logs)
    if _logged.records:
        record = _logged.records[0]
        exc = record.exc_info[1] if record.exc_info else None
        raise Finding(f"logged by {record.name}: {record.getMessage()}") from exc


def targets() -> dict[str, Target]:
    """The fuzz targets by name (imported here: tools/fuzz instruments these imports)."""
    from tests.fuzz import files, iscsi, scsi

    found = [iscsi.CONNECTION, iscsi.LOGIN, scsi.CDB, files.CONFIG, files.DUMP, files.TRACE]
    return {t.name: t for t in found}
