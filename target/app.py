"""Assembly: a Config becomes stores, logical units, SCSI devices and the iSCSI portal.

Rules:
- Every store is opened before anything listens, so a missing image or a bad size is
  reported (naming the LUN and the path) before a single initiator can connect.
- close() flushes and closes every store; it is safe to call twice.
- CHAP: a target's [target.chap] becomes its TargetEntry.chap, [discovery.chap] the
  portal's discovery_chap (target.iscsi.chap.Credentials): those sessions require CHAP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from target.backing.base import Store
from target.backing.memory import MemoryStore
from target.config import ChapConfig, Config, ConfigError, LunConfig, TargetConfig
from target.iscsi.chap import Credentials
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import SessionRegistry
from target.scsi.device import ScsiDevice
from target.scsi.disk import make_disk
from target.scsi.elevator import DiskModel
from target.scsi.task import Identity
from target.scsi.taskset import Queueing


@dataclass
class App:
    config: Config
    portal: Portal
    devices: list[ScsiDevice] = field(default_factory=list)
    _closed: bool = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for device in self.devices:
            device.close()


def open_store(lun: LunConfig, where: str) -> Store:
    if lun.store == "memory":
        return MemoryStore(lun.size or 0)
    from target.backing.file import FileStore

    try:
        return FileStore(lun.path, size=lun.size, create=lun.size is not None,
                         read_only=lun.read_only)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def queueing(lun: LunConfig, store: Store) -> Queueing:
    """How the LU's task set queues, as its [scheduler] table says (target.scsi.taskset);
    a rotational model spans the store's capacity."""
    s = lun.scheduler
    model = None
    if s.disk is not None:
        d = s.disk
        model = DiskModel(capacity_blocks=max(1, store.size // lun.block_size),
                          block_size=lun.block_size, rpm=d.rpm,
                          track_to_track_ms=d.track_to_track_ms,
                          average_seek_ms=d.average_seek_ms, full_stroke_ms=d.full_stroke_ms,
                          media_mb_s=d.media_mb_s)
    return Queueing(policy=s.elevator, depth=s.dispatch_depth, queue_limit=s.queue_depth,
                    max_passes=s.max_passes or None, deadline=(s.deadline_ms / 1000) or None,
                    blocks_per_cylinder=s.cylinder_blocks or None, model=model)


def build_device(t: TargetConfig, source: str) -> ScsiDevice:
    device = ScsiDevice(t.iqn)
    for lun in t.luns:
        where = f"{source}: target {t.iqn} LUN {lun.lun}"
        store = open_store(lun, where)
        identity = Identity(vendor=lun.vendor, product=lun.product, revision=lun.revision,
                            serial=lun.serial)
        try:
            lu = make_disk(lun.lun, store, block_size=lun.block_size, identity=identity,
                           read_only=lun.read_only, thin=lun.thin, removable=lun.removable,
                           physical_block_size=lun.physical_block_size,
                           queueing=queueing(lun, store), sanitize_rate=lun.sanitize_mb_s * 1e6,
                           io_threads=lun.io_threads)
        except ValueError as exc:
            store.close()
            raise ConfigError(f"{where}: {exc}") from None
        device.add(lu)
    return device


def credentials(c: ChapConfig | None) -> Credentials | None:
    """A [target.chap] / [discovery.chap] table as the login's CHAP credentials."""
    if c is None:
        return None
    if c.algorithms:
        return Credentials(c.user, c.secret, c.mutual_user, c.mutual_secret, c.algorithms)
    return Credentials(c.user, c.secret, c.mutual_user, c.mutual_secret)


def build(config: Config) -> App:
    devices: list[ScsiDevice] = []
    try:
        for t in config.targets:
            devices.append(build_device(t, config.source))
    except Exception:
        for d in devices:
            d.close()
        raise
    targets = {
        t.iqn: TargetEntry(t.iqn, d, alias=t.alias, tpgt=t.tpgt, initiators=t.initiators,
                           chap=credentials(t.chap))
        for t, d in zip(config.targets, devices, strict=True)
    }
    portal = Portal(targets=targets, addresses=list(config.listen), registry=SessionRegistry(),
                    discovery_chap=credentials(config.discovery_chap))
    return App(config, portal, devices)
