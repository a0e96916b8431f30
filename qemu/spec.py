# Attach modes: how a guest under QEMU reaches one LUN of an iSCSI target, from a small spec.
#
# Rules:
# - A spec names the guest (only "linux" so far), the SCSI HBA model and the attach mode:
#   - "scsi-block": QEMU's iscsi:// driver with `-device scsi-block`; the guest's own CDBs
#     reach the target unchanged (passthrough), so the guest sees the target's INQUIRY,
#     VPD pages, capacity and sense.
#   - "scsi-hd": the same backend with `-device scsi-hd`; QEMU answers SCSI itself (its
#     INQUIRY says "QEMU"), only reads and writes reach the target. mptsas1068 shows no
#     scsi-hd disk without a `wwn=`: one is derived from the target address unless given.
#   - "initiator": no -drive and no HBA; the Linux kernel's own iSCSI initiator
#     (iscsistart, module group "iscsi") logs in over virtio-net. QEMU user networking
#     with restrict=on (the guest reaches nothing else) forwards 10.0.2.100:3260 in the
#     guest to the target through `guestfwd=...-cmd:busybox nc 127.0.0.1 PORT`: the `cmd:`
#     form runs one nc per guest connection, so a second login works (the `tcp:` form
#     opens one host connection per QEMU process and a second login hangs).
# - The guest is booted, the initiator (if any) logged in, and the disk waited for
#   (/sys/block/DISK, up to DISK_WAIT_S) before AttachedGuest.start() returns; the times
#   of each step are kept, never asserted here.
# - QEMU never outlives an AttachedGuest (qemu.guest.Guest kills it by PID); the console
#   log is kept at the path the caller gives.

from __future__ import annotations

import hashlib
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from images import linux
from qemu.guest import HBA_MODULE_GROUPS, Drive, Guest, GuestConfig, GuestError

GUESTS = ("linux",)
HBAS = tuple(HBA_MODULE_GROUPS)
ATTACH_MODES = ("scsi-block", "scsi-hd", "initiator")
GUEST_PORTAL = "10.0.2.100"   # the portal address the guest's initiator connects to
GUEST_ADDRESS = "10.0.2.15/24"  # QEMU user networking's usual guest address
ISCSI_PORT = 3260
GUEST_INITIATOR_IQN = "iqn.2026-11.local.scsi-target:guest"
DISK_WAIT_S = 20.0
LOGIN_TIMEOUT_S = 40.0


@dataclass(frozen=True)
class TargetAddress:
    """One LUN of an iSCSI target listening on the host."""

    port: int
    iqn: str
    lun: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"iscsi://{self.host}:{self.port}/{self.iqn}/{self.lun}"


@dataclass(frozen=True)
class AttachSpec:
    guest: str = "linux"
    hba: str = "virtio-scsi-pci"   # ignored in "initiator" mode (virtio-net instead)
    mode: str = "scsi-block"
    wwn: str | None = None         # scsi-hd only: e.g. "0x5000c50015ea71ac"
    memory_mib: int = 512
    kdump: bool = False            # reserve crash kernel memory, hand over vmlinuz + initrd
    # "initiator" mode only: iscsistart's CHAP (user, secret) (-u/-w), and the target's own
    # (user, secret) that the initiator checks in mutual CHAP (-U/-W).
    chap: tuple[str, str] | None = None
    mutual_chap: tuple[str, str] | None = None
    login: bool = True             # "initiator" mode: False brings eth0 up only (the test
                                   # logs in itself, AttachedGuest.login)

    def validate(self) -> None:
        if self.guest not in GUESTS:
            raise GuestError(f"unknown guest {self.guest!r}; known: {', '.join(GUESTS)}")
        if self.mode not in ATTACH_MODES:
            raise GuestError(f"unknown attach mode {self.mode!r}; "
                             f"known: {', '.join(ATTACH_MODES)}")
        if self.mode != "initiator" and self.hba not in HBAS:
            raise GuestError(f"unknown HBA {self.hba!r}; known: {', '.join(HBAS)}")

    @property
    def label(self) -> str:
        return "initiator" if self.mode == "initiator" else f"{self.hba}/{self.mode}"


