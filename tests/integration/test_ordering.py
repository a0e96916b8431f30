"""Task order as a guest's disk driver sees it: what reads return under concurrent,
pipelined, overlapping work, judged by the ordering oracle (target.testing.ordering).

What must hold (SAM-5 8.6 task attributes; SPC-4 7.5.8 control mode page, QAM=0 restricted
reordering, as our LUs report; RFC 7143 3.2.2.1 commands are delivered for execution in
CmdSN order; SBC-4 5.3 COMPARE AND WRITE and 4.29 WRITE ATOMIC all or nothing; SBC-4
4.7.4.5 LBPRZ: UNMAPped blocks read as zeros):
- a read returns, at every block, the data of the last write before it in a task order
  that keeps every order known from the sockets: a command whose status arrived before
  another was sent ran first; within a session, a newer SIMPLE task runs after an older
  one it overlaps when either writes (QAM=0), after an older ORDERED or HEAD OF QUEUE one;
  an ORDERED task runs after every older task and before every newer SIMPLE/ORDERED one;
- the data a read returns is the medium's content when the read ran: a write the target
  processed after the read cannot show up in it, even when its Data-In is still queued
  (DESIGN.md principle 5);
- with QAM=0 no read shows a mix of two overlapping writes, never part of an atomic one.

Workloads: seeded random operations from several sessions, at most 16 in flight each,
over a memory LU (thin: UNMAP, WRITE SAME UNMAP) and a file LU on /dev/shm, hot blocks,
READ(10), WRITE(10), WRITE SAME(10)/(16) UNMAP, UNMAP, COMPARE AND WRITE, WRITE ATOMIC(16),
SIMPLE/ORDERED/HEAD OF QUEUE, bursts led by READ X + WRITE X in one socket write, random
TCP segmentation, multi-PDU Data-In, unsolicited Data-Out; and (the second workload) writes
through R2T with 1 KiB bursts.

The defects these tests were written against (issue 11; each test fails on 180a2fc):
- DEFECT-A (data corruption): a READ on a memory LU returned data written by a later
  command: the Data-In was a live view of the store's pages, sent after later writes ran.
- DEFECT-B (task order): a command entered the LU's task set only when all of its
  Data-Out was in, so a newer command overtook an older WRITE (or COMPARE AND WRITE)
  waiting for R2T data: a newer overlapping READ returned the data from before the older
  WRITE, and an ORDERED task ran before an older one.

Run longer: ORDERING_SECONDS=60 ORDERING_SEEDS=1,2,3 pytest tests/integration/test_ordering.py
(default 2.5 s per workload, seeds 1 and 2), or `python -m target.testing.workload --help`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from target.testing import cdb
from target.testing import ordering as o
from target.testing.pipelined import ORDERED, Request, Session
from target.testing.servers import OurTarget, Tgtd, find_program, initiator_iqn
from target.testing.workload import (
    LunSpec,
    Mix,
    Workload,
    immediate_sessions,
    r2t_sessions,
)

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("ORDERING_SECONDS", "2.5"))
SEEDS = [int(s) for s in os.environ.get("ORDERING_SEEDS", "1,2").split(",") if s.strip()]
IQN = "iqn.2026-11.local.scsi-target:ordering"
BS = 512

@pytest.fixture
def shm_dir():
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="ordering-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def two_lus(tmp_path, shm_dir):
    """LUN 0: memory, thin; LUN 1: a file on /dev/shm, fully provisioned."""
    cfg = tmp_path / "ordering.toml"
    cfg.write_text(f"""
[[target]]
iqn = "{IQN}"

[[target.lun]]
lun = 0
store = "memory"
size = "8M"
thin = true

