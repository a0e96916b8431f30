"""MODE SENSE / MODE SELECT and the sense format they control (SPC-4 6.9-6.12, 7.5)."""

from __future__ import annotations

import struct

import pytest

from target.scsi.sense import BUS_DEVICE_RESET_FUNCTION_OCCURRED
from target.scsi.task import Status
from tests.unit.spc_util import TUR, check, data, make_lu, nexus, ready, run

pytestmark = pytest.mark.unit

ILLEGAL = 0x05


def sense6(page: int, pc: int = 0, subpage: int = 0, dbd: bool = False, alloc: int = 255):
    return bytes((0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0))


def sense10(page: int, pc: int = 0, subpage: int = 0, dbd: bool = False, llbaa: bool = False,
            alloc: int = 1024) -> bytes:
    b1 = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return struct.pack(">BBBBBBBHB", 0x5A, b1, (pc << 6) | page, subpage, 0, 0, 0, alloc, 0)


def select6(params: bytes, pf: bool = True, sp: bool = False) -> bytes:
    return bytes((0x15, (0x10 if pf else 0) | (1 if sp else 0), 0, 0, len(params), 0))


def select10(params: bytes) -> bytes:
    return struct.pack(">BBBBBBBHB", 0x55, 0x10, 0, 0, 0, 0, 0, len(params), 0)


def pages6(d: bytes) -> dict[int, bytes]:
    """Pages of MODE SENSE(6) data, keyed by page code."""
    pos = 4 + d[3]
    out = {}
    while pos < d[0] + 1:
        out[d[pos] & 0x3F] = d[pos : pos + 2 + d[pos + 1]]
        pos += 2 + d[pos + 1]
    return out


def setup():
    lu = make_lu(size=4 << 20)
    ready(lu, nexus(1), nexus(2))
    return lu


def control_page(lu, n=None) -> bytearray:
    return bytearray(pages6(data(run(lu, n or nexus(1), sense6(0x0A, dbd=True))))[0x0A])


def test_all_pages_header_and_block_descriptor():
    """SPC-4 7.5.4 / SBC-4 6.5.2: header, one short block descriptor, pages ascending."""
    lu = setup()
    d = data(run(lu, nexus(1), sense6(0x3F)))
    assert d[0] == len(d) - 1
    assert d[1] == 0 and d[2] & 0x10  # medium type 0, DPOFUA
    assert d[2] & 0x80 == 0  # WP clear
    assert d[3] == 8
    blocks, size = struct.unpack_from(">II", d, 4)
    assert (blocks, size & 0xFFFFFF) == (lu.num_blocks, 512)
    pages = pages6(d)
    assert list(pages) == sorted(pages) and {0x01, 0x08, 0x0A} <= set(pages)


def test_page_alone_matches_all_pages():
    """SPC-4 7.5.7: a page read alone equals the same page within page 3Fh."""
    lu = setup()
    allp = pages6(data(run(lu, nexus(1), sense6(0x3F))))
    for code, page in allp.items():
        assert pages6(data(run(lu, nexus(1), sense6(code)))) == {code: page}
        assert pages6(data(run(lu, nexus(1), sense6(code, subpage=0xFF)))) == {code: page}


def test_control_page_values():
    """SPC-4 7.5.8: TST 000b, QAM 0, QERR 00b, D_SENSE 0 by default, page length 0Ah."""
    page = control_page(setup())
    assert page[1] == 0x0A
    assert page[2] & 0xE0 == 0 and page[2] & 0x04 == 0
    assert page[3] >> 4 in (0, 1) and (page[3] >> 1) & 3 != 2
    assert (page[4] >> 4) & 3 != 1


def test_dbd_omits_block_descriptors():
    """SPC-4 6.11.1: DBD=1 -> BLOCK DESCRIPTOR LENGTH 0."""
    d = data(run(setup(), nexus(1), sense6(0x08, dbd=True)))
    assert d[3] == 0 and d[4] == 0x08


def test_mode_sense10_long_lba_descriptor():
    """SPC-4 7.5.5 / SBC-4 6.5.2.3: LLBAA=1 -> LONGLBA=1 and a 16-byte descriptor."""
    lu = setup()
    d = data(run(lu, nexus(1), sense10(0x0A, llbaa=True)))
    assert struct.unpack_from(">H", d)[0] == len(d) - 2
    assert d[4] & 0x01 and struct.unpack_from(">H", d, 6)[0] == 16
    blocks, _, size = struct.unpack_from(">QII", d, 8)
    assert (blocks, size) == (lu.num_blocks, 512)
    d = data(run(lu, nexus(1), sense10(0x0A)))
    assert d[4] & 0x01 == 0 and struct.unpack_from(">H", d, 6)[0] == 8


