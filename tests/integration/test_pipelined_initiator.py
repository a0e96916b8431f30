"""target.testing.pipelined against two targets: tgtd (the reference) and ours.

What must hold (RFC 7143; SBC-4 for the data):
- Many commands in flight per session: 32 READ/WRITE(10) at once, each read returning what
  was written at its LBA (SBC-4 5.16/5.38), in whatever order the statuses come back;
  more commands than the CmdSN window holds wait for MaxCmdSN (4.2.2.1) and all complete,
  each with its timing stamps (sent before its first byte left, done after its status).
- Writes through R2T (11.8): with ImmediateData=No, InitialR2T=Yes and a small
  MaxBurstLength, a write of N bytes is asked for in ceil(N / MaxBurstLength) R2Ts, never
  more outstanding than MaxOutstandingR2T (13.17), each answered with Data-Out of at most
  the negotiated segment size, and the data lands.
- Immediate and unsolicited data (4.2.5.2, 13.10, 13.11): with ImmediateData=Yes and
  InitialR2T=No the first FirstBurstLength bytes go without R2T (immediate data, then
  unsolicited Data-Out), the target asks for the rest only.
- A byte stream cut at random (pieces of 1..700 bytes, tiny pauses, across PDU
  boundaries) and several commands in one socket write change nothing (the target
  reassembles PDUs from any TCP segmentation, RFC 7143 is a byte stream protocol).
- Task management (11.5, 11.6): ABORT TASK of a task that has completed answers "Task does
  not exist" (11.6.1: its CmdSN is outside the window); on our target (rotational model,
  dispatch depth 1, so commands wait in the task set) ABORT TASK and ABORT TASK SET end the
  queued commands without status, later commands run; LOGICAL UNIT RESET answers
  Function complete and the next command reports the reset's unit attention 29h/03h
  (SAM-5 5.14, 6.3.3).
- NOP-Out ping echoes its data (11.18); the target's NOP-In pings are answered with the
  TTT echoed (11.19), commands in flight meanwhile; Logout answers "closed successfully"
  (11.15).
Each test also asserts that the initiator saw no protocol error from the target, except
tgtd's known one: it sends Data-In sequences longer than MaxBurstLength (13.13 limits a
Data-In sequence too), recorded and tolerated there only.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from target.iscsi.pdu import TmfResponse
from target.scsi.task import Status
from target.testing import cdb
from target.testing.pipelined import (
    ORDERED,
    RandomSegmenter,
    Request,
    Response,
    Session,
    SessionClosed,
)
from target.testing.servers import OurTarget, Tgtd, find_program, initiator_iqn

pytestmark = pytest.mark.integration

BS = 512
SIZE = 64 << 20
HAVE_TGTD = bool(find_program("tgtd") and find_program("tgtadm"))
TGTD_TOLERATED = {"Data-In sequence above MaxBurstLength"}
TARGETS = ["ours", pytest.param("tgtd", marks=pytest.mark.skipif(
    not HAVE_TGTD, reason="needs tgtd: `apt-get install tgt`"))]


class Peer:
    def __init__(self, kind: str, server) -> None:
        self.kind = kind
        self.server = server
        self.port = server.port
        self.iqn = server.iqn
        self.lun = server.lun

    def session(self, tag: str, **kw) -> Session:
        return Session("127.0.0.1", self.port, self.iqn, initiator_name=initiator_iqn(tag),
                       **kw)

    def check_errors(self, s: Session) -> None:
        allowed = TGTD_TOLERATED if self.kind == "tgtd" else set()
        unexpected = {k: v for k, v in s.target_errors.items() if k not in allowed}
        assert not unexpected, (f"{self.kind}: protocol errors "
                                f"{[s.target_error_examples[k] for k in unexpected]}")


@pytest.fixture(params=TARGETS)
def peer(request, tmp_path):
    if request.param == "ours":
        with OurTarget(["--size", "64M"], workdir=tmp_path) as t:
            yield Peer("ours", t)
    else:
        img = tmp_path / "lun1.img"
        with open(img, "wb") as f:
            f.truncate(SIZE)
        with Tgtd(img, workdir=tmp_path) as t:
            # tgtd offers InitialR2T=Yes and MaxOutstandingR2T=1; let the tests choose.
            for name, value in (("InitialR2T", "No"), ("MaxOutstandingR2T", "16")):
                t.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "update", "--tid", "1",
                         "--name", name, "--value", value)
            yield Peer("tgtd", t)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def clear_unit_attention(s: Session, lun: int) -> None:
    for _ in range(4):
        if (await s.command(cdb.TEST_UNIT_READY, lun=lun)).status == Status.GOOD:
            return
    raise AssertionError("TEST UNIT READY never answered GOOD")


def pattern(tag: int, lba: int, blocks: int) -> bytes:
    """Blocks that say which write and which LBA they belong to."""
    return b"".join((f"{tag:08x}:{lba + i:012x}:".encode() * 32)[:BS] for i in range(blocks))


async def run_queue(s: Session, lun: int, jobs: list[Request], depth: int) -> list[Response]:
    """Keep `depth` of `jobs` in flight; the responses in job order; the most in flight."""
    results: list[Response | None] = [None] * len(jobs)
    sem = asyncio.Semaphore(depth)
    peak = 0

    async def one(i: int, job: Request) -> None:
        nonlocal peak
        async with sem:
            peak = max(peak, s.outstanding + 1)
            results[i] = await s.submit(job.cdb, lun=lun, read=job.read, data=job.data,
                                        attr=job.attr)

    await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))
    run_queue.peak = peak
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("segmented", [False, True], ids=["whole", "segmented"])
def test_qd32_writes_then_reads_return_the_data(peer, segmented):
    """SBC-4 5.38/5.16: every block reads back as written, with 32 commands in flight."""
    rng = random.Random(7)
    blocks = 8
    lbas = rng.sample(range(0, SIZE // BS - blocks, blocks), 256)
    seg = RandomSegmenter(11, max_size=700, pause_probability=0.05) if segmented else None

    async def main() -> None:
        async with peer.session("qd32", segmenter=seg) as s:
            await clear_unit_attention(s, peer.lun)
            writes = [Request(cdb.write10(lba, blocks), data=pattern(1, lba, blocks))
                      for lba in lbas]
            got = await run_queue(s, peer.lun, writes, 32)
            assert run_queue.peak == 32
            assert all(r.status == Status.GOOD for r in got), got[:3]
            rng.shuffle(lbas)
            reads = [Request(cdb.read10(lba, blocks), read=blocks * BS) for lba in lbas]
            got = await run_queue(s, peer.lun, reads, 32)
            for lba, r in zip(lbas, got, strict=True):
                assert r.status == Status.GOOD and r.residual == 0
                assert r.data == pattern(1, lba, blocks), f"LBA {lba}: wrong data"
            peer.check_errors(s)

    run(main())


def test_more_commands_than_the_cmdsn_window_all_complete(peer):
    """RFC 7143 4.2.2.1: commands beyond MaxCmdSN wait (none is sent outside the window,
    which the target would silently drop, hanging the command); all complete."""
    async def main() -> None:
        async with peer.session("window") as s:
            await clear_unit_attention(s, peer.lun)
            window = (s.max_cmdsn - s.cmdsn + 1) & 0xFFFFFFFF
            n = window + 200
            cmds = [s.submit(cdb.read10(i % 1024, 1), lun=peer.lun, read=BS) for i in range(n)]
            got = await asyncio.gather(*cmds)
            assert all(r.status == Status.GOOD for r in got)
            assert s.window_waits > 0, f"window {window} never filled by {n} commands"
            # Every command has its timing stamps, sent before done, in CmdSN order.
            assert all(c.sent is not None and c.sent < c.done for c in cmds)
            assert [c.sent for c in cmds] == sorted(c.sent for c in cmds)
            peer.check_errors(s)

    run(main())


def test_writes_through_r2t_with_small_bursts(peer):
    """RFC 7143 11.8 / 13.13 / 13.17: ImmediateData=No, InitialR2T=Yes, MaxBurstLength 2048,
    MaxOutstandingR2T 4: a 16 KiB write takes 8 R2Ts, at most 4 outstanding; Data-Out goes
    in 512-byte PDUs; the data lands."""
    blocks = 32

    async def main() -> None:
        async with peer.session("r2t", ImmediateData="No", InitialR2T="Yes",
                                MaxBurstLength=2048, FirstBurstLength=2048,
                                MaxOutstandingR2T=4, MaxRecvDataSegmentLength=1024,
                                data_segment_limit=512) as s:
            assert s.params.max_burst_length == 2048 and not s.params.immediate_data
            await clear_unit_attention(s, peer.lun)
            lbas = [i * blocks for i in range(48)]
            cmds = [s.submit(cdb.write10(lba, blocks), lun=peer.lun,
                             data=pattern(2, lba, blocks)) for lba in lbas]
            got = await asyncio.gather(*cmds)
            assert all(r.status == Status.GOOD for r in got)
            assert [c.r2ts for c in cmds] == [blocks * BS // 2048] * len(cmds)
            assert 1 <= s.max_r2t_outstanding <= 4
            reads = [s.submit(cdb.read10(lba, blocks), lun=peer.lun, read=blocks * BS)
                     for lba in lbas]
            for lba, r in zip(lbas, await asyncio.gather(*reads), strict=True):
                assert r.status == Status.GOOD and r.data == pattern(2, lba, blocks)
            # Data-In in segments of at most our MaxRecvDataSegmentLength (13.12).
            assert all(c.data_in_pdus >= blocks * BS // 1024 for c in reads)
            peer.check_errors(s)

    run(main())


def test_immediate_and_unsolicited_data_then_r2t(peer):
    """RFC 7143 4.2.5.2, 13.10, 13.11, 13.14: ImmediateData=Yes, InitialR2T=No,
    FirstBurstLength 8192, 1 KiB Data-Out segments: a 32 KiB write sends 1 KiB immediate,
    7 KiB unsolicited Data-Out, and the target asks for the other 24 KiB by R2T."""
    blocks = 64

    async def main() -> None:
        async with peer.session("unsolicited", ImmediateData="Yes", InitialR2T="No",
                                FirstBurstLength=8192, MaxBurstLength=16384,
                                MaxOutstandingR2T=2, data_segment_limit=1024) as s:
            p = s.params
            assert p.immediate_data and not p.initial_r2t and p.first_burst_length == 8192
            await clear_unit_attention(s, peer.lun)
            lbas = [4096 + i * blocks for i in range(16)]
            cmds = [s.submit(cdb.write10(lba, blocks), lun=peer.lun,
                             data=pattern(3, lba, blocks)) for lba in lbas]
            got = await asyncio.gather(*cmds)
            assert all(r.status == Status.GOOD for r in got)
            assert {c.unsolicited for c in cmds} == {7168}
            # 24 KiB remain after the first burst; R2Ts of at most MaxBurstLength 16 KiB.
            assert {c.r2ts for c in cmds} == {2}
            reads = await asyncio.gather(*(s.submit(cdb.read10(lba, blocks), lun=peer.lun,
                                                    read=blocks * BS) for lba in lbas))
            for lba, r in zip(lbas, reads, strict=True):
                assert r.status == Status.GOOD and r.data == pattern(3, lba, blocks)
            peer.check_errors(s)

    run(main())


def test_bursts_of_writes_and_reads(peer):
    """Several commands in one socket write (write X, read X, ORDERED read X): each is a
    separate task with its own status; the ORDERED read (SAM-5 8.6.3: after every older
    task) sees the write."""
    async def main() -> None:
        async with peer.session("burst", segmenter=RandomSegmenter(3, max_size=300)) as s:
            await clear_unit_attention(s, peer.lun)
            for i in range(20):
                lba = 8192 + 8 * i
                data = pattern(4, lba, 8)
                w, r1, r2 = await s.burst([
                    Request(cdb.write10(lba, 8), peer.lun, data=data),
                    Request(cdb.read10(lba + 8, 8), peer.lun, read=8 * BS),
                    Request(cdb.read10(lba, 8), peer.lun, read=8 * BS, attr=ORDERED)])
                assert (await w).status == Status.GOOD
                assert (await r1).status == Status.GOOD
                assert (await r2).data == data
                assert w.sent == r1.sent == r2.sent
            peer.check_errors(s)

    run(main())


def test_nop_ping_and_logout(peer):
    """RFC 7143 11.18/11.19: a NOP-Out ping is answered with its data; 11.15: Logout
    (close the session) answers 0, connection closed successfully."""
    async def main() -> None:
        s = peer.session("nop")
        await s.open()
        try:
            assert await s.nop(b"ping-1234") == b"ping-1234"
            assert await s.logout() == 0
        finally:
            await s.close()
        with pytest.raises(SessionClosed):
            s.submit(cdb.TEST_UNIT_READY)

    run(main())


def test_abort_task_of_a_completed_task_does_not_exist(peer):
    """RFC 7143 11.5.1 c) / 11.6.1: ABORT TASK naming a task that completed (its CmdSN is
    below ExpCmdSN, outside the window) answers "Task does not exist"."""
    async def main() -> None:
        async with peer.session("abort-done") as s:
            await clear_unit_attention(s, peer.lun)
            cmd = s.submit(cdb.read10(0, 1), lun=peer.lun, read=BS)
            assert (await cmd).status == Status.GOOD
            assert await s.abort_task(cmd) == TmfResponse.TASK_DOES_NOT_EXIST
            assert (await s.command(cdb.read10(0, 1), lun=peer.lun, read=BS)).status == 0
            peer.check_errors(s)

    run(main())


def test_logical_unit_reset_then_unit_attention(peer):
    """SAM-5 6.3.3 / 5.14: LOGICAL UNIT RESET answers Function complete (RFC 7143 11.6.1)
    and establishes POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/xx) for the nexus:
    the next command ends CHECK CONDITION, UNIT ATTENTION 29h."""
    async def main() -> None:
        async with peer.session("lu-reset") as s:
            await clear_unit_attention(s, peer.lun)
            assert await s.lu_reset(peer.lun) == TmfResponse.COMPLETE
            r = await s.command(cdb.TEST_UNIT_READY, lun=peer.lun)
            assert r.status == Status.CHECK_CONDITION and r.sense_key == 0x6
            assert r.asc_ascq[0] == 0x29
            peer.check_errors(s)

    run(main())


def test_abort_task_and_task_set_end_queued_commands(tmp_path):
    """RFC 7143 11.5.1, SAM-5 7.2/7.3 on our target, whose LU (rotational model, dispatch
    depth 1) keeps the commands waiting: ABORT TASK of a queued READ answers Function
    complete and that READ gets no status; ABORT TASK SET ends every queued one the same
    way; a later command runs normally."""
    backing = tmp_path / "lun0.img"
    with open(backing, "wb") as f:
        f.truncate(256 << 20)

    async def main(t: OurTarget) -> None:
        async with Session("127.0.0.1", t.port, t.iqn,
                           initiator_name=initiator_iqn("abort")) as s:
            await clear_unit_attention(s, 0)
            far = [(i * 7919 * 64) % (500_000) for i in range(24)]
            cmds = [s.submit(cdb.read10(lba, 8), read=8 * BS) for lba in far]
            victim = cmds[-1]
            await asyncio.sleep(0.02)
            assert await s.abort_task(victim) == TmfResponse.COMPLETE
            assert (await victim).aborted and (await victim).status is None
            assert await s.abort_task_set(0) == TmfResponse.COMPLETE
            outcomes = await asyncio.gather(*cmds[:-1])
            aborted = [r for r in outcomes if r.aborted]
            assert aborted, "nothing was still queued to abort"
            assert all(r.status == Status.GOOD for r in outcomes if not r.aborted)
            assert (await s.command(cdb.read10(0, 1), read=BS)).status == Status.GOOD
            assert s.late_responses == 0, "the target answered tasks it had aborted"
            assert not s.target_errors, s.target_error_examples

    with OurTarget(["--backing", str(backing), "--rotational", "--dispatch-depth", "1"],
                   workdir=tmp_path) as t:
        run(main(t))


def test_target_pings_are_answered(tmp_path):
    """RFC 7143 11.19: a NOP-In with a Target Transfer Tag asks for a NOP-Out that echoes
    it; our target (nop_interval 0.05 s) drops a connection whose last ping went
    unanswered, so a session that lives through many pings, with commands in flight,
    answered them all."""
    cfg = tmp_path / "nop.toml"
    cfg.write_text('nop_interval = 0.05\n[[target]]\niqn = "iqn.2026-11.local.test:nop"\n'
                   '[[target.lun]]\nsize = "8M"\n')

    async def main(t: OurTarget) -> None:
        async with Session("127.0.0.1", t.port, t.iqn,
                           initiator_name=initiator_iqn("nop-in")) as s:
            await clear_unit_attention(s, 0)
            for _ in range(40):
                cmds = [s.submit(cdb.read10(8 * j, 8), read=8 * BS) for j in range(8)]
                assert all(r.status == Status.GOOD for r in await asyncio.gather(*cmds))
                await asyncio.sleep(0.01)
            assert s.nop_ins_answered >= 4, s.nop_ins_answered
            assert not s.closed and not s.target_errors, s.target_error_examples

    with OurTarget([], config=cfg, workdir=tmp_path, iqn="iqn.2026-11.local.test:nop") as t:
        run(main(t))
