# The illumos test guest: a released OmniOS (or OpenIndiana) disk image, fetched and verified.
#
# Rules:
# - Nothing is built: an illumos guest is a distribution's own disk image. It comes either
#   from a named release (RELEASES: the image's URL; its SHA-256 pinned here or, where the
#   release has none pinned yet, read from the `.sha256` file published beside the image
#   and reported as such), downloaded only when asked (`scsi-target image build illumos
#   --release NAME`), or from a local file (`--from PATH`, e.g. an image you installed
#   yourself); `--sha256 HEX` checks either against a digest you trust. A digest mismatch
#   is an error and nothing is kept.
# - The image is cached as images.cache_root()/images/illumos-<name>/disk.<format> with a
#   manifest.json (release, source, sha256 of what was fetched, format, size, login).
#   `.zst` and `.xz` downloads are decompressed on the way in (zstd / xz). Guests never
#   write to it: qemu.illumos boots a qcow2 overlay per guest.
# - find() picks the image the guest tests use: $SCSI_TARGET_ILLUMOS_IMAGE (a disk image
#   path, used in place) or the newest cached one; None when there is none, and
#   MISSING_HINT says how to provide one (the tests skip with it).
# - The console profile (qemu.illumos) needs an image whose console is the first serial
#   port (ttya) with a login for `login_user` (password `login_password`, empty for none):
#   true of an OmniOS installed from its ISO with the serial console chosen (root, no
#   password until one is set). Cloud images lock root's password and want cloud-init
#   metadata; give `--user/--password` for what your image accepts.
# - Downloads go only to the URL named by the release or by --url; nothing runs at test
#   time (the tests never download).

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from images import ImageError, cache_root

RECIPE = "illumos"
ENV_IMAGE = "SCSI_TARGET_ILLUMOS_IMAGE"
FORMATS = ("raw", "qcow2", "vmdk")
CHUNK = 1 << 20

MISSING_HINT = (
    "no illumos image: provide one with `scsi-target image build illumos --from PATH` "
    "(a disk image of an installed OmniOS/OpenIndiana whose console is ttya; root logs in "
    "without a password unless --user/--password say otherwise), or with internet access "
    "`scsi-target image build illumos --release NAME` (`scsi-target image releases` lists "
    f"them), or set {ENV_IMAGE}=PATH")


@dataclass(frozen=True)
class Release:
    name: str
    url: str
    sha256: str | None = None   # pinned digest of the file at url; None = the published one
    description: str = ""


# Named releases. URLs follow the distributors' published layout; add a pinned sha256 for
# a release once you have checked it from a trusted source.
RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("omnios-r151054", "https://downloads.omnios.org/media/stable/"
            "omnios-r151054.cloud.raw.zst",
            description="OmniOS r151054 (LTS) cloud image, raw, zstd"),
    Release("omnios-r151052", "https://downloads.omnios.org/media/stable/"
            "omnios-r151052.cloud.raw.zst",
            description="OmniOS r151052 cloud image, raw, zstd"),
    Release("omnios-r151050", "https://downloads.omnios.org/media/stable/"
            "omnios-r151050.cloud.raw.zst",
            description="OmniOS r151050 cloud image, raw, zstd"),
)}
DEFAULT_RELEASE = "omnios-r151054"