def host_nc() -> str:
    """The host command QEMU's guestfwd runs per connection: busybox's nc (busybox-static)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise GuestError("busybox not found on the host (Debian package busybox-static): "
                         "the in-guest initiator's guestfwd runs `busybox nc`")
    return f"{busybox} nc"


def derived_wwn(target: TargetAddress) -> str:
    """An NAA 5 (IEEE registered) WWN for a scsi-hd device, stable for a target address."""
    digest = hashlib.sha256(f"{target.iqn}/{target.lun}".encode()).digest()
    value = int.from_bytes(digest[:8], "big") & ((1 << 60) - 1)
    return f"0x{(0x5 << 60) | value:016x}"


def initiator_netdev(target: TargetAddress) -> tuple[str, ...]:
    """QEMU arguments: virtio-net on restricted user networking forwarding the portal."""
    cmd = f"{host_nc()} {target.host} {target.port}"
    if "," in cmd:
        raise GuestError(f"guestfwd command {cmd!r} may not contain a comma")
    return ("-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_PORTAL}:{ISCSI_PORT}"
                       f"-cmd:{cmd}",
            "-device", "virtio-net-pci,netdev=n0")


def guest_config(spec: AttachSpec, target: TargetAddress, image: linux.LinuxImage,
                 append: tuple[str, ...] = ()) -> GuestConfig:
    """The GuestConfig (hence the QEMU command line) for spec attached to target."""
    spec.validate()
    if spec.mode == "initiator":
        return GuestConfig(image=image, hba=None, modules=("iscsi",),
                           memory_mib=spec.memory_mib, append=append,
                           extra_args=initiator_netdev(target))
    options = ""
    if spec.mode == "scsi-hd":
        wwn = spec.wwn or (derived_wwn(target) if spec.hba == "mptsas1068" else None)
        options = f"wwn={wwn}" if wwn else ""
    drive = Drive(target.url, device=spec.mode, options=options)
    modules: tuple[str, ...] = ()
    payload = None
    if spec.kdump:
        from qemu import kdump

        modules = (HBA_MODULE_GROUPS[spec.hba], "kdump")
        append = (*append, f"crashkernel={kdump.CRASHKERNEL_MIB}M")
        payload = kdump.payload(image)
    return GuestConfig(image=image, drives=(drive,), hba=spec.hba, modules=modules,
                       memory_mib=spec.memory_mib, append=append, payload=payload)


def login_command(target: TargetAddress, initiator_iqn: str = GUEST_INITIATOR_IQN,
                  chap: tuple[str, str] | None = None,
                  mutual_chap: tuple[str, str] | None = None, setup: bool = True) -> str:
    """The guest shell command that brings eth0 up (`setup`) and logs in with iscsistart,
    with CHAP (-u/-w) and mutual CHAP (-U/-W, the target's name and secret) when given."""
    cmd = iscsistart(target, initiator_iqn, chap, mutual_chap)
    return f"{network_command()} && {cmd}" if setup else cmd


def network_command() -> str:
    """The guest shell command that brings eth0 up on QEMU's user network."""
    return f"ip addr add {GUEST_ADDRESS} dev eth0 && ip link set eth0 up"


def iscsistart(target: TargetAddress, initiator_iqn: str = GUEST_INITIATOR_IQN,
               chap: tuple[str, str] | None = None,
               mutual_chap: tuple[str, str] | None = None) -> str:
    """open-iscsi's iscsistart command line for one login (iscsistart(8))."""
    cmd = (f"iscsistart -i {initiator_iqn} -t {target.iqn} -g 1 -a {GUEST_PORTAL} "
           f"-p {ISCSI_PORT}")
    if chap is not None:
        cmd += f" -u {shlex.quote(chap[0])} -w {shlex.quote(chap[1])}"
    if mutual_chap is not None:
        cmd += f" -U {shlex.quote(mutual_chap[0])} -W {shlex.quote(mutual_chap[1])}"
    return cmd


class AttachedGuest:
    """A booted guest with the target's LUN as a disk. A context manager; QEMU dies with it.

    After start(): .disk is the block device name ("sda"), .boot_seconds the time to the
    shell prompt, .login_seconds the in-guest login (initiator mode; else 0) and
    .disk_seconds the wait for the disk after boot or login.
    """

    def __init__(self, spec: AttachSpec, target: TargetAddress, log_path: Path,
                 image: linux.LinuxImage | None = None, disk: str = "sda") -> None:
        self.spec = spec
        self.target = target
        self.log_path = log_path
        self.image = image or linux.build()
        self.disk = disk
        self.config = guest_config(spec, target, self.image)
        self.guest = Guest(self.config, log_path)
        self.boot_seconds = 0.0
        self.login_seconds = 0.0
        self.disk_seconds = 0.0

    @property
    def argv(self) -> list[str]:
        return self.guest.argv

    @property
    def pid(self) -> int | None:
        return self.guest.pid

    @property
    def monitor(self):
        """The guest's QMP monitor (qemu.monitor.Monitor)."""
        return self.guest.monitor

    def __enter__(self) -> AttachedGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, boot_timeout: float = 120.0) -> AttachedGuest:
        """Boot, log in (initiator mode) and wait for the disk; raises GuestError."""
        try:
            self.boot_seconds = self.guest.start(timeout=boot_timeout)
            if self.spec.mode == "initiator":
                if not self.spec.login:
                    self.guest.check(network_command())
                    return self
                t0 = time.monotonic()
                self.guest.check(login_command(self.target, chap=self.spec.chap,
                                               mutual_chap=self.spec.mutual_chap),
                                 timeout=LOGIN_TIMEOUT_S)
                self.login_seconds = time.monotonic() - t0
            t0 = time.monotonic()
            self.wait_disk()
            self.disk_seconds = time.monotonic() - t0
        except GuestError:
            self.dump_dmesg()
            raise
        return self

    def wait_disk(self, timeout: float = DISK_WAIT_S) -> None:
        ticks = int(timeout * 10)
        self.guest.check(f"i=0; while [ ! -b /dev/{self.disk} ] && [ $i -lt {ticks} ]; do "
                         f"sleep 0.1; i=$((i+1)); done; [ -b /dev/{self.disk} ]",
                         timeout=timeout + 30)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        return self.guest.run(command, timeout)

    def check(self, command: str, timeout: float = 60.0) -> str:
        return self.guest.check(command, timeout)

    def sysfs(self, name: str) -> str:
        """/sys/block/DISK/NAME (e.g. "device/vendor", "size"), stripped."""
        return self.check(f"cat /sys/block/{self.disk}/{name}").strip()

    def write_pattern(self, marker: str, offset: int, size: int = 1 << 20) -> None:
        """Write `yes MARKER | head -c SIZE` at byte OFFSET of the disk (O_DIRECT, fsync)."""
        if offset % size:
            raise GuestError(f"offset {offset} is not a multiple of the size {size}")
        self.check(f"yes {marker} | head -c {size} > /tmp/pattern")
        self.check(f"dd if=/tmp/pattern of=/dev/{self.disk} bs={size} seek={offset // size} "
                   "count=1 oflag=direct conv=fsync 2>/dev/null")

    def read_md5(self, offset: int, size: int = 1 << 20) -> str:
        """The md5 of SIZE bytes at byte OFFSET of the disk, read with O_DIRECT."""
        if offset % size:
            raise GuestError(f"offset {offset} is not a multiple of the size {size}")
        out = self.check(f"dd if=/dev/{self.disk} bs={size} skip={offset // size} count=1 "
                         "iflag=direct 2>/dev/null | md5sum")
        return out.split()[0]

    def dump_dmesg(self) -> None:
        """Best effort: the guest's kernel log into the console log (after a failure)."""
        try:
            self.guest.run("dmesg", timeout=5)
        except GuestError:
            pass

    def poweroff(self) -> int:
        return self.guest.poweroff()

    def kill(self) -> None:
        self.guest.kill()
