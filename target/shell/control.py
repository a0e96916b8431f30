"""The control channel: requests to a running target over a local socket, answered here.

Rules:
- Transport (in target.shell.server): a unix stream socket, one JSON object per line each way.
  Only the local user can reach it (the socket lives in a 0700 directory). The answering
  side is sans-IO: Control.handle(request) -> response, both dicts (handle_line() for one
  JSON line); the client side of `scsi-target status`, request(), is one blocking
  unix-socket exchange.
- Requests: {"command": "fault-add", "rule": {...}} (target.faults.parse_rule),
  {"command": "fault-list"}, {"command": "fault-clear", "id": N} (no id: all).
  {"command": "status"} -> the targets, their LUNs (size, block size, the task
  set's policy, depth and metrics: commands queued, maximum depth, seek distance,
  reorders, starvation-bound hits, TASK SET FULL answers, aborts), the sessions and the
  event loop ("uvloop" or "asyncio").
  Unknown commands and malformed requests get {"ok": false, "error": "..."} naming the
  problem; the connection stays usable.
- With worker processes (target.shell.workers) the portal process answers: "workers"
  lists each worker's pid and targets, and each target has the "pid" of its worker.
- Where the socket is: `serve --control PATH`, or by default
  <runtime dir>/scsi-target/<pid>.sock with the runtime dir $XDG_RUNTIME_DIR or
  /tmp/scsi-target-<uid>; `scsi-target status` finds the only live one there, or is told
  which with --control.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

MAX_REQUEST = 64 << 10
COMMANDS = ("status", "fault-add", "fault-list", "fault-clear")


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "scsi-target" if base else Path(f"/tmp/scsi-target-{os.getuid()}")
    return root


def default_socket() -> Path:
    return runtime_dir() / f"{os.getpid()}.sock"


class Control:
    """Answers control requests about one running App."""

    def __init__(self, app, faults=None, started: float | None = None) -> None:
        self.app = app
        self.faults = faults  # target.faults.Faults the server applies
        self.started = started if started is not None else time.time()

    async def answer_line(self, line: bytes) -> bytes:
        """What the control socket sends back for one request line (the portal process
        of target.shell.workers answers after asking its workers)."""
        return self.handle_line(line)

    def handle_line(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            response = self.handle(request)
        except ValueError as exc:
            response = {"ok": False, "error": f"bad request: {exc}"}
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            return {"ok": True, **self.status()}
        if command in ("fault-add", "fault-list", "fault-clear"):
            return self.fault(command, request)
        return unknown_command(command)

    def fault(self, command: str, request: dict[str, Any]) -> dict[str, Any]:
        from target.faults import FaultError, parse_rule

        faults = self.faults
        if faults is None:
            return {"ok": False, "error": "this server has no fault injection"}
        if command == "fault-add":
            rule = request.get("rule")
            if not isinstance(rule, dict):
                return {"ok": False, "error": "fault-add needs a \"rule\" object"}
            try:
                added = faults.add(parse_rule(rule))
            except FaultError as exc:
                return {"ok": False, "error": f"fault rule: {exc}"}
            return {"ok": True, "id": added.id, "rule": added.describe()}
        if command == "fault-clear":
            rid = request.get("id")
            if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
                return {"ok": False, "error": f"fault-clear: id must be an integer, not {rid!r}"}
            n = faults.clear(rid)
            if rid is not None and n == 0:
                return {"ok": False, "error": f"no fault rule {rid}"}
            return {"ok": True, "cleared": n}
        return {"ok": True, "faults": faults.describe()}

    def status(self) -> dict[str, Any]:
        app = self.app
        targets = []
        for tc, device in zip(app.config.targets, app.devices, strict=True):
            luns = []
            for number, lu in sorted(device.luns.items()):
                io = lu.io_stats.as_dict() if lu.io_stats is not None else {
                    "threads": lu.io_threads}
                luns.append({"lun": number, "size": lu.store.size, "block_size": lu.block_size,
                             "store": lu.store.description, "read_only": lu.read_only,
                             "task_set": lu.taskset.as_dict(), "io": io})
            targets.append({"iqn": tc.iqn, "luns": luns})
        return {**process_status(self.started, app.portal), "targets": targets,
                "faults": self.faults.describe() if self.faults is not None else []}


def unknown_command(command: object) -> dict[str, Any]:
    return {"ok": False, "error": f"unknown command {command!r}; known: "
                                  + ", ".join(COMMANDS)}


def process_status(started: float, portal) -> dict[str, Any]:
    """This process's part of a status answer: pid, uptime, loop, addresses, sessions."""
    sessions = []
    for s in list(portal.registry.sessions.values()):
        p = s.params
        conn = s.connection  # a session.SessionConnection, or None between connections
        sessions.append({"initiator": p.initiator_name, "target": p.target_name,
                         "isid": f"0x{p.isid:012x}", "tsih": p.tsih,
                         "peer": conn.peer if conn is not None else ""})
    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:  # asked outside the server (tests)
        loop = None
    return {"pid": os.getpid(), "uptime_s": round(time.time() - started, 1),
            "event_loop": loop, "listen": list(portal.addresses), "sessions": sessions}


