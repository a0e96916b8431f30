"""PERSISTENT RESERVE IN / OUT with two and three I_T nexuses (SPC-4 5.13, 6.15, 6.16)."""

from __future__ import annotations

import struct

import pytest

from target.scsi.sense import BUS_DEVICE_RESET_FUNCTION_OCCURRED
from target.scsi.task import Status
from tests.unit.spc_util import READ10, TUR, WRITE10, check, data, make_lu, nexus, ready, run

pytestmark = pytest.mark.unit

CONFLICT = Status.RESERVATION_CONFLICT
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
I1, I2, I3 = nexus(1), nexus(2), nexus(3)


def prin(sa: int, alloc: int = 8192) -> bytes:
    return struct.pack(">BBBBBBBHB", 0x5E, sa, 0, 0, 0, 0, 0, alloc, 0)


def prout(lu, n, sa: int, key: int = 0, sa_key: int = 0, type_: int = 0, flags: int = 0,
          plen: int = 24):
    params = struct.pack(">QQIBBH", key, sa_key, 0, flags, 0, 0)
    cdb = struct.pack(">BBBBBIB", 0x5F, sa, type_, 0, 0, plen, 0)
    return run(lu, n, cdb, params[:plen])


def register(lu, n, key, old=0):
    return prout(lu, n, 0x00, old, key)


def reserve(lu, n, key, type_):
    return prout(lu, n, 0x01, key, type_=type_)


def release(lu, n, key, type_):
    return prout(lu, n, 0x02, key, type_=type_)


