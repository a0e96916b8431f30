"""The CDB trace: every command of every session, decoded, as JSON lines and live.

Rules:
- One record per completed command: time, initiator, LUN, task tag and attribute, the
  command's name from the opcode table, the CDB fields that matter (LBA and transfer
  length by CDB layout, the flags by name), status, sense decoded (key, ASC/ASCQ), bytes
  moved in each direction, the latency from submission to completion (queueing included),
  and, for commands that waited in a task set, how many tasks were left in it.
- The name comes from the task's table entry and the LBA and transfer length from its
  block range, both kept on the task when its CDB was looked up on arrival
  (ScsiTask.command, ScsiTask.lba/blocks: target.scsi.commands.CommandSet.parse); the flags
  are named by the entry's block layout. Nothing is looked up or decoded again here, but
  for a task no LU looked up (no LU behind its LUN: the disk table parses it, once) or
  one its LU's table refused (named by the disk table's entry, with no range).
- Off the hot path when disabled: the server holds no tracer and never calls in here.
  When enabled, record() runs on the event loop and packs the command's raw facts (peer,
  initiator, LUN, tag, attribute, table entry, LBA, blocks, CDB bytes, status, sense,
  Data-In/Data-Out lengths, Expected Data Transfer Length, start and end from
  time.perf_counter_ns, queued) into one fixed binary record (target.trace_encoder.COMMAND,
  struct.pack_into a preallocated 64 KiB chunk, under a lock shared only with the writer
  thread); strings (peer, initiator), sense data and table entries are sent once as DEFINE
  records and then referred to by number. It decodes and formats nothing.
- A writer thread sends each full chunk, and every FLUSH_INTERVAL seconds the partial one,
  down a pipe (os.write: the GIL is released while it blocks) to a child process,
  `python -m target.trace_encoder` (its own core and GIL), which decodes the records and
  writes the JSON lines to the file (the descriptor opened here, so an unwritable path fails
  at construction) and, with --trace-live, the rendered lines to the live stream's
  descriptor (or, for a stream with none, to a pipe copied to it by a thread). So a
  running target's trace is at most about FLUSH_INTERVAL old. close() sends the rest,
  closes the pipe and waits for the child (CLOSE_TIMEOUT, then kills it by its PID with a
  warning): the file then holds every line.
- The lines: the keys, their order and their values are those of json.dumps of the
  record dict (tests/unit/test_trace_encoder.py holds the dicts, written from these
  rules): "t" is the wall-clock time of the completion in microseconds and "us" the
  latency in tenths of one, both rounded half up and written as decimals (json.loads reads
  them as the floats round(x, 6) and round(x, 1) give, but at an exact tie, which round()
  may send down); the encoder's per-shape templates are target.trace_encoder's.
  Measured (tools/trace_bench.py, 4 KiB READ/WRITE(10) mix, best of 3 of 100k records,
  this shared 2-core machine under the other helpers' load, so +-15%): before, record()
  ~1.6-2.0 us on the loop and ~4.6-5.6 us of the server's CPU in all (the writer thread's
  encoding under the GIL); now record() ~1.7-2.0 us and ~1.8-2.4 us of the server's CPU in
  all (pack, lock, pipe writes), the encoding (~4-5.5 us, its start-up included) in the
  child.
- Errors (the file, the live stream, the child's end, a value out of the record's range):
  one warning, the tracer turns itself off and drops what it held; it never fails I/O.
  The child reports its error on its stderr and exits 1; the writer sees it (a broken
  pipe, or the child's exit at the next interval) and warns with that error.
- `summarize()` reads a trace back and reports per opcode: count, blocks, bytes, status
  and sense counts, and latency (mean, p50, p99, max).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import TextIO

from target import trace_encoder as enc
from target.scsi import extent
from target.scsi.extent import Extent
from target.trace_encoder import ASC_NAMES, render, sense_fields

try:
    import fcntl
    _F_SETPIPE_SZ: int | None = fcntl.F_SETPIPE_SZ  # Linux
except (ImportError, AttributeError):
    _F_SETPIPE_SZ = None

__all__ = ["ASC_NAMES", "FLUSH_INTERVAL", "TraceError", "Tracer", "decode_cdb", "render",
           "sense_fields", "summarize"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between the writer's sends: records reach the file by then
CHUNK_BYTES = 64 * 1024  # one chunk of packed records (~600 commands)
PIPE_SIZE = 1 << 20  # the pipe to the encoder (F_SETPIPE_SZ; Linux's default 64 KiB else)
MAX_IDS = 4096  # strings, sense blobs and entries defined; then the stream's ids restart
CLOSE_TIMEOUT = 10.0  # seconds close() waits for the encoder before killing it

_COMMAND = enc.COMMAND
_pack = _COMMAND.pack_into
_SIZE = _COMMAND.size
_LIMIT = CHUNK_BYTES - _SIZE  # a command record still fits below this offset
_DEFINE = enc.DEFINE
_CLOCK = enc.CLOCK
_RESET = enc.RESET
_SHORT_CDB = enc.SHORT_CDB
_STOP = object()  # the writer's end of input


def decode_cdb(cdb: bytes | memoryview, command=None, ext: Extent | None = None) -> dict:
    """Name, service action, LBA, transfer length (blocks) and named flags of a CDB, from
    its table entry and the block range decoded on arrival (nothing is decoded here)."""
    if command is None:
        return {"op": f"opcode 0x{cdb[0]:02X}"}
    out: dict = {"op": command.name}
    if command.service_action is not None:
        out["sa"] = command.service_action
    if ext is None:
        return out
    out["lba"] = ext.lba
    out["blocks"] = ext.blocks
    flags = extent.flag_names(cdb, command.block)
    if flags:
        out["flags"] = flags
    return out


def _table_entry(task):
    """The disk table's entry for a task whose LU gave it none, so the trace still names
    the command: one no LU looked up (no LU is behind its LUN) is looked up here, once;
    one its LU's table refused (UNMAP on a fully provisioned LU) is named by the disk
    table, with no range."""
    from target.scsi.disk import DISK_COMMANDS
    from target.scsi.sense import CheckCondition

    if task.rejection is None:
        return DISK_COMMANDS.parse(task)
    try:
        return DISK_COMMANDS.lookup(task.cdb)
    except CheckCondition:
        return None


class Tracer:
    """Writes trace records; `path` for JSON lines, `live` for one line per command.

    record() runs on the event loop and packs the command's raw facts into the current
    chunk; a writer thread sends full chunks (and, every `interval` seconds, the partial
    one) to the encoder process (target.trace_encoder), which writes the lines."""

    def __init__(self, path: Path | None = None, live: TextIO | None = None,
                 interval: float = FLUSH_INTERVAL) -> None:
        self.path = path
        self.live = live
        self.interval = interval
        self.enabled = True
        # Opened here so that an unwritable path fails the caller (cli: "cannot write the
        # trace"); the encoder gets the descriptor and this process's copy is closed.
        file = open(path, "ab") if path is not None else None  # noqa: SIM115
        live_fd = None
        if live is not None:
            try:
                live.flush()
                live_fd = live.fileno()
            except (OSError, ValueError):  # io.UnsupportedOperation: no descriptor
                live_fd = None
        argv = [sys.executable, "-m", "target.trace_encoder"]
        if file is not None:
            argv += ["--out", str(file.fileno())]
        if live is not None:
            argv += ["--live", "--encoding",
                     (live.encoding or "utf-8") if live_fd is not None else "utf-8"]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # this tree's target package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                stdout=(live_fd if live_fd is not None
                        else subprocess.PIPE if live is not None else subprocess.DEVNULL),
                pass_fds=() if file is None else (file.fileno(),), close_fds=True)
        finally:
            if file is not None:
                file.close()
        self._pipe = self._proc.stdin.fileno()
        if _F_SETPIPE_SZ is not None:
            try:
                fcntl.fcntl(self._pipe, _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the default 64 KiB: the writer only blocks sooner
        self._lock = threading.Lock()  # the chunk (buffer, offset) and the ids
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._fail_lock = threading.Lock()
        self._queue: SimpleQueue = SimpleQueue()  # chunks to send, in stream order
        self._ids: dict = {}
        self._keep: list = []  # the table entries whose id() keys an id
        self._next_id = 1
        self._reset_ids()
        self._buf = bytearray(CHUNK_BYTES)
        self._n = self._clock(self._buf)
        self._reader = None
        if live is not None and live_fd is None:
            self._reader = threading.Thread(target=self._copy_live, name="trace-live",
                                            daemon=True)
            self._reader.start()
        self._writer = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._writer.start()

    def record(self, peer: str, task, start_ns: int, end_ns: int,
               queued: int | None = None) -> None:
        """Pack one completed command's facts (start_ns and end_ns from perf_counter_ns;
        `queued`: tasks left in its LU's task set as it completed, for one that went
        through it). Buffers and lengths are measured now: the task is not kept."""
        if self.enabled:
            nexus = task.nexus
            initiator = peer if nexus is None else nexus.initiator_name
            command = task.command or _table_entry(task)
            sense = task.sense
            data_in = task.data_in
            data_out = task.data_out
            cdb = task.cdb
            lba = task.lba
            ids = self._ids
            self._acquire()
            try:
                try:
                    e = ids[id(command)]
                    p = ids[peer]
                    i = ids[initiator]
                    s = ids[sense]
                except (KeyError, TypeError):
                    e, p, i, s = self._define(command, peer, initiator, sense)
                n = self._n
                length = len(cdb)
                if n > _LIMIT or length > _SHORT_CDB:
                    n = self._room(_SIZE + length)
                _pack(self._buf, n, 0, lba is not None, e, p, i, s, task.lun, task.tag,
                      task.attr, task.status, length, lba or 0, task.blocks or 0,
                      0 if data_in is None else (
                          data_in.nbytes if data_in.__class__ is memoryview else len(data_in)),
                      task.expected_in,
                      0 if data_out is None else (
                          data_out.nbytes if data_out.__class__ is memoryview
                          else len(data_out)),
                      start_ns, end_ns, -1 if queued is None else queued,
                      cdb if cdb.__class__ is bytes else bytes(cdb))
                if length > _SHORT_CDB:
                    self._buf[n + _SIZE:n + _SIZE + length] = cdb
                    n += length
                self._n = n + _SIZE
            except Exception as exc:  # noqa: BLE001 - a value out of the layout's range
                self._fail(exc)
            finally:
                self._release()

    # --- the stream (all under self._lock) ------------------------------------------------

    @staticmethod
    def _clock(buf: bytearray) -> int:
        _CLOCK.pack_into(buf, 0, enc.T_CLOCK, time.time_ns() - time.perf_counter_ns() + 500)
        return _CLOCK.size

    def _room(self, need: int) -> int:
        """The offset at which `need` bytes fit: the chunk is sealed first if they do not."""
        if self._n + need > len(self._buf):
            self._seal(need)
        return self._n

    def _seal(self, need: int = 0) -> None:
        """Queue the current chunk for the writer (if it holds records); start a new one."""
        if self._n > _CLOCK.size:
            self._queue.put(memoryview(self._buf)[:self._n])
            self._buf = bytearray(max(CHUNK_BYTES, need + _CLOCK.size))
            self._n = self._clock(self._buf)

    def _reset_ids(self) -> None:
        self._ids.clear()
        self._keep.clear()
        self._ids[id(None)] = 0  # no table entry: named by its opcode
        self._ids[b""] = 0  # no sense data
        self._keep.append(None)
        self._next_id = 1

    def _define(self, command, peer: str, initiator: str, sense) -> tuple[int, ...]:
        """The ids of a record's entry, peer, initiator and sense, defining the new ones."""
        sense = bytes(sense)
        ids = self._ids
        if len(ids) >= MAX_IDS:
            self._room(_RESET.size)
            _RESET.pack_into(self._buf, self._n, enc.T_RESET)
            self._n += _RESET.size
            self._reset_ids()
        e = ids.get(id(command))
        if e is None:
            flags = None if command.block is None else command.block.flags
            e = self._define_one(id(command), enc.K_ENTRY,
                                 enc.entry_payload(command.name, command.service_action,
                                                   flags))
            self._keep.append(command)
        p = ids.get(peer)
        if p is None:
            p = self._define_one(peer, enc.K_STR, peer.encode())
        i = ids.get(initiator)
        if i is None:
            i = self._define_one(initiator, enc.K_STR, initiator.encode())
        s = ids.get(sense)
        if s is None:
            s = self._define_one(sense, enc.K_BYTES, sense)
        return e, p, i, s

    def _define_one(self, key, kind: int, payload: bytes) -> int:
        ident = self._next_id
        self._next_id += 1
        n = self._room(_DEFINE.size + len(payload))
        _DEFINE.pack_into(self._buf, n, enc.T_DEFINE, ident, kind, len(payload))
        n += _DEFINE.size
        self._buf[n:n + len(payload)] = payload
        self._n = n + len(payload)
        self._ids[key] = ident
        return ident

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        """Send the queued chunks to the encoder; every interval, the partial chunk too and a
        look at the encoder (one that ended is a failure: its error is the warning)."""
        get = self._queue.get
        while True:
            try:
                chunk = get(timeout=self.interval)
            except Empty:
                if self.enabled and self._proc.poll() is not None:
                    self._fail(self._child_error())
                with self._lock:
                    self._seal()
                continue
            if chunk is _STOP:
                break
            if not self.enabled:
                continue  # dropped: the tracer is off
            try:
                while chunk:
                    chunk = chunk[os.write(self._pipe, chunk):]
            except OSError as exc:
                self._fail(self._child_error() or exc)
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # a broken pipe: the encoder had ended, and said why

    def _child_error(self) -> str:
        """What the encoder said on its way out (its stderr), once it has ended."""
        try:
            self._proc.wait(timeout=1.0)
            text = self._proc.stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return ""
        return text.splitlines()[-1] if text else f"encoder exited {self._proc.returncode}"

    def _copy_live(self) -> None:
        """--trace-live to a stream with no descriptor: the encoder's lines copied to it."""
        stream = self._proc.stdout
        for line in iter(stream.readline, b""):
            if self.enabled:
                try:
                    self.live.write(line.decode("utf-8"))
                    self.live.flush()
                except Exception as exc:  # noqa: BLE001 - the trace never fails I/O
                    self._fail(exc)

    def _fail(self, reason) -> None:
        with self._fail_lock:
            if self.enabled:
                log.warning("trace disabled: %s", reason)
            self.enabled = False

    def close(self) -> None:
        """Send what is left, close the pipe and wait for the encoder (CLOSE_TIMEOUT s, then
        it is killed, with a warning); the file then holds every line."""
        proc = self._proc
        deadline = time.monotonic() + CLOSE_TIMEOUT
        if self._writer.is_alive():
            with self._lock:
                self._seal()
                self._queue.put(_STOP)
            self._writer.join(timeout=CLOSE_TIMEOUT)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("trace: the encoder (pid %d) did not end in %.0f s: killed",
                        proc.pid, CLOSE_TIMEOUT)
            proc.kill()  # by its PID (Popen.kill)
            proc.wait()
            self.enabled = False
            self._writer.join()
        if proc.returncode != 0 and self.enabled:
            self._fail(self._child_error())
        if self._reader is not None:
            self._reader.join(timeout=CLOSE_TIMEOUT)
        self.enabled = False
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class TraceError(ValueError):
    pass


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def summarize(path: Path | str) -> str:
    """Per-opcode summary of a trace file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
    per_op: dict[str, dict] = defaultdict(lambda: {"n": 0, "blocks": 0, "in": 0, "out": 0,
                                                   "status": Counter(), "sense": Counter(),
                                                   "us": []})
    first = last = None
    queued: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            op = rec["op"]
            s = per_op[op]
            s["n"] += 1
            s["blocks"] += rec.get("blocks", 0)
            s["in"] += rec["in"]
            s["out"] += rec["out"]
            s["status"][rec["status"]] += 1
            if "asc" in rec:
                s["sense"][f"{rec['sense_key']} {rec['asc']} {rec.get('asc_name', '')}"] += 1
            s["us"].append(float(rec["us"]))
            if "queued" in rec:
                queued.append(int(rec["queued"]))
            t = float(rec["t"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"{path}:{number}: not a trace record ({exc})") from None
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
    if not per_op:
        return f"{path}: no commands"
    w = max(24, *(len(op) for op in per_op))
    rows = [f"{'command':<{w}} {'count':>7} {'blocks':>9} {'MiB in':>8} {'MiB out':>8} "
            f"{'mean us':>8} {'p50':>7} {'p99':>7} {'max':>8}  status"]
    for op, s in sorted(per_op.items(), key=lambda kv: -kv[1]["n"]):
        us = sorted(s["us"])
        status = ", ".join(f"{k} {v}" for k, v in s["status"].most_common())
        rows.append(f"{op:<{w}} {s['n']:>7} {s['blocks']:>9} {s['in'] / 2**20:>8.2f} "
                    f"{s['out'] / 2**20:>8.2f} {sum(us) / len(us):>8.0f} "
                    f"{_percentile(us, 0.5):>7.0f} {_percentile(us, 0.99):>7.0f} "
                    f"{us[-1]:>8.0f}  {status}")
        for sense, count in s["sense"].most_common(3):
            rows.append(f"{'':<{w}} {count:>7}  {sense}")
    total = sum(s["n"] for s in per_op.values())
    rows.append(f"{total} commands over {(last - first):.1f} s")
    if queued:
        rows.append(f"task set: {len(queued)} commands went through the queue; tasks left "
                    f"queued at completion: mean {sum(queued) / len(queued):.1f}, "
                    f"max {max(queued)}")
    return "\n".join(rows)
