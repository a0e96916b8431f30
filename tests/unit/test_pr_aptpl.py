"""Persistent reservations through power loss: APTPL and the `<image>.pr` state file.

SPC-4 5.13.5.1 (what is preserved, the last REGISTER / REGISTER AND IGNORE EXISTING KEY /
REGISTER AND MOVE decides), 6.15.2 (PRgeneration is zero after a power on), 6.15.4
(PTPL_C, PTPL_A), 6.16.3 and 6.16.4 (the APTPL bit; INVALID FIELD IN PARAMETER LIST when
PTPL_C=0; ignored by the other service actions), 5.13.5.3.3 (lost PR information).
A "power cycle" here is what a target restart is: the LU is closed and a new one is built
over the same image file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from target.app import build_device
from target.backing.file import FileStore
from target.backing.memory import MemoryStore
from target.config import ConfigError, LunConfig, TargetConfig
from target.scsi.disk import make_disk
from target.scsi.reservations import STATE_SUFFIX, StateFileError
from target.scsi.sense import REGISTRATIONS_PREEMPTED, RESERVATIONS_PREEMPTED
from target.scsi.task import Status
from tests.unit.spc_util import TARGET_PORT, check, data, nexus, ready, run

pytestmark = pytest.mark.unit

I1, I2, I3 = nexus(1), nexus(2), nexus(3)
OBSERVER = nexus(4)  # reads the PR state; never registered, so never gets PR unit attentions
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REG_IGNORE, MOVE = range(8)
APTPL = 0x01
WE, WE_RO, EA_AR = 0x1, 0x5, 0x8
WRITE10 = bytes.fromhex("2a000000000000000100")
READ10 = bytes.fromhex("28000000000000000100")


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lun0.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


def file_lu(image):
    lu = make_disk(0, FileStore(image))
    ready(lu, I1, I2, I3, OBSERVER)
    return lu


def restart(lu, image):
    """Power cycle: the old LU goes away, a new one is built over the same file."""
    lu.close()
    return file_lu(image)


def prout(lu, n, sa, key=0, sa_key=0, type_=0, flags=0):
    params = struct.pack(">QQIBBH", key, sa_key, 0, flags, 0, 0)
    return run(lu, n, struct.pack(">BBBBBIB", 0x5F, sa, type_, 0, 0, 24, 0), params)


def move(lu, n, key, sa_key, dest, type_, flags=0):
    """REGISTER AND MOVE (SPC-4 6.16.4) to `dest`, with an iSCSI TransportID (format 01b)."""
    name = dest.initiator_port.encode() + b"\0"
    name += bytes(-len(name) % 4)
    tid = struct.pack(">BBH", 0x45, 0, len(name)) + name
    params = struct.pack(">QQBBHI", key, sa_key, 0, flags, 1, len(tid)) + tid
    cdb = struct.pack(">BBBBBIB", 0x5F, MOVE, type_, 0, 0, len(params), 0)
    return run(lu, n, cdb, params)


def prin(lu, sa, n=OBSERVER) -> bytes:
    return data(run(lu, n, struct.pack(">BBBBBBBHB", 0x5E, sa, 0, 0, 0, 0, 0, 8192, 0)))


def read_keys(lu) -> tuple[int, list[int]]:
    d = prin(lu, 0)
    gen, length = struct.unpack_from(">II", d)
    return gen, [struct.unpack_from(">Q", d, 8 + 8 * i)[0] for i in range(length // 8)]


def read_reservation(lu):
    d = prin(lu, 1)
    if struct.unpack_from(">I", d, 4)[0] == 0:
        return None
    key, _, _, scope_type, _ = struct.unpack_from(">QIBBH", d, 8)
    return key, scope_type


def capabilities(lu) -> tuple[bool, bool]:
    """(PTPL_C, PTPL_A) of REPORT CAPABILITIES (SPC-4 6.15.4)."""
    d = prin(lu, 2)
    return bool(d[2] & 0x01), bool(d[3] & 0x01)


def full_status(lu) -> bytes:
    return prin(lu, 3)[4:]  # without the PRGENERATION


def ok(task) -> None:
    assert task.status == Status.GOOD, (task.status, task.sense.hex())


def pr_file(image) -> str:
    return str(image) + ".pr"


# --- capability and refusal ------------------------------------------------------------------


def test_ptpl_c_per_lu(image):
    """SPC-4 6.15.4: PTPL_C=1 over an image file, 0 in memory; PTPL_A=0 until APTPL=1."""
    lu = file_lu(image)
    assert capabilities(lu) == (True, False)
    mem = make_disk(1, MemoryStore(1 << 20))
    ready(mem, OBSERVER)
    assert capabilities(mem) == (False, False)


def test_state_path_only_for_regular_files(image):
    """A block device has no place beside it that survives a restart: PTPL_C=0."""
    store = FileStore(image)
    try:
        assert store.sidecar(STATE_SUFFIX).name == str(image) + ".pr"
        store.block_device = True
        assert store.sidecar(STATE_SUFFIX) is None
    finally:
        store.close()
    assert MemoryStore(4096).sidecar(STATE_SUFFIX) is None


def test_unwritable_directory_is_not_ptpl_capable(image, monkeypatch):
    """Where the state file cannot be created, PTPL_C=0 and APTPL=1 is refused up front."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    lu = file_lu(image)
    assert capabilities(lu) == (False, False)
    s = check(prout(lu, I1, REGISTER, 0, 0xA, flags=APTPL))
    assert s.code == (0x05, 0x26, 0x00) and (s.field, s.bit) == (20, 0)


