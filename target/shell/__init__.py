"""The shells: the only code that touches sockets, the event loop, the clock and worker
threads. The target's is asyncio (server, dispatch, control); our initiator's is blocking
(initiator, over target.iscsi.initiator's sans-IO core). Everything under target.iscsi and
target.scsi is sans-IO and is driven from here (DESIGN.md principle 1; docs/ARCHITECTURE.md)."""