[[target.lun]]
lun = 1
store = "file"
path = "{shm_dir / 'lun1.img'}"
size = "8M"
""")
    with OurTarget([], config=cfg, workdir=tmp_path, iqn=IQN) as t:
        yield t


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def workload_report(result) -> tuple[o.Report, str]:
    report = result.check()
    first = ""
    if report.violations:
        by_id = {op.id: op for op in result.ops}
        start = min(op.sent for op in result.ops)
        earliest = min(by_id[v.op].sent for v in report.violations)
        n_before = sum(1 for op in result.ops if op.sent < earliest)
        first = (f"\nfirst violation {(earliest - start) / 1e6:.1f} ms into the run, after "
                 f"{n_before} operations; rules: "
                 f"{sorted({v.rule for v in report.violations})}")
    return report, result.describe(report) + first


def assert_mix_ran(result, kinds: set[str]) -> None:
    """The workload did what it claims: every kind ran, COMPARE AND WRITE both ways."""
    ran = {key.rsplit(" ", 1)[0] for key in result.statuses}
    assert kinds <= ran, f"kinds that never ran: {kinds - ran} ({result.statuses})"
    if o.COMPARE_AND_WRITE in kinds:
        assert result.statuses.get("COMPARE AND WRITE 0x0", 0) > 0
        assert result.statuses.get("COMPARE AND WRITE 0x2", 0) > 0  # MISCOMPARE


ALL_KINDS = {o.READ, o.WRITE, o.WRITE_SAME, o.UNMAP, o.COMPARE_AND_WRITE, o.WRITE_ATOMIC}


# --- the known triggers, one at a time -----------------------------------------------------

async def _clear_ua(s: Session, lun: int) -> None:
    for _ in range(4):
        if (await s.command(cdb.TEST_UNIT_READY, lun=lun)).status == 0:
            return


def _block(c: int) -> bytes:
    return bytes([c]) * BS


@pytest.mark.parametrize("lun", [0, 1], ids=["memory", "file"])
def test_read_then_write_in_one_burst_returns_the_old_data(two_lus, lun):
    """DEFECT-A's trigger. READ X then WRITE X in one socket write, one session: the READ is
    older in CmdSN order (RFC 7143 3.2.2.1) and overlaps the WRITE, so with QAM=0 the WRITE
    runs after it (SPC-4 7.5.8) and the READ returns what was there before (SAM-5 8.6)."""
    async def main() -> int:
        wrong = 0
        async with Session("127.0.0.1", two_lus.port, IQN,
                           initiator_name=initiator_iqn("burst-rw")) as s:
            await _clear_ua(s, lun)
            for i in range(50):
                old, new = _block(2 * i + 1), _block(2 * i + 2)
                assert (await s.command(cdb.write10(100, 1), lun=lun, data=old)).status == 0
                r, w = await s.burst([Request(cdb.read10(100, 1), lun, read=BS),
                                      Request(cdb.write10(100, 1), lun, data=new)])
                wrong += (await r).data != old
                assert (await w).status == 0
        return wrong

    wrong = run(main())
    assert wrong == 0, f"{wrong} of 50 READs returned the data of the WRITE sent after them"


@pytest.mark.parametrize("lun", [0, 1], ids=["memory", "file"])
def test_write_by_r2t_then_read_returns_the_new_data(two_lus, lun):
    """DEFECT-B's trigger. WRITE X whose data goes by R2T (ImmediateData=No), then READ X,
    one session: the WRITE is older and overlaps, so with QAM=0 the READ runs after it and
    returns its data; an ORDERED READ likewise (SAM-5 8.6.3: after every older task)."""
    async def main() -> int:
        wrong = 0
        async with Session("127.0.0.1", two_lus.port, IQN,
                           initiator_name=initiator_iqn("r2t-wr"), ImmediateData="No",
                           InitialR2T="Yes") as s:
            await _clear_ua(s, lun)
            for i in range(50):
                old, new = _block(2 * i + 1), _block(2 * i + 2)
                assert (await s.command(cdb.write10(100, 1), lun=lun, data=old)).status == 0
                attr = ORDERED if i % 2 else 1
                w, r = await s.burst([Request(cdb.write10(100, 1), lun, data=new),
                                      Request(cdb.read10(100, 1), lun, read=BS, attr=attr)])
                assert (await w).status == 0
                wrong += (await r).data != new
        return wrong

    wrong = run(main())
    assert wrong == 0, f"{wrong} of 50 READs returned the data from before an older WRITE"


# --- random workloads ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_random_workload_immediate_data(two_lus, seed):
    """Every write's data travels with its command (no R2T): four sessions (bursts; 1 KiB
    Data-In PDUs; the stream cut into 1..64-byte pieces; unsolicited Data-Out cut into
    pieces), both LUs, every kind and attribute. The weak oracle finds no violation."""
    w = Workload("127.0.0.1", two_lus.port, IQN, [LunSpec(0, thin=True), LunSpec(1)],
                 immediate_sessions(), seed=seed, seconds=SECONDS)
    result = run(w.run())
    assert result.qam == {0: 0, 1: 0}
    assert not result.target_errors, result.error_examples
    assert not result.sessions_lost
    assert_mix_ran(result, ALL_KINDS)
    report, text = workload_report(result)
    assert report.reads_checked > 100
    assert report.ok, text


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_random_workload_with_r2t(two_lus, seed):
    """Writes through R2T (1 KiB bursts, two outstanding, 512-byte Data-Out; a 2 KiB first
    burst then 4 KiB R2Ts), next to the immediate-data sessions, both LUs. The weak oracle
    finds no violation."""
    w = Workload("127.0.0.1", two_lus.port, IQN, [LunSpec(0, thin=True), LunSpec(1)],
                 immediate_sessions()[:2] + r2t_sessions(), seed=seed, seconds=SECONDS)
    result = run(w.run())
    assert not result.target_errors, result.error_examples
    assert_mix_ran(result, ALL_KINDS)
    report, text = workload_report(result)
    assert report.ok, text


# --- the reference target: a sanity check of the oracle -----------------------------------

@pytest.mark.skipif(not (find_program("tgtd") and find_program("tgtadm")),
                    reason="needs tgtd: `apt-get install tgt`")
def test_tgtd_simple_tasks_pass_the_oracle(tmp_path, shm_dir):
    """tgtd reports QAM=1 (unrestricted reordering) and orders SIMPLE tasks only by real
    time; with SIMPLE tasks only (its ORDERED handling lets newer SIMPLE tasks pass a
    waiting ORDERED one: see the report), every session kind including R2T, on a file on
    /dev/shm, the oracle must find nothing: no false alarm on the reference target. tgtd
    1.0.85 answers COMPARE AND WRITE and WRITE ATOMIC(16) with INVALID COMMAND OPERATION
    CODE and WRITE SAME's UNMAP bit with INVALID FIELD IN CDB (not thin): the workload's
    probe leaves them out. Its torn blocks (a READ running next to the overlapping WRITE
    sent after it) are allowed with QAM=1 and are accepted part by part."""
    img = shm_dir / "tgtd.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    with Tgtd(img, workdir=tmp_path) as t:
        for name, value in (("InitialR2T", "No"), ("MaxOutstandingR2T", "16")):
            t.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "update", "--tid", "1",
                     "--name", name, "--value", value)
        mix = Mix()
        mix.attrs = {1: 1.0}
        w = Workload("127.0.0.1", t.port, t.iqn, [LunSpec(1)],
                     immediate_sessions() + r2t_sessions(), seed=SEEDS[0], seconds=SECONDS,
                     mix=mix)
        result = run(w.run())
    assert result.qam == {1: 1}
    assert_mix_ran(result, {o.READ, o.WRITE, o.WRITE_SAME})
    tolerated = {"Data-In sequence above MaxBurstLength"}  # tgtd's, see the pipelined tests
    errors = {k for errs in result.target_errors.values() for k in errs} - tolerated
    assert not errors, result.error_examples
    report, text = workload_report(result)
    assert report.reads_checked > 100
    assert report.ok, text
