"""What login and discovery need from the server: targets, their ACLs, addresses, offers.

Rules (RFC 7143):
- A target is known by its iSCSI name (4.2.7); names compare case-insensitively, as
  iSCSI names are normalized to lower case (4.2.7.1). Each target belongs to one target
  portal group (TargetPortalGroupTag, 13.9) and may restrict which InitiatorNames may log
  in to it (an ACL; a denied login ends 02/02, 11.13.5) and which it is reported to in
  SendTargets (appendix C).
- `addresses` are the host:port strings (IPv6 in brackets) SendTargets reports as
  TargetAddress (13.8); the server fills them with the addresses it listens on.
- The offers are our side of the negotiated keys (section 13), see keys.Offers.
- A target whose `device` is None is served by another process (a worker of
  target.shell.workers): this portal names it in SendTargets and routes logins to it;
  a login that reaches this process anyway ends 03/01 (service unavailable, 11.13.5).
- `discovery`: whether discovery sessions are allowed (02/09 otherwise, 11.13.5);
  `auth_required`: whether a login must authenticate in the security stage (02/01
  otherwise). Both are the portal group's, as LIO keeps them per TPG.
- CHAP (RFC 7143 12.1.3): a target with `chap` credentials requires CHAP of its Normal
  sessions, and `discovery_chap` of the Discovery sessions (as LIO's discovery_auth);
  `chap_identifiers` hands out the CHAP_I of every challenge this portal sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from target.iscsi.chap import Credentials, Identifiers
from target.iscsi.keys import Offers
from target.iscsi.session import SessionRegistry
from target.scsi.device import ScsiDevice


@dataclass
class TargetEntry:
    name: str
    device: ScsiDevice | None  # None: another process serves it (target.shell.workers)
    alias: str = ""
    tpgt: int = 1
    initiators: list[str] | None = None  # InitiatorNames allowed; None allows all
    chap: Credentials | None = None  # CHAP required with these credentials (12.1.3)

    def allows(self, initiator_name: str) -> bool:
        if self.initiators is None:
            return True
        wanted = initiator_name.lower()
        return any(i.lower() == wanted for i in self.initiators)


class Portal:
    """The targets one server offers and the parameters it negotiates."""

    def __init__(
        self,
        targets: dict[str, TargetEntry],
        addresses: list[str],
        registry: SessionRegistry,
        *,
        max_recv_data_segment_length: int = 262144,
        max_burst_length: int = 1048576,
        first_burst_length: int = 262144,
        max_outstanding_r2t: int = 16,
        default_time2wait: int = 2,
        default_time2retain: int = 20,
        initial_r2t: bool = False,
        immediate_data: bool = True,
        header_digests: tuple[str, ...] = ("None", "CRC32C"),
        data_digests: tuple[str, ...] = ("None", "CRC32C"),
        cmd_window: int = 128,
        discovery: bool = True,
        auth_required: bool = False,
        discovery_chap: Credentials | None = None,
    ) -> None:
        self.targets = targets
        self.addresses = addresses
        self.registry = registry
        self.cmd_window = cmd_window  # MaxCmdSN = ExpCmdSN + cmd_window - 1
        self.discovery = discovery  # discovery sessions allowed
        # Every login must authenticate in the security stage (RFC 7143 6.3, 12); CHAP
        # credentials (a target's, discovery_chap) require it of their sessions anyway.
        self.auth_required = auth_required
        self.discovery_chap = discovery_chap
        self.chap_identifiers = Identifiers()
        self.offers = Offers(
            max_recv_data_segment_length=max_recv_data_segment_length,
            max_burst_length=max_burst_length,
            first_burst_length=min(first_burst_length, max_burst_length),
            max_outstanding_r2t=max_outstanding_r2t,
            default_time2wait=default_time2wait,
            default_time2retain=default_time2retain,
            initial_r2t=initial_r2t,
            immediate_data=immediate_data,
            header_digests=tuple(header_digests),
            data_digests=tuple(data_digests),
        )

    @property
    def max_recv_data_segment_length(self) -> int:
        return self.offers.max_recv_data_segment_length

    def find(self, name: str) -> TargetEntry | None:
        entry = self.targets.get(name)
        if entry is None:
            wanted = name.lower()
            entry = next((t for n, t in self.targets.items() if n.lower() == wanted), None)
        return entry

    def visible_to(self, initiator_name: str) -> list[TargetEntry]:
        """The targets SendTargets=All reports to this initiator (ACL applied)."""
        return [t for t in self.targets.values() if t.allows(initiator_name)]
