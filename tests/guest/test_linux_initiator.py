"""The Linux kernel's own iSCSI initiator (iscsistart, iscsi_tcp) in a guest uses the target.

The guest has no disk from QEMU: it logs in over virtio-net (QEMU user networking with
restrict=on, the portal forwarded to the target on 127.0.0.1; qemu.spec "initiator"),
the kernel scans the LUN (REPORT LUNS, INQUIRY, READ CAPACITY), and plain dd moves data
both ways: what the guest writes is in the backing file, what the host writes into the
backing file is what the guest reads.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest

from qemu.smoke import check_backing, pattern
from target.testing.plugin import Lun

pytestmark = pytest.mark.guest

LUN = Lun(size=64 << 20, vendor="STISCSI", product="KERNEL-INIT")
GUEST_WRITES_AT = 8 << 20
HOST_WRITES_AT = 16 << 20
SIZE = 1 << 20


def test_in_guest_initiator(scsi_target, guest):
    target = scsi_target(LUN)
    vm = guest(target, mode="initiator")
    print(f"in-guest login {vm.login_seconds:.2f} s")
    # The session is to our target and the kernel made an sd disk of the LUN.
    assert vm.check("cat /sys/class/iscsi_session/session*/targetname").strip() == target.iqn
    assert vm.sysfs("device/vendor") == LUN.vendor
    assert vm.sysfs("device/model") == LUN.product
    assert int(vm.sysfs("size")) * 512 == LUN.size

    marker = f"scsi-target-iscsi-{secrets.token_hex(8)}"
    vm.write_pattern(marker, GUEST_WRITES_AT, SIZE)
    check_backing(target.backing(), pattern(marker), GUEST_WRITES_AT)

    data = os.urandom(SIZE)
    fd = os.open(target.backing(), os.O_WRONLY)
    try:
        os.pwrite(fd, data, HOST_WRITES_AT)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert vm.read_md5(HOST_WRITES_AT, SIZE) == hashlib.md5(data).hexdigest()
