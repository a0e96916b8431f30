"""The polled dump path of dump(9E), as illumos sddump() walks it, in plain Python.

At panic a disk driver has no interrupts and no threads: it writes memory to its dump
device one command at a time and polls each to completion. This module follows illumos
usr/src/uts/common/io/scsi/targets/sd.c (illumos master) step by step over the project's
own synchronous initiator (target.shell.initiator), so a target (ours or tgtd) can be
checked against what a dumping sd needs, and its faults against what sd does with them.
The sd being modelled sits on a non-fibre HBA (parallel SCSI, SAS, SATA: e.g. a QEMU HBA
with scsi-block passing the guest's CDBs to iSCSI); `fibre=True` models sd over a fibre
or fabric HBA (illumos's own iSCSI initiator reports INTERCONNECT_FABRIC, iscsi.c
iscsi_i_commoncap), which skips the first reset and never uses 6-byte CDBs.

Steps of sddump(dev, addr, blkno, nblk) (blkno, nblk in DEV_BSIZE 512-byte units, relative
to the partition), as dump() does them:
1. Checks (EINVAL, before anything is sent): on a disk whose system block size is the
   target's (a fixed disk, sd_update_block_info), blkno and nblk*512 must be multiples of
   the target block size; the request must end inside the partition (cmlb_partinfo:
   `partition_start`, `partition_blocks` in system blocks; by default the whole LU from
   READ CAPACITY(10) at open).
2. First call only (SD_STATE_DUMPING), non-fibre: scsi_reset(RESET_ALL); a failed reset is
   EIO (and the next call tries again, Restore_state); then drv_usecwait(10000) and a
   polled REQUEST SENSE (sd_send_polled_RQS, allocation length MAX_SENSE_LENGTH 252) whose
   failure is ignored.
3. blkno becomes a disk block: /(target/512) on a fixed disk, + the partition start. On a
   removable disk with a target block size other than 512 (NOT_DEVBSIZE) a request not
   on target-block boundaries is read-modify-write: the covering target blocks are read
   polled (sddump_do_read_of_rmw, its own 12 attempts), the data laid in, all written.
4. The CDB (sd_setup_rw_pkt over sd_cdbtab, un_mincdb..un_maxcdb from
   sd_init_cdb_limits): the first group whose max LBA holds the LAST LBA of the whole
   request and whose max count holds its count: WRITE(6) (LBA <= 1FFFFFh, count <= 255;
   only from un_mincdb = GROUP0: a non-fibre, non-removable, non-ATAPI disk), WRITE(10),
   WRITE(12), WRITE(16) (up to GROUP5 only on removable media; capped by the HBA's
   max-cdb-length, `max_cdb_len`). The transfer is the dump(9E) call's whole buffer (the
   caller's dumpbuf, at most 8 MiB, dumpsubr.c dumpbuf_iosize), cut only into the HBA's
   partial-DMA windows (`dma_max` bytes; None as on iSCSI, where dma-max is INT32_MAX);
   the windows keep the CDB group chosen for the whole request (sd_setup_next_rw_pkt).
   sd's un_max_xfer_size and the Block Limits VPD play no part.
5. Each window: up to SD_NDUMP_RETRIES (12) attempts of sd_scsi_poll(); success is GOOD
   with no residual. After a failed attempt: a device gone (CMD_DEV_GONE: the session
   cannot be made again) ends the window; CHECK CONDITION of any kind (MEDIUM ERROR,
   ILLEGAL REQUEST, ...) is retried as it is (a polled REQUEST SENSE first when the
   response carried no sense, i.e. no ARQ); BUSY: scsi_reset(RESET_LUN) when
   `lun_reset_enabled` (un_f_lun_reset_enabled, off by default) else RESET_TARGET, and a
   REQUEST SENSE; anything else (a residual, RESERVATION CONFLICT, a timeout, a lost
   link): sd_reset_target (RESET_LUN if enabled, else RESET_TARGET, and RESET_ALL if that
   failed; none if the command was already aborted: TASK ABORTED). After the 7th failure
   (i == 6) that was not a CHECK CONDITION: RESET_ALL and a REQUEST SENSE.
6. sd_scsi_poll -> sd_ddi_scsi_poll, the inner loop, in 10 ms ticks over a budget of
   pkt_time = `timeout` (60 s, SCSI_POLL_TIMEOUT / SD_IO_TIME) seconds: GOOD ends it;
   TASK SET FULL again after 10 ms; BUSY and NOT READY 04h/01h again after 1 s (100
   ticks); UNIT ATTENTION again at once, counted as 1 s of the budget (this is where
   sd_ddi_scsi_poll differs from scsi_poll, which gives a UA up); anything else gives up
   at once. A command not answered within pkt_time is CMD_TIMEOUT: given up.
7. The result of a window is its last attempt's; sddump returns the LAST window's result,
   so an earlier failed window followed by a good one returns 0 (faithful to sd; counted
   in result.failed_windows).

Mapping to iSCSI (RFC 7143 11.5.1): RESET_LUN -> LOGICAL UNIT RESET (5); RESET_TARGET ->
TARGET WARM RESET (6), as illumos iscsi_handle_reset (iscsi_io.c) does; RESET_ALL (a bus
reset: every target on the bus, all initiators' tasks and reservations) -> TARGET WARM
RESET, the nearest: it resets every LU of the target for every nexus but, unlike TARGET
COLD RESET (7), keeps the connection a polled path cannot re-establish gracefully. (Note
illumos's own iSCSI HBA answers RESET_ALL with failure, iscsi_tran_reset; it is fibre
there, so sddump never asks it.) A reset is successful when the TMF answers Function
complete (0); any other answer, or none, is scsi_reset() returning 0. tgtd 1.0.85 answers
TARGET WARM RESET with 5 (not supported), so sddump on it ends with EIO before any WRITE;
`target_reset_tmf=TmfFunction.LOGICAL_UNIT_RESET` makes both levels an LU reset there.

Differences from sd that remain, one by one:
- No ENXIO checks (valid label, CD-ROM) and no START STOP UNIT for a powered-down LU
  (SD_DEVICE_IS_IN_LOW_POWER): the LU is taken as attached and active.
- No packet-allocation retries (sd_setup_rw_pkt failing: "no resources for dumping").
- TRAN_BUSY and "not dispatched" (10 ms retries) do not occur: the initiator never holds
  a command back (the CmdSN window is not modelled).
- A lost connection is CMD_TRAN_ERR (given up, then sd_reset_target); the session is
  logged in again by the next transport or reset (the HBA's recovery; libiscsi under
  QEMU does the same), and only a login that fails is CMD_DEV_GONE.
- A lost connection or timeout is not turned into STAT_* statistics; only TASK ABORTED
  status counts as STAT_ABORTED for sd_reset_target.
- Responses to other tasks (issued before the dump) are dropped and counted, never
  completed: at panic nothing waits for them.
- The 10 ms and 1 s delays are real sleeps (time.sleep), not drv_usecwait spins.
Results are 0, errno.EIO or errno.EINVAL; the path never raises for a SCSI or transport
failure; self.result (DumpResult) tells what happened.
"""

