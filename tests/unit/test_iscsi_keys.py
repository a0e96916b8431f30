"""Text keys and their negotiation (RFC 7143 6.1, 6.2, 12, 13)."""

from __future__ import annotations

import dataclasses

import pytest

from target.iscsi import keys
from target.iscsi.keys import (
    INITIATOR_ERROR,
    INVALID_DURING_LOGIN,
    KEYS,
    Negotiation,
    NegotiationError,
    Offers,
    Rule,
    Stage,
    TextError,
)
from target.iscsi.session import SessionParams

pytestmark = pytest.mark.unit

OP = Stage.OPERATIONAL


def answer(pairs, stage=OP, session_type="Normal", offers=None, negotiation=None):
    n = negotiation or Negotiation(offers or Offers())
    return dict(n.respond(pairs, stage, session_type)), n


# --- codec: 6.1 -------------------------------------------------------------------------


def test_parse_and_encode_round_trip_6_1():
    pairs = [("InitiatorName", "iqn.2026-11.local.test:i"), ("HeaderDigest", "CRC32C,None"),
             ("SendTargets", "")]
    data = keys.encode(pairs)
    assert data.endswith(b"\x00") and data.count(b"\x00") == 3
    assert keys.parse(data) == pairs


def test_parse_tolerates_trailing_nul_padding_6_1():
    assert keys.parse(b"A=1\x00\x00\x00\x00") == [("A", "1")]
    assert keys.parse(b"") == []


def test_parse_value_keeps_equals_signs_6_1():
    assert keys.parse(b"X-a=b=c\x00") == [("X-a", "b=c")]


@pytest.mark.parametrize("data", [
    b"NoEquals\x00",  # a pair without '='
    b"A=1",  # the last pair without its NUL
    b"=value\x00",  # empty key name
    b"K" * 64 + b"=1\x00",  # key names are at most 63 bytes
    b"A=\xff\xfe\x00",  # not UTF-8
    b"Bad Key=1\x00",  # a key name with a space
])
def test_malformed_text_is_a_protocol_error_6_1(data):
    with pytest.raises(TextError):
        keys.parse(data)


def test_key_name_of_63_bytes_is_accepted_6_1():
    assert keys.parse(b"X-" + b"k" * 61 + b"=1\x00")[0][0] == "X-" + "k" * 61


def test_numbers_decimal_and_hex_6_1():
    assert keys.parse_number("262144") == 262144
    assert keys.parse_number("0x1000") == 4096
    for bad in ("", "-1", "12a", "0x", "1.5", "٣"):
        assert keys.parse_number(bad) is None


