"""CHAP in the target's login (RFC 7143 12.1.3, 9.2.1; RFC 1994), sans-IO, PDU by PDU.

Oracles: RFC 1994 4.1's definition of the response, H(identifier octet || secret ||
challenge), computed here with hashlib directly (never with target.iscsi.chap); RFC 7143
6.1's binary-value encodings computed with the base64 module and bytes.hex; the
Status-Class/Detail 02/01 (Authentication failure, 11.13.5) read from the Login Response
bytes; CHAP_A numbers as LIO's iscsi_target_auth.h (CHAP_DIGEST_MD5 5, SHA1 6, SHA256 7,
SHA3_256 8) and open-iscsi's auth.h number them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os

import pytest

from target import config as cfgmod
from target.iscsi import chap
from target.iscsi.chap import Credentials, InitiatorChap
from target.iscsi.initiator import InitiatorConnection, InitiatorError, LoginComplete
from target.iscsi.login import Login
from target.iscsi.pdu import Bhs
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import SessionRegistry
from target.scsi.device import ScsiDevice
from tests.unit.test_iscsi_login import (
    IDENTITY,
    INAME,
    OPEN_ISCSI_OPERATIONAL,
    TNAME,
    Response,
    request,
)
from tests.unit.test_iscsi_login import flags as fl

pytestmark = pytest.mark.unit

SEC, OPER, FFP = 0, 1, 3
HASHES = {5: hashlib.md5, 6: hashlib.sha1, 7: hashlib.sha256, 8: hashlib.sha3_256}
USER, SECRET = "guest", b"initiator-secret-1"
TUSER, TSECRET = "target", b"target-secret-0002"
OPEN = "iqn.2026-11.local.test:open"


def rfc1994(alg: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    return HASHES[alg](bytes([identifier]) + secret + challenge).digest()


def unhex(value: str) -> bytes:
    assert value[:2] in ("0x", "0X")
    return bytes.fromhex(value[2:])


def make_portal(mutual: bool = True, discovery: Credentials | None = None) -> Portal:
    cred = Credentials(USER, SECRET, TUSER if mutual else "", TSECRET if mutual else b"")
    targets = {TNAME: TargetEntry(TNAME, ScsiDevice(TNAME), chap=cred),
               OPEN: TargetEntry(OPEN, ScsiDevice(OPEN))}
    return Portal(targets, ["127.0.0.1:3260"], SessionRegistry(), discovery_chap=discovery)


def send(login: Login, f: int, pairs=()) -> tuple[object, Response]:
    step = login.receive(*request(f, list(pairs)))
    assert len(step.pdus) == 1
    return step, Response(step.pdus[0])


def challenge(login: Login, algorithms: str = "5", auth: str = "CHAP") -> dict[str, str]:
    """AuthMethod, then CHAP_A: the target's CHAP_A, CHAP_I, CHAP_C."""
    step, r = send(login, fl(True, SEC, OPER), IDENTITY + [("AuthMethod", auth)])
    assert r.status == (0, 0) and r.pairs["AuthMethod"] == "CHAP"
    assert not r.t  # T=1 asked, the target is not ready to move (6.3)
    step, r = send(login, fl(True, SEC, OPER), [("CHAP_A", algorithms)])
    assert r.status == (0, 0) and not r.t, step.message
    return r.pairs


def answer(got: dict[str, str], secret: bytes = SECRET, user: str = USER,
           alg: int | None = None) -> list[tuple[str, str]]:
    alg = alg or int(got["CHAP_A"])
    r = rfc1994(alg, int(got["CHAP_I"]), secret, unhex(got["CHAP_C"]))
    return [("CHAP_N", user), ("CHAP_R", "0x" + r.hex())]


def refused(login: Login, pairs, f: int | None = None) -> None:
    step, r = send(login, fl(True, SEC, OPER) if f is None else f, pairs)
    assert r.status == (2, 1), step.message  # 11.13.5: Authentication failure
    assert step.outcome == "failed" and not r.t and r.data == b""


# --- the algorithm and the values --------------------------------------------------------


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_response_is_rfc1994_hash_of_identifier_secret_challenge(alg):
    c = os.urandom(24)
    for ident in (0, 1, 255):
        assert chap.response(alg, ident, SECRET, c) == rfc1994(alg, ident, SECRET, c)


