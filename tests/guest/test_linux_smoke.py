"""A Linux guest under QEMU boots against an iSCSI LUN and does real I/O through it.

The disk is attached with `scsi-block` through QEMU's iscsi:// driver, so the guest's own
CDBs (INQUIRY, READ CAPACITY, WRITE/READ with O_DIRECT) reach the target. It runs on every
HBA the guests drive against the target chosen with --scsi-target (ours by default), and
against tgtd on virtio-scsi as the reference (the harness is not tuned to our target).
Fixtures: target.testing.plugin (scsi_target, guest); attach modes: qemu.spec.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest

from qemu.smoke import PATTERN_OFFSET, PATTERN_SIZE, check_backing, pattern
from target.testing.plugin import Lun

pytestmark = pytest.mark.guest

HBAS = ["virtio-scsi-pci", "megasas", "mptsas1068", "lsi53c895a"]
LUN = Lun(size=64 << 20, vendor="STSMOKE", product="GUEST-DISK")


def smoke(target, vm) -> None:
    """QMP (the harness's control channel) reports the guest running with exactly the
    target's LUN open as an iscsi backend. INQUIRY vendor and product (SPC-4 6.6.2
    standard INQUIRY data) and the size from READ CAPACITY (SBC-4 5.16) as the guest sees
    them; 1 MiB written at LBA 2048 with O_DIRECT reads back equal and is at byte
    2048 * 512 of the backing file: a WRITE lands at the LBA it addresses (SBC-4 5.32)."""
    assert vm.monitor.status() == "running"
    address = target.address()
    assert [(b["portal"], b["target"], b["lun"]) for b in vm.monitor.iscsi_backends()] == [
        (f"{address.host}:{address.port}", address.iqn, str(address.lun))]
    assert vm.sysfs("device/vendor") == LUN.vendor
    assert vm.sysfs("device/model") == LUN.product
    assert int(vm.sysfs("size")) * 512 == LUN.size
    marker = f"scsi-target-smoke-{secrets.token_hex(8)}"
    vm.write_pattern(marker, PATTERN_OFFSET, PATTERN_SIZE)
    assert vm.read_md5(PATTERN_OFFSET, PATTERN_SIZE) == hashlib.md5(pattern(marker)).hexdigest()
    check_backing(target.backing(), pattern(marker), PATTERN_OFFSET)


@pytest.mark.parametrize("hba", HBAS)
def test_guest_scsi_block(scsi_target, guest, hba):
    target = scsi_target(LUN)
    smoke(target, guest(target, hba=hba, mode="scsi-block"))


def test_guest_on_tgtd_reference(scsi_target, guest):
    """The same flow against tgtd whatever --scsi-target says."""
    target = scsi_target(LUN, kind="tgtd")
    smoke(target, guest(target, hba="virtio-scsi-pci", mode="scsi-block"))
