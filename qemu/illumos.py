# An illumos guest (OmniOS, OpenIndiana) under QEMU: boot, console login, and the tools a
# dump test drives (format, iostat -En, dumpadm, savecore).
#
# Rules:
# - The guest boots from its own image (images.illumos) through a qcow2 overlay created
#   per guest in its work directory, so the cached image is never written. The boot disk
#   sits on virtio-blk (illumos vioblk) by default; the LUNs under test are iscsi://
#   drives on a SCSI HBA, attached as qemu.guest does (scsi-block passes the guest's CDBs
#   to the target: sd(4D) and sddump() talk to the target itself, except where an HBA's
#   own frames replace sd's READ/WRITE, which HBAS records).
# - HBAS is the one table of QEMU's SCSI HBAs for an illumos guest (HBA, one frozen entry
#   each), every claim in it read from QEMU's and illumos's sources, named in `sources`:
#   the PCI id QEMU presents (and whether it has a PCI Express capability, which decides
#   illumos's "pciex" or "pci" compatible names), the illumos driver whose aliases match,
#   whether sd's CDBs reach the target as sd built them, what tran_reset(RESET_ALL)
#   returns (sddump() fails with EIO when scsi_reset(RESET_ALL) returns 0) and whether
#   tran_start polls a FLAG_NOINTR packet itself. An HBA boots when its driver binds; it
#   dumps when, besides, RESET_ALL returns non-zero and polled packets complete.
#   check_hba() refuses the others naming the reason; qemu_argv() attaches only an HBA
#   that boots. pvscsi is the default: the one HBA whose driver does both on purpose.
# - The sources: QEMU qemu/qemu hw/scsi/*.c as stored (megasas.c near master, virtio-scsi.c
#   older; not the 7.2 tag itself, whose ids and PCIe capability the unit tests read from
#   this machine's QEMU), illumos r1mikey/illumos-gate bb936843 (2023-12).
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

# illumos's driver aliases for these ids (usr/src/pkg/manifests/driver-storage-*.p5m,
# system-kernel.p5m for the closed mpt): only the entries that could match a QEMU HBA.
DRIVER_ALIASES: dict[str, tuple[str, ...]] = {
    "pvscsi": ("pci15ad,7c0",),
    "vioscsi": ("pci1af4,1004",),
    "mr_sas": ("pciex1000,52", "pciex1000,53", "pciex1000,5b", "pciex1000,5d",
               "pciex1000,5f", "pciex1000,71", "pciex1000,73", "pciex1000,78",
               "pciex1000,79", "pciex1000,ce", "pciex1000,cf"),
    "mega_sas": ("pci1000,60.1000.1013",),  # one of its 75 pci1000,60.<subsystem> ids
    "mpt": ("pci1000,54",),                 # closed binary: no source in illumos-gate
}
SD_RESET = ("illumos usr/src/uts/common/io/scsi/targets/sd.c sddump(): first call, not "
            "fibre: scsi_reset(RESET_ALL) == 0 -> EIO; scsi_control.c scsi_reset() returns "
            "tran_reset()'s value")