def test_binary_values_hex_and_base64_rfc7143_6_1():
    data = bytes(range(256)) + os.urandom(40)
    assert chap.decode_binary("0x" + data.hex()) == data
    assert chap.decode_binary("0X" + data.hex().upper()) == data
    assert chap.decode_binary("0b" + base64.b64encode(data).decode()) == data
    assert chap.decode_binary("0B" + base64.b64encode(data).decode()) == data
    assert chap.decode_binary("0x123") == b"\x01\x23"  # odd digit count: leading zero
    assert chap.encode_hex(data) == "0x" + data.hex()
    assert chap.encode_base64(data) == "0b" + base64.b64encode(data).decode()


@pytest.mark.parametrize("bad", ["", "0x", "0b", "1234", "0xzz", "0x12 34", "0b@@@@",
                                 "0bAQI", "0x" + "00" * 4097])
def test_binary_values_refused(bad):
    with pytest.raises(chap.BinaryValueError):
        chap.decode_binary(bad)


def test_chap_a_is_a_preference_list_open_iscsi_180():
    assert chap.choose_algorithm("7,5") == 7  # the initiator's first choice, not ours
    assert chap.choose_algorithm("99,8,5") == 8
    assert chap.choose_algorithm("56") is None  # not 5: the whole number counts
    assert chap.choose_algorithm("5x,05a") is None
    assert chap.choose_algorithm("99") is None


# --- successful logins --------------------------------------------------------------------


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_one_way_chap_then_operational_stage(alg):
    login = Login(make_portal(mutual=False))
    got = challenge(login, f"{alg}")
    assert got["CHAP_A"] == str(alg)
    assert len(unhex(got["CHAP_C"])) >= 16  # the brief's bound; RFC 1994 2.3 unpredictable
    assert 0 <= int(got["CHAP_I"]) <= 255
    step, r = send(login, fl(True, SEC, OPER), answer(got))
    assert r.status == (0, 0) and (r.t, r.csg, r.nsg) == (True, SEC, OPER), step.message
    assert "CHAP_R" not in r.pairs  # one-way: the target does not answer a challenge
    step, r = send(login, fl(True, OPER, FFP), OPEN_ISCSI_OPERATIONAL)
    assert step.outcome == "complete" and r.status == (0, 0)


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_mutual_chap_target_answer_is_rfc1994(alg):
    login = Login(make_portal())
    got = challenge(login, f"{alg}")
    mine = os.urandom(16)
    step, r = send(login, fl(True, SEC, OPER),
                   answer(got) + [("CHAP_I", "77"), ("CHAP_C", "0x" + mine.hex())])
    assert r.status == (0, 0) and r.t, step.message
    assert r.pairs["CHAP_N"] == TUSER
    assert unhex(r.pairs["CHAP_R"]) == rfc1994(alg, 77, TSECRET, mine)


def test_base64_response_and_challenge_accepted():
    login = Login(make_portal())
    got = challenge(login, "7")
    r = rfc1994(7, int(got["CHAP_I"]), SECRET, unhex(got["CHAP_C"]))
    mine = os.urandom(20)
    step, resp = send(login, fl(True, SEC, OPER), [
        ("CHAP_N", USER), ("CHAP_R", "0b" + base64.b64encode(r).decode()),
        ("CHAP_I", "0x10"), ("CHAP_C", "0b" + base64.b64encode(mine).decode())])
    assert resp.status == (0, 0), step.message
    assert unhex(resp.pairs["CHAP_R"]) == rfc1994(7, 16, TSECRET, mine)


def test_auth_method_list_target_picks_chap_12_1():
    for offer in ("CHAP,None", "None,CHAP"):  # the target allows CHAP only
        login = Login(make_portal())
        _, r = send(login, fl(False, SEC), IDENTITY + [("AuthMethod", offer)])
        assert r.pairs["AuthMethod"] == "CHAP"
    login = Login(make_portal())  # a target without CHAP picks None from the same list
    _, r = send(login, fl(True, SEC, OPER), [("InitiatorName", INAME), ("TargetName", OPEN),
                                           ("AuthMethod", "CHAP,None")])
    assert r.pairs["AuthMethod"] == "None" and r.t


def test_fresh_identifier_and_challenge_each_login():
    portal = make_portal()
    seen = [challenge(Login(portal), "5") for _ in range(4)]
    assert len({g["CHAP_I"] for g in seen}) == 4
    assert len({g["CHAP_C"] for g in seen}) == 4


