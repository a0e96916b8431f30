"""CHAP for iSCSI login, sans-IO (RFC 7143 sections 6.1, 9.2.1, 12.1.3; RFC 1994).

Rules:
- The response (RFC 1994 section 4.1): R = H(identifier octet || secret || challenge),
  H one of the CHAP_A algorithms iSCSI peers number as LIO's iscsi_target_auth.h and
  open-iscsi's auth code do: 5 MD5 (the one RFC 1994 and RFC 7143 12.1.3 require),
  6 SHA-1, 7 SHA-256, 8 SHA3-256 (ALGORITHMS; hashlib has them all).
- CHAP_A is a list in the initiator's order of preference (RFC 7143 12.1.3, 6.2.3: the
  target takes the first value it supports; open-iscsi#180 shows targets that did not).
  Each value is a whole decimal number: "56" is 56, not 5 followed by junk.
- Binary values (6.1, binary-value): "0x"/"0X" then hex digits (an odd count gets an
  implied leading zero), or "0b"/"0B" then base64 with its padding. CHAP_C and CHAP_R
  decode to 1..1024 bytes (12.1.3, from RFC 3720 11.1.4: "their binary length ... MUST
  not exceed 1024 bytes", as quoted by LIO's commit e4fae2318b5d, which enforces it in
  iscsi_target_auth.c chap_server_compute_md5); a text value over 8192 bytes
  (keys.MAX_LARGE_VALUE_LEN) is refused before decoding.
- Our challenges are at least 16 random bytes from `secrets` (RFC 1994 2.3: the
  challenge is unique and unpredictable), as long as the digest when that is longer;
  the identifier comes from an Identifiers source, a fresh one for every challenge.
- The target side (ChapTarget) runs: CHAP_A -> CHAP_A, CHAP_I, CHAP_C; then CHAP_N and
  CHAP_R (and for mutual CHAP the initiator's CHAP_I and CHAP_C) -> for mutual CHAP, our
  CHAP_N and CHAP_R. It refuses (ChapFailure, naming the rule, never a secret): no CHAP_A
  or none we support; CHAP keys out of order or after the end; a missing CHAP_N or
  CHAP_R; an unknown name; a response that does not verify (a wrong secret, or a replay
  of an older login's response: our challenge is new each time); a response equal to
  the one our own (mutual) secret gives, i.e. the same secret in both directions (9.2.1:
  MUST be treated as an authentication failure); an initiator challenge equal to ours
  (a reflection); mutual CHAP asked of a target that has no secret of its own; values
  too long or not in a binary encoding.
- A target may accept fewer algorithms (Credentials.algorithms, config `algorithms`), to
  make an initiator use the one under test.
- Responses are compared in constant time (hmac.compare_digest).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import Enum

from target.iscsi.keys import parse_number

MAX_BINARY = 1024  # RFC 7143 12.1.3: CHAP_C and CHAP_R binary length
MAX_TEXT = 8192  # RFC 7143 6.1 / 12.1.3: a large binary value's text (keys.py)
MIN_CHALLENGE = 16
_HEX = "0123456789abcdefABCDEF"
MIN_SECRET = 12  # RFC 7143 9.2.1: 96 bits unless IPsec protects the connection

ALGORITHMS: dict[int, str] = {5: "md5", 6: "sha1", 7: "sha256", 8: "sha3_256"}  # hashlib
ALGORITHM_NAMES = {5: "MD5", 6: "SHA-1", 7: "SHA-256", 8: "SHA3-256"}


class ChapFailure(Exception):
    """Authentication fails (login status 02/01); the message names the rule broken."""


class BinaryValueError(ValueError):
    """A value that is not a binary-value of RFC 7143 6.1."""


@dataclass(frozen=True)
class Credentials:
    """What authenticates a login: the initiator's name and secret, and for mutual CHAP
    the target's own (mutual_user, mutual_secret). Secrets are bytes; repr hides them."""

    user: str
    secret: bytes
    mutual_user: str = ""
    mutual_secret: bytes = b""
    # The CHAP_A values this target accepts (config `algorithms`); all by default.
    algorithms: tuple[int, ...] = tuple(ALGORITHMS)

    def __repr__(self) -> str:
        mutual = f", mutual_user={self.mutual_user!r}" if self.mutual_user else ""
        return f"Credentials(user={self.user!r}{mutual}, secrets hidden)"


