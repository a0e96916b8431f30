"""TEST UNIT READY, REQUEST SENSE, REPORT LUNS, unit attentions (SPC-4 6.47, 6.39, 6.33)."""

from __future__ import annotations

import struct

import pytest

from target.scsi.sense import BUS_DEVICE_RESET_FUNCTION_OCCURRED
from target.scsi.task import Status, encode_lun
from tests.unit.spc_util import (
    TUR,
    check,
    data,
    make_device,
    make_lu,
    nexus,
    parse_sense,
    ready,
    run,
)

pytestmark = pytest.mark.unit

UNIT_ATTENTION = 0x06


def request_sense(desc: int = 0, alloc: int = 252) -> bytes:
    return bytes((0x03, desc, 0, 0, alloc, 0))


def report_luns(select: int = 0, alloc: int = 4096) -> bytes:
    return struct.pack(">BBBBBBIBB", 0xA0, 0, select, 0, 0, 0, alloc, 0, 0)


def test_first_contact_unit_attention_then_good():
    """SAM-5 5.14: the first command of a new I_T nexus gets 29h/00h; the next is GOOD."""
    lu = make_lu()
    s = check(run(lu, nexus(1), TUR))
    assert s.code == (UNIT_ATTENTION, 0x29, 0x00)
    assert run(lu, nexus(1), TUR).status == Status.GOOD


def test_unit_attention_is_per_nexus():
    """SAM-5 5.14: clearing the UA of one I_T nexus leaves another nexus's pending."""
    lu = make_lu()
    ready(lu, nexus(1))
    assert check(run(lu, nexus(2), TUR)).code == (UNIT_ATTENTION, 0x29, 0x00)


def test_cleared_nexus_is_known_with_nothing_pending():
    """UnitAttentions.clear() (what the unit tests use for "a known nexus with nothing
    pending") leaves a nexus as the product path does once its first command has had the
    29h/00h (SAM-5 5.14): GOOD at once, and still known, so a later LU reset reaches it
    (SAM-5 6.3: every I_T nexus gets 29h/03h). forget() makes it a stranger again."""
    lu = make_lu()
    ready(lu, nexus(1))  # the product path: the first command consumes the 29h/00h
    lu.ua.clear(nexus(2))
    assert run(lu, nexus(2), TUR).status == Status.GOOD
    lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    for n in (nexus(1), nexus(2)):
        assert check(run(lu, n, TUR)).code == (UNIT_ATTENTION, 0x29, 0x03)
        assert run(lu, n, TUR).status == Status.GOOD
    lu.ua.forget(nexus(2))
    assert check(run(lu, nexus(2), TUR)).code == (UNIT_ATTENTION, 0x29, 0x00)


def test_unit_attentions_of_one_nexus_object_held_across_commands():
    """SAM-5 5.14 and 6.3 for a connection's one Nexus object used by every command (what
    UnitAttentions remembers between calls): the 29h/00h once, a LU reset's 29h/03h once,
    and a clear() or forget() made through an equal but distinct Nexus (another
    connection of the same names, I_T nexus loss) takes effect for the held object."""
    lu = make_lu()
    held = nexus(1)
    assert check(run(lu, held, TUR)).code == (UNIT_ATTENTION, 0x29, 0x00)
    assert run(lu, held, TUR).status == Status.GOOD
    lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    assert check(run(lu, held, TUR)).code == (UNIT_ATTENTION, 0x29, 0x03)
    assert run(lu, held, TUR).status == Status.GOOD
    lu.nexus_lost(nexus(1))  # an equal object: the nexus is gone, a stranger again
    assert check(run(lu, held, TUR)).code == (UNIT_ATTENTION, 0x29, 0x00)
    lu.ua.establish(BUS_DEVICE_RESET_FUNCTION_OCCURRED, nexus=held)
    lu.ua.clear(nexus(1))  # known, nothing pending
    assert run(lu, held, TUR).status == Status.GOOD


def test_request_sense_returns_and_clears_unit_attention():
    """SPC-4 6.39: REQUEST SENSE returns the pending UA as data, GOOD status, and clears it."""
    lu = make_lu()
    t = run(lu, nexus(1), request_sense())
    assert t.status == Status.GOOD
    assert parse_sense(data(t)).code == (UNIT_ATTENTION, 0x29, 0x00)
    assert run(lu, nexus(1), TUR).status == Status.GOOD


def test_request_sense_no_sense():
    """SPC-4 6.39: nothing to report -> NO SENSE, NO ADDITIONAL SENSE INFORMATION."""
    lu = make_lu()
    ready(lu, nexus(1))
    d = data(run(lu, nexus(1), request_sense()))
    assert d[0] == 0x70 and parse_sense(d).code == (0, 0, 0)
    assert len(d) == 18


def test_request_sense_desc_bit_selects_descriptor_format():
    """SPC-4 6.39: DESC=1 -> descriptor-format sense data (response code 72h)."""
    lu = make_lu()
    d = data(run(lu, nexus(1), request_sense(desc=1)))
    assert d[0] == 0x72 and parse_sense(d).code == (UNIT_ATTENTION, 0x29, 0x00)


