"""A SANITIZE that takes time, over iSCSI: the server's shell drives it in the background
(SBC-4 4.11, 5.30; SPC-4 4.5.2.4.4 progress indication).

The LU sanitizes at 4 MB/s (config sanitize_mb_s), so overwriting its 8 MiB takes about
two seconds. While it runs, another session's TEST UNIT READY ends in NOT READY, LOGICAL
UNIT NOT READY, SANITIZE IN PROGRESS with a progress indication that grows, INQUIRY is
still served, and the SANITIZE with IMMED=0 gets its GOOD status only when the operation
has ended, after which the medium holds the pattern.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from target.scsi.task import Status
from target.shell.initiator import Initiator
from target.testing.servers import OurTarget

pytestmark = pytest.mark.integration

IQN = "iqn.2026-11.local.scsi-target:sanitize-bg"
SIZE = 8 << 20
RATE_MB_S = 4
TUR = bytes(6)


@pytest.fixture
def target(tmp_path):
    config = tmp_path / "sanitize.toml"
    config.write_text(f'[[target]]\niqn = "{IQN}"\n\n[[target.lun]]\nlun = 0\n'
                      f'store = "memory"\nsize = {SIZE}\nsanitize_mb_s = {RATE_MB_S}\n')
    with OurTarget(config=config, workdir=tmp_path, iqn=IQN) as server:
        yield server


def session(target: OurTarget, isid: int) -> Initiator:
    ini = Initiator("127.0.0.1", target.port, target.iqn,
                    initiator_name=f"iqn.2026-11.local.test:sanitize-{isid}", isid=isid,
                    timeout=30)
    ini.connect()
    ini.login()
    for _ in range(4):  # the first contact's unit attention
        if ini.command(TUR).status == Status.GOOD:
            break
    return ini


def overwrite(pattern: bytes, immed: bool = False) -> tuple[bytes, bytes]:
    params = struct.pack(">BBH", 0x01, 0, len(pattern)) + pattern  # one pass
    cdb = struct.pack(">BB5xHB", 0x48, (0x80 if immed else 0) | 0x01, len(params), 0)
    return cdb, params


def test_sanitize_runs_in_the_background_and_reports_progress(target):
    a, b = session(target, 0x400000000201), session(target, 0x400000000202)
    try:
        cdb, params = overwrite(b"\x5a\xa5")
        result: dict = {}

        def sanitize() -> None:
            start = time.monotonic()
            result["r"] = a.command(cdb, data=params)
            result["took"] = time.monotonic() - start

        worker = threading.Thread(target=sanitize)
        worker.start()
        progress: list[int] = []
        while worker.is_alive():
            r = b.command(TUR)
            if r.status == Status.CHECK_CONDITION:
                s = r.sense
                assert (s[2] & 0x0F, s[12], s[13]) == (0x02, 0x04, 0x1B), s.hex()
                assert s[15] & 0x80, "SKSV: a progress indication (SPC-4 4.5.2.4.4)"
                progress.append(struct.unpack_from(">H", s, 16)[0])
                inq = b.command(bytes((0x12, 0, 0, 0, 96, 0)), read=96)
                assert inq.status == Status.GOOD, "INQUIRY is served during a sanitize"
            time.sleep(0.1)
        worker.join()
        assert result["r"].status == Status.GOOD, result["r"].sense.hex()
        assert result["took"] >= 0.5 * SIZE / (RATE_MB_S * 1e6), \
            "IMMED=0: status only once the operation has ended (SBC-4 5.30)"
        assert len(progress) >= 3, "TEST UNIT READY saw the sanitize in progress"
        assert progress == sorted(progress) and progress[-1] > progress[0]
        assert b.command(TUR).status == Status.GOOD
        data = b.command(struct.pack(">BBIBHB", 0x28, 0, 100, 0, 4, 0), read=2048).data
        assert data == b"\x5a\xa5" * 1024, "every block holds the initialization pattern"
    finally:
        a.close()
        b.close()


def test_immed_sanitize_answers_at_once(target):
    """SBC-4 5.30: IMMED=1 returns status once the CDB and parameter list are checked."""
    a = session(target, 0x400000000203)
    try:
        cdb, params = overwrite(b"\x11", immed=True)
        start = time.monotonic()
        assert a.command(cdb, data=params).status == Status.GOOD
        assert time.monotonic() - start < 0.5 * SIZE / (RATE_MB_S * 1e6)
        r = a.command(TUR)
        assert r.status == Status.CHECK_CONDITION and r.sense[12:14] == b"\x04\x1b"
        deadline = time.monotonic() + 30
        while a.command(TUR).status != Status.GOOD:
            assert time.monotonic() < deadline, "the sanitize never ended"
            time.sleep(0.2)
    finally:
        a.close()