from __future__ import annotations

import errno
import struct
import time
from dataclasses import dataclass, field

from target.iscsi import pdu
from target.iscsi.pdu import Op, TmfFunction
from target.scsi.sense import sense_key_asc
from target.scsi.task import Status, encode_lun
from target.shell.initiator import Initiator, InitiatorError

RETRIES = 12                      # SD_NDUMP_RETRIES
POLL_TIMEOUT_S = 60.0             # SCSI_POLL_TIMEOUT (scsi_pkt.h), SD_IO_TIME (sddef.h)
CSEC = 0.01                       # sd_ddi_scsi_poll's tick: 10 ms
SEC_TO_CSEC = 100
DEV_BSIZE = 512
RESET_DELAY_S = 0.01              # drv_usecwait(10000) after the first reset
MAX_SENSE_LENGTH = 252
REQUEST_SENSE = 0x03
UNIT_ATTENTION, NOT_READY = 0x6, 0x2

# sd_cdbtab: (CDB length, group code, max LBA, max count); the opcode is the group's
# base | SCMD_READ (08h) or SCMD_WRITE (0Ah).
GROUP0, GROUP1, GROUP5, GROUP4 = range(4)        # SD_CDB_GROUP0.. (sddef.h)
CDBTAB = ((6, 0x00, 0x1FFFFF, 0xFF),
          (10, 0x20, 0xFFFFFFFF, 0xFFFF),
          (12, 0xA0, 0xFFFFFFFF, 0xFFFFFFFF),
          (16, 0x80, (1 << 64) - 1, 0xFFFFFFFF))
