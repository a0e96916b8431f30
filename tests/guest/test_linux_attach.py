"""What the guest's sg3_utils see matches what the target says, per attach mode.

`scsi-block` passes the guest's CDBs through: sg_inq, sg_vpd -p 0x83 and sg_readcap -l
in the guest must print what the target itself answers to INQUIRY, VPD 80h/83h and READ
CAPACITY(16) asked from the host (target.testing.scsi_facts). `scsi-hd` makes QEMU answer
SCSI itself: the guest sees QEMU's identity but the target's capacity and data.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest

from qemu.smoke import check_backing, pattern
from target.testing.plugin import Lun
from target.testing.scsi_facts import parse_sg_inq, parse_sg_readcap, parse_sg_vpd_83

pytestmark = pytest.mark.guest

OFFSET = 4 << 20


def guest_facts(vm):
    inq = parse_sg_inq(vm.check(f"sg_inq /dev/{vm.disk}"))
    naa = parse_sg_vpd_83(vm.check(f"sg_vpd -p 0x83 /dev/{vm.disk}"))
    cap = parse_sg_readcap(vm.check(f"sg_readcap -l /dev/{vm.disk}"))
    return inq, naa, cap


@pytest.mark.parametrize("block_size", [512, 4096])
def test_sg_utils_through_scsi_block(scsi_target, guest, block_size):
    """Standard INQUIRY T10 vendor and product identification (SPC-4 6.6.2), the unit
    serial number (VPD 80h, SPC-4 7.8.15), the NAA designator of the logical unit (VPD 83h,
    SPC-4 7.8.6.6), the number of logical blocks and the block length (READ CAPACITY(16),
    SBC-4 5.16) reach the guest unchanged through scsi-block."""
    lun = Lun(size=32 << 20, block_size=block_size, vendor="STFACTS", product="SG-UTILS",
              serial=f"ST-SERIAL-{block_size}")
    target = scsi_target(lun)
    said = target.facts()
    assert (said.vendor, said.product, said.serial) == (lun.vendor, lun.product, lun.serial)
    assert (said.blocks, said.block_size) == (lun.size // block_size, block_size)
    inq, naa, cap = guest_facts(guest(target, hba="virtio-scsi-pci", mode="scsi-block"))
    assert (inq.vendor, inq.product, inq.serial) == (said.vendor, said.product, said.serial)
    assert naa and naa == said.naa  # ours gives one NAA 3h designator, tgtd two
    assert (cap.blocks, cap.block_size) == (said.blocks, said.block_size)


def test_scsi_hd_qemu_answers_for_the_target(scsi_target, guest):
    """With scsi-hd QEMU emulates the disk: INQUIRY and VPD 83h are QEMU's, not the
    target's, while the capacity and the data are the target's LUN."""
    lun = Lun(size=32 << 20, vendor="STFACTS", product="SCSI-HD")
    target = scsi_target(lun)
    said = target.facts()
    vm = guest(target, hba="virtio-scsi-pci", mode="scsi-hd")
    inq, naa, cap = guest_facts(vm)
    print(f"target says {said}; guest sees {inq}, NAA {naa}, {cap}")
    assert (inq.vendor, inq.product) == ("QEMU", "QEMU HARDDISK")
    assert not set(naa) & set(said.naa)
    assert (cap.blocks, cap.block_size) == (said.blocks, said.block_size)
    marker = f"scsi-target-hd-{secrets.token_hex(8)}"
    vm.write_pattern(marker, OFFSET)
    assert vm.read_md5(OFFSET) == hashlib.md5(pattern(marker)).hexdigest()
    check_backing(target.backing(), pattern(marker), OFFSET)
