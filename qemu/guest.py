# A Linux test guest under QEMU, driven through its serial console.
#
# Rules:
# - `qemu/` is a PEP 420 namespace portion (no __init__.py) so that `qemu.qmp` from PyPI
#   stays importable beside it.
# - The guest is the images.linux image: PVH entry with the uncompressed vmlinux and
#   qboot where available (fastest under TCG), or the bzImage through the default BIOS.
#   Acceleration is KVM only where /dev/kvm works with real vmx/svm, else TCG.
# - Disks are `-drive if=none` backends (an iscsi:// URL or a file) attached to one SCSI
#   HBA; `scsi-block` passes the guest's own CDBs to the target, `scsi-hd` makes QEMU
#   answer them. The initramfs loads the HBA's driver through `st_modules=` (or the
#   module groups the config names). hba=None: no HBA and no drives (a guest that brings
#   its own initiator; qemu.spec builds such configs).
# - No network unless the caller adds one (`-nic none`); nothing leaves the host.
# - The console is the guest's ttyS0 on QEMU's stdio, in a pty owned by pexpect; every
#   byte it prints goes to the log file. A command's output is framed by markers the
#   command line itself does not contain, and its exit status is reported with it.
# - Every QEMU has a QMP socket (qemu.monitor, qemu.qmp from PyPI), connected before the
#   boot is awaited: Guest.monitor answers query-status/query-block, injects NMIs and
#   reports events (GUEST_PANICKED, SHUTDOWN). The QEMU version goes into the log.
# - QEMU is killed by its PID whenever the guest is left any other way than poweroff.

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect

from images.linux import LinuxImage
from qemu.monitor import Monitor, MonitorError

QBOOT = Path("/usr/share/qemu/qboot.rom")

