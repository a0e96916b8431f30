# The guest smoke flow: boot the Linux test guest against one iSCSI LUN and do real I/O.
#
# Rules:
# - One disk, attached as `scsi-block` (the guest's CDBs reach the target unchanged) on
#   the chosen HBA, through QEMU's iscsi:// block driver.
# - The guest must see /dev/sda (waiting up to DISK_WAIT_S for the asynchronous SCSI
#   scan), report its vendor, model and size from sysfs, write PATTERN_SIZE bytes of a
#   per-run marker at byte PATTERN_OFFSET (sector 2048 of 512) with O_DIRECT and fsync,
#   read them back with O_DIRECT and compare in the guest; when the backing file is
#   given, the host finds the same bytes in it at that offset.
# - The guest is left with `poweroff -f`; QEMU must exit with status 0. On any failure
#   SmokeError names the step and the log, and QEMU is killed by PID.

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from images import linux
from qemu.guest import Drive, Guest, GuestConfig, GuestError

PATTERN_OFFSET = 2048 * 512
PATTERN_SIZE = 1 << 20
DISK_WAIT_S = 20
DISK = "sda"


class SmokeError(RuntimeError):
    """The smoke flow failed; the message says at which step."""


@dataclass(frozen=True)
class SmokeResult:
    url: str
    hba: str
    kernel_release: str
    vendor: str
    model: str
    size_bytes: int
    marker: str
    md5: str
    backing_checked: bool
    image_seconds: float
    boot_seconds: float
    total_seconds: float
    log_path: Path


def pattern(marker: str) -> bytes:
    """What `yes MARKER | head -c PATTERN_SIZE` writes: the marker line repeated."""
    line = (marker + "\n").encode()
    return (line * (PATTERN_SIZE // len(line) + 1))[:PATTERN_SIZE]


def check_backing(backing: Path, expected: bytes, offset: int = PATTERN_OFFSET) -> None:
    """Raise SmokeError unless the backing file holds expected at offset."""
    with open(backing, "rb") as f:
        f.seek(offset)
        found = f.read(len(expected))
    if found != expected:
        first = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False))
                      if a != b), min(len(found), len(expected)))
        raise SmokeError(f"backing file {backing} differs from the pattern at byte "
                         f"{offset + first} (read {len(found)} of {len(expected)} bytes)")


def _disk_facts(guest: Guest) -> tuple[str, str, int]:
    guest.check(f"i=0; while [ ! -b /dev/{DISK} ] && [ $i -lt {DISK_WAIT_S * 10} ]; do "
                f"sleep 0.1; i=$((i+1)); done; [ -b /dev/{DISK} ]", timeout=DISK_WAIT_S + 30)
    dev = f"/sys/block/{DISK}/device"
    vendor = guest.check(f"cat {dev}/vendor").strip()
    model = guest.check(f"cat {dev}/model").strip()
    sectors = int(guest.check(f"cat /sys/block/{DISK}/size").strip())
    guest.check(f"sg_inq /dev/{DISK}")
    return vendor, model, sectors * 512


def _pattern_roundtrip(guest: Guest, marker: str) -> str:
    """Write and read back the pattern in the guest; returns the guest's md5 of it."""
    mib = PATTERN_OFFSET // PATTERN_SIZE
    guest.check(f"yes {marker} | head -c {PATTERN_SIZE} > /tmp/pattern")
    guest.check(f"dd if=/tmp/pattern of=/dev/{DISK} bs={PATTERN_SIZE} seek={mib} count=1 "
                "oflag=direct conv=fsync")
    guest.check(f"dd if=/dev/{DISK} of=/tmp/readback bs={PATTERN_SIZE} skip={mib} count=1 "
                "iflag=direct")
    guest.check("cmp /tmp/pattern /tmp/readback")
    return guest.check("md5sum /tmp/readback").split()[0]


def _dump_dmesg(guest: Guest) -> None:
    """Best effort: put the guest's kernel log into the console log after a failure."""
    try:
        guest.run("dmesg", timeout=5)
    except GuestError:
        pass


def _guest_flow(guest: Guest, marker: str) -> tuple[str, str, int, str]:
    """The in-guest steps; returns (vendor, model, size in bytes, md5 of the read-back)."""
    vendor, model, size = _disk_facts(guest)
    if size < PATTERN_OFFSET + PATTERN_SIZE:
        raise SmokeError(f"the disk has {size} bytes, too small for the pattern")
    md5 = _pattern_roundtrip(guest, marker)
    if md5 != hashlib.md5(pattern(marker)).hexdigest():
        raise SmokeError(f"the guest's md5 {md5} of the read-back is not the pattern's")
    guest.run("dmesg")  # the kernel log (quiet on the console) into the console log
    return vendor, model, size, md5


def run_smoke(url: str, *, hba: str = "virtio-scsi-pci", backing: Path | None = None,
              log_path: Path | None = None, image: linux.LinuxImage | None = None,
              pvh: bool = True, boot_timeout: float = 120.0) -> SmokeResult:
    """Boot, find the disk, round-trip the pattern, power off. Raises SmokeError."""
    t0 = time.monotonic()
    try:
        image = image or linux.build()
    except (linux.ImageError, OSError) as e:
        raise SmokeError(f"image: {e}") from e
    image_s = time.monotonic() - t0
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="guest-smoke-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    marker = f"scsi-target-smoke-{secrets.token_hex(8)}"
    cfg = GuestConfig(image=image, drives=(Drive(url),), hba=hba, pvh=pvh)
    try:
        with Guest(cfg, log_path) as guest:
            boot_s = guest.start(timeout=boot_timeout)
            try:
                vendor, model, size, md5 = _guest_flow(guest, marker)
            except (GuestError, SmokeError):
                _dump_dmesg(guest)
                raise
            status = guest.poweroff()
    except (GuestError, SmokeError) as e:
        msg = str(e) if str(log_path) in str(e) else f"{e} (console log: {log_path})"
        raise SmokeError(msg) from e
    if status != 0:
        raise SmokeError(f"QEMU exited with status {status} (console log: {log_path})")
    if backing is not None:
        check_backing(backing, pattern(marker))
    return SmokeResult(url=url, hba=hba, kernel_release=image.kernel_release, vendor=vendor,
                       model=model, size_bytes=size, marker=marker, md5=md5,
                       backing_checked=backing is not None, image_seconds=image_s,
                       boot_seconds=boot_s, total_seconds=time.monotonic() - t0,
                       log_path=log_path)
