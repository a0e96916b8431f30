"""The control socket's fences against the real server (issue 15, "The control socket").

What is checked, and against what:
- Modes (os.stat): the socket's directory is a 0700 directory of ours and the socket a
  0600 socket (S_ISSOCK), the modes unix(7) says decide who may connect ("connecting to the
  socket object requires write permission on the socket file" and search permission on
  the directories of its path).
- The default runtime directory is created 0700. A --control directory that others can
  write (0777, 0775, sticky 1777), or that belongs to another uid, is refused at start
  with a message naming it and its mode: the target does not start. One of ours that
  others may only search (0755, as tools/droptest makes its work directory) is used as it
  is, the socket still 0600.
- A peer of another uid is refused. Run as uid 65534 ("nobody") the client is stopped by
  the filesystem first (EACCES, unix(7)). Run as nobody but keeping CAP_DAC_OVERRIDE
  (capabilities(7): it bypasses the file permission checks, so the client reaches the
  socket), it is stopped by the SO_PEERCRED check (socket(7): the credentials of the
  connecting process) with an error line. The tests run as root; without root they skip.
- Every request is validated: an oversized line is answered with an error and the
  connection closed; non-UTF-8, non-JSON, a non-object, a command that is not a string,
  an unknown command, an unknown field, a missing field, fields of the wrong types are
  each answered with an error naming the problem, and the same connection then answers
  a status request (the target still serves).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from target.shell.control import MAX_REQUEST, MAX_SOCKET_PATH
from target.testing.servers import OurTarget, ServerError

pytestmark = pytest.mark.integration

NOBODY = 65534
CAP_DAC_OVERRIDE = 1  # linux/capability.h
_CAP_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as "
                               "uid 65534 (run the tests as root to enable)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("control")
    sock = work / "ctl" / "target.sock"  # the directory does not exist yet: we create it
    with OurTarget(["--size", "4M", "--control", str(sock)], workdir=work) as t:
        yield t, sock
        assert "Traceback" not in t.log_path.read_text(), t.log_path.read_text()


class Client:
    """One connection to the control socket, a line at a time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send(self, line: bytes) -> dict | None:
        self.sock.sendall(line)
        answer = self.file.readline()
        return json.loads(answer) if answer else None

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def status_ok(client: Client) -> bool:
    answer = client.send(b'{"command": "status"}\n')
    return answer is not None and answer["ok"] is True and "targets" in answer


def test_directory_0700_and_socket_0600(served):
    _, path = served
    d = os.lstat(path.parent)
    assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o700
    assert d.st_uid == os.geteuid()
    s = os.lstat(path)
    assert stat.S_ISSOCK(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o600
    assert s.st_uid == os.geteuid()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_owner_is_served(served):
    _, path = served
    c = Client(path)
    try:
        assert status_ok(c)
    finally:
        c.close()


def _start_refused(tmp_path: Path, sock: Path) -> str:
    server = OurTarget(["--size", "4M", "--control", str(sock)], workdir=tmp_path,
                       start_timeout=20)
    with pytest.raises(ServerError) as info, server:
        pass
    return str(info.value)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_directory_others_can_write_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    message = _start_refused(tmp_path, shared / "t.sock")
    assert str(shared) in message and f"{mode:04o}" in message
    assert not (shared / "t.sock").exists()


def test_named_directory_0755_keeps_its_mode_socket_0600(tmp_path):
    """A --control directory of ours that others may only search (a tool's work directory)
    is used as it is; the socket is still 0600 and the peer check still applies."""
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o755)
    sock = work / "t.sock"
    with OurTarget(["--size", "4M", "--control", str(sock)], workdir=tmp_path):
        assert stat.S_IMODE(os.stat(work).st_mode) == 0o755
        s = os.lstat(sock)
        assert stat.S_ISSOCK(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o600
        c = Client(sock)
        try:
            assert status_ok(c)
        finally:
            c.close()


def test_default_runtime_directory_is_0700(tmp_path):
    """Without --control: $XDG_RUNTIME_DIR/scsi-target, created 0700, <pid>.sock 0600."""
    runtime = tmp_path / "run"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    with OurTarget(["--size", "4M"], workdir=tmp_path, env=env) as t:
        d = runtime / "scsi-target"
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
        sock = d / f"{t.pid}.sock"
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600


@root_only
def test_directory_of_another_uid_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    message = _start_refused(tmp_path, theirs / "t.sock")
    assert str(theirs) in message and f"uid {NOBODY}" in message


_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.errno}))
    sys.exit(0)
try:
    s.sendall(b'{"command": "status"}\n')