def test_discovery_session_uses_discovery_chap():
    disc = Credentials("disc", b"discovery-secret-3")
    login = Login(make_portal(discovery=disc))
    ident = [("InitiatorName", INAME), ("SessionType", "Discovery")]
    refused(login, ident + [("AuthMethod", "None")])
    login = Login(make_portal(discovery=disc))
    send(login, fl(True, SEC, OPER), ident + [("AuthMethod", "CHAP")])
    _, r = send(login, fl(True, SEC, OPER), [("CHAP_A", "8")])
    step, r = send(login, fl(True, SEC, OPER), answer(r.pairs, b"discovery-secret-3", "disc"))
    assert r.status == (0, 0) and r.t, step.message
    # no [discovery.chap]: discovery needs none
    login = Login(make_portal())
    _, r = send(login, fl(True, SEC, OPER), ident + [("AuthMethod", "None")])
    assert r.status == (0, 0) and r.t


# --- denials: every one 02/01 ------------------------------------------------------------


def test_auth_method_none_only_refused():
    refused(Login(make_portal()), IDENTITY + [("AuthMethod", "None")])


def test_operational_stage_first_refused_6_3():
    refused(Login(make_portal()), IDENTITY + OPEN_ISCSI_OPERATIONAL, fl(True, OPER, FFP))


@pytest.mark.parametrize("algs", ["99", "56", "0", "5a", "", "1,2,3,4"])
def test_unknown_algorithm_only_refused(algs):
    login = Login(make_portal())
    send(login, fl(True, SEC, OPER), IDENTITY + [("AuthMethod", "CHAP")])
    refused(login, [("CHAP_A", algs)])


def test_wrong_secret_refused():
    login = Login(make_portal())
    refused(login, answer(challenge(login), b"not-the-secret-xx"))


def test_wrong_name_refused():
    login = Login(make_portal())
    refused(login, answer(challenge(login), user="somebody"))


def test_missing_chap_r_refused():
    login = Login(make_portal())
    challenge(login)
    refused(login, [("CHAP_N", USER)])


def test_missing_chap_n_refused():
    login = Login(make_portal())
    got = challenge(login)
    refused(login, answer(got)[1:])


def test_empty_request_instead_of_response_refused():
    login = Login(make_portal())
    challenge(login)
    refused(login, [])


def test_replayed_response_refused():
    """A response that verified in one login is refused in the next: new challenge."""
    portal = make_portal(mutual=False)
    first = Login(portal)
    old = answer(challenge(first))
    _, r = send(first, fl(True, SEC, OPER), old)
    assert r.status == (0, 0)
    second = Login(portal)
    challenge(second)
    refused(second, old)


def test_response_after_success_refused():
    login = Login(make_portal(mutual=False))
    got = challenge(login)
    _, r = send(login, fl(False, SEC), answer(got))  # T=0: stay in stage 0
    assert r.status == (0, 0) and not r.t
    refused(login, [("CHAP_R", answer(got)[1][1])])


def test_reflected_challenge_refused():
    login = Login(make_portal())
    got = challenge(login)
    refused(login, answer(got) + [("CHAP_I", got["CHAP_I"]), ("CHAP_C", got["CHAP_C"])])


def test_same_secret_both_directions_refused_9_2_1():
    """A CHAP_R made with the target's own secret: the same secret both ways."""
    login = Login(make_portal())
    got = challenge(login)
    refused(login, answer(got, TSECRET))


def test_mutual_asked_of_target_without_mutual_secret_refused():
    login = Login(make_portal(mutual=False))
    got = challenge(login)
    refused(login, answer(got) + [("CHAP_I", "1"), ("CHAP_C", "0x" + os.urandom(16).hex())])


def test_oversized_binary_response_refused_12_1_3():
    login = Login(make_portal())
    challenge(login)
    refused(login, [("CHAP_N", USER), ("CHAP_R", "0x" + "ab" * 1025)])


def test_oversized_challenge_refused_12_1_3():
    login = Login(make_portal())
    got = challenge(login)
    refused(login, answer(got) + [("CHAP_I", "1"), ("CHAP_C", "0x" + "ab" * 1025)])


def test_oversized_text_value_refused():
    login = Login(make_portal())
    challenge(login)
    refused(login, [("CHAP_N", USER), ("CHAP_R", "0x" + "a" * 9000)])


def test_chap_keys_before_auth_method_refused():
    refused(Login(make_portal()), IDENTITY + [("CHAP_A", "5")])


