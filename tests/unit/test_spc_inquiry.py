"""INQUIRY: standard data, VPD pages, absent LUNs (SPC-4 6.6, 7.8)."""

from __future__ import annotations

import struct

import pytest

from target.scsi import spc
from target.scsi.task import Identity, Status
from tests.unit.spc_util import TARGET, TARGET_PORT, check, data, make_device, make_lu, nexus, run

pytestmark = pytest.mark.unit

ILLEGAL = 0x05


def inquiry(evpd: int, page: int, alloc: int) -> bytes:
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


def designators(page: bytes) -> list[tuple[int, int, int, int, int, bytes]]:
    """(protocol, code set, piv, association, type, designator) of a VPD 83h page."""
    out = []
    pos = 4
    while pos < 4 + struct.unpack_from(">H", page, 2)[0]:
        b0, b1, _, length = page[pos : pos + 4]
        out.append((b0 >> 4, b0 & 0x0F, b1 >> 7, (b1 >> 4) & 3, b1 & 0x0F,
                    page[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def test_standard_data_fields():
    """SPC-4 6.6.2: PQ 000b/PDT 0, VERSION 06h, HISUP, format 2, CMDQUE, ASCII ids."""
    lu = make_lu(identity=Identity(vendor="VEND", product="PROD", revision="1.2", serial="S1"))
    d = data(run(lu, nexus(1), inquiry(0, 0, 255)))
    assert d[0] == 0x00
    assert d[2] == 0x06
    assert d[3] & 0x0F == 2 and d[3] & 0x10
    assert d[3] & 0xC0 == 0  # AERC, TRMTSK clear (SPC-3+)
    assert d[4] == len(d) - 5
    assert d[7] & 0x02
    assert d[8:16] == b"VEND    "
    assert d[16:32] == b"PROD".ljust(16)
    assert d[32:36] == b"1.2 "
    assert all(c == 0 or 0x20 <= c <= 0x7E for c in d[8:36])


def test_version_descriptors_claim_spc4_and_sbc3():
    """SPC-4 6.6.2 table 143: version descriptors for SAM-5, iSCSI, SPC-4 and SBC-3."""
    d = data(run(make_lu(), nexus(1), inquiry(0, 0, 255)))
    codes = set(struct.unpack_from(">8H", d, 58))
    assert {0x00A0, 0x0960, 0x0460, 0x04C0} <= codes


def test_removable_bit():
    """SPC-4 6.6.2: RMB reflects a removable medium."""
    assert data(run(make_lu(removable=True), nexus(1), inquiry(0, 0, 36)))[1] & 0x80


@pytest.mark.parametrize("alloc", [0, 5, 17, 36, 95, 96, 255, 511, 512])
def test_allocation_length_truncates(alloc):
    """SPC-4 4.2.5.6: data is cut at the ALLOCATION LENGTH (a 16-bit field, 6.6.1)."""
    lu = make_lu()
    full = data(run(lu, nexus(1), inquiry(0, 0, 1024)))
    assert data(run(lu, nexus(1), inquiry(0, 0, alloc))) == full[:alloc]


def test_evpd_zero_with_page_code_is_invalid():
    """SPC-4 6.6.1: EVPD=0 and a non-zero PAGE CODE -> INVALID FIELD IN CDB, byte 2."""
    s = check(run(make_lu(), nexus(1), inquiry(0, 0x80, 255)))
    assert s.code == (ILLEGAL, 0x24, 0x00)
    assert s.sksv and s.cd and s.field == 2


def test_cmddt_is_invalid():
    """SPC-4 6.6.1: the obsolete CMDDT bit set -> INVALID FIELD IN CDB, byte 1 bit 1."""
    s = check(run(make_lu(), nexus(1), inquiry(2, 0, 255)))
    assert s.code == (ILLEGAL, 0x24, 0x00)
    assert (s.field, s.bpv, s.bit) == (1, True, 1)


def test_unknown_vpd_page_is_invalid():
    """SPC-4 6.6.1: a VPD page not implemented -> INVALID FIELD IN CDB, byte 2."""
    s = check(run(make_lu(), nexus(1), inquiry(1, 0xC7, 255)))
    assert s.code == (ILLEGAL, 0x24, 0x00) and s.field == 2


def test_supported_pages_lists_readable_pages_in_order():
    """SPC-4 7.8.16: page 00h lists every page implemented, ascending, itself included."""
    lu = make_lu()
    d = data(run(lu, nexus(1), inquiry(1, 0x00, 255)))
    assert d[1] == 0x00
    pages = list(d[4 : 4 + struct.unpack_from(">H", d, 2)[0]])
    assert pages == sorted(pages)
    assert {0x00, 0x80, 0x83} <= set(pages)
    for p in pages:
        page = data(run(lu, nexus(1), inquiry(1, p, 255)))
        assert page[1] == p
        assert struct.unpack_from(">H", page, 2)[0] == len(page) - 4


def test_unit_serial_number():
    """SPC-4 7.8.17: page 80h carries the PRODUCT SERIAL NUMBER in ASCII."""
    d = data(run(make_lu(identity=Identity(serial="ABC123")), nexus(1), inquiry(1, 0x80, 255)))
    assert d[1] == 0x80 and d[4:] == b"ABC123"


def test_serial_derived_when_not_configured():
    """SPC-4 7.8.17: every LU has a serial; a derived one is stable and differs per LUN."""
    a = make_lu(0, identity=Identity())
    b = make_lu(1, identity=Identity())
    sa = data(run(a, nexus(1), inquiry(1, 0x80, 255)))[4:]
    assert sa and sa == data(run(a, nexus(2), inquiry(1, 0x80, 255)))[4:]
    assert sa != data(run(b, nexus(1), inquiry(1, 0x80, 255)))[4:]


def test_device_identification_designators():
    """SPC-4 7.8.6: NAA, T10 vendor ID, relative target port, target port and device names."""
    lu = make_lu(identity=Identity(vendor="VEND", product="PROD", serial="S42"))
    d = data(run(lu, nexus(1), inquiry(1, 0x83, 1024)))
    assert d[1] == 0x83
    descs = designators(d)
    by = {(assoc, dtype): (proto, cs, piv, body) for proto, cs, piv, assoc, dtype, body in descs}
    proto, cs, piv, naa = by[(0, 0x3)]
    assert cs == 1 and piv == 0 and len(naa) in (8, 16) and naa[0] >> 4 in (3, 5, 6)
    _, cs, _, t10 = by[(0, 0x1)]
    assert cs == 2 and t10 == b"VEND    " + b"PROD".ljust(16) + b"S42"
    proto, cs, piv, rtp = by[(1, 0x4)]
    assert (proto, cs, piv) == (5, 1, 1) and struct.unpack(">HH", rtp) == (0, 1)
    proto, cs, piv, port = by[(1, 0x8)]
    assert (proto, cs, piv) == (5, 3, 1)
    assert len(port) % 4 == 0 and port.rstrip(b"\0") == TARGET_PORT.encode() and port[-1] == 0
    proto, cs, piv, dev = by[(2, 0x8)]
    assert (proto, cs, piv) == (5, 3, 1)
    assert len(dev) % 4 == 0 and dev.rstrip(b"\0") == TARGET.encode()


def test_naa_is_stable_and_follows_serial():
    """SPC-4 7.8.6.6: the LU name is the same through every I_T nexus, distinct per LU."""
    def naa(lu, n):
        return [x[5] for x in designators(data(run(lu, n, inquiry(1, 0x83, 1024))))
                if x[4] == 3][0]

    a = make_lu(identity=Identity(serial="A"))
    b = make_lu(identity=Identity(serial="B"))
    assert naa(a, nexus(1)) == naa(a, nexus(2)) == naa(make_lu(identity=Identity(serial="A")),
                                                        nexus(3))
    assert naa(a, nexus(1)) != naa(b, nexus(1))


def test_configured_naa_is_used():
    """SPC-4 7.8.6.6: a configured NAA identifier is reported as is."""
    naa = bytes.fromhex("6001405abcdef0123456789abcdef012")
    lu = make_lu(identity=Identity(serial="X", naa=naa))
    descs = designators(data(run(lu, nexus(1), inquiry(1, 0x83, 1024))))
    assert [x[5] for x in descs if x[4] == 3] == [naa]


def test_extended_inquiry_page():
    """SPC-4 7.8.7: page 86h is 64 bytes; SIMPLE, ORDERED, HEAD OF QUEUE supported."""
    d = data(run(make_lu(), nexus(1), inquiry(1, 0x86, 255)))
    assert len(d) == 64 and struct.unpack_from(">H", d, 2)[0] == 0x3C
    assert d[5] & 0x07 == 0x07


def test_inquiry_is_not_stopped_by_unit_attention():
    """SAM-5 5.14: INQUIRY reports no pending unit attention and does not clear it."""
    lu = make_lu()
    assert run(lu, nexus(1), inquiry(0, 0, 36)).status == Status.GOOD
    assert check(run(lu, nexus(1), bytes(6))).code == (0x06, 0x29, 0x00)


def test_absent_lun_inquiry():
    """SPC-4 6.6.2: to a LUN with no LU, PERIPHERAL QUALIFIER 011b and DEVICE TYPE 1Fh."""
    dev = make_device(0)
    d = data(run(dev, nexus(1), inquiry(0, 0, 96), lun=5))
    assert d[0] == 0x7F
    assert d[4] == len(d) - 5
    d = data(run(dev, nexus(1), inquiry(1, 0, 96), lun=5))
    assert d[0] == 0x7F and d[1] == 0


def test_absent_lun_inquiry_errors():
    """SPC-4 6.6.1: CDB errors are reported to an absent LUN as well."""
    dev = make_device(0)
    assert check(run(dev, nexus(1), inquiry(0, 0x83, 96), lun=5)).code == (ILLEGAL, 0x24, 0)


def test_absent_lun_other_commands():
    """SPC-4 6.6.2 / SAM-5 5.9: other commands -> LOGICAL UNIT NOT SUPPORTED (25h/00h)."""
    dev = make_device(0)
    assert check(run(dev, nexus(1), bytes(6), lun=3)).code == (ILLEGAL, 0x25, 0x00)


def test_vpd_pages_are_those_of_the_lu_table():
    """SPC-4 7.8.16: the list holds only pages that can be read. An LU whose table is the
    SPC-4 one alone (no SBC-4, no copy manager) lists 00h, 80h, 83h, 86h and refuses B0h and
    8Fh with INVALID FIELD IN CDB at byte 2 (SPC-4 6.6.1: a page not supported)."""
    from target.backing.memory import MemoryStore
    from target.scsi.lu import LogicalUnit

    lu = LogicalUnit(0, MemoryStore(1 << 20), spc.COMMANDS)
    d = data(run(lu, nexus(1), inquiry(1, 0, 255)))
    assert list(d[4:]) == [0x00, 0x80, 0x83, 0x86]
    for page in (0xB0, 0x8F):
        assert check(run(lu, nexus(1), inquiry(1, page, 255))).code == (0x05, 0x24, 0x00)