def test_memory_lu_refuses_aptpl():
    """SPC-4 6.16.3, 6.16.4: PTPL_C=0 and APTPL=1 in REGISTER, REGISTER AND IGNORE EXISTING
    KEY or REGISTER AND MOVE -> INVALID FIELD IN PARAMETER LIST at the APTPL bit; nothing
    changes. Other service actions ignore the bit (6.16.3)."""
    lu = make_disk(0, MemoryStore(1 << 20))
    ready(lu, I1, I2, OBSERVER)
    for sa in (REGISTER, REG_IGNORE):
        s = check(prout(lu, I1, sa, 0, 0xA, flags=APTPL))
        assert s.code == (0x05, 0x26, 0x00) and not s.cd and (s.field, s.bit) == (20, 0)
    assert read_keys(lu) == (0, [])
    ok(prout(lu, I1, REGISTER, 0, 0xA))
    ok(prout(lu, I1, RESERVE, 0xA, type_=WE, flags=APTPL))  # ignored, not refused
    s = check(move(lu, I1, 0xA, 0xB, I2, WE, flags=APTPL))
    assert s.code == (0x05, 0x26, 0x00) and (s.field, s.bit) == (17, 0)
    assert read_reservation(lu) == (0xA, WE)
    ok(prout(lu, I1, RELEASE, 0xA, type_=WE, flags=APTPL))
    ok(prout(lu, I1, CLEAR, 0xA, flags=APTPL))
    assert capabilities(lu) == (False, False)


# --- the state survives a restart ----------------------------------------------------------


def test_registrations_and_reservation_survive_restart(image):
    """SPC-4 5.13.5.1: with APTPL=1 the registrations (initiator port name, target port,
    key) and the reservation (holder, type) are back after the power cycle; 6.15.2: the
    PRgeneration starts again at zero."""
    lu = file_lu(image)
    ok(prout(lu, I2, REGISTER, 0, 0xB2))
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I1, RESERVE, 0xA1, type_=WE_RO))
    assert os.path.exists(pr_file(image))
    assert capabilities(lu) == (True, True)
    gen, keys = read_keys(lu)
    assert gen == 2 and keys == [0xB2, 0xA1]
    status = full_status(lu)

    lu = restart(lu, image)
    assert read_keys(lu) == (0, [0xB2, 0xA1])
    assert read_reservation(lu) == (0xA1, WE_RO)
    assert full_status(lu) == status  # same keys, holder, type, TransportIDs, target port
    assert capabilities(lu) == (True, True)
    # The reservation works as before: I1 holds it, I2 is registered (Registrants Only),
    # I3 is not registered.
    ok(run(lu, I1, WRITE10, bytes(512)))
    ok(run(lu, I2, WRITE10, bytes(512)))
    assert run(lu, I3, WRITE10, bytes(512)).status == Status.RESERVATION_CONFLICT
    ok(run(lu, I3, READ10))
    # The restored registrations are I1's and I2's: their keys are the current ones.
    assert prout(lu, I1, REGISTER, 0x99, 0x1).status == Status.RESERVATION_CONFLICT
    ok(prout(lu, I1, RELEASE, 0xA1, type_=WE_RO))
    ready(lu, I2)  # RESERVATIONS RELEASED (SPC-4 5.13.11.2)
    ok(prout(lu, I2, REGISTER, 0xB2, 0, flags=APTPL))  # I2 unregisters
    assert read_keys(lu) == (1, [0xA1])

    lu = restart(lu, image)
    assert read_keys(lu) == (0, [0xA1]) and read_reservation(lu) is None
    lu.close()


