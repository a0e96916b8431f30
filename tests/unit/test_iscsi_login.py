"""The login phase (RFC 7143 sections 6, 11.12, 11.13), driven PDU by PDU."""

from __future__ import annotations

import pytest

from target.iscsi import keys, pdu
from target.iscsi.login import Login
from target.iscsi.pdu import Bhs, Op
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import SessionRegistry
from target.scsi.device import ScsiDevice

pytestmark = pytest.mark.unit

T, C = 0x80, 0x40
SEC, OPER, FFP = 0, 1, 3
INAME = "iqn.2026-11.local.test:initiator"
TNAME = "iqn.2026-11.local.test:disk"
LOCKED = "iqn.2026-11.local.test:locked"
ISID = 0x400000000001


def flags(t: bool, csg: int, nsg: int = 0, c: bool = False) -> int:
    return (T if t else 0) | (C if c else 0) | csg << 2 | (nsg if t else 0)


def make_portal(**kw) -> Portal:
    targets = {
        TNAME: TargetEntry(TNAME, ScsiDevice(TNAME), alias="disk one", tpgt=1),
        LOCKED: TargetEntry(LOCKED, ScsiDevice(LOCKED), tpgt=2, initiators=["iqn.x:other"]),
    }
    # The offers these tests were written against, pinned so the defaults may change.
    kw = {"max_burst_length": 262144, "first_burst_length": 65536, "max_outstanding_r2t": 1,
          **kw}
    return Portal(targets, ["127.0.0.1:3260"], SessionRegistry(), **kw)


def request(fl: int, pairs=(), *, raw: bytes | None = None, isid=ISID, tsih=0, cid=0,
            itt=0x1000, cmdsn=10, exp_stat_sn=20, vmax=0, vmin=0) -> tuple[Bhs, bytes]:
    data = raw if raw is not None else keys.encode(pairs)
    header = pdu.login_request(flags=fl, version_max=vmax, version_min=vmin, dsl=len(data),
                               isid=isid, tsih=tsih, itt=itt, cid=cid, cmdsn=cmdsn,
                               exp_statsn=exp_stat_sn)
    return Bhs(header), data


class Response:
    def __init__(self, raw: bytes) -> None:
        self.bhs = b = Bhs(raw[:48])
        assert b.opcode == Op.LOGIN_RESPONSE
        self.data = raw[48:48 + b.dsl]
        assert len(raw) == 48 + b.dsl + pdu.pad_len(b.dsl)  # padded, no digests
        self.t = bool(b.flags & T)
        self.c = bool(b.flags & C)
        self.csg = (b.flags >> 2) & 3
        self.nsg = b.flags & 3
        self.status = (b.status_class, b.status_detail)
        self.stat_sn, self.exp_cmdsn, self.max_cmdsn = b.statsn, b.exp_cmdsn, b.max_cmdsn
        self.isid, self.tsih, self.itt = b.isid, b.tsih, b.itt
        self.version_max, self.version_active = b.b2, b.b3

    @property
    def pairs(self) -> dict[str, str]:
        return dict(keys.parse(self.data))


def send(login: Login, fl: int, pairs=(), **kw) -> tuple[object, Response]:
    step = login.receive(*request(fl, pairs, **kw))
    assert len(step.pdus) == 1
    return step, Response(step.pdus[0])


IDENTITY = [("InitiatorName", INAME), ("InitiatorAlias", "guest"), ("TargetName", TNAME),
            ("SessionType", "Normal")]
# What open-iscsi (the Linux initiator) offers in the operational stage.
OPEN_ISCSI_OPERATIONAL = [
    ("HeaderDigest", "None"), ("DataDigest", "None"), ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
    ("ErrorRecoveryLevel", "0"), ("InitialR2T", "No"), ("ImmediateData", "Yes"),
    ("MaxBurstLength", "16776192"), ("FirstBurstLength", "262144"), ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"), ("MaxOutstandingR2T", "1"),
    ("MaxRecvDataSegmentLength", "262144"),
]
# What libiscsi sends in its single operational-stage login request (no CHAP).
LIBISCSI = [
    ("InitiatorName", INAME), ("TargetName", TNAME), ("SessionType", "Normal"),
    ("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "Yes"),
    ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"), ("FirstBurstLength", "262144"),
    ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
    ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
    ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "262144"),
    ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
]


def full_login(portal: Portal, **kw):
    login = Login(portal, "127.0.0.1:3260")
    step, r = send(login, flags(True, OPER, FFP), LIBISCSI, **kw)
    assert step.outcome == "complete", step.message
    return login, step, r


