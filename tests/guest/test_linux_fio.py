"""fio in the Linux guest against our target: 4 KiB random reads, QD8, 2 s, O_DIRECT, libaio.

The guest is the Linux test guest's "fio" variant (images.linux VARIANTS: fio 3.33 from
Debian with the libraries it links), its disk a LUN of the target on virtio-scsi-pci as
scsi-block, so each of fio's reads is the guest's own READ CDB through QEMU's iscsi://
driver. The command line and the report's parse are tools/guest_bench.py's (fio_command,
checked_job; unit-tested in tests/unit/test_guest_bench.py against fio's stat.c).

What must hold:
- fio completed the job without error (its JSON "error" is 0) and with non-zero IOPS.
- The guest kernel counted reads on the disk during the job (fio's "disk_util" read_ios,
  the delta of /sys/block/sda/stat, the block layer's count, not fio's nor ours).
- The target saw them: its CDB trace (`serve --trace`, target.trace) holds at least that
  many READs of 8 blocks (4 KiB at the LU's 512-byte blocks, SBC-4 5.15/5.16 READ(10)/
  READ(16) transfer length) with GOOD status, each at an LBA that is a multiple of 8
  (fio aligns random offsets to the block size: HOWTO "blockalign", default bs), and
  spread over many LBAs (random, not one block re-read).
Cost: one boot (~5-8 s under TCG) and 2 s of fio.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from qemu.spec import AttachedGuest, AttachSpec
from target.testing.plugin import Lun

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from guest_bench import FIO_VARIANT, Workload, checked_job, fio_command, parse_fio_json  # noqa: E402

from target.trace import read as read_trace

pytestmark = pytest.mark.guest

LUN = Lun(size=256 << 20, vendor="STFIO", product="GUEST-FIO")
WORKLOAD = Workload("randread-4k-qd8", "randread", "4k", 8, "IOPS")
RUNTIME_S = 2
BLOCKS_PER_IO = 4096 // LUN.block_size


@pytest.fixture
def fio_guest(tmp_path: Path, linux_image, scsi_target):
    """Factory: a booted fio-variant guest on the target's LUN 0 (killed at teardown,
    before the scsi_target fixture stops the target)."""
    started: list[AttachedGuest] = []

    def boot(target) -> AttachedGuest:
        vm = AttachedGuest(AttachSpec(hba="virtio-scsi-pci", mode="scsi-block"),
                           target.address(), tmp_path / "console-fio.log",
                           image=linux_image.variant(FIO_VARIANT))
        started.append(vm)
        vm.start()
        print(f"fio guest on {target.kind}: boot {vm.boot_seconds:.2f} s (log {vm.log_path})")
        return vm

    yield boot
    for vm in started:
        vm.kill()


def test_fio_randread_reaches_our_target(scsi_target, fio_guest, tmp_path):
    trace = tmp_path / "trace.bin"
    target = scsi_target(LUN, kind="ours", args=("--trace", str(trace)))
    vm = fio_guest(target)
    assert vm.sysfs("device/vendor") == LUN.vendor
    out = vm.check(fio_command(WORKLOAD, RUNTIME_S, device=f"/dev/{vm.disk}",
                               output="/tmp/fio.json"), timeout=RUNTIME_S + 120)
    text = vm.check("cat /tmp/fio.json")
    job = checked_job(text, WORKLOAD.name)  # error 0 and some I/O, else FioError
    assert job.read_iops > 0 and job.read_ios > 0, out
    assert job.write_ios == 0
    disk = {d["name"]: d for d in json.loads(text[text.index("{"):]).get("disk_util", [])}
    kernel_reads = disk[vm.disk]["read_ios"]
    assert kernel_reads > 0, "the guest's block layer counted no reads on the disk"
    assert parse_fio_json(text)[0] == "fio-3.33"
    assert vm.poweroff() == 0
    target.server.stop()  # the tracer writes out what it holds at shutdown
    records = list(read_trace(trace))
    reads = [r for r in records if re.fullmatch(r"READ\((10|16)\)", r["op"])
             and r.get("blocks") == BLOCKS_PER_IO and r["status"] == "GOOD"]
    assert len(reads) >= kernel_reads, (
        f"the guest completed {kernel_reads} reads, the target traced {len(reads)} "
        f"4 KiB READs (fio counted {job.read_ios})")
    assert all(r["lba"] % BLOCKS_PER_IO == 0 for r in reads)
    assert len({r["lba"] for r in reads}) > len(reads) // 4, "reads were not random"
