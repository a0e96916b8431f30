"""target.shell.server.Link._flush: what the connection hands over reaches the peer whole
and in order (a byte stream, RFC 7143 4.2.x's PDUs back to back), whether the kernel takes
it at once (the fast path) or a piece at a time (the queue and the writer callback); a
memoryview of a store's buffer goes out as it is, unjoined.

A socketpair with small buffers forces the partial sends; the Link's connection is a stub
that hands out prepared buffers (the sans-IO Connection is tested elsewhere)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque

from target.shell import server as srvmod


class Handing:
    peer = "stub"

    def __init__(self) -> None:
        self.out: list = []

    def data_to_send(self) -> list:
        out, self.out = self.out, []
        return out


def link_on(sock: socket.socket, loop) -> srvmod.Link:
    link = srvmod.Link.__new__(srvmod.Link)  # no Server: only the send side is used
    link.server, link.loop, link.sock, link.fd = None, loop, sock, sock.fileno()
    link.conn = Handing()
    link.pending, link.pending_bytes = deque(), 0
    link.reading, link.writing, link.closing, link.closed = True, False, False, False
    return link


def pieces(seed: int) -> list:
    data = os.urandom(seed)
    return [data[:48], memoryview(bytearray(data[48:70_000])), b"\0\0", data[70_000:70_048],
            memoryview(data)[70_048:]]


def test_everything_arrives_in_order_through_partial_sends():
    loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    try:
        for s in (a, b):
            s.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        link = link_on(a, loop)
        want = b""
        for seed in (200_000, 100, 150_000):  # one that fits at once between two that do not
            batch = pieces(seed)
            want += b"".join(bytes(p) for p in batch)
            link.conn.out = batch
            link._flush()
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(want):
                try:
                    got.extend(b.recv(1 << 16))
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # the writer callback sends the rest

        loop.run_until_complete(asyncio.wait_for(drain(), 30))
        assert bytes(got) == want
        assert not link.pending and link.pending_bytes == 0 and not link.writing
    finally:
        loop.close()
        a.close()
        b.close()


def test_a_send_the_kernel_takes_whole_leaves_nothing_queued():
    loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        link = link_on(a, loop)
        header, data = bytes(range(48)), memoryview(bytearray(b"x" * 4096))
        link.conn.out = [header, data]
        link._flush()
        assert not link.pending and link.pending_bytes == 0 and not link.writing
        assert b.recv(8192) == header + bytes(data)
    finally:
        loop.close()
        a.close()
        b.close()
