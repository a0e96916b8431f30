"""A Linux guest crashes and its capture kernel dumps onto our LUN (kdump).

The guest boots on the LUN (scsi-block, so the guest's own HBA driver and sd talk to the
target), loads a capture kernel with `kexec -p`, and is crashed: with sysrq-c, and with an
NMI injected through QMP while kernel.unknown_nmi_panic is set. The capture kernel boots
with reset_devices, loads the same HBA driver, writes `makedumpfile -F -d 31 /proc/vmcore`
onto the LUN at 64 MiB and powers off. The host then checks the dump in the backing file:
makedumpfile -R reassembles it; `scsi-target dump inspect` finds it on the image, checks
it, extracts the same vmcore and reads the guest's kernel release from it; makedumpfile
--dump-dmesg recovers the guest's log with the panic in it. The target's
trace shows the WRITE commands after the crash covering exactly the dump's bytes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qemu import kdump
from target.dump import formats
from target.testing.plugin import Lun
from target.trace import read as read_trace

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not shutil.which("makedumpfile"),
                       reason="needs makedumpfile on the host (`make test` installs it)"),
]

SECTOR = 512
PAGE = 4096
LUN = Lun(size=320 << 20, vendor="STKDUMP", product="DUMP-DISK")
PANICS = {"sysrq": "sysrq triggered crash", "nmi": "NMI"}


def dump_bytes(backing: Path, seek_mib: int, length: int, out: Path) -> Path:
    with open(backing, "rb") as src, open(out, "wb") as dst:
        src.seek(seek_mib << 20)
        left = length
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise AssertionError("the backing file ends inside the dump")
            dst.write(chunk)
            left -= len(chunk)
    return out


def trace_writes_after(trace: Path, since: float) -> list[tuple[int, int]]:
    ranges = []
    for rec in read_trace(trace):
        if rec["t"] >= since and rec["op"].startswith("WRITE") and rec["status"] == "GOOD":
            ranges.append((rec["lba"], rec["lba"] + rec["blocks"]))
    return ranges


def covered(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


@pytest.mark.parametrize("hba,how", [("virtio-scsi-pci", "sysrq"), ("megasas", "sysrq"),
                                     ("mptsas1068", "sysrq"), ("virtio-scsi-pci", "nmi")])
def test_kdump_onto_the_lun(scsi_target, guest, tmp_path, hba, how, record_property):
    trace = tmp_path / "trace.bin"
    target = scsi_target(LUN, args=["--trace", str(trace)])
    vm = guest(target, hba=hba, mode="scsi-block", kdump=True,
               memory_mib=kdump.GUEST_MEMORY_MIB)
    release = vm.check("uname -r").strip()
    arm_s = kdump.arm(vm)
    crashed_at_wall = time.time()
    crashed = kdump.crash(vm, how)
    cap = kdump.wait_capture(vm, crashed)
    assert (cap.makedumpfile_rc, cap.dd_rc, cap.exit_status) == (0, 0, 0)
    with open(target.backing(), "rb") as f:
        length = formats.flattened_length(f, kdump.SEEK_MIB << 20)
    record_property("kdump_s", round(cap.crash_to_done_s, 1))
    record_property("dump_bytes", length)
    print(f"kdump {hba}/{how}: kexec -p {arm_s:.1f} s, crash to dump written "
          f"{cap.crash_to_done_s:.1f} s, {length} bytes")
    assert 1 << 20 < length < (LUN.size - (kdump.SEEK_MIB << 20))

    flat = dump_bytes(target.backing(), kdump.SEEK_MIB, length, tmp_path / "dump.flat")
    assert flat.read_bytes()[:12] == b"makedumpfile"
    vmcore = tmp_path / "vmcore"
    with open(flat, "rb") as f:
        subprocess.run(["makedumpfile", "-R", str(vmcore)], stdin=f, check=True,
                       capture_output=True, timeout=120)
    # `scsi-target dump inspect` finds it on the image, checks it and extracts the same
    # vmcore makedumpfile -R made; its VMCOREINFO names the guest's kernel.
    extracted = tmp_path / "vmcore.inspect"
    proc = subprocess.run([sys.executable, "-m", "target", "dump", "inspect",
                           str(target.backing()), "--json", "--extract", str(extracted)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout)
    assert found["os"] == "linux" and found["offset"] == kdump.SEEK_MIB << 20
    assert found["format"] == "flattened (kdump inside)"
    assert found["release"] == release == found["details"]["vmcoreinfo_release"]
    assert extracted.read_bytes() == vmcore.read_bytes()
    dmesg = tmp_path / "dmesg.txt"
    subprocess.run(["makedumpfile", "--dump-dmesg", str(vmcore), str(dmesg)], check=True,
                   capture_output=True, timeout=120)
    log = dmesg.read_text(errors="replace")
    assert "Kernel panic" in log and PANICS[how] in log, log[-2000:]

    # The dump's WRITEs, in the target's trace, cover exactly its bytes on the LUN (to the
    # 4 KiB page: dd writes through the block device's page cache).
    target.server.stop()  # flushes the trace
    start = (kdump.SEEK_MIB << 20) // SECTOR
    end = start + -(-length // PAGE) * (PAGE // SECTOR)
    assert covered(trace_writes_after(trace, crashed_at_wall)) == [(start, end)]


FAULTS = {
    # MEDIUM ERROR, WRITE ERROR on every dump write: the dump must fail, and say so.
    "medium-error": ({"action": "check-condition", "every": 1, "sense": "03/0C/00"}, False),
    # BUSY for the first 20 dump writes: the guest's SCSI layer retries; the dump completes.
    "busy": ({"action": "busy", "first": 20}, True),
    # The connection dropped at the first dump write: QEMU's initiator logs in again and
    # the guest's command is retried; the dump completes.
    "drop": ({"action": "drop", "once": True}, True),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_kdump_under_faults_on_the_dump_device(scsi_target, guest, tmp_path, fault):
    """Faults set at run time through the target's control socket on the WRITEs to the
    dump area: the capture kernel either completes a valid dump (transient faults) or
    reports the failure and powers off; nothing hangs."""
    from target.shell.control import request

    control = tmp_path / "ctl" / "target.sock"
    target = scsi_target(LUN, args=["--control", str(control)])
    vm = guest(target, hba="virtio-scsi-pci", mode="scsi-block", kdump=True,
               memory_mib=kdump.GUEST_MEMORY_MIB)
    kdump.arm(vm)
    first = (kdump.SEEK_MIB << 20) // SECTOR
    rule, completes = FAULTS[fault]
    answer = request(control, {"command": "fault-add", "rule": {
        **rule, "ops": ["WRITE(10)", "WRITE(16)"], "lba": f"{first}-{LUN.size // SECTOR}"}})
    assert answer["ok"], answer
    cap = kdump.wait_capture(vm, kdump.crash(vm, "sysrq"))
    assert cap.exit_status == 0
    listed = request(control, {"command": "fault-list"})["faults"][0]
    assert listed["hits"] >= 1
    with open(target.backing(), "rb") as f:
        if completes:
            assert (cap.makedumpfile_rc, cap.dd_rc) == (0, 0)
            assert formats.identify(f, kdump.SEEK_MIB << 20) == "flattened"
            formats.flattened_length(f, kdump.SEEK_MIB << 20)  # every record and the end
        else:
            assert cap.dd_rc != 0 or cap.makedumpfile_rc != 0
            f.seek(kdump.SEEK_MIB << 20)
            assert f.read(12) != b"makedumpfile"  # nothing of the dump reached the medium