@dataclass(frozen=True)
class Hba:
    """One QEMU SCSI HBA as an illumos guest sees it; `sources` shows every claim."""

    model: str                    # QEMU -device name
    pci_id: tuple[int, int]       # vendor, device (QEMU's class_init)
    subsystem: tuple[int, int]    # subsystem vendor, subsystem id
    pcie: bool                    # QEMU gives it a PCI Express capability
    driver: str | None            # the illumos driver with a matching alias
    cdbs_pass: bool               # sd's CDBs reach the target as sd built them
    cdb_note: str                 # what the target sees instead, when not
    reset_all: int | None         # what tran_reset(RESET_ALL) returns (None: no source)
    polled: bool                  # tran_start completes a FLAG_NOINTR packet itself
    sources: tuple[str, ...]
    reason: str = ""              # why it cannot boot or dump, for check_hba()

    def compatible(self) -> tuple[str, ...]:
        """The vendor/device forms of illumos's "compatible" property for this function
        (usr/src/uts/common/io/pciex/pci_props.c pci_prop_alias_pass(), both prefixes for
        PCIe on i86pc: pci_prd_compat_flags() has PCI_PRD_COMPAT_PCI_NODE_NAME)."""
        (v, d), (sv, sd) = self.pci_id, self.subsystem
        names = []
        for prefix in (("pciex", "pci") if self.pcie else ("pci",)):
            if sv:  # subsystem forms only where a subsystem vendor is set
                names.append(f"{prefix}{v:x},{d:x}.{sv:x}.{sd:x}")
            names.append(f"{prefix}{v:x},{d:x}")
        return tuple(names)

    @property
    def binds(self) -> bool:
        return self.driver is not None and any(
            name in DRIVER_ALIASES.get(self.driver, ()) for name in self.compatible())

    @property
    def boots(self) -> bool:
        return self.binds and self.reset_all is not None

    @property
    def dumps(self) -> bool:
        """sddump() runs: the first scsi_reset(RESET_ALL) is non-zero, writes are polled."""
        return self.boots and self.reset_all != 0 and self.polled