def test_changeable_and_default_values():
    """SPC-4 6.11.1: PC=01b gives the changeable mask, PC=10b the defaults."""
    lu = setup()
    mask = pages6(data(run(lu, nexus(1), sense6(0x3F, pc=1, dbd=True))))
    assert mask[0x08][2] & 0x04  # WCE
    assert mask[0x0A][2] & 0x04 and mask[0x0A][4] & 0x08  # D_SENSE, SWP
    assert not any(mask[0x01][2:])
    default = pages6(data(run(lu, nexus(1), sense6(0x3F, pc=2, dbd=True))))
    assert default[0x0A][2] & 0x04 == 0


def test_saved_values_not_supported():
    """SPC-4 6.11.1: PC=11b without saved pages -> SAVING PARAMETERS NOT SUPPORTED."""
    s = check(run(setup(), nexus(1), sense6(0x3F, pc=3)))
    assert s.code == (ILLEGAL, 0x39, 0x00)


def test_unknown_page_and_subpage():
    """SPC-4 6.11.1: an unsupported page or subpage -> INVALID FIELD IN CDB."""
    lu = setup()
    s = check(run(lu, nexus(1), sense6(0x19)))
    assert s.code == (ILLEGAL, 0x24, 0x00) and (s.field, s.bit) == (2, 5)
    s = check(run(lu, nexus(1), sense6(0x0A, subpage=1)))
    assert s.code == (ILLEGAL, 0x24, 0x00) and s.field == 3


def test_truncation_keeps_mode_data_length():
    """SPC-4 4.2.5.6: 4 bytes allocated -> 4 bytes sent, MODE DATA LENGTH of the whole."""
    lu = setup()
    full = data(run(lu, nexus(1), sense6(0x3F)))
    short = data(run(lu, nexus(1), sense6(0x3F, alloc=4)))
    assert short == full[:4] and short[0] == len(full) - 1


def test_mode_select_d_sense_switches_sense_format():
    """SPC-4 7.5.8 / 4.5.1: D_SENSE=1 -> descriptor sense (72h) with the field pointer."""
    lu = setup()
    page = control_page(lu)
    assert check(run(lu, nexus(1), sense6(0x19))).response_code == 0x70
    page[2] |= 0x04
    params = bytes(4) + page
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    assert lu.mode.d_sense
    s = check(run(lu, nexus(1), sense6(0x19)))
    assert s.response_code == 0x72 and s.sksv and s.cd and (s.field, s.bit) == (2, 5)
    page[2] &= ~0x04
    params = bytes(4) + page
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    assert check(run(lu, nexus(1), sense6(0x19))).response_code == 0x70


def test_mode_select_swp_sets_wp():
    """SPC-4 7.5.8 / SBC-4 6.5.1: SWP=1 -> WP=1 in the device-specific parameter."""
    lu = setup()
    page = control_page(lu)
    page[4] |= 0x08
    params = bytes(4) + page
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    assert lu.mode.swp and lu.mode.write_protected
    assert data(run(lu, nexus(1), sense6(0x0A)))[2] & 0x80
    assert control_page(lu)[4] & 0x08


def test_read_only_lu_reports_wp():
    """SBC-4 6.5.1: a write-protected LU sets WP."""
    lu = make_lu(read_only=True)
    ready(lu, nexus(1))
    assert data(run(lu, nexus(1), sense6(0x3F)))[2] & 0x80


def test_mode_select_wce():
    """SBC-4 6.5.5: WCE is changeable; lu.mode.wce follows it."""
    lu = setup()
    assert lu.mode.wce
    cache = bytearray(pages6(data(run(lu, nexus(1), sense6(0x08, dbd=True))))[0x08])
    cache[2] &= ~0x04
    params = bytes(8) + cache
    assert run(lu, nexus(1), select10(params), params).status == Status.GOOD
    assert not lu.mode.wce
    assert pages6(data(run(lu, nexus(1), sense6(0x08))))[0x08][2] & 0x04 == 0


def test_mode_select_unchangeable_field_points_into_parameter_list():
    """SPC-4 6.9.1: a non-changeable field changed -> INVALID FIELD IN PARAMETER LIST, C/D=0."""
    lu = setup()
    page = control_page(lu)
    page[2] |= 0x20  # TST=001b is not changeable
    params = bytes(4) + page
    s = check(run(lu, nexus(1), select6(params), params))
    assert s.code == (ILLEGAL, 0x26, 0x00)
    assert s.sksv and not s.cd and (s.field, s.bpv, s.bit) == (4 + 2, True, 5)


