# The Linux test guest: a Debian kernel and a busybox initramfs, built offline from .debs.
#
# Rules:
# - Inputs are Debian packages only, fetched with `apt-get download` and unpacked with
#   `dpkg-deb -x` (images.debian); nothing is installed on the host and the host's /boot
#   is never read. The kernel is whatever linux-image-amd64 currently depends on.
# - The image is cached under images.cache_root()/images/linux-<hash>/, where <hash>
#   covers this recipe's source (this file and the helper modules it uses) and every
#   package version. A build happens only when the hash changes or force=True, in a
#   temporary directory renamed into place, under a lock file. A build keeps the newest
#   KEEP_IMAGES images and only the .debs it used.
# - Outputs: `vmlinux` (uncompressed ELF for QEMU's PVH entry, cut out of the bzImage
#   by images.kernel), `vmlinuz` (the bzImage, for the BIOS path or for kexec),
#   `initrd.cpio` (uncompressed newc, so TCG guests spend no time inflating it), the
#   kernel config and manifest.json. (Debian's System.map is a stub; the real one is in
#   the -dbg package.) Each VARIANTS entry adds `initrd-<name>.cpio`: the base tree plus
#   that variant's programs and libraries (LinuxImage.variant(name) boots it); the base
#   initrd.cpio is unchanged by variants.
# - Kernel modules come from the extracted package, in images.kernel.ModuleTree's
#   dependency order, never from the host. /init loads them in groups: "base" always,
#   then the groups named by the kernel command line `st_modules=a,b` (default
#   "virtio"; an unknown dotless parameter reaches init as an environment variable).
# - Programs and their shared libraries come from the .debs: DT_NEEDED is resolved
#   against the extracted library packages (Depends closure restricted to library
#   packages); a library found only on the host is copied from there and named in the
#   manifest as a reproducibility warning.
# - Kdump: with `st_kdump=DISK:SEEK_MIB[:LEVEL]` on its command line (a capture kernel),
#   /init writes `makedumpfile -F -d LEVEL /proc/vmcore` onto /dev/DISK at SEEK_MIB MiB,
#   prints "st-kdump: done makedumpfile=RC dd=RC" and powers off (the dump's length is
#   in its own flattened records; busybox dd here does not print a byte count). The module
#   group "kdump" (virtio_blk) lets the first kernel read the capture kernel and initrd
#   from the payload disk qemu.kdump attaches.
# - /init mounts proc, sysfs, devtmpfs, loads the modules, prints "init: ready" and runs
#   a login shell on the console (console=ttyS0) with the prompt PROMPT, respawned if
#   it exits. The guest is left with `poweroff -f`.
# - Progress: one line per step on stderr, prefixed "images:".

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from images import ImageError, cache_root, cpio, debian, elf, kernel

RECIPE = "linux"
KERNEL_METAPACKAGE = "linux-image-amd64"
PROMPT = "st-guest# "
DEFAULT_MODULE_GROUPS = ("virtio",)
KEEP_IMAGES = 2  # a build removes older images of this recipe beyond this many

# Package -> globs (relative to the package root) of the ELF programs to ship.
PROGRAMS: dict[str, tuple[str, ...]] = {
    "busybox-static": ("bin/busybox",),
    "sg3-utils": ("usr/bin/*",),
    "kexec-tools": ("sbin/kexec", "sbin/vmcore-dmesg"),
    "makedumpfile": ("usr/bin/makedumpfile",),
    "open-iscsi": ("sbin/iscsistart",),
    "smartmontools": ("usr/sbin/smartctl",),  # LOG SENSE 0Dh/2Fh, mode page 1Ch
}

# Variants: a second initramfs, initrd-<name>.cpio, with the base programs plus these
# (package -> globs), for guests that ask for it (LinuxImage.variant). fio 3.33 has its
# libaio and psync engines built in (the package ships no engine plugins) but links its
# rbd/rados/gfapi/nbd/rdma/pmem engines too, so their DT_NEEDED closure comes along:
# 97 MB of initramfs against 24 MB. That would not fit the kdump capture kernel's
# crashkernel reservation (qemu.kdump) and would slow every boot, hence a variant.
VARIANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "fio": {"fio": ("usr/bin/fio",)},  # tools/guest_bench.py, tests/guest/test_linux_fio.py
}

