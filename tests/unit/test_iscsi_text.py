"""Text Requests in full feature phase: SendTargets and negotiation (RFC 7143 11.10, 11.11,
13.3, appendix C)."""

from __future__ import annotations

import pytest

from target.iscsi import keys, pdu
from target.iscsi.errors import ProtocolError
from target.iscsi.pdu import F_CONTINUE, F_FINAL, RESERVED_TAG, Bhs, RejectReason
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.session import Session, SessionParams, SessionRegistry
from target.iscsi.text import TextResponder
from target.scsi.device import ScsiDevice

pytestmark = pytest.mark.unit

INAME = "iqn.2026-11.local.test:initiator"
A = "iqn.2026-11.local.test:a"
B = "iqn.2026-11.local.test:b"
LOCKED = "iqn.2026-11.local.test:locked"


def make(session_type="Discovery", addresses=("127.0.0.1:3260",), mrdsl=8192,
         local="127.0.0.1:3260", targets=None, target_name=""):
    if targets is None:
        targets = {
            A: TargetEntry(A, ScsiDevice(A), tpgt=1),
            B: TargetEntry(B, ScsiDevice(B), tpgt=2),
            LOCKED: TargetEntry(LOCKED, ScsiDevice(LOCKED), initiators=["iqn.x:other"]),
        }
    portal = Portal(targets, list(addresses), SessionRegistry())
    params = SessionParams(session_type=session_type, initiator_name=INAME,
                           target_name=target_name, max_recv_data_segment_length=mrdsl)
    device = targets[target_name].device if target_name else None
    session = Session(params, device, exp_cmdsn=1)
    return TextResponder(session, portal, local), session


def request(pairs=(), *, raw=None, final=True, cont=False, itt=1, ttt=RESERVED_TAG):
    data = raw if raw is not None else keys.encode(pairs)
    fl = (F_FINAL if final else 0) | (F_CONTINUE if cont else 0)
    return Bhs(pdu.text_request(flags=fl, dsl=len(data), itt=itt, ttt=ttt, cmdsn=1,
                                exp_statsn=1)), data


def ask(responder, pairs=(), **kw):
    out = responder.receive(*request(pairs, **kw))
    assert len(out) == 1
    return out[0]


def test_send_targets_all_in_discovery_session_appendix_c():
    responder, _ = make()
    flags, ttt, data = ask(responder, [("SendTargets", "All")])
    assert flags == F_FINAL and ttt == RESERVED_TAG  # 11.11.4: F=1, TTT reserved
    assert keys.parse(data) == [
        ("TargetName", A), ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", B), ("TargetAddress", "127.0.0.1:3260,2"),
    ]  # LOCKED is not reported: its ACL does not allow this initiator


def test_send_targets_every_portal_address_ipv6_in_brackets_13_8():
    targets = {A: TargetEntry(A, ScsiDevice(A), tpgt=3)}
    responder, _ = make(addresses=("127.0.0.1:3260", "[::1]:3261"), targets=targets)
    _, _, data = ask(responder, [("SendTargets", "All")])
    assert keys.parse(data) == [("TargetName", A), ("TargetAddress", "127.0.0.1:3260,3"),
                                ("TargetAddress", "[::1]:3261,3")]


def test_wildcard_address_becomes_the_connections_address_13_8():
    targets = {A: TargetEntry(A, ScsiDevice(A))}
    responder, _ = make(addresses=("0.0.0.0:3260",), local="10.0.2.2:3260", targets=targets)
    _, _, data = ask(responder, [("SendTargets", "All")])
    assert ("TargetAddress", "10.0.2.2:3260,1") in keys.parse(data)


def test_send_targets_one_name_in_discovery_session_13_3():
    responder, _ = make()
    _, _, data = ask(responder, [("SendTargets", B)])
    assert keys.parse(data) == [("TargetName", B), ("TargetAddress", "127.0.0.1:3260,2")]
    _, _, data = ask(responder, [("SendTargets", LOCKED)], itt=2)
    assert data == b""
    _, _, data = ask(responder, [("SendTargets", "")], itt=3)
    assert keys.parse(data) == [("SendTargets", "Reject")]


def test_send_targets_in_normal_session_reports_the_sessions_target_13_3():
    responder, _ = make("Normal", target_name=B)
    _, _, data = ask(responder, [("SendTargets", "")])
    assert keys.parse(data) == [("TargetName", B), ("TargetAddress", "127.0.0.1:3260,2")]
    _, _, data = ask(responder, [("SendTargets", B)], itt=2)
    assert keys.parse(data)[0] == ("TargetName", B)
    _, _, data = ask(responder, [("SendTargets", "All")], itt=3)
    assert keys.parse(data) == [("SendTargets", "Reject")]
    _, _, data = ask(responder, [("SendTargets", A)], itt=4)
    assert data == b""