def test_split_pieces_6_2():
    assert keys.split(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert keys.split(b"", 3) == [b""]


# --- result functions: 6.2.2, 6.2.3 -------------------------------------------------------


def test_result_functions_6_2():
    assert keys.result_min(16776192, 262144) == 262144
    assert keys.result_max(0, 2) == 2
    assert keys.result_and(True, False) is False and keys.result_and(True, True) is True
    assert keys.result_or(False, False) is False and keys.result_or(False, True) is True
    assert keys.result_list(["CRC32C", "None"], ["None", "CRC32C"]) == "CRC32C"
    assert keys.result_list(["MD5"], ["None"]) is None


def test_numerical_min_13_13_13_14():
    got, n = answer([("MaxBurstLength", "16776192"), ("MaxOutstandingR2T", "8"),
                     ("MaxConnections", "8"), ("DefaultTime2Retain", "0")])
    assert got == {"MaxBurstLength": "262144", "MaxOutstandingR2T": "1",
                   "MaxConnections": "1", "DefaultTime2Retain": "0"}
    assert n.params.max_burst_length == 262144 and n.params.default_time2retain == 0
    got, n = answer([("MaxBurstLength", "4096")])
    assert got["MaxBurstLength"] == "4096" and n.params.max_burst_length == 4096


def test_numerical_max_default_time2wait_13_15():
    got, n = answer([("DefaultTime2Wait", "0")])
    assert got["DefaultTime2Wait"] == "2" and n.params.default_time2wait == 2
    got, n = answer([("DefaultTime2Wait", "10")])
    assert got["DefaultTime2Wait"] == "10"


def test_error_recovery_level_min_gives_0_13_20():
    got, n = answer([("ErrorRecoveryLevel", "2")])
    assert got["ErrorRecoveryLevel"] == "0" and n.params.error_recovery_level == 0


def test_boolean_and_immediate_data_13_11():
    got, n = answer([("ImmediateData", "Yes")])
    assert got["ImmediateData"] == "Yes" and n.params.immediate_data is True
    got, n = answer([("ImmediateData", "Yes")], offers=Offers(immediate_data=False))
    assert got["ImmediateData"] == "No" and n.params.immediate_data is False
    got, n = answer([("ImmediateData", "No")])
    assert got["ImmediateData"] == "No"


def test_boolean_or_initial_r2t_and_in_order_13_10_13_18_13_19():
    got, n = answer([("InitialR2T", "No"), ("DataPDUInOrder", "No"),
                     ("DataSequenceInOrder", "No")])
    # InitialR2T: we offer No, so the initiator's No stands; in-order: we need Yes.
    assert got == {"InitialR2T": "No", "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes"}
    assert n.params.initial_r2t is False and n.params.data_pdu_in_order is True
    got, _ = answer([("InitialR2T", "No")], offers=Offers(initial_r2t=True))
    assert got["InitialR2T"] == "Yes"


@pytest.mark.parametrize("offered,chosen,crc", [
    ("CRC32C,None", "CRC32C", True),
    ("None,CRC32C", "None", False),
    ("None", "None", False),
    ("MD5,CRC32C", "CRC32C", True),
])
def test_list_first_of_originators_list_we_support_13_1(offered, chosen, crc):
    got, n = answer([("HeaderDigest", offered), ("DataDigest", offered)])
    assert got == {"HeaderDigest": chosen, "DataDigest": chosen}
    assert n.params.header_digest is crc and n.params.data_digest is crc


def test_list_with_nothing_we_support_is_rejected_6_2():
    got, n = answer([("HeaderDigest", "MD5")])
    assert got["HeaderDigest"] == "Reject"
    assert n.params.header_digest is False  # the default stays
    got, _ = answer([("HeaderDigest", "CRC32C")], offers=Offers(header_digests=("None",)))
    assert got["HeaderDigest"] == "Reject"
    got, _ = answer([("DataDigest", "None,,CRC32C")])
    assert got["DataDigest"] == "Reject"


def test_auth_method_none_chosen_from_list_12_1():
    got, n = answer([("AuthMethod", "CHAP,None")], stage=Stage.SECURITY)
    assert got == {"AuthMethod": "None"}
    got, n = answer([("AuthMethod", "CHAP")], stage=Stage.SECURITY)
    assert got == {"AuthMethod": "Reject"} and "AuthMethod" in n.rejected


# --- Reject, NotUnderstood, Irrelevant: 6.2, 13 -------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("MaxBurstLength", "511"), ("MaxBurstLength", "16777216"), ("FirstBurstLength", "abc"),
    ("MaxOutstandingR2T", "0"), ("DefaultTime2Wait", "3601"), ("ErrorRecoveryLevel", "3"),
    ("MaxConnections", "0"), ("ImmediateData", "Maybe"), ("InitialR2T", "yes"),
    ("MaxRecvDataSegmentLength", "511"), ("MaxRecvDataSegmentLength", "16777216"),
    ("MaxBurstLength", ""),
])
def test_out_of_range_or_malformed_value_is_rejected_6_2(key, value):
    defaults = SessionParams()
    got, n = answer([(key, value)])
    assert got == {key: "Reject"}
    assert n.params == defaults  # the key keeps its default, and nothing else moved


def test_hex_numbers_are_values_6_1():
    got, n = answer([("MaxBurstLength", "0x1000")])
    assert got["MaxBurstLength"] == "4096"


def test_value_over_255_bytes_is_rejected_6_1():
    got, _ = answer([("InitiatorAlias", "a" * 256)])
    assert got == {"InitiatorAlias": "Reject"}


@pytest.mark.parametrize("key", ["X-com.example.Foo", "X#org.example.bar", "FooBar",
                                 "RDMAExtensions"])
def test_unknown_and_extension_keys_are_not_understood_6_2_13_5(key):
    got, _ = answer([(key, "Yes")])
    assert got == {key: "NotUnderstood"}


