"""An illumos guest (OmniOS/OpenIndiana) boots against our target and sees its LUN.

Runs where an illumos image is present (images.illumos.find()); otherwise every test is
skipped with the instruction to provide one (`scsi-target image build illumos --from PATH`,
or SCSI_TARGET_ILLUMOS_IMAGE=PATH). The LUN is attached with scsi-block, so sd(4D)'s own
INQUIRY reaches the target (SPC-4 6.6.2) and iostat -En shows its identification.
"""

from __future__ import annotations

import pytest

from qemu.illumos import boot_hbas
from target.testing.plugin import Lun

pytestmark = pytest.mark.guest

LUN = Lun(size=256 << 20, vendor="STILLUM", product="DUMP-DISK", serial="ST0000ILLUMOS1")


# The HBAs whose illumos driver binds QEMU's PCI id (qemu.illumos.HBAS, pvscsi first); the
# others are refused by check_hba() with the source that shows why
# (tests/unit/test_illumos.py checks that).
@pytest.mark.parametrize("hba", [h.model for h in boot_hbas()])
def test_illumos_boots_logs_in_and_sees_the_lun(scsi_target, illumos_guest, hba):
    target = scsi_target(LUN)
    vm = illumos_guest(target, hba=hba)
    assert vm.check("uname -s").strip() == "SunOS"
    vm.check("devfsadm -c disk", timeout=300)
    ours = [d for d in vm.disks().values() if d.get("vendor") == LUN.vendor]
    assert len(ours) == 1, vm.check("iostat -En")
    assert ours[0]["product"] == LUN.product
    assert int(ours[0]["size_bytes"]) == LUN.size
    assert vm.poweroff() == 0
