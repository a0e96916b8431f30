"""Real target processes on 127.0.0.1 for tools and tests: tgtd (the reference) and ours.

Rules of this module:
- Every server is a context manager. Leaving the block stops the process, also when
  starting it failed halfway; `stop()` is idempotent.
- Processes are signalled by their PID only, never by name. They run in their own session
  so that a Ctrl-C at the terminal reaches the tool, which then stops them in order.
- Output goes to log files in the work directory, never to pipes that could fill up.
- Ports are ephemeral (bind port 0, close, use); a collision with another process
  is detected (tgtd does not exit when its portal cannot be bound: we check that the
  port's listening socket belongs to our PID) and retried with fresh numbers.
- tgtd: `tgtd -f` ignores SIGTERM while a target exists, so stopping deletes the target
  (`--op delete --force`), then the daemon (`--mode sys --op delete`), then kills the
  PID if it is still there. Its control port (`-C N`, socket /var/run/tgtd/socket.N)
  is chosen at random among those whose lock file no live process holds (/proc/locks),
  so instances in parallel (pytest -n 2, other users' tgtd) do not meet.
- Our server: `python -m target serve --portal 127.0.0.1:0 --port-file FILE ...`;
  the CLI writes the bound port (decimal, newline) to FILE once it listens. It runs the
  code of this checkout, or of another one given as `repo` (benchmarks of two commits).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
OUR_DEFAULT_IQN = "iqn.2026-11.local.scsi-target:default"
TGTD_DEFAULT_IQN = "iqn.2026-11.local.scsi-target:tgtd"
TGTD_SOCKET_DIR = Path("/var/run/tgtd")
REPO_ROOT = Path(__file__).resolve().parents[2]

_ATTEMPTS = 8
_POLL = 0.05
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_counter = itertools.count(1)


class ServerError(RuntimeError):
    """A target process failed to start or to configure."""


def free_port(host: str = HOST) -> int:
    """An ephemeral TCP port that was free a moment ago (bind port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def initiator_iqn(tag: str) -> str:
    """An initiator IQN for a tool or test; `tag` is reduced to the IQN character set."""
    clean = re.sub(r"[^a-z0-9.-]+", "-", tag.lower()).strip("-.") or "x"
    return f"iqn.2026-11.local.scsi-target:initiator-{clean}"


def find_program(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories that a non-login PATH may lack."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def port_accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds (it is closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_listens_on(pid: int, port: int) -> bool:
    """True when process `pid` owns a listening TCP socket on `port` (Linux /proc)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            return True
    return False


def _listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets in state LISTEN (0A) on `port`, from /proc/net/tcp{,6}."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Signal `proc` by its PID, wait `grace` seconds, then SIGKILL it and reap it."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(first)
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.kill()
    proc.wait(timeout=30)


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(_POLL)
    return predicate()


class _Server:
    """Common shape: .port .iqn .lun .url .pid, context manager, idempotent stop()."""

    def __init__(self, iqn: str, lun: int, workdir: Path | None, prefix: str) -> None:
        self.iqn = iqn
        self.lun = lun
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("server not started")
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"iscsi://{HOST}:{self.port}/{self.iqn}/{self.lun}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _remove_own_workdir(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Tgtd(_Server):
    """tgtd serving `lun_path` as LUN 1 of target tid 1 on 127.0.0.1:<ephemeral>."""

    def __init__(self, lun_path: str | os.PathLike, block_size: int = 512,
                 iqn: str = TGTD_DEFAULT_IQN, workdir: Path | None = None, *,
                 start_timeout: float = 15.0) -> None:
        super().__init__(iqn, 1, workdir, "tgtd-")
        self.lun_path = str(lun_path)
        self.block_size = block_size
        self.control_port = 0
        self.start_timeout = start_timeout
        self._tgtd = find_program("tgtd")
        self._tgtadm = find_program("tgtadm")

    def start(self) -> None:
        if not self._tgtd or not self._tgtadm:
            raise ServerError("tgtd/tgtadm not found: install Debian package 'tgt'")
        for _ in range(_ATTEMPTS):
            if self._launch(free_port(), free_control_port()):
                self._configure()
                return
        raise ServerError(f"tgtd: no free portal/control port after {_ATTEMPTS} attempts; "
                          f"last log {self.log_path}:\n{tail(self.log_path)}")

    def _launch(self, port: int, control_port: int) -> bool:
        """Start tgtd; True once it listens on `port`, False on a port collision."""
        self.port, self.control_port = port, control_port
        self.log_path = self.workdir / f"tgtd-{port}-{control_port}.log"
        cmd = [self._tgtd, "-f", "--iscsi", f"portal={HOST}:{port}", "-C", str(control_port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if _wait_until(self._ready_or_failed, self.start_timeout) and self._ready():
            return True
        text = tail(self.log_path)
        self._kill(signal.SIGKILL)  # it has no target yet: nothing to tear down
        if "another tgtd" in text or "unable to bind" in text or "failed to create/bind" in text:
            return False
        raise ServerError(f"tgtd did not start ({' '.join(cmd)}):\n{text}")

    def _ready(self) -> bool:
        return (self.alive and pid_listens_on(self.pid, self.port)
                and _unix_socket_accepts(TGTD_SOCKET_DIR / f"socket.{self.control_port}"))

    def _ready_or_failed(self) -> bool:
        if not self.alive or self._ready():
            return True
        text = tail(self.log_path)
        return "unable to bind" in text or "failed to create/bind" in text

    def _configure(self) -> None:
        self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "1",
                    "--targetname", self.iqn)
        lu = ["--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
              "--lun", str(self.lun), "--backing-store", self.lun_path]
        if self.block_size != 512:
            lu += ["--blocksize", str(self.block_size)]
        self.tgtadm(*lu)
        self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1",
                    "--initiator-address", "ALL")

    def tgtadm(self, *args: str, check: bool = True, timeout: float = 20.0) -> str:
        """Run `tgtadm -C <our control port> ARGS`; raise ServerError when it fails."""
        cmd = [self._tgtadm or "tgtadm", "-C", str(self.control_port), *args]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            if check:
                raise ServerError(f"{' '.join(cmd)} timed out") from e
            return ""
        if check and res.returncode != 0:
            raise ServerError(f"{' '.join(cmd)} failed ({res.returncode}): "
                              f"{res.stdout}{res.stderr}\ntgtd log:\n{tail(self.log_path)}")
        return res.stdout

    def stop(self) -> None:
        if self.proc is not None and self.alive:
            self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                        "--tid", "1", check=False)
            self.tgtadm("--mode", "sys", "--op", "delete", check=False)
            _wait_until(lambda: not self.alive, 5.0)
        self._kill()
        self._remove_own_workdir()

    def _kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig, grace=2.0)
            self._remove_control_files()

    def _remove_control_files(self) -> None:
        """tgtd leaves socket.N and socket.N.lock behind; drop them unless N is in use."""
        lock = TGTD_SOCKET_DIR / f"socket.{self.control_port}.lock"
        try:
            if lock.stat().st_ino in _locked_inodes():
                return  # another tgtd took N after ours exited
        except OSError:
            return
        for path in (TGTD_SOCKET_DIR / f"socket.{self.control_port}", lock):
            path.unlink(missing_ok=True)


class OurTarget(_Server):
    """Our server (`python -m target serve`) on 127.0.0.1:<ephemeral>; LUN 0 by default."""

    def __init__(self, args: Sequence[str] = (), config: Path | None = None, *,
                 workdir: Path | None = None, iqn: str | None = None, lun: int = 0,
                 start_timeout: float = 30.0, python: str = sys.executable,
                 env: dict[str, str] | None = None, repo: Path | None = None) -> None:
        args = [str(a) for a in args]
        iqn = iqn or _option_value(args, "--target-iqn") or OUR_DEFAULT_IQN
        super().__init__(iqn, lun, workdir, "ours-")
        self.args = args
        self.config = config
        self.start_timeout = start_timeout
        self.python = python
        self.env = env
        self.repo = Path(repo) if repo is not None else REPO_ROOT  # whose server code runs
        stem = f"ours-{os.getpid()}-{next(_counter)}"
        self.port_file = self.workdir / f"{stem}.port"
        self.ports: list[int] = []  # every bound portal's port (a second --portal: multipath)
        self.log_path = self.workdir / f"{stem}.stderr.log"
        self.stdout_path = self.workdir / f"{stem}.stdout.log"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "target", "serve", "--portal", f"{HOST}:0",
               "--port-file", str(self.port_file)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd + self.args

    def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo),
                                                          env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.stdout_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, cwd=self.workdir, env=env,
                                         start_new_session=True)
        self.port = self._wait_for_port()
        if not _wait_until(lambda: port_accepts(self.port) or not self.alive, 5.0) \
                or not self.alive:
            raise ServerError(self._failure(f"does not accept on port {self.port}"))

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ServerError(self._failure(f"exited with {self.proc.returncode} "
                                                "before listening"))
            ports = _read_port_file(self.port_file)
            if ports:
                self.ports = ports
                return ports[0]
            time.sleep(_POLL)
        raise ServerError(self._failure(f"wrote no port to {self.port_file} "
                                        f"within {self.start_timeout:g} s"))

    def _failure(self, what: str) -> str:
        return (f"our target {what}: {' '.join(self.command())}\n"
                f"stderr ({self.log_path}):\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, grace=10.0)
        self._remove_own_workdir()


def free_control_port() -> int:
    """A tgtd control port (-C N, 1000..9999) whose lock no live process holds."""
    rng = random.SystemRandom()
    held = _locked_inodes()
    for _ in range(1000):
        n = rng.randint(1000, 9999)
        try:
            inode = (TGTD_SOCKET_DIR / f"socket.{n}.lock").stat().st_ino
        except OSError:
            return n
        if inode not in held:
            return n
    raise ServerError("no free tgtd control port in 1000..9999")


def _locked_inodes() -> set[int]:
    """Inodes that have a POSIX/FLOCK lock, from /proc/locks (tgtd locks socket.N.lock)."""
    found: set[int] = set()
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        for field in line.split():
            if field.count(":") == 2:
                found.add(int(field.rsplit(":", 1)[1]))
                break
    return found


def _unix_socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def _read_port_file(path: Path) -> list[int]:
    """The bound ports, one a line in --portal order; [] until the file is complete."""
    try:
        text = path.read_text()
    except OSError:
        return []
    lines = text.split()
    if not text.endswith("\n") or not lines or not all(w.isdigit() for w in lines):
        return []
    return [int(w) for w in lines]


def _option_value(args: Sequence[str], name: str) -> str | None:
    """The value of `name VALUE` or `name=VALUE` in an argument list (last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value
