"""REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).

The usage data of every command is judged by the standard's CDB tables in
test_cdb_usage.py (cdb_spec); here, the answer's structure."""

from __future__ import annotations

import struct

import pytest

from tests.unit import cdb_spec
from tests.unit.spc_util import check, data, make_lu, nexus, ready, run

pytestmark = pytest.mark.unit


def rsoc(option: int = 0, opcode: int = 0, sa: int = 0, rctd: bool = False,
         alloc: int = 65535) -> bytes:
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, (0x80 if rctd else 0) | option, opcode, sa,
                       alloc, 0, 0)


def all_descriptors(d: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(opcode, sa, flags, cdb length, timeouts) of an all-commands answer."""
    out = []
    pos = 4
    end = 4 + struct.unpack_from(">I", d)[0]
    while pos < end:
        op, _, sa, _, flags, length = struct.unpack_from(">BBHBBH", d, pos)
        pos += 8
        to = b""
        if flags & 0x02:
            to = d[pos : pos + 12]
            pos += 12
        out.append((op, sa, flags, length, to))
    return out


@pytest.fixture
def lu():
    lu = make_lu()
    ready(lu, nexus(1))
    return lu


def test_all_commands_match_the_table(lu):
    """SPC-4 6.35.2: one descriptor per command (and service action) of the LU's table."""
    descs = all_descriptors(data(run(lu, nexus(1), rsoc())))
    want = {(c.opcode, c.service_action or 0, c.cdb_length) for c in lu.commands}
    assert {(op, sa, n) for op, sa, _, n, _ in descs} == want
    for op, sa, flags, length, _ in descs:
        has_sa = lu.commands.has_service_actions(op)
        assert bool(flags & 0x01) == has_sa  # SERVACTV
        assert has_sa or sa == 0
        assert flags & 0x02 == 0  # no CTDP without RCTD
        # CDB LENGTH as the standard's CDB table has it (cdb_spec), not as the table says.
        spec = cdb_spec.lookup(op, sa if flags & 0x01 else None)
        assert spec is not None and length == spec.length, (hex(op), sa)


def test_rctd_adds_timeouts_descriptors(lu):
    """SPC-4 6.35.4: RCTD=1 -> CTDP=1 and a timeouts descriptor of length 0Ah each."""
    descs = all_descriptors(data(run(lu, nexus(1), rsoc(rctd=True))))
    assert descs
    for _, _, flags, _, to in descs:
        assert flags & 0x02 and struct.unpack_from(">H", to)[0] == 0x0A


def test_one_command_without_service_action(lu):
    """SPC-4 6.35.3: option 001b -> SUPPORT 011b, CDB SIZE, and the usage data the INQUIRY
    CDB of SPC-4 asks for (cdb_spec, not the table): 12h, EVPD, PAGE CODE, ALLOCATION
    LENGTH, NACA (12 01 FF FF FF 04)."""
    d = data(run(lu, nexus(1), rsoc(1, 0x12)))
    assert d[1] & 0x07 == 0x03
    assert struct.unpack_from(">H", d, 2)[0] == 6
    assert d[4:] == cdb_spec.expected_usage(cdb_spec.lookup(0x12, None)) == bytes.fromhex(
        "1201ffffff04")


def test_one_command_option1_on_service_action_opcode_is_invalid(lu):
    """SPC-4 6.35.1: option 001b for an opcode with service actions -> INVALID FIELD IN CDB."""
    s = check(run(lu, nexus(1), rsoc(1, 0x5E)))
    assert s.code == (0x05, 0x24, 0x00) and s.field == 2


def test_one_command_option2(lu):
    """SPC-4 6.35.1: option 010b needs an opcode with service actions."""
    d = data(run(lu, nexus(1), rsoc(2, 0x5F, 0x01)))
    assert d[1] & 0x07 == 0x03 and d[4] == 0x5F and struct.unpack_from(">H", d, 2)[0] == 10
    assert check(run(lu, nexus(1), rsoc(2, 0x12))).code == (0x05, 0x24, 0x00)


def test_one_command_option3(lu):
    """SPC-4 6.35.1: option 011b reports either kind of opcode."""
    assert data(run(lu, nexus(1), rsoc(3, 0x12, 0x55)))[4] == 0x12
    assert data(run(lu, nexus(1), rsoc(3, 0xA3, 0x0C)))[4] == 0xA3


def test_one_command_not_supported(lu):
    """SPC-4 6.35.3: an unsupported command -> SUPPORT 001b, CDB SIZE 0."""
    d = data(run(lu, nexus(1), rsoc(1, 0xC5)))
    assert d == bytes((0, 0x01, 0, 0))
    assert data(run(lu, nexus(1), rsoc(2, 0x5E, 0x1F)))[1] & 0x07 == 0x01


def test_one_command_with_rctd(lu):
    """SPC-4 6.35.3: RCTD=1 -> CTDP=1 and the timeouts descriptor after the usage data."""
    d = data(run(lu, nexus(1), rsoc(1, 0x00, rctd=True)))
    assert d[1] & 0x80 and len(d) == 4 + 6 + 12


def test_reserved_reporting_option(lu):
    """SPC-4 6.35.1: REPORTING OPTIONS 100b and above -> INVALID FIELD IN CDB."""
    s = check(run(lu, nexus(1), rsoc(4)))
    assert s.code == (0x05, 0x24, 0x00) and (s.field, s.bit) == (2, 2)


def test_allocation_length(lu):
    """SPC-4 4.2.5.6: the answer is cut, the COMMAND DATA LENGTH is not."""
    full = data(run(lu, nexus(1), rsoc()))
    short = data(run(lu, nexus(1), rsoc(alloc=12)))
    assert short == full[:12]
