"""The login phase of one connection, sans-IO (RFC 7143 sections 6, 11.12, 11.13).

Rules:
- Stages (6.3, 11.12.3, LoginStage): CSG/NSG are 0 SecurityNegotiation, 1
  LoginOperationalNegotiation, 3 FullFeaturePhase. Each request leaves the login in a
  LoginOutcome: CONTINUE, COMPLETE (full feature phase) or FAILED (the connection
  closes). The first request may start in stage 0 or, when no authentication is
  required, directly in stage 1 (6.3.2). Every request must carry the
  stage the target is in; T=1 asks to move to NSG, which must be a later stage (2 is
  reserved); T and C together are an initiator error (11.12.2). The target answers with
  the request's CSG and moves only when the initiator asked to (T=1) and it agrees; the
  final response (T=1, NSG=3) carries the new TSIH and ends the login (11.13.4).
- Security stage: AuthMethod is negotiated as a list (12.1): the target answers the first
  method of the initiator's list it allows, CHAP when the session has CHAP credentials
  (a Normal session: its target's TargetEntry.chap; a Discovery session:
  Portal.discovery_chap), else None; no common method fails 02/01. With CHAP, the
  CHAP_* keys of each request go to chap.ChapTarget (12.1.3), whose answers join ours;
  while the exchange runs, a request with T=1 is answered T=0 (the target is not ready
  to move, 6.3); any CHAP failure ends the login 02/01 (11.13.5), logged with its rule
  and no secret. Leaving the security stage unauthenticated when authentication is
  required fails 02/01.
- Text spanning PDUs (6.2, 11.12.2): a request with C=1 is answered with an empty
  response and its text kept until the request with C=0; our answer, when longer than
  8192 bytes (the login-phase MaxRecvDataSegmentLength, 13.12), goes out in pieces with
  C=1, T=0, each after an empty request from the initiator; the stage moves only with the
  last piece, when the request it answers has T=1.
- First request (6.3.1, 11.12): Version-min above 0 fails 02/05; InitiatorName is
  required (02/07); SessionType is Normal (default) or Discovery, else 02/09; a Normal
  session needs TargetName (02/07), a known target (02/03), allowed by its ACL (02/02).
  A TSIH other than 0 names an existing session: unknown, 02/0A; with another CID, 02/06
  (MaxConnections=1); with the same CID the old connection is replaced (reinstatement
  with the same TSIH). ISID, TSIH and CID must not change during the login (02/00).
- Negotiation errors (keys.py) end the login: a duplicate or misplaced key 02/00, a
  malformed text 02/00, SendTargets during login 02/0B. Responses with Status-Class not 0
  have T=0 and no data; the connection sends them and closes (11.13.5).
- Sequence numbers (11.12.7, 11.13.3): the first response's StatSN is the initiator's
  ExpStatSN of the first request, each later response carries the next one, and
  `stat_sn` is the StatSN full feature phase starts with. Login requests are immediate:
  ExpCmdSN is the request's CmdSN, MaxCmdSN = ExpCmdSN + window - 1.
- Completion: a session of the same InitiatorName + ISID + TargetName is reinstated
  (6.3.5): its connection's close_for_reinstatement() is called (session.SessionConnection,
  when it has one) and it leaves the registry; the new Session gets a TSIH and enters the
  registry.
- Authentication is required when the portal says so (Portal.auth_required, a portal
  group's setting as LIO's tpg_attrib.authentication is) or the session has CHAP
  credentials: then a login that starts in stage 1, or leaves stage 0 unauthenticated,
  fails 02/01 (a login to a CHAP target offering only AuthMethod=None included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum

from target.iscsi import pdu
from target.iscsi.chap import CHAP_KEYS, ChapFailure, ChapTarget, Credentials
from target.iscsi.keys import (
    AUTHENTICATION_FAILURE,
    AUTHORIZATION_FAILURE,
    INITIATOR_ERROR,
    MISSING_PARAMETER,
    NOT_FOUND,
    OUT_OF_RESOURCES,
    SERVICE_UNAVAILABLE,
    SESSION_DOES_NOT_EXIST,
    SESSION_TYPE_NOT_SUPPORTED,
    TOO_MANY_CONNECTIONS,
    UNSUPPORTED_VERSION,
    Negotiation,
    NegotiationError,
    Stage,
    TextError,
    encode,
    parse,
)
from target.iscsi.pdu import F_CONTINUE, LOGIN_TRANSIT, Bhs, Op
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import Session

log = logging.getLogger(__name__)



class LoginStage(IntEnum):
    """CSG and NSG values (RFC 7143 11.12.3); 2 is reserved."""

    SECURITY_NEGOTIATION = 0
    LOGIN_OPERATIONAL_NEGOTIATION = 1
    FULL_FEATURE_PHASE = 3


class LoginOutcome(StrEnum):
    """What a Login Request left the login in (LoginStep.outcome)."""

    CONTINUE = "continue"  # more requests to come
    COMPLETE = "complete"  # the final response went out: full feature phase (11.13.4)
    FAILED = "failed"  # a response with Status-Class not 0: the connection closes (11.13.5)


SECURITY = LoginStage.SECURITY_NEGOTIATION
OPERATIONAL = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
FULL_FEATURE = LoginStage.FULL_FEATURE_PHASE
VERSION = 0x00  # the only iSCSI version (11.12.4)
LOGIN_MAX_DATA = 8192  # MaxRecvDataSegmentLength during login (13.12)
MAX_LOGIN_TEXT = 64 * 1024  # a request text spanning PDUs beyond this: out of resources

_STAGES = {SECURITY: Stage.SECURITY, OPERATIONAL: Stage.OPERATIONAL}


@dataclass
class LoginStep:
    """What one Login Request produced: responses to send, and what happens next."""

    pdus: list[bytes] = field(default_factory=list)
    outcome: LoginOutcome = LoginOutcome.CONTINUE
    session: Session | None = None  # when complete
    status: tuple[int, int] = (0, 0)  # Status-Class, Status-Detail of the last response
    message: str = ""


class Login:
    """The Login Requests of one connection, until full feature phase or failure."""

    def __init__(self, portal: Portal, local_address: str = "") -> None:
        self.portal = portal
        self.local_address = local_address
        self.negotiation = Negotiation(portal.offers)
        self.params = self.negotiation.params  # the SessionParams being negotiated
        self.stage: LoginStage | None = None  # the CSG the next request must carry
        self.stat_sn = 0  # the StatSN of the next response (after login: of FFP)
        self.exp_cmdsn = 0
        self.isid = 0
        self.tsih = 0
        self.cid = 0
        self.outcome = LoginOutcome.CONTINUE
        self.session: Session | None = None
        self.target: TargetEntry | None = None  # the target of a Normal session
        self.auth_method: str | None = None
        self.authenticated = False
        self.auth_required = portal.auth_required
        self.credentials: Credentials | None = None  # CHAP: this session's (after _identify)
        self.chap: ChapTarget | None = None  # the CHAP exchange, once AuthMethod=CHAP
        self._identified = False
        self._replace: Session | None = None  # TSIH != 0: the session this connection joins
        self._text_in = bytearray()
        self._pending: bytes | None = None  # our answer not yet sent (C=1 pieces)
        self._declared_mrdsl = False

    @property
    def max_cmdsn(self) -> int:
        return (self.exp_cmdsn + self.portal.cmd_window - 1) & 0xFFFFFFFF

    # --- entry point ---------------------------------------------------------------

    def receive(self, bhs: Bhs, data: bytes) -> LoginStep:
        """One Login Request in, its Login Response(s) out."""
        if self.outcome is not LoginOutcome.CONTINUE:
            return LoginStep([], LoginOutcome.FAILED, message="login already over")
        try:
            return self._receive(bhs, bytes(data))
        except NegotiationError as exc:
            return self._fail(bhs, exc.status, str(exc))
        except TextError as exc:
            return self._fail(bhs, INITIATOR_ERROR, f"malformed text: {exc}")

    def _receive(self, bhs: Bhs, data: bytes) -> LoginStep:
        if bhs.opcode != Op.LOGIN_REQUEST:
            raise NegotiationError(INITIATOR_ERROR, f"opcode {bhs.opcode:#x} during login")
        flags = bhs.flags
        transit = bool(flags & LOGIN_TRANSIT)
        cont = bool(flags & F_CONTINUE)
        csg = (flags >> 2) & 3
        nsg = flags & 3
        if self.stage is None:
            self.isid, self.tsih, self.cid = bhs.isid, bhs.tsih, bhs.cid
            self.exp_cmdsn = bhs.cmdsn
            self.stat_sn = bhs.exp_stat_sn
            if bhs.b3 > VERSION or bhs.b2 < bhs.b3:  # Version-min, Version-max
                raise NegotiationError(UNSUPPORTED_VERSION,
                                       f"versions {bhs.b3}..{bhs.b2} do not include 0")
            if csg not in (SECURITY, OPERATIONAL):
                raise NegotiationError(INITIATOR_ERROR, f"login starts in stage {csg}")
            if csg == OPERATIONAL and self.auth_required:
                raise NegotiationError(AUTHENTICATION_FAILURE,
                                       "authentication is required: start in stage 0")
            self.stage = LoginStage(csg)
        else:
            if (bhs.isid, bhs.tsih, bhs.cid) != (self.isid, self.tsih, self.cid):
                raise NegotiationError(INITIATOR_ERROR, "ISID, TSIH or CID changed in login")
            if csg != self.stage:
                raise NegotiationError(INITIATOR_ERROR,
                                       f"request in stage {csg}, target in {self.stage}")
        if transit and cont:
            raise NegotiationError(INITIATOR_ERROR, "T and C both set")
        if transit and (nsg == 2 or nsg <= csg):
            raise NegotiationError(INITIATOR_ERROR, f"transit from stage {csg} to {nsg}")

        if self._pending is not None:  # the initiator asks for the rest of our answer
            if data or cont:
                raise NegotiationError(INITIATOR_ERROR,
                                       "text sent while the target's answer continues")
            return self._emit(bhs, transit, nsg)
        if cont:
            self._text_in += data
            if len(self._text_in) > MAX_LOGIN_TEXT:
                raise NegotiationError(OUT_OF_RESOURCES, "login text too long")
            return LoginStep([self._response(bhs, csg << 2, b"")])
        text = bytes(self._text_in) + data
        self._text_in.clear()
        pairs = parse(text)
        names = [k for k, _ in pairs]
        if len(set(names)) != len(names):
            dup = next(k for k in names if names.count(k) > 1)
            raise NegotiationError(INITIATOR_ERROR, f"key {dup} sent twice")
        declarations: list[tuple[str, str]] = []
        if not self._identified:
            declarations = self._identify(pairs)
            self._require_chap()
        elif any(k == "SessionType" and v != self.params.session_type for k, v in pairs):
            raise NegotiationError(INITIATOR_ERROR, "SessionType changed during login")
        self._identified = True
        chap_keys: dict[str, str] = {}
        if csg == SECURITY:  # the CHAP keys are the exchange's; elsewhere an error (keys)
            chap_keys = {k: v for k, v in pairs if k in CHAP_KEYS}
            pairs = [(k, v) for k, v in pairs if k not in CHAP_KEYS]
        answers = self.negotiation.respond(pairs, _STAGES[csg], self.params.session_type)
        # The target's own spelling of its name; none in discovery sessions (13.4).
        self.params.target_name = self.target.name if self.target is not None else ""
        if csg == SECURITY:
            answers += self._authenticate(chap_keys)
        if csg == OPERATIONAL and not self._declared_mrdsl:
            self._declared_mrdsl = True
            declarations.append(self.negotiation.declare(
                "MaxRecvDataSegmentLength", self.portal.offers.max_recv_data_segment_length))
        self._pending = encode(answers + declarations)
        return self._emit(bhs, transit, nsg)

    # --- steps ---------------------------------------------------------------------

    def _identify(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The first text: who logs in to what (6.3.1, 13.4, 13.5, 13.21)."""
        values = dict(pairs)
        p = self.params
        initiator = values.get("InitiatorName", "")
        if not initiator:
            raise NegotiationError(MISSING_PARAMETER, "no InitiatorName")
        session_type = values.get("SessionType", "Normal")
        if session_type not in ("Normal", "Discovery") or (
                session_type == "Discovery" and not self.portal.discovery):
            raise NegotiationError(SESSION_TYPE_NOT_SUPPORTED, f"SessionType={session_type}")
        target_name = ""
        if session_type == "Normal":
            name = values.get("TargetName", "")
            if not name:
                raise NegotiationError(MISSING_PARAMETER, "no TargetName")
            entry = self.portal.find(name)
            if entry is None:
                raise NegotiationError(NOT_FOUND, f"no target {name}")
            if not entry.allows(initiator):
                raise NegotiationError(AUTHORIZATION_FAILURE,
                                       f"{initiator} may not log in to {name}")
            if entry.device is None:
                raise NegotiationError(SERVICE_UNAVAILABLE,
                                       f"{name} is served by a worker process and this "
                                       "login did not name it in its first PDU")
            self.target = entry
            self.credentials = entry.chap
            target_name = entry.name
            p.tpgt = entry.tpgt
        if self.tsih:
            old = self.portal.registry.sessions.get(self.tsih)
            if old is None or old.closed or (
                    old.params.initiator_name.lower(), old.params.isid,
                    old.params.target_name) != (initiator.lower(), self.isid, target_name):
                raise NegotiationError(SESSION_DOES_NOT_EXIST, f"no session TSIH {self.tsih}")
            if old.params.cid != self.cid:
                raise NegotiationError(TOO_MANY_CONNECTIONS, "MaxConnections is 1")
            self._replace = old
        if session_type == "Discovery":
            self.credentials = self.portal.discovery_chap
        p.initiator_name = initiator
        p.session_type = session_type
        p.target_name = target_name
        p.isid = self.isid
        p.cid = self.cid
        declared = []
        if self.target is not None:
            declared.append(("TargetPortalGroupTag", str(self.target.tpgt)))  # 13.9
            if self.target.alias:
                declared.append(("TargetAlias", self.target.alias))  # 13.6
        return declared

    def _require_chap(self) -> None:
        """A session with CHAP credentials must authenticate with CHAP (12.1, 6.3)."""
        if self.credentials is None:
            return
        self.auth_required = True
        self.negotiation.offers = replace(self.negotiation.offers, auth_methods=("CHAP",))
        if self.stage == OPERATIONAL:
            raise NegotiationError(AUTHENTICATION_FAILURE,
                                   "CHAP is required: the login must start in stage 0")

    def _authenticate(self, chap_keys: dict[str, str]) -> list[tuple[str, str]]:
        """The security stage (12): AuthMethod None or CHAP (12.1.3, chap.ChapTarget)."""
        if "AuthMethod" in self.negotiation.rejected:
            raise NegotiationError(AUTHENTICATION_FAILURE, "no acceptable AuthMethod")
        method = self.negotiation.results.get("AuthMethod")
        decided_now = False
        if method is not None and self.auth_method is None:
            self.auth_method = method
            decided_now = True
            if method == "None":
                self.authenticated = not self.auth_required
            elif method == "CHAP" and self.credentials is not None:
                self.chap = ChapTarget(self.credentials, self.portal.chap_identifiers)
        if self.chap is None:
            if chap_keys:
                raise NegotiationError(AUTHENTICATION_FAILURE,
                                       "CHAP keys without AuthMethod=CHAP")
            return []
        if decided_now and not chap_keys:
            return []  # CHAP_A comes in the next request
        try:
            answers = self.chap.step(chap_keys)
        except ChapFailure as exc:
            raise NegotiationError(AUTHENTICATION_FAILURE, f"CHAP: {exc}") from None
        if self.chap.done:
            self.authenticated = True
            log.info("CHAP: %s authenticated (CHAP_A=%d%s)", self.params.initiator_name,
                     self.chap.algorithm, ", mutual" if self.chap.mutual else "")
        return answers

    def _emit(self, bhs: Bhs, transit: bool, nsg: int) -> LoginStep:
        """Send the next piece of our answer; the last piece may move the stage."""
        pending = self._pending or b""
        csg = self.stage
        piece, rest = pending[:LOGIN_MAX_DATA], pending[LOGIN_MAX_DATA:]
        if rest:
            self._pending = rest
            return LoginStep([self._response(bhs, F_CONTINUE | csg << 2, piece)])
        self._pending = None
        if not transit or (csg == SECURITY and self.chap is not None and not self.chap.done):
            return LoginStep([self._response(bhs, csg << 2, piece)])  # not ready (6.3)
        if csg == SECURITY and self.auth_required and not self.authenticated:
            raise NegotiationError(AUTHENTICATION_FAILURE, "not authenticated")
        if nsg == FULL_FEATURE:
            return self._complete(bhs, piece)
        self.stage = LoginStage(nsg)
        return LoginStep([self._response(bhs, LOGIN_TRANSIT | csg << 2 | nsg, piece)])

    def _complete(self, bhs: Bhs, piece: bytes) -> LoginStep:
        """Final response: the session exists from here on (6.3.5, 11.13.4)."""
        portal = self.portal
        registry = portal.registry
        p = self.negotiation.finish()
        if not self._declared_mrdsl:  # never declared: the default holds (13.12)
            p.target_max_recv_data_segment_length = LOGIN_MAX_DATA
        old = self._replace or registry.find(p.initiator_name, p.isid, p.target_name)
        if old is not None:
            self._close(old)
        p.tsih = self._replace.params.tsih if self._replace else registry.allocate_tsih()
        device = self.target.device if self.target is not None else None
        session = Session(p, device, exp_cmdsn=self.exp_cmdsn, window=portal.cmd_window)
        registry.add(session)
        self.tsih = p.tsih
        flags = LOGIN_TRANSIT | self.stage << 2 | FULL_FEATURE
        response = self._response(bhs, flags, piece)
        self.stage = FULL_FEATURE
        self.outcome = LoginOutcome.COMPLETE
        self.session = session
        log.info("login complete: %s session %s -> %s, TSIH %d", p.session_type,
                 p.initiator_name, p.target_name or "-", p.tsih)
        return LoginStep([response], LoginOutcome.COMPLETE, session)

    def _close(self, old: Session) -> None:
        """Session reinstatement (6.3.5): the old session and its connection end."""
        if old.connection is not None:
            old.connection.close_for_reinstatement()
        old.closed = True
        self.portal.registry.remove(old)
        log.info("session TSIH %d of %s reinstated", old.params.tsih, old.params.initiator_name)

    # --- PDUs ----------------------------------------------------------------------

    def _response(self, bhs: Bhs, flags: int, data: bytes,
                  status: tuple[int, int] = (0, 0)) -> bytes:
        """A Login Response (11.13): BHS, data, padding; no digests during login."""
        stat_sn = self.stat_sn
        self.stat_sn = (stat_sn + 1) & 0xFFFFFFFF
        header = pdu.login_response(flags=flags, version_max=VERSION, version_active=VERSION,
                                    dsl=len(data), isid=self.isid, tsih=self.tsih,
                                    itt=bhs.itt, statsn=stat_sn, exp_cmdsn=self.exp_cmdsn,
                                    max_cmdsn=self.max_cmdsn, status_class=status[0],
                                    status_detail=status[1])
        return header + data + pdu.padding(len(data))

    def _fail(self, bhs: Bhs, status: tuple[int, int], message: str) -> LoginStep:
        log.warning("login failed %02x/%02x: %s", status[0], status[1], message)
        if self.stage is None:  # failed on the first PDU before its fields were taken
            self.isid, self.tsih, self.cid = bhs.isid, bhs.tsih, bhs.cid
            self.exp_cmdsn, self.stat_sn = bhs.cmdsn, bhs.exp_stat_sn
        csg = (bhs.flags >> 2) & 3
        self.outcome = LoginOutcome.FAILED
        self._pending = None
        return LoginStep([self._response(bhs, csg << 2, b"", status)], LoginOutcome.FAILED,
                         status=status, message=message)
