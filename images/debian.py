# Debian packages as build inputs: resolve versions, download .debs, extract them.
#
# Rules:
# - Only the host's ordinary apt clients are used: `apt-cache show` to learn the candidate
#   version and dependencies of named packages, `apt-get download` to fetch exact
#   name=version .debs into a cache directory, `dpkg-deb -x` to unpack them into a
#   scratch tree. Nothing is installed on the host.
# - Resolution asks apt only about the packages a recipe names and the library
#   packages those depend on (a filter chosen by the caller), never bulk lists.
# - A downloaded .deb is kept in the cache and reused while its version is current.
# - Failures raise DebianError with the command and its stderr.

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_DEP_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9+.-]*)")


class DebianError(RuntimeError):
    """An apt or dpkg command failed or a package could not be resolved."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    depends: tuple[tuple[str, ...], ...]  # each item: alternatives, first preferred

    @property
    def deb_name(self) -> str:
        """The file name apt-get download gives this package (':' quoted as '%3a')."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise DebianError(f"{argv[0]} not found: this recipe needs Debian's apt tools") from e
    if proc.returncode != 0:
        raise DebianError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def parse_depends(field: str) -> tuple[tuple[str, ...], ...]:
    """'a (>= 1) | b, c:any' -> (('a', 'b'), ('c',)): names only, arch qualifiers dropped."""
    out = []
    for clause in field.split(","):
        names = []
        for alt in clause.split("|"):
            m = _DEP_NAME.match(alt)
            if m:
                names.append(m.group(1).split(":")[0])
        if names:
            out.append(tuple(names))
    return tuple(out)


def _parse_stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def show(names: Iterable[str]) -> dict[str, Package]:
    """Candidate version and dependencies of each named package (apt-cache show)."""
    names = sorted(set(names))
    if not names:
        return {}
    text = _run(["apt-cache", "show", "--no-all-versions", *names])
    found: dict[str, Package] = {}
    for st in _parse_stanzas(text):
        deps = ", ".join(x for x in (st.get("Pre-Depends"), st.get("Depends")) if x)
        pkg = Package(st["Package"], st["Version"], st.get("Architecture", "all"),
                      parse_depends(deps))
        found.setdefault(pkg.name, pkg)
    missing = [n for n in names if n not in found]
    if missing:
        raise DebianError(f"apt-cache show found no candidate for: {', '.join(missing)}")
    return found


def closure(roots: Iterable[str], follow: Callable[[str], bool]) -> dict[str, Package]:
    """The roots plus, transitively, the dependencies for which follow(name) is true.

    For an alternative (a | b) the first name that follow() accepts is taken.
    """
    resolved: dict[str, Package] = {}
    todo = set(roots)
    while todo:
        batch = show(todo)
        resolved.update(batch)
        todo = set()
        for pkg in batch.values():
            for alts in pkg.depends:
                pick = next((a for a in alts if follow(a)), None)
                if pick and pick not in resolved:
                    todo.add(pick)
    return resolved


def download(pkgs: Iterable[Package], cache: Path, progress: Callable[[str], None]) -> dict[
        str, Path]:
    """Path of each package's .deb in cache, downloading the ones not there yet."""
    pkgs = list(pkgs)
    cache.mkdir(parents=True, exist_ok=True)
    paths = {p.name: cache / p.deb_name for p in pkgs}
    wanted = [p for p in pkgs if not paths[p.name].exists()]
    if wanted:
        progress(f"downloading {', '.join(p.name for p in wanted)}")
        argv = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            argv += ["-o", "APT::Sandbox::User=root"]
        _run(argv + [f"{p.name}={p.version}" for p in wanted], cwd=cache)
    for name, path in paths.items():
        if not path.exists():
            raise DebianError(f"apt-get download gave no {path.name} for {name}")
    return paths


# What apt's answers depend on: the package lists, the installed set, pins and sources.
APT_STATE = (Path("/var/lib/apt/lists"), Path("/var/lib/dpkg/status"),
             Path("/etc/apt/preferences"), Path("/etc/apt/preferences.d"),
             Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def apt_state_fingerprint() -> str:
    """A digest of the files apt resolves from (names, sizes, mtimes): while it is
    unchanged, `apt-cache show` gives the same answers and need not be asked again."""
    h = hashlib.sha256()
    for path in APT_STATE:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                st = f.stat()
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def extract(deb: Path, dest: Path) -> Path:
    """Unpack a .deb's file system tree into dest (dpkg-deb -x); returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest
