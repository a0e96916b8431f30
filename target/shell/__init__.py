"""The asyncio shell: the only code that touches sockets, the event loop, the clock and
worker threads (server, dispatch, control). Everything under target.iscsi and target.scsi
is sans-IO and is driven from here (DESIGN.md principle 1; docs/ARCHITECTURE.md)."""
