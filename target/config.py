"""The configuration: portals, targets, LUNs and ACLs, from TOML or the embedded default.

Rules:
- A config file is TOML (tomllib). Every error names the file, the key path (such as
  `target[0].lun[1].size`) and what is wrong; unknown keys are errors, not ignored.
- The embedded default is one portal on 127.0.0.1:3260 and one target,
  iqn.2026-11.local.scsi-target:default, with LUN 0 an in-memory 1 GiB disk of
  512-byte blocks.
- [limits] (target.shell.server, target.iscsi.connection enforce them): every value is
  an integer of at least 1 (login_timeout a number above 0); max_connections_per_address
  at most max_connections; max_buffered_bytes at least MIN_BUFFERED_BYTES, so that one
  command of the largest MAXIMUM TRANSFER LENGTH (target.scsi.vpd_sbc) always fits.
- Sizes take K/M/G/T suffixes (powers of 1024) or plain bytes, and must be a whole
  number of blocks.
- CHAP (RFC 7143 12.1.3): `[target.chap]` (that target's Normal sessions) and
  `[discovery.chap]` (Discovery sessions) hold `user` and `secret` (the initiator's) and
  optionally `mutual_user` and `mutual_secret` (the target's own, for mutual CHAP; both
  or neither) and `algorithms` (the CHAP_A values accepted: names of MD5, SHA-1, SHA-256,
  SHA3-256; default all), or only `secrets_file = PATH`, a TOML file with those keys (a relative
  PATH is relative to the config file). A target with CHAP requires it. A secret is its
  UTF-8 bytes, 12 to 255 of them: RFC 7143 9.2.1 says an implementation SHOULD NOT send
  a CHAP response unless the secret is at least 96 bits or IPsec protects the
  connection (Microsoft's SetIScsiInitiatorCHAPSharedSecret documents the same 12-byte
  minimum without IPsec), and this target has no IPsec: shorter secrets are refused. A secret
  for initiators is never also a target's mutual_secret (9.2.1: MUST NOT). A file that
  holds a secret (the config itself, or a secrets file) must not be readable by group
  or others (mode & 0o077 == 0), or loading fails naming the file.

Example:

    busy_poll_us = 50           # (top-level keys come before the first table) after
                                # answering, a connection with nothing outstanding polls
                                # this long for the next PDU (target.shell.server; 0: off)
    nop_interval = 0            # seconds between NOP-In pings (0: none)

    [limits]                    # optional: what one peer can make the target hold
    login_timeout = 15          # seconds a connection has to finish its login
    max_connections = 1024      # connections at once per portal (listening address)
    max_connections_per_address = 128  # of them from one initiator IP address
    max_sessions = 256          # sessions at once (normal and discovery); more: 03/02
    max_buffered_bytes = "64M"  # data of commands over 64 KiB one connection has in
                                # the target (Data-Out buffers, READs not yet answered);
                                # a command beyond: TASK SET FULL

    [[portal]]
    listen = "127.0.0.1:3260"

    [[target]]
    iqn = "iqn.2026-11.local.scsi-target:disk1"
    alias = "disk1"
    initiators = ["iqn.2026-11.local.qemu:guest"]   # ACL; leave out to allow all

    [[target.lun]]
    lun = 0
    store = "file"              # or "memory"
    path = "/var/tmp/disk1.img"
    size = "4G"                 # file: created sparse when missing
    block_size = 4096
    vendor = "QEMUSCSI"
    product = "scsi-target"
    serial = "disk1-0"
    read_only = false
    thin = false                # thin provisioned: UNMAP, WRITE SAME UNMAP, GET LBA STATUS
    removable = false           # removable medium: START STOP UNIT LOEJ, PREVENT ALLOW
    physical_block_size = 4096  # optional: e.g. 512-byte logical on 4096-byte physical
    sanitize_mb_s = 0           # SANITIZE speed in MB/s, as a real drive's (0: unthrottled)
    io_threads = 8              # worker threads for the store's calls; 0: on the event loop
                                # (default 0 for memory and tmpfs files, 8 otherwise)

    [target.lun.scheduler]      # optional: the task set (defaults shown)
    elevator = "disksort"       # or "fifo"
    dispatch_depth = 64         # 1 emulates a single actuator
    queue_depth = 512           # TASK SET FULL beyond this
    max_passes = 64             # starvation bound (0: off)
    deadline_ms = 500           # starvation bound (0: off)
    cylinder_blocks = 0         # sort key: cylinder of this many blocks (0: the LBA)

    [target.lun.scheduler.disk] # optional: a rotational disk model delays completions
    rpm = 7200
    average_seek_ms = 8.5
    track_to_track_ms = 0.8
    media_mb_s = 150

    [[fault]]                   # optional: fault injection (target.faults)
    action = "check-condition"  # busy, task-set-full, delay, medium-delay (delay_ms), drop
    lun = 0
    op = "WRITE(10)"            # or ops = [...], hex opcodes "0x2a"
    lba = "131072-140000"       # FROM-TO (TO exclusive)
    first = 3                   # or every = N, or once = true
    sense = "03/0C/00"          # KEY/ASC/ASCQ; default MEDIUM ERROR

    [target.chap]               # optional: CHAP required for this target (the config
    user = "guest"              # file must then be mode 0600; or secrets_file = PATH)
    secret = "twelve+ bytes secret"
    mutual_user = "disk1"       # optional: the target proves itself (mutual CHAP)
    mutual_secret = "another 12+ bytes"
    algorithms = ["SHA-256", "MD5"]  # optional: the CHAP_A values accepted (default: MD5,
                                # SHA-1, SHA-256, SHA3-256), to make an initiator use one

    [discovery.chap]            # optional: CHAP required for discovery sessions
    secrets_file = "/etc/scsi-target/discovery-chap.toml"   # mode 0600, same keys
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_IQN = "iqn.2026-11.local.scsi-target:default"
DEFAULT_LISTEN = "127.0.0.1:3260"
DEFAULT_SIZE = 1 << 30
MAX_IO_THREADS = 256  # worker threads per LU (io_threads)
MAX_BUSY_POLL_US = 10_000.0  # busy polling budget (busy_poll_us)

_IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:.+)?|eui\.[0-9A-Fa-f]{16}"
                  r"|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?)$")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_CHAP_SECRET = 12  # bytes: RFC 7143 9.2.1, 96 bits without IPsec (SHOULD)
MAX_CHAP_SECRET = 255  # bytes
MAX_CHAP_NAME = 255  # characters of CHAP_N


MIN_BUFFERED_BYTES = 8 << 20  # max_buffered_bytes: one command of MAX_TRANSFER_BYTES


class ConfigError(ValueError):
    """A configuration problem, naming where it is and what is wrong."""


@dataclass
class DiskModelConfig:
    """A rotational disk model for a LU (target.scsi.elevator.DiskModel)."""

    rpm: int = 7200
    track_to_track_ms: float = 0.8
    average_seek_ms: float = 8.5
    full_stroke_ms: float | None = None
    media_mb_s: float = 150.0


@dataclass
class SchedulerConfig:
    """How a LU orders and paces its tasks (target.scsi.taskset)."""

    elevator: str = "disksort"       # or "fifo"
    dispatch_depth: int = 64         # tasks running at once; 1 = a single actuator
    queue_depth: int = 512           # tasks in the task set before TASK SET FULL
    max_passes: int = 64             # starvation bound; 0 turns it off
    deadline_ms: float = 500.0       # starvation bound; 0 turns it off
    cylinder_blocks: int = 0         # sort by cylinder of this many blocks; 0 = by LBA
    disk: DiskModelConfig | None = None  # a rotational model delays completions


@dataclass
class LunConfig:
    lun: int = 0
    store: str = "memory"
    path: str | None = None
    size: int | None = None
    block_size: int = 512
    vendor: str = "QEMUSCSI"
    product: str = "scsi-target"
    revision: str = "0001"
    serial: str = ""
    read_only: bool = False
    thin: bool = False
    removable: bool = False
    physical_block_size: int | None = None
    sanitize_mb_s: float = 0.0
    io_threads: int | None = None  # None: 0 for stores that never sleep, 8 for the others
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class ChapConfig:
    """CHAP credentials (RFC 7143 12.1.3): the initiator's user and secret, and the
    target's own mutual_user and mutual_secret for mutual CHAP. repr hides secrets."""

    user: str
    secret: bytes
    mutual_user: str = ""
    mutual_secret: bytes = b""
    algorithms: tuple[int, ...] = ()  # CHAP_A values accepted, in our order; () = all
    where: str = ""  # the table or secrets file it came from (for messages)
    secrets_file: str | None = None

    def __repr__(self) -> str:
        return f"ChapConfig(user={self.user!r}, mutual_user={self.mutual_user!r}, ...)"


