"""A small synchronous iSCSI initiator (RFC 7143), for tools, tests and the dump path.

Rules:
- Blocking socket, one connection, one command at a time; no threads, no callbacks.
  Every receive has a timeout, so a silent target is reported, never waited on forever.
- Login goes straight to the operational stage with AuthMethod-free keys (6.3: the
  security stage may be skipped when the target requires no authentication), offering
  ImmediateData=Yes and InitialR2T=Yes; what the target answers is what is used.
- Write data goes as immediate data up to FirstBurstLength and MaxRecvDataSegmentLength
  of the target, then as Data-Out PDUs answering each R2T; read data is collected from
  Data-In PDUs at their buffer offsets; status comes from the Data-In with S or the SCSI
  Response, sense from its data segment (11.4.7).
- send_raw() writes any bytes, for tests that break the protocol on purpose.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from target.iscsi import pdu
from target.iscsi.pdu import Bhs, Op
from target.scsi.task import encode_lun

_STATUS_OPCODES = frozenset({Op.SCSI_RESPONSE, Op.NOP_IN, Op.TASK_MGMT_RESPONSE,
                             Op.LOGOUT_RESPONSE, Op.TEXT_RESPONSE, Op.REJECT, Op.LOGIN_RESPONSE})


class InitiatorError(Exception):
    pass


@dataclass
class Result:
    status: int
    data: bytes = b""
    sense: bytes = b""
    residual: int = 0
    overflow: bool = False
    underflow: bool = False


@dataclass
class Initiator:
    host: str
    port: int
    target_name: str = ""
    initiator_name: str = "iqn.2026-11.local.scsi-target:initiator"
    isid: int = 0x400000000001
    timeout: float = 10.0
    header_digest: bool = False
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sock: socket.socket | None = None
        self.cmdsn = 1
        self.exp_stat_sn = 0
        self.itt = 1
        self.tsih = 0
        self._hd = False
        self.max_send = 8192  # the target's MaxRecvDataSegmentLength
        self.first_burst = 65536
        self.immediate_data = True

    # --- connection --------------------------------------------------------------------

    def connect(self) -> Initiator:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Initiator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise InitiatorError("connection closed by the target")
            buf += chunk
        return bytes(buf)

    def send_pdu(self, header: bytes, data: bytes = b"") -> None:
        out = header + (pdu.digest(header) if self._hd else b"")
        if data:
            out += data + pdu.padding(len(data))
        self.send_raw(out)

    def recv_pdu(self) -> tuple[Bhs, bytes]:
        raw = self._recv_exact(pdu.BHS_LEN)
        bhs = Bhs(raw)
        if bhs.ahs_len:
            self._recv_exact(bhs.ahs_len)
        if self._hd:
            digest = self._recv_exact(4)
            if digest != pdu.digest(raw):
                raise InitiatorError("header digest mismatch from the target")
        data = self._recv_exact(bhs.dsl + pdu.pad_len(bhs.dsl))[: bhs.dsl] if bhs.dsl else b""
        carries_status = bhs.opcode in _STATUS_OPCODES or (
            bhs.opcode == Op.DATA_IN and bhs.flags & pdu.F_STATUS)
        if carries_status and (bhs.itt != pdu.RESERVED_TAG or bhs.opcode == Op.REJECT):
            self.exp_stat_sn = (bhs.w24 + 1) & 0xFFFFFFFF
        return bhs, data

    def _next_itt(self) -> int:
        itt = self.itt
        self.itt = (itt + 1) & 0x7FFFFFFF or 1
        return itt

    # --- login / logout ----------------------------------------------------------------

    def login(self, session_type: str = "Normal") -> dict[str, str]:
        """Operational-stage login straight to full feature phase; returns the target's keys."""
        if self.sock is None:
            self.connect()
        keys = {"InitiatorName": self.initiator_name, "SessionType": session_type,
                "HeaderDigest": "CRC32C" if self.header_digest else "None",
                "DataDigest": "None", "MaxRecvDataSegmentLength": "262144",
                "ImmediateData": "Yes", "InitialR2T": "Yes", "MaxBurstLength": "1048576",
                "FirstBurstLength": "262144", "DefaultTime2Wait": "0",
                "DefaultTime2Retain": "0", "ErrorRecoveryLevel": "0", **self.params}
        if session_type == "Normal":
            keys["TargetName"] = self.target_name
        text = "".join(f"{k}={v}\0" for k, v in keys.items()).encode()
        isid_tsih = self.isid.to_bytes(6, "big") + self.tsih.to_bytes(2, "big")
        itt = self._next_itt()
        flags = pdu.LOGIN_TRANSIT | (1 << 2) | 3  # T, CSG operational, NSG full feature
        self.send_pdu(pdu.pack(Op.LOGIN_REQUEST | pdu.IMMEDIATE, flags, 0, 0, len(text),
                               isid_tsih, itt, 0, self.cmdsn, self.exp_stat_sn), text)
        answer: dict[str, str] = {}
        while True:
            bhs, data = self.recv_pdu()
            if bhs.opcode != Op.LOGIN_RESPONSE:
                raise InitiatorError(f"expected a Login Response, got {bhs!r}")
            status = bhs.w36 >> 16
            if status:
                raise InitiatorError(f"login failed: status {status >> 8:02x}/{status & 0xFF:02x}")
            for pair in data.split(b"\0"):
                if b"=" in pair:
                    k, v = pair.decode().split("=", 1)
                    answer[k] = v
            if bhs.flags & pdu.LOGIN_TRANSIT and bhs.flags & 3 == 3:
                break
            self.send_pdu(pdu.pack(Op.LOGIN_REQUEST | pdu.IMMEDIATE, flags, 0, 0, 0, isid_tsih,
                                   itt, 0, self.cmdsn, self.exp_stat_sn))
        self.tsih = bhs.tsih
        self._hd = answer.get("HeaderDigest") == "CRC32C"
        self.max_send = int(answer.get("MaxRecvDataSegmentLength", "8192"))
        self.first_burst = int(answer.get("FirstBurstLength", "65536"))
        self.immediate_data = answer.get("ImmediateData", "Yes") == "Yes"
        return answer

    def logout(self) -> int:
        itt = self._next_itt()
        self.send_pdu(pdu.pack(Op.LOGOUT_REQUEST | pdu.IMMEDIATE, 0x80, 0, 0, 0, bytes(8), itt,
                               0, self.cmdsn, self.exp_stat_sn))
        bhs, _ = self.recv_pdu()
        return bhs.b2

    # --- commands ----------------------------------------------------------------------

    def command(self, cdb: bytes, *, lun: int = 0, read: int = 0, data: bytes = b"",
                attr: int = 1, immediate: bool = False) -> Result:
        """One SCSI command to completion: `read` bytes expected in, `data` sent out."""
        itt = self._next_itt()
        edtl = read if read else len(data)
        flags = pdu.F_FINAL | (pdu.F_READ if read else 0) | (pdu.F_WRITE if data else 0) | attr
        imm = b""
        if data and self.immediate_data:
            imm = data[: min(self.first_burst, self.max_send)]
        header = bytearray(pdu.pack(Op.SCSI_COMMAND | (pdu.IMMEDIATE if immediate else 0), flags,
                                    0, 0, len(imm), encode_lun(lun), itt, edtl, self.cmdsn,
                                    self.exp_stat_sn))
        header[32:32 + len(cdb)] = cdb[:16]
        if not immediate:
            self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        self.send_pdu(bytes(header), imm)
        buf = bytearray(read)
        received = 0
        while True:
            bhs, payload = self.recv_pdu()
            if bhs.itt != itt and bhs.opcode != Op.REJECT:
                if bhs.opcode == Op.NOP_IN and bhs.itt == pdu.RESERVED_TAG:
                    self.nop_reply(bhs)
                continue
            if bhs.opcode == Op.R2T:
                self._answer_r2t(bhs, data)
            elif bhs.opcode == Op.DATA_IN:
                off = bhs.buffer_offset
                buf[off:off + len(payload)] = payload
                received = max(received, off + len(payload))
                if bhs.flags & pdu.F_STATUS:
                    return Result(bhs.b3, bytes(buf[:received]), b"", bhs.w44,
                                  bool(bhs.flags & pdu.F_OVERFLOW),
                                  bool(bhs.flags & pdu.F_UNDERFLOW))
            elif bhs.opcode == Op.SCSI_RESPONSE:
                sense = b""
                if len(payload) >= 2:
                    n = struct.unpack_from(">H", payload)[0]
                    sense = payload[2:2 + n]
                return Result(bhs.b3, bytes(buf[:received]), sense, bhs.w44,
                              bool(bhs.flags & pdu.F_OVERFLOW), bool(bhs.flags & pdu.F_UNDERFLOW))
            elif bhs.opcode == Op.REJECT:
                raise InitiatorError(f"command rejected, reason {bhs.b2:#x}")
            else:
                raise InitiatorError(f"unexpected {bhs!r}")

    def _answer_r2t(self, r2t: Bhs, data: bytes) -> None:
        offset, end = r2t.w40, r2t.w40 + r2t.w44
        datasn = 0
        while offset < end:
            n = min(self.max_send, end - offset)
            final = pdu.F_FINAL if offset + n == end else 0
            self.send_pdu(pdu.pack(Op.DATA_OUT, final, 0, 0, n, r2t.lun, r2t.itt, r2t.w20, 0,
                                   self.exp_stat_sn, 0, datasn, offset, 0),
                          data[offset:offset + n])
            datasn += 1
            offset += n

    def nop_reply(self, nop_in: Bhs) -> None:
        self.send_pdu(pdu.pack(Op.NOP_OUT | pdu.IMMEDIATE, pdu.F_FINAL, 0, 0, 0, bytes(8),
                               pdu.RESERVED_TAG, nop_in.w20, self.cmdsn, self.exp_stat_sn))

    def nop(self, payload: bytes = b"") -> bytes:
        itt = self._next_itt()
        self.send_pdu(pdu.pack(Op.NOP_OUT | pdu.IMMEDIATE, pdu.F_FINAL, 0, 0, len(payload),
                               bytes(8), itt, pdu.RESERVED_TAG, self.cmdsn, self.exp_stat_sn),
                      payload)
        while True:
            bhs, data = self.recv_pdu()
            if bhs.opcode == Op.NOP_IN and bhs.itt == itt:
                return data

    def task_management(self, function: int, *, lun: int = 0, ref_itt: int = pdu.RESERVED_TAG,
                        ref_cmdsn: int = 0) -> int:
        itt = self._next_itt()
        self.send_pdu(pdu.pack(Op.TASK_MGMT_REQUEST | pdu.IMMEDIATE, 0x80 | function, 0, 0, 0,
                               encode_lun(lun), itt, ref_itt, self.cmdsn, self.exp_stat_sn,
                               ref_cmdsn))
        while True:
            bhs, _ = self.recv_pdu()
            if bhs.opcode == Op.TASK_MGMT_RESPONSE and bhs.itt == itt:
                return bhs.b2