# Module groups /init can load; each name is a root, its dependencies come along.
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "base": ("sd_mod", "sg"),
    "virtio": ("virtio_pci", "virtio_scsi"),
    "mptsas": ("mptsas",),
    "megasas": ("megaraid_sas",),
    "lsi": ("sym53c8xx",),
    # The guest's own iSCSI initiator over virtio-net; the login needs crc32c, which no
    # module lists as a dependency.
    "iscsi": ("virtio_pci", "virtio_net", "crc32c_generic", "iscsi_tcp"),
    # Kdump: the first kernel reads the capture kernel and initrd from a virtio-blk disk.
    "kdump": ("virtio_pci", "virtio_blk"),
}
MODULE_PARAMS: dict[str, str] = {
    "sym53c8xx": "settle=0",  # the default 3 s SCSI bus settle delay is wasted on QEMU
}

# Where DT_NEEDED names are looked up in the extracted packages. The last entry is the
# DT_RUNPATH of librados/librbd (fio's rbd engine): libceph-common.so.2 lives there. In
# the guest every library lands in GUEST_LIB_DIR, which the loader searches by default.
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib",
            "usr/lib/x86_64-linux-gnu/ceph")
HOST_LIB_DIRS = (Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu"))
GUEST_LIB_DIR = "lib/x86_64-linux-gnu"
_SOURCES = ("linux.py", "kernel.py", "elf.py", "cpio.py", "debian.py")


@dataclass(frozen=True)
class LinuxImage:
    path: Path
    recipe_hash: str
    kernel_release: str
    vmlinux: Path
    bzimage: Path
    initrd: Path
    prompt: str
    module_groups: tuple[str, ...]
    packages: dict[str, str]
    built: str
    variants: tuple[tuple[str, Path], ...] = ()  # (name, its initrd), see VARIANTS

    def variant(self, name: str) -> LinuxImage:
        """This image booting the initramfs of variant `name` (base programs + its own)."""
        initrd = dict(self.variants).get(name)
        if initrd is None:
            raise ImageError(f"image {self.path.name} has no variant {name!r} "
                             f"(has: {', '.join(dict(self.variants)) or 'none'})")
        return dataclasses.replace(self, initrd=initrd, variants=())

    @classmethod
    def load(cls, path: Path) -> LinuxImage | None:
        """The image in path, or None when it has no readable manifest."""
        try:
            m = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(path=path, recipe_hash=m["hash"], kernel_release=m["kernel_release"],
                   vmlinux=path / m["files"]["vmlinux"], bzimage=path / m["files"]["bzimage"],
                   initrd=path / m["files"]["initrd"], prompt=m["prompt"],
                   module_groups=tuple(m["module_groups"]), packages=dict(m["packages"]),
                   built=m["built"],
                   variants=tuple((n, path / f) for n, f in m.get("variants", {}).items()))


@dataclass(frozen=True)
class Plan:
    kernel: debian.Package
    packages: dict[str, debian.Package]
    hash: str


def _progress(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def images_dir() -> Path:
    return cache_root() / "images"


def debs_dir() -> Path:
    return cache_root() / "debs"


# ---- resolution ---------------------------------------------------------------------

def _is_library_package(name: str) -> bool:
    return name.startswith("lib") or name == "zlib1g"


def _recipe_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def _resolve_apt() -> Plan:
    meta = debian.show([KERNEL_METAPACKAGE])[KERNEL_METAPACKAGE]
    kernel_name = next((alts[0] for alts in meta.depends
                        if alts[0].startswith("linux-image-")), None)
    if kernel_name is None:
        raise ImageError(f"{KERNEL_METAPACKAGE} depends on no linux-image-* package")
    extra = [pkg for programs in VARIANTS.values() for pkg in programs]
    pkgs = debian.closure([kernel_name, *PROGRAMS, *extra], _is_library_package)
    key = {"recipe": _recipe_digest(),
           "packages": {n: p.version for n, p in sorted(pkgs.items())}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Plan(pkgs[kernel_name], pkgs, digest)


def _plan_to_json(plan: Plan) -> dict:
    return {"kernel": plan.kernel.name, "hash": plan.hash,
            "packages": {n: [p.version, p.arch] for n, p in plan.packages.items()}}


def _plan_from_json(data: dict) -> Plan:
    pkgs = {n: debian.Package(n, v, a, ()) for n, (v, a) in data["packages"].items()}
    return Plan(pkgs[data["kernel"]], pkgs, data["hash"])


def resolve(use_cache: bool = True) -> Plan:
    """The packages and versions this recipe would use now, and the resulting hash.

    apt-cache is slow where its binary cache is disabled (Debian container images): the
    answer is kept in the cache and reused while the recipe and apt's state are unchanged.
    """
    fingerprint = hashlib.sha256(
        (_recipe_digest() + debian.apt_state_fingerprint()).encode()).hexdigest()
    memo = images_dir() / f".{RECIPE}-resolved.json"
    if use_cache:
        try:
            data = json.loads(memo.read_text())
            if data["fingerprint"] == fingerprint:
                return _plan_from_json(data["plan"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    plan = _resolve_apt()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "plan": _plan_to_json(plan)}))
    os.replace(tmp, memo)
    return plan


# ---- kernel -------------------------------------------------------------------------

def _kernel(tree: Path, out: Path, progress: Callable[[str], None]) -> str:
    releases = sorted(p.name for p in (tree / "lib/modules").iterdir())
    if len(releases) != 1:
        raise ImageError(f"expected one kernel release in the package, found {releases}")
    release = releases[0]
    boot = tree / "boot"
    shutil.copyfile(boot / f"vmlinuz-{release}", out / "vmlinuz")
    shutil.copyfile(boot / f"config-{release}", out / "config")
    progress(f"extracting vmlinux from vmlinuz-{release}")
    (out / "vmlinux").write_bytes(kernel.extract_vmlinux((out / "vmlinuz").read_bytes()))
    return release


# ---- modules ------------------------------------------------------------------------

def _modules(tree: Path, release: str, root: Path, progress: Callable[[str], None]) -> dict[
        str, list[str]]:
    progress("resolving kernel modules")
    modules = kernel.ModuleTree(tree / "lib/modules" / release)
    dest = root / "lib/modules" / release
    dest.mkdir(parents=True)
    (root / "etc/modules").mkdir(parents=True)
    groups: dict[str, list[str]] = {}
    for group, roots in MODULE_GROUPS.items():
        order = modules.load_order(roots)
        lines = []
        for name in order:
            src = modules.files[name]
            if not (dest / src.name).exists():
                shutil.copyfile(src, dest / src.name)
            lines.append(f"{name} {src.name} {MODULE_PARAMS.get(name, '')}".rstrip())
        (root / "etc/modules" / group).write_text("\n".join(lines) + "\n")
        groups[group] = order
    return groups


# ---- programs and libraries ---------------------------------------------------------

def _programs(trees: dict[str, Path], root: Path,
              programs: dict[str, tuple[str, ...]] = PROGRAMS) -> list[Path]:
    shipped: list[Path] = []
    for pkg, globs in programs.items():
        for pattern in globs:
            matches = sorted(trees[pkg].glob(pattern))
            if not matches:
                raise ImageError(f"{pkg} has no {pattern}")
            for src in matches:
                if src.is_symlink() or not src.is_file() or not elf.is_elf(src):
                    continue
                dst = root / src.relative_to(trees[pkg])
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                dst.chmod(0o755)
                shipped.append(dst)
    return shipped


def _find_library(soname: str, search: list[Path]) -> Path | None:
    for d in search:
        candidate = d / soname
        if candidate.exists():
            return candidate.resolve()
    return None


def _libraries(programs: list[Path], lib_trees: list[Path], root: Path,
               progress: Callable[[str], None]) -> list[str]:
    """Copy the DT_NEEDED closure and the dynamic loader; returns libraries taken from
    the host."""
    search = [t / d for t in lib_trees for d in LIB_DIRS if (t / d).is_dir()]
    (root / GUEST_LIB_DIR).mkdir(parents=True, exist_ok=True)
    from_host: list[str] = []
    pending = list(programs)
    done: set[str] = set()
    while pending:
        data = pending.pop().read_bytes()
        interp = elf.interpreter(data)
        if interp:
            _install_interpreter(interp, search, root)
        for soname in elf.needed(data):
            if soname in done:
                continue
            done.add(soname)
            src = _find_library(soname, search)
            if src is None:
                src = _find_library(soname, list(HOST_LIB_DIRS))
                if src is None:
                    raise ImageError(f"no package provides {soname}")
                progress(f"warning: {soname} taken from the host")
                from_host.append(soname)
            dst = root / GUEST_LIB_DIR / soname
            shutil.copyfile(src, dst)
            pending.append(dst)
    return from_host


def _install_interpreter(interp: str, search: list[Path], root: Path) -> None:
    dst = root / interp.lstrip("/")
    if dst.exists():
        return
    src = _find_library(Path(interp).name, search)
    if src is None:
        raise ImageError(f"no package provides the dynamic loader {interp}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(0o755)


def _busybox_links(busybox: Path, root: Path) -> None:
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                         check=True).stdout
    for applet in out.split():
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


# ---- init and the archive -----------------------------------------------------------

INIT = """#!/bin/sh
# /init of the scsi-target Linux test guest, written by images/linux.py (rules there).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
release=$(uname -r)
load_group() {
    if [ ! -r "/etc/modules/$1" ]; then echo "init: no module group $1"; return; fi
    while read -r name file params; do
        [ -d "/sys/module/$name" ] && continue
        insmod "/lib/modules/$release/$file" $params || echo "init: insmod $file failed"
    done < "/etc/modules/$1"
}
for group in base $(echo "${st_modules:-%(default)s}" | tr , ' '); do
    load_group "$group"
done
if [ -n "$st_kdump" ]; then
    # Capture kernel (st_kdump=DISK:SEEK_MIB[:DUMP_LEVEL]): the flattened vmcore goes onto
    # DISK at SEEK_MIB MiB, then the machine powers off.
    disk=${st_kdump%%%%:*}; rest=${st_kdump#*:}; seek=${rest%%%%:*}; level=${rest#*:}
    [ "$level" = "$rest" ] && level=31
    i=0; while [ ! -b "/dev/$disk" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    echo "st-kdump: /proc/vmcore -> /dev/$disk at $seek MiB, dump level $level"
    dump() { makedumpfile -F -d "$level" /proc/vmcore; echo $? > /tmp/mdf.rc; }
    dump | dd of="/dev/$disk" bs=1M seek="$seek" conv=fsync 2>/tmp/dd.err
    ddrc=$?
    echo "st-kdump: done makedumpfile=$(cat /tmp/mdf.rc) dd=$ddrc"
    sync
    poweroff -f
fi
echo "init: ready, uptime $(cut -d' ' -f1 /proc/uptime) s"
while :; do
    setsid cttyhack sh -l
done
"""

PROFILE = """# /etc/profile of the scsi-target Linux test guest (images/linux.py).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
stty cols 1000 rows 50 2>/dev/null
cd /root
PS1='%(prompt)s'
"""


def _skeleton(root: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root",
              "etc", "run", "mnt", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)


def _init_files(root: Path) -> None:
    init = root / "init"
    init.write_text(INIT % {"default": ",".join(DEFAULT_MODULE_GROUPS)})
    init.chmod(0o755)
    (root / "etc/profile").write_text(PROFILE % {"prompt": PROMPT})
    (root / "etc/hostname").write_text("st-guest\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")


def _write_initramfs(root: Path, out: Path) -> None:
    with open(out, "wb") as f:
        w = cpio.NewcWriter(f)
        w.add_tree(root)
        w.add_chardev("dev/console", 5, 1)
        w.add_chardev("dev/null", 1, 3, 0o666)
        w.close()


# ---- build, cache -------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install(built: Path, dest: Path) -> None:
    """Rename built into dest; an existing dest is moved aside first and removed."""
    old = None
    if dest.exists():
        old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
        os.rename(dest, old)
    os.rename(built, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prune(keep: Path, count: int = KEEP_IMAGES) -> None:
    """Remove all but the newest `count` images of this recipe (always keeping `keep`)."""
    stale = [i.path for i in list_images() if i.path != keep][:-(count - 1) or None]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        path.with_name(f".{path.name}.lock").unlink(missing_ok=True)


def _prune_debs(plan: Plan) -> None:
    """Remove cached .debs this plan does not use (superseded versions)."""
    wanted = {p.deb_name for p in plan.packages.values()}
    for deb in debs_dir().glob("*.deb"):
        if deb.name not in wanted:
            deb.unlink(missing_ok=True)


def _manifest(plan: Plan, release: str, groups: dict[str, list[str]],
              from_host: list[str], variants: dict[str, str]) -> dict:
    return {
        "recipe": RECIPE, "hash": plan.hash, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel_release": release, "kernel_package": plan.kernel.name,
        "packages": {n: p.version for n, p in sorted(plan.packages.items())},
        "files": {"vmlinux": "vmlinux", "bzimage": "vmlinuz", "initrd": "initrd.cpio",
                  "config": "config"},
        "prompt": PROMPT, "default_module_groups": list(DEFAULT_MODULE_GROUPS),
        "module_groups": list(groups), "modules": groups,
        "programs": {p: list(g) for p, g in PROGRAMS.items()},
        "variants": variants,
        "variant_programs": {v: {p: list(g) for p, g in progs.items()}
                             for v, progs in VARIANTS.items()},
        "host_libraries": from_host,
    }


def _build(plan: Plan, dest: Path, progress: Callable[[str], None]) -> LinuxImage:
    t0 = time.monotonic()
    debs = debian.download(plan.packages.values(), debs_dir(), progress)
    work = Path(tempfile.mkdtemp(prefix=f".build-{RECIPE}-", dir=dest.parent))
    try:
        progress(f"extracting {debs[plan.kernel.name].name}")
        trees = {plan.kernel.name: debian.extract(debs[plan.kernel.name],
                                                  work / "pkg" / plan.kernel.name)}
        progress(f"extracting {len(debs) - 1} userland packages")
        for name, deb in sorted(debs.items()):
            if name not in trees:
                trees[name] = debian.extract(deb, work / "pkg" / name)
        out = work / "out"
        out.mkdir()
        release = _kernel(trees[plan.kernel.name], out, progress)
        root = work / "initramfs"
        _skeleton(root)
        groups = _modules(trees[plan.kernel.name], release, root, progress)
        progress("collecting programs and shared libraries")
        programs = _programs(trees, root)
        lib_trees = [t for n, t in trees.items() if n != plan.kernel.name]
        from_host = _libraries(programs, lib_trees, root, progress)
        _busybox_links(root / "bin/busybox", root)
        _init_files(root)
        progress("building initramfs")
        _write_initramfs(root, out / "initrd.cpio")
        variants = {}
        for name, extra in VARIANTS.items():
            # Each variant starts from the base tree: copy it, add the programs and their
            # libraries (those already present are copied again, unchanged).
            progress(f"building initramfs variant {name}")
            vroot = work / f"initramfs-{name}"
            shutil.copytree(root, vroot, symlinks=True)
            shipped = _programs(trees, vroot, extra)
            from_host += _libraries(shipped, lib_trees, vroot, progress)
            variants[name] = f"initrd-{name}.cpio"
            _write_initramfs(vroot, out / variants[name])
        manifest = _manifest(plan, release, groups, from_host, variants)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _install(out, dest)
        _prune(keep=dest)
        _prune_debs(plan)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"built {dest} (kernel {release}) in {time.monotonic() - t0:.1f} s")
    image = LinuxImage.load(dest)
    assert image is not None
    return image


def list_images() -> list[LinuxImage]:
    """The cached Linux images, oldest first."""
    found = []
    root = images_dir()
    if root.is_dir():
        for path in sorted(root.glob(f"{RECIPE}-*")):
            image = LinuxImage.load(path)
            if image is not None:
                found.append(image)
    return sorted(found, key=lambda i: i.built)


def build(force: bool = False, progress: Callable[[str], None] = _progress) -> LinuxImage:
    """The Linux test guest for the current package versions, built if not cached.

    Where apt cannot resolve the packages (no apt, no package lists), the newest cached
    image is used with a warning.
    """
    try:
        plan = resolve(use_cache=not force)
    except debian.DebianError as e:
        cached = list_images()
        if cached and not force:
            progress(f"warning: {e}; using the cached {cached[-1].path.name}")
            return cached[-1]
        raise ImageError(str(e)) from e
    dest = images_dir() / f"{RECIPE}-{plan.hash}"
    if not force and (image := LinuxImage.load(dest)):
        return image
    with _locked(images_dir() / f".{RECIPE}-{plan.hash}.lock"):
        if not force and (image := LinuxImage.load(dest)):
            return image  # built by a concurrent process while we waited
        progress(f"building {dest.name} (kernel {plan.kernel.name} {plan.kernel.version})")
        return _build(plan, dest, progress)


# ---- command line -------------------------------------------------------------------

def _describe(image: LinuxImage) -> str:
    return (f"{image.path.name}  kernel {image.kernel_release}  built {image.built}\n"
            f"  vmlinux {image.vmlinux}\n  initrd  {image.initrd}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m images.linux",
                                 description="Build or list the Linux test guest image.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image (no-op when cached)")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    sub.add_parser("list", help="list cached images")
    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            print(_describe(build(force=args.force)))
        else:
            for image in list_images():
                print(_describe(image))
    except (ImageError, debian.DebianError) as e:
        print(f"images: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