# --- values -------------------------------------------------------------------------------


def decode_binary(value: str) -> bytes:
    """A binary-value (6.1): 0x hex or 0b base64; raises BinaryValueError."""
    if len(value) > MAX_TEXT:
        raise BinaryValueError(f"value of {len(value)} characters")
    prefix, body = value[:2], value[2:]
    if not body:
        raise BinaryValueError("no digits after the prefix")
    if prefix in ("0x", "0X"):
        if body.strip(_HEX):
            raise BinaryValueError("not hexadecimal")
        return bytes.fromhex("0" + body if len(body) % 2 else body)
    if prefix in ("0b", "0B"):
        try:
            return binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise BinaryValueError("not base64") from None
    raise BinaryValueError("neither 0x (hex) nor 0b (base64)")


def encode_hex(data: bytes) -> str:
    return "0x" + data.hex()


def encode_base64(data: bytes) -> str:
    return "0b" + binascii.b2a_base64(data, newline=False).decode("ascii")


def parse_identifier(value: str) -> int:
    """CHAP_I: a number 0..255 (12.1.3), decimal or 0x hex; raises BinaryValueError."""
    n = parse_number(value)
    if n is None or n > 255:
        raise BinaryValueError("not a number 0..255")
    return n


def parse_algorithms(value: str) -> list[int | None]:
    """CHAP_A's list, in order; a value that is not a whole decimal number is None."""
    out: list[int | None] = []
    for item in value.split(","):
        out.append(int(item) if item.isascii() and item.isdigit() and len(item) <= 10
                   else None)
    return out


def choose_algorithm(value: str, supported: tuple[int, ...] = tuple(ALGORITHMS)) -> int | None:
    """The first algorithm of the initiator's list that we support (12.1.3, 6.2.3)."""
    for a in parse_algorithms(value):
        if a is not None and a in supported:
            return a
    return None


