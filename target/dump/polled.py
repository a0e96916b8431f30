"""The polled dump path of dump(9E), as illumos sddump() walks it, in plain Python.

At panic a disk driver has no interrupts and no threads: it writes memory to its dump
device one command at a time and polls each to completion (scsi_poll). This module is a
reference of that path over the project's own initiator (target.iscsi.initiator):
synchronous, no callbacks, no threads, so a target (ours or tgtd) can be checked against
what a dumping driver needs, and its faults against what the driver does with them.

Rules (illumos usr/src/uts/common/io/scsi/targets/sd.c, sddump(); scsi_poll()):
- Before the first write the path resets the LU (LOGICAL UNIT RESET, as sddump's
  scsi_reset(RESET_LUN)) and sends a polled REQUEST SENSE, which takes the reset's unit
  attention so the first WRITE can succeed.
- dump(data, blkno, nblk) writes nblk blocks at blkno with the smallest CDB that fits:
  WRITE(10) for an LBA below 2^32 and at most 65535 blocks, WRITE(12) for an LBA below
  2^32 and more blocks, WRITE(16) beyond (sd_setup_rw_pkt's choice). A request longer than
  the target's maximum transfer (Block Limits VPD, or max_blocks) goes as several commands.
- Each command is polled: sent, then the connection read until its own response arrives
  or `timeout` passes. A response to any other task (a command issued before the dump
  began) is dropped and counted, never resubmitted: `dumping` is set.
- Success is GOOD status with zero residual only. Retried, at most RETRIES (12,
  SD_NDUMP_RETRIES) attempts per command: BUSY, TASK SET FULL, UNIT ATTENTION, NOT READY
  with "becoming ready" (04h/01h), a timeout, and a lost connection (logged in again);
  halfway through the attempts the LU is reset again, as sddump does. Anything else
  (MEDIUM ERROR, HARDWARE ERROR, ILLEGAL REQUEST, ...) ends the dump at once.
- The result is 0 or EIO (errno.EIO), with the decoded sense of the last failure and the
  attempts, retries and dropped completions counted; the path never raises for a SCSI or
  transport failure.
"""

from __future__ import annotations

import errno
import struct
import time
from dataclasses import dataclass, field

from target.iscsi import pdu
from target.iscsi.initiator import Initiator, InitiatorError
from target.iscsi.pdu import Op, TmfFunction
from target.scsi.sense import sense_key_asc
from target.scsi.task import Status, encode_lun

RETRIES = 12                      # SD_NDUMP_RETRIES
POLL_TIMEOUT_S = 10.0
WRITE10, WRITE12, WRITE16 = 0x2A, 0xAA, 0x8A
REQUEST_SENSE = 0x03
RETRY_STATUS = {Status.BUSY, Status.TASK_SET_FULL}
UNIT_ATTENTION, NOT_READY = 0x6, 0x2


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
class DumpResult:
    error: int = 0                # 0 or errno.EIO
    sense: Sense | None = None    # the last failure's sense, decoded
    status: int | None = None     # the last failure's SCSI status (None: transport)
    reason: str = ""
    commands: int = 0             # WRITE commands that succeeded
    attempts: int = 0             # WRITE commands sent, retries included
    retries: int = 0
    resets: int = 0
    reconnects: int = 0
    dropped: list[int] = field(default_factory=list)  # ITTs of other tasks' completions


def write_cdb(lba: int, blocks: int) -> bytes:
    """The smallest WRITE CDB that addresses lba and blocks (SBC-4 5.38-5.41)."""
    if blocks <= 0:
        raise ValueError(f"a dump write needs at least one block, not {blocks}")
    if lba < 1 << 32 and blocks <= 0xFFFF:
        return struct.pack(">BBIBHB", WRITE10, 0, lba, 0, blocks, 0)
    if lba < 1 << 32:
        return struct.pack(">BBIIBB", WRITE12, 0, lba, blocks, 0, 0)
    return struct.pack(">BBQIBB", WRITE16, 0, lba, blocks, 0, 0)


class _Lost(Exception):
    """The connection is gone (or the response did not come in time)."""


def _response(bhs, payload: bytes) -> tuple[int, bytes, int]:
    """(status, sense, residual) of a SCSI Response (RFC 7143 11.4; sense after a 2-byte
    length, 11.4.7)."""
    sense = b""
    if len(payload) >= 2:
        n = struct.unpack_from(">H", payload)[0]
        sense = bytes(payload[2:2 + n])
    return bhs.b3, sense, bhs.w44


