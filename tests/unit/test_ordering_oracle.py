"""target.testing.ordering: hand-made histories the task-set rules allow, and ones they do
not; each rule is shown to reject a history and to accept its legal twin.

The rules (SAM-5 8.6 task attributes; SPC-4 7.5.8 QAM of the control mode page; SBC-4 5.3
COMPARE AND WRITE, 4.29 atomic writes, 4.7.4.5 LBPRZ; RFC 7143 3.2.2.1 CmdSN order):
- a read shows, at each block, the last write before it in some order that respects
  everything known: real time (completed before sent), and for an older task A and a newer
  task B on the LU: ORDERED B after all; SIMPLE/ORDERED B after an ORDERED or HEAD OF QUEUE
  A; with QAM=0 a SIMPLE B after an overlapping A when either writes; HEAD OF QUEUE B after
  nothing older;
- an atomic write (COMPARE AND WRITE, WRITE ATOMIC) is seen whole or not at all, and with
  QAM=0 so is every write by every overlapping read;
- UNMAP (and WRITE SAME with UNMAP on a thin LU) leaves zeros, as the initial medium.
Times below are plain integers: `t=(sent, done)`.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.testing import ordering as o
from target.testing.ordering import (
    GOOD,
    HEAD_OF_QUEUE,
    ORDERED,
    SIMPLE,
    WRITE_ATOMIC,
    ZERO,
    check,
    compare_and_write,
    read,
    tag,
    unmap,
    write,
    write_same,
)

pytestmark = pytest.mark.unit

CHECK_CONDITION = 0x02


def t(sent, done):
    return {"sent": sent, "done": done}


def rules(report) -> list[str]:
    return [v.rule for v in report.violations]


# --- real time --------------------------------------------------------------------------

def test_read_after_a_completed_write_sees_it():
    w = write(1, 0, 1, session="A", order=0, **t(1, 2))
    assert check([w, read(2, 0, [tag(1, 0)], session="B", order=0, **t(3, 4))]).ok
    bad = check([w, read(2, 0, [ZERO], session="B", order=0, **t(3, 4))])
    assert rules(bad) == ["shadowed"]
    assert bad.violations[0].involved == [2, 1]


def test_concurrent_write_and_read_may_go_either_way():
    w = write(1, 0, 1, session="A", order=0, **t(1, 4))
    for seen in (ZERO, tag(1, 0)):
        assert check([w, read(2, 0, [seen], session="B", order=0, **t(2, 3))]).ok


def test_a_read_cannot_see_a_write_sent_after_it_completed():
    r = read(1, 0, [tag(2, 0)], session="A", order=0, **t(1, 2))
    w = write(2, 0, 1, session="B", order=0, **t(3, 4))
    assert rules(check([r, w])) == ["forced-after"]


def test_a_write_is_shadowed_by_a_later_completed_one():
    w1 = write(1, 0, 1, session="A", order=0, **t(1, 2))
    w2 = write(2, 0, 1, session="A", order=1, **t(3, 4))
    assert rules(check([w1, w2, read(3, 0, [tag(1, 0)], session="B", order=0,
                                     **t(5, 6))])) == ["shadowed"]
    assert check([w1, w2, read(3, 0, [tag(2, 0)], session="B", order=0, **t(5, 6))]).ok


# --- QAM=0: overlapping SIMPLE tasks keep their CmdSN order --------------------------------

def test_pipelined_read_then_write_of_one_block_the_known_bug():
    """READ X then WRITE X in one burst of one session: the READ is older and overlaps,
    so with QAM=0 it must not show the WRITE's data."""
    r = read(1, 7, [tag(2, 7)], session="A", order=0, **t(1, 5))
    w = write(2, 7, 1, session="A", order=1, **t(1, 4))
    report = check([r, w])
    assert rules(report) == ["forced-after"] and report.order_edges == 1
    assert check([read(1, 7, [ZERO], session="A", order=0, **t(1, 5)), w]).ok
    # QAM=1 (unrestricted reordering) lets the write go first.
    assert check([r, w], qam=1).ok
    # A HEAD OF QUEUE write need not wait for the older read.
    hoq = write(2, 7, 1, session="A", order=1, attr=HEAD_OF_QUEUE, **t(1, 4))
    assert check([r, hoq]).ok