SCMD_READ, SCMD_WRITE = 0x08, 0x0A
RESET_LUN, RESET_TARGET, RESET_ALL = "RESET_LUN", "RESET_TARGET", "RESET_ALL"
_TMF = {RESET_LUN: TmfFunction.LOGICAL_UNIT_RESET, RESET_TARGET: TmfFunction.TARGET_WARM_RESET,
        RESET_ALL: TmfFunction.TARGET_WARM_RESET}

# pkt_reason (scsi_pkt.h)
CMD_CMPLT, CMD_INCOMPLETE, CMD_TRAN_ERR, CMD_TIMEOUT, CMD_DEV_GONE = (
    "CMD_CMPLT", "CMD_INCOMPLETE", "CMD_TRAN_ERR", "CMD_TIMEOUT", "CMD_DEV_GONE")


@dataclass
class Sense:
    key: int
    asc: int
    ascq: int

    @classmethod
    def decode(cls, sense: bytes) -> Sense | None:
        """Fixed or descriptor sense data (SPC-4 4.5); None when there is none."""
        if len(sense) < 3:
            return None
        return cls(*sense_key_asc(sense))

    def __str__(self) -> str:
        return f"{self.key:X}/{self.asc:02X}/{self.ascq:02X}"


@dataclass
class Pkt:
    """What a scsi_pkt holds after one transport: pkt_reason, status, ARQ sense, resid."""
    reason: str = CMD_INCOMPLETE
    status: int | None = None
    sense: Sense | None = None
    resid: int = 0
    data: bytes = b""


@dataclass
class DumpResult:
    error: int = 0                # 0, errno.EIO or errno.EINVAL
    sense: Sense | None = None    # the last failure's sense, decoded
    status: int | None = None     # the last failure's SCSI status (None: transport)
    reason: str = ""
    commands: int = 0             # WRITE windows that succeeded
    attempts: int = 0             # sd_scsi_poll() calls for WRITEs (sddump's outer loop)
    sent: int = 0                 # WRITE CDBs sent (the inner loop's transports)
    retries: int = 0              # inner re-sends: BUSY, TASK SET FULL, UA, becoming ready
    rmw_reads: int = 0            # READs of read-modify-write that succeeded
    resets: list[tuple[str, bool]] = field(default_factory=list)  # (level, succeeded)
    request_senses: list[Sense | None] = field(default_factory=list)
    opcodes: list[int] = field(default_factory=list)  # data CDBs' opcodes, as sent
    failed_windows: int = 0       # windows that failed although a later one succeeded
    reconnects: int = 0
    dropped: list[int] = field(default_factory=list)  # ITTs of other tasks' completions


def cdb_limits(*, fibre: bool = False, removable: bool = False,
               max_cdb_len: int = 16) -> tuple[int, int]:
    """(un_mincdb, un_maxcdb) as sd_init_cdb_limits sets them."""
    mincdb = GROUP1 if fibre or removable else GROUP0
    if max_cdb_len < 10:
        hba = GROUP0
    elif max_cdb_len < 12:
        hba = GROUP1
    elif max_cdb_len < 16:
        hba = GROUP5
    else:
        hba = GROUP4
    return mincdb, GROUP5 if removable else min(hba, GROUP4)