def test_irrelevant_in_discovery_session_13():
    got, n = answer([("MaxBurstLength", "4096"), ("InitialR2T", "No"),
                     ("ImmediateData", "No"), ("FirstBurstLength", "4096"),
                     ("MaxOutstandingR2T", "4"), ("DataPDUInOrder", "Yes"),
                     ("DataSequenceInOrder", "Yes"), ("MaxConnections", "1"),
                     ("HeaderDigest", "None"), ("DefaultTime2Wait", "2")],
                    session_type="Discovery")
    irrelevant = {"MaxBurstLength", "InitialR2T", "ImmediateData", "FirstBurstLength",
                  "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
                  "MaxConnections"}
    assert {k for k, v in got.items() if v == "Irrelevant"} == irrelevant
    assert got["HeaderDigest"] == "None" and got["DefaultTime2Wait"] == "2"
    assert n.params.max_burst_length == SessionParams().max_burst_length


def test_obsolete_markers_13_appendix():
    got, _ = answer([("IFMarker", "Yes"), ("OFMarker", "No"), ("IFMarkInt", "2048"),
                     ("OFMarkInt", "2048~4096")])
    assert got == {"IFMarker": "No", "OFMarker": "No", "IFMarkInt": "Reject",
                   "OFMarkInt": "Reject"}


def test_declarative_keys_get_no_answer_6_2_13_12():
    got, n = answer([("InitiatorName", "iqn.2026-11.local.test:i"),
                     ("InitiatorAlias", "host"), ("MaxRecvDataSegmentLength", "65536"),
                     ("SessionType", "Normal")])
    assert got == {}
    assert n.params.max_recv_data_segment_length == 65536
    assert n.params.initiator_alias == "host"


def test_first_burst_length_not_above_max_burst_length_13_14():
    got, n = answer([("FirstBurstLength", "65536"), ("MaxBurstLength", "4096")])
    assert got == {"FirstBurstLength": "4096", "MaxBurstLength": "4096"}
    assert list(got) == ["FirstBurstLength", "MaxBurstLength"]  # answers in request order
    n = Negotiation(Offers())
    n.respond([("FirstBurstLength", "65536")], OP)
    n.respond([("MaxBurstLength", "8192")], OP)
    p = n.finish()
    assert p.first_burst_length == 8192 == p.max_burst_length


# --- duplicates and stages: 6.2, 6.3 ------------------------------------------------------


def test_key_twice_in_one_request_is_initiator_error_6_2():
    with pytest.raises(NegotiationError) as e:
        answer([("MaxBurstLength", "4096"), ("MaxBurstLength", "4096")])
    assert e.value.status == INITIATOR_ERROR


def test_key_again_later_in_the_negotiation_is_initiator_error_6_2():
    n = Negotiation(Offers())
    n.respond([("HeaderDigest", "None")], OP)
    with pytest.raises(NegotiationError) as e:
        n.respond([("HeaderDigest", "CRC32C")], OP)
    assert e.value.status == INITIATOR_ERROR


def test_security_key_in_operational_stage_is_initiator_error_6_3():
    with pytest.raises(NegotiationError) as e:
        answer([("AuthMethod", "None")], stage=OP)
    assert e.value.status == INITIATOR_ERROR


def test_operational_key_in_security_stage_is_negotiated_6_3():
    got, n = answer([("HeaderDigest", "CRC32C")], stage=Stage.SECURITY)
    assert got == {"HeaderDigest": "CRC32C"}


def test_send_targets_during_login_is_invalid_during_login_13_3():
    with pytest.raises(NegotiationError) as e:
        answer([("SendTargets", "All")], stage=OP)
    assert e.value.status == INVALID_DURING_LOGIN


@pytest.mark.parametrize("key", ["TargetAlias", "TargetAddress", "TargetPortalGroupTag"])
def test_target_only_keys_from_the_initiator_are_initiator_error_13(key):
    with pytest.raises(NegotiationError) as e:
        answer([(key, "1")])
    assert e.value.status == INITIATOR_ERROR


def test_full_feature_phase_only_use_all_keys_13():
    got, n = answer([("MaxRecvDataSegmentLength", "4096"), ("MaxBurstLength", "4096"),
                     ("HeaderDigest", "CRC32C"), ("InitiatorAlias", "x"),
                     ("SendTargets", "All")], stage=Stage.FFP)
    assert got == {"MaxBurstLength": "Reject", "HeaderDigest": "Reject"}
    assert n.params.max_recv_data_segment_length == 4096