@dataclass
class TargetConfig:
    iqn: str = DEFAULT_IQN
    alias: str = ""
    tpgt: int = 1
    initiators: list[str] | None = None
    chap: ChapConfig | None = None
    luns: list[LunConfig] = field(default_factory=lambda: [
        LunConfig(size=DEFAULT_SIZE, serial=default_serial(DEFAULT_IQN, 0))])


@dataclass
class LimitsConfig:
    """What one peer can make the target hold ([limits])."""

    login_timeout: float = 15.0  # s from accept() to full feature phase
    max_connections: int = 1024  # per portal (listening socket)
    max_connections_per_address: int = 128  # per initiator IP address, per portal
    max_sessions: int = 256  # sessions at once in one process
    max_buffered_bytes: int = 64 << 20  # Data-Out buffers and READs one connection holds


@dataclass
class Config:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    nop_interval: float = 0.0  # seconds between NOP-In pings; 0 disables them
    busy_poll_us: float = 50.0  # target.shell.server's busy polling budget; 0 disables it
    faults: list = field(default_factory=list)  # target.faults.FaultRule, from [[fault]]
    discovery_chap: ChapConfig | None = None  # [discovery.chap]
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    source: str = "<embedded default>"

    def chap_tables(self) -> list[ChapConfig]:
        found = [t.chap for t in self.targets if t.chap is not None]
        return found + ([self.discovery_chap] if self.discovery_chap else [])