def read_keys(lu, n=I1) -> tuple[int, list[int]]:
    d = data(run(lu, n, prin(0)))
    gen, length = struct.unpack_from(">II", d)
    return gen, [struct.unpack_from(">Q", d, 8 + 8 * i)[0] for i in range(length // 8)]


def read_reservation(lu, n=I1) -> tuple[int, int] | None:
    d = data(run(lu, n, prin(1)))
    if struct.unpack_from(">I", d, 4)[0] == 0:
        return None
    key, _, _, scope_type, _ = struct.unpack_from(">QIBBH", d, 8)
    return key, scope_type


@pytest.fixture
def lu():
    lu = make_lu()
    ready(lu, I1, I2, I3)
    return lu


def ok(task) -> None:
    assert task.status == Status.GOOD, (task.status, task.sense.hex())


def test_register_read_keys_and_generation(lu):
    """SPC-4 5.13.7, 6.15.2: REGISTER adds a key; PRGENERATION counts the registrations."""
    gen0, keys = read_keys(lu)
    assert keys == []
    ok(register(lu, I1, 0x1111))
    ok(register(lu, I2, 0x2222))
    gen, keys = read_keys(lu)
    assert keys == [0x1111, 0x2222] and gen == gen0 + 2


def test_register_with_wrong_key_conflicts(lu):
    """SPC-4 5.13.7: a registered nexus's REGISTER with a wrong RESERVATION KEY conflicts."""
    ok(register(lu, I1, 0xAA))
    assert register(lu, I1, 0xAB).status == CONFLICT
    assert register(lu, I2, 0xBB, old=0x99).status == CONFLICT  # unregistered, key != 0
    ok(register(lu, I1, 0xAC, old=0xAA))
    assert read_keys(lu)[1] == [0xAC]


def test_unregister(lu):
    """SPC-4 5.13.10: SERVICE ACTION RESERVATION KEY 0 removes the registration."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I1, 0, old=0xAA))
    assert read_keys(lu)[1] == []


def test_register_and_ignore(lu):
    """SPC-4 6.16.2: REGISTER AND IGNORE EXISTING KEY ignores the RESERVATION KEY."""
    ok(register(lu, I1, 0xAA))
    ok(prout(lu, I1, 0x06, 0x1234, 0xBB))
    assert read_keys(lu)[1] == [0xBB]


def test_read_keys_truncated(lu):
    """SPC-4 6.15.2: ADDITIONAL LENGTH is not changed by a short ALLOCATION LENGTH."""
    ok(register(lu, I1, 0xAA))
    d = data(run(lu, I1, prin(0, alloc=8)))
    assert len(d) == 8 and struct.unpack_from(">I", d, 4)[0] == 8


def test_report_capabilities(lu):
    """SPC-4 6.15.4: LENGTH 8, every type in the mask, ALLOW COMMANDS <= 5."""
    d = data(run(lu, I1, prin(2)))
    assert struct.unpack_from(">H", d)[0] == 8
    assert (d[3] >> 4) & 7 <= 5 and d[3] & 0x80
    assert struct.unpack_from(">H", d, 4)[0] == 0xEA01


def test_prin_bad_service_action(lu):
    """SPC-4 6.15.1: service actions 04h-1Fh are reserved -> CHECK CONDITION."""
    assert check(run(lu, I1, prin(4))).code == (0x05, 0x24, 0x00)


@pytest.mark.parametrize("type_", [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR])
def test_reserve_read_reservation_release(lu, type_):
    """SPC-4 5.13.9, 6.15.3: RESERVE is reported by READ RESERVATION; RELEASE removes it."""
    ok(register(lu, I1, 0xAA))
    gen = read_keys(lu)[0]
    ok(reserve(lu, I1, 0xAA, type_))
    key = 0 if type_ in (WE_AR, EA_AR) else 0xAA
    assert read_reservation(lu) == (key, type_)
    ok(reserve(lu, I1, 0xAA, type_))  # the same reservation again: no change
    ok(release(lu, I1, 0xAA, type_))
    assert read_reservation(lu) is None
    assert read_keys(lu)[0] == gen  # RESERVE and RELEASE leave PRGENERATION alone


def test_reserve_needs_registration(lu):
    """SPC-4 5.13.9: RESERVE from an unregistered nexus, or with a wrong key, conflicts."""
    assert reserve(lu, I1, 0, WE).status == CONFLICT
    ok(register(lu, I1, 0xAA))
    assert reserve(lu, I1, 0xAB, WE).status == CONFLICT


def test_reserve_over_another_holder_conflicts(lu):
    """SPC-4 5.13.9: a reservation held by another nexus, or of another type, conflicts."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, WE))
    assert reserve(lu, I2, 0xBB, WE).status == CONFLICT
    assert reserve(lu, I1, 0xAA, EA).status == CONFLICT


def test_invalid_type_and_scope(lu):
    """SPC-4 6.16.3: an invalid TYPE or a SCOPE other than LU_SCOPE -> INVALID FIELD IN CDB."""
    ok(register(lu, I1, 0xAA))
    assert check(reserve(lu, I1, 0xAA, 2)).code == (0x05, 0x24, 0x00)
    assert check(reserve(lu, I1, 0xAA, 0x11)).field == 2


def test_parameter_list_length(lu):
    """SPC-4 6.16.3: a PARAMETER LIST LENGTH other than 24 -> PARAMETER LIST LENGTH ERROR."""
    assert check(prout(lu, I1, 0x00, 0, 0xAA, plen=20)).code == (0x05, 0x1A, 0x00)


def test_unsupported_flags(lu):
    """SPC-4 6.16.3: SPEC_I_PT and ALL_TG_PT are not supported, and APTPL is not on an
    in-memory LU (PTPL_C=0: nothing survives a restart; file LUs: test_pr_aptpl.py) ->
    INVALID FIELD IN PARAMETER LIST."""
    for flag, bit in ((0x08, 3), (0x04, 2), (0x01, 0)):
        s = check(prout(lu, I1, 0x00, 0, 0xAA, flags=flag))
        assert s.code == (0x05, 0x26, 0x00) and not s.cd and (s.field, s.bit) == (20, bit)


# Access of the other nexus under each type (SPC-4 5.13.1 table 62, SBC-4 table 15):
# (registered can read, registered can write, unregistered can read, unregistered can write)
ACCESS = {
    WE: (1, 0, 1, 0),
    EA: (0, 0, 0, 0),
    WE_RO: (1, 1, 1, 0),
    EA_RO: (1, 1, 0, 0),
    WE_AR: (1, 1, 1, 0),
    EA_AR: (1, 1, 0, 0),
}


@pytest.mark.parametrize("type_", list(ACCESS))
def test_access_of_other_nexus(lu, type_):
    """SPC-4 5.13.1 table 62 / SBC-4 table 15: READ and WRITE from the other nexus per type."""
    reg_r, reg_w, unreg_r, unreg_w = ACCESS[type_]
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, type_))
    ok(run(lu, I1, READ10))
    ok(run(lu, I1, WRITE10))
    assert (run(lu, I2, READ10).status == Status.GOOD) == bool(reg_r)
    assert (run(lu, I2, WRITE10).status == Status.GOOD) == bool(reg_w)
    ok(register(lu, I2, 0, old=0xBB))
    assert (run(lu, I2, READ10).status == Status.GOOD) == bool(unreg_r)
    assert (run(lu, I2, WRITE10).status == Status.GOOD) == bool(unreg_w)
    # Commands allowed under every type (SPC-4 table 62).
    for cdb in (TUR, bytes((0x12, 0, 0, 0, 36, 0)), prin(0)):
        ok(run(lu, I2, cdb))


@pytest.mark.parametrize("type_,shared", [(WE, False), (EA, False), (WE_RO, False),
                                          (EA_RO, False), (WE_AR, True), (EA_AR, True)])