def test_failures_logged_with_rule_and_no_secret(caplog):
    caplog.set_level(logging.WARNING, logger="target.iscsi.login")
    login = Login(make_portal())
    got = challenge(login)
    refused(login, answer(got, b"not-the-secret-xx"))
    text = caplog.text
    assert "02/01" in text and "CHAP_R does not verify" in text
    for secret in (SECRET, TSECRET, b"not-the-secret-xx"):
        assert secret.decode() not in text
    assert got["CHAP_C"][2:] not in text


# --- our initiator against the target, in process ---------------------------------------


def pump(core: InitiatorConnection, login: Login):
    """Move PDUs between our initiator's core and the target's Login until an event."""
    while True:
        out = b"".join(bytes(b) for b in core.data_to_send())
        while out:
            bhs = Bhs(out[:48])
            n = 48 + bhs.dsl + (-bhs.dsl % 4)
            step = login.receive(bhs, out[48:48 + bhs.dsl])
            out = out[n:]
            for p in step.pdus:
                core.receive_data(p)
        event = core.next_event()
        if event is not None:
            return event


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
@pytest.mark.parametrize("mutual", [False, True])
def test_our_initiator_every_algorithm(alg, mutual):
    core = InitiatorConnection()
    ic = InitiatorChap(USER, SECRET, TUSER if mutual else "", TSECRET if mutual else b"",
                       algorithms=str(alg))
    core.login(initiator_name=INAME, target_name=TNAME, isid=1, chap=ic)
    login = Login(make_portal())
    assert type(pump(core, login)) is LoginComplete
    assert login.chap.algorithm == alg and login.chap.mutual is mutual


def test_our_initiator_refuses_target_with_wrong_mutual_secret():
    core = InitiatorConnection()
    core.login(initiator_name=INAME, target_name=TNAME, isid=1,
               chap=InitiatorChap(USER, SECRET, TUSER, b"some-other-secret-4"))
    with pytest.raises(InitiatorError, match="does not verify"):
        pump(core, Login(make_portal()))


# --- config -------------------------------------------------------------------------------

LUN = '[[target.lun]]\nsize = "1M"\n'


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_config_chap_tables(tmp_path):
    cfg = write(tmp_path / "c.toml", f'''
[[target]]
iqn = "{TNAME}"
{LUN}
[target.chap]
user = "guest"
secret = "initiator-secret-1"
mutual_user = "target"
mutual_secret = "target-secret-0002"

[discovery.chap]
secrets_file = "disc.toml"
''')
    write(tmp_path / "disc.toml", 'user = "d"\nsecret = "discovery-secret-3"\n')
    c = cfgmod.load(cfg)
    t = c.targets[0].chap
    assert (t.user, t.secret, t.mutual_user, t.mutual_secret) == (
        "guest", b"initiator-secret-1", "target", b"target-secret-0002")
    assert c.discovery_chap.secret == b"discovery-secret-3"
    assert "secret-1" not in repr(c)
    from target.app import build

    app = build(c)
    try:
        assert app.portal.targets[TNAME].chap.secret == b"initiator-secret-1"
        assert app.portal.discovery_chap.user == "d"
    finally:
        app.close()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_config_with_secret_open_to_others_refused(tmp_path, mode):
    cfg = write(tmp_path / "c.toml", f'[[target]]\niqn = "{TNAME}"\n{LUN}[target.chap]\n'
                'user = "u"\nsecret = "initiator-secret-1"\n', mode)
    with pytest.raises(cfgmod.ConfigError, match=f"{cfg}.*group or others"):
        cfgmod.load(cfg)


def test_secrets_file_not_utf8_refused(tmp_path):
    cfg = write(tmp_path / "c.toml", '[discovery.chap]\nsecrets_file = "s.toml"\n')
    s = tmp_path / "s.toml"
    s.write_bytes(b'user = "d\xff"\nsecret = "discovery-secret-3"\n')
    s.chmod(0o600)
    with pytest.raises(cfgmod.ConfigError, match=f"{s}: not valid TOML: byte 9 is not UTF-8"):
        cfgmod.load(cfg)


def test_secrets_file_open_to_others_refused(tmp_path):
    cfg = write(tmp_path / "c.toml", '[discovery.chap]\nsecrets_file = "s.toml"\n', 0o644)
    s = write(tmp_path / "s.toml", 'user = "d"\nsecret = "discovery-secret-3"\n', 0o644)
    with pytest.raises(cfgmod.ConfigError, match=f"{s}.*group or others"):
        cfgmod.load(cfg)