except OSError:  # refused and closed before the request went out; its answer is there
    pass
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"answer": data.decode()}))
"""


def _as_nobody(keep_dac_override: bool):
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if keep_dac_override:
            libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if keep_dac_override:
            header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
            bit = 1 << CAP_DAC_OVERRIDE  # effective, permitted, inheritable; 2 words
            data = (ctypes.c_uint32 * 6)(bit, bit, bit, 0, 0, 0)
            if libc.capset(header, data) != 0:
                raise OSError(ctypes.get_errno(), "capset")
            if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_OVERRIDE, 0, 0):
                raise OSError(ctypes.get_errno(), "PR_CAP_AMBIENT_RAISE")
    return preexec


def _system_python() -> str:
    """An interpreter uid 65534 may execute (ours may sit under root's home)."""
    for candidate in ("/usr/bin/python3", sys.executable):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & stat.S_IXOTH:
            return candidate
    pytest.skip("no Python that uid 65534 may execute (install python3 in /usr/bin)")


def _run_as_nobody(path: Path, keep_dac_override: bool) -> dict:
    proc = subprocess.run([_system_python(), "-I", "-c", _CLIENT, str(path)], capture_output=True,
                          timeout=30, preexec_fn=_as_nobody(keep_dac_override), cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


@root_only
def test_other_uid_stopped_by_the_filesystem(served):
    """unix(7): without search permission on the 0700 directory, connect() is EACCES."""
    _, path = served
    assert _run_as_nobody(path, keep_dac_override=False) == {"connect": 13}
    c = Client(path)
    try:
        assert status_ok(c)
    finally:
        c.close()


@root_only
def test_other_uid_refused_by_peer_credentials(served):
    """With CAP_DAC_OVERRIDE the filesystem lets uid 65534 through; SO_PEERCRED does not."""
    t, path = served
    out = _run_as_nobody(path, keep_dac_override=True)
    assert "answer" in out, out  # it did connect (the capability worked)
    lines = out["answer"].splitlines()
    assert len(lines) == 1, lines  # one error line, then the target closed
    answer = json.loads(lines[0])
    assert answer["ok"] is False and f"not uid {NOBODY}" in answer["error"]
    assert "targets" not in answer
    assert f"uid {NOBODY} refused" in t.log_path.read_text()
    c = Client(path)
    try:
        assert status_ok(c)
    finally:
        c.close()


def test_oversized_line_answered_and_closed(served):
    _, path = served
    c = Client(path)
    try:
        answer = c.send(b'{"command": "status", "x": "' + b"a" * (MAX_REQUEST + 10) + b'"}\n')
        assert answer is not None and answer["ok"] is False
        assert str(MAX_REQUEST) in answer["error"] and "closing" in answer["error"]
        assert c.file.readline() == b""  # closed: the rest of the line is not a request
    finally:
        c.close()
    c = Client(path)
    try:
        assert status_ok(c)
    finally:
        c.close()


BAD_REQUESTS = [
    (b"\xff\xfe{}\n", "not UTF-8"),
    (b"status\n", "not JSON"),
    (b'{"command": "status"\n', "not JSON"),
    (b"[1, 2]\n", "a JSON object, not list"),
    (b'"status"\n', "a JSON object, not str"),
    (b"{}\n", '"command" must be a string'),
    (b'{"command": 7}\n', '"command" must be a string'),
    (b'{"command": "reboot"}\n', "unknown command 'reboot'"),
    (b'{"command": "status", "verbose": true}\n', "unknown field(s) 'verbose'"),
    (b'{"command": "fault-add"}\n', "needs the field 'rule'"),
    (b'{"command": "fault-add", "rule": [1]}\n', "'rule' must be an object"),
    (b'{"command": "fault-clear", "id": "1"}\n', "'id' must be an integer or null"),
    (b'{"command": "fault-clear", "id": true}\n', "'id' must be an integer or null"),
    (b'{"command": "fault-clear", "id": 1.5}\n', "'id' must be an integer or null"),
    (b'{"command": "fault-add", "rule": {"action": "nonsense"}}\n', "fault"),
]


@pytest.mark.parametrize(("line", "named"), BAD_REQUESTS,
                         ids=[f"{i}-{n[:20]}" for i, (_, n) in enumerate(BAD_REQUESTS)])
def test_bad_request_answered_connection_usable(served, line, named):
    _, path = served
    c = Client(path)
    try:
        answer = c.send(line)
        assert answer is not None and answer["ok"] is False, answer
        assert named in answer["error"], answer["error"]
        assert status_ok(c)  # the same connection goes on
    finally:
        c.close()


def test_socket_paths_near_the_unix_limit(tmp_path):
    """sun_path holds 107 bytes and a NUL (unix(7)): --control paths of exactly 107 bytes
    work (the temporary name must not make them longer), one of 108 is refused with an
    error naming it."""
    d = tmp_path / "c"
    d.mkdir(mode=0o700)
    room = MAX_SOCKET_PATH - len(os.fsencode(d)) - 1
    assert room >= 2, "tmp_path too long for this test"
    fits = d / ("s" * room)
    with OurTarget(["--size", "4M", "--control", str(fits)], workdir=tmp_path):
        assert stat.S_IMODE(os.lstat(fits).st_mode) == 0o600
    # A one-letter name at the limit: the temporary name would be longer than the
    # socket's, so it is bound in place (0600 by the umask).
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH - len(os.fsencode(tmp_path)) - 3))
    deep.mkdir(mode=0o700)
    short = deep / "s"
    assert len(os.fsencode(short)) == MAX_SOCKET_PATH
    with OurTarget(["--size", "4M", "--control", str(short)], workdir=tmp_path):
        assert stat.S_IMODE(os.lstat(short).st_mode) == 0o600
    long = d / ("s" * (room + 1))
    out = subprocess.run([sys.executable, "-m", "target", "serve", "--portal",
                          "127.0.0.1:0", "--size", "4M", "--control", str(long)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and str(long) in out.stderr and "108 bytes" in out.stderr, \
        out.stderr
