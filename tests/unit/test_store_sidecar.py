"""Store.sidecar: the record a store keeps beside its medium (backing/base.py, sidecar.py).

Oracles: POSIX rename(2) (the new name replaces the old one atomically: a crash leaves one
or the other), Linux fsync(2) ("an explicit fsync() on a file descriptor for the directory
is also needed" for the directory entry to be durable), access(2) and the kernel's own
permission check (a directory the process cannot write refuses mkstemp with EACCES), and
stat(2)'s file types (/dev/null is a character device). What the record is for: the APTPL
state of persistent reservations (SPC-4 5.13.5.1), which must survive a restart or, when
the store has no place for it, be refused (PTPL_C=0, 6.15.4).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from target.backing import sidecar as sidecar_module
from target.backing.file import FileStore
from target.backing.memory import MemoryStore

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lun0.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


@pytest.fixture
def store(image):
    s = FileStore(image)
    yield s
    s.close()


def temporaries(image: Path) -> list[str]:
    return sorted(n for n in os.listdir(image.parent)
                  if n.startswith(image.name + ".pr.") and n.endswith(".tmp"))


# --- what FileStore gives, and what the others say -------------------------------------------


def test_a_regular_image_file_has_its_record_beside_it(store, image):
    sc = store.sidecar(".pr")
    assert sc is not None and sc.name == str(image) + ".pr"
    assert sc.read() is None  # nothing there yet: no record, not an error
    assert not os.path.lexists(sc.name)  # opening it creates nothing


def test_memory_store_has_no_record():
    """Nothing in memory survives a restart: None (the LU is PTPL_C=0, SPC-4 6.15.4)."""
    assert MemoryStore(4096).sidecar(".pr") is None


def test_block_device_and_non_regular_files_have_no_record(store):
    """A block device (the flag FileStore sets from S_ISBLK) and anything whose fstat is
    not a regular file get None. /dev/null is a real character device (stat(2)); FileStore
    itself refuses to serve it (it is empty), so the store's descriptor is pointed at it."""
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(ValueError, match="empty"):
        FileStore("/dev/null")
    assert store.sidecar(".pr") is not None
    store.block_device = True
    assert store.sidecar(".pr") is None
    store.block_device = False
    null = os.open("/dev/null", os.O_RDWR)
    try:
        os.dup2(null, store.fd)  # the store's descriptor is now the character device
    finally:
        os.close(null)
    assert stat.S_ISCHR(os.fstat(store.fd).st_mode)
    assert store.sidecar(".pr") is None


# --- replace, read, remove -------------------------------------------------------------------


def test_replace_then_read_and_the_file_holds_exactly_the_bytes(store, image):
    sc = store.sidecar(".pr")
    sc.replace(b"first")
    sc.replace(b"second\n")
    assert Path(str(image) + ".pr").read_bytes() == b"second\n"  # read without the sidecar
    assert sc.read() == b"second\n"
    assert store.sidecar(".pr").read() == b"second\n"  # a fresh open reads it back
    assert temporaries(image) == []


def test_replace_fsyncs_the_file_then_renames_then_fsyncs_the_directory(store, monkeypatch):
    """fsync(2): the data before the rename (else a crash could leave the new name on
    empty data), the directory after it (else the rename itself may be lost)."""
    sc = store.sidecar(".pr")
    calls: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", False))
        real_replace(src, dst)

    monkeypatch.setattr(sidecar_module.os, "fsync", fsync)
    monkeypatch.setattr(sidecar_module.os, "replace", replace)
    sc.replace(b"x")
    assert calls == [("fsync", False), ("rename", False), ("fsync", True)]
    calls.clear()
    sc.remove()
    assert calls == [("fsync", True)]


