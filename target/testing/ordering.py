"""A pure model (no I/O) that checks a recorded history of block commands against what the
task-set rules allow: which writer each block a read returned may show.

Operations. Each operation has an id, a session, a LU, a kind (READ, WRITE, WRITE SAME,
UNMAP, COMPARE AND WRITE, WRITE ATOMIC), block ranges, a task attribute, the value it
writes at each block if it takes effect (`writes`), its status and, for a read, the value
it returned at each block (`observed`; for a COMPARE AND WRITE, its verify data). Values
are opaque and hashable: encode_block()/decode_block() make every written block unique (a
tag with the operation's id and the LBA), so a read says which operation wrote each
block; ZERO is what a block holds before any write and after UNMAP, or WRITE SAME with
UNMAP=1 on a thin LU (SBC-4 4.7.4.5, LBPRZ=1: a deallocated block reads as zeros).
- A write with GOOD took effect; one without status (aborted, connection lost) may or may
  not have; any other status wrote nothing (a MISCOMPARE COMPARE AND WRITE, SBC-4 5.3).
- A COMPARE AND WRITE with GOOD is, in one indivisible step, a read that found its
  verify data and a write of its write data; with MISCOMPARE it wrote nothing and found
  something other than its verify data.

Happens-before (what is known to have run before what):
- Real time: A completed before B was sent (A's status received before B left, weak) or
  before B entered the task set (strong) => A before B, on any LU.
- Task-set order ("older"): weak knowledge knows it for two commands of one session (CmdSN
  order: RFC 7143 3.2.2.1 delivers commands for execution in CmdSN order) and, across
  sessions, A older than B when a command of A's session sent after A completed before B
  was sent; strong knowledge has the order of entry into the LU's task set.
- For A older than B on the same LU (SAM-5 8.6; SPC-4 7.5.8; target/scsi/taskset.py):
  an ORDERED B runs after every older task; a SIMPLE or ORDERED B runs after an older
  ORDERED or HEAD OF QUEUE A; with QAM=0 (restricted reordering) a SIMPLE B runs after an
  older A whose ranges overlap its own where either writes; a HEAD OF QUEUE B waits for
  nothing older (it may see the state before an older overlapping write).
- With QAM=0 two conflicting tasks never interleave: each operation is one indivisible
  step. With QAM=1 only COMPARE AND WRITE and WRITE ATOMIC are (SBC-4 5.3, 4.29): other
  commands act block by block, but a read sees an atomic write whole or not at all.

Checks, for every block a read returns (and the verify data of a GOOD COMPARE AND WRITE):
- no-writer: nothing wrote that value at that block (misplaced data); torn: the block
  holds parts of several writes (with QAM=1 allowed when each part is, SPC-4 7.5.8 leaves
  concurrent SIMPLE tasks' data integrity to the application client, but never for an
  atomic write); failed-writer: only a command that failed wrote it;
- forced-after: the writer is known to run after the read;
- shadowed: another write of the block that took effect is known to run after the writer
  and before the read;
- inconsistent-mix: the blocks of one read show a mix that no single serialization
  consistent with the known order allows (e.g. half of an atomic write, or two
  overlapping writes each winning on a different block), found by propagating the
  constraints "writer before read; any other write of the block before the writer or
  after the read" to a cycle;
- miscompare: a COMPARE AND WRITE reported MISCOMPARE although every block could only
  hold its verify data.
Every violation reported is certain under the rules above (the checker is sound); it may
miss violations that only several reads together reveal (reads are checked one by one
against the known order, not against each other), that need a search over many
alternative writers (more than MAX_COMBINATIONS choices of zero-writers), or, with QAM=1,
that tie a read's blocks together through the known order alone (its blocks are checked
jointly only where an atomic write touches them).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

READ = "READ"
WRITE = "WRITE"
WRITE_SAME = "WRITE SAME"
UNMAP = "UNMAP"
COMPARE_AND_WRITE = "COMPARE AND WRITE"
WRITE_ATOMIC = "WRITE ATOMIC"
KINDS = (READ, WRITE, WRITE_SAME, UNMAP, COMPARE_AND_WRITE, WRITE_ATOMIC)
WRITING = frozenset({WRITE, WRITE_SAME, UNMAP, COMPARE_AND_WRITE, WRITE_ATOMIC})
ATOMIC = frozenset({COMPARE_AND_WRITE, WRITE_ATOMIC})

SIMPLE, ORDERED, HEAD_OF_QUEUE = 1, 2, 3  # RFC 7143 ATTR field values (SAM-5 8.6)
GOOD = 0
ZERO = "zero"            # the value of a block of zeros
MAX_COMBINATIONS = 64    # alternative writer choices tried per read
INF = float("inf")

# --- block values -------------------------------------------------------------------------

_MAGIC = b"ORDv1tag"
_RECORD = struct.Struct(">8sQQQ")  # magic, op id, lba, check: 32 bytes


def _check(op_id: int, lba: int) -> int:
    digest = hashlib.blake2b(struct.pack(">QQ", op_id, lba), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def encode_block(op_id: int, lba: int, block_size: int) -> bytes:
    """A block that names the operation that wrote it and the LBA it was written at."""
    record = _RECORD.pack(_MAGIC, op_id, lba, _check(op_id, lba))
    return (record * (block_size // len(record) + 1))[:block_size]


def decode_block(block: bytes | memoryview) -> Hashable:
    """ZERO; ("tag", op id, lba); ("torn", parts) for a block made of the records of
    several writers (each part (op id, lba) or ZERO, in block order); ("garbage", digest)
    for anything else. Neither of the last two is data any command wrote."""
    block = bytes(block)
    if not block.strip(b"\0"):
        return ZERO
    if len(block) >= _RECORD.size:
        magic, op_id, lba, check = _RECORD.unpack_from(block)
        if magic == _MAGIC and check == _check(op_id, lba) \
                and block == encode_block(op_id, lba, len(block)):
            return ("tag", op_id, lba)
        parts: list[Hashable] = []
        size = _RECORD.size
        for pos in range(0, len(block) - len(block) % size, size):
            piece = block[pos:pos + size]
            if not piece.strip(b"\0"):
                part: Hashable = ZERO
            else:
                magic, op_id, lba, check = _RECORD.unpack(piece)
                if magic != _MAGIC or check != _check(op_id, lba):
                    parts = []
                    break
                part = (op_id, lba)
            if not parts or parts[-1] != part:
                parts.append(part)
        if len(parts) > 1:
            return ("torn", tuple(parts))
    return ("garbage", hashlib.blake2b(block, digest_size=8).hexdigest())


def decode_blocks(data: bytes, block_size: int, lba: int) -> dict[int, Hashable]:
    return {lba + i: decode_block(data[i * block_size:(i + 1) * block_size])
            for i in range(len(data) // block_size)}


def tag(op_id: int, lba: int) -> tuple:
    """The value decode_block() gives for encode_block(op_id, lba, ...)."""
    return ("tag", op_id, lba)


# --- operations ----------------------------------------------------------------------------

@dataclass(eq=False)
class Op:
    """One block command of a history."""

    id: int
    kind: str
    ranges: tuple[tuple[int, int], ...]
    lu: Hashable = 0
    session: Hashable = None
    order: int | None = None      # the session's CmdSN order (weak knowledge)
    attr: int = SIMPLE
    status: int | None = GOOD     # None: no status known (aborted, connection lost)
    miscompare: bool = False      # COMPARE AND WRITE ended MISCOMPARE
    writes: dict[int, Hashable] = field(default_factory=dict)
    observed: dict[int, Hashable] = field(default_factory=dict)
    sent: int | None = None       # weak: clock before it left; None = never sent
    done: int | None = None       # weak: clock once its status arrived; None = never
    entered: int | None = None    # strong: when it entered the LU's task set
    completed: int | None = None  # strong: when it completed

    @property
    def blocks(self) -> Iterable[int]:
        for lba, n in self.ranges:
            yield from range(lba, lba + n)

    def overlaps(self, other: Op) -> bool:
        return any(a < c + m and c < a + n for a, n in self.ranges for c, m in other.ranges)

    def label(self) -> str:
        rng = ",".join(f"{a}+{n}" for a, n in self.ranges)
        names = {SIMPLE: "SIMPLE", ORDERED: "ORDERED", HEAD_OF_QUEUE: "HOQ"}
        st = "no status" if self.status is None else f"status {self.status:#x}"
        return (f"op {self.id} {self.kind} [{rng}] LU {self.lu} session {self.session} "
                f"#{self.order} {names.get(self.attr, self.attr)} {st}")


def read(op_id: int, lba: int, values: list[Hashable], **kw) -> Op:
    """A READ of len(values) blocks at lba that returned `values`."""
    return Op(op_id, READ, ((lba, len(values)),),
              observed={lba + i: v for i, v in enumerate(values)}, **kw)


def write(op_id: int, lba: int, blocks: int, kind: str = WRITE, **kw) -> Op:
    """A WRITE (or WRITE ATOMIC) of unique tags."""
    return Op(op_id, kind, ((lba, blocks),),
              writes={lba + i: tag(op_id, lba + i) for i in range(blocks)}, **kw)


def write_same(op_id: int, lba: int, blocks: int, unmap: bool = False, **kw) -> Op:
    """WRITE SAME: one tag (op id, first LBA) repeated, or zeros with UNMAP=1."""
    value = ZERO if unmap else tag(op_id, lba)
    return Op(op_id, WRITE_SAME, ((lba, blocks),),
              writes={lba + i: value for i in range(blocks)}, **kw)


def unmap(op_id: int, ranges: list[tuple[int, int]], **kw) -> Op:
    return Op(op_id, UNMAP, tuple(ranges),
              writes={b: ZERO for a, n in ranges for b in range(a, a + n)}, **kw)


def compare_and_write(op_id: int, lba: int, verify: list[Hashable], **kw) -> Op:
    """COMPARE AND WRITE of len(verify) blocks; writes unique tags when GOOD."""
    n = len(verify)
    return Op(op_id, COMPARE_AND_WRITE, ((lba, n),),
              writes={lba + i: tag(op_id, lba + i) for i in range(n)},
              observed={lba + i: v for i, v in enumerate(verify)}, **kw)


@dataclass
class Violation:
    rule: str
    op: int                  # the reading (or miscomparing) operation
    lba: int | None
    value: Hashable
    involved: list[int]
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


@dataclass
class Report:
    violations: list[Violation]
    ops: int = 0
    reads_checked: int = 0
    blocks_checked: int = 0
    order_edges: int = 0     # happens-before edges from the task-set rules (not real time)

    @property
    def ok(self) -> bool:
        return not self.violations


# --- the known order -------------------------------------------------------------------------

class _Order:
    """Happens-before over the operations: reach(a, b) is True when a is known to run
    before b. Every task-set edge goes from an older to a newer operation, and older
    operations were sent (entered) first; so a path from a to b either stays in rule
    edges or ends with one real-time edge, and reach(a, b) is "b is a rule descendant of
    a, or some rule descendant (or a itself) completed before b was sent": T[a] is the
    earliest completion among a and its rule descendants, E[a] the descendants sent no
    later than T[a] (the few that T does not cover)."""

    def __init__(self, ops: list[Op], strong: bool, qam: Callable[[Hashable], int]) -> None:
        self.ops = ops
        n = len(ops)
        self.start = [INF] * n
        self.end = [INF] * n
        for i, op in enumerate(ops):
            s, d = (op.entered, op.completed) if strong else (op.sent, op.done)
            self.start[i] = INF if s is None else s
            self.end[i] = INF if d is None else d
        self.succ: list[list[int]] = [[] for _ in range(n)]
        self.edges = 0
        self._rule_edges(strong, qam)
        self.T = list(self.end)
        self.E: list[set[int]] = [set() for _ in range(n)]
        rank = sorted((i for i in range(n) if self.start[i] < INF),
                      key=lambda i: (self.start[i], ops[i].order or 0))
        for a in reversed(rank):
            t = self.end[a]
            for s in self.succ[a]:
                t = min(t, self.T[s])
            self.T[a] = t
            e = self.E[a]
            start = self.start
            for s in self.succ[a]:
                if start[s] <= t:
                    e.add(s)
                for x in self.E[s]:
                    if start[x] <= t:
                        e.add(x)

    def _rule_edges(self, strong: bool, qam: Callable[[Hashable], int]) -> None:
        ops = self.ops
        events = []
        for i, op in enumerate(ops):
            if self.start[i] < INF:
                events.append((self.start[i], 1, op.order or 0, i))
                if self.end[i] < INF:
                    events.append((self.end[i], 0, 0, i))
        events.sort()
        active: dict[Hashable, dict[int, None]] = {}
        done_order: dict[Hashable, int] = {}
        for _, is_start, _, b in events:
            opb = ops[b]
            if not is_start:
                active.get(opb.lu, {}).pop(b, None)
                if opb.order is not None:
                    done_order[opb.session] = max(done_order.get(opb.session, -1), opb.order)
                continue
            here = active.setdefault(opb.lu, {})
            q = qam(opb.lu)
            for a in here:
                opa = ops[a]
                if not strong and not _older_weak(opa, opb, done_order):
                    continue
                if _waits_for(opa, opb, q):
                    self.succ[a].append(b)
                    self.edges += 1
            here[b] = None

    def reach(self, a: int, b: int) -> bool:
        if a == b or b == _INIT:
            return False
        if a == _INIT:
            return True
        if self.start[b] == INF:
            return False
        return self.T[a] < self.start[b] or b in self.E[a]


_INIT = -1  # the virtual first write: the medium's initial content


def _older_weak(a: Op, b: Op, done_order: Mapping[Hashable, int]) -> bool:
    """Weak knowledge: is A (in flight when B was sent) known to be older than B?"""
    if a.session == b.session and a.session is not None:
        return a.order is not None and b.order is not None and a.order < b.order
    return a.order is not None and done_order.get(a.session, -1) > a.order


def _waits_for(a: Op, b: Op, qam: int) -> bool:
    """SAM-5 8.6 / SPC-4 7.5.8: does B, newer than A on the same LU, run after A?"""
    if b.attr == HEAD_OF_QUEUE:
        return False
    if b.attr == ORDERED or a.attr in (ORDERED, HEAD_OF_QUEUE):
        return True
    return qam == 0 and (a.kind in WRITING or b.kind in WRITING) and a.overlaps(b)


# --- the checker ---------------------------------------------------------------------------

class _Block:
    """The writers of one block: definite ones sorted by start, maybe ones, by value."""

    __slots__ = ("definite", "starts", "longest", "maybe", "by_value", "atomic")

    def __init__(self) -> None:
        self.atomic = False     # an atomic operation writes it (or may have)
        self.definite: list[int] = []
        self.starts: list[float] = []
        self.longest = 0.0
        self.maybe: list[int] = []
        self.by_value: dict[Hashable, list[int]] = {}


class Checker:
    def __init__(self, ops: Iterable[Op], *, knowledge: str = "weak",
                 qam: int | Mapping[Hashable, int] | Callable[[Hashable], int] = 0,
                 initial: Hashable = ZERO) -> None:
        if knowledge not in ("weak", "strong"):
            raise ValueError(f"knowledge is 'weak' or 'strong', not {knowledge!r}")
        self.ops = list(ops)
        ids = [op.id for op in self.ops]
        if len(set(ids)) != len(ids):
            raise ValueError("operation ids must be unique")
        if isinstance(qam, int):
            self.qam: Callable[[Hashable], int] = lambda lu, q=qam: q
        elif isinstance(qam, Mapping):
            self.qam = lambda lu, m=qam: m.get(lu, 0)
        else:
            self.qam = qam
        self.initial = initial
        self.order = _Order(self.ops, knowledge == "strong", self.qam)
        self.blocks: dict[tuple[Hashable, int], _Block] = {}
        start, end = self.order.start, self.order.end
        for i, op in enumerate(self.ops):
            if op.kind not in WRITING or start[i] == INF:
                continue
            for lba, value in op.writes.items():
                blk = self.blocks.get((op.lu, lba))
                if blk is None:
                    blk = self.blocks[(op.lu, lba)] = _Block()
                blk.by_value.setdefault(value, []).append(i)
                if op.kind in ATOMIC and op.status in (GOOD, None):
                    blk.atomic = True
                if op.status == GOOD:
                    blk.definite.append(i)
                elif op.status is None:
                    blk.maybe.append(i)
        for blk in self.blocks.values():
            blk.definite.sort(key=lambda i: start[i])
            blk.starts = [start[i] for i in blk.definite]
            blk.longest = max((end[i] - start[i] for i in blk.definite), default=0.0)

    # --- helpers -------------------------------------------------------------------------

    def _effective(self, i: int) -> bool:
        return i == _INIT or self.ops[i].status in (GOOD, None)

    def _divisible(self, i: int) -> bool:
        op = self.ops[i]
        return self.qam(op.lu) != 0 and op.kind not in ATOMIC

    def _name(self, i: int) -> str:
        return "the initial content" if i == _INIT else self.ops[i].label()

    def _between(self, blk: _Block, lo: float, hi: float) -> list[int]:
        """Definite writers of the block whose start lies in [lo, hi]."""
        a = bisect.bisect_left(blk.starts, lo)
        b = bisect.bisect_right(blk.starts, hi)
        return blk.definite[a:b]

    def _candidates(self, r: int, lba: int, value: Hashable) -> list[int]:
        op = self.ops[r]
        blk = self.blocks.get((op.lu, lba))
        found = [w for w in (blk.by_value.get(value, []) if blk else []) if w != r]
        if value == self.initial:
            found.append(_INIT)
        return found

    def _shadow(self, r: int, lba: int, w: int) -> int | None:
        """A definite writer of the block known to run after w and before r, if any."""
        reach = self.order.reach
        blk = self.blocks.get((self.ops[r].lu, lba))
        if blk is None:
            return None
        lo = -INF if w == _INIT else self.order.start[w]
        for x in self._between(blk, lo, self.order.start[r]):
            if x != w and x != r and (w == _INIT or reach(w, x)) and reach(x, r):
                return x
        return None

    # --- checks --------------------------------------------------------------------------

    def run(self) -> Report:
        report = Report([], ops=len(self.ops), order_edges=self.order.edges)
        for r, op in enumerate(self.ops):
            if self.order.start[r] == INF or op.status != GOOD:
                if op.kind == COMPARE_AND_WRITE and op.miscompare:
                    self._check_miscompare(r, report)
                continue
            if op.kind not in (READ, COMPARE_AND_WRITE) or not op.observed:
                continue
            report.reads_checked += 1
            self._check_read(r, report)
        return report

    def _judge(self, r: int, lba: int, value: Hashable) -> tuple[list[int], list[tuple]]:
        """The writers the read may show for `value` at `lba`, and why the others may not:
        (rule, writer, shadowing write or None, message)."""
        reach = self.order.reach
        ok: list[int] = []
        reasons: list[tuple[str, int, int | None, str]] = []
        for w in self._candidates(r, lba, value):
            if not self._effective(w):
                reasons.append(("failed-writer", w, None,
                                f"{self._name(w)} failed, so wrote nothing"))
            elif w != _INIT and reach(r, w):
                reasons.append(("forced-after", w, None,
                                f"{self._name(w)} is known to run after the read"))
            elif (x := self._shadow(r, lba, w)) is not None:
                reasons.append(("shadowed", w, x,
                                f"{self._name(x)} overwrote it in between: it runs after "
                                f"{self._name(w)} and before the read"))
            else:
                ok.append(w)
        return ok, reasons

    def _refuse(self, r: int, lba: int, value: Hashable, reasons: list[tuple],
                report: Report, what: str = "") -> None:
        op = self.ops[r]
        if not reasons:
            rule = "torn" if isinstance(value, tuple) and value[:1] == ("torn",) \
                else "no-writer"
            report.violations.append(Violation(
                rule, op.id, lba, value, [op.id],
                f"{op.label()} returned {value!r}{what} at LBA {lba}, which no operation "
                f"wrote there"))
            return
        order = ("shadowed", "forced-after", "failed-writer")
        reasons = sorted(reasons, key=lambda t: order.index(t[0]))
        rule = reasons[0][0]
        involved = [op.id] + [self.ops[w].id for _, w, _, _ in reasons if w != _INIT] \
            + [self.ops[x].id for _, _, x, _ in reasons if x is not None]
        shown = [m for _, _, _, m in reasons[:4]]
        if len(reasons) > 4:
            shown.append(f"and {len(reasons) - 4} more")
        report.violations.append(Violation(
            rule, op.id, lba, value, involved,
            f"{op.label()} returned {value!r}{what} at LBA {lba}, but " + "; ".join(shown)))

    def _check_read(self, r: int, report: Report) -> None:
        op = self.ops[r]
        allowed: dict[int, list[int]] = {}
        for lba, value in sorted(op.observed.items()):
            report.blocks_checked += 1
            if (isinstance(value, tuple) and value[:1] == ("torn",) and self._divisible(r)):
                # QAM=1: tasks may be processed in any order, "data integrity exposures" are
                # the application client's (SPC-4 7.5.8): a read concurrent with a write it
                # overlaps may find a block part written. Each part must be allowed, and no
                # part may come from an atomic write (SBC-4 4.29).
                for part in value[1]:
                    part_value = ZERO if part == ZERO else tag(*part)
                    ok, reasons = self._judge(r, lba, part_value)
                    if not ok:
                        self._refuse(r, lba, part_value, reasons, report,
                                     f" (part of the torn block {value!r})")
                        return
                    atomic = [w for w in ok if w != _INIT and self.ops[w].kind in ATOMIC]
                    if atomic and len(atomic) == len(ok):
                        report.violations.append(Violation(
                            "torn", op.id, lba, value, [op.id, self.ops[atomic[0]].id],
                            f"{op.label()} returned {value!r} at LBA {lba}: part of a block "
                            f"of atomic {self._name(atomic[0])}"))
                        return
                continue
            ok, reasons = self._judge(r, lba, value)
            if not ok:
                self._refuse(r, lba, value, reasons, report)
                return
            allowed[lba] = ok
        if len(allowed) > 1 and (not self._divisible(r) or any(
                self.blocks[(op.lu, b)].atomic for b in allowed if (op.lu, b) in self.blocks)):
            # A read that acts block by block can only be inconsistent through an atomic
            # write; one that is one step, through any write of its blocks.
            self._check_mix(r, allowed, report)

    # --- multi-block consistency ---------------------------------------------------------

    def _check_mix(self, r: int, allowed: dict[int, list[int]], report: Report) -> None:
        lbas = sorted(allowed)
        choices = [allowed[b] for b in lbas]
        total = 1
        for c in choices:
            total *= len(c)
        if total > MAX_COMBINATIONS:
            # Too many alternatives: keep only the blocks whose writer is certain.
            lbas = [b for b in lbas if len(allowed[b]) == 1]
            choices = [allowed[b] for b in lbas]
            if len(lbas) < 2:
                return
        last = None
        for combo in itertools.product(*choices):
            conflict = self._mix_conflict(r, dict(zip(lbas, combo, strict=True)))
            if conflict is None:
                return
            last = (combo, conflict)
        combo, (x, b, why) = last
        op = self.ops[r]
        shown = ", ".join(f"LBA {b_}: {self._short(w)}" for b_, w in zip(lbas, combo,
                                                                           strict=True))
        involved = sorted({op.id} | {self.ops[w].id for w in combo if w != _INIT}
                          | ({self.ops[x].id} if x is not None and x != _INIT else set()))
        report.violations.append(Violation(
            "inconsistent-mix", op.id, b, op.observed.get(b), involved,
            f"{op.label()} shows {shown}: no order of the operations allows that mix "
            f"({why})"))

    def _short(self, i: int) -> str:
        return "initial" if i == _INIT else f"op {self.ops[i].id}"

    def _node(self, i: int, lba: int) -> tuple[int, int | None]:
        return (i, lba if i != _INIT and self._divisible(i) else None)

    def _mix_conflict(self, r: int, shown: dict[int, int]) -> tuple | None:
        """Propagate the constraints of one choice of writers; None when no cycle is found,
        else (the writer that closed it, its LBA, why)."""
        op = self.ops[r]
        reach = self.order.reach
        start, end = self.order.start, self.order.end
        nodes: dict[tuple[int, int | None], int] = {}

        def node(key: tuple[int, int | None]) -> int:
            if key not in nodes:
                nodes[key] = len(nodes)
            return nodes[key]

        reads = {b: node(self._node(r, b)) for b in shown}
        writers = {b: node(self._node(w, b)) for b, w in shown.items()}
        chosen = set(shown.values())
        # The other writers of each block that may fall between its writer and the read.
        disjunctions: list[tuple[int, int, int, int]] = []  # (x node, w node, read node, lba)
        for b, w in shown.items():
            blk = self.blocks.get((op.lu, b))
            if blk is None:
                continue
            lo = (start[r] if w == _INIT else start[w]) - blk.longest
            others = set(self._between(blk, lo, end[r]))
            others |= {c for c in chosen if c != _INIT and b in self.ops[c].writes}
            for x in others:
                if x in (w, r) or (w != _INIT and reach(x, w)) or reach(r, x):
                    continue
                disjunctions.append((node(self._node(x, b)), writers[b], reads[b], b))
        # Reads of one atomic writer's blocks all see it or all do not (SBC-4 4.29).
        groups: list[tuple[int, list[int]]] = []
        if self._divisible(r):
            atomic: dict[int, list[int]] = {}
            for b in shown:
                for x in self._atomic_writers(r, b, chosen):
                    atomic.setdefault(x, []).append(reads[b])
            groups = [(node((x, None)), rs) for x, rs in atomic.items() if len(rs) > 1]
        keys = list(nodes)
        n = len(keys)
        closure = [0] * n
        for i, (a, _) in enumerate(keys):
            for j, (c, _) in enumerate(keys):
                if a != c and (a == _INIT or (c != _INIT and reach(a, c))):
                    closure[i] |= 1 << j

        def add(u: int, v: int) -> bool:
            """Edge u -> v; False when it closes a cycle."""
            if closure[v] >> u & 1 or u == v:
                return False
            if closure[u] >> v & 1:
                return True
            gain = (1 << v) | closure[v]
            for k in range(n):
                if k == u or closure[k] >> u & 1:
                    closure[k] |= gain
            return True

        for b in shown:
            if not add(writers[b], reads[b]):
                return (shown[b], b, "its writer would run after it")
        changed = True
        while changed:
            changed = False
            for x, w, rd, b in disjunctions:
                if closure[x] >> w & 1 or closure[rd] >> x & 1:
                    continue  # already before the writer, or after the read
                if closure[w] >> x & 1:   # after the writer: must follow the read
                    if not add(rd, x):
                        return (keys[x][0], b, f"{self._short(keys[x][0])} wrote LBA {b} "
                                               f"after {self._short(keys[w][0])} and "
                                               f"before the read")
                    changed = True
                elif closure[x] >> rd & 1:  # before the read: must precede the writer
                    if not add(x, w):
                        return (keys[x][0], b, f"{self._short(keys[x][0])} wrote LBA {b} "
                                               f"after {self._short(keys[w][0])} and "
                                               f"before the read")
                    changed = True
            for a, rs in groups:
                before = [rd for rd in rs if closure[rd] >> a & 1]
                after = [rd for rd in rs if closure[a] >> rd & 1]
                if before and after:
                    return (keys[a][0], None, f"it sees only part of atomic "
                                              f"{self._short(keys[a][0])}")
                for rd in rs:
                    if before and not closure[rd] >> a & 1:
                        if not add(rd, a):
                            return (keys[a][0], None, "part of an atomic write")
                        changed = True
                    elif after and not closure[a] >> rd & 1:
                        if not add(a, rd):
                            return (keys[a][0], None, "part of an atomic write")
                        changed = True
        return None

    def _atomic_writers(self, r: int, lba: int, chosen: set[int]) -> list[int]:
        op = self.ops[r]
        blk = self.blocks.get((op.lu, lba))
        if blk is None:
            return []
        out = [x for x in blk.definite if self.ops[x].kind in ATOMIC]
        out += [c for c in chosen if c != _INIT and self.ops[c].kind in ATOMIC
                and lba in self.ops[c].writes and c not in out]
        return [x for x in out if x != r]

    # --- MISCOMPARE ----------------------------------------------------------------------

    def _check_miscompare(self, m: int, report: Report) -> None:
        """Violation when at every block the verify value is the only possible state."""
        op = self.ops[m]
        if not op.observed:
            return
        reach = self.order.reach
        start, end = self.order.start, self.order.end
        for lba, value in op.observed.items():
            blk = self.blocks.get((op.lu, lba))
            forced = False
            for w in self._candidates(m, lba, value):
                if w != _INIT and (self.ops[w].status != GOOD or not reach(w, m)):
                    continue
                others = [] if blk is None else (
                    [x for x in blk.definite if start[x] <= end[m]] + blk.maybe)
                same = set(blk.by_value.get(value, ())) if blk is not None else set()
                if all(x in (w, m) or x in same or (w != _INIT and reach(x, w))
                       or reach(m, x) for x in others):
                    forced = True
                    break
            if not forced:
                return
        report.violations.append(Violation(
            "miscompare", op.id, None, None, [op.id],
            f"{op.label()} ended MISCOMPARE, but every block could only hold its verify "
            f"data"))


def check(ops: Iterable[Op], *, knowledge: str = "weak",
          qam: int | Mapping[Hashable, int] | Callable[[Hashable], int] = 0,
          initial: Hashable = ZERO) -> Report:
    """Check a history; the Report lists the violations found (empty: none known)."""
    return Checker(ops, knowledge=knowledge, qam=qam, initial=initial).run()