def test_pipelined_write_then_read_must_see_the_write():
    w = write(1, 3, 2, session="A", order=0, **t(1, 5))
    r_old = read(2, 3, [ZERO, ZERO], session="A", order=1, **t(2, 4))
    assert rules(check([w, r_old])) == ["shadowed"]
    assert check([w, r_old], qam=1).ok
    # A HEAD OF QUEUE read may run before the older write (SAM-5 8.6.4).
    hoq = read(2, 3, [ZERO, ZERO], session="A", order=1, attr=HEAD_OF_QUEUE, **t(2, 4))
    assert check([w, hoq]).ok


def test_qam0_orders_only_overlapping_ranges():
    w = write(1, 10, 1, session="A", order=0, **t(1, 5))
    r = read(2, 11, [ZERO], session="A", order=1, **t(2, 4))
    assert check([w, r]).ok
    assert check([w, read(2, 10, [ZERO], session="A", order=1, **t(2, 4))]).violations


def test_qam_per_lu():
    r = read(1, 7, [tag(2, 7)], lu=1, session="A", order=0, **t(1, 5))
    w = write(2, 7, 1, lu=1, session="A", order=1, **t(1, 4))
    assert check([r, w], qam={1: 1}).ok
    assert not check([r, w], qam={0: 1}).ok


def test_different_lus_do_not_order_each_other():
    r = read(1, 7, [tag(2, 7)], lu=0, session="A", order=0, **t(1, 5))
    w = write(2, 7, 1, lu=1, session="A", order=1, **t(1, 4))
    assert rules(check([r, w])) == ["no-writer"]  # LU 1's block is not LU 0's


# --- task attributes ------------------------------------------------------------------------

def test_ordered_runs_after_every_older_task():
    w = write(1, 10, 1, session="A", order=0, **t(1, 5))
    r = read(2, 10, [ZERO], session="A", order=1, attr=ORDERED, **t(2, 4))
    assert rules(check([w, r], qam=1)) == ["shadowed"]
    assert check([w, read(2, 10, [ZERO], session="A", order=1, **t(2, 4))], qam=1).ok


def test_newer_simple_runs_after_an_older_ordered():
    w = write(1, 10, 1, session="A", order=0, attr=ORDERED, **t(1, 5))
    r = read(2, 10, [ZERO], session="A", order=1, **t(2, 4))
    assert rules(check([w, r], qam=1)) == ["shadowed"]
    # but a newer HEAD OF QUEUE task does not wait for it
    assert check([w, read(2, 10, [ZERO], session="A", order=1, attr=HEAD_OF_QUEUE,
                          **t(2, 4))], qam=1).ok


def test_newer_simple_runs_after_an_older_head_of_queue():
    w = write(1, 10, 1, session="A", order=0, attr=HEAD_OF_QUEUE, **t(1, 5))
    assert rules(check([w, read(2, 10, [ZERO], session="A", order=1, **t(2, 4))],
                       qam=1)) == ["shadowed"]


def test_ordered_before_newer_ordered_read_forced_after():
    r = read(1, 10, [tag(2, 10)], session="A", order=0, attr=ORDERED, **t(1, 5))
    w = write(2, 10, 1, session="A", order=1, attr=ORDERED, **t(1, 4))
    assert rules(check([r, w], qam=1)) == ["forced-after"]


def test_older_across_sessions_through_a_completed_later_command():
    """Session A: W (long in flight) then X, which completed before B's ORDERED read was
    sent: W entered the task set before the read (RFC 7143 3.2.2.1), so the ORDERED read
    runs after W."""
    w = write(1, 10, 1, session="A", order=0, **t(1, 20))
    x = read(2, 50, [ZERO], session="A", order=1, **t(2, 3))
    r = read(3, 10, [ZERO], session="B", order=0, attr=ORDERED, **t(4, 10))
    assert rules(check([w, x, r], qam=1)) == ["shadowed"]
    late = read(2, 50, [ZERO], session="A", order=1, **t(2, 11))  # X not done before r
    assert check([w, late, r], qam=1).ok


# --- values ---------------------------------------------------------------------------------

def test_a_value_nobody_wrote_there():
    w = write(1, 0, 2, session="A", order=0, **t(1, 2))
    misplaced = read(2, 5, [tag(1, 0)], session="B", order=0, **t(3, 4))
    assert rules(check([w, misplaced])) == ["no-writer"]
    garbage = read(2, 0, [("garbage", "x")], session="B", order=0, **t(3, 4))
    assert rules(check([w, garbage])) == ["no-writer"]


def test_data_of_a_failed_command():
    caw = compare_and_write(1, 0, [tag(9, 0)], session="A", order=0, status=CHECK_CONDITION,
                            miscompare=True, **t(1, 2))
    assert rules(check([caw, read(2, 0, [tag(1, 0)], session="B", order=0,
                                  **t(3, 4))])) == ["failed-writer"]


