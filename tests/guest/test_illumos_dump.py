"""An illumos guest dumps onto our LUN through sddump(): dumpadm -d, a panic, the polled
WRITEs, and the dump found where savecore looks.

Runs where an illumos image is present (images.illumos.find()); otherwise it skips with
the instruction to provide one. The LUN is attached with scsi-block, so the guest's sd
driver and its dump(9E) entry point (sddump) talk to the target itself. After the panic
the guest's dump is read from the backing file by `scsi-target dump inspect` (dumphdr_t
64 KiB before the end of the device, DF_VALID|DF_COMPLETE, the panic string), and the
target's trace holds the polled WRITE(10)s that wrote it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qemu.illumos import dump_hbas
from target.testing.plugin import Lun
from target.trace import read as read_trace

pytestmark = pytest.mark.guest

LUN = Lun(size=2 << 30, vendor="STILLUM", product="DUMP-DEVICE", serial="ST0000ILLUMOS2")
PANICS = {"reboot": "forced crash dump initiated at user request", "nmi": "NMI"}


# Only the HBAs on which sddump() can run (qemu.illumos.HBAS: RESET_ALL non-zero and polled
# packets; pvscsi first, and the NMI panic on it). virtio-scsi-pci is not run: illumos
# vioscsi.c vioscsi_tran_reset() returns 0 for RESET_ALL, so sd.c sddump() returns EIO;
# tests/unit/test_illumos.py checks check_hba(..., dump=True) refuses it with that reason.
DUMPS = [(h.model, "reboot") for h in dump_hbas()] + [(dump_hbas()[0].model, "nmi")]


@pytest.mark.parametrize("hba,how", DUMPS)
def test_illumos_crash_dump_onto_the_lun(scsi_target, illumos_guest, tmp_path, hba, how):
    trace = tmp_path / "trace.bin"
    target = scsi_target(LUN, args=["--trace", str(trace)])
    vm = illumos_guest(target, hba=hba)
    disk = vm.find_disk(LUN.vendor)
    vm.set_dump_device(disk)
    vm.panic(how)
    vm.wait_exit(900, "the panic, the dump and the reboot (-no-reboot: QEMU exits)")
    proc = subprocess.run([sys.executable, "-m", "target", "dump", "inspect",
                           str(target.backing()), "--json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout)
    assert found["os"] == "illumos" and found["details"]["complete"] is True
    assert PANICS[how] in found["panic"]
    target.server.stop()
    writes = [r for r in read_trace(trace) if r["op"].startswith("WRITE(")]
    assert writes and all(w["status"] == "GOOD" for w in writes)
