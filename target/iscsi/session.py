"""iSCSI sessions: negotiated parameters, the CmdSN window, the session registry.

Rules (RFC 7143):
- A session is identified by (InitiatorName, ISID, TargetName) and, once created, by
  the target-assigned TSIH (4.4, 11.12.4); a login with TSIH 0 and the identity of an
  existing session reinstates it: the old session is closed first (6.3.5).
- Commands are delivered to the SCSI layer in CmdSN order (3.2.2.1, 4.2.2.1): the
  window is [ExpCmdSN, MaxCmdSN]; a non-immediate command outside it is silently
  ignored; immediate commands (I bit) bypass ordering and do not advance ExpCmdSN.
  MaxCmdSN is ExpCmdSN + window - 1, the window fixed at login: both move together, by
  advance(), the one way ExpCmdSN changes after the session is made.
- One connection per session (MaxConnections=1), ErrorRecoveryLevel 0: any error that
  needs recovery closes the connection and with it the session (7.1.5, 7.2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from target.scsi.device import ScsiDevice


@dataclass
class SessionParams:
    """Operational parameters in force after login (RFC 7143 section 13)."""

    session_type: str = "Normal"  # or "Discovery"
    initiator_name: str = ""
    initiator_alias: str = ""
    target_name: str = ""
    isid: int = 0
    tsih: int = 0
    tpgt: int = 1
    cid: int = 0
    header_digest: bool = False  # CRC32C negotiated
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_recv_data_segment_length: int = 8192  # what the INITIATOR may receive (we send)
    target_max_recv_data_segment_length: int = 262144  # what WE receive (we declared)
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0


class SessionConnection(Protocol):
    """What a session needs of the connection carrying it (target.iscsi.connection's
    Connection is one): its peer's address, and the end a reinstatement gives it (6.3.5)."""

    peer: str  # host:port of the initiator, "" when unknown

    def close_for_reinstatement(self) -> None: ...


@dataclass
class Session:
    params: SessionParams
    device: ScsiDevice | None = None  # None for discovery sessions
    exp_cmdsn: int = 0  # moved only by advance() once the session exists
    window: int = 128  # MaxCmdSN = ExpCmdSN + window - 1
    connection: SessionConnection | None = None  # the connection carrying this session
    closed: bool = False
    # MaxCmdSN, kept with ExpCmdSN (a plain attribute: every response carries it).
    max_cmdsn: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_cmdsn = (self.exp_cmdsn + self.window - 1) & 0xFFFFFFFF

    def advance(self) -> None:
        """The command at ExpCmdSN was received (4.2.2.1): ExpCmdSN moves on by one, and
        MaxCmdSN with it (the window stays the same size)."""
        self.exp_cmdsn = (self.exp_cmdsn + 1) & 0xFFFFFFFF
        self.max_cmdsn = (self.max_cmdsn + 1) & 0xFFFFFFFF


@dataclass
class SessionRegistry:
    """All sessions of one server, for TSIH allocation and reinstatement."""

    sessions: dict[int, Session] = field(default_factory=dict)
    _tsih: itertools.count = field(default_factory=lambda: itertools.count(1))

    def allocate_tsih(self) -> int:
        while True:
            tsih = next(self._tsih) & 0xFFFF
            if tsih and tsih not in self.sessions:
                return tsih

    def find(self, initiator_name: str, isid: int, target_name: str) -> Session | None:
        for s in self.sessions.values():
            p = s.params
            if (p.initiator_name, p.isid, p.target_name) == (initiator_name, isid, target_name):
                return s
        return None

    def add(self, session: Session) -> None:
        self.sessions[session.params.tsih] = session

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.params.tsih) is session:
            del self.sessions[session.params.tsih]
