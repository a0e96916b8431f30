"""A Linux guest on a LU that seeks: dispatch depth 1 and the rotational disk model, with
the disksort elevator and with fifo. The elevator changes the order in which the LU serves
SIMPLE tasks (SAM-5 8.6.1 lets it), never what they read or write: the guest boots,
writes a pattern the host finds at its LBA, reads it back while other readers keep the
queue full, and powers off cleanly either way.

That disksort did reorder is judged from the CDB trace (`serve --trace`, target.trace),
not from the elevator's own counters: at dispatch depth 1 the LU serves one task at a
time, so the order of the trace's records (written as each command completes) is the
order of execution; the order of arrival is the task tag order, since the initiator
(QEMU's libiscsi, iscsi_scsi_command_async) takes the ITT and the CmdSN of each command
together and the target admits commands in CmdSN order (RFC 7143 3.2.2.1). A READ that
completes before one with a lower tag is served out of arrival order: disksort must
show some, fifo none (elevator.py: "fifo serves in arrival order"). Measured (TCG, 8
readers of 40 scattered 4 KiB reads each): disksort 101 of 325 READs, fifo 0 of 325.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest

from qemu.smoke import PATTERN_OFFSET, PATTERN_SIZE, check_backing, pattern
from target.testing.plugin import Lun
from target.trace import read as read_trace

pytestmark = pytest.mark.guest

READERS = 8


def reads(trace: Path) -> list[dict]:
    """The trace's records of READ commands (a block range, no Data-Out to wait for: a
    write whose data is still arriving is parked and may be passed under any policy,
    taskset.py), in completion order (target.trace writes one record per completed
    command)."""
    records = list(read_trace(trace))
    return [r for r in records
            if "lba" in r and r["op"].startswith("READ(") and r["status"] == "GOOD"]


def overtaken(records: list[dict]) -> int:
    """How many commands completed before a command that arrived earlier (a lower tag of
    the same initiator and LUN, completing later): each was served out of arrival order."""
    count = 0
    for key in {(r["initiator"], r["lun"]) for r in records}:
        tags = [r["tag"] for r in records if (r["initiator"], r["lun"]) == key]
        assert len(set(tags)) == len(tags), "a task tag used twice: arrival order unknown"
        lowest_after = float("inf")  # the lowest tag among the later completions
        for tag in reversed(tags):
            count += lowest_after < tag
            lowest_after = min(lowest_after, tag)
    return count


@pytest.mark.parametrize("policy", ["disksort", "fifo"])
def test_guest_on_a_seeking_depth1_lu(scsi_target, guest, policy, tmp_path):
    lun = Lun(size=64 << 20, vendor="STSEEK", product="ROTATIONAL",
              scheduler={"elevator": policy, "dispatch_depth": 1, "disk": {"rpm": 7200}})
    trace = tmp_path / f"trace-{policy}.trace"
    target = scsi_target(lun, args=("--trace", str(trace)))
    vm = guest(target, hba="virtio-scsi-pci", mode="scsi-block")
    assert vm.sysfs("device/vendor") == "STSEEK"
    marker = f"scsi-target-{policy}-{secrets.token_hex(8)}"
    vm.write_pattern(marker, PATTERN_OFFSET, PATTERN_SIZE)
    check_backing(target.backing(), pattern(marker), PATTERN_OFFSET)
    # Readers keep several commands queued while the pattern is read. Each reads 4 KiB at a
    # time at scattered offsets: with sequential streams, C-SCAN at depth 1 settles into
    # the same round-robin as arrival order and reorders almost nothing (seen: 5 of 325).
    # (The loop goes into a script: the console's line editor cuts long command lines.)
    vm.check("echo 'j=0; while [ $j -lt 40 ]; do dd if=/dev/$1 of=/dev/null bs=4096 count=1 "
             "skip=$(( (j * 7919 + $2) % 16000 )) iflag=direct 2>/dev/null; j=$((j + 1)); "
             "done' > /tmp/reader")
    readers = " ".join(f"sh /tmp/reader {vm.disk} {i * 1543} &" for i in range(READERS))
    vm.check(f"{readers} true")
    assert vm.read_md5(PATTERN_OFFSET, PATTERN_SIZE) == hashlib.md5(pattern(marker)).hexdigest()
    vm.check("wait", timeout=120)
    assert vm.poweroff() == 0
    target.server.stop()  # the tracer writes its buffer out at shutdown (cli.py)
    records = reads(trace)
    assert len(records) >= READERS * 40, f"only {len(records)} READs traced"
    out_of_order = overtaken(records)
    if policy == "fifo":
        assert out_of_order == 0, f"fifo served {out_of_order} commands out of arrival order"
    else:
        assert out_of_order > 0, "disksort served every command in arrival order"
