"""target.testing.servers.Tgtd: the reference target that tools and tests start.

What must hold: tgtd serves the file as LUN 1 on its own ephemeral portal (so
pytest -n 2 and other users' tgtd instances never meet), libiscsi's tools can log in
and see the LUN's geometry (SBC-4 5.16 READ CAPACITY (16)), and leaving the context
stops the daemon, although `tgtd -f` ignores SIGTERM while a target exists.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from target.testing.servers import Tgtd, find_program, initiator_iqn

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not find_program("tgtd") or not find_program("tgtadm"),
                       reason="needs tgtd: `apt-get install tgt` (or `make test`, which "
                              "installs it)"),
]

SIZE = 32 << 20


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture
def lun_file(tmp_path):
    path = tmp_path / "lun1.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


def _need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"needs {tool}: `apt-get install libiscsi-bin` (or `make test`)")


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # a zombie is gone too
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("block_size", [512, 4096])
def test_tgtd_serves_the_file_and_is_gone_after_exit(tmp_path, lun_file, block_size):
    _need("iscsi-inq")
    _need("iscsi-readcapacity16")
    with Tgtd(lun_file, block_size=block_size, workdir=tmp_path) as tgtd:
        pid = tgtd.pid
        assert tgtd.url == f"iscsi://127.0.0.1:{tgtd.port}/{tgtd.iqn}/1"
        inq = run("iscsi-inq", "-i", initiator_iqn("pytest-servers"), tgtd.url)
        assert "Peripheral Device Type:DIRECT_ACCESS" in inq, inq
        cap = run("iscsi-readcapacity16", "-i", initiator_iqn("pytest-servers"), tgtd.url)
        assert f"LOGICAL BLOCK LENGTH IN BYTES:{block_size}" in cap, cap
        assert f"RETURNED LOGICAL BLOCK ADDRESS:{SIZE // block_size - 1}" in cap, cap
    assert _process_gone(pid), f"tgtd {pid} still running after exit"
    assert tgtd.proc.returncode is not None


def test_two_tgtd_side_by_side_use_distinct_ports(tmp_path, lun_file):
    with Tgtd(lun_file, workdir=tmp_path / "a") as a, Tgtd(lun_file, workdir=tmp_path / "b") as b:
        assert a.port != b.port
        assert a.control_port != b.control_port
        assert a.alive and b.alive
    assert not a.alive and not b.alive
    assert _process_gone(a.pid) and _process_gone(b.pid)