def test_failed_replace_keeps_the_old_record_and_no_temporary(store, image, monkeypatch):
    sc = store.sidecar(".pr")
    sc.replace(b"old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sidecar_module.os, "replace", fail)
    with pytest.raises(OSError) as info:
        sc.replace(b"new")
    assert info.value.errno == 28
    monkeypatch.undo()
    assert sc.read() == b"old" and temporaries(image) == []


def test_remove(store, image):
    sc = store.sidecar(".pr")
    sc.replace(b"x")
    sc.remove()
    assert not os.path.lexists(str(image) + ".pr") and sc.read() is None
    sc.remove()  # already absent: done, not an error


def test_a_record_that_exists_but_cannot_be_read_is_an_error(store, image):
    """A dangling symlink at the record's name is not "no record" (the caller must not
    start as if nothing had been saved, SPC-4 5.13.5.3.3)."""
    os.symlink(image.parent / "gone", str(image) + ".pr")
    sc = store.sidecar(".pr")
    assert sc is not None
    with pytest.raises(FileNotFoundError):
        sc.read()


# --- a crash in the middle ---------------------------------------------------------------------

CRASH = """
import os, sys
from target.backing.file import FileStore
sc = FileStore(sys.argv[1]).sidecar(".pr")
def crash(src, dst):
    os._exit(17)  # the process dies here: no unwinding, no clean-up
os.replace = crash
sc.replace(b"new")
"""


def test_crash_between_mkstemp_and_rename_leaves_the_old_record(image, caplog):
    """rename(2) is the commit point: a process killed before it leaves the old record
    and its temporary; the next open removes the temporary (with a warning) and reads the
    old record; other files beside it stay."""
    record = Path(str(image) + ".pr")
    record.write_bytes(b"old")
    other = image.parent / "other.img.pr.abc123.tmp"
    other.write_bytes(b"o")
    proc = subprocess.run([sys.executable, "-c", CRASH, str(image)], cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert proc.returncode == 17, proc.stderr.decode()
    assert record.read_bytes() == b"old"
    (left,) = temporaries(image)
    assert (image.parent / left).read_bytes() == b"new"  # written and fsynced, not renamed
    with caplog.at_level(logging.WARNING, logger="target.backing.sidecar"):
        store = FileStore(image)
        sc = store.sidecar(".pr")
    try:
        assert temporaries(image) == [] and other.exists()
        assert sc.read() == b"old"
        assert any(left in r.getMessage() for r in caplog.records)
    finally:
        store.close()


# --- a directory the process cannot write --------------------------------------------------------


@contextlib.contextmanager
def unprivileged():
    """Root passes every permission check (access(2)): drop the real and effective uid to
    nobody for the block (the saved uid stays 0, so they come back). Others run as they are."""
    if os.geteuid() != 0:
        yield
        return
    os.setresuid(NOBODY, NOBODY, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)


def test_permission_denied_directory():
    """No writable directory and no record yet: None (PTPL_C=0, APTPL=1 refused up front).
    With a record already there it is given (it must be restored), and a replace that the
    kernel refuses (mkstemp: EACCES) is OSError with the old record intact."""
    # Under /tmp, not pytest's tmp_path (mode 0700: nobody could not even look inside).
    base = Path(tempfile.mkdtemp(prefix="sidecar-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        img = base / "lun0.img"
        with open(img, "wb") as f:
            f.truncate(1 << 20)
        img.chmod(0o666)
        store = FileStore(img)
        try:
            base.chmod(0o555)
            with unprivileged():
                assert not os.access(base, os.W_OK)
                assert store.sidecar(".pr") is None
            base.chmod(0o755)
            Path(str(img) + ".pr").write_bytes(b"kept")
            base.chmod(0o555)
            with unprivileged():
                sc = store.sidecar(".pr")
                assert sc is not None and sc.read() == b"kept"
                with pytest.raises(PermissionError):
                    sc.replace(b"new")
                with pytest.raises(PermissionError):
                    sc.remove()
            assert Path(str(img) + ".pr").read_bytes() == b"kept"
        finally:
            store.close()
    finally:
        base.chmod(0o755)
        shutil.rmtree(base)
