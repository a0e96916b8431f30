"""iSCSI text keys: the key=value codec and the negotiation rules (RFC 7143 6.1, 6.2, 13).

Rules:
- Codec (6.1): a text data segment is a sequence of `key=value` pairs in UTF-8, each
  followed by one NUL, the last one included. Key names are at most 63 bytes; a pair
  with no `=`, an empty or over-long key name, bytes that are not UTF-8 or a last pair
  without its NUL is a protocol error (TextError). Values longer than 255 bytes (8192 for
  the CHAP keys of section 12.1.3) get the answer `Reject`. A key sent twice in one
  negotiation is a protocol error (6.2: "MUST be detected ... Login reject (initiator
  error)").
- Every key of sections 12 and 13 is a row of KEYS: how its result is found (6.2.2,
  6.2.3: declarative; numerical min / max; Boolean AND / OR; a list, where the answer is
  the first value of the originator's list that we support), its range, its use (IO
  initialize only, LO leading only, ALL, FFPO full feature phase only), scope (SW
  session-wide, CO connection-only), who may send it, the stages it may appear in and
  whether it is irrelevant in a discovery session.
  Our own value of a key is Offers.ours(name), and store() puts a result in its
  SessionParams field: both explicit mappings from key names to fields.
- Answers (6.2): a key we do not know, and every X- / X# extension key, is answered
  `NotUnderstood`; a value outside the range or of the wrong syntax is answered `Reject`
  and the key keeps its default; a key that has no meaning in a discovery session
  (13: "Irrelevant when: SessionType=Discovery") is answered `Irrelevant`. Declarative
  keys get no answer.
- Stages (6.3): the security keys (AuthMethod and the CHAP keys) belong to the security
  stage and are an initiator error anywhere else; SendTargets (FFPO) during login is
  02/0B "invalid during login"; keys the initiator may not send (target-only keys) are an
  initiator error. Operational keys offered in the security stage are negotiated there
  (6.3.1 does not forbid them, and answering is more useful than failing). In full
  feature phase only keys of use ALL (and FFPO) may be negotiated; IO and LO keys are
  answered `Reject` (13, 6.3).
- Obsolete marker keys (13.25 / appendix of RFC 7143): IFMarker and OFMarker are
  answered `No` (allowed), IFMarkInt and OFMarkInt `Reject`.
- We support one connection per session and ErrorRecoveryLevel 0 (min: any offer gives
  0), digests None and CRC32C, AuthMethod None and CHAP: the AuthMethod list a session
  allows is login.py's choice (CHAP where it has credentials), and the CHAP_* keys of the
  security stage go to chap.ChapTarget, not through respond() (their rows stay here for
  the stage rules and the 8192-byte value limit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, Flag, auto

from target.iscsi.session import SessionParams

MAX_KEY_LEN = 63
MAX_VALUE_LEN = 255
MAX_LARGE_VALUE_LEN = 8192
MAX_NUMBER = (1 << 64) - 1

REJECT = "Reject"
IRRELEVANT = "Irrelevant"
NOT_UNDERSTOOD = "NotUnderstood"

# Login status (11.13.5), as (class, detail)
INITIATOR_ERROR = (2, 0x00)
AUTHENTICATION_FAILURE = (2, 0x01)
AUTHORIZATION_FAILURE = (2, 0x02)
NOT_FOUND = (2, 0x03)
UNSUPPORTED_VERSION = (2, 0x05)
TOO_MANY_CONNECTIONS = (2, 0x06)
MISSING_PARAMETER = (2, 0x07)
SESSION_TYPE_NOT_SUPPORTED = (2, 0x09)
SESSION_DOES_NOT_EXIST = (2, 0x0A)
INVALID_DURING_LOGIN = (2, 0x0B)
TARGET_ERROR = (3, 0x00)
SERVICE_UNAVAILABLE = (3, 0x01)
OUT_OF_RESOURCES = (3, 0x02)


class TextError(Exception):
    """A malformed text data segment: a protocol error (6.1)."""


class NegotiationError(Exception):
    """The negotiation cannot go on: login ends with this status (11.13.5)."""

    def __init__(self, status: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.status = status


# --- codec ----------------------------------------------------------------------------

_KEY_NAME = re.compile(r"[A-Za-z0-9.\-+@_#]+\Z")


def parse(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a complete text data segment into (key, value) pairs (6.1).

    Empty strings between NULs (padding some initiators leave) are skipped.
    """
    raw = bytes(data)
    if not raw:
        return []
    if raw[-1] != 0:
        # Trailing NULs are tolerated above; a last pair with no NUL is not (6.1).
        raise TextError("the last key=value pair is not followed by a NUL")
    pairs = []
    for item in raw[:-1].split(b"\x00"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if not sep:
            raise TextError(f"no '=' in {item[:80]!r}")
        if not key or len(key) > MAX_KEY_LEN:
            raise TextError(f"key name of {len(key)} bytes")
        try:
            k = key.decode("utf-8")
            v = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextError(f"text is not UTF-8: {exc}") from None
        if not _KEY_NAME.match(k):
            raise TextError(f"bad key name {k!r}")
        pairs.append((k, v))
    return pairs


def encode(pairs: Iterable[tuple[str, str]]) -> bytes:
    """key=value\\0 ... in UTF-8 (6.1)."""
    return b"".join(f"{k}={v}".encode() + b"\x00" for k, v in pairs)


def split(data: bytes, size: int) -> list[bytes]:
    """Pieces of at most `size` bytes; a pair may span pieces (6.2, 11.10.2, 11.12.2)."""
    if not data:
        return [b""]
    return [data[i:i + size] for i in range(0, len(data), size)]


def parse_number(value: str) -> int | None:
    """A numerical value: decimal or 0x hexadecimal (6.1 decimal-constant, hex-constant)."""
    if not value:
        return None
    try:
        if value[:2] in ("0x", "0X"):
            n = int(value[2:], 16) if value[2:] else -1
        elif value.isdigit() and value.isascii():
            n = int(value)
        else:
            return None
    except ValueError:
        return None
    return n if 0 <= n <= MAX_NUMBER else None


# --- the table -------------------------------------------------------------------------


class Rule(Enum):
    """How the result of a key is found (6.2.2, 6.2.3)."""

    DECLARATIVE = "declarative"
    MIN = "min"
    MAX = "max"
    AND = "and"
    OR = "or"
    LIST = "list"
    OBSOLETE_NO = "obsolete: answer No"
    OBSOLETE_REJECT = "obsolete: answer Reject"


class Use(Enum):
    IO = "initialize only"  # first login request(s) of a connection
    LO = "leading only"  # leading connection of a session, login only
    ALL = "login and full feature phase"
    FFPO = "full feature phase only"


class Scope(Enum):
    SW = "session-wide"
    CO = "connection-only"


class Sender(Flag):
    INITIATOR = auto()
    TARGET = auto()
    BOTH = INITIATOR | TARGET


class Stage(Flag):
    """Where the initiator may send a key (CSG values 0, 1, and 3 for FFP)."""

    SECURITY = auto()
    OPERATIONAL = auto()
    FFP = auto()
    LOGIN = SECURITY | OPERATIONAL


@dataclass(frozen=True)
class Key:
    name: str
    rule: Rule
    use: Use
    scope: Scope = Scope.SW
    sender: Sender = Sender.BOTH
    stages: Stage = Stage.LOGIN
    lo: int = 0
    hi: int = 0
    values: tuple[str, ...] = ()  # LIST: the values we know of; others are skipped
    irrelevant_in_discovery: bool = False
    max_len: int = MAX_VALUE_LEN


Offered = int | bool | tuple[str, ...]  # our value of a key: a number, a Boolean, a list


@dataclass
class Offers:
    """Our side of every negotiated key (the target's configuration)."""

    max_recv_data_segment_length: int = 262144  # declared (13.12)
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    max_outstanding_r2t: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    initial_r2t: bool = False  # OR: No lets the initiator choose
    immediate_data: bool = True
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    max_connections: int = 1
    error_recovery_level: int = 0
    header_digests: tuple[str, ...] = ("None", "CRC32C")
    data_digests: tuple[str, ...] = ("None", "CRC32C")
    auth_methods: tuple[str, ...] = ("None",)
    task_reporting: tuple[str, ...] = ("RFC3720",)
    iscsi_protocol_level: int = 1
    markers: bool = False  # IFMarker / OFMarker (obsolete)

    def ours(self, name: str) -> Offered:
        """Our value of the negotiated key `name` (a MIN, MAX, AND, OR or LIST row of KEYS):
        the explicit mapping from key names (section 13) to these fields."""
        return {
            "AuthMethod": self.auth_methods,
            "HeaderDigest": self.header_digests,
            "DataDigest": self.data_digests,
            "MaxConnections": self.max_connections,
            "InitialR2T": self.initial_r2t,
            "ImmediateData": self.immediate_data,
            "MaxBurstLength": self.max_burst_length,
            "FirstBurstLength": self.first_burst_length,
            "DefaultTime2Wait": self.default_time2wait,
            "DefaultTime2Retain": self.default_time2retain,
            "MaxOutstandingR2T": self.max_outstanding_r2t,
            "DataPDUInOrder": self.data_pdu_in_order,
            "DataSequenceInOrder": self.data_sequence_in_order,
            "ErrorRecoveryLevel": self.error_recovery_level,
            "TaskReporting": self.task_reporting,
            "iSCSIProtocolLevel": self.iscsi_protocol_level,
        }[name]


def store(params: SessionParams, name: str, result: int | bool | str) -> bool:
    """Put the result of key `name` in the SessionParams field it sets (the explicit
    mapping from key names to fields); False for a key that sets no field. HeaderDigest
    and DataDigest set a bool: CRC32C chosen."""
    match name:
        case "HeaderDigest":
            params.header_digest = result == "CRC32C"
        case "DataDigest":
            params.data_digest = result == "CRC32C"
        case "TargetName":
            params.target_name = str(result)
        case "InitiatorName":
            params.initiator_name = str(result)
        case "InitiatorAlias":
            params.initiator_alias = str(result)
        case "SessionType":
            params.session_type = str(result)
        case "MaxConnections":
            params.max_connections = int(result)
        case "InitialR2T":
            params.initial_r2t = bool(result)
        case "ImmediateData":
            params.immediate_data = bool(result)
        case "MaxRecvDataSegmentLength":
            params.max_recv_data_segment_length = int(result)
        case "MaxBurstLength":
            params.max_burst_length = int(result)
        case "FirstBurstLength":
            params.first_burst_length = int(result)
        case "DefaultTime2Wait":
            params.default_time2wait = int(result)
        case "DefaultTime2Retain":
            params.default_time2retain = int(result)
        case "MaxOutstandingR2T":
            params.max_outstanding_r2t = int(result)
        case "DataPDUInOrder":
            params.data_pdu_in_order = bool(result)
        case "DataSequenceInOrder":
            params.data_sequence_in_order = bool(result)
        case "ErrorRecoveryLevel":
            params.error_recovery_level = int(result)
        case _:
            return False
    return True


_24 = (1 << 24) - 1
_S = Stage.SECURITY
_OP = Stage.LOGIN  # operational keys: either login stage (see the header)
_I = Sender.INITIATOR
_T = Sender.TARGET

KEYS: dict[str, Key] = {k.name: k for k in (
    # 12: security
    Key("AuthMethod", Rule.LIST, Use.LO, Scope.CO, stages=_S,
        values=("None", "CHAP", "SRP", "KRB5", "SPKM1", "SPKM2")),
    Key("CHAP_A", Rule.DECLARATIVE, Use.LO, Scope.CO, stages=_S),
    Key("CHAP_I", Rule.DECLARATIVE, Use.LO, Scope.CO, stages=_S, max_len=MAX_LARGE_VALUE_LEN),
    Key("CHAP_C", Rule.DECLARATIVE, Use.LO, Scope.CO, stages=_S, max_len=MAX_LARGE_VALUE_LEN),
    Key("CHAP_N", Rule.DECLARATIVE, Use.LO, Scope.CO, stages=_S, max_len=MAX_LARGE_VALUE_LEN),
    Key("CHAP_R", Rule.DECLARATIVE, Use.LO, Scope.CO, stages=_S, max_len=MAX_LARGE_VALUE_LEN),
    # 13.1 - 13.26
    Key("HeaderDigest", Rule.LIST, Use.IO, Scope.CO, stages=_OP, values=("None", "CRC32C")),
    Key("DataDigest", Rule.LIST, Use.IO, Scope.CO, stages=_OP, values=("None", "CRC32C")),
    Key("MaxConnections", Rule.MIN, Use.LO, lo=1, hi=65535, irrelevant_in_discovery=True),
    Key("SendTargets", Rule.DECLARATIVE, Use.FFPO, sender=_I, stages=Stage.FFP),
    Key("TargetName", Rule.DECLARATIVE, Use.IO, sender=_I, max_len=223),
    Key("InitiatorName", Rule.DECLARATIVE, Use.IO, sender=_I, max_len=223),
    Key("TargetAlias", Rule.DECLARATIVE, Use.ALL, sender=_T),
    Key("InitiatorAlias", Rule.DECLARATIVE, Use.ALL, sender=_I,
        stages=Stage.LOGIN | Stage.FFP),
    Key("TargetAddress", Rule.DECLARATIVE, Use.ALL, sender=_T),
    Key("TargetPortalGroupTag", Rule.DECLARATIVE, Use.IO, sender=_T),
    Key("InitialR2T", Rule.OR, Use.LO, irrelevant_in_discovery=True),
    Key("ImmediateData", Rule.AND, Use.LO, irrelevant_in_discovery=True),
    Key("MaxRecvDataSegmentLength", Rule.DECLARATIVE, Use.ALL, Scope.CO,
        stages=Stage.LOGIN | Stage.FFP, lo=512, hi=_24),
    Key("MaxBurstLength", Rule.MIN, Use.LO, lo=512, hi=_24, irrelevant_in_discovery=True),
    Key("FirstBurstLength", Rule.MIN, Use.LO, lo=512, hi=_24, irrelevant_in_discovery=True),
    Key("DefaultTime2Wait", Rule.MAX, Use.LO, lo=0, hi=3600),
    Key("DefaultTime2Retain", Rule.MIN, Use.LO, lo=0, hi=3600),
    Key("MaxOutstandingR2T", Rule.MIN, Use.LO, lo=1, hi=65535, irrelevant_in_discovery=True),
    Key("DataPDUInOrder", Rule.OR, Use.LO, irrelevant_in_discovery=True),
    Key("DataSequenceInOrder", Rule.OR, Use.LO, irrelevant_in_discovery=True),
    Key("ErrorRecoveryLevel", Rule.MIN, Use.LO, lo=0, hi=2),
    Key("SessionType", Rule.DECLARATIVE, Use.LO, sender=_I, values=("Discovery", "Normal")),
    Key("TaskReporting", Rule.LIST, Use.LO, values=("RFC3720", "ResponseFence", "FastAbort"),
        irrelevant_in_discovery=True),
    Key("iSCSIProtocolLevel", Rule.MIN, Use.LO, lo=0, hi=31),
    # obsolete (RFC 3720 markers)
    Key("IFMarker", Rule.OBSOLETE_NO, Use.IO, Scope.CO),
    Key("OFMarker", Rule.OBSOLETE_NO, Use.IO, Scope.CO),
    Key("IFMarkInt", Rule.OBSOLETE_REJECT, Use.IO, Scope.CO),
    Key("OFMarkInt", Rule.OBSOLETE_REJECT, Use.IO, Scope.CO),
)}

SECURITY_KEYS = frozenset(k.name for k in KEYS.values() if k.stages == Stage.SECURITY)


def _yes(b: bool) -> str:
    return "Yes" if b else "No"


def _bool(value: str) -> bool | None:
    return {"Yes": True, "No": False}.get(value)


# --- result functions (6.2.2, 6.2.3), pure -------------------------------------------


def result_min(offered: int, ours: int) -> int:
    return min(offered, ours)


def result_max(offered: int, ours: int) -> int:
    return max(offered, ours)


def result_and(offered: bool, ours: bool) -> bool:
    return offered and ours


def result_or(offered: bool, ours: bool) -> bool:
    return offered or ours


def result_list(offered: list[str], supported: Iterable[str]) -> str | None:
    """The first value of the originator's list the responder supports, or None."""
    ours = set(supported)
    for v in offered:
        if v in ours:
            return v
    return None


# --- one negotiation --------------------------------------------------------------------


@dataclass
class Negotiation:
    """The answers of the target to the keys of one login (or one text exchange).

    respond() takes the pairs of one complete request text and returns the pairs to
    answer with; the results land in `params`. Keys seen so far are remembered so that a
    key sent twice raises NegotiationError(INITIATOR_ERROR).
    """

    offers: Offers
    params: SessionParams = field(default_factory=SessionParams)
    seen: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    results: dict[str, str] = field(default_factory=dict)  # key -> answered/declared value

    def respond(self, pairs: list[tuple[str, str]], stage: Stage,
                session_type: str = "Normal") -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        names = [k for k, _ in pairs]
        if len(set(names)) != len(names):
            dup = next(k for k in names if names.count(k) > 1)
            raise NegotiationError(INITIATOR_ERROR, f"key {dup} sent twice")
        # MaxBurstLength before FirstBurstLength, so that FirstBurstLength <= it (13.14).
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0] == "FirstBurstLength")
        answers: dict[int, tuple[str, str] | None] = {}
        for i in order:
            name, value = pairs[i]
            if name in self.seen:
                raise NegotiationError(INITIATOR_ERROR, f"key {name} sent twice")
            self.seen.add(name)
            answers[i] = self._one(name, value, stage, session_type)
        for i in range(len(pairs)):
            a = answers[i]
            if a is not None:
                out.append(a)
        return out

    def _one(self, name: str, value: str, stage: Stage,
             session_type: str) -> tuple[str, str] | None:
        key = KEYS.get(name)
        if key is None:
            return (name, NOT_UNDERSTOOD)  # includes X- and X# keys (6.2, 13.5)
        if not key.sender & Sender.INITIATOR:
            raise NegotiationError(INITIATOR_ERROR, f"{name} is sent by targets only")
        if not key.stages & stage:
            if stage is Stage.FFP:
                return (name, REJECT)
            if key.use is Use.FFPO:
                raise NegotiationError(INVALID_DURING_LOGIN, f"{name} is not valid in login")
            raise NegotiationError(INITIATOR_ERROR, f"{name} in the wrong login stage")
        if stage is Stage.FFP and key.use in (Use.IO, Use.LO):
            return (name, REJECT)
        if len(value.encode()) > key.max_len:
            return self._reject(name)
        if session_type == "Discovery" and key.irrelevant_in_discovery:
            return (name, IRRELEVANT)
        rule = key.rule
        if rule is Rule.OBSOLETE_NO:
            return (name, "No")
        if rule is Rule.OBSOLETE_REJECT:
            return (name, REJECT)
        if rule is Rule.DECLARATIVE:
            return self._declared(key, value)
        if rule in (Rule.MIN, Rule.MAX):
            n = parse_number(value)
            if n is None or not key.lo <= n <= key.hi:
                return self._reject(name)
            ours = self.offers.ours(name)
            result = result_min(n, ours) if rule is Rule.MIN else result_max(n, ours)
            if name == "FirstBurstLength":
                result = min(result, self.params.max_burst_length)
            self._set(key, result)
            return (name, str(result))
        if rule in (Rule.AND, Rule.OR):
            b = _bool(value)
            if b is None:
                return self._reject(name)
            ours = self.offers.ours(name)
            result = result_and(b, ours) if rule is Rule.AND else result_or(b, ours)
            self._set(key, result)
            return (name, _yes(result))
        # LIST
        offered = value.split(",")
        if any(not v for v in offered):
            return self._reject(name)
        supported = [v for v in self.offers.ours(name) if v in key.values]
        chosen = result_list(offered, supported)
        if chosen is None:
            return self._reject(name)
        self._set(key, chosen)
        return (name, chosen)

    def _reject(self, name: str) -> tuple[str, str]:
        self.rejected.add(name)
        return (name, REJECT)

    def _declared(self, key: Key, value: str) -> tuple[str, str] | None:
        if key.lo or key.hi:
            n = parse_number(value)
            if n is None or not key.lo <= n <= key.hi:
                return self._reject(key.name)
            self._set(key, n)
            return None
        if key.values and value not in key.values:
            return self._reject(key.name)
        self._set(key, value)
        return None

    def _set(self, key: Key, result: int | bool | str) -> None:
        self.results[key.name] = result if isinstance(result, str) else (
            _yes(result) if isinstance(result, bool) else str(result))
        store(self.params, key.name, result)

    def declare(self, name: str, value: int | str) -> tuple[str, str]:
        """A declaration of ours (e.g. MaxRecvDataSegmentLength), remembered."""
        self.results[name] = str(value)
        if name == "MaxRecvDataSegmentLength":
            self.params.target_max_recv_data_segment_length = int(value)
        return (name, str(value))

    def finish(self) -> SessionParams:
        """The parameters in force (13.14: FirstBurstLength never above MaxBurstLength)."""
        p = self.params
        if p.first_burst_length > p.max_burst_length:
            p.first_burst_length = p.max_burst_length
        return p
