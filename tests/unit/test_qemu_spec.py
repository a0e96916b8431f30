"""QEMU command lines from attach specs (qemu.spec) and the sg3_utils text parsers
(target.testing.scsi_facts): pure, no QEMU started."""

from __future__ import annotations

from pathlib import Path

import pytest

import qemu.guest
from images.linux import LinuxImage
from qemu.guest import GuestError, kernel_cmdline, qemu_argv
from qemu.spec import AttachSpec, TargetAddress, derived_wwn, guest_config
from target.testing.scsi_facts import (
    naa_designators,
    parse_sg_inq,
    parse_sg_readcap,
    parse_sg_vpd_83,
)

pytestmark = pytest.mark.unit

IMAGE = LinuxImage(path=Path("/img"), recipe_hash="0", kernel_release="6.1", vmlinux=Path(
    "/img/vmlinux"), bzimage=Path("/img/vmlinuz"), initrd=Path("/img/initrd.cpio"),
    prompt="st-guest# ", module_groups=(), packages={}, built="")
TARGET = TargetAddress(3260, "iqn.2026-11.local.scsi-target:x", 0)


@pytest.fixture(autouse=True)
def fake_qemu(monkeypatch):
    monkeypatch.setattr(qemu.guest, "qemu_binary", lambda: "/usr/bin/qemu-system-x86_64")


def argv(spec: AttachSpec) -> list[str]:
    return qemu_argv(guest_config(spec, TARGET, IMAGE))


def test_scsi_block_passes_the_url_through():
    a = argv(AttachSpec(hba="megasas", mode="scsi-block"))
    assert "megasas,id=hba" in a
    assert f"if=none,id=d0,file={TARGET.url},format=raw,cache=none" in a
    assert "scsi-block,drive=d0,bus=hba.0" in a
    assert "st_modules=megasas" in a[a.index("-append") + 1]


def test_scsi_hd_on_mptsas_gets_a_wwn():
    a = argv(AttachSpec(hba="mptsas1068", mode="scsi-hd"))
    assert f"scsi-hd,drive=d0,bus=hba.0,wwn={derived_wwn(TARGET)}" in a
    assert derived_wwn(TARGET).startswith("0x5") and len(derived_wwn(TARGET)) == 18
    assert "scsi-hd,drive=d0,bus=hba.0" in argv(AttachSpec(mode="scsi-hd"))


def test_initiator_has_restricted_net_and_no_drive():
    cfg = guest_config(AttachSpec(mode="initiator"), TARGET, IMAGE)
    a = qemu_argv(cfg)
    assert "-drive" not in a and "id=hba" not in " ".join(a)
    netdev = a[a.index("-netdev") + 1]
    assert netdev.startswith("user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:3260-cmd:")
    assert netdev.endswith(" nc 127.0.0.1 3260")
    assert "virtio-net-pci,netdev=n0" in a
    assert "st_modules=iscsi" in kernel_cmdline(cfg)


@pytest.mark.parametrize("spec", [AttachSpec(hba="ide"), AttachSpec(mode="usb"),
                                  AttachSpec(guest="illumos")])
def test_bad_specs(spec):
    with pytest.raises(GuestError):
        guest_config(spec, TARGET, IMAGE)


SG_INQ = """standard INQUIRY:
  PQual=0  PDT=0  RMB=0  LU_CONG=0  hot_pluggable=0  version=0x05  [SPC-3]
    length=66 (0x42)   Peripheral device type: disk
 Vendor identification: STFACTS\x20
 Product identification: SG-UTILS\x20
 Product revision level: 0001
 Unit serial number:                        ST-SERIAL-512
"""

SG_VPD_83 = """Device Identification VPD page:
  Addressed logical unit:
    designator type: T10 vendor identification,  code set: ASCII
      vendor id: IET\x20
      vendor specific: 00010001
    designator type: NAA,  code set: Binary
      0x3000000100000001
    designator type: NAA,  code set: Binary
      0x60000000000000000e00000000010001
  Target port:
    designator type: NAA,  code set: Binary
      0x5000000000000001
"""

SG_READCAP = """Read Capacity results:
   Protection: prot_en=0, p_type=0, p_i_exponent=0
   Last LBA=65535 (0xffff), Number of logical blocks=65536
   Logical block length=512 bytes
"""


def test_sg_parsers():
    inq = parse_sg_inq(SG_INQ)
    assert (inq.vendor, inq.product, inq.serial) == ("STFACTS", "SG-UTILS", "ST-SERIAL-512")
    assert parse_sg_vpd_83(SG_VPD_83) == ["0x3000000100000001",
                                          "0x60000000000000000e00000000010001"]
    cap = parse_sg_readcap(SG_READCAP)
    assert (cap.blocks, cap.block_size) == (65536, 512)


def test_naa_designators_of_a_page_83():
    naa = bytes.fromhex("3000000100000001")
    page = bytes([0, 0x83, 0, 0]) + bytes([1, 0x03, 0, 8]) + naa + bytes([1, 0x93, 0, 4, 1, 2,
                                                                          3, 4])
    page = page[:2] + (len(page) - 4).to_bytes(2, "big") + page[4:]
    assert naa_designators(page) == ["0x3000000100000001"]