def parse_size(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size such as 1G or 512M, not {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _UNITS[(m.group(2) or "")[:1].upper()]
    else:
        raise ConfigError(f"{where}: expected a size such as 1G or 512M, not {value!r}")
    if size <= 0:
        raise ConfigError(f"{where}: size must be positive, not {value!r}")
    return size


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or "host" (port 3260)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected \"host:port\", not {value!r}")
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", value) or re.match(r"^([^:]+)(?::(\d+))?$", value)
    if not m:
        raise ConfigError(f"{where}: expected \"host:port\", not {value!r}")
    port = int(m.group(2)) if m.group(2) is not None else 3260
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is out of range 0..65535")
    return m.group(1), port


def default_serial(iqn: str, lun: int) -> str:
    return hashlib.sha256(f"{iqn}/{lun}".encode()).hexdigest()[:16]


class _Reader:
    """Typed access to a TOML table with the key path for error messages."""

    def __init__(self, table: dict, where: str, source: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where}: expected a table, not {table!r}")
        self.table = dict(table)
        self.where = where
        self.source = source

    def path(self, key: str) -> str:
        return f"{self.source}: {self.where}.{key}" if self.where else f"{self.source}: {key}"

    def get(self, key: str, kind: type | tuple, default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table.pop(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.path(key)}: expected {names}, not {value!r}")
        return value

    def done(self) -> None:
        if self.table:
            keys = ", ".join(sorted(self.table))
            raise ConfigError(f"{self.source}: {self.where or 'top level'}: unknown key(s): {keys}")


def _lun(table: dict, where: str, source: str, iqn: str, index: int) -> LunConfig:
    r = _Reader(table, where, source)
    lun = LunConfig()
    lun.lun = r.get("lun", int, index)
    if not 0 <= lun.lun < 16384:
        raise ConfigError(f"{r.path('lun')}: LUN {lun.lun} is out of range 0..16383")
    lun.store = r.get("store", str, "memory")
    if lun.store not in ("memory", "file"):
        raise ConfigError(f"{r.path('store')}: expected \"memory\" or \"file\", not {lun.store!r}")
    lun.path = r.get("path", str, None)
    size = r.get("size", (int, str), None)
    lun.size = parse_size(size, r.path("size")) if size is not None else None
    lun.block_size = r.get("block_size", int, 512)
    if lun.block_size not in (512, 4096):
        raise ConfigError(f"{r.path('block_size')}: expected 512 or 4096, not {lun.block_size}")
    if lun.size is not None and lun.size % lun.block_size:
        raise ConfigError(f"{r.path('size')}: {lun.size} bytes is not a whole number of "
                          f"{lun.block_size}-byte blocks")
    if lun.store == "file" and not lun.path:
        raise ConfigError(f"{r.path('path')}: a file store needs a path")
    if lun.store == "memory":
        if lun.path:
            raise ConfigError(f"{r.path('path')}: a memory store takes no path")
        lun.size = lun.size or DEFAULT_SIZE
    lun.vendor = _ascii(r, "vendor", 8, lun.vendor)  # SPC-4 INQUIRY field widths
    lun.product = _ascii(r, "product", 16, lun.product)
    lun.revision = _ascii(r, "revision", 4, lun.revision)
    lun.serial = r.get("serial", str, "") or default_serial(iqn, lun.lun)
    if not lun.serial.isascii() or len(lun.serial) > 64:
        raise ConfigError(f"{r.path('serial')}: at most 64 ASCII characters")
    lun.read_only = r.get("read_only", bool, False)
    lun.thin = r.get("thin", bool, False)
    lun.removable = r.get("removable", bool, False)
    physical = r.get("physical_block_size", int, None)
    if physical is not None:
        ratio = physical // lun.block_size if physical >= lun.block_size else 0
        if isinstance(physical, bool) or physical % lun.block_size or ratio < 1 \
                or ratio & (ratio - 1) or ratio > 1 << 15:
            raise ConfigError(f"{r.path('physical_block_size')}: {physical} is not a "
                              f"power-of-two multiple of the {lun.block_size}-byte logical "
                              f"block (at most 2^15 of them)")
        lun.physical_block_size = physical
    lun.sanitize_mb_s = _number(r, "sanitize_mb_s", 0.0, 0.0)
    threads = r.get("io_threads", int, None)
    if threads is not None:
        if isinstance(threads, bool) or not 0 <= threads <= MAX_IO_THREADS:
            raise ConfigError(f"{r.path('io_threads')}: expected 0 to {MAX_IO_THREADS} worker "
                              f"threads, not {threads!r}")
        lun.io_threads = threads
    sched = r.get("scheduler", dict, None)
    if sched is not None:
        lun.scheduler = _scheduler(sched, f"{where}.scheduler", source)
    r.done()
    return lun


def _ascii(r: _Reader, key: str, limit: int, default: str) -> str:
    value = r.get(key, str, default)
    if len(value) > limit or not value.isascii() or not value.isprintable():
        raise ConfigError(f"{r.path(key)}: at most {limit} printable ASCII characters, "
                          f"not {value!r}")
    return value


def _at_least(r: _Reader, key: str, minimum: int, default: int) -> int:
    value = r.get(key, int, default)
    if value < minimum:
        raise ConfigError(f"{r.path(key)}: expected an integer of at least {minimum}, "
                          f"not {value}")
    return value


def _number(r: _Reader, key: str, default: float, minimum: float, *,
            strict: bool = False) -> float:
    value = r.get(key, (int, float), default)
    if isinstance(value, bool) or value < minimum or (strict and value == minimum):
        bound = f"greater than {minimum}" if strict else f"at least {minimum}"
        raise ConfigError(f"{r.path(key)}: expected a number {bound}, not {value!r}")
    return float(value)


def _limits(table: dict, source: str) -> LimitsConfig:
    r = _Reader(table, "limits", source)
    lim = LimitsConfig()
    lim.login_timeout = _number(r, "login_timeout", lim.login_timeout, 0, strict=True)
    lim.max_connections = _at_least(r, "max_connections", 1, lim.max_connections)
    lim.max_connections_per_address = _at_least(r, "max_connections_per_address", 1,
                                                min(lim.max_connections_per_address,
                                                    lim.max_connections))
    if lim.max_connections_per_address > lim.max_connections:
        raise ConfigError(f"{r.path('max_connections_per_address')}: "
                          f"{lim.max_connections_per_address} is more than max_connections "
                          f"({lim.max_connections})")
    lim.max_sessions = _at_least(r, "max_sessions", 1, lim.max_sessions)
    if "max_buffered_bytes" in r.table:
        where = r.path("max_buffered_bytes")
        lim.max_buffered_bytes = parse_size(r.table.pop("max_buffered_bytes"), where)
        if lim.max_buffered_bytes < MIN_BUFFERED_BYTES:
            raise ConfigError(f"{where}: expected at least {MIN_BUFFERED_BYTES} bytes (one "
                              f"command of the largest MAXIMUM TRANSFER LENGTH), not "
                              f"{lim.max_buffered_bytes}")
    r.done()
    return lim


def _scheduler(table: dict, where: str, source: str) -> SchedulerConfig:
    r = _Reader(table, where, source)
    s = SchedulerConfig()
    s.elevator = r.get("elevator", str, s.elevator)
    if s.elevator not in ("fifo", "disksort"):
        raise ConfigError(f"{r.path('elevator')}: expected \"fifo\" or \"disksort\", "
                          f"not {s.elevator!r}")
    s.dispatch_depth = _at_least(r, "dispatch_depth", 1, s.dispatch_depth)
    s.queue_depth = _at_least(r, "queue_depth", 1, s.queue_depth)
    s.max_passes = _at_least(r, "max_passes", 0, s.max_passes)
    s.cylinder_blocks = _at_least(r, "cylinder_blocks", 0, s.cylinder_blocks)
    s.deadline_ms = _number(r, "deadline_ms", s.deadline_ms, 0)
    disk = r.get("disk", dict, None)
    if disk is not None:
        d = _Reader(disk, f"{where}.disk", source)
        m = DiskModelConfig()
        m.rpm = d.get("rpm", int, m.rpm)
        if m.rpm < 1:
            raise ConfigError(f"{d.path('rpm')}: expected a positive integer, not {m.rpm}")
        m.track_to_track_ms = _number(d, "track_to_track_ms", m.track_to_track_ms, 0,
                                      strict=True)
        m.average_seek_ms = _number(d, "average_seek_ms", m.average_seek_ms,
                                    m.track_to_track_ms)
        full = d.get("full_stroke_ms", (int, float), None)
        if full is not None:
            m.full_stroke_ms = _number(_Reader({"full_stroke_ms": full}, d.where, source),
                                       "full_stroke_ms", 0, m.average_seek_ms)
        m.media_mb_s = _number(d, "media_mb_s", m.media_mb_s, 0, strict=True)
        d.done()
        s.disk = m
    r.done()
    return s


def check_private(path: str | Path, what: str = "holds CHAP secrets") -> None:
    """A file holding secrets must not be readable by group or others (mode & 0o077)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot stat: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: {what} and is open to group or others (mode "
                          f"{stat.S_IMODE(mode):04o}); chmod 600 {path}")


def _chap_values(r: _Reader, where: str) -> ChapConfig:
    def name(key: str) -> str:
        value = r.get(key, str, "")
        if len(value) > MAX_CHAP_NAME or not value.isprintable():
            raise ConfigError(f"{r.path(key)}: at most {MAX_CHAP_NAME} printable characters")
        return value

    def secret(key: str) -> bytes:
        value = r.get(key, str, "").encode()
        if value and not MIN_CHAP_SECRET <= len(value) <= MAX_CHAP_SECRET:
            raise ConfigError(f"{r.path(key)}: a CHAP secret of {len(value)} bytes; "
                              f"{MIN_CHAP_SECRET} to {MAX_CHAP_SECRET} bytes are accepted "
                              "(RFC 7143 9.2.1: at least 96 bits without IPsec, SHOULD)")
        return value

    c = ChapConfig(name("user"), secret("secret"), name("mutual_user"),
                   secret("mutual_secret"), where=where)
    c.algorithms = _chap_algorithms(r)
    if not c.user or not c.secret:
        raise ConfigError(f"{r.path('user')}: CHAP needs both user and secret")
    if bool(c.mutual_user) != bool(c.mutual_secret):
        raise ConfigError(f"{r.path('mutual_user')}: mutual CHAP needs both mutual_user "
                          "and mutual_secret")
    if c.mutual_secret and c.mutual_secret == c.secret:
        raise ConfigError(f"{r.path('mutual_secret')}: the same secret in both directions "
                          "(RFC 7143 9.2.1: MUST NOT)")
    r.done()
    return c


CHAP_ALGORITHMS = {"MD5": 5, "SHA1": 6, "SHA-1": 6, "SHA256": 7, "SHA-256": 7,
                   "SHA3-256": 8}  # RFC 1994 / the CHAP_A numbers of target.iscsi.chap


def _chap_algorithms(r: _Reader) -> tuple[int, ...]:
    names = r.get("algorithms", list, None)
    if names is None:
        return ()
    out = []
    for i, name in enumerate(names):
        number = CHAP_ALGORITHMS.get(name.upper()) if isinstance(name, str) else None
        if number is None:
            raise ConfigError(f"{r.path(f'algorithms[{i}]')}: {name!r} is not a CHAP "
                              f"algorithm (MD5, SHA-1, SHA-256, SHA3-256)")
        if number not in out:
            out.append(number)
    if not out:
        raise ConfigError(f"{r.path('algorithms')}: an empty list accepts no login")
    return tuple(out)


def _chap(table: dict, where: str, source: str) -> ChapConfig:
    r = _Reader(table, where, source)
    path = r.get("secrets_file", str, None)
    if path is None:
        return _chap_values(r, where)
    r.done()
    if not os.path.isabs(path) and not source.startswith("<"):
        path = str(Path(source).parent / path)
    check_private(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{r.path('secrets_file')}: {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8
        raise ConfigError(f"{path}: not valid TOML: byte {exc.start} is not UTF-8") from None
    c = _chap_values(_Reader(data, "", path), path)
    c.secrets_file = path
    return c


def _target(table: dict, where: str, source: str) -> TargetConfig:
    r = _Reader(table, where, source)
    t = TargetConfig()
    t.iqn = r.get("iqn", str, None)
    if t.iqn is None:
        raise ConfigError(f"{r.path('iqn')}: every target needs an iqn")
    if not _IQN.match(t.iqn) or len(t.iqn.encode()) > 223:
        raise ConfigError(f"{r.path('iqn')}: {t.iqn!r} is not an iSCSI name (RFC 7143 4.2.7: "
                          "iqn.YYYY-MM.reversed.domain[:id], eui. or naa.)")
    t.alias = r.get("alias", str, "")
    t.tpgt = r.get("tpgt", int, 1)
    if not 1 <= t.tpgt <= 65535:
        raise ConfigError(f"{r.path('tpgt')}: expected 1..65535, not {t.tpgt}")
    initiators = r.get("initiators", list, None)
    if initiators is not None:
        for i, name in enumerate(initiators):
            if not isinstance(name, str) or not _IQN.match(name):
                raise ConfigError(f"{r.path(f'initiators[{i}]')}: {name!r} is not an iSCSI name")
    t.initiators = initiators
    chap = r.get("chap", dict, None)
    if chap is not None:
        t.chap = _chap(chap, f"{where}.chap", source)
    luns = r.get("lun", list, None)
    if not luns:
        raise ConfigError(f"{r.path('lun')}: a target needs at least one [[target.lun]]")
    t.luns = [_lun(lt, f"{where}.lun[{i}]", source, t.iqn, i) for i, lt in enumerate(luns)]
    seen: set[int] = set()
    for i, lun in enumerate(t.luns):
        if lun.lun in seen:
            raise ConfigError(f"{source}: {where}.lun[{i}].lun: LUN {lun.lun} is used twice")
        seen.add(lun.lun)
    r.done()
    return t


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (TOML 1.0, "Spec")
        raise ConfigError(f"{source}: not valid TOML: byte {exc.start} is not UTF-8") from None
    cfg = from_dict(data, source)
    if any(c.secrets_file is None for c in cfg.chap_tables()):
        check_private(source, "holds a CHAP secret")
    return cfg


def from_dict(data: dict, source: str = "<config>") -> Config:
    r = _Reader(data, "", source)
    cfg = Config(source=source)
    portals = r.get("portal", list, None)
    if portals is not None:
        cfg.listen = []
        for i, p in enumerate(portals):
            pr = _Reader(p, f"portal[{i}]", source)
            listen = pr.get("listen", str, None)
            if listen is None:
                raise ConfigError(f"{pr.path('listen')}: a portal needs listen = \"host:port\"")
            parse_listen(listen, pr.path("listen"))
            cfg.listen.append(listen)
            pr.done()
    cfg.nop_interval = float(r.get("nop_interval", (int, float), 0))
    cfg.busy_poll_us = float(r.get("busy_poll_us", (int, float), cfg.busy_poll_us))
    if not 0 <= cfg.busy_poll_us <= MAX_BUSY_POLL_US:
        raise ConfigError(f"{source}: busy_poll_us: expected 0 to {MAX_BUSY_POLL_US:g} "
                          f"microseconds, not {cfg.busy_poll_us:g}")
    limits = r.get("limits", dict, None)
    if limits is not None:
        cfg.limits = _limits(limits, source)
    faults = r.get("fault", list, None)
    if faults is not None:
        from target.faults import FaultError, parse_rule

        for i, table in enumerate(faults):
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: fault[{i}]: expected a table")
            try:
                cfg.faults.append(parse_rule(table))
            except FaultError as exc:
                raise ConfigError(f"{source}: fault[{i}]: {exc}") from None
    targets = r.get("target", list, None)
    if targets is not None:
        cfg.targets = [_target(t, f"target[{i}]", source) for i, t in enumerate(targets)]
        names = [t.iqn for t in cfg.targets]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: target: an iqn is used by two targets")
    discovery = r.get("discovery", dict, None)
    if discovery is not None:
        dr = _Reader(discovery, "discovery", source)
        chap = dr.get("chap", dict, None)
        if chap is not None:
            cfg.discovery_chap = _chap(chap, "discovery.chap", source)
        dr.done()
    r.done()
    tables = cfg.chap_tables()
    initiator_secrets = {c.secret for c in tables}
    for c in tables:
        if c.mutual_secret in initiator_secrets:
            raise ConfigError(f"{source}: {c.where}: mutual_secret is also a secret for "
                              "initiators (RFC 7143 9.2.1: MUST NOT)")
    return cfg