def test_a_write_without_status_may_or_may_not_have_happened():
    """The lost write is older than the read and overlaps it (so it ran first if it ran at
    all); it may not have run, so it does not hide the write before it."""
    w1 = write(1, 0, 1, session="A", order=0, **t(1, 2))
    lost = write(2, 0, 1, session="A", order=1, status=None, **t(3, None))
    for seen in (tag(1, 0), tag(2, 0)):
        assert check([w1, lost, read(3, 0, [seen], session="A", order=2, **t(5, 6))]).ok
    done = write(2, 0, 1, session="A", order=1, **t(3, 7))
    assert rules(check([w1, done, read(3, 0, [tag(1, 0)], session="A", order=2,
                                       **t(5, 6))])) == ["shadowed"]


def test_unmap_and_write_same_unmap_read_back_as_zeros():
    w = write(1, 0, 4, session="A", order=0, **t(1, 2))
    u = unmap(2, [(0, 2)], session="A", order=1, **t(3, 4))
    ws = write_same(3, 2, 2, unmap=True, session="A", order=2, **t(5, 6))
    r = read(4, 0, [ZERO] * 4, session="B", order=0, **t(7, 8))
    assert check([w, u, ws, r]).ok
    # UNMAP before the write: the zeros are stale
    u_first = unmap(2, [(0, 2)], session="A", order=0, **t(-2, -1))
    w2 = write(1, 0, 4, session="A", order=1, **t(1, 2))
    assert rules(check([u_first, w2, read(4, 0, [ZERO], session="B", order=0,
                                          **t(7, 8))])) == ["shadowed"]


def test_write_same_repeats_one_tag():
    ws = write_same(1, 4, 3, session="A", order=0, **t(1, 2))
    assert check([ws, read(2, 4, [tag(1, 4)] * 3, session="B", order=0, **t(3, 4))]).ok
    assert rules(check([ws, read(2, 5, [tag(1, 5)], session="B", order=0,
                                 **t(3, 4))])) == ["no-writer"]


# --- multi-block consistency ---------------------------------------------------------------

def _two_concurrent_writes(kind=o.WRITE):
    w1 = write(1, 0, 2, kind=kind, session="A", order=0, **t(1, 4))
    w2 = write(2, 0, 2, kind=kind, session="B", order=0, **t(2, 3))
    return w1, w2


def test_qam0_a_read_never_mixes_two_overlapping_writes():
    w1, w2 = _two_concurrent_writes()
    mixed = read(3, 0, [tag(1, 0), tag(2, 1)], session="C", order=0, **t(5, 6))
    report = check([w1, w2, mixed])
    assert rules(report) == ["inconsistent-mix"]
    assert set(report.violations[0].involved) == {1, 2, 3}
    for a in (1, 2):
        assert check([w1, w2, read(3, 0, [tag(a, 0), tag(a, 1)], session="C", order=0,
                                   **t(5, 6))]).ok


def test_qam1_plain_writes_may_interleave_atomic_ones_may_not():
    w1, w2 = _two_concurrent_writes()
    mixed = read(3, 0, [tag(1, 0), tag(2, 1)], session="C", order=0, **t(5, 6))
    assert check([w1, w2, mixed], qam=1).ok
    a1, a2 = _two_concurrent_writes(WRITE_ATOMIC)
    assert rules(check([a1, a2, mixed], qam=1)) == ["inconsistent-mix"]


@pytest.mark.parametrize("qam", [0, 1])
def test_a_read_sees_an_atomic_write_whole_or_not_at_all(qam):
    a = write(1, 0, 2, kind=WRITE_ATOMIC, session="A", order=0, **t(1, 4))
    half = read(2, 0, [tag(1, 0), ZERO], session="B", order=0, **t(2, 3))
    assert rules(check([a, half], qam=qam)) == ["inconsistent-mix"]
    for whole in ([ZERO, ZERO], [tag(1, 0), tag(1, 1)]):
        assert check([a, read(2, 0, whole, session="B", order=0, **t(2, 3))], qam=qam).ok
    plain = write(1, 0, 2, session="A", order=0, **t(1, 4))
    assert check([plain, half], qam=1).ok
    assert not check([plain, half], qam=0).ok


def test_an_atomic_write_without_status_that_a_read_shows_happened_whole():
    a = write(1, 0, 2, kind=WRITE_ATOMIC, session="A", order=0, status=None, **t(1, None))
    half = read(2, 0, [tag(1, 0), ZERO], session="B", order=0, **t(2, 3))
    assert rules(check([a, half], qam=1)) == ["inconsistent-mix"]


