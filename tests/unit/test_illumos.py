"""The illumos guest path without an illumos image: the image recipe (fetch, verify,
decompress, cache), the QEMU command line, the console login dialog (against a scripted
console, a test double) and the parsers of what illumos tools print.

The guest itself boots in tests/guest/test_illumos.py where an image is present.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from images import ImageError, illumos
from qemu.guest import Drive, GuestError, Machine
from qemu.illumos import (
    DRIVER_ALIASES,
    HBA_BY_MODEL,
    HBAS,
    PROMPT,
    IllumosConfig,
    boot_hbas,
    check_hba,
    dump_hbas,
    login,
    overlay,
    parse_iostat_en,
    qemu_argv,
)

pytestmark = pytest.mark.unit

FAKE_CONSOLE = Path(__file__).parent / "data" / "fake_illumos_console.py"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(illumos.ENV_IMAGE, raising=False)
    return tmp_path / "xdg" / "scsi-target" / "images"


def _disk(path: Path, size: int = 1 << 20) -> bytes:
    data = hashlib.sha256(b"illumos").digest() * (size // 32)
    path.write_bytes(data)
    return data


def test_from_path_caches_a_copy_with_its_digest(cache, tmp_path):
    src = tmp_path / "omnios-installed.raw"
    data = _disk(src)
    image = illumos.add(from_path=src, progress=lambda m: None)
    assert image.path.parent.parent == cache
    assert image.path.read_bytes() == data
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image.format == "raw" and image.login_user == "root"
    assert illumos.find() == image
    assert illumos.list_images() == [image]


def test_from_path_with_wrong_digest_keeps_nothing(cache, tmp_path):
    src = tmp_path / "disk.raw"
    _disk(src)
    with pytest.raises(ImageError, match="is not the expected"):
        illumos.add(from_path=src, sha256="0" * 64, progress=lambda m: None)
    assert illumos.list_images() == []


def test_bad_digest_syntax_and_missing_file_are_named(cache, tmp_path):
    with pytest.raises(ImageError, match="64 hex digits"):
        illumos.add(from_path=tmp_path / "x.raw", sha256="abc", progress=lambda m: None)
    with pytest.raises(ImageError, match="no such file"):
        illumos.add(from_path=tmp_path / "missing.raw", progress=lambda m: None)
    with pytest.raises(ImageError, match="unknown illumos release 'nope'"):
        illumos.add(release="nope", progress=lambda m: None)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd (`make test` installs it)")
def test_url_download_verifies_the_published_digest_and_decompresses(cache, tmp_path):
    """A file:// URL stands for the server (no network in tests): the .zst is fetched, its
    SHA-256 checked against the `.sha256` file beside it, and it is stored decompressed."""
    raw = tmp_path / "omnios-test.cloud.raw"
    data = _disk(raw)
    subprocess.run(["zstd", "-q", "-f", str(raw)], check=True)
    zst = Path(str(raw) + ".zst")
    digest = hashlib.sha256(zst.read_bytes()).hexdigest()
    Path(str(zst) + ".sha256").write_text(f"SHA256 ({zst.name}) = {digest}\n")
    image = illumos.add(url=zst.as_uri(), progress=lambda m: None)
    assert image.path.read_bytes() == data
    assert image.sha256 == digest and image.source == zst.as_uri()
    Path(str(zst) + ".sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ImageError, match="nothing was kept"):
        illumos.add(url=zst.as_uri(), name="other", progress=lambda m: None)
    assert [i.name for i in illumos.list_images()] == ["omnios-test"]


def test_env_image_is_used_in_place(cache, tmp_path, monkeypatch):
    src = tmp_path / "mine.qcow2"
    src.write_bytes(b"x")
    monkeypatch.setenv(illumos.ENV_IMAGE, str(src))
    image = illumos.find()
    assert image is not None and image.path == src and image.format == "qcow2"
    monkeypatch.setenv(illumos.ENV_IMAGE, str(tmp_path / "gone.raw"))
    with pytest.raises(ImageError, match="no such file"):
        illumos.find()


def test_missing_image_hint_names_the_commands(cache):
    assert illumos.find() is None
    assert "scsi-target image build illumos --from PATH" in illumos.MISSING_HINT
    assert illumos.ENV_IMAGE in illumos.MISSING_HINT


QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (make test)")


def _qemu_pci_function(model: str) -> dict:
    """QEMU as the oracle: a paused pc machine with only `model`; QMP query-pci gives its
    ids, and the HMP port commands read its config space through 0xcf8/0xcfc to walk the
    capability list (PCI 3.0 6.7; 0x10 is the PCI Express capability)."""
    proc = subprocess.Popen([QEMU, "-machine", "pc", "-accel", "tcg", "-nodefaults",
                             "-display", "none", "-S", "-device", f"{model},id=hba",
                             "-qmp", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)

    def qmp(command: str, **arguments: object) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        while True:
            reply = json.loads(proc.stdout.readline())
            if "return" in reply or "error" in reply:
                return reply["return"]

    try:
        json.loads(proc.stdout.readline())  # the greeting
        qmp("qmp_capabilities")
        (dev,) = [d for bus in qmp("query-pci") for d in bus["devices"]
                  if d.get("qdev_id") == "hba"]

        def config(offset: int, size: int) -> int:
            addr = (0x80000000 | dev["bus"] << 16 | dev["slot"] << 11
                    | dev["function"] << 8 | offset & 0xFC)
            qmp("human-monitor-command", **{"command-line": f"o/w 0xcf8 {addr:#x}"})
            out = qmp("human-monitor-command", **{"command-line": "i/w 0xcfc"})
            return int(out.split("=")[1], 16) >> 8 * (offset & 3) & (1 << 8 * size) - 1

        caps, ptr = [], config(0x34, 1) if config(0x06, 2) & 0x10 else 0
        while ptr and len(caps) < 48:
            caps.append(config(ptr, 1))
            ptr = config(ptr + 1, 1)
        qmp("quit")
        return {"id": (dev["id"]["vendor"], dev["id"]["device"]),
                "subsystem": (dev["id"]["subsystem-vendor"], dev["id"]["subsystem"]),
                "caps": caps}
    finally:
        proc.kill()
        proc.wait()


@needs_qemu
def test_this_qemu_has_every_model_in_the_table():
    out = subprocess.run([QEMU, "-device", "help"], capture_output=True, text=True,
                         check=True).stdout
    for hba in HBAS:
        assert f'name "{hba.model}"' in out, hba.model


@needs_qemu
@pytest.mark.parametrize("model", [h.model for h in HBAS])
def test_qemu_presents_the_pci_function_the_table_claims(model):
    """The ids (and PCIe-ness) are what illumos's compatible names, and so the binding,
    are made of: QEMU itself must present exactly what HBAS says."""
    hba = HBA_BY_MODEL[model]
    seen = _qemu_pci_function(model)
    assert seen["id"] == hba.pci_id
    assert seen["subsystem"] == hba.subsystem
    assert (0x10 in seen["caps"]) == hba.pcie


def test_the_table_binds_as_illumos_aliases_say():
    """illumos's driver aliases (pkg manifests): mr_sas lists only pciex ids and no 1000,60,
    so QEMU's 1078 binds mega_sas (pci1000,60.1000.1013) and the 2108 (PCIe) binds mr_sas."""
    gen2, gen1 = HBA_BY_MODEL["megasas-gen2"], HBA_BY_MODEL["megasas"]
    assert "pciex1000,79" in gen2.compatible() and gen2.binds
    assert not any(n in DRIVER_ALIASES["mr_sas"] for n in gen1.compatible())
    assert gen1.driver == "mega_sas" and gen1.binds
    assert not HBA_BY_MODEL["lsi53c895a"].binds