def cdb_group(lba: int, blocks: int, mincdb: int = GROUP0, maxcdb: int = GROUP4) -> int:
    """sd_setup_rw_pkt's choice: the first group holding the last LBA and the count."""
    if blocks <= 0:
        raise ValueError(f"a dump transfer needs at least one block, not {blocks}")
    for group in range(mincdb, maxcdb + 1):
        _, _, max_lba, max_len = CDBTAB[group]
        if lba + blocks - 1 <= max_lba and blocks <= max_len:
            return group
    raise ValueError(f"no CDB in groups {mincdb}..{maxcdb} addresses {blocks} blocks at "
                     f"{lba} (SD_PKT_ALLOC_FAILURE_CDB_TOO_SMALL)")


def write_cdb(lba: int, blocks: int, *, group: int | None = None, read: bool = False,
              mincdb: int = GROUP0, maxcdb: int = GROUP4) -> bytes:
    """The READ/WRITE CDB sd builds (FORMG0/1/5/4ADDR, ...COUNT; SBC-4 5.x), in `group` or
    in the group sd_setup_rw_pkt chooses."""
    if group is None:
        group = cdb_group(lba, blocks, mincdb, maxcdb)
    length, base, _, _ = CDBTAB[group]
    op = base | (SCMD_READ if read else SCMD_WRITE)
    if group == GROUP0:
        return struct.pack(">BBHB", op, (lba >> 16) & 0x1F, lba & 0xFFFF, blocks & 0xFF) \
            + b"\0"
    if group == GROUP1:
        return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)
    if group == GROUP5:
        return struct.pack(">BBIIBB", op, 0, lba, blocks, 0, 0)
    return struct.pack(">BBQIBB", op, 0, lba, blocks, 0, 0)


class _Lost(Exception):
    """The connection is gone."""


class _Timeout(Exception):
    """No response within pkt_time."""