def test_holder_unregisters(lu, type_, shared):
    """SPC-4 5.13.10: unregistering the holder releases the reservation, except All
    Registrants ones, which stay while any registrant remains."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, type_))
    ok(register(lu, I1, 0, old=0xAA))
    if shared:
        assert read_reservation(lu) == (0, type_)
        ok(release(lu, I2, 0xBB, type_))
    assert read_reservation(lu) is None
    if type_ in (WE_RO, EA_RO):
        assert check(run(lu, I2, TUR)).code == (0x06, 0x2A, 0x04)  # RESERVATIONS RELEASED


def test_release_by_non_holder_does_nothing(lu):
    """SPC-4 5.13.11.2: RELEASE from a registered non-holder is GOOD and changes nothing."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, EA))
    ok(release(lu, I2, 0xBB, EA))
    assert read_reservation(lu) == (0xAA, EA)


def test_release_with_wrong_type(lu):
    """SPC-4 5.13.11.2: RELEASE with another TYPE -> INVALID RELEASE OF PERSISTENT
    RESERVATION (26h/04h)."""
    ok(register(lu, I1, 0xAA))
    ok(reserve(lu, I1, 0xAA, WE))
    assert check(release(lu, I1, 0xAA, EA)).code == (0x05, 0x26, 0x04)
    assert read_reservation(lu) == (0xAA, WE)


def test_release_registrants_only_raises_ua(lu):
    """SPC-4 5.13.11.2: releasing a Registrants Only reservation -> RESERVATIONS RELEASED
    (2Ah/04h) to the other registrants."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, WE_RO))
    ok(release(lu, I1, 0xAA, WE_RO))
    assert check(run(lu, I2, TUR)).code == (0x06, 0x2A, 0x04)
    ok(run(lu, I1, TUR))
    ok(run(lu, I3, TUR))


def test_clear(lu):
    """SPC-4 5.13.11.3: CLEAR removes reservation and registrations, bumps PRGENERATION,
    and raises RESERVATIONS PREEMPTED (2Ah/03h) for the other registrants."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, EA))
    gen = read_keys(lu)[0]
    ok(prout(lu, I1, 0x03, 0xAA))
    assert read_reservation(lu) is None
    assert read_keys(lu) == (gen + 1, [])
    ok(run(lu, I1, TUR))
    assert check(run(lu, I2, TUR)).code == (0x06, 0x2A, 0x03)
    ok(run(lu, I3, TUR))


def test_clear_needs_registration(lu):
    """SPC-4 6.16.2: CLEAR from an unregistered nexus conflicts."""
    ok(register(lu, I1, 0xAA))
    assert prout(lu, I2, 0x03, 0).status == CONFLICT


def test_preempt_registration(lu):
    """SPC-4 5.13.11.4.4: PREEMPT without a reservation removes the registrations with the
    key, bumps PRGENERATION and raises REGISTRATIONS PREEMPTED (2Ah/05h)."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    gen = read_keys(lu)[0]
    ok(prout(lu, I2, 0x04, 0xBB, 0xAA, EA))
    assert read_keys(lu, I2) == (gen + 1, [0xBB])
    assert check(run(lu, I1, TUR)).code == (0x06, 0x2A, 0x05)
    ok(run(lu, I2, TUR))


def test_preempt_holder_takes_reservation(lu):
    """SPC-4 5.13.11.4.3: preempting the holder's key moves the reservation to the
    preempting nexus with the new TYPE; the preempted nexus now conflicts."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(register(lu, I3, 0xCC))
    ok(reserve(lu, I1, 0xAA, WE))
    ok(prout(lu, I2, 0x04, 0xBB, 0xAA, EA))
    assert read_reservation(lu, I2) == (0xBB, EA)
    assert check(run(lu, I1, TUR)).code == (0x06, 0x2A, 0x05)
    assert run(lu, I1, READ10).status == CONFLICT
    assert check(run(lu, I3, TUR)).code == (0x06, 0x2A, 0x04)  # type changed


def test_preempt_unknown_key_conflicts(lu):
    """SPC-4 5.13.11.4.4: no registration with the SERVICE ACTION RESERVATION KEY ->
    RESERVATION CONFLICT."""
    ok(register(lu, I1, 0xAA))
    assert prout(lu, I1, 0x04, 0xAA, 0x99, EA).status == CONFLICT


