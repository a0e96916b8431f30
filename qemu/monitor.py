# QMP: the machine-readable control channel of a QEMU process (qemu.qmp from PyPI).
#
# Rules:
# - Every guest QEMU gets a QMP socket (`-qmp unix:PATH,server=on,wait=off`) in a short
#   private directory under the system temp dir (a unix socket path is limited to 107
#   bytes; pytest's tmp_path can be longer). The directory goes when the monitor closes.
# - The synchronous shim qemu.qmp.legacy.QEMUMonitorProtocol is used: the harness is
#   synchronous (pexpect), and this keeps asyncio out of the callers. Connecting retries
#   until QEMU has created the socket, bounded by a timeout.
# - Every command has a timeout; an error reply raises MonitorError with QEMU's message.
# - What the harness uses: query-status, query-block, query-version, inject-nmi (the NMI
#   a guest set to panic on NMI turns into a crash dump), events (SHUTDOWN, GUEST_PANICKED)
#   and quit.

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0


class MonitorError(RuntimeError):
    """QMP could not be reached, or a QMP command failed."""


def socket_dir() -> Path:
    """A fresh private directory for one QMP socket, with a short path."""
    return Path(tempfile.mkdtemp(prefix="st-qmp-"))


class Monitor:
    """A QMP connection to one QEMU process. Close it (or use `with`) to remove the socket."""

    def __init__(self, path: Path | None = None) -> None:
        """path: where QEMU creates the socket; None = a fresh private directory (removed by
        close())."""
        self._own_dir = path is None
        self.path = path if path is not None else socket_dir() / "qmp.sock"
        self._qmp: QEMUMonitorProtocol | None = None
        self.greeting: dict[str, Any] = {}

    def argv(self) -> list[str]:
        """The QEMU arguments that create the QMP socket."""
        if len(os.fsencode(self.path)) > 107:
            raise MonitorError(f"QMP socket path too long for a unix socket: {self.path}")
        return ["-qmp", f"unix:{self.path},server=on,wait=off"]

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout: float = CONNECT_TIMEOUT_S, alive=lambda: True) -> None:
        """Connect and negotiate capabilities; retries while QEMU starts (alive() is true)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline and alive():
            if self.path.exists():
                qmp = QEMUMonitorProtocol(str(self.path), nickname="st")
                try:
                    self.greeting = qmp.connect() or {}
                except Exception as exc:  # ConnectError, OSError: not listening yet
                    last = exc
                    qmp.close()
                else:
                    qmp.settimeout(COMMAND_TIMEOUT_S)
                    self._qmp = qmp
                    return
            time.sleep(0.02)
        why = f": {last}" if last else ("" if alive() else ": QEMU exited")
        raise MonitorError(f"could not connect to QMP at {self.path} within "
                           f"{timeout:.0f} s{why}")

    @property
    def connected(self) -> bool:
        return self._qmp is not None

    def command(self, name: str, **args: object) -> Any:
        """Execute one QMP command; returns its "return" value."""
        if self._qmp is None:
            raise MonitorError(f"QMP is not connected (command {name!r})")
        try:
            return self._qmp.cmd(name, **args)
        except ExecuteError as exc:
            raise MonitorError(f"QMP {name} failed: {exc}") from None
        except Exception as exc:  # timeout, connection lost
            raise MonitorError(f"QMP {name}: {type(exc).__name__}: {exc}") from None

    def status(self) -> str:
        """The run state: "running", "paused", "guest-panicked", "shutdown", ..."""
        return str(self.command("query-status")["status"])

    def version(self) -> str:
        q = self.command("query-version")["qemu"]
        return f"{q['major']}.{q['minor']}.{q['micro']}"

    def block_devices(self) -> list[dict[str, Any]]:
        return list(self.command("query-block"))

    def iscsi_backends(self) -> list[dict[str, str]]:
        """The iscsi:// block backends QEMU has open: {"portal", "target", "lun", "device"}."""
        found = []
        for dev in self.block_devices():
            name = dev.get("inserted", {}).get("file", "")
            if not name.startswith("json:"):
                continue
            node = json.loads(name[5:])
            while isinstance(node, dict) and node.get("driver") != "iscsi":
                node = node.get("file")
            if isinstance(node, dict):
                found.append({"portal": str(node.get("portal", "")),
                              "target": str(node.get("target", "")),
                              "lun": str(node.get("lun", "0")), "device": dev.get("device", "")})
        return found

    def inject_nmi(self) -> None:
        """An NMI to every vCPU (a guest with kernel.panic_on_unrecovered_nmi / unknown_nmi_panic
        panics on it)."""
        self.command("inject-nmi")

    def events(self, wait: float | bool = False) -> list[dict[str, Any]]:
        """The events received so far (waiting up to `wait` seconds for at least one)."""
        if self._qmp is None:
            return []
        try:
            return list(self._qmp.get_events(wait=wait) or [])
        except Exception:  # asyncio.TimeoutError when nothing came
            return []

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait for an event by name; MonitorError when it does not come in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MonitorError(f"no QMP event {name} within {timeout:.0f} s")
            for event in self.events(wait=min(left, 1.0)):
                if event.get("event") == name:
                    return event

    def quit(self) -> None:
        """Ask QEMU to exit (best effort; the caller still reaps it by PID)."""
        if self._qmp is None:
            return
        try:
            self._qmp.cmd("quit")
        except Exception:
            pass

    def close(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:
                pass
            self._qmp = None
        if self._own_dir:
            shutil.rmtree(self.path.parent, ignore_errors=True)