class PolledDumper:
    """The dump path of one LU over one iSCSI session, as sd keeps it at panic."""

    def __init__(self, host: str, port: int, target: str, lun: int = 0, *,
                 block_size: int = 512,
                 initiator_name: str = "iqn.2026-11.local.scsi-target:dump",
                 timeout: float = POLL_TIMEOUT_S, partition_start: int = 0,
                 partition_blocks: int | None = None, removable: bool = False,
                 fibre: bool = False, lun_reset_enabled: bool = False,
                 dma_max: int | None = None, max_cdb_len: int = 16,
                 target_reset_tmf: int = TmfFunction.TARGET_WARM_RESET) -> None:
        self.host, self.port, self.target, self.lun = host, port, target, lun
        self.block_size = block_size          # un_tgt_blocksize
        # un_sys_blocksize: the target's on fixed media, DEV_BSIZE on removable.
        self.sys_block_size = DEV_BSIZE if removable else block_size
        self.initiator_name = initiator_name
        self.timeout = timeout                # pkt_time
        self.partition_start = partition_start
        self.partition_blocks = partition_blocks
        self.removable, self.fibre = removable, fibre
        self.lun_reset_enabled = lun_reset_enabled
        self.dma_max = dma_max
        self.target_reset_tmf = target_reset_tmf   # the TMF of RESET_TARGET and RESET_ALL
        self.mincdb, self.maxcdb = cdb_limits(fibre=fibre, removable=removable,
                                              max_cdb_len=max_cdb_len)
        self.ini: Initiator | None = None
        self.dumping = False                  # un_state == SD_STATE_DUMPING
        self.result = DumpResult()

    # --- the session (the HBA's side) ---------------------------------------------------

    def open(self) -> PolledDumper:
        self._login()
        if self.partition_blocks is None:
            self.partition_blocks = self._capacity() * self.block_size \
                // self.sys_block_size - self.partition_start
        return self

    def _login(self) -> None:
        self.ini = Initiator(self.host, self.port, self.target,
                             initiator_name=self.initiator_name, timeout=self.timeout)
        try:
            self.ini.connect()
            self.ini.login()
        except BaseException:
            self.close()
            raise

    def _capacity(self) -> int:
        """READ CAPACITY(10) at attach (sd_send_scsi_READ_CAPACITY), a UA taken first."""
        assert self.ini is not None
        for _ in range(3):
            r = self.ini.command(bytes([0x25]) + bytes(9), lun=self.lun, read=8)
            if r.status == Status.GOOD and len(r.data) >= 8:
                last, bs = struct.unpack(">II", r.data[:8])
                if bs != self.block_size:
                    raise ValueError(f"the LU has {bs}-byte blocks, not {self.block_size}")
                return last + 1
        raise InitiatorError(f"READ CAPACITY(10) failed with status {r.status:#x}")

    def close(self) -> None:
        if self.ini is not None:
            try:
                self.ini.close()
            except OSError:
                pass
            self.ini = None

    def __enter__(self) -> PolledDumper:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self) -> Initiator:
        """The session, logged in again if the link went (the HBA's recovery); a login that
        fails is the device gone."""
        if self.ini is None:
            self.result.reconnects += 1
            try:
                self._login()
            except (OSError, InitiatorError) as exc:
                raise _Lost(f"device gone: {exc}") from None
        assert self.ini is not None
        return self.ini

    # --- the transport: one command, polled ----------------------------------------------

    def _recv(self, deadline: float):
        ini = self.ini
        assert ini is not None and ini.sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout
        ini.sock.settimeout(left)
        try:
            return ini.recv_pdu()
        except TimeoutError:
            raise _Timeout from None
        except (OSError, InitiatorError) as exc:
            self.close()
            raise _Lost(str(exc) or type(exc).__name__) from None

    def _other(self, bhs) -> None:
        ini = self.ini
        if bhs.opcode == Op.NOP_IN and bhs.itt == pdu.RESERVED_TAG:
            ini.nop_reply(bhs)
        elif bhs.opcode in (Op.SCSI_RESPONSE, Op.DATA_IN) and self.dumping:
            self.result.dropped.append(bhs.itt)  # completed while dumping: dropped

    def _transport(self, cdb: bytes, data: bytes | memoryview = b"", read: int = 0) -> Pkt:
        """scsi_transport() of one polled packet and its completion."""
        try:
            ini = self._session()
        except _Lost:
            return Pkt(CMD_DEV_GONE)
        itt = ini._next_itt()
        flags = pdu.F_FINAL | (pdu.F_READ if read else 0) | (pdu.F_WRITE if data else 0) | 1
        imm = bytes(data[:min(ini.first_burst, ini.max_send)]) if data and \
            ini.immediate_data else b""
        header = pdu.scsi_command(flags=flags, dsl=len(imm), lun=encode_lun(self.lun), itt=itt,
                                  edtl=read or len(data), cmdsn=ini.cmdsn,
                                  exp_statsn=ini.exp_stat_sn, cdb=cdb)
        ini.cmdsn = (ini.cmdsn + 1) & 0xFFFFFFFF
        deadline = time.monotonic() + self.timeout
        buf = bytearray(read)
        try:
            try:
                ini.send_pdu(header, imm)
            except OSError as exc:
                self.close()
                raise _Lost(str(exc)) from None
            while True:
                bhs, payload = self._recv(deadline)
                if bhs.itt != itt:
                    self._other(bhs)
                    continue
                op = bhs.opcode
                if op == Op.R2T:
                    try:
                        ini._answer_r2t(bhs, bytes(data))
                    except OSError as exc:
                        self.close()
                        raise _Lost(str(exc)) from None
                elif op == Op.DATA_IN:
                    off = bhs.buffer_offset
                    buf[off:off + len(payload)] = payload
                    if bhs.flags & pdu.F_STATUS:
                        return Pkt(CMD_CMPLT, bhs.b3, None, bhs.residual_count, bytes(buf))
                elif op == Op.SCSI_RESPONSE:
                    sense = b""
                    if len(payload) >= 2:  # sense after a 2-byte length (11.4.7)
                        n = struct.unpack_from(">H", payload)[0]
                        sense = bytes(payload[2:2 + n])
                    if bhs.b2:  # iSCSI response not "completed at target" (11.4.3)
                        return Pkt(CMD_TRAN_ERR)
                    return Pkt(CMD_CMPLT, bhs.b3, Sense.decode(sense), bhs.residual_count,
                               bytes(buf))
                elif op == Op.REJECT:
                    return Pkt(CMD_TRAN_ERR)
        except _Timeout:
            return Pkt(CMD_TIMEOUT)
        except _Lost:
            return Pkt(CMD_TRAN_ERR)

    def _ddi_scsi_poll(self, cdb: bytes, data: bytes | memoryview = b"", read: int = 0,
                       counted: bool = False) -> tuple[int, Pkt]:
        """sd_ddi_scsi_poll: (0 or -1, the packet as it ended)."""
        timeout = round(self.timeout * SEC_TO_CSEC)
        busy_count = 0
        pkt = Pkt()
        while busy_count < timeout:
            if counted:
                self.result.sent += 1
                self.result.opcodes.append(cdb[0])
            pkt = self._transport(cdb, data, read)
            s = pkt.sense
            if pkt.reason == CMD_CMPLT and pkt.status == Status.GOOD:
                return 0, pkt
            if pkt.reason == CMD_DEV_GONE:
                break
            if pkt.reason == CMD_CMPLT and pkt.status == Status.TASK_SET_FULL:
                poll_delay = 1 * CSEC
            elif pkt.reason == CMD_CMPLT and pkt.status == Status.BUSY:
                poll_delay = 100 * CSEC
                busy_count += SEC_TO_CSEC - 1
            elif pkt.status == Status.CHECK_CONDITION and s and s.key == UNIT_ATTENTION:
                busy_count += SEC_TO_CSEC - 1 + 1   # "pretend it took 1 sec", no delay
                if counted:
                    self.result.retries += 1
                continue
            elif pkt.status == Status.CHECK_CONDITION and s and s.key == NOT_READY and \
                    (s.asc, s.ascq) == (0x04, 0x01):
                poll_delay = 100 * CSEC
                busy_count += SEC_TO_CSEC - 1
            else:
                break   # BAD status, a timeout, a transport error: give up
            if counted:
                self.result.retries += 1
            time.sleep(poll_delay)
            busy_count += 1
        return -1, pkt

    def _scsi_poll(self, cdb: bytes, data: bytes | memoryview = b"",
                   read: int = 0) -> tuple[int, Pkt]:
        """sd_scsi_poll: the inner loop, then a REQUEST SENSE for a CHECK without ARQ."""
        rc, pkt = self._ddi_scsi_poll(cdb, data, read, counted=True)
        if rc and pkt.status == Status.CHECK_CONDITION and pkt.sense is None and \
                pkt.reason != CMD_DEV_GONE:
            self.request_sense()
        return rc, pkt

    def request_sense(self) -> Sense | None:
        """sd_send_polled_RQS: a polled REQUEST SENSE (SPC-4 6.39) through the inner loop;
        the sense it returned, None if it failed."""
        rc, pkt = self._ddi_scsi_poll(bytes([REQUEST_SENSE, 0, 0, 0, MAX_SENSE_LENGTH, 0]),
                                      read=MAX_SENSE_LENGTH)
        sense = Sense.decode(pkt.data) if rc == 0 else None
        self.result.request_senses.append(sense)
        return sense

    def scsi_reset(self, level: str) -> bool:
        """scsi_reset(): the level's TMF (see the header); True (1) if Function complete."""
        if level == RESET_LUN and not self.lun_reset_enabled:
            return False   # scsi_reset: no "lun-reset" capability
        ok = False
        try:
            ini = self._session()
            itt = ini._next_itt()
            function = _TMF[level] if level == RESET_LUN else self.target_reset_tmf
            ini.send_pdu(pdu.task_management_request(
                immediate=True, function=function, lun=encode_lun(self.lun), itt=itt,
                cmdsn=ini.cmdsn, exp_statsn=ini.exp_stat_sn))
            deadline = time.monotonic() + self.timeout
            while True:
                bhs, _ = self._recv(deadline)
                if bhs.opcode == Op.TASK_MGMT_RESPONSE and bhs.itt == itt:
                    ok = bhs.b2 == 0
                    break
                self._other(bhs)
        except OSError:
            self.close()
        except (_Lost, _Timeout):
            pass
        self.result.resets.append((level, ok))
        return ok

    def _reset_target(self, pkt: Pkt) -> None:
        """sd_reset_target (un_f_allow_bus_device_reset TRUE, its default)."""
        if pkt.status == Status.TASK_ABORTED:
            return          # STAT_ABORTED: the transport has reset already
        ok = self.lun_reset_enabled and self.scsi_reset(RESET_LUN)
        if not ok:
            ok = self.scsi_reset(RESET_TARGET)
        if not ok:
            self.scsi_reset(RESET_ALL)

    # --- dump(9E) -------------------------------------------------------------------------

    def start(self) -> int:
        """sddump's first call: RESET_ALL (non-fibre), 10 ms, a polled REQUEST SENSE."""
        if self.dumping:
            return 0
        if self.ini is None:
            try:
                self.open()
            except (OSError, InitiatorError) as exc:
                return self._fail(None, None, f"no session: {exc}")
        self.dumping = True
        if not self.fibre:
            if not self.scsi_reset(RESET_ALL):
                self.dumping = False   # Restore_state
                return self._fail(None, None, "scsi_reset(RESET_ALL) failed")
            time.sleep(RESET_DELAY_S)
            self.request_sense()       # its failure is only logged
        return 0

    def dump(self, data: bytes | memoryview, blkno: int, nblk: int) -> int:
        """sddump(dev, addr, blkno, nblk): nblk DEV_BSIZE blocks at partition-relative blkno;
        0, errno.EINVAL or errno.EIO (details in self.result)."""
        view = memoryview(data).cast("B")
        if view.nbytes != nblk * DEV_BSIZE:
            raise ValueError(f"{view.nbytes} bytes is not {nblk} blocks of {DEV_BSIZE}")
        if self.partition_blocks is None:
            try:
                self.open()
            except (OSError, InitiatorError) as exc:
                return self._fail(None, None, f"no session: {exc}")
        tgt, ratio = self.block_size, self.block_size // DEV_BSIZE
        not_devbsize = tgt != self.sys_block_size
        if not not_devbsize:
            if blkno & (ratio - 1) or (nblk * DEV_BSIZE) & (tgt - 1):
                return self._invalid(f"blkno {blkno} / {nblk} blocks not on {tgt}-byte "
                                     "target blocks")
            end = blkno // ratio + nblk // ratio
        else:
            end = blkno + nblk
        if end > self.partition_blocks:
            return self._invalid(f"{nblk} blocks at {blkno} end beyond the partition's "
                                 f"{self.partition_blocks}")
        err = self.start()
        if err:
            return err
        buf: bytes | memoryview = view
        if not_devbsize:
            blkno += self.partition_start
            offset, count = blkno * self.sys_block_size, nblk * self.sys_block_size
            tgt_blkno = offset // tgt
            if offset % tgt or count % tgt:
                tgt_nblk = (offset + count + tgt - 1) // tgt - tgt_blkno
                old = self._read_of_rmw(tgt_blkno, tgt_nblk)
                if old is None:
                    return self.result.error
                merged = bytearray(old)
                start = offset - tgt_blkno * tgt
                merged[start:start + count] = view
                buf = merged
            else:
                tgt_nblk = count // tgt
            blkno, nblk = tgt_blkno, tgt_nblk
        else:
            blkno = blkno // ratio + self.partition_start
            nblk //= ratio
        return self._write(memoryview(buf), blkno, nblk)

    def _windows(self, nblk: int) -> list[tuple[int, int]]:
        """Partial-DMA windows (first block, count) of a transfer of nblk target blocks."""
        if not self.dma_max:
            return [(0, nblk)]
        step = max(1, self.dma_max // self.block_size)
        return [(b, min(step, nblk - b)) for b in range(0, nblk, step)]

    def _write(self, view: memoryview, oblkno: int, nblk: int) -> int:
        group = cdb_group(oblkno, nblk, self.mincdb, self.maxcdb)
        bs = self.block_size
        err, last = errno.EIO, (None, None, "")
        for first, count in self._windows(nblk):
            if err == errno.EIO and first:
                self.result.failed_windows += 1
            cdb = write_cdb(oblkno + first, count, group=group)
            err, last = self._retry(cdb, view[first * bs:(first + count) * bs], 0, False)
            if not err:
                self.result.commands += 1
        if err:
            return self._fail(*last)
        return 0

    def _read_of_rmw(self, blkno: int, nblk: int) -> bytes | None:
        """sddump_do_read_of_rmw: the covering target blocks, read polled."""
        cdb = write_cdb(blkno, nblk, read=True, mincdb=self.mincdb, maxcdb=self.maxcdb)
        err, last = self._retry(cdb, b"", nblk * self.block_size, True)
        if err:
            self._fail(*last)
            return None
        self.result.rmw_reads += 1
        return self._rmw_data

    def _retry(self, cdb: bytes, data: bytes | memoryview, read: int,
               rmw: bool) -> tuple[int, tuple]:
        """sddump's (or sddump_do_read_of_rmw's) loop of SD_NDUMP_RETRIES attempts."""
        res = self.result
        last: tuple = (None, None, "")
        for i in range(RETRIES):
            res.attempts += not rmw
            rc, pkt = self._scsi_poll(cdb, data, read)
            if rc == 0 and pkt.resid == 0:
                self._rmw_data = pkt.data
                return 0, last
            last = (pkt.status, pkt.sense, f"{RETRIES} attempts failed, the last: "
                    f"{pkt.reason}, status {pkt.status}, residual {pkt.resid}")
            if pkt.reason == CMD_DEV_GONE:
                return errno.EIO, (None, None, "device gone: the session cannot be made")
            if pkt.status == Status.CHECK_CONDITION:
                if pkt.sense is None:
                    self.request_sense()
                continue
            if pkt.status == Status.BUSY:
                if not (self.lun_reset_enabled and self.scsi_reset(RESET_LUN)):
                    self.scsi_reset(RESET_TARGET)
                self.request_sense()
            else:
                self._reset_target(pkt)
            if (i > RETRIES // 2) if rmw else (i == RETRIES // 2):
                self.scsi_reset(RESET_ALL)
                self.request_sense()
        return errno.EIO, last

    _rmw_data: bytes = b""

    def _invalid(self, reason: str) -> int:
        self.result.error, self.result.reason = errno.EINVAL, reason
        return errno.EINVAL

    def _fail(self, status: int | None, sense: Sense | None, reason: str) -> int:
        res = self.result
        res.error = errno.EIO
        res.status = status
        res.sense = sense
        res.reason = reason
        return errno.EIO


def dump_image(dumper: PolledDumper, image: bytes | memoryview, start_lba: int,
               chunk_blocks: int = 128) -> int:
    """Write a whole image as dump(9E) calls of chunk_blocks DEV_BSIZE blocks each (the
    dump buffer's size), from partition-relative DEV_BSIZE block start_lba; 0 or errno."""
    view = memoryview(image).cast("B")
    if view.nbytes % DEV_BSIZE:
        raise ValueError(f"image of {view.nbytes} bytes is not whole {DEV_BSIZE}-byte blocks")
    nblocks = view.nbytes // DEV_BSIZE
    lba = 0
    while lba < nblocks:
        n = min(chunk_blocks, nblocks - lba)
        err = dumper.dump(view[lba * DEV_BSIZE:(lba + n) * DEV_BSIZE], start_lba + lba, n)
        if err:
            return err
        lba += n
    return 0
