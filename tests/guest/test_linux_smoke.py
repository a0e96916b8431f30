"""A Linux guest under QEMU boots against an iSCSI LUN and does real I/O through it.

The disk is attached with `scsi-block` on virtio-scsi-pci through QEMU's iscsi:// driver,
so the guest's own CDBs (INQUIRY, READ CAPACITY, WRITE/READ with O_DIRECT) reach the
target. It runs against our target on every HBA the guests drive, and against tgtd on
virtio-scsi as the reference (the harness is not tuned to our target). The flow is
qemu.smoke.run_smoke.

Requires qemu-system-x86_64 (skips without it), tgtd (target.testing.servers.Tgtd) and
Debian's apt tools for the image build (`make test` installs them). The image is built
once into the XDG cache (images.linux).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qemu.smoke import PATTERN_OFFSET, PATTERN_SIZE, pattern, run_smoke
from target.testing.servers import OurTarget, Tgtd

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="needs qemu-system-x86_64: `make test` installs qemu-system-x86 "
                              "(or `apt-get install qemu-system-x86 qemu-block-extra`)"),
]

IQN = "iqn.2026-11.local.scsi-target:guest-smoke"
VENDOR = "STSMOKE"      # INQUIRY T10 VENDOR IDENTIFICATION, 8 bytes max (SPC-4 6.6.2)
PRODUCT = "GUEST-DISK"  # INQUIRY PRODUCT IDENTIFICATION, 16 bytes max


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "lun1.img"
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    return path


@pytest.fixture
def tgtd(tmp_path: Path, backing: Path):
    """tgtd serving the backing file as LUN 1, with our INQUIRY vendor and product."""
    with Tgtd(backing, iqn=IQN, workdir=tmp_path) as t:
        t.tgtadm("--lld", "iscsi", "--mode", "logicalunit", "--op", "update", "--tid", "1",
                 "--lun", "1", "--params", f"vendor_id={VENDOR},product_id={PRODUCT}")
        yield t


@pytest.fixture
def ours(tmp_path: Path, backing: Path):
    """Our target serving the backing file as LUN 0 with the same vendor and product."""
    cfg = tmp_path / "target.toml"
    cfg.write_text(f"""
[[target]]
iqn = "{IQN}"

[[target.lun]]
lun = 0
store = "file"
path = "{backing}"
vendor = "{VENDOR}"
product = "{PRODUCT}"
""")
    with OurTarget(config=cfg, workdir=tmp_path, iqn=IQN) as t:
        yield t


def check(result, backing: Path) -> None:
    assert result.vendor == VENDOR, result
    assert result.model == PRODUCT, result
    assert result.size_bytes == 64 << 20, result
    assert result.backing_checked
    with open(backing, "rb") as f:
        f.seek(PATTERN_OFFSET)
        assert f.read(PATTERN_SIZE) == pattern(result.marker)


@pytest.mark.parametrize("hba", ["virtio-scsi-pci", "megasas", "mptsas1068", "lsi53c895a"])
def test_guest_on_our_target(ours, backing, tmp_path, hba):
    """The guest's INQUIRY shows the target's T10 vendor and product identification (SPC-4
    6.6.2 standard INQUIRY data), READ CAPACITY gives the LUN's size (SBC-4 5.16), and 1 MiB
    written at LBA 2048 with O_DIRECT reads back equal in the guest and is found at byte
    2048 * 512 of the backing file: a WRITE lands at the LBA it addresses (SBC-4 5.32)."""
    result = run_smoke(ours.url, hba=hba, backing=backing, log_path=tmp_path / "console.log")
    check(result, backing)


def test_guest_on_tgtd_reference(tgtd, backing, tmp_path):
    """The same flow against tgtd: the harness is not tuned to our target."""
    result = run_smoke(tgtd.url, hba="virtio-scsi-pci", backing=backing,
                       log_path=tmp_path / "console.log")
    check(result, backing)