# --- successful sequences ---------------------------------------------------------------


def test_open_iscsi_security_then_operational_6_3_11_13():
    portal = make_portal()
    login = Login(portal, "127.0.0.1:3260")
    step, r = send(login, flags(True, SEC, OPER), IDENTITY + [("AuthMethod", "None")])
    assert step.outcome == "continue" and r.status == (0, 0)
    assert (r.t, r.c, r.csg, r.nsg) == (True, False, SEC, OPER)
    assert r.pairs == {"AuthMethod": "None", "TargetPortalGroupTag": "1",
                       "TargetAlias": "disk one"}
    assert r.tsih == 0 and r.isid == ISID and r.itt == 0x1000  # 11.13.4: TSIH only at the end
    assert r.version_max == 0 and r.version_active == 0
    assert r.stat_sn == 20  # the initiator's ExpStatSN
    assert r.exp_cmdsn == 10 and r.max_cmdsn == 10 + 128 - 1

    step, r = send(login, flags(True, OPER, FFP), OPEN_ISCSI_OPERATIONAL, exp_stat_sn=21)
    assert step.outcome == "complete" and r.status == (0, 0)
    assert (r.t, r.csg, r.nsg) == (True, OPER, FFP)
    assert r.stat_sn == 21 and login.stat_sn == 22  # next StatSN, for full feature phase
    assert r.pairs == {
        "HeaderDigest": "None", "DataDigest": "None", "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "0", "IFMarker": "No", "OFMarker": "No",
        "ErrorRecoveryLevel": "0", "InitialR2T": "No", "ImmediateData": "Yes",
        "MaxBurstLength": "262144", "FirstBurstLength": "65536", "MaxConnections": "1",
        "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes", "MaxOutstandingR2T": "1",
        "MaxRecvDataSegmentLength": "262144"}
    session = step.session
    assert r.tsih == session.params.tsih != 0
    assert portal.registry.sessions[r.tsih] is session
    p = session.params
    assert (p.initiator_name, p.initiator_alias, p.target_name, p.isid, p.session_type) == (
        INAME, "guest", TNAME, ISID, "Normal")
    assert session.device is portal.targets[TNAME].device
    assert session.exp_cmdsn == 10 == login.exp_cmdsn
    assert p.max_burst_length == 262144 and p.first_burst_length == 65536
    assert p.initial_r2t is False and p.immediate_data is True
    assert p.max_recv_data_segment_length == 262144
    assert p.target_max_recv_data_segment_length == 262144


def test_libiscsi_operational_stage_directly_6_3_2():
    portal = make_portal()
    login, step, r = full_login(portal)
    assert (r.t, r.csg, r.nsg, r.status) == (True, OPER, FFP, (0, 0))
    got = r.pairs
    assert got["HeaderDigest"] == "None" and got["InitialR2T"] == "Yes"
    assert got["FirstBurstLength"] == "65536" and got["MaxRecvDataSegmentLength"] == "262144"
    assert got["TargetPortalGroupTag"] == "1"
    assert r.stat_sn == 20 and login.stat_sn == 21
    assert step.session.params.initial_r2t is True


def test_operational_stage_without_transit_then_transit_6_3():
    login = Login(make_portal())
    step, r = send(login, flags(False, OPER), LIBISCSI)
    assert step.outcome == "continue" and (r.t, r.csg) == (False, OPER)
    assert "MaxRecvDataSegmentLength" in r.pairs
    step, r = send(login, flags(True, OPER, FFP))
    assert step.outcome == "complete" and r.data == b"" and r.tsih != 0


def test_security_stage_straight_to_full_feature_keeps_default_mrdsl_13_12():
    login = Login(make_portal())
    step, r = send(login, flags(True, SEC, FFP), IDENTITY + [("AuthMethod", "None")])
    assert step.outcome == "complete" and (r.csg, r.nsg) == (SEC, FFP)
    assert "MaxRecvDataSegmentLength" not in r.pairs
    assert step.session.params.target_max_recv_data_segment_length == 8192


def test_discovery_session_without_target_name_13_21():
    portal = make_portal()
    login = Login(portal)
    step, r = send(login, flags(True, SEC, OPER), [
        ("InitiatorName", INAME), ("SessionType", "Discovery"), ("AuthMethod", "None")])
    assert r.pairs == {"AuthMethod": "None"}  # no TargetPortalGroupTag for discovery
    step, r = send(login, flags(True, OPER, FFP), OPEN_ISCSI_OPERATIONAL)
    assert step.outcome == "complete"
    assert r.pairs["MaxBurstLength"] == "Irrelevant"
    assert r.pairs["InitialR2T"] == "Irrelevant" and r.pairs["HeaderDigest"] == "None"
    s = step.session
    assert s.device is None and s.params.session_type == "Discovery"
    assert s.params.target_name == ""


