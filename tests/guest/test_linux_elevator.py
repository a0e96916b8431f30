"""A Linux guest on a LU that seeks: dispatch depth 1 and the rotational disk model, with
the disksort elevator and with fifo. The elevator changes the order in which the LU serves
SIMPLE tasks (SAM-5 8.6.1 lets it), never what they read or write: the guest boots,
writes a pattern the host finds at its LBA, reads it back while other readers keep the
queue full, and powers off cleanly either way.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest

from qemu.smoke import PATTERN_OFFSET, PATTERN_SIZE, check_backing, pattern
from target.testing.plugin import Lun

pytestmark = pytest.mark.guest

READERS = 8


@pytest.mark.parametrize("policy", ["disksort", "fifo"])
def test_guest_on_a_seeking_depth1_lu(scsi_target, guest, policy):
    lun = Lun(size=64 << 20, vendor="STSEEK", product="ROTATIONAL",
              scheduler={"elevator": policy, "dispatch_depth": 1, "disk": {"rpm": 7200}})
    target = scsi_target(lun)
    vm = guest(target, hba="virtio-scsi-pci", mode="scsi-block")
    assert vm.sysfs("device/vendor") == "STSEEK"
    marker = f"scsi-target-{policy}-{secrets.token_hex(8)}"
    vm.write_pattern(marker, PATTERN_OFFSET, PATTERN_SIZE)
    check_backing(target.backing(), pattern(marker), PATTERN_OFFSET)
    # Readers spread over the disk keep several commands queued while the pattern is read.
    readers = " ".join(
        f"dd if=/dev/{vm.disk} of=/dev/null bs=4096 count=40 skip={i * 1900} iflag=direct "
        "2>/dev/null &" for i in range(READERS))
    vm.check(f"{readers} true")
    assert vm.read_md5(PATTERN_OFFSET, PATTERN_SIZE) == hashlib.md5(pattern(marker)).hexdigest()
    vm.check("wait", timeout=120)
    assert vm.poweroff() == 0
