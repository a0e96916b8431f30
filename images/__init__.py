# Guest image recipes: images built offline from distribution packages, kept in a cache.
#
# Rules:
# - Every image lives under cache_root()/images/<recipe>-<recipe-hash>/ with a
#   manifest.json; the hash covers the recipe's own source and the exact package
#   versions it uses, so an image is rebuilt only when one of them changes.
# - Builds are atomic (a temporary directory renamed into place) and serialised by a
#   lock file, so parallel test workers share one build.
# - Recipes: images.linux (Debian kernel + busybox initramfs for QEMU test guests).

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$XDG_CACHE_HOME/scsi-target (default ~/.cache/scsi-target)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scsi-target"


class ImageError(RuntimeError):
    """An image could not be resolved or built."""
