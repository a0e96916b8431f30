"""RFC 7143 iSCSI, as sans-IO objects: bytes in, PDUs and actions out.

pdu         the Basic Header Segment codec (hot path: one precompiled struct)
keys        text keys and the negotiation rules of RFC 7143 section 13
login       the login phase state machine (RFC 7143 section 6)
text        Text requests in full feature phase (SendTargets)
connection  one TCP connection: framing, digests, the full feature phase
session     the session: CmdSN window, TSIH, the session registry
events      what a connection tells its shell (TasksReady, TaskSetChanged, CloseWanted)
errors      ProtocolError, the error that ends a connection
portal      what login and discovery need from the server (targets, ACLs, addresses)
initiator   the initiator's sans-IO core (its blocking shell is target.shell.initiator)
"""