def test_zero_may_come_from_either_of_two_unmaps():
    """Two candidates for ZERO at a block: the initial content is shadowed, the UNMAP is
    allowed; the mix with the other block is consistent through the UNMAP."""
    w = write(1, 0, 2, session="A", order=0, **t(1, 2))
    u = unmap(2, [(0, 1)], session="B", order=0, **t(3, 6))
    r = read(3, 0, [ZERO, tag(1, 1)], session="C", order=0, **t(4, 5))
    assert check([w, u, r]).ok


# --- COMPARE AND WRITE ----------------------------------------------------------------------

def test_compare_and_write_good_found_the_current_data():
    w = write(1, 0, 1, session="A", order=0, **t(1, 2))
    assert check([w, compare_and_write(2, 0, [tag(1, 0)], session="B", order=0,
                                       **t(3, 4))]).ok
    stale = compare_and_write(2, 0, [ZERO], session="B", order=0, **t(3, 4))
    assert rules(check([w, stale])) == ["shadowed"]
    after = read(3, 0, [tag(2, 0)], session="C", order=0, **t(5, 6))
    assert check([w, compare_and_write(2, 0, [tag(1, 0)], session="B", order=0, **t(3, 4)),
                  after]).ok


def test_compare_and_write_is_indivisible_against_a_concurrent_write():
    """A concurrent plain write cannot land between the compare and the write: a read
    after both showing the CAW at one block and the plain write at the other is a mix no
    order gives (the plain write covers both blocks and either precedes the CAW, then it
    is gone at both, or follows it, then it wins at both) - with QAM=0."""
    w0 = write(1, 0, 2, session="A", order=0, **t(1, 2))
    caw = compare_and_write(2, 0, [tag(1, 0), tag(1, 1)], session="B", order=0, **t(3, 6))
    x = write(3, 0, 2, session="C", order=0, **t(4, 5))
    mixed = read(4, 0, [tag(2, 0), tag(3, 1)], session="D", order=0, **t(7, 8))
    assert rules(check([w0, caw, x, mixed])) == ["inconsistent-mix"]
    assert check([w0, caw, x, read(4, 0, [tag(3, 0), tag(3, 1)], session="D", order=0,
                                   **t(7, 8))]).ok


def test_miscompare_although_the_data_could_only_match():
    w = write(1, 0, 1, session="A", order=0, **t(1, 2))
    caw = compare_and_write(2, 0, [tag(1, 0)], session="B", order=0, status=CHECK_CONDITION,
                            miscompare=True, **t(3, 4))
    assert rules(check([w, caw])) == ["miscompare"]
    racing = write(3, 0, 1, session="C", order=0, **t(3, 5))
    assert check([w, caw, racing]).ok
    wrong = compare_and_write(2, 0, [ZERO], session="B", order=0, status=CHECK_CONDITION,
                              miscompare=True, **t(3, 4))
    assert check([w, wrong]).ok


# --- strong knowledge -----------------------------------------------------------------------

def test_strong_knowledge_orders_what_the_client_cannot_see():
    """From the sockets the write and the read overlap; the harness knows the write
    completed before the read entered the task set."""
    w = write(1, 0, 1, session="A", order=0, sent=1, done=4, entered=10, completed=11)
    r = read(2, 0, [ZERO], session="B", order=0, sent=2, done=5, entered=12, completed=13)
    assert check([w, r]).ok
    assert rules(check([w, r], knowledge="strong")) == ["shadowed"]


def test_strong_knowledge_task_set_order_across_sessions():
    """Entry order is known across sessions: an ORDERED read entering after a write
    still in the task set runs after it."""
    w = write(1, 0, 1, session="A", entered=1, completed=5)
    r = read(2, 0, [ZERO], session="B", attr=ORDERED, entered=2, completed=6)
    assert rules(check([w, r], knowledge="strong", qam=1)) == ["shadowed"]
    assert check([w, read(2, 0, [ZERO], session="B", entered=2, completed=6)],
                 knowledge="strong", qam=1).ok


# --- block tags -----------------------------------------------------------------------------

