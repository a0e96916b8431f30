"""pytest plugin: iSCSI targets and QEMU guests attached to them, as fixtures.

Load it with the `pytest11` entry point `scsi_target` (pyproject) or, in a checkout,
`pytest_plugins = ["target.testing.plugin"]` in a conftest (tests/conftest.py does so
only while the entry point is absent, so it is never registered twice).

    pytestmark = pytest.mark.guest

    def test_vendor(scsi_target, guest):
        target = scsi_target(Lun(vendor="ACME", product="DISK"))
        vm = guest(target, hba="megasas", mode="scsi-block")
        assert vm.sysfs("device/vendor") == "ACME"

Rules:
- `scsi_target(*luns, kind=None, iqn=None, args=())` starts a target on 127.0.0.1 at an ephemeral
  port serving the given LUNs (default: one Lun()) from sparse backing files in the test's
  tmp_path; it returns a RunningTarget. The kind is `--scsi-target=ours|tgtd` (default
  ours) unless the test passes one, so a whole guest suite runs against tgtd unchanged
  to show that the harness is not tuned to our target; `args` are extra `serve` options
  for our target (e.g. --trace FILE). Our target numbers LUNs from 0;
  tgtd from 1 (its LUN 0 is the controller). Targets stop at teardown, after the guests.
- `guest(target, hba=..., mode=..., lun=0)` boots the Linux test guest (images.linux,
  built once into the cache) with that LUN attached as qemu.spec describes (scsi-block,
  scsi-hd, or the guest's own initiator) and returns the qemu.spec.AttachedGuest, its
  disk present. QEMU is killed by PID at teardown; console logs stay in tmp_path.
  Without qemu-system-x86_64 the test is skipped; without tgtd a tgtd target is skipped.
- `illumos_guest(target, hba=..., lun=0)` boots the illumos image (images.illumos.find():
  $SCSI_TARGET_ILLUMOS_IMAGE or the cached one) with the LUN on the HBA (scsi-block), logs
  in on the console and returns the qemu.illumos.IllumosGuest. Without an image the test
  is skipped with images.illumos.MISSING_HINT (how to provide one).
- Boot and login times go to the test's user_properties and a "guest timings" summary
  at the end of the run; nothing here asserts on time.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from qemu.spec import AttachedGuest, AttachSpec, TargetAddress
from target.testing.scsi_facts import ScsiFacts, query_target
from target.testing.servers import OurTarget, Tgtd, find_program

KINDS = ("ours", "tgtd")
DEFAULT_IQN = "iqn.2026-11.local.scsi-target:pytest"


@dataclass(frozen=True)
class Lun:
    """One logical unit to serve; size in bytes (a whole number of blocks)."""

    size: int = 64 << 20
    block_size: int = 512
    vendor: str = "STGUEST"      # INQUIRY T10 vendor identification, 8 bytes max
    product: str = "GUEST-DISK"  # INQUIRY product identification, 16 bytes max
    serial: str = ""             # "" = the target's own default
    backing: Path | None = None  # None = <tmp_path>/lunN.img, created sparse
    number: int = -1             # the LUN number the target gives it (set when started)
    # Our target's [target.lun.scheduler] table, e.g. {"elevator": "fifo",
    # "dispatch_depth": 1, "disk": {"rpm": 7200}} (tgtd has none: such a test skips there)
    scheduler: dict | None = None
    # Our target's other [[target.lun]] keys, e.g. {"thin": True, "removable": True,
    # "physical_block_size": 4096} (tgtd is not configured so: such a test skips there)
    options: dict | None = None


@dataclass
class RunningTarget:
    kind: str
    server: OurTarget | Tgtd
    luns: list[Lun] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def iqn(self) -> str:
        return self.server.iqn

    @property
    def pid(self) -> int:
        return self.server.pid

    def address(self, index: int = 0) -> TargetAddress:
        return TargetAddress(self.port, self.iqn, self.luns[index].number)

    def url(self, index: int = 0) -> str:
        return self.address(index).url

    def backing(self, index: int = 0) -> Path:
        path = self.luns[index].backing
        assert path is not None
        return path

    def facts(self, index: int = 0) -> ScsiFacts:
        """What the LUN answers to INQUIRY, VPD 80h/83h and READ CAPACITY(16), from the host."""
        a = self.address(index)
        return query_target(a.host, a.port, a.iqn, a.lun)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scsi-target", "iSCSI targets and QEMU guests")
    group.addoption("--scsi-target", dest="scsi_target_kind", choices=KINDS, default="ours",
                    help="the target the scsi_target fixture starts: ours (default) or tgtd")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guest: QEMU guests booted against the target")


def _sparse(path: Path, size: int) -> None:
    with open(path, "ab") as f:
        if f.tell() < size:
            f.truncate(size)


def _our_config(iqn: str, luns: list[Lun], chap: dict | None = None) -> str:
    lines = [f'[[target]]\niqn = "{iqn}"\n']
    if chap:
        lines.append(_toml_table("target.chap", chap))
    for lun in luns:
        lines.append(f'[[target.lun]]\nlun = {lun.number}\nstore = "file"\n'
                     f'path = "{lun.backing}"\nblock_size = {lun.block_size}\n'
                     f'vendor = "{lun.vendor}"\nproduct = "{lun.product}"\n')
        if lun.serial:
            lines.append(f'serial = "{lun.serial}"\n')
        for key, value in (lun.options or {}).items():
            lines.append(f"{key} = {_toml_value(value)}\n")
        if lun.scheduler is not None:
            lines.append(_toml_table("target.lun.scheduler", lun.scheduler))
    return "".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} into a TOML config")


def _toml_table(name: str, table: dict) -> str:
    """[name] with the scalar keys, then the sub-tables as [name.key]."""
    out = [f"[{name}]\n"]
    subs = []
    for key, value in table.items():
        if isinstance(value, dict):
            subs.append(_toml_table(f"{name}.{key}", value))
        else:
            out.append(f"{key} = {_toml_value(value)}\n")
    return "".join(out + subs)


def _start_ours(iqn: str, luns: list[Lun], workdir: Path, args: tuple[str, ...] = (),
                chap: dict | None = None) -> OurTarget:
    cfg = workdir / f"target-{len(list(workdir.glob('target-*.toml')))}.toml"
    cfg.touch(mode=0o600)  # it may hold CHAP secrets: the target refuses them readable
    cfg.write_text(_our_config(iqn, luns, chap))
    server = OurTarget(args, config=cfg, workdir=workdir, iqn=iqn, lun=luns[0].number)
    server.__enter__()
    return server


def _start_tgtd(iqn: str, luns: list[Lun], workdir: Path) -> Tgtd:
    first = luns[0]
    server = Tgtd(first.backing, block_size=first.block_size, iqn=iqn, workdir=workdir)
    server.__enter__()
    try:
        for lun in luns:
            if lun is not first:
                args = ["--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
                        "--lun", str(lun.number), "--backing-store", str(lun.backing)]
                if lun.block_size != 512:
                    args += ["--blocksize", str(lun.block_size)]
                server.tgtadm(*args)
            params = f"vendor_id={lun.vendor},product_id={lun.product}"
            if lun.serial:
                params += f",scsi_sn={lun.serial}"
            server.tgtadm("--lld", "iscsi", "--mode", "logicalunit", "--op", "update",
                          "--tid", "1", "--lun", str(lun.number), "--params", params)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def scsi_target_kind(request: pytest.FixtureRequest) -> str:
    """The target kind chosen on the command line (--scsi-target), default "ours"."""
    return request.config.getoption("scsi_target_kind", "ours") or "ours"


@pytest.fixture
def scsi_target(tmp_path: Path, scsi_target_kind: str) -> Iterator[Callable[..., RunningTarget]]:
    """Factory: scsi_target(*luns, kind=None, iqn=None, args=(), chap=None) -> RunningTarget
    (stopped at teardown); `chap` is our config's [target.chap] table (ours only)."""
    started: list[RunningTarget] = []

    def start(*luns: Lun, kind: str | None = None, iqn: str | None = None,
              args: tuple[str, ...] | list[str] = (), chap: dict | None = None
              ) -> RunningTarget:
        kind = kind or scsi_target_kind
        if kind not in KINDS:
            raise ValueError(f"unknown target kind {kind!r}; known: {', '.join(KINDS)}")
        if kind == "tgtd" and not (find_program("tgtd") and find_program("tgtadm")):
            pytest.skip("needs tgtd and tgtadm: `make test` installs Debian package tgt")
        if kind == "tgtd" and any(lun.scheduler for lun in luns):
            pytest.skip("tgtd has no task set options (elevator, dispatch depth, disk "
                        "model): this test is about our target's; run it with "
                        "--scsi-target=ours")
        if kind == "tgtd" and any(lun.options for lun in luns):
            pytest.skip("the LUN options asked for (thin, removable, ...) are our "
                        "target's config keys; run this test with --scsi-target=ours")
        n = len(started)
        iqn = iqn or (DEFAULT_IQN if n == 0 else f"{DEFAULT_IQN}-{n}")
        first = 0 if kind == "ours" else 1
        placed = []
        for i, lun in enumerate(luns or (Lun(),)):
            if lun.size % lun.block_size:
                raise ValueError(f"LUN size {lun.size} is not a whole number of "
                                 f"{lun.block_size}-byte blocks")
            backing = lun.backing or tmp_path / f"target{n}-lun{i}.img"
            _sparse(backing, lun.size)
            placed.append(replace(lun, backing=backing, number=first + i))
        workdir = tmp_path / f"target{n}-{kind}"
        workdir.mkdir()
        if kind == "tgtd" and args:
            pytest.skip(f"tgtd takes none of our server's options ({' '.join(args)}): "
                        "run this test with --scsi-target=ours")
        if kind == "tgtd" and chap:
            pytest.skip("CHAP is set up in our target's config here; run this test with "
                        "--scsi-target=ours")
        if kind == "ours":
            server: OurTarget | Tgtd = _start_ours(iqn, placed, workdir, tuple(args), chap)
        else:
            server = _start_tgtd(iqn, placed, workdir)
        target = RunningTarget(kind, server, placed)
        started.append(target)
        return target

    yield start
    for target in reversed(started):
        target.server.stop()