def response(algorithm: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 4.1: H(identifier octet || secret || challenge)."""
    h = hashlib.new(ALGORITHMS[algorithm])
    h.update(bytes((identifier,)))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def new_challenge(algorithm: int) -> bytes:
    return secrets.token_bytes(max(MIN_CHALLENGE, hashlib.new(ALGORITHMS[algorithm]).digest_size))


class Identifiers:
    """CHAP_I values: a fresh one for every challenge (RFC 1994 4.1: the identifier
    changes each time a challenge is sent), from a random start, counting mod 256."""

    def __init__(self) -> None:
        self._next = secrets.randbelow(256)

    def next(self) -> int:
        n = self._next
        self._next = (n + 1) & 0xFF
        return n


# --- the target's side ---------------------------------------------------------------------


class State(Enum):
    WAIT_ALGORITHM = "CHAP_A expected"
    WAIT_RESPONSE = "CHAP_N and CHAP_R expected"
    DONE = "authenticated"
    FAILED = "failed"


CHAP_KEYS = frozenset({"CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"})


class ChapTarget:
    """The target's CHAP exchange of one login. step() takes the CHAP keys of one Login
    Request and returns the keys to answer with; it raises ChapFailure."""

    def __init__(self, credentials: Credentials, identifiers: Identifiers) -> None:
        self.credentials = credentials
        self.identifiers = identifiers
        self.state = State.WAIT_ALGORITHM
        self.algorithm = 0
        self.identifier = 0
        self.challenge = b""
        self.mutual = False

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def step(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        try:
            return self._step(keys)
        except ChapFailure:
            self.state = State.FAILED
            raise

    def _step(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        for name, value in keys.items():
            if len(value) > MAX_TEXT:
                raise ChapFailure(f"{name} value of {len(value)} characters (over {MAX_TEXT})")
        if self.state is State.WAIT_ALGORITHM:
            if set(keys) - {"CHAP_A"}:
                raise ChapFailure(f"{', '.join(sorted(set(keys) - {'CHAP_A'}))} before "
                                  "the target's challenge")
            if "CHAP_A" not in keys:
                raise ChapFailure("no CHAP_A after AuthMethod=CHAP")
            accepted = self.credentials.algorithms
            algorithm = choose_algorithm(keys["CHAP_A"], accepted)
            if algorithm is None:
                raise ChapFailure(f"no supported algorithm in CHAP_A={keys['CHAP_A'][:64]!r} "
                                  f"(accepted: {', '.join(map(str, accepted))})")
            self.algorithm = algorithm
            self.identifier = self.identifiers.next()
            self.challenge = new_challenge(algorithm)
            self.state = State.WAIT_RESPONSE
            return [("CHAP_A", str(algorithm)), ("CHAP_I", str(self.identifier)),
                    ("CHAP_C", encode_hex(self.challenge))]
        if self.state is State.WAIT_RESPONSE:
            return self._verify(keys)
        raise ChapFailure(f"{', '.join(sorted(keys))} after the CHAP exchange ended")

    def _verify(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        cred = self.credentials
        if "CHAP_A" in keys:
            raise ChapFailure("CHAP_A sent twice")
        if "CHAP_N" not in keys:
            raise ChapFailure("no CHAP_N")
        if "CHAP_R" not in keys:
            raise ChapFailure("no CHAP_R")
        name = keys["CHAP_N"]
        if not hmac.compare_digest(name.encode(), cred.user.encode()):
            raise ChapFailure(f"unknown CHAP_N {name[:64]!r}")
        try:
            got = decode_binary(keys["CHAP_R"])
        except BinaryValueError as exc:
            raise ChapFailure(f"CHAP_R: {exc}") from None
        if len(got) > MAX_BINARY:
            raise ChapFailure(f"CHAP_R of {len(got)} bytes (over {MAX_BINARY})")
        if cred.mutual_secret and hmac.compare_digest(
                got, response(self.algorithm, self.identifier, cred.mutual_secret,
                              self.challenge)):
            raise ChapFailure("CHAP_R made with the target's own secret (the same secret "
                              "in both directions, RFC 7143 9.2.1)")
        expected = response(self.algorithm, self.identifier, cred.secret, self.challenge)
        if not hmac.compare_digest(got, expected):
            raise ChapFailure(f"CHAP_R does not verify for CHAP_N {name[:64]!r} (wrong "
                              "secret or a replayed response)")
        answer: list[tuple[str, str]] = []
        has_i, has_c = "CHAP_I" in keys, "CHAP_C" in keys
        if has_i != has_c:
            raise ChapFailure("mutual CHAP needs both CHAP_I and CHAP_C")
        if has_i:
            if not cred.mutual_secret:
                raise ChapFailure("the initiator asks for mutual CHAP and the target has "
                                  "no mutual_secret")
            try:
                identifier = parse_identifier(keys["CHAP_I"])
                challenge = decode_binary(keys["CHAP_C"])
            except BinaryValueError as exc:
                raise ChapFailure(f"mutual CHAP_I/CHAP_C: {exc}") from None
            if len(challenge) > MAX_BINARY:
                raise ChapFailure(f"CHAP_C of {len(challenge)} bytes (over {MAX_BINARY})")
            if hmac.compare_digest(challenge, self.challenge):
                raise ChapFailure("the initiator's CHAP_C is the target's own challenge "
                                  "(a reflection)")
            self.mutual = True
            answer = [("CHAP_N", cred.mutual_user),
                      ("CHAP_R", encode_hex(response(self.algorithm, identifier,
                                                     cred.mutual_secret, challenge)))]
        self.state = State.DONE
        return answer


# --- the initiator's side ------------------------------------------------------------------


@dataclass
class InitiatorChap:
    """The initiator's CHAP: our name and secret; for mutual CHAP the target's expected
    name and secret. `algorithms` is the CHAP_A list we offer, in our preference."""

    user: str
    secret: bytes
    target_user: str = ""
    target_secret: bytes = b""
    algorithms: str = "7,8,6,5"
    auth_method: str = "CHAP"  # the AuthMethod list we offer

    def __repr__(self) -> str:
        return f"InitiatorChap(user={self.user!r}, algorithms={self.algorithms!r}, ...)"

    @property
    def mutual(self) -> bool:
        return bool(self.target_secret)