def test_state_file_contents(image):
    """The file names each registration's I_T nexus and key, the holder and type, and
    the generation at the time it was written (informational: 6.15.2)."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I1, RESERVE, 0xA1, type_=WE))
    doc = json.loads(Path(pr_file(image)).read_text())
    assert doc["version"] == 1 and doc["generation"] == 1
    (reg,) = doc["registrations"]
    assert reg["initiator_port"] == I1.initiator_port and reg["target_port"] == TARGET_PORT
    assert reg["key"] == "0x00000000000000a1"
    assert doc["reservation"] == {"holder": 0, "type": WE}
    assert [n for n in os.listdir(image.parent) if n.endswith(".tmp")] == []
    lu.close()


def test_all_registrants_reservation_survives(image):
    """SPC-4 5.13.5.1 NOTE: for an All Registrants reservation the type is what matters;
    every restored registrant holds it again."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I2, REG_IGNORE, 0, 0xB2, flags=APTPL))
    ok(prout(lu, I1, RESERVE, 0xA1, type_=EA_AR))
    lu = restart(lu, image)
    assert read_reservation(lu) == (0, EA_AR)
    ok(run(lu, I2, READ10))
    assert run(lu, I3, READ10).status == Status.RESERVATION_CONFLICT
    lu.close()


def test_aptpl_zero_removes_the_file(image):
    """SPC-4 5.13.5.1: the last REGISTER with APTPL=0 ends persistence; nothing survives."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I1, RESERVE, 0xA1, type_=WE))
    assert os.path.exists(pr_file(image))
    ok(prout(lu, I2, REGISTER, 0, 0xB2))  # APTPL=0 from another nexus: the last one decides
    assert not os.path.exists(pr_file(image))
    assert capabilities(lu) == (True, False)
    lu = restart(lu, image)
    assert read_keys(lu) == (0, []) and read_reservation(lu) is None
    lu.close()


def test_other_service_actions_keep_the_aptpl_state(image):
    """SPC-4 6.16.3: APTPL is ignored by RESERVE, RELEASE, CLEAR, PREEMPT: with APTPL
    active their effect is saved, whatever their APTPL bit says."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I2, REGISTER, 0, 0xB2, flags=APTPL))
    ok(prout(lu, I1, RESERVE, 0xA1, type_=WE))  # APTPL=0 here changes nothing
    ok(prout(lu, I2, PREEMPT, 0xB2, 0xA1, type_=WE_RO))
    assert capabilities(lu) == (True, True)
    lu = restart(lu, image)
    assert read_keys(lu) == (0, [0xB2]) and read_reservation(lu) == (0xB2, WE_RO)
    ok(prout(lu, I2, CLEAR, 0xB2))
    assert os.path.exists(pr_file(image))  # still active, now with nothing in it
    lu = restart(lu, image)
    assert read_keys(lu) == (0, []) and capabilities(lu) == (True, True)
    lu.close()


def test_register_that_does_nothing_keeps_the_aptpl_state(image):
    """SPC-4 5.13.7: an unregistered nexus registering key 0 gets GOOD and nothing else
    happens, so it does not switch persistence on or off."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0, flags=APTPL))
    assert capabilities(lu) == (True, False) and not os.path.exists(pr_file(image))
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I2, REGISTER, 0, 0))
    assert capabilities(lu) == (True, True) and os.path.exists(pr_file(image))
    lu.close()


def test_register_and_move_with_aptpl(image):
    """SPC-4 6.16.4, 5.13.5.1: REGISTER AND MOVE's APTPL bit decides too; the moved
    reservation and the new registration survive."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1))
    ok(prout(lu, I1, RESERVE, 0xA1, type_=WE))
    ok(move(lu, I1, 0xA1, 0xC2, I2, WE, flags=APTPL | 0x02))  # UNREG: I1 goes
    lu = restart(lu, image)
    assert read_keys(lu) == (0, [0xC2]) and read_reservation(lu) == (0xC2, WE)
    ok(run(lu, I2, WRITE10, bytes(512)))
    assert run(lu, I1, WRITE10, bytes(512)).status == Status.RESERVATION_CONFLICT
    ok(move(lu, I2, 0xC2, 0xA1, I1, WE))  # APTPL=0: persistence ends
    assert not os.path.exists(pr_file(image))
    lu.close()