@pytest.fixture(scope="session")
def linux_image():
    """The Linux test guest image (built once into the cache; skips without QEMU)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64: `make test` installs qemu-system-x86 "
                    "(or `apt-get install qemu-system-x86 qemu-block-extra`)")
    from images import linux  # the image tools are needed only by guest tests

    return linux.build()


@pytest.fixture
def guest(request: pytest.FixtureRequest, tmp_path: Path, linux_image,
          scsi_target) -> Iterator[Callable[..., AttachedGuest]]:
    """Factory: guest(target, hba=, mode=, lun=0) -> a booted AttachedGuest with its disk.

    Depends on scsi_target so that guests stop before the targets they use.
    """
    started: list[AttachedGuest] = []

    def boot(target: RunningTarget, hba: str = "virtio-scsi-pci", mode: str = "scsi-block",
             lun: int = 0, **spec: object) -> AttachedGuest:
        attach = AttachSpec(hba=hba, mode=mode, **spec)  # type: ignore[arg-type]
        label = re.sub(r"[^A-Za-z0-9.-]+", "-", attach.label)
        log = tmp_path / f"console-{len(started)}-{label}.log"
        vm = AttachedGuest(attach, target.address(lun), log, image=linux_image)
        started.append(vm)
        vm.start()
        props = request.node.user_properties
        props.append((f"{target.kind} {attach.label} boot_s", round(vm.boot_seconds, 2)))
        if attach.mode == "initiator":
            props.append((f"{target.kind} {attach.label} login_s", round(vm.login_seconds, 2)))
        print(f"guest {attach.label} on {target.kind}: boot {vm.boot_seconds:.2f} s, "
              f"login {vm.login_seconds:.2f} s, disk {vm.disk_seconds:.2f} s (log {log})")
        return vm

    yield boot
    for vm in reversed(started):
        vm.kill()


@pytest.fixture(scope="session")
def illumos_image():
    """The illumos guest image, or a skip that says how to provide one."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64: `make test` installs qemu-system-x86")
    from images import ImageError, illumos

    try:
        image = illumos.find()
    except ImageError as exc:
        pytest.skip(f"illumos image: {exc}")
    if image is None:
        pytest.skip(illumos.MISSING_HINT)
    return image