@dataclass(frozen=True)
class IllumosImage:
    path: Path              # the disk image
    name: str
    format: str
    sha256: str
    source: str
    login_user: str = "root"
    login_password: str = ""
    added: str = ""

    @classmethod
    def load(cls, directory: Path) -> IllumosImage | None:
        try:
            m = json.loads((directory / "manifest.json").read_text())
            return cls(path=directory / m["file"], name=m["name"], format=m["format"],
                       sha256=m["sha256"], source=m["source"],
                       login_user=m.get("login_user", "root"),
                       login_password=m.get("login_password", ""), added=m.get("added", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _progress(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def images_dir() -> Path:
    return cache_root() / "images"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_hex(digest: str) -> str:
    d = digest.strip().lower()
    if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
        raise ImageError(f"not a SHA-256 digest (64 hex digits): {digest!r}")
    return d


def published_sha256(url: str) -> str:
    """The digest in the `<url>.sha256` file (formats: "HEX", "HEX  name", "SHA256 (n) = HEX")."""
    try:
        with urllib.request.urlopen(url + ".sha256", timeout=60) as r:
            text = r.read(4096).decode("ascii", "replace")
    except OSError as exc:
        raise ImageError(f"cannot read the published digest {url}.sha256: {exc}") from None
    for word in text.replace("=", " ").split():
        if len(word) == 64 and all(c in "0123456789abcdefABCDEF" for c in word):
            return word.lower()
    raise ImageError(f"no SHA-256 digest in {url}.sha256")


def download(url: str, dest: Path, progress: Callable[[str], None] = _progress) -> None:
    """Fetch url into dest with a progress line every ~5%."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0)
            done = 0
            shown = -1
            while chunk := r.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                pct = done * 20 // total if total else -1
                if pct != shown and total:
                    shown = pct
                    progress(f"downloading {done >> 20} / {total >> 20} MiB")
    except OSError as exc:
        raise ImageError(f"cannot download {url}: {exc}") from None


def _decompressor(name: str) -> list[str] | None:
    if name.endswith(".zst"):
        return ["zstd", "-d", "-q", "-c"]
    if name.endswith(".xz"):
        return ["xz", "-d", "-c"]
    if name.endswith(".gz"):
        return ["gzip", "-d", "-c"]
    return None


def _format_of(name: str) -> str:
    stem = name
    for ext in (".zst", ".xz", ".gz"):
        stem = stem.removesuffix(ext)
    suffix = stem.rsplit(".", 1)[-1].lower()
    if suffix in ("img", "raw", "dsk"):
        return "raw"
    if suffix in FORMATS:
        return suffix
    return "raw"


def _store(src: Path, name: str, source: str, digest: str, dest_dir: Path,
           user: str, password: str, progress: Callable[[str], None]) -> IllumosImage:
    """Decompress/copy src into a fresh cache directory renamed into place as dest_dir."""
    images_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{RECIPE}-", dir=images_dir()))
    try:
        fmt = _format_of(src.name)
        disk = work / f"disk.{fmt}"
        cmd = _decompressor(src.name)
        if cmd is not None:
            progress(f"decompressing {src.name}")
            if shutil.which(cmd[0]) is None:
                raise ImageError(f"{cmd[0]} is needed to unpack {src.name} "
                                 f"(Debian package {'zstd' if cmd[0] == 'zstd' else cmd[0]})")
            with open(disk, "wb") as out:
                proc = subprocess.run([*cmd, str(src)], stdout=out, stderr=subprocess.PIPE)
            if proc.returncode:
                raise ImageError(f"{' '.join(cmd)} {src} failed: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
        else:
            progress(f"copying {src} into the cache")
            shutil.copyfile(src, disk)
        manifest = {"recipe": RECIPE, "name": name, "file": disk.name, "format": fmt,
                    "sha256": digest, "source": source, "size": disk.stat().st_size,
                    "login_user": user, "login_password": password,
                    "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest_dir.exists():
            shutil.rmtree(dest_dir)
        os.rename(work, dest_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    image = IllumosImage.load(dest_dir)
    assert image is not None
    return image


def add(*, release: str | None = None, from_path: Path | None = None, url: str | None = None,
        sha256: str | None = None, name: str | None = None, user: str = "root",
        password: str = "", force: bool = False,
        progress: Callable[[str], None] = _progress) -> IllumosImage:
    """Put an illumos image into the cache from a release, a URL or a local file."""
    expected = _check_hex(sha256) if sha256 else None
    if from_path is not None:
        if release or url:
            raise ImageError("give one of --from, --release, --url")
        src = Path(from_path)
        if not src.is_file():
            raise ImageError(f"--from {src}: no such file")
        name = name or "local-" + src.name.split(".")[0]
        dest = images_dir() / f"{RECIPE}-{name}"
        progress(f"hashing {src}")
        digest = sha256_file(src)
        if expected and digest != expected:
            raise ImageError(f"{src}: SHA-256 {digest} is not the expected {expected}")
        return _store(src, name, f"file:{src.resolve()}", digest, dest, user, password,
                      progress)
    if url is None:
        rel_name = release or DEFAULT_RELEASE
        rel = RELEASES.get(rel_name)
        if rel is None:
            raise ImageError(f"unknown illumos release {rel_name!r}; known: "
                             f"{', '.join(RELEASES)} (or --url / --from)")
        url, name = rel.url, name or rel.name
        expected = expected or rel.sha256
    name = name or Path(urllib.parse.urlparse(url).path).name.split(".")[0]
    dest = images_dir() / f"{RECIPE}-{name}"
    if not force and (image := IllumosImage.load(dest)):
        progress(f"{name} is cached ({image.path})")
        return image
    if expected is None:
        progress(f"no pinned digest for {name}: using the one published at {url}.sha256")
        expected = published_sha256(url)
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=_mkdir(images_dir())) as tmp:
        fetched = Path(tmp) / Path(urllib.parse.urlparse(url).path).name
        progress(f"downloading {url}")
        download(url, fetched, progress)
        digest = sha256_file(fetched)
        if digest != expected:
            raise ImageError(f"{url}: SHA-256 {digest} is not the expected {expected}; "
                             "nothing was kept")
        progress(f"SHA-256 verified: {digest}")
        return _store(fetched, name, url, digest, dest, user, password, progress)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_images() -> list[IllumosImage]:
    found = []
    root = images_dir()
    if root.is_dir():
        for path in sorted(root.glob(f"{RECIPE}-*")):
            if (image := IllumosImage.load(path)) is not None:
                found.append(image)
    return sorted(found, key=lambda i: i.added)


def find() -> IllumosImage | None:
    """The image for the illumos guest tests: $SCSI_TARGET_ILLUMOS_IMAGE or the newest cached."""
    env = os.environ.get(ENV_IMAGE)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ImageError(f"{ENV_IMAGE}={env}: no such file")
        return IllumosImage(path=path, name=path.name, format=_format_of(path.name),
                            sha256="", source=f"${ENV_IMAGE}",
                            login_user=os.environ.get(ENV_IMAGE + "_USER", "root"),
                            login_password=os.environ.get(ENV_IMAGE + "_PASSWORD", ""))
    images = list_images()
    return images[-1] if images else None


def describe(image: IllumosImage) -> str:
    return (f"{RECIPE}-{image.name}  {image.format}  added {image.added}\n"
            f"  disk    {image.path}\n  sha256  {image.sha256}\n  source  {image.source}\n"
            f"  login   {image.login_user}{' (password set)' if image.login_password else ''}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m images.illumos",
                                 description="Fetch, verify and list illumos guest images.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fetch a release (or take a local file) into the cache")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--release", help=f"a named release (default {DEFAULT_RELEASE})")
    src.add_argument("--from", dest="from_path", type=Path, help="a local disk image")
    src.add_argument("--url", help="any image URL (give --sha256)")
    b.add_argument("--sha256", help="the digest the image must have")
    b.add_argument("--name", help="the name to cache it under")
    b.add_argument("--user", default="root", help="console login user (default root)")
    b.add_argument("--password", default="", help="console login password (default none)")
    b.add_argument("--force", action="store_true", help="fetch again even when cached")
    sub.add_parser("list", help="list cached images")
    sub.add_parser("releases", help="list the named releases")
    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            image = add(release=args.release, from_path=args.from_path, url=args.url,
                        sha256=args.sha256, name=args.name, user=args.user,
                        password=args.password, force=args.force)
            print(describe(image))
        elif args.command == "releases":
            for rel in RELEASES.values():
                pin = "pinned sha256" if rel.sha256 else "published sha256"
                print(f"{rel.name:16} {rel.description} ({pin})\n  {rel.url}")
        else:
            for image in list_images():
                print(describe(image))
    except ImageError as e:
        print(f"images: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