def test_pvscsi_comes_first_and_virtio_scsi_does_not_dump():
    assert [h.model for h in boot_hbas()][0] == "pvscsi"
    assert [h.model for h in dump_hbas()][0] == "pvscsi"
    assert "virtio-scsi-pci" in [h.model for h in boot_hbas()]
    assert "virtio-scsi-pci" not in [h.model for h in dump_hbas()]
    for hba in HBAS:
        assert hba.sources, hba.model
        assert hba.dumps == (hba.boots and hba.reset_all != 0 and hba.polled)


def test_hbas_that_cannot_work_are_refused_with_the_reason():
    for hba in boot_hbas():
        assert check_hba(hba.model) is hba
    for hba in dump_hbas():
        assert check_hba(hba.model, dump=True) is hba
    with pytest.raises(GuestError, match="closed-source mpt"):
        check_hba("mptsas1068")
    with pytest.raises(GuestError, match="no driver for the LSI 53C895A"):
        check_hba("lsi53c895a")
    with pytest.raises(GuestError, match=r"cannot dump through.*RESET_ALL.*EIO.*"
                                         r"vioscsi_tran_reset\(\).*sddump\(\)"):
        check_hba("virtio-scsi-pci", dump=True)
    with pytest.raises(GuestError, match="unknown HBA 'am53c974'"):
        check_hba("am53c974")


