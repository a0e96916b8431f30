"""The command line and the config file as a user meets them: clear one-line errors that
name what is wrong (exit status 2), and a config-file target with an initiator ACL."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from target.shell.initiator import Initiator, InitiatorError
from target.testing.servers import OurTarget

pytestmark = pytest.mark.integration


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "target", "serve", "--portal", "127.0.0.1:0",
                           *args], capture_output=True, text=True, timeout=timeout)


def test_missing_image_names_the_path():
    proc = serve("--backing", "/nonexistent/disk.img")
    assert proc.returncode == 2
    assert "/nonexistent/disk.img does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr


def test_broken_config_names_file_and_key(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[[target]]\niqn = "iqn.2026-11.local.t:x"\n[[target.lun]]\nsize = "lots"\n')
    proc = serve("--config", str(cfg))
    assert proc.returncode == 2
    assert f"{cfg}: target[0].lun[0].size: expected a size" in proc.stderr


def test_port_in_use(tmp_path):
    with OurTarget(["--size", "1M"], workdir=tmp_path) as t:
        proc = subprocess.run([sys.executable, "-m", "target", "serve", "--portal",
                               f"127.0.0.1:{t.port}"], capture_output=True, text=True,
                              timeout=30)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{t.port}: Address already in use" in proc.stderr


def test_config_file_target_with_acl(tmp_path):
    """RFC 7143 11.13.5: an initiator the target's ACL does not list is refused with
    Status-Class 02, Detail 02 (authorization failure); a listed one logs in and sees the
    LUN with the configured identity; SendTargets lists the target only to those allowed
    (appendix C)."""
    cfg = tmp_path / "acl.toml"
    cfg.write_text("""
[[target]]
iqn = "iqn.2026-11.local.test:acl"
initiators = ["iqn.2026-11.local.test:allowed"]

[[target.lun]]
lun = 2
size = "8M"
vendor = "ACME"
product = "ACL-DISK"
""")
    with OurTarget(config=cfg, workdir=tmp_path, iqn="iqn.2026-11.local.test:acl", lun=2) as t:
        denied = Initiator("127.0.0.1", t.port, t.iqn,
                           initiator_name="iqn.2026-11.local.test:stranger")
        with pytest.raises(InitiatorError, match="status 02/02"):
            denied.login()
        denied.close()
        ok = Initiator("127.0.0.1", t.port, t.iqn,
                       initiator_name="iqn.2026-11.local.test:allowed")
        with ok:
            ok.login()
            while ok.command(bytes(6), lun=2).status != 0:
                pass
            inquiry = ok.command(bytes([0x12, 0, 0, 0, 96, 0]), lun=2, read=96)
            assert inquiry.data[8:16] == b"ACME    " and inquiry.data[16:24] == b"ACL-DISK"
        if shutil.which("iscsi-ls"):
            out = subprocess.run(["iscsi-ls", "-i", "iqn.2026-11.local.test:stranger",
                                  f"iscsi://127.0.0.1:{t.port}"], capture_output=True,
                                 text=True, timeout=30).stdout
            assert "iqn.2026-11.local.test:acl" not in out
            out = subprocess.run(["iscsi-ls", "-i", "iqn.2026-11.local.test:allowed",
                                  f"iscsi://127.0.0.1:{t.port}"], capture_output=True,
                                 text=True, timeout=30).stdout
            assert "iqn.2026-11.local.test:acl" in out