class PolledDumper:
    """The dump path of one LU over one iSCSI session, as a driver keeps it at panic."""

    def __init__(self, host: str, port: int, target: str, lun: int = 0, *,
                 block_size: int = 512, max_blocks: int = 2048,
                 initiator_name: str = "iqn.2026-11.local.scsi-target:dump",
                 timeout: float = POLL_TIMEOUT_S) -> None:
        self.host, self.port, self.target, self.lun = host, port, target, lun
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.initiator_name = initiator_name
        self.timeout = timeout
        self.ini: Initiator | None = None
        self.dumping = False
        self.result = DumpResult()

    # --- the session --------------------------------------------------------------------

    def open(self) -> PolledDumper:
        self.ini = Initiator(self.host, self.port, self.target,
                             initiator_name=self.initiator_name, timeout=self.timeout)
        self.ini.connect()
        self.ini.login()
        return self

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

    def _reconnect(self) -> None:
        self.close()
        self.result.reconnects += 1
        self.open()

    # --- polled primitives ----------------------------------------------------------------

    def _poll(self, itt: int) -> tuple[int, bytes, int]:
        """Read until the response to itt arrives: (status, sense, residual)."""
        ini = self.ini
        assert ini is not None and ini.sock is not None
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Lost(f"no response within {self.timeout:g} s")
            ini.sock.settimeout(left)
            try:
                bhs, payload = ini.recv_pdu()
            except (OSError, InitiatorError, TimeoutError) as exc:
                raise _Lost(str(exc) or type(exc).__name__) from None
            op = bhs.opcode
            if op == Op.NOP_IN and bhs.itt == pdu.RESERVED_TAG:
                ini.nop_reply(bhs)
                continue
            if bhs.itt != itt:
                if op in (Op.SCSI_RESPONSE, Op.DATA_IN) and self.dumping:
                    self.result.dropped.append(bhs.itt)  # completed while dumping: dropped
                continue
            if op == Op.SCSI_RESPONSE:
                return _response(bhs, payload)
            if op == Op.DATA_IN and bhs.flags & pdu.F_STATUS:
                return bhs.b3, b"", bhs.w44
            if op == Op.TASK_MGMT_RESPONSE:
                return bhs.b2, b"", 0
            if op == Op.REJECT:
                raise _Lost(f"command rejected (reason {bhs.b2:#x})")
            if op == Op.R2T:
                raise _Lost("an R2T after all the data was sent")

    def _command(self, cdb: bytes, data: bytes | memoryview = b"",
                 read: int = 0) -> tuple[int, bytes, int]:
        ini = self.ini
        assert ini is not None
        itt = ini._next_itt()
        edtl = read or len(data)
        flags = pdu.F_FINAL | (pdu.F_READ if read else 0) | (pdu.F_WRITE if data else 0) | 1
        imm = bytes(data[:min(ini.first_burst, ini.max_send)]) if data and \
            ini.immediate_data else b""
        header = bytearray(pdu.pack(Op.SCSI_COMMAND, flags, 0, 0, len(imm),
                                    encode_lun(self.lun), itt, edtl, ini.cmdsn,
                                    ini.exp_stat_sn))
        header[32:32 + len(cdb)] = cdb
        ini.cmdsn = (ini.cmdsn + 1) & 0xFFFFFFFF
        try:
            ini.sock.settimeout(self.timeout)
            ini.send_pdu(bytes(header), imm)
            sent = len(imm)
            while sent < len(data):  # InitialR2T=Yes: the rest goes as R2Ts ask (11.8)
                bhs, payload = ini.recv_pdu()
                if bhs.opcode == Op.R2T and bhs.itt == itt:
                    ini._answer_r2t(bhs, bytes(data))
                    sent = bhs.w40 + bhs.w44
                elif bhs.itt == itt and bhs.opcode == Op.SCSI_RESPONSE:
                    return _response(bhs, payload)  # ended before all its data
                elif bhs.opcode == Op.NOP_IN and bhs.itt == pdu.RESERVED_TAG:
                    ini.nop_reply(bhs)
                elif bhs.opcode in (Op.SCSI_RESPONSE, Op.DATA_IN) and self.dumping:
                    self.result.dropped.append(bhs.itt)
        except (OSError, InitiatorError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from None
        return self._poll(itt)

    def reset_lun(self) -> None:
        ini = self.ini
        assert ini is not None
        itt = ini._next_itt()
        try:
            ini.send_pdu(pdu.pack(Op.TASK_MGMT_REQUEST | pdu.IMMEDIATE,
                                  0x80 | TmfFunction.LOGICAL_UNIT_RESET, 0, 0, 0,
                                  encode_lun(self.lun), itt, pdu.RESERVED_TAG, ini.cmdsn,
                                  ini.exp_stat_sn, 0))
        except OSError as exc:
            raise _Lost(str(exc)) from None
        self._poll(itt)
        self.result.resets += 1

    def request_sense(self) -> Sense | None:
        """A polled REQUEST SENSE (SPC-4 6.39): the pending sense, e.g. the reset's UA."""
        ini = self.ini
        assert ini is not None
        try:
            r = ini.command(bytes([REQUEST_SENSE, 0, 0, 0, 252, 0]), lun=self.lun, read=252)
        except (OSError, InitiatorError) as exc:
            raise _Lost(str(exc)) from None
        return Sense.decode(r.data) if r.status == Status.GOOD else None

    # --- dump(9E) -------------------------------------------------------------------------

    def start(self) -> None:
        """What sddump does on its first call: reset the LU, then a polled REQUEST SENSE."""
        if self.ini is None:
            self.open()
        self.reset_lun()
        self.request_sense()
        self.dumping = True

    def dump(self, data: bytes | memoryview, blkno: int, nblk: int) -> int:
        """Write nblk blocks of data at blkno; 0 or errno.EIO (details in self.result)."""
        view = memoryview(data).cast("B")
        if view.nbytes != nblk * self.block_size:
            raise ValueError(f"{view.nbytes} bytes is not {nblk} blocks of {self.block_size}")
        if not self.dumping:
            try:
                self.start()
            except _Lost as exc:
                return self._fail(None, None, f"reset before the dump failed: {exc}")
        done = 0
        while done < nblk:
            count = min(self.max_blocks, nblk - done)
            chunk = view[done * self.block_size:(done + count) * self.block_size]
            err = self._write(chunk, blkno + done, count)
            if err:
                return err
            done += count
        return 0

    def _write(self, chunk: memoryview, lba: int, count: int) -> int:
        res = self.result
        cdb = write_cdb(lba, count)
        last: tuple[int | None, Sense | None, str] = (None, None, "")
        for attempt in range(1, RETRIES + 1):
            if attempt == RETRIES // 2 + 1:
                try:
                    self.reset_lun()
                except _Lost:
                    pass
            res.attempts += 1
            try:
                if self.ini is None:
                    self._reconnect()
                status, sense_bytes, resid = self._command(cdb, chunk)
            except (_Lost, OSError, InitiatorError) as exc:
                last = (None, None, f"transport: {exc}")
                res.retries += 1
                try:
                    self._reconnect()
                except (OSError, InitiatorError) as again:
                    return self._fail(None, None, f"transport: {exc}; reconnect: {again}")
                continue
            sense = Sense.decode(sense_bytes)
            if status == Status.GOOD and resid == 0:
                res.commands += 1
                return 0
            if status == Status.GOOD:
                return self._fail(status, None, f"residual {resid} on a GOOD WRITE")
            if status in RETRY_STATUS or (status == Status.CHECK_CONDITION and sense and (
                    sense.key == UNIT_ATTENTION
                    or (sense.key == NOT_READY and (sense.asc, sense.ascq) == (0x04, 0x01)))):
                last = (status, sense, "retryable")
                res.retries += 1
                continue
            return self._fail(status, sense, "not retryable")
        status, sense, why = last
        return self._fail(status, sense, f"{RETRIES} attempts failed ({why})")

    def _fail(self, status: int | None, sense: Sense | None, reason: str) -> int:
        res = self.result
        res.error = errno.EIO
        res.status = status
        res.sense = sense
        res.reason = reason
        return errno.EIO


def dump_image(dumper: PolledDumper, image: bytes | memoryview, start_lba: int,
               chunk_blocks: int = 128) -> int:
    """Write a whole image as dump(9E) calls of chunk_blocks each (0 or EIO)."""
    view = memoryview(image).cast("B")
    bs = dumper.block_size
    if view.nbytes % bs:
        raise ValueError(f"image of {view.nbytes} bytes is not whole {bs}-byte blocks")
    nblocks = view.nbytes // bs
    lba = 0
    while lba < nblocks:
        n = min(chunk_blocks, nblocks - lba)
        err = dumper.dump(view[lba * bs:(lba + n) * bs], start_lba + lba, n)
        if err:
            return err
        lba += n
    return 0


