"""RESERVE(6)/(10) and RELEASE(6)/(10) with two I_T nexuses (SPC-2 7.21, 7.16; SPC-4 5.13.3)."""

from __future__ import annotations

import struct

import pytest

from target.scsi.sense import BUS_DEVICE_RESET_FUNCTION_OCCURRED, POWER_ON_OCCURRED
from target.scsi.task import Status
from tests.unit.spc_util import READ10, TUR, check, make_device, make_lu, nexus, ready, run

pytestmark = pytest.mark.unit

CONFLICT = Status.RESERVATION_CONFLICT
I1, I2 = nexus(1), nexus(2)
RESERVE6 = bytes((0x16, 0, 0, 0, 0, 0))
RELEASE6 = bytes((0x17, 0, 0, 0, 0, 0))
RESERVE10 = bytes((0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0))
RELEASE10 = bytes((0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0))
MODE_SENSE = bytes((0x1A, 0, 0x3F, 0, 255, 0))
INQUIRY = bytes((0x12, 0, 0, 0, 36, 0))
REPORT_LUNS = struct.pack(">BBBBBBIBB", 0xA0, 0, 0, 0, 0, 0, 64, 0, 0)


@pytest.fixture
def lu():
    lu = make_lu()
    ready(lu, I1, I2)
    return lu


def ok(task) -> None:
    assert task.status == Status.GOOD, (task.status, task.sense.hex())


def test_reserve_and_release(lu):
    """SPC-2 7.21.2: RESERVE(6), again by the holder, then RELEASE(6)."""
    ok(run(lu, I1, RESERVE6))
    ok(run(lu, I1, RESERVE6))
    ok(run(lu, I1, RELEASE6))
    ok(run(lu, I2, RESERVE6))


def test_other_nexus_conflicts(lu):
    """SPC-2 5.5.1 / 7.21.2: the other nexus gets RESERVATION CONFLICT for RESERVE, media
    access, TEST UNIT READY and MODE SENSE; INQUIRY, REPORT LUNS and REQUEST SENSE pass."""
    ok(run(lu, I1, RESERVE6))
    for cdb in (RESERVE6, RESERVE10, READ10, TUR, MODE_SENSE):
        assert run(lu, I2, cdb).status == CONFLICT, cdb.hex()
    for cdb in (INQUIRY, REPORT_LUNS, bytes((0x03, 0, 0, 0, 18, 0))):
        ok(run(lu, I2, cdb))
    ok(run(lu, I1, MODE_SENSE))
    ok(run(lu, I1, READ10))


def test_release_by_other_nexus_is_a_no_op(lu):
    """SPC-2 7.16.1: RELEASE from a nexus that holds no reservation is GOOD, does nothing."""
    ok(run(lu, I1, RESERVE6))
    ok(run(lu, I2, RELEASE6))
    assert run(lu, I2, RESERVE6).status == CONFLICT
    ok(run(lu, I1, RELEASE6))
    ok(run(lu, I2, RESERVE6))
    ok(run(lu, I2, RELEASE6))


def test_reserve10_and_release10(lu):
    """SPC-2 7.22 / 7.17: the 10-byte forms behave as the 6-byte ones."""
    ok(run(lu, I1, RESERVE10))
    assert run(lu, I2, RESERVE6).status == CONFLICT
    ok(run(lu, I1, RELEASE10))
    ok(run(lu, I2, RESERVE10))


def test_third_party_reserve10_rejected(lu):
    """SPC-2 7.22: 3RDPTY=1 is not supported -> INVALID FIELD IN CDB (byte 1, bit 4)."""
    s = check(run(lu, I1, bytes((0x56, 0x10, 0, 5, 0, 0, 0, 0, 0, 0))))
    assert s.code == (0x05, 0x24, 0x00) and (s.field, s.bit) == (1, 4)


def test_released_on_nexus_loss(lu):
    """SPC-2 5.5.1: an I_T nexus loss releases the reservation of that nexus."""
    ok(run(lu, I1, RESERVE6))
    lu.nexus_lost(I1)
    ok(run(lu, I2, RESERVE6))


def test_nexus_loss_of_another_nexus_keeps_reservation(lu):
    """SPC-2 5.5.1: only the holder's nexus loss releases it."""
    ok(run(lu, I1, RESERVE6))
    lu.nexus_lost(I2)
    assert run(lu, I2, bytes((0x03, 0, 0, 0, 18, 0))).status == Status.GOOD  # clears 29h/00h
    assert run(lu, I2, RESERVE6).status == CONFLICT


@pytest.mark.parametrize("how", ["lu", "warm", "cold"])
def test_released_on_reset(how):
    """SAM-5 6.3 / SPC-2 5.5.1: LU reset and target warm/cold reset release it."""
    dev = make_device(0)
    ready(dev, I1, I2)
    ok(run(dev, I1, RESERVE6))
    if how == "lu":
        dev.lu_reset(0)
    else:
        dev.target_reset(cold=how == "cold")
    code = POWER_ON_OCCURRED if how == "cold" else BUS_DEVICE_RESET_FUNCTION_OCCURRED
    assert check(run(dev, I2, RESERVE6)).code == (0x06, code.asc, code.ascq)
    ok(run(dev, I2, RESERVE6))


def test_persistent_reserve_conflicts_while_reserved(lu):
    """SPC-4 5.13.3: while RESERVE(6) holds, PR OUT and PR IN (but REPORT CAPABILITIES)
    conflict from every nexus, the holder included."""
    ok(run(lu, I1, RESERVE6))
    prin = struct.pack(">BBBBBBBHB", 0x5E, 0, 0, 0, 0, 0, 0, 1024, 0)
    caps = struct.pack(">BBBBBBBHB", 0x5E, 2, 0, 0, 0, 0, 0, 1024, 0)
    prout = struct.pack(">BBBBBIB", 0x5F, 0x06, 0, 0, 0, 24, 0)
    params = struct.pack(">QQ", 0, 0xAA) + bytes(8)
    for n in (I1, I2):
        assert run(lu, n, prin).status == CONFLICT
        assert run(lu, n, prout, params).status == CONFLICT
        ok(run(lu, n, caps))


def test_reserve_conflicts_with_registrations(lu):
    """SPC-4 5.13.3 (CRH=1): with registrations, RESERVE(6) from a non-holder conflicts;
    RELEASE(6) from a registrant is GOOD and does nothing."""
    prout = struct.pack(">BBBBBIB", 0x5F, 0x06, 0, 0, 0, 24, 0)
    ok(run(lu, I1, prout, struct.pack(">QQ", 0, 0xAA) + bytes(8)))
    assert run(lu, I2, RESERVE6).status == CONFLICT
    assert run(lu, I1, RESERVE6).status == CONFLICT  # registered but holds no reservation
    ok(run(lu, I1, RELEASE6))
    assert run(lu, I2, RELEASE6).status == CONFLICT
    reserve = struct.pack(">BBBBBIB", 0x5F, 0x01, 0x03, 0, 0, 24, 0)
    ok(run(lu, I1, reserve, struct.pack(">QQ", 0xAA, 0) + bytes(8)))
    ok(run(lu, I1, RESERVE6))  # the persistent reservation holder: GOOD, no change