def test_request_sense_allocation_length():
    """SPC-4 6.39: the sense data is cut at the ALLOCATION LENGTH."""
    lu = make_lu()
    ready(lu, nexus(1))
    assert data(run(lu, nexus(1), request_sense(alloc=8))) == data(
        run(lu, nexus(1), request_sense())
    )[:8]


def test_reset_unit_attention_and_request_sense():
    """SAM-5 6.3: LOGICAL UNIT RESET -> 29h/03h to every nexus, reported by REQUEST SENSE."""
    lu = make_lu()
    ready(lu, nexus(1), nexus(2))
    lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    for n in (nexus(1), nexus(2)):
        assert parse_sense(data(run(lu, n, request_sense()))).code == (UNIT_ATTENTION, 0x29, 3)
        assert run(lu, n, TUR).status == Status.GOOD


def test_test_unit_ready_without_medium():
    """SPC-4 6.47 / SBC-4 4.2: no medium -> NOT READY, MEDIUM NOT PRESENT (3Ah/00h)."""
    lu = make_lu()
    ready(lu, nexus(1))
    lu.medium_present = False
    assert check(run(lu, nexus(1), TUR)).code == (0x02, 0x3A, 0x00)
    assert parse_sense(data(run(lu, nexus(1), request_sense()))).code == (0x02, 0x3A, 0x00)


def test_report_luns_lists_every_lu():
    """SPC-4 6.33.2: LUN LIST LENGTH, then one 8-byte LUN per LU, whatever LUN it is sent to."""
    dev = make_device(0, 3, 1, 300)
    for lun in (0, 3, 7):
        d = data(run(dev, nexus(1), report_luns(), lun=lun))
        length = struct.unpack_from(">I", d)[0]
        assert length == 32 and len(d) == 8 + length
        assert [d[8 + 8 * i : 16 + 8 * i] for i in range(4)] == [
            encode_lun(n) for n in (0, 1, 3, 300)
        ]


def test_report_luns_select_report():
    """SPC-4 6.33.1 table 169: 01h (well-known LUs only) is empty here; 03h is invalid."""
    dev = make_device(0)
    d = data(run(dev, nexus(1), report_luns(select=1)))
    assert struct.unpack_from(">I", d)[0] == 0
    assert struct.unpack_from(">I", data(run(dev, nexus(1), report_luns(select=2))))[0] == 8
    s = check(run(dev, nexus(1), report_luns(select=3)))
    assert s.code == (0x05, 0x24, 0x00) and s.field == 2


def test_report_luns_allocation_length_under_16():
    """SPC-4 6.33.1: an ALLOCATION LENGTH under 16 -> INVALID FIELD IN CDB (byte 6)."""
    s = check(run(make_device(0), nexus(1), report_luns(alloc=15)))
    assert s.code == (0x05, 0x24, 0x00) and s.cd and s.field == 6


def test_report_luns_truncated():
    """SPC-4 4.2.5.6: the LUN LIST LENGTH is the full length even when data is cut."""
    dev = make_device(0, 1, 2)
    d = data(run(dev, nexus(1), report_luns(alloc=16)))
    assert len(d) == 16 and struct.unpack_from(">I", d)[0] == 24


def test_report_luns_ignores_unit_attention():
    """SAM-5 5.14: REPORT LUNS is served with a UA pending and leaves it pending."""
    dev = make_device(0)
    assert run(dev, nexus(1), report_luns()).status == Status.GOOD
    assert check(run(dev, nexus(1), TUR)).code == (UNIT_ATTENTION, 0x29, 0x00)


def test_naca_is_rejected():
    """SAM-5 5.2: NACA=1 in the CONTROL byte is INVALID FIELD IN CDB (ACA unsupported)."""
    lu = make_lu()
    ready(lu, nexus(1))
    s = check(run(lu, nexus(1), bytes((0, 0, 0, 0, 0, 0x04))))
    assert s.code == (0x05, 0x24, 0x00) and (s.field, s.bit) == (5, 2)


def test_unsupported_opcode():
    """SPC-4 4.2.1: an opcode not in the table -> INVALID COMMAND OPERATION CODE."""
    lu = make_lu()
    ready(lu, nexus(1))
    assert check(run(lu, nexus(1), bytes((0xC5, 0, 0, 0, 0, 0)))).code == (0x05, 0x20, 0x00)


def test_make_disk_serves_spc_commands():
    """SBC-4 4.1: a disk LU answers the SPC-4 commands through the joined table."""
    from target.backing.memory import MemoryStore
    from target.scsi import spc
    from target.scsi.disk import DISK_COMMANDS, make_disk

    lu = make_disk(0, MemoryStore(1 << 20))
    assert all(DISK_COMMANDS.find(c.opcode, c.service_action) is c for c in spc.COMMANDS)
    assert data(run(lu, nexus(1), bytes((0x12, 0, 0, 0, 36, 0))))[0] == 0x00