def test_header_and_data_digest_negotiated_13_1():
    login = Login(make_portal())
    pairs = [kv for kv in LIBISCSI if kv[0] not in ("HeaderDigest", "DataDigest")]
    step, r = send(login, flags(True, OPER, FFP),
                   pairs + [("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")])
    assert r.pairs["HeaderDigest"] == "CRC32C" and r.pairs["DataDigest"] == "CRC32C"
    assert step.session.params.header_digest and step.session.params.data_digest


def test_configured_offers_are_used_13():
    portal = make_portal(max_recv_data_segment_length=65536, max_burst_length=1 << 20,
                         first_burst_length=1 << 20, max_outstanding_r2t=4, cmd_window=32)
    login, step, r = full_login(portal)
    assert r.pairs["MaxRecvDataSegmentLength"] == "65536"
    assert r.pairs["MaxBurstLength"] == "262144"  # the initiator offered 262144
    assert r.max_cmdsn == 10 + 32 - 1 and step.session.window == 32


# --- the C bit: text spanning PDUs (6.2, 11.12.2, 11.13.2) ------------------------------


def test_initiator_text_spanning_pdus_with_c_bit_11_12_2():
    login = Login(make_portal())
    data = keys.encode(LIBISCSI)
    cut = data.index(b"TargetName") + 4  # in the middle of a pair
    step = login.receive(*request(flags(False, OPER, c=True), raw=data[:cut]))
    r = Response(step.pdus[0])
    assert step.outcome == "continue" and r.data == b"" and not r.t and not r.c
    step = login.receive(*request(flags(True, OPER, FFP), raw=data[cut:]))
    r = Response(step.pdus[0])
    assert step.outcome == "complete" and r.pairs["MaxBurstLength"] == "262144"
    assert step.session.params.target_name == TNAME


def test_target_answer_longer_than_8192_goes_out_with_c_bit_11_13_2():
    login = Login(make_portal())
    extra = [(f"X-com.example.k{i:04d}", "v") for i in range(400)]
    data = keys.encode(LIBISCSI + extra)
    assert len(data) > 8192
    step = login.receive(*request(flags(False, OPER, c=True), raw=data[:8000]))
    assert Response(step.pdus[0]).data == b""
    step = login.receive(*request(flags(True, OPER, FFP), raw=data[8000:]))
    pieces = []
    while True:
        assert len(step.pdus) == 1
        r = Response(step.pdus[0])
        assert r.status == (0, 0) and len(r.data) <= 8192
        pieces.append(r.data)
        if not r.c:
            break
        assert not r.t and step.outcome == "continue" and r.tsih == 0
        step = login.receive(*request(flags(True, OPER, FFP)))  # empty request
    assert len(pieces) >= 2
    assert step.outcome == "complete" and r.t and r.nsg == FFP and r.tsih != 0
    answers = dict(keys.parse(b"".join(pieces)))
    assert all(answers[k] == "NotUnderstood" for k, _ in extra)
    assert answers["MaxRecvDataSegmentLength"] == "262144"


def test_data_while_target_answer_continues_is_initiator_error_11_12_2():
    login = Login(make_portal())
    extra = [(f"X-com.example.k{i:04d}", "v") for i in range(400)]
    data = keys.encode(LIBISCSI + extra)
    login.receive(*request(flags(False, OPER, c=True), raw=data[:8000]))
    step = login.receive(*request(flags(True, OPER, FFP), raw=data[8000:]))
    assert Response(step.pdus[0]).c
    step, r = send(login, flags(True, OPER, FFP), [("X-a", "b")])
    assert step.outcome == "failed" and r.status == (2, 0)


# --- failures: Status-Class / Status-Detail (11.13.5) ------------------------------------


def fails(login, fl, pairs=(), **kw) -> tuple[int, int]:
    step, r = send(login, fl, pairs, **kw)
    assert step.outcome == "failed" and step.session is None
    assert not r.t and r.data == b""
    assert r.status != (0, 0) and r.status == step.status
    # the login is over: anything more is refused without a response
    assert login.receive(*request(fl, pairs, **kw)).outcome == "failed"
    return r.status


def test_missing_initiator_name_02_07_13_5():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 [("TargetName", TNAME)]) == (2, 0x07)


def test_normal_session_without_target_name_02_07_13_4():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 [("InitiatorName", INAME)]) == (2, 0x07)


