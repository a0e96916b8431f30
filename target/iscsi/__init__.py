"""RFC 7143 iSCSI, as sans-IO objects: bytes in, PDUs and actions out.

pdu         the Basic Header Segment codec (hot path: one precompiled struct)
keys        text keys and the negotiation rules of RFC 7143 section 13
login       the login phase state machine (RFC 7143 section 6)
text        Text requests in full feature phase (SendTargets)
connection  one TCP connection: framing, digests, the full feature phase
session     the session: CmdSN window, TSIH, the session registry
"""