def test_qemu_argv_refuses_an_hba_that_cannot_boot(tmp_path):
    image = illumos.IllumosImage(name="x", path=tmp_path / "x.raw", format="raw",
                                 sha256="0" * 64, source="test")
    cfg = IllumosConfig(image=image, workdir=tmp_path, hba="lsi53c895a",
                        drives=(Drive("iscsi://127.0.0.1:3260/iqn.x:y/0"),))
    with pytest.raises(GuestError, match="no driver"):
        qemu_argv(cfg, tmp_path / "boot.qcow2")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (make test)")
@pytest.mark.parametrize("hba", [h.model for h in boot_hbas()])
def test_boot_overlay_and_command_line(cache, tmp_path, hba):
    src = tmp_path / "disk.raw"
    _disk(src)
    image = illumos.add(from_path=src, progress=lambda m: None)
    before = image.path.read_bytes()
    cfg = IllumosConfig(image=image, workdir=tmp_path / "vm", hba=hba,
                        drives=(Drive("iscsi://127.0.0.1:3260/iqn.x:y/0"),))
    boot = overlay(cfg)
    info = subprocess.run(["qemu-img", "info", str(boot)], capture_output=True, text=True,
                          check=True).stdout
    assert "backing file:" in info and str(image.path) in info
    argv = qemu_argv(cfg, boot)
    joined = " ".join(argv)
    assert f"file={boot},format=qcow2" in joined
    assert f"-device {hba},id=hba" in joined
    assert "scsi-block,drive=d0,bus=hba.0" in joined
    assert "-no-reboot" in argv and "-nic" in argv
    assert image.path.read_bytes() == before  # the cached image is never written


@pytest.mark.parametrize("password", ["", "s3cret"])
def test_console_login_dialog(tmp_path, password):
    """login() answers the login and password prompts, then sets the fixed prompt so that
    run() frames a command's output and exit status."""
    console = Machine([sys.executable, str(FAKE_CONSOLE), password], PROMPT,
                      tmp_path / "console.log", qmp=False)
    try:
        console.spawn(timeout=20)
        login(console, "root", password, timeout=20)
        assert console.run("echo hello; false") == (1, "hello\n")
        assert console.check("uname -s >/dev/null; echo SunOS") == "SunOS\n"
    finally:
        console.kill()
    assert "console login:" in (tmp_path / "console.log").read_text()


def test_console_login_refused(tmp_path):
    console = Machine([sys.executable, str(FAKE_CONSOLE), "right"], PROMPT,
                      tmp_path / "console.log", qmp=False)
    try:
        console.spawn(timeout=20)
        with pytest.raises(GuestError, match="refused"):
            login(console, "root", "wrong", timeout=20)
    finally:
        console.kill()


IOSTAT_EN = """\
c1t0d0           Soft Errors: 0 Hard Errors: 0 Transport Errors: 0
Model: Virtio Block Revision:  Serial No:  Size: 10.74GB <10737418240 bytes>
Media Error: 0 Device Not Ready: 0 No Device: 0 Recoverable: 0
Illegal Request: 0
c2t0d0           Soft Errors: 0 Hard Errors: 0 Transport Errors: 0
Vendor: STGUEST  Product: GUEST-DISK       Revision: 0001 Serial No: 5354303030
Size: 67.11MB <67108864 bytes>
Media Error: 0 Device Not Ready: 0 No Device: 0 Recoverable: 0
Illegal Request: 2 Predictive Failure Analysis: 0
"""


def test_parse_iostat_en():
    disks = parse_iostat_en(IOSTAT_EN)
    assert disks["c2t0d0"] == {"vendor": "STGUEST", "product": "GUEST-DISK",
                               "revision": "0001", "serial": "5354303030",
                               "size_bytes": "67108864"}
    assert disks["c1t0d0"] == {"size_bytes": "10737418240"}
