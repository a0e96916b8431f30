"""The control channel: requests to a running target over a local socket, answered here.

Rules:
- Transport (served by target.shell.server's Server.start_control): a unix stream socket,
  one JSON object per line each way. The answering side is sans-IO: Control.handle(request)
  -> response, both dicts (handle_line() for one JSON line); the client side of
  `scsi-target status`, request(), is one blocking unix-socket exchange.
- Who may reach it, three fences (the helpers here; the server applies them):
  - prepare_directory(): the socket's directory is a real directory (not a symlink) owned
    by our effective uid. The default runtime directory, and any directory we create for
    the socket, is mode 0700 (the default one is brought to 0700 when it is ours). A
    directory named with --control that exists already must be ours and writable by us
    alone: 0755 is accepted (the socket's 0600 mode and the peer check keep other users
    out; tools such as tools/droptest make their work directories so), a directory
    others can write (they could replace the socket), of another uid or a symlink is
    refused with an OSError naming it (the CLI prints it, the target does not start).
  - bind_socket(): the socket is bound under a temporary name in that directory, made
    0600, then renamed to its path (rename(2) is atomic), so it never exists at its path
    with other modes.
  - peer_refusal(): each connection's peer is read with SO_PEERCRED (socket(7), unix(7):
    the pid, uid, gid of the process that connected); a uid other than ours and root (0)
    is answered with one error line and closed, and logged.
- Requests are validated before they are answered (check_line()): a line is at most
  MAX_REQUEST bytes (a longer one gets an error line and the connection is closed: the
  rest of it cannot be told from the next request), UTF-8 JSON, an object, whose
  "command" is a known command (a string) and whose other fields are those of that
  command (REQUEST_FIELDS) with their types. Any failure is {"ok": false, "error": "..."}
  naming the problem, and the connection stays usable.
- Requests: {"command": "fault-add", "rule": {...}} (target.faults.parse_rule),
  {"command": "fault-list"}, {"command": "fault-clear", "id": N} (no id: all).
  {"command": "status"} -> the targets, their LUNs (size, block size, the task
  set's policy, depth and metrics: commands queued, maximum depth, seek distance,
  reorders, starvation-bound hits, TASK SET FULL answers, aborts), the sessions and the
  event loop ("uvloop" or "asyncio").
- With worker processes (target.shell.workers) the portal process answers: "workers"
  lists each worker's pid and targets, and each target has the "pid" of its worker.
- Where the socket is: `serve --control PATH`, or by default
  <runtime dir>/scsi-target/<pid>.sock with the runtime dir $XDG_RUNTIME_DIR or
  /tmp/scsi-target-<uid>; `scsi-target status` finds the only live one there, or is told
  which with --control.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

MAX_REQUEST = 64 << 10  # bytes in one request line, its newline included
COMMANDS = ("status", "fault-add", "fault-list", "fault-clear")
# Per command: field -> (the JSON types it may have, whether it is required).
REQUEST_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "status": {},
    "fault-list": {},
    "fault-add": {"rule": ((dict,), True)},
    "fault-clear": {"id": ((int, type(None)), False)},
}
_TYPE_NAMES = {dict: "an object", int: "an integer", type(None): "null", str: "a string"}
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7) SO_PEERCRED)


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
        request, error = check_line(line)
        return error if request is None else encode(self.handle(request))

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


def encode(response: dict[str, Any]) -> bytes:
    """One answer line."""
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def error_line(message: str) -> bytes:
    return encode({"ok": False, "error": message})


def validate(request: object) -> str | None:
    """What is wrong with a decoded request (None: nothing): an object, a known command,
    the fields of that command with their types (REQUEST_FIELDS)."""
    if not isinstance(request, dict):
        return f"bad request: a request is a JSON object, not {type(request).__name__}"
    command = request.get("command")
    if not isinstance(command, str):
        return (f"bad request: \"command\" must be a string naming one of "
                f"{', '.join(COMMANDS)}; got {command!r}")
    fields = REQUEST_FIELDS.get(command)
    if fields is None:
        return unknown_command(command)["error"]
    extra = sorted(set(request) - set(fields) - {"command"})
    if extra:
        known = ", ".join(fields) or "none"
        return (f"bad request: unknown field(s) {', '.join(map(repr, extra))} for "
                f"{command!r} (its fields: {known})")
    for name, (types, required) in fields.items():
        if name not in request:
            if required:
                return f"bad request: {command!r} needs the field {name!r}"
            continue
        value = request[name]
        # JSON true/false decode to bool, a subclass of int: not an integer here.
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            return (f"bad request: {command!r} field {name!r} must be {wanted}, "
                    f"not {value!r}"[:300])
    return None


def check_line(line: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """A request line decoded and validated: (request, b"") or (None, the error line)."""
    if len(line) > MAX_REQUEST:
        return None, error_line(f"bad request: a request line is at most {MAX_REQUEST} "
                                f"bytes, this one has {len(line)}")
    try:
        text = bytes(line).decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, error_line(f"bad request: not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        request = json.loads(text)
    except ValueError as exc:
        return None, error_line(f"bad request: not JSON ({exc})")
    problem = validate(request)
    if problem is not None:
        return None, error_line(problem)
    return request, b""


# --- who may reach the socket ------------------------------------------------------------

def prepare_directory(directory: Path, *, ours: bool = False) -> None:
    """Make `directory` fit for the control socket, or refuse it (OSError naming it): a
    directory of our effective uid; 0700 when we create it or when it is the default
    runtime directory (`ours`); else at least not writable by group or others."""
    uid = os.geteuid()
    try:
        os.mkdir(directory, 0o700)
        created = True
    except FileExistsError:
        created = False
    except FileNotFoundError:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.mkdir(directory, 0o700)
        created = True
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "the control socket's directory is not a directory "
                      "(a symlink or another file)", str(directory))
    if st.st_uid != uid:
        raise OSError(errno.EPERM, f"the control socket's directory belongs to uid "
                      f"{st.st_uid}, not to us (uid {uid})", str(directory))
    mode = stat.S_IMODE(st.st_mode)
    if created or ours:
        if mode != 0o700:
            os.chmod(directory, 0o700)  # mkdir's mode is cut by the umask; or tightened
    elif mode & 0o022:
        raise OSError(errno.EPERM, f"the control socket's directory has mode {mode:04o}: "
                      "other users could replace the socket; use a directory only we "
                      "can write (0700)", str(directory))


MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with its NUL (unix(7))


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0600 from the moment it has that name. The
    temporary name is short (a dot and our pid in hex), so that a path that fits fits
    while it is being made; one that does not is an error naming it."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise OSError(errno.ENAMETOOLONG, f"a unix socket path of {size} bytes (at most "
                      f"{MAX_SOCKET_PATH}): choose a shorter --control path", str(path))
    temporary = path.with_name(f".{os.getpid():x}")
    if len(os.fsencode(temporary)) > MAX_SOCKET_PATH:  # a short name near the limit
        return _bind_in_place(path)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return sock


def _bind_in_place(path: Path) -> socket.socket:
    """Bind at `path` itself, created 0600 by the umask (brief: at start-up)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


def peer_refusal(uid: int) -> str | None:
    """Why a peer of `uid` may not use the socket (None: it may): only our effective uid
    and root."""
    ours = os.geteuid()
    if uid in (ours, 0):
        return None
    return f"refused: the control socket serves uid {ours} only, not uid {uid}"


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