# --- the client side (scsi-target status) ---------------------------------------------

class ControlError(RuntimeError):
    pass


def find_socket(path: Path | None = None) -> Path:
    """The socket to talk to: `path`, or the only live one in the runtime directory."""
    if path is not None:
        if not path.exists():
            raise ControlError(f"{path}: no such control socket (is the target running "
                               "with --control there?)")
        return path
    root = runtime_dir()
    live = []
    for candidate in sorted(root.glob("*.sock")) if root.is_dir() else []:
        pid = candidate.stem
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            live.append(candidate)
    if not live:
        raise ControlError(f"no running target found (no control socket in {root}); "
                           "start one with `scsi-target serve` or give --control PATH")
    if len(live) > 1:
        raise ControlError("several targets are running; choose one with --control: "
                           + ", ".join(str(p) for p in live))
    return live[0]


def request(path: Path, command: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps(command).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        return json.loads(buf)
    except ValueError:
        raise ControlError(f"{path}: not a control socket answer: {buf[:100]!r}") from None


def render_status(st: dict[str, Any]) -> str:
    lines = [f"scsi-target pid {st['pid']}, up {st['uptime_s']:.0f} s, listening on "
             + ", ".join(st["listen"])]
    for w in st.get("workers", []):
        lines.append(f"worker pid {w['pid']}: " + ", ".join(w["targets"]))
    for t in st["targets"]:
        lines.append(f"target {t['iqn']}" + (f" (worker pid {t['pid']})" if "pid" in t else ""))
        for lun in t["luns"]:
            ts = lun["task_set"]
            ev = ts["elevator"]
            model = ts.get("model")
            disk = f", rotational {model['rpm']} rpm" if model else ""
            lines.append(f"  LUN {lun['lun']}: {lun['store']}, {lun['size']} bytes, "
                         f"{lun['block_size']}-byte blocks")
            lines.append(f"    task set: {ts['policy']}, dispatch depth {ts['depth']}{disk}; "
                         f"now {ts['queued_now']} in the set, {ts['running']} running")
            lines.append(f"    commands: {ts['submitted']} queued, {ts['direct']} direct, "
                         f"{ts['bypassed']} bypassed; max depth {ts['max_depth']}; "
                         f"TASK SET FULL {ts['task_set_full']}; aborted {ts['aborted']}")
            lines.append(f"    elevator: {ev['served']} served, seek {ev['seek_distance']} "
                         f"LBAs (mean {ev['mean_seek']:.0f}), {ev['reorders']} reordered, "
                         f"{ev['sweeps']} sweeps, {ev['starvation_hits']} starvation-bound hits")
            io = lun.get("io") or {}
            if io.get("threads") or io.get("offloaded"):
                lines.append(f"    medium access: {io.get('threads', 0)} worker threads, "
                             f"{io.get('offloaded', 0)} off the event loop, "
                             f"{io.get('in_flight', 0)} in flight")
            else:
                lines.append("    medium access: on the event loop")
    for f in st.get("faults", []):
        lines.append("fault " + " ".join(f"{k}={v}" for k, v in f.items()))
    lines.append(f"sessions: {len(st['sessions'])}")
    for s in st["sessions"]:
        lines.append(f"  {s['initiator']} -> {s['target'] or '(discovery)'} "
                     f"isid {s['isid']} tsih {s['tsih']} {s['peer']}")
    return "\n".join(lines)
