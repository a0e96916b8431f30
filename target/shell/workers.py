"""Worker processes: the targets of one server spread over processes, so that many disks
served at once use every core (issue 14; measured in tools/bench --multi).

Rules:
- `serve --workers N` deals the config's targets to N worker processes in config order
  (target i to worker i mod N; 1 <= N <= the number of targets). Targets share no SCSI
  state (persistent reservations, unit attentions, EXTENDED COPY live inside one target's
  device), so each target lives wholly in one worker, with its stores, task sets,
  sessions, fault rules and tracer. Without --workers everything runs in one process, as
  `make run` does.
- The portal process binds the listen addresses and forks the workers before it has an
  event loop or a thread. Each worker opens its stores and says it is ready; a worker that
  cannot (a missing image, a bad size) ends the whole server with that error, exit 2,
  before anything listens. Then the portal process listens and accepts; it reads a new
  connection's first PDU (target.iscsi.route, within FIRST_PDU_TIMEOUT s, or [limits]
  login_timeout when shorter; the oldest of them are shed when accept() runs out of
  descriptors, Server.shed_hooks) and hands the
  socket, with the bytes it read, to the worker of the target the login names: a
  SOCK_SEQPACKET record carrying the socket's descriptor (SCM_RIGHTS, unix(7)), one
  socketpair per worker. The worker serves the connection from those bytes on as its own.
  The portal process serves discovery sessions (it knows every target's name, alias,
  portal group and ACL) and whatever it cannot route (no TargetName, an unknown target:
  its login answers with the usual status).
- Records on a channel: HANDOFF + the bytes read, with the descriptor (portal -> worker);
  REQUEST + id + JSON (portal -> worker); ANSWER + id + more-flag + a piece of the JSON
  answer, CHUNK bytes at most (worker -> portal); READY + JSON {"banner": {iqn: lines}}
  or FAILED + the error text (worker -> portal, once, at start).
- Control (`status`, `fault`) goes to the portal process's socket, which asks every worker
  (ASK_TIMEOUT s each) and merges the answers: the targets in config order, each with its
  worker's "pid"; "workers"; the sessions of all processes; fault rules added to and
  cleared from every worker alike, so their ids agree, and listed with their counts summed.
  A rule's --first/--every/--once count within each worker: a rule with no --target can
  fire that often in every worker.
- The trace: every worker appends to the same --trace file (target.trace writes whole
  lines, one write() per chunk, O_APPEND); --trace-live lines come from each worker.
- Lifecycle: SIGINT/SIGTERM to the portal process stops accepting and sends SIGTERM to
  every worker, which shuts down as a single server does (logout requests, stores flushed);
  the portal waits STOP_GRACE s, then kills what is left. A worker that ends by itself
  stops the server (its exit status is logged; the server exits 1 unless the worker exited
  0 after a signal). A worker whose portal process is gone (end of file on its channel)
  shuts down.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from target.config import Config, ConfigError
from target.iscsi.portal import Portal, TargetEntry
from target.iscsi.route import Incomplete, Route, first_login
from target.iscsi.session import SessionRegistry
from target.shell.control import COMMANDS, process_status, unknown_command
from target.shell.server import Server, _address

log = logging.getLogger(__name__)

HANDOFF, REQUEST, ANSWER, READY, FAILED = b"H", b"C", b"R", b"O", b"E"
CHUNK = 60_000  # bytes of an answer per record (a SEQPACKET record must fit the buffer)
RECORD_MAX = 256 << 10  # what one recv takes: more than any record sent
READY_TIMEOUT = 120.0  # s for every worker to open its stores
ASK_TIMEOUT = 5.0  # s a worker has to answer a control request
STOP_GRACE = 20.0  # s the workers have to shut down before they are killed
FIRST_PDU_TIMEOUT = 10.0  # s a new connection has to send its first Login PDU
_ANSWER_HEAD = struct.Struct(">IB")  # request id, more pieces follow
_REQUEST_HEAD = struct.Struct(">I")


def deal(config: Config, n: int) -> list[Config]:
    """The config of each of `n` workers: target i goes to worker i mod n."""
    if not 1 <= n <= len(config.targets):
        raise ConfigError(f"--workers: expected 1 to {len(config.targets)} (the number of "
                          f"targets in {config.source}), not {n}")
    return [dataclasses.replace(config, targets=config.targets[i::n]) for i in range(n)]


def _send_fd(channel: socket.socket, data: bytes, fd: int) -> None:
    channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


# --- the worker side -------------------------------------------------------------------

class Handoffs:
    """A worker's end of its channel: sockets handed over, control requests answered."""

    def __init__(self, channel: socket.socket, control) -> None:
        self.channel = channel
        self.control = control  # target.shell.control.Control of this worker's App
        self.server: Server | None = None

    def start(self, server: Server) -> None:
        self.server = server
        self.channel.setblocking(False)
        server.loop.add_reader(self.channel.fileno(), self._readable)

    def stopping(self) -> None:
        if self.server is not None:
            self.server.loop.remove_reader(self.channel.fileno())

    async def stopped(self) -> None:
        self.channel.close()

    def _readable(self) -> None:
        server = self.server
        assert server is not None
        for _ in range(64):
            try:
                data, fds, flags, _ = socket.recv_fds(self.channel, RECORD_MAX, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("worker channel: %s; stopping", exc)
                server.request_stop()
                return
            if not data:
                log.warning("the portal process is gone; stopping")
                server.loop.remove_reader(self.channel.fileno())
                server.request_stop()
                return
            kind = data[:1]
            if kind == HANDOFF:
                self._adopt(data[1:], fds, flags)
            elif kind == REQUEST:
                for fd in fds:
                    os.close(fd)
                self._answer(data)
            else:
                for fd in fds:
                    os.close(fd)
                log.error("worker channel: unknown record %r", data[:1])

    def _adopt(self, data: bytes, fds: list[int], flags: int) -> None:
        server = self.server
        assert server is not None
        if len(fds) != 1 or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            log.error("worker channel: a handed-over connection came without its socket")
            return
        sock = socket.socket(fileno=fds[0])
        try:
            sock.setblocking(False)
            addr = sock.getpeername()
        except OSError as exc:  # the peer is already gone
            log.info("handed-over connection: %s", exc)
            sock.close()
            return
        peer = _address(addr[0], addr[1])
        log.info("connection from %s (handed over)", peer)
        server.adopt(sock, peer, data)

    def _answer(self, record: bytes) -> None:
        (rid,) = _REQUEST_HEAD.unpack_from(record, 1)
        try:
            request = json.loads(record[1 + _REQUEST_HEAD.size:])
            answer = self.control.handle(request) if isinstance(request, dict) else {
                "ok": False, "error": "bad request: a request is a JSON object"}
        except ValueError as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        text = json.dumps(answer, separators=(",", ":")).encode()
        pieces = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [b""]
        try:
            for i, piece in enumerate(pieces):
                more = i + 1 < len(pieces)
                self.channel.setblocking(True)  # a few records; the portal reads at once
                self.channel.send(ANSWER + _ANSWER_HEAD.pack(rid, more) + piece)
        except OSError as exc:
            log.warning("worker channel: cannot answer: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                self.channel.setblocking(False)


# --- the portal side -------------------------------------------------------------------

@dataclasses.dataclass
class Worker:
    """What the portal process knows of one worker."""

    pid: int
    channel: socket.socket
    targets: list[str]
    banner: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    alive: bool = True
    status: int | None = None  # os.waitpid's status once it ended
    backlog: deque = dataclasses.field(default_factory=deque)  # (record, socket) to send
    waiting: dict[int, asyncio.Future] = dataclasses.field(default_factory=dict)
    pieces: dict[int, list[bytes]] = dataclasses.field(default_factory=dict)


class _FirstPdu:
    """A new connection until its first PDU is here (then the router routes it)."""

    def __init__(self, router: Router, sock: socket.socket, peer: str) -> None:
        self.router = router
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()
        self.loop = router.server.loop
        self.loop.add_reader(sock.fileno(), self._readable)
        self.wait = min(FIRST_PDU_TIMEOUT, router.server.limits.login_timeout)
        self.timer = self.loop.call_later(self.wait, self._timeout)

    def _end(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.timer.cancel()
        self.router.reading.pop(self, None)

    def _readable(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("%s: receive failed: %s", self.peer, exc)
            chunk = b""
        if not chunk:
            self._end()
            self.sock.close()
            return
        self.buf += chunk
        decision = first_login(self.buf)
        if isinstance(decision, Incomplete):
            return
        self._end()
        self.router.route(self.sock, self.peer, bytes(self.buf), decision)

    def _timeout(self) -> None:
        log.info("%s: no Login Request within %g s; closed", self.peer, self.wait)
        self._end()
        self.sock.close()

    def close(self) -> None:
        self._end()
        self.sock.close()


class Router:
    """The portal process's attachment: routes connections, talks to the workers."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.owner = {name.lower(): w for w in workers for name in w.targets}
        self.server: Server | None = None
        self.reading: dict[_FirstPdu, None] = {}  # oldest first (Server.shed_hooks)
        self.exit_status = 0
        self.shutting_down = False
        self._next_id = 1

    # Attachment
    def start(self, server: Server) -> None:
        self.server = server
        server.accept_hook = self.accept
        server.shed_hooks.append(self._shed_oldest)
        for w in self.workers:
            w.channel.setblocking(False)
            server.loop.add_reader(w.channel.fileno(), self._readable, w)

    def stopping(self) -> None:
        self.shutting_down = True
        for pending in list(self.reading):
            pending.close()
        for w in self.workers:
            if w.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)

    async def stopped(self) -> None:
        deadline = time.monotonic() + STOP_GRACE
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            for w in self.workers:
                self._reap(w)
            await asyncio.sleep(0.05)
        for w in self.workers:
            if w.alive:
                log.warning("worker pid %d did not stop within %g s; killed", w.pid, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(w.pid, 0)
                w.alive = False
            self._forget(w)

    def _forget(self, w: Worker) -> None:
        assert self.server is not None
        with contextlib.suppress(ValueError, OSError):
            self.server.loop.remove_reader(w.channel.fileno())
            self.server.loop.remove_writer(w.channel.fileno())
        w.channel.close()

    # Connections
    def accept(self, sock: socket.socket, peer: str) -> None:
        self.reading[_FirstPdu(self, sock, peer)] = None

    def _shed_oldest(self) -> str | None:
        """accept() ran out of descriptors: close the oldest connection still waiting for
        its first PDU (Server._out_of_descriptors); its peer, or None."""
        if not self.reading:
            return None
        oldest = next(iter(self.reading))
        oldest.close()
        return oldest.peer

    def route(self, sock: socket.socket, peer: str, data: bytes, decision: Route) -> None:
        assert self.server is not None
        worker = None if decision.target_name is None else \
            self.owner.get(decision.target_name.lower())
        if worker is None or not worker.alive:
            log.debug("%s: served by the portal process (%s)", peer, decision.why)
            self.server.adopt(sock, peer, data)
            return
        worker.backlog.append((HANDOFF + data, sock))
        self._send_backlog(worker)

    def _send_backlog(self, w: Worker) -> None:
        assert self.server is not None
        while w.backlog:
            record, sock = w.backlog[0]
            try:
                if sock is None:
                    w.channel.send(record)
                else:
                    _send_fd(w.channel, record, sock.fileno())
            except (BlockingIOError, InterruptedError):
                self.server.loop.add_writer(w.channel.fileno(), self._send_backlog, w)
                return
            except OSError as exc:
                log.error("worker pid %d: cannot hand over: %s", w.pid, exc)
                w.backlog.popleft()
                if sock is not None:
                    sock.close()
                continue
            w.backlog.popleft()
            if sock is not None:
                sock.close()  # the worker holds the connection now
        with contextlib.suppress(ValueError, OSError):
            self.server.loop.remove_writer(w.channel.fileno())

    # Records from a worker
    def _readable(self, w: Worker) -> None:
        assert self.server is not None
        while True:
            try:
                record = w.channel.recv(RECORD_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                record = b""
            if not record:
                self._worker_ended(w)
                return
            if record[:1] == ANSWER:
                rid, more = _ANSWER_HEAD.unpack_from(record, 1)
                self._piece(w, rid, more, record[1 + _ANSWER_HEAD.size:])
            else:
                log.error("worker pid %d: unexpected record %r", w.pid, record[:1])

    def _piece(self, w: Worker, rid: int, more: int, piece: bytes) -> None:
        w.pieces.setdefault(rid, []).append(piece)
        if more:
            return
        text = b"".join(w.pieces.pop(rid))
        future = w.waiting.pop(rid, None)
        if future is not None and not future.done():
            try:
                future.set_result(json.loads(text))
            except ValueError as exc:
                future.set_exception(exc)

    def _worker_ended(self, w: Worker, tries: int = 0) -> None:
        """Its channel ended: once the process is reaped (looked at every 10 ms, 2 s at
        most), fail its requests and, unless the server is stopping, stop the server."""
        assert self.server is not None
        if tries == 0:
            self.server.loop.remove_reader(w.channel.fileno())
        if not self._reap(w) and tries < 200:
            self.server.loop.call_later(0.01, self._worker_ended, w, tries + 1)
            return
        w.alive = False
        for future in w.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker pid {w.pid} ended"))
        w.waiting.clear()
        if self.shutting_down:
            return
        status = w.status
        code = os.waitstatus_to_exitcode(status) if status is not None else None
        if code == 0:
            log.warning("worker pid %d (%s) stopped; stopping the server", w.pid,
                        ", ".join(w.targets))
        else:
            log.error("worker pid %d (%s) ended unexpectedly (%s); stopping the server",
                      w.pid, ", ".join(w.targets),
                      "status unknown" if code is None else
                      f"signal {-code}" if code < 0 else f"exit status {code}")
            self.exit_status = 1
        self.server.request_stop()

    @staticmethod
    def _reap(w: Worker) -> bool:
        if not w.alive and w.status is not None:
            return True
        try:
            pid, status = os.waitpid(w.pid, os.WNOHANG)
        except ChildProcessError:
            w.alive = False
            return True
        if pid == 0:
            return False
        w.status = status
        w.alive = False
        return True

    async def ask(self, w: Worker, request: dict[str, Any]) -> dict[str, Any]:
        """One control request to one worker, and its answer."""
        assert self.server is not None
        if not w.alive:
            raise ConnectionError(f"worker pid {w.pid} has ended")
        rid, self._next_id = self._next_id, self._next_id + 1
        future = self.server.loop.create_future()
        w.waiting[rid] = future
        w.backlog.append((REQUEST + _REQUEST_HEAD.pack(rid) + json.dumps(request).encode(),
                          None))
        self._send_backlog(w)
        try:
            return await asyncio.wait_for(future, ASK_TIMEOUT)
        except TimeoutError:
            raise ConnectionError(f"worker pid {w.pid} did not answer within "
                                  f"{ASK_TIMEOUT:g} s") from None
        finally:
            w.waiting.pop(rid, None)


class PortalControl:
    """The control socket of the portal process: asks the workers, merges their answers."""

    def __init__(self, router: Router, config: Config, portal: Portal) -> None:
        self.router = router
        self.config = config
        self.portal = portal
        self.started = time.time()

    async def answer_line(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            response = await self.handle(request)
        except ValueError as exc:
            response = {"ok": False, "error": f"bad request: {exc}"}
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command not in COMMANDS:
            return unknown_command(command)
        if command == "fault-add":
            from target.faults import FaultError, parse_rule

            rule = request.get("rule")
            if not isinstance(rule, dict):
                return {"ok": False, "error": "fault-add needs a \"rule\" object"}
            try:
                parse_rule(dict(rule))  # the same check every worker makes, once here
            except FaultError as exc:
                return {"ok": False, "error": f"fault rule: {exc}"}
        workers = self.router.workers
        try:
            answers = await asyncio.gather(*(self.router.ask(w, request) for w in workers))
        except ConnectionError as exc:
            return {"ok": False, "error": str(exc)}
        failed = next((a for a in answers if not a.get("ok")), None)
        if failed is not None:
            return failed
        if command == "status":
            return self._status(answers)
        if command == "fault-list":
            return {"ok": True, "faults": _merge_faults(answers)}
        if command == "fault-add":
            return answers[0]
        return {"ok": True, "cleared": max(a["cleared"] for a in answers)}

    def _status(self, answers: list[dict[str, Any]]) -> dict[str, Any]:
        own = process_status(self.started, self.portal)
        by_name = {}
        for w, answer in zip(self.router.workers, answers, strict=True):
            for t in answer["targets"]:
                by_name[t["iqn"]] = {**t, "pid": w.pid}
            own["sessions"].extend(answer["sessions"])
        return {"ok": True, **own,
                "targets": [by_name[t.iqn] for t in self.config.targets if t.iqn in by_name],
                "workers": [{"pid": w.pid, "targets": w.targets, "alive": w.alive}
                            for w in self.router.workers],
                "faults": _merge_faults(answers)}


def _merge_faults(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules of the first worker (all have the same), counts summed over all."""
    merged: dict[int, dict[str, Any]] = {}
    for answer in answers:
        for rule in answer["faults"]:
            if rule["id"] in merged:
                m = merged[rule["id"]]
                m["matched"] += rule["matched"]
                m["hits"] += rule["hits"]
            else:
                merged[rule["id"]] = dict(rule)
    return list(merged.values())


# --- starting it all -------------------------------------------------------------------

# What builds a worker's server: (its config, the portal's bound addresses) -> the server
# to run (with its Control as `server.control`), a banner per target, and a cleanup.
Assemble = Callable[[Config, list[tuple[str, int]]],
                    tuple[Server, dict[str, list[str]], Callable[[], None]]]
# Runs a server until it is stopped (target.shell.server.run with the chosen loop).
RunServer = Callable[[Server], None]


def serve(config: Config, server: Server, n: int, assemble: Assemble, run_server: RunServer,
          on_listening: Callable[[list[tuple[str, int]], list[Worker]], None] | None = None,
          ) -> int:
    """Fork `n` workers for `config`'s targets, then run `server` (the portal process's,
    bound by this call) until it stops; the server's exit status. `on_listening` gets
    the bound addresses and the workers (with their banners) once it listens."""
    parts = deal(config, n)
    bound = server.bind()
    workers: list[Worker] = []
    try:
        for part in parts:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:  # the worker
                code = 2
                try:
                    ours.close()
                    for lsock in server.listeners:
                        lsock.close()
                    for w in workers:
                        w.channel.close()
                    code = _worker(part, theirs, bound, assemble, run_server)
                except BaseException:  # noqa: BLE001 - a forked child never returns
                    log.exception("worker failed")
                finally:
                    logging.shutdown()
                    os._exit(code)
            theirs.close()
            workers.append(Worker(pid, ours, [t.iqn for t in part.targets]))
        _wait_ready(workers)
    except BaseException:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
        for w in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)
        for lsock in server.listeners:
            lsock.close()
        raise
    router = Router(workers)
    server.attachments.append(router)
    server.control = PortalControl(router, config, server.portal)
    if on_listening is not None:
        server.on_listening = lambda bound: on_listening(bound, workers)
    run_server(server)
    return router.exit_status


def _worker(config: Config, channel: socket.socket, bound: list[tuple[str, int]],
            assemble: Assemble, run_server: RunServer) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        server, banner, cleanup = assemble(config, bound)
    except (ConfigError, OSError) as exc:
        text = str(exc) if isinstance(exc, ConfigError) else (
            f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror or str(exc))
        channel.send(FAILED + text.encode())
        return 2
    try:
        channel.send(READY + json.dumps({"banner": banner}).encode())
        server.attachments.append(Handoffs(channel, server.control))
        server.control = None  # answered over the channel, not a socket of its own
        run_server(server)
    finally:
        cleanup()
    return 0


def _wait_ready(workers: list[Worker]) -> None:
    """Block until every worker said READY; raise ConfigError with a worker's FAILED."""
    deadline = time.monotonic() + READY_TIMEOUT
    for w in workers:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([w.channel], [], [], max(0.0, left))
        if not ready:
            raise ConfigError(f"worker pid {w.pid} ({', '.join(w.targets)}) did not open its "
                              f"stores within {READY_TIMEOUT:g} s")
        record = w.channel.recv(RECORD_MAX)
        if record[:1] == FAILED:
            raise ConfigError(record[1:].decode(errors="replace"))
        if record[:1] != READY:
            raise ConfigError(f"worker pid {w.pid} ({', '.join(w.targets)}) ended before "
                              "it was ready (see the log)")
        w.banner = json.loads(record[1:])["banner"]


def named_targets(config: Config) -> dict[str, TargetEntry]:
    """The portal process's targets: named (SendTargets, routing), served elsewhere."""
    return {t.iqn: TargetEntry(t.iqn, None, alias=t.alias, tpgt=t.tpgt,
                               initiators=t.initiators) for t in config.targets}


def portal_of(config: Config) -> Portal:
    """The portal process's Portal: it answers discovery sessions itself, so it holds the
    discovery CHAP credentials (a normal session's CHAP runs in its target's worker)."""
    from target.app import credentials

    return Portal(targets=named_targets(config), addresses=list(config.listen),
                  registry=SessionRegistry(),
                  discovery_chap=credentials(config.discovery_chap))
