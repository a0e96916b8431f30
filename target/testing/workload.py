"""Seeded random concurrent block workloads over real sockets, recorded as a history for
the ordering oracle (target.testing.ordering). For tests, soak runs and tools.

Rules:
- Everything random comes from one seed: the operations, their ranges, attributes and
  bursts, and each session's TCP segmentation. Timing (what the target does when) is not
  seeded, so two runs of one seed differ in their interleaving, never in their plan.
- Several sessions (target.testing.pipelined), each keeping `depth` commands in flight, on
  one target with one or more LUs. Ranges concentrate on a few hot blocks per LU so
  commands overlap; READ(10), WRITE(10), WRITE SAME(10), WRITE SAME(16) with UNMAP (a
  zero block as its data, so a device server that writes instead of unmapping leaves the
  same zeros, SBC-4 5.45), UNMAP (thin LUs: SBC-4 5.30), COMPARE AND WRITE (verify data:
  what the session last saw at those blocks), WRITE ATOMIC(16) where the LU has it;
  SIMPLE, ORDERED and HEAD OF QUEUE tasks; bursts (several commands in one socket write)
  led by the known trigger: READ of X immediately followed by WRITE of X.
- Every written block is unique (ordering.encode_block: operation id and LBA), so each
  block a read returns names its writer. A command's outcome is its status; a command
  that ended without one (connection lost, TargetError) is recorded with status None.
- The history is per LU; the oracle gets each LU's QAM as the target reports it (control
  mode page, SPC-4 7.5.8), read before the workload starts.
- Before the run the region is written with zeros (the oracle's initial content), so a LU
  can serve one run after another. Kinds the target does not support (probed once just
  past the region: ILLEGAL REQUEST) are left out of the mix and named in the result.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from target.testing import cdb as C
from target.testing import ordering as o
from target.testing.pipelined import (
    HEAD_OF_QUEUE,
    ORDERED,
    SIMPLE,
    RandomSegmenter,
    Request,
    Response,
    Session,
)

ILLEGAL_REQUEST = 0x05
MISCOMPARE = 0x0E
GOOD = 0


@dataclass
class LunSpec:
    lun: int
    block_size: int = 512
    thin: bool = False
    region: int = 4096           # blocks the workload uses, from LBA 0
    hot: int = 6                 # hot spots
    name: str = ""


@dataclass
class SessionSpec:
    name: str
    keys: dict[str, str | int] = field(default_factory=dict)
    depth: int = 16
    segment: int | None = None   # max piece size of a random segmenter (None: none)
    pause_probability: float = 0.0
    burst_probability: float = 0.1
    data_segment_limit: int | None = None


@dataclass
class Mix:
    """Relative weights of the kinds and attributes, and range sizes."""

    kinds: dict[str, float] = field(default_factory=lambda: {
        o.READ: 40, o.WRITE: 30, o.WRITE_SAME: 5, "WRITE SAME UNMAP": 3, o.UNMAP: 3,
        o.COMPARE_AND_WRITE: 8, o.WRITE_ATOMIC: 6})
    attrs: dict[int, float] = field(default_factory=lambda: {
        SIMPLE: 80, ORDERED: 10, HEAD_OF_QUEUE: 10})
    max_blocks: int = 16
    hot_probability: float = 0.8


@dataclass
class Result:
    seed: int
    ops: list[o.Op]
    qam: dict[int, int]
    seconds: float
    unsupported: list[str]
    target_errors: dict[str, dict[str, int]]     # session -> kind -> count
    error_examples: dict[str, str]
    statuses: dict[str, int]                     # "KIND status" -> count
    sessions_lost: list[str]

    def check(self) -> o.Report:
        return o.check(self.ops, qam=self.qam)

    def describe(self, report: o.Report, limit: int = 5) -> str:
        """The seed, the violations and the operations they involve, for a failure."""
        by_id = {op.id: op for op in self.ops}
        lines = [f"seed {self.seed}: {len(report.violations)} violation(s) in {len(self.ops)} "
                 f"operations ({report.reads_checked} reads, {report.blocks_checked} blocks "
                 f"checked, QAM {self.qam})"]
        for v in report.violations[:limit]:
            lines.append(f"- {v}")
            for i in sorted(set(v.involved)):
                op = by_id.get(i)
                if op is not None:
                    lines.append(f"    {op.label()} sent={op.sent} done={op.done}")
        return "\n".join(lines)


class _Planner:
    """What the next command is; one per session, each with its own random stream."""

    def __init__(self, rng: random.Random, luns: list[LunSpec], mix: Mix,
                 kinds: dict[int, dict[str, float]], ids: itertools.count,
                 seen: dict[tuple[int, int], Hashable]) -> None:
        self.rng = rng
        self.luns = luns
        self.mix = mix
        self.kinds = kinds
        self.ids = ids
        self.seen = seen
        self.hot = {lu.lun: [rng.randrange(0, lu.region - mix.max_blocks)
                             for _ in range(lu.hot)] for lu in luns}

    def _range(self, lu: LunSpec, blocks: int) -> int:
        rng = self.rng
        if rng.random() < self.mix.hot_probability:
            lba = rng.choice(self.hot[lu.lun]) + rng.randint(-blocks + 1, 2)
        else:
            lba = rng.randrange(0, lu.region - blocks)
        return max(0, min(lba, lu.region - blocks))

    def plan(self, kind: str | None = None, lu: LunSpec | None = None,
             lba: int | None = None, blocks: int | None = None) -> tuple[Request, o.Op]:
        rng = self.rng
        lu = lu or rng.choice(self.luns)
        weights = self.kinds[lu.lun]
        kind = kind or rng.choices(list(weights), list(weights.values()))[0]
        attr = rng.choices(list(self.mix.attrs), list(self.mix.attrs.values()))[0]
        if blocks is None:
            top = 4 if kind in (o.COMPARE_AND_WRITE,) else self.mix.max_blocks
            blocks = rng.randint(1, top)
        if lba is None:
            lba = self._range(lu, blocks)
        op_id = next(self.ids)
        bs = lu.block_size
        ranges = ((lba, blocks),)
        op = o.Op(op_id, o.READ, ranges, lu=lu.lun, attr=attr)
        if kind == o.READ:
            req = Request(C.read10(lba, blocks), lu.lun, read=blocks * bs, attr=attr)
        elif kind in (o.WRITE, o.WRITE_ATOMIC):
            data = b"".join(o.encode_block(op_id, lba + i, bs) for i in range(blocks))
            op.kind = kind
            op.writes = {lba + i: o.tag(op_id, lba + i) for i in range(blocks)}
            cdb = C.write10(lba, blocks) if kind == o.WRITE else C.write_atomic16(lba, blocks)
            req = Request(cdb, lu.lun, data=data, attr=attr)
        elif kind == o.WRITE_SAME:
            op.kind = o.WRITE_SAME
            op.writes = {lba + i: o.tag(op_id, lba) for i in range(blocks)}
            req = Request(C.write_same10(lba, blocks), lu.lun,
                          data=o.encode_block(op_id, lba, bs), attr=attr)
        elif kind == "WRITE SAME UNMAP":
            op.kind = o.WRITE_SAME
            op.writes = {lba + i: o.ZERO for i in range(blocks)}
            req = Request(C.write_same16(lba, blocks, unmap=True), lu.lun, data=bytes(bs),
                          attr=attr)
        elif kind == o.UNMAP:
            op.kind = o.UNMAP
            op.writes = {lba + i: o.ZERO for i in range(blocks)}
            cdb, params = C.unmap([(lba, blocks)])
            req = Request(cdb, lu.lun, data=params, attr=attr)
        elif kind == o.COMPARE_AND_WRITE:
            op.kind = o.COMPARE_AND_WRITE
            verify = [self.seen.get((lu.lun, lba + i), o.ZERO) for i in range(blocks)]
            op.observed = {lba + i: v for i, v in enumerate(verify)}
            op.writes = {lba + i: o.tag(op_id, lba + i) for i in range(blocks)}
            data = b"".join(_block_of(v, bs) for v in verify) + b"".join(
                o.encode_block(op_id, lba + i, bs) for i in range(blocks))
            req = Request(C.compare_and_write(lba, blocks), lu.lun, data=data, attr=attr)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        return req, op


def _block_of(value: Hashable, bs: int) -> bytes:
    """The block content a value stands for (for COMPARE AND WRITE verify data)."""
    if isinstance(value, tuple) and value and value[0] == "tag":
        return o.encode_block(value[1], value[2], bs)
    return bytes(bs)


class Workload:
    def __init__(self, host: str, port: int, iqn: str, luns: list[LunSpec],
                 sessions: list[SessionSpec], *, seed: int, seconds: float = 3.0,
                 max_ops: int | None = None, mix: Mix | None = None,
                 initiator_prefix: str = "iqn.2026-11.local.scsi-target:ordering") -> None:
        self.host, self.port, self.iqn = host, port, iqn
        self.luns = luns
        self.specs = sessions
        self.seed = seed
        self.seconds = seconds
        self.max_ops = max_ops
        self.mix = mix or Mix()
        self.prefix = initiator_prefix
        self.ops: list[o.Op] = []
        self.ids = itertools.count(1)
        self.seen: dict[tuple[int, int], Hashable] = {}
        self.statuses: dict[str, int] = {}
        self.unsupported: list[str] = []
        self.lost: list[str] = []

    async def run(self) -> Result:
        rng = random.Random(self.seed)
        sessions = []
        for i, spec in enumerate(self.specs):
            seg = None
            if spec.segment:
                seg = RandomSegmenter(random.Random(rng.getrandbits(64)), max_size=spec.segment,
                                      pause_probability=spec.pause_probability)
            sessions.append(Session(self.host, self.port, self.iqn,
                                    initiator_name=f"{self.prefix}-{spec.name}",
                                    isid=0x400000000100 + i, segmenter=seg,
                                    name=spec.name, data_segment_limit=spec.data_segment_limit,
                                    **spec.keys))
        opened = []
        try:
            for s in sessions:
                await s.open()
                opened.append(s)
            qam, kinds = await self._prepare(sessions[0])
            planners = [_Planner(random.Random(rng.getrandbits(64)), self.luns, self.mix,
                                 kinds, self.ids, self.seen) for _ in sessions]
            start = time.monotonic()
            deadline = start + self.seconds
            await asyncio.gather(*(self._drive(s, spec, p, deadline) for s, spec, p in
                                   zip(sessions, self.specs, planners, strict=True)))
            seconds = time.monotonic() - start
            for s in sessions:
                if not s.closed:
                    await s.drain()
                    await s.logout()
        finally:
            for s in opened:
                await s.close()
        return Result(self.seed, self.ops, qam, seconds, self.unsupported,
                      {s.name: dict(s.target_errors) for s in sessions if s.target_errors},
                      {k: v for s in sessions for k, v in s.target_error_examples.items()},
                      dict(sorted(self.statuses.items())), self.lost)

    async def _prepare(self, s: Session) -> tuple[dict[int, int], dict[int, dict[str, float]]]:
        """Clear the unit attention, zero the region (so the oracle's initial content holds
        on a LU used before), read each LU's QAM, and probe which kinds each LU supports
        (just past the region)."""
        qam: dict[int, int] = {}
        kinds: dict[int, dict[str, float]] = {}
        for lu in self.luns:
            for _ in range(4):
                if (await s.command(C.TEST_UNIT_READY, lun=lu.lun)).status == GOOD:
                    break
            chunk = max(1, (64 << 10) // lu.block_size)
            zeros = bytes(chunk * lu.block_size)
            for lba in range(0, lu.region, chunk):
                n = min(chunk, lu.region - lba)
                r = await s.command(C.write10(lba, n), lun=lu.lun,
                                    data=zeros[:n * lu.block_size])
                if r.status != GOOD:
                    raise RuntimeError(f"LUN {lu.lun}: zeroing LBA {lba} failed: {r}")
            r = await s.command(C.mode_sense10(C.CONTROL_PAGE), lun=lu.lun, read=252)
            qam[lu.lun] = C.control_mode_qam(r.data) if r.status == GOOD else 0
            weights = dict(self.mix.kinds)
            if not lu.thin:
                weights.pop(o.UNMAP, None)
                weights.pop("WRITE SAME UNMAP", None)
            planner = _Planner(random.Random(0), [lu], self.mix, {lu.lun: weights},
                               itertools.count(1 << 40), {})
            probe_lba = lu.region + 8
            for kind in list(weights):
                if kind == o.READ:
                    continue
                req, _ = planner.plan(kind, lu, probe_lba, 1)
                req.attr = SIMPLE
                r = await s.command(req.cdb, lun=lu.lun, read=req.read, data=req.data)
                if r.status != GOOD and r.sense_key == ILLEGAL_REQUEST:
                    weights.pop(kind)
                    self.unsupported.append(f"LUN {lu.lun}: {kind}")
            kinds[lu.lun] = weights
        return qam, kinds

    async def _drive(self, s: Session, spec: SessionSpec, planner: _Planner,
                     deadline: float) -> None:
        for lu in self.luns:  # each session's own unit attention (power on, reset)
            for _ in range(4):
                if (await s.command(C.TEST_UNIT_READY, lun=lu.lun)).status == GOOD:
                    break
        sem = asyncio.Semaphore(spec.depth)
        pending: set[asyncio.Task] = set()
        rng = planner.rng
        while time.monotonic() < deadline and not s.closed:
            if self.max_ops is not None and len(self.ops) >= self.max_ops:
                break
            if rng.random() < spec.burst_probability:
                batch = self._burst_plan(planner)
                for _ in batch:
                    await sem.acquire()
                try:
                    cmds = await s.burst([req for req, _ in batch])
                except ConnectionError:
                    for _ in batch:
                        sem.release()
                    break
                for (_, op), cmd in zip(batch, cmds, strict=True):
                    pending.add(asyncio.ensure_future(self._record(s, cmd, op, sem)))
            else:
                await sem.acquire()
                req, op = planner.plan()
                try:
                    cmd = s.submit(req.cdb, lun=req.lun, read=req.read, data=req.data,
                                   attr=req.attr)
                except ConnectionError:
                    sem.release()
                    break
                pending.add(asyncio.ensure_future(self._record(s, cmd, op, sem)))
            for task in [t for t in pending if t.done()]:
                pending.discard(task)
                task.result()  # a recording error is the harness's bug: raise it
        if pending:
            await asyncio.gather(*pending)

    def _burst_plan(self, planner: _Planner) -> list[tuple[Request, o.Op]]:
        rng = planner.rng
        lu = rng.choice(self.luns)
        kinds = planner.kinds[lu.lun]
        blocks = rng.randint(1, self.mix.max_blocks)
        lba = planner._range(lu, blocks)
        if rng.random() < 0.6:  # the known trigger: READ X, then WRITE X
            second = o.WRITE if rng.random() < 0.7 or o.WRITE_ATOMIC not in kinds \
                else o.WRITE_ATOMIC
            batch = [planner.plan(o.READ, lu, lba, blocks), planner.plan(second, lu, lba, blocks)]
            batch[0][0].attr = batch[1][0].attr = SIMPLE
            batch[0][1].attr = batch[1][1].attr = SIMPLE
            if rng.random() < 0.3:
                batch.append(planner.plan(o.READ, lu, lba, blocks))
            return batch
        return [planner.plan(None, lu) for _ in range(rng.randint(2, 4))]

    async def _record(self, s: Session, cmd, op: o.Op, sem: asyncio.Semaphore) -> None:
        try:
            try:
                r: Response | None = await cmd
            except Exception:  # noqa: BLE001 - no status: the outcome is unknown
                r = None
                if s.name not in self.lost:
                    self.lost.append(s.name)
            op.session = s.name
            op.order = cmd.order
            op.sent = cmd.sent
            op.done = cmd.done if r is not None and r.status is not None else None
            op.status = None if r is None else r.status
            key = f"{op.kind} {'none' if op.status is None else hex(op.status)}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if (r is not None and r.status not in (None, GOOD)
                    and op.kind == o.COMPARE_AND_WRITE and r.sense_key == MISCOMPARE):
                op.miscompare = True
            bs = self._block_size(op.lu)
            lba = op.ranges[0][0]
            if op.kind == o.READ:
                if r is not None and r.status == GOOD:
                    op.observed = o.decode_blocks(r.data, bs, lba)
                    self.seen.update({(op.lu, b): v for b, v in op.observed.items()})
            elif op.kind == o.COMPARE_AND_WRITE and op.status != GOOD and not op.miscompare:
                op.observed = {}
            if op.status == GOOD and op.kind in o.WRITING:
                self.seen.update({(op.lu, b): v for b, v in op.writes.items()})
            if op.sent is None and op.status is not None:
                raise AssertionError(f"{cmd!r} has a status but no send time")
            if op.sent is not None:
                self.ops.append(op)
        finally:
            sem.release()

    def _block_size(self, lun: int) -> int:
        return next(lu.block_size for lu in self.luns if lu.lun == lun)


def immediate_sessions() -> list[SessionSpec]:
    """Sessions whose write data all travels with the command (immediate data, or
    unsolicited Data-Out right behind it): no R2T, so every task is complete on arrival.
    Between them: bursts; Data-In in 1 KiB PDUs; the stream cut into 1..64-byte pieces with
    tiny pauses; all data as unsolicited Data-Out in 1 KiB PDUs, cut into pieces."""
    return [
        SessionSpec("bursts", {}, depth=16, burst_probability=0.25),
        SessionSpec("small-data-in", {"MaxRecvDataSegmentLength": 1024,
                                      "MaxBurstLength": 8192, "FirstBurstLength": 8192},
                    depth=16, burst_probability=0.1),
        SessionSpec("cut", {}, depth=16, segment=64, pause_probability=0.01,
                    burst_probability=0.3),
        SessionSpec("unsolicited", {"ImmediateData": "No", "InitialR2T": "No",
                                    "FirstBurstLength": 65536},
                    depth=16, segment=900, pause_probability=0.02, data_segment_limit=1024,
                    burst_probability=0.1),
    ]


def r2t_sessions() -> list[SessionSpec]:
    """Sessions whose writes need R2Ts: R2T only, 1 KiB bursts, two outstanding, 512-byte
    Data-Out, the stream cut into 1500-byte pieces; immediate + unsolicited first burst of
    2 KiB then R2Ts of 4 KiB, four outstanding, cut into 900-byte pieces with pauses."""
    return [
        SessionSpec("r2t", {"ImmediateData": "No", "InitialR2T": "Yes",
                            "MaxBurstLength": 1024, "FirstBurstLength": 1024,
                            "MaxOutstandingR2T": 2, "MaxRecvDataSegmentLength": 1024},
                    depth=16, segment=1500, data_segment_limit=512, burst_probability=0.15),
        SessionSpec("first-burst-r2t", {"ImmediateData": "Yes", "InitialR2T": "No",
                                        "FirstBurstLength": 2048, "MaxBurstLength": 4096,
                                        "MaxOutstandingR2T": 4,
                                        "MaxRecvDataSegmentLength": 2048},
                    depth=16, segment=900, pause_probability=0.02, data_segment_limit=1024,
                    burst_probability=0.15),
    ]


# --- long runs from the command line --------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python -m target.testing.workload`: seeded workloads against our target (a memory
    LU and a file LU on /dev/shm) or tgtd, checked by the weak oracle; exit status 1 on a
    violation (the seed and the operations are printed)."""
    import argparse
    import shutil
    import tempfile
    from pathlib import Path

    from target.testing.servers import OurTarget, Tgtd

    ap = argparse.ArgumentParser(prog="python -m target.testing.workload", description=main.__doc__)
    ap.add_argument("--target", choices=("ours", "tgtd"), default="ours")
    ap.add_argument("--seconds", type=float, default=30.0, help="per run")
    ap.add_argument("--seeds", default="1", help="comma-separated, one run each")
    ap.add_argument("--sessions", choices=("immediate", "r2t", "all"), default="immediate")
    ap.add_argument("--simple-only", action="store_true", help="SIMPLE tasks only")
    ap.add_argument("--lus", choices=("both", "memory", "file"), default="both",
                    help="our target's LUs to use")
    args = ap.parse_args(argv)
    specs = {"immediate": immediate_sessions, "r2t": r2t_sessions,
             "all": lambda: immediate_sessions() + r2t_sessions()}[args.sessions]
    mix = Mix()
    if args.simple_only:
        mix.attrs = {SIMPLE: 1.0}
    work = Path(tempfile.mkdtemp(prefix="workload-"))
    shm = Path(tempfile.mkdtemp(prefix="workload-", dir="/dev/shm" if Path("/dev/shm").is_dir()
                                else None))
    iqn = "iqn.2026-11.local.scsi-target:ordering"
    failed = 0
    try:
        if args.target == "ours":
            cfg = work / "ordering.toml"
            cfg.write_text(f'[[target]]\niqn = "{iqn}"\n[[target.lun]]\nlun = 0\n'
                           f'store = "memory"\nsize = "8M"\nthin = true\n[[target.lun]]\n'
                           f'lun = 1\nstore = "file"\npath = "{shm / "lun1.img"}"\n'
                           f'size = "8M"\n')
            server = OurTarget([], config=cfg, workdir=work, iqn=iqn)
            luns = {"both": [LunSpec(0, thin=True), LunSpec(1)],
                    "memory": [LunSpec(0, thin=True)], "file": [LunSpec(1)]}[args.lus]
        else:
            img = shm / "tgtd.img"
            with open(img, "wb") as f:
                f.truncate(8 << 20)
            server = Tgtd(img, workdir=work)
            luns = [LunSpec(1)]
        with server:
            if args.target == "tgtd":
                for name, value in (("InitialR2T", "No"), ("MaxOutstandingR2T", "16")):
                    server.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "update",
                                  "--tid", "1", "--name", name, "--value", value)
            for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
                w = Workload("127.0.0.1", server.port, server.iqn, luns, specs(), seed=seed,
                             seconds=args.seconds, mix=mix)
                result = asyncio.run(w.run())
                started = time.monotonic()
                report = result.check()
                print(f"seed {seed}: {len(result.ops)} operations in {result.seconds:.1f} s, "
                      f"checked in {time.monotonic() - started:.1f} s: "
                      f"{len(report.violations)} violation(s); QAM {result.qam}; "
                      f"statuses {result.statuses}"
                      + (f"; unsupported {result.unsupported}" if result.unsupported else "")
                      + (f"; target errors {result.target_errors}" if result.target_errors
                         else ""), flush=True)
                if report.violations:
                    failed += 1
                    print(result.describe(report), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
