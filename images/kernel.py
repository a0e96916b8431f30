# The Linux kernel as an image input: the vmlinux inside a bzImage, and module load order.
#
# Rules:
# - extract_vmlinux follows the idea of the kernel's scripts/extract-vmlinux, but locates
#   the compressed payload exactly through the x86 boot protocol header (Documentation/
#   arch/x86/boot.rst: "HdrS" at 0x202, protocol >= 2.08 for payload_offset at 0x248 and
#   payload_length at 0x24c, relative to the end of the setup sectors) instead of
#   scanning for magic numbers. xz, gzip and lzma decompress in Python; zstd needs the
#   zstd command (Debian's zstd package). The result must be an ELF file.
# - ModuleTree orders modules the way modprobe would: every module after its depends=
#   and softdep "pre:" modules from its own .modinfo (images.elf), with names compared
#   after "-" -> "_" (the kernel's KBUILD_MODNAME rule). A soft dependency that names an
#   alias rather than a module (crct10dif) is skipped: soft dependencies are optional.
# - No host kernel, kmod or /lib/modules is consulted.

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from images import ImageError, elf


def _decompress(payload: bytes) -> bytes:
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return _zstd_cli(payload)
    if payload.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    raise ImageError(f"unknown kernel payload compression (magic {payload[:6].hex()})")


def _zstd_cli(payload: bytes) -> bytes:
    if shutil.which("zstd") is None:
        raise ImageError("the kernel payload is zstd-compressed: install Debian's zstd")
    proc = subprocess.run(["zstd", "-dcq"], input=payload, capture_output=True)
    if proc.returncode != 0 and not proc.stdout:
        raise ImageError(f"zstd failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF vmlinux inside an x86 bzImage (boot protocol >= 2.08)."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise ImageError("not an x86 bzImage (no HdrS boot header)")
    version = struct.unpack_from("<H", bzimage, 0x206)[0]
    if version < 0x208:
        raise ImageError(f"boot protocol {version:#x} has no payload fields (needs 2.08)")
    setup_size = ((bzimage[0x1F1] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = setup_size + offset
    vmlinux = _decompress(bzimage[start:start + length])
    if not vmlinux.startswith(elf.ELF_MAGIC):
        raise ImageError("the decompressed kernel payload is not an ELF file")
    return vmlinux


def _modname(name: str) -> str:
    return name.replace("-", "_")


def _softdeps_pre(values: list[str]) -> list[str]:
    names: list[str] = []
    for value in values:
        words = value.split()
        on = False
        for w in words:
            if w.endswith(":"):
                on = w == "pre:"
            elif on:
                names.append(w)
    return names


class ModuleTree:
    """The .ko files of one kernel release, with their dependencies from .modinfo."""

    def __init__(self, moddir: Path) -> None:
        self.files = {_modname(p.name[:-3]): p for p in sorted(moddir.rglob("*.ko"))}
        self._deps: dict[str, list[str]] = {}

    def deps(self, name: str) -> list[str]:
        if name not in self._deps:
            info = elf.modinfo(self.files[name].read_bytes())
            hard = [d for v in info.get("depends", []) for d in v.split(",") if d]
            soft = _softdeps_pre(info.get("softdep", []))
            # A soft dependency may name an alias (crct10dif): only module names are taken.
            self._deps[name] = [_modname(d) for d in hard] + [
                _modname(s) for s in soft if _modname(s) in self.files]
        return self._deps[name]

    def load_order(self, roots: tuple[str, ...]) -> list[str]:
        """Roots and their dependencies, each after everything it depends on."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name not in self.files:
                raise ImageError(f"kernel module {name} is not in the kernel package")
            if name in visiting:
                raise ImageError(f"kernel module dependency cycle through {name}")
            visiting.add(name)
            for dep in self.deps(name):
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for root in roots:
            visit(_modname(root))
        return order