def test_mode_select_bad_page_length_and_unknown_page():
    """SPC-4 6.9.1: a wrong PAGE LENGTH or an unknown page -> INVALID FIELD IN PARAMETER LIST."""
    lu = setup()
    page = control_page(lu)
    page[1] = 0x08
    params = bytes(4) + page[:10]
    s = check(run(lu, nexus(1), select6(params), params))
    assert s.code == (ILLEGAL, 0x26, 0x00) and s.field == 5
    params = bytes(4) + bytes((0x19, 0x06)) + bytes(6)
    s = check(run(lu, nexus(1), select6(params), params))
    assert s.code == (ILLEGAL, 0x26, 0x00) and s.field == 4


def test_mode_select_invalid_qam():
    """SPC-4 7.5.8: QUEUE ALGORITHM MODIFIER 2h..Fh is rejected; 1h is accepted."""
    lu = setup()
    page = control_page(lu)
    page[3] = (page[3] & 0x0F) | 0x20
    params = bytes(4) + page
    assert check(run(lu, nexus(1), select6(params), params)).code == (ILLEGAL, 0x26, 0)
    page[3] = (page[3] & 0x0F) | 0x10
    params = bytes(4) + page
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    assert lu.mode.qam == 1


def test_mode_select_truncated_list():
    """SPC-4 6.9.1: a page cut short by the list -> PARAMETER LIST LENGTH ERROR (1Ah/00h)."""
    lu = setup()
    params = bytes(4) + bytes(control_page(lu))[:6]
    assert check(run(lu, nexus(1), select6(params), params)).code == (ILLEGAL, 0x1A, 0x00)


def test_mode_select_sp_rejected():
    """SPC-4 6.9.1: SP=1 with no saved pages -> INVALID FIELD IN CDB, byte 1 bit 0."""
    lu = setup()
    params = bytes(4) + control_page(lu)
    s = check(run(lu, nexus(1), select6(params, sp=True), params))
    assert s.code == (ILLEGAL, 0x24, 0x00) and (s.field, s.bit) == (1, 0)


def test_mode_select_block_descriptor():
    """SBC-4 6.5.2: the descriptor's LOGICAL BLOCK LENGTH must be the current one."""
    lu = setup()
    good = bytes((0, 0, 0, 8)) + struct.pack(">II", 0, 512)
    assert run(lu, nexus(1), select6(good), good).status == Status.GOOD
    bad = bytes((0, 0, 0, 8)) + struct.pack(">II", 0, 4096)
    s = check(run(lu, nexus(1), select6(bad), bad))
    assert s.code == (ILLEGAL, 0x26, 0x00) and s.field == 4 + 5


def test_mode_select_medium_type_must_be_zero():
    """SBC-4 6.5.1: MEDIUM TYPE 00h."""
    lu = setup()
    params = bytes((0, 1, 0, 0))
    assert check(run(lu, nexus(1), select6(params), params)).field == 1


def test_mode_parameters_changed_ua_to_other_nexuses():
    """SPC-4 7.5.1: a change -> MODE PARAMETERS CHANGED (2Ah/01h) to the other nexuses only."""
    lu = setup()
    page = control_page(lu)
    page[5] |= 0x40  # TAS
    params = bytes(4) + page
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    assert lu.mode.tas
    assert run(lu, nexus(1), TUR).status == Status.GOOD
    assert check(run(lu, nexus(2), TUR)).code == (0x06, 0x2A, 0x01)
    assert run(lu, nexus(2), TUR).status == Status.GOOD


def test_mode_select_without_change_raises_no_ua():
    """SPC-4 7.5.1: the same values sent back change nothing and raise no unit attention."""
    lu = setup()
    params = bytes(4) + control_page(lu)
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    assert run(lu, nexus(2), TUR).status == Status.GOOD


def test_mode_select_zero_length_is_a_no_op():
    """SPC-4 6.9.1: PARAMETER LIST LENGTH 0 transfers nothing and is not an error."""
    assert run(setup(), nexus(1), select6(b"")).status == Status.GOOD


def test_reset_restores_defaults():
    """SAM-5 6.3: a logical unit reset returns mode parameters to their defaults."""
    lu = setup()
    page = control_page(lu)
    page[2] |= 0x04
    page[4] |= 0x08
    params = bytes(4) + page
    assert run(lu, nexus(1), select6(params), params).status == Status.GOOD
    lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    assert not lu.mode.d_sense and not lu.mode.swp
