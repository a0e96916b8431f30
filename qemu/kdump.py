# Kdump in the Linux test guest: load a capture kernel, crash, let it dump onto the LUN.
#
# Rules:
# - The guest is booted with AttachSpec(kdump=True): crashkernel=CRASHKERNEL_MIB M is
#   reserved, the module group "kdump" (virtio_blk) is loaded, and the image's vmlinuz
#   (bzImage) and initrd reach the guest on a read-only virtio-blk payload disk, a newc
#   cpio archive made once per image (payload()). (QEMU's fw_cfg sysfs files were the
#   first try: reading 26 MB through them takes minutes under TCG.)
# - arm(): unpacks the payload in /tmp and runs `kexec -p` with the capture command line:
#   console on ttyS0, irqpoll nr_cpus=1 reset_devices (the capture kernel starts on
#   devices the crashed kernel left busy), the HBA's module group, and
#   st_kdump=DISK:SEEK_MIB:LEVEL for the image's /init (images.linux), which writes
#   `makedumpfile -F -d LEVEL /proc/vmcore` onto the disk and powers off.
# - crash(): "sysrq" writes c to /proc/sysrq-trigger; "nmi" sets kernel.unknown_nmi_panic
#   and injects an NMI through QMP (inject-nmi). The console command is sent without
#   waiting for a prompt: the shell never returns.
# - wait_capture(): waits for the capture's "st-kdump: done ..." line and for QEMU to
#   exit; returns a Capture (exit codes, the seconds from the crash to the dump written).
#   Nothing here asserts; tests do.

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from images import cpio, linux
from qemu.guest import HBA_MODULE_GROUPS, GuestError
from qemu.spec import AttachedGuest

CRASHKERNEL_MIB = 192
GUEST_MEMORY_MIB = 768
SEEK_MIB = 64           # where the flattened dump starts on the LUN
DUMP_LEVEL = 31         # makedumpfile -d 31: no zero, cache, user or free pages
CAPTURE_TIMEOUT_S = 180.0
DONE = re.compile(r"st-kdump: done makedumpfile=(\d+) dd=(\d+)")


@dataclass
class Capture:
    makedumpfile_rc: int
    dd_rc: int
    crash_to_done_s: float
    exit_status: int | None


PAYLOAD = "kdump-payload.cpio"


def payload(image: linux.LinuxImage) -> Path:
    """The payload disk for an image: a cpio of its vmlinuz and initrd (made once)."""
    path = image.path / PAYLOAD
    if path.exists():
        return path
    tmp = path.with_name(f".{PAYLOAD}.{os.getpid()}")
    with open(tmp, "wb") as f:
        w = cpio.NewcWriter(f)
        w.add_file("vmlinuz", image.bzimage.read_bytes())
        w.add_file("initrd", image.initrd.read_bytes())
        w.close()
    os.replace(tmp, path)
    return path


def capture_cmdline(hba: str, disk: str = "sda", seek_mib: int = SEEK_MIB,
                    level: int = DUMP_LEVEL) -> str:
    group = HBA_MODULE_GROUPS[hba]
    return (f"console=ttyS0 irqpoll nr_cpus=1 reset_devices panic=-1 quiet "
            f"st_modules={group} st_kdump={disk}:{seek_mib}:{level}")


def arm(vm: AttachedGuest, seek_mib: int = SEEK_MIB, level: int = DUMP_LEVEL) -> float:
    """Load the capture kernel (kexec -p); returns the seconds it took."""
    t0 = time.monotonic()
    vm.check("i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); "
             "done; cd /tmp && cpio -i < /dev/vda 2>/dev/null; cd /root; "
             "[ -s /tmp/vmlinuz ] && [ -s /tmp/initrd ]", timeout=120)
    cmdline = capture_cmdline(vm.spec.hba, vm.disk, seek_mib, level)
    vm.check(f"kexec -p /tmp/vmlinuz --initrd=/tmp/initrd --append='{cmdline}'", timeout=120)
    loaded = vm.check("cat /sys/kernel/kexec_crash_loaded").strip()
    if loaded != "1":
        raise GuestError(f"kexec -p did not load a capture kernel (kexec_crash_loaded={loaded})")
    vm.check("rm -f /tmp/vmlinuz /tmp/initrd")
    return time.monotonic() - t0


def crash(vm: AttachedGuest, how: str = "sysrq") -> float:
    """Panic the guest; returns time.monotonic() at the crash."""
    if how == "sysrq":
        vm.check("echo 1 > /proc/sys/kernel/sysrq")
        vm.guest.sendline("echo c > /proc/sysrq-trigger")
    elif how == "nmi":
        vm.check("echo 1 > /proc/sys/kernel/unknown_nmi_panic")
        vm.monitor.inject_nmi()
    else:
        raise GuestError(f"unknown crash method {how!r}: sysrq or nmi")
    return time.monotonic()


def wait_capture(vm: AttachedGuest, crashed_at: float,
                 timeout: float = CAPTURE_TIMEOUT_S) -> Capture:
    """Wait for the capture kernel to write the dump and power off."""
    guest = vm.guest
    try:
        guest.expect(DONE, timeout, "the capture kernel's dump (st-kdump: done)")
        m = guest.match
        assert m is not None
        done = time.monotonic()
        status = guest.wait_exit(60, "QEMU to exit after the capture")
    finally:
        vm.kill()
    return Capture(int(m.group(1)), int(m.group(2)), done - crashed_at, status)