def test_unknown_target_02_03_11_13_5():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 [("InitiatorName", INAME), ("TargetName", "iqn.x:nope")]) == (2, 0x03)


def test_target_names_compare_case_insensitively_4_2_7_1():
    login = Login(make_portal())
    step, r = send(login, flags(True, OPER, FFP),
                   [("InitiatorName", INAME), ("TargetName", TNAME.upper())])
    assert step.outcome == "complete" and step.session.params.target_name == TNAME


def test_acl_denies_02_02_11_13_5():
    assert fails(Login(make_portal()), flags(True, SEC, OPER),
                 [("InitiatorName", INAME), ("TargetName", LOCKED)]) == (2, 0x02)


def test_acl_allows_listed_initiator_11_13_5():
    login = Login(make_portal())
    step, r = send(login, flags(True, OPER, FFP),
                   [("InitiatorName", "iqn.x:other"), ("TargetName", LOCKED)])
    assert step.outcome == "complete" and r.pairs["TargetPortalGroupTag"] == "2"


def test_unsupported_version_02_05_11_12_4():
    assert fails(Login(make_portal()), flags(True, OPER, FFP), LIBISCSI,
                 vmax=2, vmin=1) == (2, 0x05)


def test_unknown_session_type_02_09_13_21():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 [("InitiatorName", INAME), ("SessionType", "Bogus")]) == (2, 0x09)


def test_discovery_disabled_02_09_13_21():
    assert fails(Login(make_portal(discovery=False)), flags(True, OPER, FFP),
                 [("InitiatorName", INAME), ("SessionType", "Discovery")]) == (2, 0x09)


def test_tsih_of_no_session_02_0a_11_12_6():
    assert fails(Login(make_portal()), flags(True, OPER, FFP), LIBISCSI,
                 tsih=77) == (2, 0x0A)


def test_second_connection_to_a_session_02_06_13_2():
    portal = make_portal()
    _, step, _ = full_login(portal)
    tsih = step.session.params.tsih
    assert fails(Login(portal), flags(True, OPER, FFP), LIBISCSI, tsih=tsih,
                 cid=1) == (2, 0x06)
    assert portal.registry.sessions[tsih] is step.session


def test_key_twice_in_one_request_02_00_6_2():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 LIBISCSI + [("MaxBurstLength", "4096")]) == (2, 0)


def test_key_again_in_a_later_request_02_00_6_2():
    login = Login(make_portal())
    send(login, flags(True, SEC, OPER), IDENTITY + [("AuthMethod", "None")])
    assert fails(login, flags(True, OPER, FFP), [("InitiatorAlias", "again")]) == (2, 0)


def test_t_and_c_both_set_02_00_11_12_2():
    assert fails(Login(make_portal()), T | C | OPER << 2 | FFP, LIBISCSI) == (2, 0)


@pytest.mark.parametrize("csg,nsg", [(OPER, 2), (OPER, OPER), (OPER, SEC), (SEC, SEC)])
def test_bad_next_stage_02_00_11_12_3(csg, nsg):
    assert fails(Login(make_portal()), T | csg << 2 | nsg, LIBISCSI) == (2, 0)


def test_first_request_in_full_feature_stage_02_00_11_12_3():
    assert fails(Login(make_portal()), 3 << 2, LIBISCSI) == (2, 0)


def test_request_in_the_wrong_stage_02_00_6_3():
    login = Login(make_portal())
    send(login, flags(False, SEC), IDENTITY + [("AuthMethod", "None")])
    assert fails(login, flags(True, OPER, FFP), [("HeaderDigest", "None")]) == (2, 0)


def test_isid_changed_during_login_02_00_11_12_5():
    login = Login(make_portal())
    send(login, flags(True, SEC, OPER), IDENTITY + [("AuthMethod", "None")])
    assert fails(login, flags(True, OPER, FFP), [("HeaderDigest", "None")],
                 isid=ISID + 1) == (2, 0)


def test_security_key_in_operational_stage_02_00_6_3():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 LIBISCSI + [("AuthMethod", "None")]) == (2, 0)


def test_send_targets_during_login_02_0b_13_3():
    assert fails(Login(make_portal()), flags(True, OPER, FFP),
                 LIBISCSI + [("SendTargets", "All")]) == (2, 0x0B)


def test_no_acceptable_auth_method_02_01_12_1():
    assert fails(Login(make_portal()), flags(True, SEC, OPER),
                 IDENTITY + [("AuthMethod", "CHAP")]) == (2, 0x01)


