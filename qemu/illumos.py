# An illumos guest (OmniOS, OpenIndiana) under QEMU: boot, console login, and the tools a
# dump test drives (format, iostat -En, dumpadm, savecore).
#
# Rules:
# - The guest boots from its own image (images.illumos) through a qcow2 overlay created
#   per guest in its work directory, so the cached image is never written. The boot disk
#   sits on virtio-blk (illumos vioblk) by default; the LUNs under test are iscsi://
#   drives on a SCSI HBA, attached as qemu.guest does (scsi-block passes the guest's CDBs
#   to the target: sd(4D) and sddump() talk to the target itself).
# - HBAs with an illumos driver: virtio-scsi-pci (vioscsi) and megasas-gen2 (mr_sas, the
#   2108 "gen2" id; QEMU's plain megasas is a 1078, which mr_sas does not bind). QEMU's
#   mptsas1068 needs the closed mpt driver and lsi53c895a has none: both are refused with
#   the reason.
# - SeaBIOS and the illumos loader; the console is ttya (QEMU's first serial port on
#   stdio, in pexpect's pty). Booting under TCG takes minutes: BOOT_TIMEOUT_S.
# - login(): answers "login:" with the profile's user and, when asked, its password,
#   waits for a shell prompt, then sets a fixed prompt (PROMPT), TERM=dumb and no line
#   editing so qemu.guest.Machine.run() frames commands exactly as on Linux.
# - QMP as for every guest: NMIs (with apic_panic_on_nmi set, illumos panics and dumps)
#   and events. QEMU dies by PID with the guest object.

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from images.illumos import IllumosImage
from qemu.guest import Drive, GuestError, Machine, kvm_usable, qemu_binary

ILLUMOS_HBAS: dict[str, str] = {
    "virtio-scsi-pci": "vioscsi",
    "megasas-gen2": "mr_sas",
}
UNSUPPORTED_HBAS: dict[str, str] = {
    "mptsas1068": "illumos drives the SAS1068 only with the closed-source mpt driver",
    "lsi53c895a": "illumos has no driver for the LSI 53C895A",
    "megasas": "mr_sas binds the gen2 (2108) id: use megasas-gen2",
}
PROMPT = "st-illumos# "
BOOT_TIMEOUT_S = 900.0
LOGIN = re.compile(r"login: *$", re.M)
PASSWORD = re.compile(r"[Pp]assword: *$", re.M)
SHELL = re.compile(r"[#$>] *$", re.M)
LOGIN_FAILED = re.compile(r"Login incorrect")


@dataclass(frozen=True)
class IllumosConfig:
    image: IllumosImage
    workdir: Path                 # the overlay lives here
    drives: tuple[Drive, ...] = ()
    hba: str = "virtio-scsi-pci"
    boot_device: str = "virtio-blk-pci"
    memory_mib: int = 2048
    cpus: int = 2
    cpu: str = "max"              # under TCG; "host" with KVM
    reboot: bool = False          # True: a panic reboots (savecore runs at the next boot)
    extra_args: tuple[str, ...] = ()


def check_hba(hba: str) -> None:
    if hba in UNSUPPORTED_HBAS:
        raise GuestError(f"HBA {hba!r} cannot be used by an illumos guest: "
                         f"{UNSUPPORTED_HBAS[hba]}")
    if hba not in ILLUMOS_HBAS:
        raise GuestError(f"unknown HBA {hba!r} for illumos; known: {', '.join(ILLUMOS_HBAS)}")


