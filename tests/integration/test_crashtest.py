"""Durability through SIGKILL of the target (tools/crashtest, target.testing.crashtest).

What the standard requires, and what is checked here after the target process is killed
with SIGKILL at a random moment and restarted on the same image files:
- SBC-4 4.15 and the FUA bit of WRITE(10)/(16): a write with FUA=1 that completed with
  GOOD is on the medium;
  SBC-4 5.26: every write that completed before a SYNCHRONIZE CACHE was sent is on the
  medium once it returns GOOD; SBC-4 6.5.5 and 4.15: with WCE=0 (caching mode page, set
  by MODE SELECT(10)) a write that returns GOOD is on the medium. Nothing so acknowledged
  may read back lost, torn, stale, misplaced or as a generation never sent.
- SPC-4 5.13.5.1 and 6.16.3: with APTPL=1 the registrations and the reservation are
  kept; after the restart READ KEYS / READ RESERVATION (6.15.2, 6.15.3) show the state of
  the last acknowledged PERSISTENT RESERVE OUT or of the one in flight at the kill, with
  PRgeneration 0 (6.15.2). The target must start, and no temporary state file may be
  left beside the image.
The checker must be able to fail: blocks of the image and the state file are changed
between the kill and the restart, and each change must be reported.
Runtime here: about 11 s for the module (3 quick trials, then 3-8 tampered or targeted ones;
`pytest -n 2` of this file: 11 s).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from target.testing import crashtest
from target.testing.crashtest import Options, TrialContext, make_block, run_trial

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "crashtest"


def test_quick_trials_lose_nothing_acknowledged(tmp_path):
    """tools/crashtest --quick: 3 trials, mixed modes, APTPL client in each."""
    out = tmp_path / "crash.json"
    env = dict(os.environ, SCSI_TARGET_TOOL_REEXEC="1")  # run it with this interpreter
    proc = subprocess.run([sys.executable, str(TOOL), "--quick", "--seed", "0x5eed",
                           "--dir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert out.exists(), proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    total = doc["summary"]
    assert total["trials"] == 3, proc.stdout
    assert total["writes_durable"] > 0 and total["writes_acked"] >= total["writes_durable"]
    assert total["writes_verified"] == total["writes_durable"], proc.stdout
    for loss in crashtest.VERDICTS_BAD:
        assert total[loss] == 0, (loss, proc.stdout)
    assert total["aptpl_trials"] == 3 and total["aptpl_states_verified"] == 3, proc.stdout
    assert total["restart_failures"] == 0 and total["errors"] == 0, proc.stdout
    assert total["unexpected_status"] == 0, proc.stdout
    assert sum(total["modes"].values()) == 12
    # A leftover temporary state file would fail the trial (it has its own test below).
    assert total["leftover_tmp_files"] == 0 and proc.returncode == 0, proc.stdout


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_changed_blocks_are_reported(tmp_path):
    """Put back an older generation, zero, tear, misplace and forge one durable block each:
    the checker reports exactly those five as stale, lost, torn, misplaced and unknown."""
    opts = Options(block_size=4096, size=16 << 20, sessions=2, extents=2, modes="a",
                   aptpl_share=0.0, kill_min=0.4, kill_max=0.5)
    done: dict[str, int] = {}

    def tamper(ctx: TrialContext) -> None:
        bs = ctx.block_size
        durable = [(lba, h) for w in ctx.writers for lba, h in sorted(w.history.items())
                   if h.durable >= 0 and len(h.attempted) >= 2]
        assert len(durable) >= 5, "too few rewritten durable blocks to tamper with"
        (stale, hs), (lost, _), (torn, _), (misplaced, _), (forged, hf) = durable[:5]
        older = min(g for g in hs.attempted if g < hs.durable)
        _pwrite(ctx.data_image, stale * bs,
                make_block(bs, ctx.key, stale, hs.writer, older, ctx.trial))
        _pwrite(ctx.data_image, lost * bs, bytes(bs))
        with open(ctx.data_image, "rb") as f:
            f.seek(torn * bs)
            block = bytearray(f.read(bs))
            f.seek(durable[5][0] * bs)
            other = f.read(bs)
        block[bs // 2] ^= 0xFF
        _pwrite(ctx.data_image, torn * bs, bytes(block))
        _pwrite(ctx.data_image, misplaced * bs, other)
        _pwrite(ctx.data_image, forged * bs,
                make_block(bs, ctx.key, forged, hf.writer, max(hf.attempted) + 1000, ctx.trial))
        done.update(stale=stale, lost=lost, torn=torn, misplaced=misplaced, unknown=forged)

    r = run_trial(0, 0xC0FFEE, opts, tmp_path, tamper=tamper)
    assert not r.errors, r.errors
    assert {v: r.verdicts.get(v, 0) for v in crashtest.VERDICTS_BAD} == dict.fromkeys(
        crashtest.VERDICTS_BAD, 1), r.bad_blocks
    assert {b["verdict"]: b["lba"] for b in r.bad_blocks} == done
    assert r.writes_verified < r.writes_durable
    assert not r.passed and Path(r.workdir).exists()  # a failed trial keeps its images


def _state(ctx: TrialContext) -> Path:
    return ctx.pr_image.with_name(ctx.pr_image.name + ".pr")


def test_changed_reservation_key_is_reported(tmp_path):
    """A state file that names a key no PR OUT ever set: READ KEYS after the restart shows
    it, which is neither the last acknowledged state nor the one in flight."""
    opts = Options(size=16 << 20, sessions=1, extents=4, kill_min=0.3, kill_max=0.5)
    forged_key = 0x0BAD0BAD0BAD0BAD
    applied: list[int] = []

    def tamper(ctx: TrialContext) -> None:
        path = _state(ctx)
        if not path.exists():
            return
        doc = json.loads(path.read_text())
        if not doc["registrations"]:
            return
        doc["registrations"][0]["key"] = f"0x{forged_key:016x}"
        path.write_text(json.dumps(doc))
        applied.append(ctx.trial)

    for attempt in range(6):
        r = run_trial(attempt, 0xA9791 + attempt, opts, tmp_path, tamper=tamper)
        assert not r.errors, r.errors
        if applied:
            break
    else:
        pytest.fail("no trial ended with a registration in the state file")
    assert r.aptpl_observed["keys"] == [f"{forged_key:#x}"]
    assert not r.aptpl_verified and not r.passed
    assert "APTPL state wrong" in r.failures()


def test_corrupt_state_file_is_a_restart_failure(tmp_path):
    """SPC-4 5.13.5.3.3: the preserved state is not dropped silently: our target refuses to
    start (exit status 2, naming the file); the checker reports the trial as failed."""
    opts = Options(size=16 << 20, sessions=1, extents=4, kill_min=0.3, kill_max=0.4)
    state: list[Path] = []

    def tamper(ctx: TrialContext) -> None:
        path = _state(ctx)
        assert path.exists(), "the APTPL client registered with APTPL=1: a state file exists"
        path.write_bytes(b'{"format": "scsi-target persistent reservations", "vers')
        state.append(path)

    r = run_trial(0, 0x5747E, opts, tmp_path, tamper=tamper)
    assert not r.errors, r.errors
    assert r.restart_failure is not None and str(state[0]) in r.restart_failure
    assert "exited with 2" in r.restart_failure
    assert not r.passed and "restart failed" in r.failures()


class LeftoverTempFile(AssertionError):
    """A temporary state file is still beside the image after the restart."""


def test_no_temporary_state_file_is_left_by_a_kill_mid_update(tmp_path):
    """Kill while the state file's temporary copy exists (it is seen in the directory);
    after the restart the state is the last acknowledged or the in-flight one, and no
    temporary file is left beside the image (tools/crashtest --kill-at pr-tmp): the
    restart removes it (target/scsi/reservations.py). Fails on 180a2fc."""
    opts = Options(size=16 << 20, sessions=1, extents=4, kill_min=0.2, kill_max=0.3,
                   kill_at="pr-tmp")
    for attempt in range(5):
        r = run_trial(attempt, 0x7E3F + attempt, opts, tmp_path)
        assert not r.errors, r.errors
        if r.pr_tmp_at_kill:
            break
    else:
        pytest.fail("the kill never landed while a temporary state file existed")
    assert r.restart_failure is None and r.aptpl_verified, r.aptpl_observed
    if r.leftover_tmp:
        raise LeftoverTempFile(f"leftover tmp files: {len(r.leftover_tmp)}: {r.leftover_tmp}")


def test_block_format_detects_each_change():
    """The block format alone: a torn byte breaks the digest, the header names the LBA."""
    key = bytes(16)
    b = make_block(512, key, 7, 1, 3, 0)
    assert crashtest.parse_block(b) == (7, 1, 3, 0)
    torn = bytearray(b)
    torn[100] ^= 1
    assert crashtest.parse_block(bytes(torn)) is None
    hist = crashtest.LbaHistory(1, {2, 3}, durable=3)
    assert crashtest.classify(b, 7, hist, 512, key, 0) == ("ok", 3)
    assert crashtest.classify(b, 8, None, 512, key, 0)[0] == "misplaced"
    assert crashtest.classify(make_block(512, key, 7, 1, 2, 0), 7, hist, 512, key, 0) == (
        "stale", 2)
    assert crashtest.classify(bytes(512), 7, hist, 512, key, 0) == ("lost", None)
    assert crashtest.classify(bytes(512), 7, None, 512, key, 0) == ("zero-unwritten", None)
    assert crashtest.classify(make_block(512, key, 7, 1, 9, 0), 7, hist, 512, key, 0)[0] == (
        "unknown")
    assert struct.unpack_from(">8s", b)[0] == crashtest.MAGIC