# Authentication (Portal.auth_required). Oracle: Linux LIO, drivers/target/iscsi/
# iscsi_target_nego.c: iscsi_target_handle_csg_one() fails a login that asks for stage 1
# unauthenticated while the TPG enforces authentication, and iscsi_target_handle_csg_zero()
# one that sends AuthMethod=None then, both Initiator Error / Authentication Failure
# (ISCSI_LOGIN_STATUS_AUTH_FAILED, 02/01, RFC 7143 11.13.5).


def test_no_portal_requires_authentication_without_chap_12():
    portal = make_portal()
    assert portal.auth_required is False  # only AuthMethod=None can be negotiated today
    login, _, _ = full_login(portal)  # so the operational stage may come first (6.3)
    assert login.auth_required is False


def test_required_authentication_refuses_operational_stage_first_02_01_6_3():
    assert fails(Login(make_portal(auth_required=True)), flags(True, OPER, FFP),
                 LIBISCSI) == (2, 0x01)


def test_required_authentication_refuses_auth_method_none_02_01_12_1():
    login = Login(make_portal(auth_required=True))
    assert fails(login, flags(True, SEC, OPER),
                 IDENTITY + [("AuthMethod", "None")]) == (2, 0x01)
    assert login.auth_method == "None" and not login.authenticated


def test_required_authentication_security_stage_may_continue_6_3():
    login = Login(make_portal(auth_required=True))
    step, r = send(login, flags(False, SEC), IDENTITY + [("AuthMethod", "None")])
    assert step.outcome == "continue" and (r.t, r.csg, r.status) == (False, SEC, (0, 0))


def test_malformed_text_02_00_6_1():
    step = Login(make_portal()).receive(*request(flags(True, OPER, FFP),
                                                  raw=b"InitiatorName\x00"))
    assert step.outcome == "failed" and Response(step.pdus[0]).status == (2, 0)


def test_session_type_changed_later_02_00_13_21():
    login = Login(make_portal())
    send(login, flags(True, SEC, OPER), [("InitiatorName", INAME), ("TargetName", TNAME)])
    assert fails(login, flags(True, OPER, FFP), [("SessionType", "Discovery")]) == (2, 0)


def test_failure_response_fields_11_13():
    login = Login(make_portal())
    step, r = send(login, flags(True, OPER, FFP), [("TargetName", TNAME)], itt=0x77,
                   exp_stat_sn=5, cmdsn=9)
    assert (r.isid, r.tsih, r.itt, r.stat_sn, r.exp_cmdsn) == (ISID, 0, 0x77, 5, 9)
    assert (r.t, r.csg) == (False, OPER)


# --- reinstatement (6.3.5) ----------------------------------------------------------------


class OldConnection:
    """A session.SessionConnection: what login needs of the old session's connection."""

    def __init__(self) -> None:
        self.peer = "127.0.0.1:40000"
        self.closed = 0

    def close_for_reinstatement(self) -> None:
        self.closed += 1


def test_session_reinstatement_closes_the_old_session_6_3_5():
    portal = make_portal()
    _, step, _ = full_login(portal)
    old = step.session
    old.connection = conn = OldConnection()
    _, step2, r = full_login(portal)
    new = step2.session
    assert conn.closed == 1 and old.closed
    assert old.params.tsih not in portal.registry.sessions or \
        portal.registry.sessions[old.params.tsih] is new
    assert portal.registry.sessions[r.tsih] is new and len(portal.registry.sessions) == 1


def test_other_isid_is_another_session_4_4():
    portal = make_portal()
    _, a, _ = full_login(portal)
    _, b, _ = full_login(portal, isid=ISID + 1)
    assert not a.session.closed and len(portal.registry.sessions) == 2
    assert a.session.params.tsih != b.session.params.tsih


def test_reconnect_with_same_tsih_and_cid_replaces_the_connection_6_3_4():
    portal = make_portal()
    _, step, _ = full_login(portal)
    old = step.session
    old.connection = conn = OldConnection()
    tsih = old.params.tsih
    _, step2, r = full_login(portal, tsih=tsih, cmdsn=55)
    assert conn.closed == 1 and old.closed
    assert r.tsih == tsih and portal.registry.sessions[tsih] is step2.session
    assert step2.session.exp_cmdsn == 55


def test_tsih_with_another_initiator_name_02_0a_6_3_4():
    portal = make_portal()
    _, step, _ = full_login(portal)
    pairs = [("InitiatorName", "iqn.x:else")] + LIBISCSI[1:]
    assert fails(Login(portal), flags(True, OPER, FFP), pairs,
                 tsih=step.session.params.tsih) == (2, 0x0A)
