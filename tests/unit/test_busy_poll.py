"""Busy polling (target.shell.server.Link._after_send, --busy-poll-us): the real Server on
a loopback socket with a memory LU, driven by our blocking initiator from a thread.

What is asserted: the commands a polling link catches are answered exactly as the loop's
path answers them (the data written is read back, SBC-4 5.15 / 5.40 READ(10)/WRITE(10));
a quick initiator is caught by polling; a slow one (gaps longer than the budget) costs at
most one missed poll, after which the link sleeps in the loop again; and with two links
nobody polls (one link's poll would hold up the other's commands)."""

from __future__ import annotations

import asyncio
import struct
import threading
import time

from target import app as appmod
from target.config import Config, LunConfig, TargetConfig
from target.shell.initiator import Initiator
from target.shell.server import Server

IQN = "iqn.2026-12.local.test:busy-poll"


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def serve(budget_us: float, client) -> Server:
    """Run a Server with a 1 MiB memory LU until `client(port, server)` returns (in a
    thread)."""
    cfg = Config(targets=[TargetConfig(iqn=IQN, luns=[LunConfig(size=1 << 20, serial="bp")])])
    application = appmod.build(cfg)
    server = Server(application.portal, [("127.0.0.1", 0)], busy_poll_us=budget_us)
    server._sample_load = lambda: setattr(server, "spin_allowed", True)  # a free core, always
    errors: list[BaseException] = []

    async def main() -> None:
        server.start()
        port = server.bound[0][1]

        def run() -> None:
            try:
                client(port, server)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        await server.shutdown(grace=0.1)

    try:
        asyncio.run(main())
    finally:
        application.close()
    if errors:
        raise errors[0]
    return server


def session(port: int, isid: int = 0x400000000001) -> Initiator:
    ini = Initiator("127.0.0.1", port, IQN, isid=isid, timeout=10).connect()
    ini.login()
    while ini.command(bytes(6)).status:  # TEST UNIT READY past the power-on unit attention
        pass
    return ini


def test_quick_initiator_is_caught_by_polling_and_answered_alike():
    def client(port: int, server: Server) -> None:
        with session(port) as ini:
            for i in range(200):
                data = bytes([i & 0xFF]) * 512
                assert ini.command(write10(i, 1), data=data).status == 0
                got = ini.command(read10(i, 1), read=512)
                assert (got.status, got.data) == (0, data), i
            ini.logout()

    server = serve(10_000, client)  # 10 ms: longer than any gap of this client
    assert server.spun >= 300, (server.spun, server.spin_missed)


def test_slow_initiator_costs_at_most_one_missed_poll_per_slow_gap_then_sleeps():
    def client(port: int, server: Server) -> None:
        with session(port) as ini:
            for i in range(20):
                time.sleep(0.005)  # 5 ms between commands: longer than the 1 ms budget
                assert ini.command(read10(i, 1), read=512).status == 0
            ini.logout()

    server = serve(1_000, client)
    # Each miss turns polling off until a gap shorter than the budget is seen again; the
    # gaps here are all long, so at most the first quick answers after login poll and miss.
    assert server.spin_missed <= 2, server.spin_missed


def test_two_links_never_poll():
    def client(port: int, server: Server) -> None:
        with session(port) as a, session(port, 0x400000000002) as b:
            before = (server.spun, server.spin_missed)
            for i in range(50):
                assert a.command(read10(i, 1), read=512).status == 0
                assert b.command(read10(i, 1), read=512).status == 0
            seen.append((before, (server.spun, server.spin_missed)))
            a.logout()
            b.logout()

    seen: list = []
    serve(10_000, client)
    (before, after), = seen
    assert after == before  # 100 commands on two links: not one polled for
