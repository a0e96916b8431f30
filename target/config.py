"""The configuration: portals, targets, LUNs and ACLs, from TOML or the embedded default.

Rules:
- A config file is TOML (tomllib). Every error names the file, the key path (such as
  `target[0].lun[1].size`) and what is wrong; unknown keys are errors, not ignored.
- The embedded default is one portal on 127.0.0.1:3260 and one target,
  iqn.2026-11.local.scsi-target:default, with LUN 0 an in-memory 1 GiB disk of
  512-byte blocks.
- Sizes take K/M/G/T suffixes (powers of 1024) or plain bytes, and must be a whole
  number of blocks.

Example:

    busy_poll_us = 50           # (top-level keys come before the first table) after
                                # answering, a connection with nothing outstanding polls
                                # this long for the next PDU (target.shell.server; 0: off)
    nop_interval = 0            # seconds between NOP-In pings (0: none)

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
"""

from __future__ import annotations

import hashlib
import re
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
class TargetConfig:
    iqn: str = DEFAULT_IQN
    alias: str = ""
    tpgt: int = 1
    initiators: list[str] | None = None
    luns: list[LunConfig] = field(default_factory=lambda: [
        LunConfig(size=DEFAULT_SIZE, serial=default_serial(DEFAULT_IQN, 0))])


@dataclass
class Config:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    nop_interval: float = 0.0  # seconds between NOP-In pings; 0 disables them
    busy_poll_us: float = 50.0  # target.shell.server's busy polling budget; 0 disables it
    faults: list = field(default_factory=list)  # target.faults.FaultRule, from [[fault]]
    source: str = "<embedded default>"


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
    return from_dict(data, source)


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
    r.done()
    return cfg