def many_targets(n=60):
    names = [f"iqn.2026-11.local.test:target-with-a-long-name-{i:03d}" for i in range(n)]
    return {name: TargetEntry(name, ScsiDevice(name)) for name in names}


def test_long_answer_continues_with_c_bit_and_ttt_11_10_4_11_11():
    targets = many_targets()
    responder, _ = make(targets=targets, mrdsl=512)
    flags, ttt, data = ask(responder, [("SendTargets", "All")], itt=9)
    pieces = [data]
    seen_ttts = set()
    while flags & F_CONTINUE:
        assert not flags & F_FINAL and ttt != RESERVED_TAG and ttt not in seen_ttts
        assert len(data) == 512
        seen_ttts.add(ttt)
        flags, ttt, data = ask(responder, itt=9, ttt=ttt)  # empty request with our TTT
        pieces.append(data)
    assert flags == F_FINAL and ttt == RESERVED_TAG and len(data) <= 512
    assert len(pieces) > 2
    got = keys.parse(b"".join(pieces))
    assert [v for k, v in got if k == "TargetName"] == list(targets)
    assert len(got) == 2 * len(targets)


def test_new_request_with_reserved_ttt_resets_the_exchange_11_10_4():
    responder, _ = make(targets=many_targets(), mrdsl=512)
    flags, ttt, _ = ask(responder, [("SendTargets", "All")], itt=1)
    assert flags & F_CONTINUE
    flags, ttt, data = ask(responder, [("SendTargets", "All")], itt=2)
    assert flags & F_CONTINUE and keys.parse(data[:data.rindex(b"\x00") + 1])[0][0] == \
        "TargetName"


def test_unknown_ttt_is_rejected_11_10_4():
    responder, _ = make()
    with pytest.raises(ProtocolError) as e:
        ask(responder, itt=1, ttt=0x1234)
    assert e.value.reason == RejectReason.INVALID_PDU_FIELD


def test_f_and_c_both_set_is_a_protocol_error_11_10_2():
    responder, _ = make()
    with pytest.raises(ProtocolError):
        ask(responder, [("SendTargets", "All")], final=True, cont=True)


def test_initiator_text_spanning_pdus_11_10_2():
    responder, _ = make()
    data = keys.encode([("SendTargets", "All")])
    flags, ttt, out = ask(responder, raw=data[:5], final=False, cont=True, itt=4)
    assert flags == 0 and out == b"" and ttt != RESERVED_TAG
    flags, ttt2, out = ask(responder, raw=data[5:], itt=4, ttt=ttt)
    assert flags == F_FINAL and keys.parse(out)[0] == ("TargetName", A)


def test_request_without_f_gets_a_non_final_answer_11_11_1():
    responder, session = make()
    flags, ttt, out = ask(responder, [("MaxRecvDataSegmentLength", "16384")], final=False,
                          itt=5)
    assert flags == 0 and ttt != RESERVED_TAG and out == b""
    flags, ttt, out = ask(responder, [("SendTargets", "All")], itt=5, ttt=ttt)
    assert flags == F_FINAL and keys.parse(out)[0] == ("TargetName", A)
    assert session.params.max_recv_data_segment_length == 16384


def test_negotiation_in_full_feature_phase_13():
    responder, session = make("Normal", target_name=A)
    _, _, out = ask(responder, [("MaxRecvDataSegmentLength", "65536"),
                                ("MaxBurstLength", "4096"), ("X-com.example.k", "1"),
                                ("InitiatorAlias", "renamed")])
    assert keys.parse(out) == [("MaxBurstLength", "Reject"),
                               ("X-com.example.k", "NotUnderstood")]
    assert session.params.max_recv_data_segment_length == 65536
    assert session.params.max_burst_length == SessionParams().max_burst_length
    assert session.params.initiator_alias == "renamed"


def test_key_twice_in_one_exchange_is_a_protocol_error_6_2():
    responder, _ = make()
    with pytest.raises(ProtocolError):
        ask(responder, [("SendTargets", "All"), ("SendTargets", "All")])


def test_malformed_text_is_a_protocol_error_6_1():
    responder, _ = make()
    with pytest.raises(ProtocolError):
        ask(responder, raw=b"SendTargets")


def test_exchanges_one_after_another_are_independent_11_10():
    responder, _ = make()
    for itt in (1, 2, 3):
        flags, _, out = ask(responder, [("SendTargets", "All")], itt=itt)
        assert flags == F_FINAL and out