HBAS: tuple[Hba, ...] = (
    Hba("pvscsi", (0x15AD, 0x07C0), (0x15AD, 0x07C0), False, "pvscsi",
        cdbs_pass=True, cdb_note="", reset_all=1, polled=True, sources=(
            "illumos pvscsi.c pvscsi_start(): bcopy(pkt_cdbp) into the request; "
            "FLAG_NOINTR -> pvscsi_poll_cmd() reaps the completion ring itself",
            "illumos pvscsi.c pvscsi_reset(): RESET_ALL -> PVSCSI_CMD_RESET_BUS, "
            "RESET_TARGET/RESET_LUN -> PVSCSI_CMD_RESET_DEVICE; returns 1",
            "QEMU vmw_pvscsi.c pvscsi_process_request_descriptor(): scsi_req_new(descr->cdb); "
            "pvscsi_on_cmd_reset_bus()/_reset_device(): a QEMU reset of the SCSI devices",
        )),
    Hba("virtio-scsi-pci", (0x1AF4, 0x1004), (0x1AF4, 0x0008), False, "vioscsi",
        cdbs_pass=True, cdb_note="", reset_all=0, polled=True, sources=(
            "illumos vioscsi/vioscsi.c vioscsi_tran_reset(): RESET_LUN -> TMF LOGICAL UNIT "
            "RESET, RESET_TARGET -> TMF I_T NEXUS RESET (1 on success); RESET_ALL -> 0",
            "illumos vioscsi.c vioscsi_start(): vr_poll (FLAG_NOINTR) -> vioscsi_poll()",
            "QEMU virtio-scsi.c virtio_scsi_handle_cmd_req_prepare(): scsi_req_new(req.cdb); "
            "virtio_scsi_do_tmf(): LU and I_T nexus resets reset QEMU's SCSI devices",
            SD_RESET,
        ),
        reason="vioscsi_tran_reset() returns 0 for RESET_ALL, so sddump()'s first "
               "scsi_reset(RESET_ALL) fails and it returns EIO: no dump"),
    Hba("megasas-gen2", (0x1000, 0x0079), (0x1000, 0x9261), True, "mr_sas",
        cdbs_pass=False, reset_all=-1, polled=True,
        cdb_note="READ/WRITE go out as MFI LD READ/WRITE frames, which QEMU re-issues as "
                 "READ(16)/WRITE(16); other CDBs pass in LD SCSI frames",
        sources=(
            "QEMU megasas.c megasas_devices[]: PCI_DEVICE_ID_LSI_SAS0079, INTERFACE_PCIE_DEVICE;"
            " megasas_scsi_realize(): pcie_endpoint_cap_init()",
            "illumos mr_sas.c build_cmd(): READ/WRITE(6/10/12/16) to a logical drive -> "
            "MFI_CMD_OP_LD_READ/WRITE, others MFI_CMD_OP_LD_SCSI with the CDB",
            "QEMU megasas.c megasas_handle_io(): megasas_encode_lba() -> READ_16/WRITE_16; "
            "megasas_handle_scsi(): scsi_req_new(frame->pass.cdb)",
            "illumos mr_sas.c mrsas_tran_reset(): wait_for_outstanding() only, nothing reaches "
            "the HBA; DDI_FAILURE (-1) while a frame is outstanding (the AEN frame from "
            "register_mfi_aen() -> issue_cmd_ppc() always is), DDI_SUCCESS (0) otherwise",
            "illumos mr_sas.c mrsas_tran_start(): FLAG_NOINTR -> issue_cmd_in_poll_mode()",
            SD_RESET,
        )),
    Hba("megasas", (0x1000, 0x0060), (0x1000, 0x1013), False, "mega_sas",
        cdbs_pass=False, reset_all=-1, polled=True,
        cdb_note="as megasas-gen2: READ/WRITE become MFI LD READ/WRITE -> READ(16)/WRITE(16)",
        sources=(
            "QEMU megasas.c megasas_devices[]: PCI_DEVICE_ID_LSI_SAS1078, subsystem 0x1013, "
            "INTERFACE_CONVENTIONAL_PCI_DEVICE (mr_sas lists no 1000,60)",
            "illumos driver-storage-mega_sas.p5m: alias pci1000,60.1000.1013",
            "illumos mega_sas/megaraid_sas.c build_cmd(): MFI_CMD_OP_LD_READ/WRITE; "
            "megasas_tran_reset(): as mr_sas (DDI_FAILURE/DDI_SUCCESS); megasas_tran_start():"
            " FLAG_NOINTR -> issue_cmd_in_poll_mode()",
            "QEMU megasas.c megasas_handle_io(): READ_16/WRITE_16",
            SD_RESET,
        )),
    Hba("mptsas1068", (0x1000, 0x0054), (0x1000, 0x8000), False, "mpt",
        cdbs_pass=False, cdb_note="unknown", reset_all=None, polled=False, sources=(
            "illumos system-kernel.p5m: mpt alias pci1000,54, a closed binary",),
        reason="illumos drives the SAS1068 only with the closed-source mpt driver: nothing "
               "about it can be read from source"),
    Hba("lsi53c895a", (0x1000, 0x0012), (0x0000, 0x1000), False, None,
        cdbs_pass=False, cdb_note="unknown", reset_all=None, polled=False, sources=(
            "illumos usr/src/pkg/manifests: no alias pci1000,12",),
        reason="illumos has no driver for the LSI 53C895A (no alias pci1000,12)"),
)
HBA_BY_MODEL: dict[str, Hba] = {h.model: h for h in HBAS}
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
    hba: str = "pvscsi"
    boot_device: str = "virtio-blk-pci"
    memory_mib: int = 2048
    cpus: int = 2
    cpu: str = "max"              # under TCG; "host" with KVM
    reboot: bool = False          # True: a panic reboots (savecore runs at the next boot)
    extra_args: tuple[str, ...] = ()


def boot_hbas() -> tuple[Hba, ...]:
    """The HBAs an illumos guest attaches and sd(4D) uses, pvscsi first."""
    return tuple(h for h in HBAS if h.boots)


def dump_hbas() -> tuple[Hba, ...]:
    """The HBAs on which sddump() can write a crash dump, pvscsi first."""
    return tuple(h for h in HBAS if h.dumps)


def check_hba(hba: str, dump: bool = False) -> Hba:
    """The table entry for `hba`; GuestError naming the reason where an illumos guest
    cannot use it (dump=True: cannot dump onto a LUN behind it)."""
    entry = HBA_BY_MODEL.get(hba)
    if entry is None:
        raise GuestError(f"unknown HBA {hba!r} for illumos; known: "
                         f"{', '.join(h.model for h in boot_hbas())}")
    if not entry.boots or (dump and not entry.dumps):
        what = "dump through" if entry.boots else "be used by"
        raise GuestError(f"HBA {hba!r} cannot {what} an illumos guest: {entry.reason} "
                         f"({'; '.join(entry.sources)})")
    return entry

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