def test_unit_attentions_are_still_sent(image):
    """The unit attentions of PREEMPT and CLEAR (SPC-4 5.13.11) reach the other nexuses
    after the state is saved."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I2, REGISTER, 0, 0xB2, flags=APTPL))
    ok(prout(lu, I3, REGISTER, 0, 0xC3, flags=APTPL))
    ok(prout(lu, I1, PREEMPT_AND_ABORT, 0xA1, 0xB2, type_=WE))
    assert check(run(lu, I2, bytes(6))).code == (0x06, *REGISTRATIONS_PREEMPTED)
    ok(prout(lu, I1, CLEAR, 0xA1))
    assert check(run(lu, I3, bytes(6))).code == (0x06, *RESERVATIONS_PREEMPTED)
    lu.close()


# --- failures ----------------------------------------------------------------------------------


def test_write_failure_changes_nothing(image, monkeypatch):
    """A state file that cannot be written fails the command (HARDWARE ERROR, INTERNAL
    TARGET FAILURE) and leaves the reservation state, the generation and the unit
    attentions as they were."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    ok(prout(lu, I2, REGISTER, 0, 0xB2, flags=APTPL))
    before = Path(pr_file(image)).read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    assert check(prout(lu, I1, CLEAR, 0xA1)).code == (0x04, 0x44, 0x00)
    assert check(prout(lu, I3, REGISTER, 0, 0xC3, flags=APTPL)).code == (0x04, 0x44, 0x00)
    assert read_keys(lu) == (2, [0xA1, 0xB2])
    ok(run(lu, I2, bytes(6)))  # no RESERVATIONS PREEMPTED: the CLEAR did not happen
    assert Path(pr_file(image)).read_bytes() == before
    assert [n for n in os.listdir(image.parent) if n.endswith(".tmp")] == []
    monkeypatch.undo()
    ok(prout(lu, I1, CLEAR, 0xA1))
    assert read_keys(lu) == (3, [])
    lu.close()


def test_removal_failure_keeps_aptpl(image, monkeypatch):
    """APTPL=0 that cannot remove the file fails and leaves persistence on."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))

    def fail(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "unlink", fail)
    assert check(prout(lu, I1, REGISTER, 0xA1, 0xA2)).code == (0x04, 0x44, 0x00)
    assert capabilities(lu) == (True, True) and read_keys(lu) == (1, [0xA1])
    lu.close()


@pytest.mark.parametrize("content", [
    b"\x00\xffgarbage",
    b"{}",
    b'{"format": "scsi-target persistent reservations", "version": 9}',
    b'{"format": "scsi-target persistent reservations", "version": 1, "registrations": '
    b'[{"initiator_port": "a,i,0x1", "target_port": "t,t,0x1", "initiator_name": "a", '
    b'"target_name": "t", "isid": 1, "tpgt": 1, "relative_target_port": 1, "key": "0x0"}], '
    b'"reservation": null}',
    b'{"format": "scsi-target persistent reservations", "version": 1, "registrations": [], '
    b'"reservation": {"holder": 0, "type": 1}}',
])
def test_corrupt_state_file_is_an_error_naming_it(image, content):
    """SPC-4 5.13.5.3.3: unreadable preserved PR information is not silently dropped: the
    LU is not built, the error names the file and how to remove it, the file stays."""
    path = pr_file(image)
    with open(path, "wb") as f:
        f.write(content)
    store = FileStore(image)
    with pytest.raises(StateFileError) as info:
        make_disk(0, store)
    store.close()
    msg = str(info.value)
    assert path in msg and f"rm '{path}'" in msg
    assert Path(path).read_bytes() == content


def test_corrupt_state_file_stops_the_configured_target(image):
    """Built from the configuration (target.app), it is a ConfigError naming LUN and file."""
    with open(pr_file(image), "w") as f:
        f.write("not json")
    t = TargetConfig(luns=[LunConfig(lun=3, store="file", path=str(image))])
    with pytest.raises(ConfigError) as info:
        build_device(t, "test.toml")
    assert "LUN 3" in str(info.value) and pr_file(image) in str(info.value)
    os.unlink(pr_file(image))
    build_device(t, "test.toml").close()


def test_temporary_files_of_an_interrupted_write_are_removed_at_start(image, tmp_path):
    """A PERSISTENT RESERVE OUT killed while its state file was being written leaves the
    temporary file (`<image>.pr.XXXX.tmp`) behind; the next start removes those of this
    image (they were never renamed into place, so they hold no acknowledged state) and
    keeps the `.pr` file itself and everything that belongs to other images."""
    lu = file_lu(image)
    ok(prout(lu, I1, REGISTER, 0, 0xA1, flags=APTPL))
    lu.close()
    stale = [tmp_path / f"{image.name}.pr.{tag}.tmp" for tag in ("k3j_0x", "a1b2c3d4")]
    for p in stale:
        p.write_bytes(b'{"format": "scsi-target persistent reservations", "vers')
    other = tmp_path / "other.img.pr.zz9.tmp"
    other.write_bytes(b"x")
    kept = tmp_path / f"{image.name}.pr.backup"
    kept.write_bytes(b"y")
    lu = file_lu(image)
    assert [p.exists() for p in stale] == [False, False]
    assert other.exists() and kept.exists()
    assert read_keys(lu) == (0, [0xA1])
    lu.close()