def overlay(cfg: IllumosConfig) -> Path:
    """A fresh qcow2 overlay on the cached image in cfg.workdir."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    path = cfg.workdir / "boot-overlay.qcow2"
    path.unlink(missing_ok=True)
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", cfg.image.format,
                           "-b", str(cfg.image.path.resolve()), str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise GuestError(f"qemu-img create (overlay on {cfg.image.path}) failed: "
                         f"{proc.stderr.strip()}")
    return path


def qemu_argv(cfg: IllumosConfig, boot_disk: Path) -> list[str]:
    check_hba(cfg.hba)
    binary = qemu_binary()
    if binary is None:
        raise GuestError("qemu-system-x86_64 not found (Debian package qemu-system-x86)")
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg",
                                                                    "-cpu", cfg.cpu]
    argv = [binary, *accel, "-smp", str(cfg.cpus), "-m", str(cfg.memory_mib),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-nic", "none", "-rtc", "base=utc", "-vga", "none"]
    if not cfg.reboot:
        argv.append("-no-reboot")
    argv += ["-drive", f"if=none,id=boot,file={boot_disk},format=qcow2",
             "-device", f"{cfg.boot_device},drive=boot,bootindex=0"]
    if cfg.drives:
        argv += ["-device", f"{cfg.hba},id=hba"]
    for i, drive in enumerate(cfg.drives):
        file = drive.url.replace(",", ",,")
        argv += ["-drive", f"if=none,id=d{i},file={file},format={drive.fmt},"
                           f"cache={drive.cache}"]
        props = f"{drive.device},drive=d{i},bus=hba.0"
        argv += ["-device", f"{props},{drive.options}" if drive.options else props]
    return [*argv, *cfg.extra_args]


def login(machine: Machine, user: str, password: str, timeout: float) -> None:
    """Log in on the console and leave a shell with PROMPT, TERM=dumb, no line editing."""
    machine.expect(LOGIN, timeout, "the console login prompt")
    machine.sendline(user)
    seen = machine.expect([PASSWORD, SHELL, LOGIN_FAILED], 60, "a password prompt or a shell")
    if seen == 0:
        machine.sendline(password)
        seen = machine.expect([SHELL, LOGIN_FAILED, LOGIN], 60, "a shell after the password")
        if seen != 0:
            raise GuestError(f"console login as {user!r} was refused (wrong password?)")
    elif seen == 2:
        raise GuestError(f"console login as {user!r} was refused")
    machine.sendline(f"PS1='{PROMPT}'; export PS1 TERM=dumb; set +o emacs 2>/dev/null; "
                     "set +o vi 2>/dev/null")
    machine.expect(re.compile(re.escape(PROMPT) + "$", re.M), 60, "the new shell prompt")


def parse_iostat_en(text: str) -> dict[str, dict[str, str]]:
    """`iostat -En` -> {device: {"vendor", "product", "revision", "serial", "size_bytes"}}."""
    disks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+Soft Errors:", line)
        if m:
            current = disks.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"Vendor:\s*(.*?)\s+Product:\s*(.*?)\s+Revision:\s*(\S*)\s+"
                      r"Serial No:\s*(\S*)", line)
        if m:
            current.update(vendor=m.group(1), product=m.group(2), revision=m.group(3),
                           serial=m.group(4))
        m = re.search(r"Size:.*<(\d+) bytes>", line)
        if m:
            current["size_bytes"] = m.group(1)
    return disks


class IllumosGuest(Machine):
    """A booted, logged-in illumos guest. A context manager; QEMU dies with it."""

    def __init__(self, cfg: IllumosConfig, log_path: Path) -> None:
        self.cfg = cfg
        check_hba(cfg.hba)
        self.boot_disk = overlay(cfg)
        super().__init__(qemu_argv(cfg, self.boot_disk), PROMPT, log_path)

    def start(self, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Power on, wait for the console login and log in; returns the seconds it took."""
        t0 = time.monotonic()
        self.spawn(timeout)
        login(self, self.cfg.image.login_user, self.cfg.image.login_password, timeout)
        return time.monotonic() - t0

    def disks(self) -> dict[str, dict[str, str]]:
        """The disks sd(4D) attached, with their INQUIRY identity (iostat -En)."""
        return parse_iostat_en(self.check("iostat -En"))

    def find_disk(self, vendor: str) -> str:
        """The cXtYdZ name of the one disk whose INQUIRY vendor is `vendor`."""
        self.check("devfsadm -c disk", timeout=300)
        found = [d for d, info in self.disks().items() if info.get("vendor") == vendor]
        if len(found) != 1:
            raise GuestError(f"expected one disk from vendor {vendor!r}, found {found}")
        return found[0]

    def set_dump_device(self, disk: str) -> str:
        """dumpadm -d on the whole disk (p0, the x86 fdisk whole-disk node); savecore off,
        so the dump stays on the device for the host to read."""
        return self.dumpadm("-n", "-d", f"/dev/dsk/{disk}p0")

    def panic(self, how: str = "reboot") -> None:
        """Panic the kernel so that sddump() writes the dump: `reboot -d` (a forced crash
        dump), or an NMI through QMP with apic_panic_on_nmi set."""
        if how == "reboot":
            self.sendline("reboot -d")
        elif how == "nmi":
            self.panic_on_nmi()
            self.monitor.inject_nmi()
        else:
            raise GuestError(f"unknown panic method {how!r}: reboot or nmi")

    def dumpadm(self, *args: str) -> str:
        """Run dumpadm with args (e.g. "-d", "/dev/dsk/c2t0d0p0"); returns its output."""
        return self.check("dumpadm " + " ".join(args), timeout=300)

    def savecore(self, directory: str = "/var/crash/st", *args: str) -> str:
        self.check(f"mkdir -p {directory}")
        return self.check(f"savecore -v {' '.join(args)} {directory}", timeout=900)

    def panic_on_nmi(self) -> None:
        """Make the running kernel panic on an NMI (QMP inject-nmi then dumps)."""
        self.check("echo 'apic_panic_on_nmi/W 1' | mdb -kw")

    def poweroff(self, timeout: float = 300.0, command: str = "poweroff") -> int:
        return super().poweroff(timeout, command)