@pytest.fixture
def illumos_guest(request: pytest.FixtureRequest, tmp_path: Path, illumos_image,
                  scsi_target) -> Iterator[Callable[..., object]]:
    """Factory: illumos_guest(target, hba="pvscsi", lun=0) -> a logged-in
    qemu.illumos.IllumosGuest with the LUN attached through scsi-block."""
    from qemu.guest import Drive
    from qemu.illumos import IllumosConfig, IllumosGuest

    started: list[IllumosGuest] = []

    def boot(target: RunningTarget, hba: str = "pvscsi", lun: int = 0,
             **config: object) -> IllumosGuest:
        n = len(started)
        cfg = IllumosConfig(image=illumos_image, workdir=tmp_path / f"illumos-{n}",
                            drives=(Drive(target.url(lun)),), hba=hba,
                            **config)  # type: ignore[arg-type]
        vm = IllumosGuest(cfg, tmp_path / f"console-illumos-{n}-{hba}.log")
        started.append(vm)
        seconds = vm.start()
        request.node.user_properties.append((f"{target.kind} illumos {hba} boot_s",
                                             round(seconds, 2)))
        print(f"illumos guest {hba} on {target.kind}: boot+login {seconds:.1f} s "
              f"(log {vm.log_path})")
        return vm

    yield boot
    for vm in reversed(started):
        vm.kill()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name.endswith(("boot_s", "login_s")):
                    rows.append(f"{value:6.2f} s  {name[:-2]}  {report.nodeid}")
    if rows:
        terminalreporter.section("guest timings")
        for row in sorted(set(rows), key=lambda r: r.split("  ", 2)[2]):
            terminalreporter.write_line(row)