def test_declare_our_max_recv_data_segment_length_13_12():
    n = Negotiation(Offers(max_recv_data_segment_length=131072))
    assert n.declare("MaxRecvDataSegmentLength", 131072) == ("MaxRecvDataSegmentLength",
                                                               "131072")
    assert n.params.target_max_recv_data_segment_length == 131072


# --- the table ----------------------------------------------------------------------------


def test_table_is_consistent_13():
    for key in KEYS.values():
        if key.rule in (Rule.MIN, Rule.MAX, Rule.AND, Rule.OR, Rule.LIST):
            Offers().ours(key.name)  # every negotiated key has our value (KeyError if not)
        if key.rule in (Rule.MIN, Rule.MAX):
            assert key.lo < key.hi
    for name in ("HeaderDigest", "DataDigest", "MaxConnections", "SendTargets", "TargetName",
                 "InitiatorName", "TargetAlias", "InitiatorAlias", "TargetAddress",
                 "TargetPortalGroupTag", "InitialR2T", "ImmediateData",
                 "MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength",
                 "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
                 "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel", "SessionType",
                 "AuthMethod"):
        assert name in KEYS


# Each operational key lands in the SessionParams field named after it (RFC 7143 13.x:
# the key defines that parameter), with a value other than the field's default, and
# moves no other field (keys.store() is the explicit key -> field mapping).
@pytest.mark.parametrize("key,value,offers,field,expected", [
    ("HeaderDigest", "CRC32C", {}, "header_digest", True),  # 13.1
    ("DataDigest", "CRC32C", {}, "data_digest", True),  # 13.1
    ("MaxConnections", "2", {"max_connections": 4}, "max_connections", 2),  # 13.2
    ("TargetName", "iqn.2026-11.local.test:t", {}, "target_name", "iqn.2026-11.local.test:t"),
    ("InitiatorName", "iqn.x:i", {}, "initiator_name", "iqn.x:i"),  # 13.5
    ("InitiatorAlias", "host one", {}, "initiator_alias", "host one"),  # 13.7
    ("InitialR2T", "No", {}, "initial_r2t", False),  # 13.10: OR
    ("ImmediateData", "No", {}, "immediate_data", False),  # 13.11: AND
    ("MaxRecvDataSegmentLength", "4096", {}, "max_recv_data_segment_length", 4096),  # 13.12
    ("MaxBurstLength", "4096", {}, "max_burst_length", 4096),  # 13.13: min
    ("FirstBurstLength", "4096", {}, "first_burst_length", 4096),  # 13.14: min
    ("DefaultTime2Wait", "5", {}, "default_time2wait", 5),  # 13.15: max
    ("DefaultTime2Retain", "7", {}, "default_time2retain", 7),  # 13.16: min
    ("MaxOutstandingR2T", "8", {"max_outstanding_r2t": 16}, "max_outstanding_r2t", 8),
    ("DataPDUInOrder", "No", {"data_pdu_in_order": False}, "data_pdu_in_order", False),
    ("DataSequenceInOrder", "No", {"data_sequence_in_order": False},
     "data_sequence_in_order", False),  # 13.19: OR
    ("ErrorRecoveryLevel", "1", {"error_recovery_level": 2}, "error_recovery_level", 1),
    ("SessionType", "Discovery", {}, "session_type", "Discovery"),  # 13.21
])
def test_each_key_sets_its_own_parameter_13(key, value, offers, field, expected):
    _, n = answer([(key, value)], offers=Offers(**offers))
    assert n.params == dataclasses.replace(SessionParams(), **{field: expected})


def test_keys_without_a_parameter_set_none_13():
    # AuthMethod (12.1), TaskReporting (13.23), iSCSIProtocolLevel (RFC 7144 7.1.1) are
    # answered but are no field of SessionParams: the results hold them.
    got, n = answer([("AuthMethod", "None")], stage=Stage.SECURITY)
    assert got == {"AuthMethod": "None"} and n.params == SessionParams()
    got, n = answer([("TaskReporting", "RFC3720"), ("iSCSIProtocolLevel", "1")])
    assert got == {"TaskReporting": "RFC3720", "iSCSIProtocolLevel": "1"}
    assert n.params == SessionParams()