# QEMU SCSI HBA model -> the initramfs module group with its driver.
HBA_MODULE_GROUPS: dict[str, str] = {
    "virtio-scsi-pci": "virtio",
    "mptsas1068": "mptsas",
    "megasas": "megasas",
    "megasas-gen2": "megasas",
    "lsi53c895a": "lsi",
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class GuestError(RuntimeError):
    """The guest did not boot, a command failed, or the console stopped answering."""


@dataclass(frozen=True)
class Drive:
    url: str                     # iscsi://HOST:PORT/IQN/LUN or a file name
    device: str = "scsi-block"   # scsi-block (passthrough) or scsi-hd (QEMU emulates)
    fmt: str = "raw"
    cache: str = "none"
    options: str = ""            # extra -device properties, e.g. "wwn=0x5000c50015ea71ac"


@dataclass(frozen=True)
class GuestConfig:
    image: LinuxImage
    drives: tuple[Drive, ...] = ()
    hba: str | None = "virtio-scsi-pci"  # None: no SCSI HBA (e.g. the guest's own initiator)
    modules: tuple[str, ...] = ()  # initramfs module groups; () = the HBA's group
    memory_mib: int = 512
    cpus: int = 1
    pvh: bool = True             # vmlinux through PVH (+qboot); False: bzImage + BIOS
    quiet: bool = True           # console loglevel 4: faster boot, clean command output
    append: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    # A read-only virtio-blk disk (/dev/vda in the guest, module group "kdump") carrying
    # files for the guest, e.g. the capture kernel (qemu.kdump).
    payload: Path | None = None


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def kvm_usable() -> bool:
    """True where /dev/kvm is real hardware virtualisation (not an emulating shim)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))


def module_groups(cfg: GuestConfig) -> tuple[str, ...]:
    """The initramfs module groups /init loads (beside "base"): cfg.modules or the HBA's."""
    if cfg.modules:
        return cfg.modules
    return (HBA_MODULE_GROUPS[cfg.hba],) if cfg.hba else ()


def kernel_cmdline(cfg: GuestConfig) -> str:
    parts = ["console=ttyS0", "panic=-1", f"st_modules={','.join(module_groups(cfg))}"]
    if cfg.quiet:
        parts.append("quiet")
    return " ".join([*parts, *cfg.append])


def qemu_argv(cfg: GuestConfig) -> list[str]:
    """The full QEMU command line for cfg."""
    if cfg.hba is not None and cfg.hba not in HBA_MODULE_GROUPS:
        raise GuestError(f"unknown HBA {cfg.hba!r}; known: {', '.join(HBA_MODULE_GROUPS)}")
    binary = qemu_binary()
    if binary is None:
        raise GuestError("qemu-system-x86_64 not found (Debian package qemu-system-x86)")
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg"]
    argv = [binary, *accel, "-smp", str(cfg.cpus), "-m", str(cfg.memory_mib),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-nic", "none", "-no-reboot"]
    if cfg.pvh:
        if QBOOT.exists():
            argv += ["-bios", str(QBOOT)]
        argv += ["-kernel", str(cfg.image.vmlinux)]
    else:
        argv += ["-kernel", str(cfg.image.bzimage)]
    argv += ["-initrd", str(cfg.image.initrd), "-append", kernel_cmdline(cfg)]
    if cfg.hba is not None:
        argv += ["-device", f"{cfg.hba},id=hba"]
    elif cfg.drives:
        raise GuestError("drives need an HBA")
    for i, drive in enumerate(cfg.drives):
        file = drive.url.replace(",", ",,")  # QEMU option syntax escapes commas by doubling
        argv += ["-drive", f"if=none,id=d{i},file={file},format={drive.fmt},"
                           f"cache={drive.cache}"]
        props = f"{drive.device},drive=d{i},bus=hba.0"
        argv += ["-device", f"{props},{drive.options}" if drive.options else props]
    if cfg.payload is not None:
        file = str(cfg.payload).replace(",", ",,")
        argv += ["-drive", f"if=none,id=payload,file={file},format=raw,readonly=on",
                 "-device", "virtio-blk-pci,drive=payload"]
    return [*argv, *cfg.extra_args]


class Machine:
    """One process (QEMU) and its serial console, driven with pexpect; any guest OS.

    argv is run as is, plus the QMP socket arguments when qmp=True. `prompt` is the shell
    prompt (a string or a compiled regex) run() waits for after each command. A context
    manager: the process never outlives it.
    """

    def __init__(self, argv: list[str], prompt: str | re.Pattern[str], log_path: Path,
                 qmp: bool = True) -> None:
        self.prompt = prompt
        self.log_path = log_path
        self.qmp = qmp
        self.monitor = Monitor(None if qmp else Path("/nonexistent/qmp.sock"))
        self.argv = [*argv, *self.monitor.argv()] if qmp else list(argv)
        self._child: pexpect.spawn | None = None
        self._log = None
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def spawn(self, timeout: float = 120.0) -> None:
        """Start the process (log open, QMP connected); do not wait for anything else."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The log outlives this call: kill() and poweroff() close it.
        self._log = open(self.log_path, "w", encoding="utf-8",  # noqa: SIM115
                         errors="replace")
        self._log.write("# " + " ".join(self.argv) + "\n")
        self._log.flush()
        self._child = pexpect.spawn(self.argv[0], self.argv[1:], encoding="utf-8",
                                    codec_errors="replace", timeout=timeout, echo=False)
        self._child.logfile_read = self._log
        if not self.qmp:
            return
        child = self._child
        try:
            self.monitor.connect(alive=child.isalive)
            self._log.write(f"\n# QMP: QEMU {self.monitor.version()}\n")
        except MonitorError as exc:
            raise GuestError(f"{exc}{self._tail()}") from None

    def start(self, timeout: float = 120.0) -> float:
        """Start QEMU and wait for the shell prompt; returns the seconds it took."""
        t0 = time.monotonic()
        self.spawn(timeout)
        self.expect(self.prompt, timeout, "the shell prompt")
        return time.monotonic() - t0

    def expect(self, pattern: object, timeout: float, what: str) -> int:
        """Wait for pattern (or a list of them) on the console; returns the index matched."""
        return self._expect(pattern, timeout, what)

    def sendline(self, line: str) -> None:
        self._require().sendline(line)

    @property
    def match(self) -> re.Match[str] | None:
        """The match of the last expect() with a regular expression."""
        m = self._child.match if self._child is not None else None
        return m if isinstance(m, re.Match) else None

    def wait_exit(self, timeout: float, what: str = "QEMU to exit") -> int | None:
        """Wait for the process to end by itself (poweroff, -no-reboot); its exit status."""
        child = self._require()
        self._expect(pexpect.EOF, timeout, what)
        child.close()
        self.monitor.close()
        self._close_log()
        return child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 0)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell command in the guest; returns (exit status, output)."""
        child = self._require()
        self._seq += 1
        n = self._seq
        child.sendline(f"printf 'ST%sB\\n' {n}; {command}; printf 'ST%sE%s\\n' {n} $?")
        self._expect(re.compile(rf"ST{n}B\r*\n"), timeout, f"the start of {command!r}")
        self._expect(re.compile(rf"ST{n}E(\d+)\r*\n"), timeout, f"the end of {command!r}")
        status = int(child.match.group(1))
        output = _ANSI.sub("", child.before).replace("\r", "")
        self._expect(self.prompt, timeout, "the shell prompt")
        return status, output

    def check(self, command: str, timeout: float = 60.0) -> str:
        """Run a command that must succeed; returns its output."""
        status, output = self.run(command, timeout)
        if status != 0:
            raise GuestError(f"guest command {command!r} exited {status}: {output.strip()}")
        return output

    def poweroff(self, timeout: float = 30.0, command: str = "poweroff -f") -> int:
        """Send the power-off command and wait for QEMU to exit; returns its exit status."""
        child = self._require()
        child.sendline(command)
        self._expect(pexpect.EOF, timeout, "QEMU to exit after poweroff")
        child.close()
        self.monitor.close()
        status = child.exitstatus if child.exitstatus is not None else -(child.signalstatus
                                                                          or 0)
        self._close_log()
        return status

    def kill(self) -> None:
        """Kill QEMU by its PID if it still runs, and release the console."""
        child = self._child
        if child is not None and child.isalive():
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.close(force=True)
        self.monitor.close()
        self._close_log()

    def _require(self) -> pexpect.spawn:
        if self._child is None or not self._child.isalive():
            raise GuestError(f"the guest is not running (log: {self.log_path})")
        return self._child

    def _expect(self, pattern: object, timeout: float, what: str) -> int:
        child = self._child
        if child is None:
            raise GuestError("the guest was not started")
        try:
            return child.expect(pattern, timeout=timeout)
        except pexpect.TIMEOUT:
            raise GuestError(f"timed out after {timeout:.0f} s waiting for {what}"
                             f"{self._tail()}") from None
        except pexpect.EOF:
            raise GuestError(f"QEMU exited while waiting for {what}{self._tail()}") from None

    def _tail(self) -> str:
        before = self._child.before if self._child and isinstance(self._child.before,
                                                                  str) else ""
        lines = _ANSI.sub("", before).replace("\r", "").strip().splitlines()[-15:]
        text = "\n  ".join(lines)
        return f"; last console output:\n  {text}\n(log: {self.log_path})"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Guest(Machine):
    """The Linux test guest of a GuestConfig (images.linux), with its QMP socket."""

    def __init__(self, cfg: GuestConfig, log_path: Path) -> None:
        self.cfg = cfg
        super().__init__(qemu_argv(cfg), cfg.image.prompt, log_path)