def test_preempt_zero_key(lu):
    """SPC-4 5.13.11.4.3: key 0 is valid only against an All Registrants reservation,
    where it removes every other registrant and re-reserves."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    assert check(prout(lu, I1, 0x04, 0xAA, 0, EA)).code == (0x05, 0x26, 0x00)
    ok(reserve(lu, I2, 0xBB, WE_AR))
    ok(prout(lu, I1, 0x04, 0xAA, 0, EA))
    assert read_keys(lu)[1] == [0xAA]
    assert read_reservation(lu) == (0xAA, EA)


def test_preempt_and_abort(lu):
    """SPC-4 5.13.11.4.5: PREEMPT AND ABORT preempts like PREEMPT, then the task set
    aborts the preempted nexuses' tasks (the LU's abort_tasks_of hook)."""
    seen = []
    lu.abort_tasks_of = lambda victims, task: seen.extend(victims)
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I1, 0xAA, WE))
    ok(prout(lu, I2, 0x05, 0xBB, 0xAA, WE))
    assert seen == [I1]
    assert read_reservation(lu, I2) == (0xBB, WE)


def test_read_full_status(lu):
    """SPC-4 6.15.5: one descriptor per registration: key, R_HOLDER, type, relative target
    port, and an iSCSI TransportID of format 01b (SPC-4 7.6.4.6)."""
    ok(register(lu, I1, 0xAA))
    ok(register(lu, I2, 0xBB))
    ok(reserve(lu, I2, 0xBB, EA))
    d = data(run(lu, I1, prin(3)))
    pos = 8
    found = {}
    while pos < 8 + struct.unpack_from(">I", d, 4)[0]:
        key, _, flags, scope_type, _, rtp, tlen = struct.unpack_from(">QIBBIHI", d, pos)
        tid = d[pos + 24 : pos + 24 + tlen]
        assert tid[0] == 0x45 and tlen % 4 == 0 and tlen >= 24
        assert struct.unpack_from(">H", tid, 2)[0] == tlen - 4
        found[key] = (flags & 1, scope_type, rtp, tid[4:].rstrip(b"\0").decode())
        pos += 24 + tlen
    assert found == {
        0xAA: (0, 0, 1, I1.initiator_port),
        0xBB: (1, EA, 1, I2.initiator_port),
    }


def test_register_and_move(lu):
    """SPC-4 5.13.8: the holder registers another nexus, named by TransportID, and hands
    it the reservation; UNREG=1 drops the holder's own registration."""
    ok(register(lu, I1, 0xAA))
    ok(reserve(lu, I1, 0xAA, EA))
    name = I2.initiator_port.encode() + b"\0"
    name += bytes(-len(name) % 4)
    tid = struct.pack(">BBH", 0x45, 0, len(name)) + name
    params = struct.pack(">QQBBHI", 0xAA, 0xBB, 0, 0x02, 1, len(tid)) + tid
    cdb = struct.pack(">BBBBBIB", 0x5F, 0x07, EA, 0, 0, len(params), 0)
    ok(run(lu, I1, cdb, params))
    assert read_keys(lu)[1] == [0xBB]
    assert read_reservation(lu) == (0xBB, EA)
    ok(run(lu, I2, READ10))
    assert run(lu, I1, READ10).status == CONFLICT


def test_pr_survives_reset_and_nexus_loss(lu):
    """SPC-4 5.13.1: persistent reservations survive LU reset and I_T nexus loss."""
    ok(register(lu, I1, 0xAA))
    ok(reserve(lu, I1, 0xAA, EA))
    lu.reset(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    lu.nexus_lost(I1)
    ready(lu, I2, I3)
    assert read_reservation(lu, I3) == (0xAA, EA)
    assert run(lu, I2, READ10).status == CONFLICT


def test_mode_select_conflicts_but_mode_sense_allowed_under_write_exclusive(lu):
    """SPC-4 table 62: MODE SELECT conflicts under Write Exclusive; MODE SENSE does not
    (ALLOW COMMANDS 011b); under Exclusive Access MODE SENSE conflicts too."""
    ok(register(lu, I1, 0xAA))
    ok(reserve(lu, I1, 0xAA, WE))
    ok(run(lu, I2, bytes((0x1A, 0, 0x3F, 0, 255, 0))))
    assert run(lu, I2, bytes((0x15, 0x10, 0, 0, 0, 0))).status == CONFLICT
    ok(release(lu, I1, 0xAA, WE))
    ok(reserve(lu, I1, 0xAA, EA))
    assert run(lu, I2, bytes((0x1A, 0, 0x3F, 0, 255, 0))).status == CONFLICT


def test_nexus_table_keeps_a_nexus_that_returns_after_its_loss():
    """The LU's table of the nexuses its commands came from (what REGISTER AND MOVE's
    TransportID is looked up in, SPC-4 6.16.9) keeps every nexus until its loss
    (reservations.py's rules): the connection's one Nexus object, seen again after an
    I_T nexus loss reported through an equal object, is put back by its next command."""
    lu = make_lu()
    held = nexus(4)
    ready(lu, held)  # its first command has the 29h/00h (SAM-5 5.14), checked before
    ok(run(lu, held, TUR))  # reservations: the second one is checked against them
    assert held.key in lu.reservations.nexuses
    lu.nexus_lost(nexus(4))  # an equal, distinct object
    assert held.key not in lu.reservations.nexuses
    ready(lu, held)
    ok(run(lu, held, TUR))
    assert lu.reservations.nexuses[held.key] is held
