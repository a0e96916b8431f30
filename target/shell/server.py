"""The asyncio shell: sockets in, sans-IO connections, tasks executed, buffers out.

Rules:
- This module owns the target's sockets and the event loop (DESIGN.md principle 1); of
  the rest of the target only dispatch.py (timers, the worker threads' hand-back) uses
  the loop it is given.
- Receiving: recv_into() the buffer the Connection offers (its scratch space, or the
  write buffer of the command whose data is arriving), so data is received in place.
  Under uvloop a socket error (a reset) calls the reader once and ends the watch, so a
  reset behind unread bytes can leave a link no callback will ever close: every
  ERROR_SWEEP seconds the pending socket error (SO_ERROR) of every link is looked at and a
  link that has one is closed (issue 11). Not per receive: that was one getsockopt()
  system call per command (docs/COST.md).
- Sending: the Connection's output buffers go out with socket.sendmsg() as they are
  (header bytes and memoryviews of read data, never joined); when nothing waits they go
  out at once and only what the kernel does not take is queued; what waits goes out from
  the writer callback, and the connection stops reading past a high-water mark.
- Busy polling (--busy-poll-us, config busy_poll_us: 50 us unless set; 0 turns it off): after
  a receive callback has sent its answers, a link whose connection has nothing
  outstanding (Connection.quiescent) keeps receiving in a loop for up to that budget
  instead of going back to epoll, so the initiator's next command at queue depth 1 is
  taken without a sleep and a wake-up (measured in docs/COST.md). It polls only when it is
  the process's only link (a poll holds up the other links' callbacks), when the
  initiator's last gap (our send to its next PDU) was shorter than the budget (a poll
  that would miss is not started; one that misses turns polling off until a short gap is
  seen again), and while a core is free (/proc/loadavg's running processes, this one
  included, at most the CPUs we may use, and under MAX_STEAL of the CPU time stolen by
  the hypervisor, /proc/stat; sampled every LOAD_SAMPLE s). It never waits
  for a worker thread or a timer: it stops as soon as a command is outstanding; after
  SPIN_ROUNDS receives it lets the loop run its other callbacks (call_soon) and goes on.
- Every CAPACITY_POLL seconds the stores' sizes are looked at again, so a grown image
  file raises CAPACITY DATA HAS CHANGED for every nexus (the shell owns the clock).
- With a tracer (--trace, --trace-live) each command is timed and recorded after it
  completes; without one the task loop has no trace code in it at all.
- The Link consumes its Connection's events (target.iscsi.events) after every receive
  and when the connection's wakeup runs (a change made from outside a receive: another
  session's task management, a reinstatement): TasksReady go to their LU's task set
  through its Dispatcher (target.shell.dispatch: elevator, dispatch depth, rotational model;
  tasks for a LUN with no LU are answered by the device at once), TaskSetChanged pumps
  the task sets again, CloseWanted closes the link once its output is sent. It reads
  none of the connection's flags and resets none.
- Limits ([limits] of the config, target.config.LimitsConfig):
  - a connection that has not reached full feature phase `login_timeout` seconds after it
    was accepted is closed (a log line naming the peer; of many at once, the first and
    then a count per LOG_INTERVAL); looked at every LOGIN_SWEEP s;
  - at most `max_connections` links per listening socket and `max_connections_per_address`
    from one IP address on it: a connection beyond either first sheds the oldest link of
    that socket (of that address) still logging in, and is closed at once when there is
    none to shed (every one is a session). Closed, not answered 03/02: the limit is
    met at accept(), before any PDU, and a peer that sends nothing gets no answer anyway;
  - `max_sessions` and `max_buffered_bytes` are the Connection's (target.iscsi.connection);
  - queued Data-In: a link stops reading while more than HIGH_WATER bytes wait to be sent;
  - accept() failing with EMFILE/ENFILE (or ENOBUFS/ENOMEM) while a connection waits in
    the accept queue (poll(2) says so; Linux takes the descriptor before it looks at the
    queue, net/socket.c __sys_accept4_file, so accept() fails so with none waiting too,
    and then nothing is done): the oldest links still logging in are shed (SHED_BATCH at
    a time) and accept() is tried again at once; with none to shed, the listening
    sockets are not read for ACCEPT_BACKOFF s. Either way the log says so once per
    LOG_INTERVAL s, with the count since the last line (issue 15: retrying at once spun
    at 100% CPU and logged 77,000 lines a second).
  With --workers the portal process applies the accept() rules (shedding the connections
  still waiting for their first PDU too: shed_hooks, target.shell.workers) but keeps no
  connection counts (max_connections, max_connections_per_address are not applied
  there); each worker applies login_timeout, max_sessions and max_buffered_bytes to the
  connections handed to it.
- A session that ends gives its memory back: after a link that had a session closes,
  target.malloc.trim() returns the heap's free pages to the system (malloc_trim(3)),
  at most once per TRIM_INTERVAL s.
- The event loop is uvloop when it is installed, or asyncio's own (`--event-loop`).
- run() sets the C allocator's thresholds first (target.malloc: fresh per-command data
  buffers are reused from the heap, not mapped and faulted in each time).
- The control socket (target.shell.control) is served here too: a unix socket, JSON lines.
- Shutdown (SIGINT/SIGTERM): stop accepting, ask every full-feature session to log out
  (Async Message, event 1, RFC 7143 11.9.1), wait a short while, drop what is left, then
  flush and close the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from target import malloc
from target.config import LimitsConfig
from target.faults import Faults
from target.iscsi.connection import Connection, Phase
from target.iscsi.events import CloseWanted, TaskSetChanged, TasksReady
from target.iscsi.portal import Portal
from target.shell.dispatch import Dispatcher, pump_all, run_ready
from target.trace import Tracer

log = logging.getLogger(__name__)

IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
HIGH_WATER = 8 << 20  # stop reading from a peer that does not take its responses
RECV_ROUNDS = 16  # recv_into() calls per readable event before yielding to the loop
CAPACITY_POLL = 2.0  # seconds between looks at the stores' sizes
ERROR_SWEEP = 1.0  # seconds between looks at every link's pending socket error (uvloop)
LOAD_SAMPLE = 0.1  # seconds between looks at the machine's running processes (busy polling)
SPIN_ROUNDS = 16  # receives busy polling takes before the loop gets a turn
MAX_STEAL = 0.05  # busy polling stops while the hypervisor steals this share of CPU time
LOGIN_SWEEP = 1.0  # seconds between looks for logins over login_timeout (at most)
SHED_BATCH = 4  # links still logging in closed per failed accept()
ACCEPT_BACKOFF = 0.25  # s the listening sockets rest when accept() fails with none to shed
LOG_INTERVAL = 5.0  # s: at most one line per kind of refusal in this time
TRIM_INTERVAL = 1.0  # s between malloc_trim calls after sessions end
_NO_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PROC_LOADAVG = "/proc/loadavg"
PROC_STAT = "/proc/stat"
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Link:
    """One accepted socket driven by one Connection."""

    def __init__(self, server: Server, sock: socket.socket, peer: str,
                 listener: int | None = None, ip: str = "") -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        local = sock.getsockname()
        limits = server.limits
        self.conn = Connection(server.portal, _address(local[0], local[1]), peer,
                               wakeup=self._wakeup,
                               tmf_faults=server.faults,  # tmf-reject rules (target.faults)
                               max_sessions=limits.max_sessions,
                               max_buffered=limits.max_buffered_bytes)
        self.accepted_at = self.loop.time()
        self.listener = listener  # the listening socket's fd it came from (the counts)
        self.ip = ip
        self.pending: deque = deque()
        self.pending_bytes = 0
        self.reading = False
        self.writing = False
        self.closing = False  # CloseWanted: close once the output is sent
        self.closed = False
        self.sent_at = 0.0  # busy polling: when we last went back to the loop after a send
        self.last_gap = float("inf")  # and the initiator's gap to the receive that followed
        self.poll_queued = False  # busy polling resumes after the loop's turn
        self._start_reading()

    def feed(self, data: bytes) -> None:
        """Bytes already read from the socket by someone else (the portal process read
        the first Login PDU, target.shell.workers): handled as if just received."""
        if data:
            self.conn.receive_data(data)
            self._handle_events()
        self._flush()

    def _start_reading(self) -> None:
        if not self.reading and not self.closed:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def _stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _on_readable(self) -> None:
        if self.server.busy_poll:
            # How long the initiator took since our last send: a gap shorter than the
            # spin budget says polling would have caught this PDU (Link._after_send).
            self.last_gap = time.perf_counter() - self.sent_at
        get_buffer = self.conn.get_buffer
        recv_into = self.sock.recv_into
        for _ in range(RECV_ROUNDS):
            buf = get_buffer()
            try:
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._receive_failed(exc)
                return
            if not self._received(n):
                return
            if self.closing or n < len(buf):
                break
        self._flush()
        server = self.server
        if server.busy_poll:
            self._after_send(server)

    def _received(self, n: int) -> bool:
        """`n` bytes came into the connection's buffer: parse them and handle the events
        they made; False when the peer has closed (n == 0) and so has the link."""
        if n == 0:
            self.close()
            return False
        self.conn.buffer_updated(n)
        self._handle_events()
        return True

    def _handle_events(self) -> None:
        """Everything the connection has to tell (target.iscsi.events), in order."""
        next_event = self.conn.next_event
        while (event := next_event()) is not None:
            _HANDLERS[type(event)](self, event)

    def _receive_failed(self, exc: OSError) -> None:
        log.info("%s: receive failed: %s", self.conn.peer, exc)
        self.close()

    def _after_send(self, server: Server, resumed: bool = False) -> None:
        """Busy polling (--busy-poll-us): wait for the initiator's next PDU by receiving
        in a loop rather than in epoll, when that is likely to pay (see Server).
        `resumed`: called back after the loop's turn; until then no other poll starts."""
        if resumed:
            self.poll_queued = False
        elif self.poll_queued:
            return
        clock = time.perf_counter
        now = clock()
        spin = server.busy_poll
        if self.closed or self.pending or not server.spin_allowed \
                or len(server.links) != 1 or self.last_gap > spin:
            self.sent_at = now
            return
        conn = self.conn
        recv_into = self.sock.recv_into
        for _ in range(SPIN_ROUNDS):
            if not conn.quiescent:
                break
            deadline = clock() + spin
            while True:
                try:
                    n = recv_into(conn.get_buffer())
                    break
                except (BlockingIOError, InterruptedError):
                    if clock() > deadline:
                        self.sent_at = clock() - spin  # missed: no spin until a short gap
                        server.spin_missed += 1
                        return
                except OSError as exc:
                    self._receive_failed(exc)
                    return
            if not self._received(n):
                return
            server.spun += 1
            self._flush()
            if self.closed or self.pending:
                return
        else:
            # SPIN_ROUNDS commands taken by polling: the loop gets its turn (timers, the
            # control socket, signals, new connections), then polling goes on.
            self.sent_at = clock()
            self.poll_queued = True
            self.loop.call_soon(self._after_send, server, True)
            return
        self.sent_at = clock()

    def _socket_error(self) -> bool:
        """uvloop reports a socket error (POLLERR: a reset) by calling the reader once and
        then no longer watching the socket; a reset behind unread bytes then shows only as
        a short read. The pending error (SO_ERROR) says whether that happened: if so the
        link is closed now, or it would stay open for good with its session, reservations
        and buffers. Server._sweep_errors asks every ERROR_SWEEP seconds."""
        try:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            err = errno.EBADF
        if not err:
            return False
        log.info("%s: connection lost: %s", self.conn.peer, os.strerror(err))
        self.close()
        return True

    def _run_tasks(self, event: TasksReady) -> None:
        run_ready(self, event, self.server.dispatchers, self.server.tracer)

    def _pump_all(self, _event: TaskSetChanged | None = None) -> None:
        pump_all(self, self.server.dispatchers)

    def _close_wanted(self, _event: CloseWanted) -> None:
        self.closing = True

    def flush(self) -> None:
        """Send what the connection has queued (another link's task completed here)."""
        self._flush()

    def _wakeup(self) -> None:
        """The connection has events from outside a receive (another session's abort, a
        reinstatement): handle them and send, once the current callback is over."""
        self.loop.call_soon(self._on_wakeup)

    def _on_wakeup(self) -> None:
        if self.closed:
            return
        self._handle_events()
        self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        conn = self.conn
        out = conn.data_to_send()
        pending = self.pending
        if not pending and len(out) <= IOV_MAX:
            # Nothing waits: the new buffers go out at once, and only what the kernel
            # does not take is queued (the common case: all of it is taken).
            total = 0
            for buf in out:
                total += buf.nbytes if buf.__class__ is memoryview else len(buf)
            sent = 0
            if total:
                try:
                    sent = self.sock.sendmsg(out)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    self._send_failed(exc)
                    return
            if sent == total:
                if self.writing:
                    self.loop.remove_writer(self.fd)
                    self.writing = False
                if self.closing:
                    self.close()
                elif not self.reading:
                    self._start_reading()
                return
            pending.extend(out)
            self.pending_bytes += total - sent
            self._drop_sent(sent)
            out = ()
        for buf in out:
            pending.append(buf)
            self.pending_bytes += buf.nbytes if buf.__class__ is memoryview else len(buf)
        sendmsg = self.sock.sendmsg
        while pending:
            batch = list(pending)[:IOV_MAX] if len(pending) > IOV_MAX else pending
            try:
                sent = sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._send_failed(exc)
                return
            self.pending_bytes -= sent
            self._drop_sent(sent)
        if pending:
            if not self.writing:
                self.loop.add_writer(self.fd, self._flush)
                self.writing = True
            if self.pending_bytes > HIGH_WATER:
                self._stop_reading()
        else:
            if self.writing:
                self.loop.remove_writer(self.fd)
                self.writing = False
            if self.closing:
                self.close()
                return
            self._start_reading()

    def _drop_sent(self, sent: int) -> None:
        """Take the `sent` bytes the kernel took off the front of the queue."""
        pending = self.pending
        while sent:
            head = pending[0]
            size = head.nbytes if head.__class__ is memoryview else len(head)
            if sent >= size:
                pending.popleft()
                sent -= size
            else:
                pending[0] = memoryview(head)[sent:]
                sent = 0

    def _send_failed(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            log.info("%s: send failed: %s", self.conn.peer, exc)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        conn = self.conn
        conn.connection_lost()  # it drops its wakeup: no cycle Link <-> Connection
        while (event := conn.next_event()) is not None:
            if type(event) is TaskSetChanged:
                # Its tasks left the task sets: what waited for them may start now.
                self.loop.call_soon(pump_all, self, self.server.dispatchers)
        self.pending.clear()
        self.pending_bytes = 0
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.forget(self)


# What the Link does with each event: plain functions, so no Link holds a reference
# cycle through bound methods of its own (a dead link's buffers go with it at once).
_HANDLERS = {TasksReady: Link._run_tasks, TaskSetChanged: Link._pump_all,
             CloseWanted: Link._close_wanted}


class Attachment(Protocol):
    """Something that runs with the server's loop: target.shell.workers's Router (the
    portal process) and Handoffs (a worker)."""

    def start(self, server: Server) -> None: ...
    def stopping(self) -> None: ...  # shutdown began: stop taking new work
    async def stopped(self) -> None: ...  # the links are closed: end


class Server:
    """Listening sockets on the portal addresses, and their links."""

    def __init__(self, portal: Portal, listen: list[tuple[str, int]],
                 on_listening: Callable[[list[tuple[str, int]]], None] | None = None,
                 nop_interval: float = 0.0, tracer: Tracer | None = None,
                 control=None, control_path: Path | None = None,
                 faults: Faults | None = None,
                 announce: list[tuple[str, int]] | None = None,
                 busy_poll_us: float = 0.0, limits: LimitsConfig | None = None) -> None:
        self.portal = portal
        self.faults = faults if faults is not None else Faults()
        self.control = control  # target.shell.control.Control answering on control_path
        self.control_path = control_path
        self._control_server: asyncio.AbstractServer | None = None
        self.tracer = tracer  # None: tracing off, and nothing on the hot path
        self.listen = listen
        # The addresses SendTargets reports when this server listens on none itself
        # (a worker: the portal process listens, target.shell.workers).
        self.announce = announce or []
        self.on_listening = on_listening
        # Who takes an accepted socket instead of a Link of its own (the portal
        # process's router), and what else runs with the loop.
        self.accept_hook: Callable[[socket.socket, str], None] | None = None
        # Who else holds connections not logged in (the router's, before their first
        # PDU): each call closes its oldest and returns its peer, or None.
        self.shed_hooks: list[Callable[[], str | None]] = []
        self.attachments: list[Attachment] = []
        self.serving = False
        self.busy_poll = busy_poll_us / 1e6  # seconds a quiescent link polls (0: never)
        self.spin_allowed = False  # a core is free (Server._sample_load)
        self._jiffies = (0, 0)  # /proc/stat's total and steal at the last look
        self.spun = 0  # receives that polling caught
        self.spin_missed = 0  # polls that ended with nothing received
        self.nop_interval = nop_interval  # NOP-In keepalive period; 0 disables it
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.listeners: list[socket.socket] = []
        self.links: set[Link] = set()
        self.limits = limits if limits is not None else LimitsConfig()
        # Links not yet seen in full feature phase, oldest first (login_timeout, shedding).
        self.logging_in: dict[Link, None] = {}
        self.per_listener: dict[int, int] = {}  # listening fd -> its links
        self.per_address: dict[tuple[int, str], int] = {}  # (listening fd, IP) -> links
        self.accepting = False  # the listening sockets are being read
        self._told: dict[str, tuple[float, int]] = {}  # kind -> (last line, since then)
        self._trim_due = False
        self.shed = 0  # links closed to make room (counts, for tests and status)
        self.refused = 0  # connections closed at once by a limit
        self.dispatchers: dict = {}  # LogicalUnit -> target.shell.dispatch.Dispatcher
        self.bound: list[tuple[str, int]] = []
        self._stop: asyncio.Event | None = None
        # uvloop calls a reader once on a socket error and stops watching (see Link).
        self.reader_called_once_on_error = False

    def bind(self) -> list[tuple[str, int]]:
        """Bind the listen addresses (no listen() yet, no loop needed); the bound pairs.
        start() binds them if this was not called."""
        for host, port in self.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            lsock = socket.socket(family, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                lsock.bind((host, port))
            except OSError as exc:
                lsock.close()
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") \
                    from None
            lsock.setblocking(False)
            self.listeners.append(lsock)
            self.bound.append(lsock.getsockname()[:2])
        return self.bound

    def start(self) -> list[tuple[str, int]]:
        """Bind (unless bind() did) and listen; returns the bound (host, port) pairs."""
        self.loop = asyncio.get_running_loop()
        self.reader_called_once_on_error = type(self.loop).__module__.startswith("uvloop")
        for name, entry in self.portal.targets.items():
            if entry.device is None:  # served by a worker process
                continue
            for lu in entry.device.luns.values():
                self.dispatchers[lu] = Dispatcher(self.loop, lu, self.tracer, self.faults, name)
        if self.listen and not self.listeners:
            self.bind()
        for lsock in self.listeners:
            lsock.listen(128)
        self._resume_accepting()
        self.loop.call_later(min(LOGIN_SWEEP, self.limits.login_timeout / 4),
                             self._sweep_logins)
        self.serving = True
        self.portal.addresses = [_address(h, p) for h, p in self.bound or self.announce]
        for attachment in self.attachments:
            attachment.start(self)
        if self.nop_interval > 0:
            self.loop.call_later(self.nop_interval, self._keepalive)
        self.loop.call_later(CAPACITY_POLL, self._watch_capacity)
        if self.reader_called_once_on_error:
            self.loop.call_later(ERROR_SWEEP, self._sweep_errors)
        if self.busy_poll:
            self._sample_load()
        if self.on_listening:
            self.on_listening(self.bound)
        return self.bound

    async def start_control(self) -> None:
        """The control socket (target.shell.control): JSON lines; a 0700 directory of ours,
        a 0600 socket, peers other than our uid and root refused (SO_PEERCRED), every
        request line checked (control.check_line) before it is answered."""
        from target.shell import control as ctl

        path = self.control_path
        if self.control is None or path is None:
            return
        ctl.prepare_directory(path.parent, ours=path.parent == ctl.runtime_dir())
        control = self.control

        async def serve_client(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
            try:
                sock = writer.get_extra_info("socket")
                pid, uid, _ = ctl.peer_credentials(sock)
                refusal = ctl.peer_refusal(uid)
                if refusal is not None:
                    log.warning("control socket: pid %d uid %d refused", pid, uid)
                    writer.write(ctl.error_line(refusal))
                    await writer.drain()
                    return
                while True:
                    try:
                        line = await reader.readline()
                    except ValueError:  # longer than the limit: the rest is unframed
                        writer.write(ctl.error_line(
                            f"bad request: a request line is at most {ctl.MAX_REQUEST} "
                            "bytes; closing the connection"))
                        await writer.drain()
                        return
                    if not line:
                        return
                    request, error = ctl.check_line(line)
                    writer.write(error if request is None else await control.answer_line(line))
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        sock = ctl.bind_socket(path)
        self._control_server = await asyncio.start_unix_server(serve_client, sock=sock,
                                                               limit=ctl.MAX_REQUEST)

    def stop_control(self) -> None:
        if self._control_server is not None:
            self._control_server.close()
            self._control_server = None
            if self.control_path is not None:
                with contextlib.suppress(OSError):
                    self.control_path.unlink()

    def _accept(self, lsock: socket.socket) -> None:
        key = lsock.fileno()
        for _ in range(16):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _NO_FDS:
                    if not _connection_waiting(lsock):
                        # Linux takes the descriptor before it looks at the queue: an
                        # accept() with no connection waiting fails so too. Nothing to
                        # make room for; the loop calls again when one arrives.
                        return
                    self._out_of_descriptors(exc)
                    if self.accepting:
                        continue  # room was made: the next connection waiting comes in
                    return
                self._tell("accept", "accept failed: %s", exc)
                return
            ip = addr[0]
            peer = _address(ip, addr[1])
            if not self._room_for(key, ip, peer):
                self.refused += 1
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("connection from %s", peer)
            if self.accept_hook is not None:
                self.accept_hook(sock, peer)
            else:
                self.adopt(sock, peer, listener=key, ip=ip)

    def _room_for(self, key: int, ip: str, peer: str) -> bool:
        """[limits] max_connections and max_connections_per_address on listening socket
        `key`: True when a new link from `ip` may come in, after shedding the oldest
        link still logging in that holds the place; False when none can be shed."""
        limits = self.limits
        if self.per_listener.get(key, 0) >= limits.max_connections:
            victim = self._oldest_logging_in(lambda link: link.listener == key)
            what = f"max_connections ({limits.max_connections})"
        elif self.per_address.get((key, ip), 0) >= limits.max_connections_per_address:
            victim = self._oldest_logging_in(
                lambda link: link.listener == key and link.ip == ip)
            what = f"max_connections_per_address ({limits.max_connections_per_address})"
        else:
            return True
        if victim is None:
            self._tell("refused " + what, "%s: refused: %s reached, every connection "
                       "logged in", peer, what)
            return False
        self._tell("shed " + what, "%s reached: closed the oldest connection still logging in, %s",
                   what, victim.conn.peer)
        self.shed += 1
        victim.close()
        return True

    def _oldest_logging_in(self, which: Callable[[Link], bool] = lambda link: True,
                           ) -> Link | None:
        for link in list(self.logging_in):
            if link.closed or link.conn.phase is not Phase.LOGIN:
                self.logging_in.pop(link, None)
            elif which(link):
                return link
        return None

    def _out_of_descriptors(self, exc: OSError) -> None:
        """accept() found no descriptor (or no memory) for a new connection: shed the
        oldest links still logging in so that it can come in, or, with none, stop reading
        the listening sockets for ACCEPT_BACKOFF s (not to retry at once: a spin)."""
        shed = []
        for _ in range(SHED_BATCH):
            victim = self._oldest_logging_in()
            if victim is not None:
                shed.append(victim.conn.peer)
                victim.close()
                continue
            peer = next((p for hook in self.shed_hooks if (p := hook()) is not None), None)
            if peer is None:
                break
            shed.append(peer)
        self.shed += len(shed)
        if shed:
            self._tell("no-fds", "accept failed: %s; closed the oldest connections still "
                       "logging in (%s)", exc, ", ".join(shed))
            return
        self._tell("no-fds", "accept failed: %s; nothing to shed, not accepting for %g s",
                   exc, ACCEPT_BACKOFF)
        self._pause_accepting()
        self.loop.call_later(ACCEPT_BACKOFF, self._resume_accepting)

    def _pause_accepting(self) -> None:
        if self.accepting:
            for lsock in self.listeners:
                self.loop.remove_reader(lsock.fileno())
            self.accepting = False

    def _resume_accepting(self) -> None:
        if not self.accepting and self.listeners:
            for lsock in self.listeners:
                self.loop.add_reader(lsock.fileno(), self._accept, lsock)
            self.accepting = True

    def _tell(self, kind: str, fmt: str, *args: object) -> None:
        """Log a warning of this kind at most once per LOG_INTERVAL s, saying how many
        were not logged since the last line."""
        now = self.loop.time()
        last, quiet = self._told.get(kind, (-LOG_INTERVAL, 0))
        if now - last < LOG_INTERVAL:
            self._told[kind] = (last, quiet + 1)
            return
        self._told[kind] = (now, 0)
        if quiet:
            fmt += " (and %d more like it in the last %g s)"
            args = (*args, quiet, round(now - last, 1))
        log.warning(fmt, *args)

    def adopt(self, sock: socket.socket, peer: str, data: bytes = b"",
              listener: int | None = None, ip: str = "") -> Link:
        """Serve a connected, non-blocking socket; `data`: bytes already read from it;
        `listener`, `ip`: the listening socket and the peer's address, for the limits."""
        link = Link(self, sock, peer, listener, ip)
        self.links.add(link)
        self.logging_in[link] = None
        if listener is not None:
            self.per_listener[listener] = self.per_listener.get(listener, 0) + 1
            key = (listener, ip)
            self.per_address[key] = self.per_address.get(key, 0) + 1
        if data:
            link.feed(data)
        return link

    def forget(self, link: Link) -> None:
        """A link closed: out of the counts; its session's memory goes back (trim)."""
        self.links.discard(link)
        self.logging_in.pop(link, None)
        key = link.listener
        if key is not None:
            self.per_listener[key] -= 1
            pair = (key, link.ip)
            if self.per_address[pair] <= 1:
                del self.per_address[pair]
            else:
                self.per_address[pair] -= 1
        if link.conn.session is not None and not self._trim_due and self.loop is not None:
            self._trim_due = True
            self.loop.call_soon(self._trim)

    def _trim(self) -> None:
        malloc.trim()
        self.loop.call_later(TRIM_INTERVAL, self._trim_done)

    def _trim_done(self) -> None:
        self._trim_due = False

    def _sweep_logins(self) -> None:
        """Close the links still logging in login_timeout s after they were accepted."""
        timeout = self.limits.login_timeout
        now = self.loop.time()
        for link in list(self.logging_in):
            if link.closed or link.conn.phase is not Phase.LOGIN:
                self.logging_in.pop(link, None)
            elif now - link.accepted_at >= timeout:
                self._tell("login-timeout", "%s: login not finished within %g s; closed the "
                           "connection", link.conn.peer, timeout)
                link.close()
            else:
                break  # the rest are younger
        if self.serving:
            self.loop.call_later(min(LOGIN_SWEEP, timeout / 4), self._sweep_logins)
    def _keepalive(self) -> None:
        """NOP-In to every full-feature connection (RFC 7143 11.19); a connection whose
        previous ping is still unanswered after a whole period is dropped."""
        for link in list(self.links):
            if not link.conn.ping():
                log.warning("%s: no answer to NOP-In; dropping the connection", link.conn.peer)
                link.close()
            else:
                link._flush()
        if self.serving:
            self.loop.call_later(self.nop_interval, self._keepalive)

    def _watch_capacity(self) -> None:
        """Notice stores that changed size, so every nexus gets the unit attention."""
        for entry in self.portal.targets.values():
            for lu in entry.device.luns.values() if entry.device is not None else ():
                lu.refresh_capacity()
        if self.serving:
            self.loop.call_later(CAPACITY_POLL, self._watch_capacity)

    def _sample_load(self) -> None:
        """Busy polling is allowed while the machine has a core to spare: the processes
        running right now (/proc/loadavg's fourth field, this one included) are no more
        than the CPUs this process may use, and the hypervisor took less than
        MAX_STEAL of the CPU time since the last look (/proc/stat's steal column, proc(5):
        a vCPU that polls while the host is short of cores takes time from the vCPU the
        initiator waits on). Looked at every LOAD_SAMPLE seconds."""
        try:
            with open(PROC_LOADAVG, "rb") as f:
                running = int(f.read().split()[3].split(b"/")[0])
            with open(PROC_STAT, "rb") as f:
                jiffies = [int(x) for x in f.readline().split()[1:9]]
            total, steal = sum(jiffies), jiffies[7]
            before_total, before_steal = self._jiffies
            self._jiffies = (total, steal)
            stolen = (steal - before_steal) / max(1, total - before_total)
            self.spin_allowed = running <= CPUS and stolen < MAX_STEAL
        except (OSError, ValueError, IndexError):
            self.spin_allowed = False
        if self.serving:
            self.loop.call_later(LOAD_SAMPLE, self._sample_load)

    def _sweep_errors(self) -> None:
        """uvloop: close the links whose socket has a pending error (Link._socket_error)."""
        for link in list(self.links):
            if not link.closed:
                link._socket_error()
        if self.serving:
            self.loop.call_later(ERROR_SWEEP, self._sweep_errors)

    async def serve_forever(self) -> None:
        self._stop = asyncio.Event()
        await self._stop.wait()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def shutdown(self, grace: float = 2.0) -> None:
        """Stop accepting, ask sessions to log out, then drop what is left."""
        self.serving = False
        for attachment in self.attachments:
            attachment.stopping()
        self._pause_accepting()
        for lsock in self.listeners:
            lsock.close()
        self.listeners.clear()
        asking = [link for link in self.links if link.conn.phase is Phase.FULL_FEATURE]
        for link in asking:
            link.conn.request_logout(int(grace) or 1)
            link._flush()
        deadline = self.loop.time() + grace
        # Only the sessions asked to log out are waited for; links still logging in
        # (an attacker's idle ones among them) are dropped at once.
        while any(not link.closed for link in asking) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for link in list(self.links):
            link.close()
        for attachment in self.attachments:
            await attachment.stopped()
        # Medium accesses still running on worker threads end before the stores close.
        for d in self.dispatchers.values():
            await self.loop.run_in_executor(None, d.close)
        await asyncio.sleep(0)  # their completions (dropped: the links are closed)


def _connection_waiting(lsock: socket.socket) -> bool:
    """A connection is in the listening socket's accept queue (poll(2): POLLIN)."""
    poller = select.poll()
    poller.register(lsock.fileno(), select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def new_event_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """uvloop's loop or asyncio's own: `kind` "uvloop" or "asyncio"; None takes uvloop when
    it is installed."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(server: Server, on_stop: Callable[[], None] | None = None,
        event_loop: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly."""
    tuned = malloc.tune()  # per-command data buffers come from the heap (target.malloc)
    if tuned:
        log.debug("allocator thresholds: %s", tuned)
    loop = new_event_loop(event_loop)
    asyncio.set_event_loop(loop)

    async def main() -> None:
        await server.start_control()  # before start() announces the port (--port-file)
        server.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_stop)
        try:
            await server.serve_forever()
        finally:
            log.info("shutting down")
            server.stop_control()
            await server.shutdown()
            if on_stop:
                on_stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