@pytest.mark.parametrize("body,error", [
    ('user = "u"\nsecret = "short-11byt"\n', "11 bytes"),
    ('user = "u"\nsecret = "initiator-secret-1"\nmutual_user = "t"\n'
     'mutual_secret = "initiator-secret-1"\n', "both directions"),
    ('user = "u"\nsecret = "initiator-secret-1"\nmutual_user = "t"\n', "mutual_secret"),
    ('secret = "initiator-secret-1"\n', "user and secret"),
    ('user = "u"\nsecret = "initiator-secret-1"\npassword = "x"\n', "unknown key"),
    ('user = "u"\nsecret = "initiator-secret-1"\nalgorithms = ["MD4"]\n',
     r"algorithms\[0\]: 'MD4' is not a CHAP algorithm"),
    ('user = "u"\nsecret = "initiator-secret-1"\nalgorithms = []\n', "accepts no login"),
])
def test_config_chap_rules(tmp_path, body, error):
    cfg = write(tmp_path / "c.toml", f"[discovery.chap]\n{body}")
    with pytest.raises(cfgmod.ConfigError, match=error):
        cfgmod.load(cfg)


def test_accepted_algorithms_from_the_config(tmp_path):
    """`algorithms = ["MD5"]`: an initiator that prefers SHA-256 (CHAP_A=7,6,5, as
    open-iscsi sends) is answered with MD5, its last choice; one offering SHA-256 only is
    refused 02/01 (12.1.3: the target picks from the initiator's list what it accepts)."""
    cfg = write(tmp_path / "c.toml", f'[[target]]\niqn = "{TNAME}"\n{LUN}[target.chap]\n'
                'user = "guest"\nsecret = "initiator-secret-1"\n'
                'algorithms = ["md5", "MD5"]\n')
    c = cfgmod.load(cfg)
    assert c.targets[0].chap.algorithms == (5,)
    from target.app import build

    app = build(c)
    try:
        assert app.portal.targets[TNAME].chap.algorithms == (5,)
        login = Login(app.portal)
        got = challenge(login, "7,6,5")
        assert got["CHAP_A"] == "5"
        step, r = send(login, fl(True, SEC, OPER), answer(got))
        assert r.status == (0, 0), step.message
        login = Login(app.portal)
        step, r = send(login, fl(True, SEC, OPER), IDENTITY + [("AuthMethod", "CHAP")])
        refused(login, [("CHAP_A", "7")])
    finally:
        app.close()


def test_mutual_secret_never_an_initiator_secret(tmp_path):
    cfg = write(tmp_path / "c.toml", f'''
[[target]]
iqn = "{TNAME}"
{LUN}
[target.chap]
user = "guest"
secret = "initiator-secret-1"
[discovery.chap]
user = "d"
secret = "discovery-secret-3"
mutual_user = "t"
mutual_secret = "initiator-secret-1"
''')
    with pytest.raises(cfgmod.ConfigError, match="MUST NOT"):
        cfgmod.load(cfg)


def test_chap_a_with_auth_method_in_one_request():
    """CHAP_A in the request that offers AuthMethod=CHAP is taken there (12.1.3)."""
    login = Login(make_portal())
    step, r = send(login, fl(True, SEC, OPER), IDENTITY + [("AuthMethod", "CHAP"),
                                                         ("CHAP_A", "8,5")])
    assert r.status == (0, 0) and not r.t, step.message
    assert r.pairs["AuthMethod"] == "CHAP" and r.pairs["CHAP_A"] == "8"
    step, r = send(login, fl(True, SEC, FFP), answer(r.pairs))  # straight to FFP (6.3)
    assert step.outcome == "complete" and r.status == (0, 0), step.message


def test_new_connection_of_a_session_needs_chap_too():
    """A login with the TSIH of an existing session still authenticates (6.3, 12)."""
    portal = make_portal(mutual=False)
    login = Login(portal)
    got = challenge(login)
    step, _ = send(login, fl(True, SEC, FFP), answer(got))
    assert step.outcome == "complete"
    tsih = step.session.params.tsih
    again = Login(portal)
    step = again.receive(*request(fl(True, SEC, OPER), IDENTITY + [("AuthMethod", "None")],
                                  tsih=tsih))
    assert Response(step.pdus[0]).status == (2, 1)