@pytest.mark.parametrize("bs", [512, 4096])
def test_block_tags_round_trip_and_torn_blocks_are_garbage(bs):
    block = o.encode_block(12345, 678, bs)
    assert len(block) == bs and o.decode_block(block) == tag(12345, 678)
    assert o.decode_block(bytes(bs)) == ZERO
    torn = block[:bs // 2] + o.encode_block(12346, 678, bs)[bs // 2:]
    assert o.decode_block(torn) == ("torn", ((12345, 678), (12346, 678)))
    assert o.decode_block(block[:bs - 32] + bytes(32)) == ("torn", ((12345, 678), ZERO))
    assert o.decode_block(b"\1" + block[1:])[0] == "garbage"
    data = o.encode_block(1, 5, bs) + bytes(bs)
    assert o.decode_blocks(data, bs, 5) == {5: tag(1, 5), 6: ZERO}


# --- soundness: every history a serial execution produces is accepted ----------------------

@st.composite
def serial_histories(draw):
    """Operations executed one at a time in a random order (at times 10, 20, ...), each
    sent before and completed after its execution; reads return the state at their turn.
    A session's CmdSN order is its execution order, so every rule is kept whatever the
    attributes; QAM is drawn too."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, 14))
    state: dict[int, object] = {}
    ops = []
    orders: dict[str, int] = {}
    last_sent: dict[str, float] = {}
    last_entered = 0.0
    for i in range(n):
        kind = rng.choice(["READ", "WRITE", "ATOMIC", "UNMAP", "WS", "CAW", "CAW"])
        lba = rng.randrange(4)
        blocks = rng.randint(1, 3)
        session = rng.choice("ABC")
        order = orders.get(session, 0)
        orders[session] = order + 1
        attr = rng.choice([SIMPLE, SIMPLE, ORDERED, HEAD_OF_QUEUE])
        when = 10 * (i + 1)
        # CmdSN order is sending order within a session; entry into the task set is in
        # execution order (a serial device runs tasks as they enter).
        sent = max(last_sent.get(session, -100.0) + 0.01, when - rng.uniform(0.1, 25))
        last_sent[session] = sent
        last_entered = max(last_entered + 0.001, when - rng.uniform(0.0001, 9))
        kw = dict(session=session, order=order, attr=attr, sent=sent,
                  done=when + rng.uniform(0.1, 25), entered=last_entered,
                  completed=when + rng.uniform(0.1, 25))
        current = [state.get(b, ZERO) for b in range(lba, lba + blocks)]
        if kind == "READ":
            op = read(i, lba, current, **kw)
        elif kind == "CAW":
            guess = current if rng.random() < 0.6 else [tag(999, lba)] * blocks
            good = guess == current
            op = compare_and_write(i, lba, guess, status=GOOD if good else CHECK_CONDITION,
                                   miscompare=not good, **kw)
        elif kind == "UNMAP":
            op = unmap(i, [(lba, blocks)], **kw)
        elif kind == "WS":
            op = write_same(i, lba, blocks, unmap=rng.random() < 0.5, **kw)
        else:
            op = write(i, lba, blocks, kind=WRITE_ATOMIC if kind == "ATOMIC" else o.WRITE,
                       **kw)
        if op.kind in o.WRITING and op.status == GOOD:
            state.update(op.writes)
        ops.append(op)
    return ops, draw(st.sampled_from([0, 1]))


@settings(max_examples=300, deadline=None)
@given(serial_histories())
def test_serial_executions_are_always_accepted(history):
    ops, qam = history
    report = check(ops, qam=qam)
    assert report.ok, "\n".join(str(v) for v in report.violations)
    report = check(ops, knowledge="strong", qam=qam)
    assert report.ok, "\n".join(str(v) for v in report.violations)


def test_a_torn_block_only_with_qam1_and_only_of_allowed_parts():
    """A block holding parts of two writes: with QAM=0 (conflicting tasks never interleave)
    a violation; with QAM=1 (SPC-4 7.5.8: data integrity of concurrent SIMPLE tasks is the
    application client's) allowed when each part is, never for an atomic write."""
    w1 = write(1, 0, 1, session="A", order=0, **t(1, 2))
    w2 = write(2, 0, 1, session="B", order=0, **t(3, 6))
    torn = ("torn", ((1, 0), (2, 0)))
    r = read(3, 0, [torn], session="C", order=0, **t(4, 5))
    assert rules(check([w1, w2, r])) == ["torn"]
    assert check([w1, w2, r], qam=1).ok
    stale = ("torn", (ZERO, (2, 0)))  # zeros are older than w1, which completed before
    assert rules(check([w1, w2, read(3, 0, [stale], session="C", order=0, **t(4, 5))],
                       qam=1)) == ["shadowed"]
    a2 = write(2, 0, 1, kind=WRITE_ATOMIC, session="B", order=0, **t(3, 6))
    assert rules(check([w1, a2, r], qam=1)) == ["torn"]
