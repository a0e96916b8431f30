"""The CDB trace: every command of every session, kept as binary records, decoded when read.

Rules:
- One record per completed command: time, initiator, target (its iSCSI name, for a
  command of a session: one trace may hold several targets, or several workers'), LUN,
  task tag and attribute, the command's name from the opcode table, the CDB fields that
  matter (LBA and transfer length by CDB layout, the flags by name), status, sense
  decoded (key, ASC/ASCQ), bytes moved in each direction, the latency from submission to
  completion (queueing included), and, for commands that waited in a task set, how many
  tasks were left in it. read() gives each as a dict, `scsi-target trace --json` as a
  JSON line, with the keys, the order and the values of RECORD FIELDS below
  (tests/unit/test_trace_records.py holds such dicts, written by hand from these rules).
- The name comes from the task's table entry and the LBA and transfer length from its
  block range, both kept on the task when its CDB was looked up on arrival
  (ScsiTask.command, ScsiTask.lba/blocks: target.scsi.commands.CommandSet.parse); the flags
  are named by the entry's block layout. Nothing is looked up or decoded again, but for a
  task no LU looked up (no LU behind its LUN: the disk table parses it, once) or one its
  LU's table refused (named by the disk table's entry, with no range).
- Off the hot path when disabled: the server holds no tracer and never calls in here.
  When enabled, record() runs on the event loop and packs the command's facts into one
  bytes object of fixed layout (RECORD); its source (initiator, target, peer) and its
  table entry are numbers, each defined once by a definition item; nothing is decoded or
  formatted while the target runs. This is issue 14's "binary ring that the summary
  decodes": a JSON line per command cost ~16k instructions (a tuple on the loop, then the
  writer thread's encoding, which holds the GIL), a packed record ~5k in all (callgrind,
  docs/COST.md).
- A writer thread writes what record() kept every FLUSH_INTERVAL seconds (and at close),
  so a running target's trace is at most that old: one chunk per write(), to a file opened
  unbuffered for appending (O_APPEND: POSIX write() puts each write's bytes at the end of
  the file with no other write in between), so the worker processes of one server
  (target.shell.workers) share one trace file. Each tracer's chunks carry its own random
  writer number; its definitions hold for its chunks only.
- The file, all integers little-endian, is a sequence of chunks:
    CHUNK       "SCTR", version 1, 3 zero bytes, writer u64, epoch i64 (wall clock minus
                perf_counter, in ns, when the chunk was written), the definitions' length
                u32 and the records' length u32; then the definitions, then the records.
    definition  u32 length, then a JSON object: {"source": n, "initiator", "target",
                "peer"} or {"command": n, "op" (null: no table entry, named by its opcode),
                "sa" (or null), "flags" ([[bit, name], ...] of CDB byte 1, null for an
                entry with no block layout)}, or {"dropped": n}.
    RECORD      source u32, command u32, LUN u64, tag u32, attribute u8, status u8, LBA
                i64 (-1: no block range), blocks u64, Data-In bytes u64, Expected Data
                Transfer Length u64, Data-Out bytes u64, start i64 and end i64
                (perf_counter_ns), queued i32 (-1: not through a task set), CDB length
                u16, sense length u16, the CDB's first 16 bytes (zero padded); then the
                sense bytes, then the CDB's bytes past the 16th.
  A definition comes before, in its writer's chunks, every record that names it. A chunk
  cut short at the end of the file is one still being written (or lost in a crash): the
  reader stops before it and says so (Reader.truncated); anything else that is not this
  layout is a TraceError naming the byte. Tracer refuses a file that is neither empty
  nor begins with a chunk (an old JSON-lines trace), so it never appends what could not
  be read back; read() still reads JSON lines, the format before this one.
- RECORD FIELDS, in this order: "t" the wall-clock time of the completion in seconds, to
  the microsecond (rounded half up); "initiator" (the peer, for a command of no session),
  "target" (for a session's), "peer", "lun", "tag", "attr" (the RFC 7143 11.3.1.1 name),
  "op", "sa" (for an entry with a service action), for a command with a block range
  "lba", "blocks" and "flags" (the byte-1 bits set that its layout names, when any), "cdb"
  in hex, "status" (SAM-5 table 38's name, or 0xNN), "sense_key", "asc" ("21/00") and
  "asc_name" (SPC-4 annex D, or "") when there is sense, "in" (Data-In bytes, for GOOD and
  CONDITION MET only, at most the Expected Data Transfer Length), "out", "us" the latency
  in microseconds to a tenth (rounded half up), and "queued" when it went through a task
  set.
- Bounded: at most MAX_PENDING records wait for the writer (a file on a stalled disk);
  beyond, record() drops them, counts them (one warning), and the next chunk carries the
  count in a definition {"dropped": n} (the writer's total so far); Reader.dropped and
  the summary report it.
- Write errors (file or live stream): one warning, the tracer turns itself off and drops
  what it held; it never fails I/O. So does any error in record() or the writer.
- `summarize()` reads a trace back and reports per opcode: count, blocks, bytes, status
  and sense counts, and latency (mean, p50, p99, max).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from target.scsi.sense import SenseKey, sense_key_asc
from target.scsi.task import Status, TaskAttr

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between the writer's batches: records reach the file by then
CHUNK_RECORDS = 4096  # records written at a time (one chunk, one write())
MAX_DEFINED = 4096  # sources and table entries kept numbered; then numbered afresh
MAX_PENDING = 1 << 18  # records held for the writer (~40 MiB); beyond: dropped, counted

MAGIC = b"SCTR"
VERSION = 1
CHUNK = struct.Struct("<4sB3xQqII")
RECORD = struct.Struct("<IIQIBBqQQQQqqiHH16s")
_pack_record = RECORD.pack
_DEFINITION = struct.Struct("<I")
CDB_IN_RECORD = 16  # CDB bytes inside RECORD; longer CDBs carry the rest after the sense

# The additional sense codes a trace reader meets most (SPC-4 annex D).
ASC_NAMES = {
    (0x00, 0x00): "NO ADDITIONAL SENSE", (0x04, 0x00): "LOGICAL UNIT NOT READY",
    (0x0C, 0x00): "WRITE ERROR", (0x11, 0x00): "UNRECOVERED READ ERROR",
    (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR", (0x1D, 0x00): "MISCOMPARE DURING VERIFY",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE", (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED", (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x27, 0x00): "WRITE PROTECTED", (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED", (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x2A, 0x09): "CAPACITY DATA HAS CHANGED", (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x4B, 0x00): "DATA PHASE ERROR", (0x4B, 0x05): "DATA OFFSET ERROR",
}


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


def _status_name(status: int) -> str:
    try:
        return Status(status).name.replace("_", " ")
    except ValueError:
        return f"0x{status:02X}"


def _attr_name(attr: int) -> str:
    try:
        return TaskAttr(attr).name.replace("_", " ")
    except ValueError:
        return str(attr)


def sense_fields(sense: bytes) -> dict:
    if not sense:
        return {}
    key, asc, ascq = sense_key_asc(sense)
    try:
        key_name = SenseKey(key).name.replace("_", " ")
    except ValueError:
        key_name = f"0x{key:X}"
    return {"sense_key": key_name, "asc": f"{asc:02X}/{ascq:02X}",
            "asc_name": ASC_NAMES.get((asc, ascq), "")}


class Tracer:
    """Writes trace records to `path` (the binary chunks above), and with `live` one
    rendered line per command.

    record() runs on the event loop and packs the command's facts; a writer thread writes
    them every `interval` seconds (and at close)."""

    def __init__(self, path: Path | None = None, live: TextIO | None = None,
                 interval: float = FLUSH_INTERVAL) -> None:
        self.path = path
        self.live = live
        self.interval = interval
        # Kept open for the tracer's life and closed by close(): not a with-block.
        # Unbuffered, appending: each chunk is one write() at the end of the file, so
        # several processes (target.shell.workers) can share one trace.
        if path is not None:
            _check_appendable(path)
        self._file = (open(path, "ab", buffering=0)  # noqa: SIM115
                      if path is not None else None)
        self._writer_id = int.from_bytes(os.urandom(8), "little")
        self._raw: deque[bytes] = deque()  # appended by record(), emptied by the writer
        self._append = self._raw.append
        self._defs: deque[bytes] = deque()  # definition items, appended before their use
        self._sources: dict[str, tuple] = {}  # peer -> (nexus, number)
        self._commands: dict[int, int] = {}  # id(table entry or None) -> number
        self._keep: list = []  # the table entries whose id() keys _commands
        self._next = 0  # the next definition number
        self._live_reader = Reader("live trace") if live is not None else None
        self.enabled = True
        self.dropped = 0  # records not kept: the writer had MAX_PENDING waiting
        self._dropped_written = 0
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._writer.start()

    def record(self, peer: str, task, start_ns: int, end_ns: int,
               queued: int | None = None) -> None:
        """Keep one completed command's facts (start_ns and end_ns from perf_counter_ns;
        `queued`: tasks left in its LU's task set as it completed, for one that went
        through it). Buffers and lengths are measured now: the task is not kept."""
        if self.enabled:
            if len(self._raw) >= MAX_PENDING:
                self._drop()
                return
            try:
                source = self._sources.get(peer)
                if source is None or source[0] is not task.nexus:
                    source = self._define_source(peer, task.nexus)
                command = task.command
                number = self._commands.get(id(command))
                if number is None or command is None:
                    command = command or _table_entry(task)
                    number = self._commands.get(id(command))
                    if number is None:
                        number = self._define_command(command)
                data_in = task.data_in
                data_out = task.data_out
                lba = task.lba
                cdb = task.cdb
                sense = task.sense
                n = len(cdb)
                rec = _pack_record(
                    source[1], number, task.lun, task.tag, task.attr, task.status,
                    -1 if lba is None else lba, 0 if lba is None else task.blocks,
                    0 if data_in is None else (
                        data_in.nbytes if data_in.__class__ is memoryview else len(data_in)),
                    task.expected_in,
                    0 if data_out is None else (
                        data_out.nbytes if data_out.__class__ is memoryview else len(data_out)),
                    start_ns, end_ns, -1 if queued is None else queued, n, len(sense),
                    bytes(cdb[:CDB_IN_RECORD]) if cdb.__class__ is not bytes else cdb)
                if sense or n > CDB_IN_RECORD:
                    rec = rec + bytes(sense) + bytes(cdb[CDB_IN_RECORD:])
                self._append(rec)
            except Exception as exc:  # noqa: BLE001 - the trace never fails I/O
                self._fail(exc)

    def _drop(self) -> None:
        """The writer is behind by MAX_PENDING records (a stalled file): count, warn once."""
        if not self.dropped:
            log.warning("trace: %d records wait for the writer; dropping (and counting) "
                        "the next ones until it catches up", MAX_PENDING)
        self.dropped += 1

    def _define_source(self, peer: str, nexus) -> tuple:
        if len(self._sources) >= MAX_DEFINED:
            self._sources.clear()
        if nexus is not None:
            initiator, target = nexus.initiator_name, nexus.target_name
        else:
            initiator, target = peer, ""
        source = (nexus, self._number({"source": 0, "initiator": initiator,
                                       "target": target, "peer": peer}))
        self._sources[peer] = source
        return source

    def _define_command(self, command) -> int:
        if len(self._commands) >= MAX_DEFINED:
            self._commands.clear()
            self._keep.clear()
        if command is None:
            item = {"command": 0, "op": None, "sa": None, "flags": None}
        else:
            block = command.block
            item = {"command": 0, "op": command.name, "sa": command.service_action,
                    "flags": None if block is None else [[bit, name] for bit, name
                                                          in block.flags.items()]}
        number = self._number(item)
        self._commands[id(command)] = number
        self._keep.append(command)
        return number

    def _number(self, item: dict) -> int:
        """Number a definition item and queue it (before any record that names it)."""
        number = self._next
        self._next = (number + 1) & 0xFFFFFFFF
        item[next(iter(item))] = number
        text = json.dumps(item, separators=(",", ":")).encode("ascii")
        self._defs.append(_DEFINITION.pack(len(text)) + text)
        return number

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Write what record() kept, one chunk of CHUNK_RECORDS records at a time (the GIL
        goes back to the event loop between chunks); on any error: one warning, the
        tracer is off."""
        raw, defs = self._raw, self._defs
        pop, pop_def = raw.popleft, defs.popleft
        while self.enabled and (raw or defs or self.dropped != self._dropped_written):
            records = b"".join([pop() for _ in range(min(len(raw), CHUNK_RECORDS))])
            # After the records: every definition they name was queued before them.
            items = [pop_def() for _ in range(len(defs))]
            dropped = self.dropped
            if dropped != self._dropped_written:
                self._dropped_written = dropped
                text = json.dumps({"dropped": dropped}).encode("ascii")
                items.append(_DEFINITION.pack(len(text)) + text)
            definitions = b"".join(items)
            epoch = time.time_ns() - time.perf_counter_ns()
            chunk = b"".join((CHUNK.pack(MAGIC, VERSION, self._writer_id, epoch,
                                         len(definitions), len(records)),
                              definitions, records))
            try:
                if self._file is not None:
                    _write_all(self._file, chunk)
                if self.live is not None:
                    self._render_live(chunk)
            except Exception as exc:  # noqa: BLE001 - the trace never fails I/O
                self._fail(exc)
            time.sleep(0)
        try:
            if self.live is not None:
                self.live.flush()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        if not self.enabled:
            raw.clear()
            defs.clear()

    def _render_live(self, chunk: bytes) -> None:
        self.live.write("".join(render(rec) + "\n" for rec in self._live_reader.feed(chunk)))

    def _fail(self, exc: Exception) -> None:
        if self.enabled:
            log.warning("trace disabled: %s", exc)
        self.enabled = False
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # what it held is lost; the warning said so

    def close(self) -> None:
        """Write what is left and close the file (the writer thread ends)."""
        if self._writer.is_alive():
            self._stop.set()
            self._writer.join()
        if self._raw or self._defs or self.dropped != self._dropped_written:
            # (the writer thread ended early)
            self._drain()
        self.enabled = False
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("trace: %s", exc)
            self._file = None


def _check_appendable(path: Path) -> None:
    """A tracer appends only to an empty file or one that begins with a chunk (a device
    or a pipe, /dev/full or a FIFO, is written as it is: nothing there is read back)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError:
        return  # absent (created by the open) or unreadable: the open says what is wrong
    if head and head != MAGIC[:len(head)]:
        raise TraceError(f"{path}: not a binary CDB trace (an old JSON-lines trace?); "
                         f"give --trace a new file")


def _write_all(file: BinaryIO, data: bytes) -> None:
    """All of `data` to an unbuffered file (a regular file takes it in one write())."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) or 0:]


# --- reading ------------------------------------------------------------------------------


class Reader:
    """Decodes chunks into record dicts (RECORD FIELDS); keeps each writer's definitions.

    feed() takes whole chunks (the live stream); records() a file's bytes."""

    def __init__(self, name: str = "trace") -> None:
        self.name = name
        self._defs: dict[int, dict[int, dict]] = {}  # writer -> number -> definition
        self.truncated = False  # the last chunk was cut short (still being written?)
        self._dropped: dict[int, int] = {}  # writer -> records it dropped (its last count)

    @property
    def dropped(self) -> int:
        """Records the writers of what was read counted as dropped (MAX_PENDING)."""
        return sum(self._dropped.values())

    def feed(self, chunk: bytes) -> list[dict]:
        return list(self.records(chunk))

    def records(self, data: bytes | memoryview) -> Iterator[dict]:
        view = memoryview(data)
        at = 0
        self.truncated = False
        while at < len(view):
            head = bytes(view[at:at + len(MAGIC)])
            if head != MAGIC[:len(head)]:
                raise TraceError(f"{self.name}: byte {at}: not a trace chunk")
            if len(view) - at < CHUNK.size:
                self.truncated = True
                return
            _, version, writer, epoch, n_defs, n_recs = CHUNK.unpack_from(view, at)
            if version != VERSION:
                raise TraceError(f"{self.name}: byte {at}: trace version {version}, "
                                 f"this reader knows {VERSION}")
            body = at + CHUNK.size
            if len(view) - body < n_defs + n_recs:
                self.truncated = True
                return
            defs = self._defs.setdefault(writer, {})
            dropped = self._definitions(view[body:body + n_defs], defs, body)
            if dropped is not None:
                self._dropped[writer] = dropped
            yield from self._records(view[body + n_defs:body + n_defs + n_recs], defs,
                                     epoch, body + n_defs)
            at = body + n_defs + n_recs

    def _definitions(self, view: memoryview, defs: dict, base: int) -> int | None:
        """Read a chunk's definitions into defs; the writer's dropped count, if given."""
        at = 0
        dropped = None
        while at < len(view):
            if len(view) - at < _DEFINITION.size:
                raise TraceError(f"{self.name}: byte {base + at}: definition cut short")
            (n,) = _DEFINITION.unpack_from(view, at)
            text = view[at + _DEFINITION.size:at + _DEFINITION.size + n]
            if len(text) != n:
                raise TraceError(f"{self.name}: byte {base + at}: definition cut short")
            try:
                item = json.loads(bytes(text))
                if "dropped" in item:
                    dropped = item["dropped"]
                    if not isinstance(dropped, int):
                        raise TypeError("the dropped count is not an integer")
                    at += _DEFINITION.size + n
                    continue
                if "source" in item:
                    number = item["source"]
                    item = {"initiator": str(item["initiator"]),
                            "target": str(item["target"]), "peer": str(item["peer"])}
                else:
                    number = item["command"]
                    flags = item["flags"]
                    item = {"op": item["op"], "sa": item["sa"],
                            "flags": None if flags is None else
                            [(int(bit), str(name)) for bit, name in flags]}
                    if item["op"] is not None:
                        item["op"] = str(item["op"])
                if not isinstance(number, int):
                    raise TypeError("its number is not an integer")
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{self.name}: byte {base + at}: not a trace definition "
                                 f"({exc})") from None
            defs[number] = item
            at += _DEFINITION.size + n
        return dropped

    def _records(self, view: memoryview, defs: dict, epoch: int,
                 base: int) -> Iterator[dict]:
        at = 0
        size = RECORD.size
        while at < len(view):
            if len(view) - at < size:
                raise TraceError(f"{self.name}: byte {base + at}: record cut short")
            (source, command, lun, tag, attr, status, lba, blocks, n_in, expected_in, n_out,
             start, end, queued, n_cdb, n_sense, cdb16) = RECORD.unpack_from(view, at)
            tail = max(0, n_cdb - CDB_IN_RECORD)
            if len(view) - at - size < n_sense + tail:
                raise TraceError(f"{self.name}: byte {base + at}: record cut short")
            sense = bytes(view[at + size:at + size + n_sense])
            cdb = cdb16[:n_cdb] + bytes(view[at + size + n_sense:at + size + n_sense + tail])
            src = defs.get(source)
            entry = defs.get(command)
            if src is None or "peer" not in src or entry is None or "op" not in entry:
                raise TraceError(f"{self.name}: byte {base + at}: a record names an "
                                 f"undefined source or command")
            at += size + n_sense + tail
            rec = {"t": ((end + epoch + 500) // 1000) / 1e6, "initiator": src["initiator"]}
            if src["target"]:
                rec["target"] = src["target"]
            rec["peer"] = src["peer"]
            rec["lun"] = lun
            rec["tag"] = tag
            rec["attr"] = _attr_name(attr)
            rec["op"] = entry["op"] if entry["op"] is not None else (
                f"opcode 0x{cdb[0]:02X}" if cdb else "opcode ?")
            if entry["sa"] is not None:
                rec["sa"] = entry["sa"]
            if lba >= 0:
                rec["lba"] = lba
                rec["blocks"] = blocks
                flags = [name for bit, name in entry["flags"] or ()
                         if len(cdb) > 1 and cdb[1] & bit]
                if flags:
                    rec["flags"] = flags
            rec["cdb"] = cdb.hex()
            rec["status"] = _status_name(status)
            rec.update(sense_fields(sense))
            rec["in"] = min(n_in, expected_in) if status in (0, 4) else 0  # GOOD, COND. MET
            rec["out"] = n_out
            rec["us"] = ((end - start + 50) // 100) / 10
            if queued >= 0:
                rec["queued"] = queued
            yield rec


def read(path: Path | str, reader: Reader | None = None) -> Iterator[dict]:
    """The records of a trace file, as dicts (RECORD FIELDS), decoded by `reader` (then
    its .dropped and .truncated tell the rest); a JSON-lines trace (the format before the
    binary one) is read line by line."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
    if data[:1] == b"{":
        for number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise TraceError(f"{path}:{number}: not a trace record ({exc})") from None
                if not isinstance(rec, dict):
                    raise TraceError(f"{path}:{number}: not a trace record")
                yield rec
        return
    yield from (reader or Reader(str(path))).records(data)


def render(rec: dict) -> str:
    """One human-readable line for a record."""
    when = time.strftime("%H:%M:%S", time.localtime(rec["t"])) + f".{int(rec['t'] % 1 * 1e6):06d}"
    who = rec.get("initiator", "")
    who = who.rsplit(":", 1)[-1] if ":" in who else who
    parts = [when, who if len(who) <= 32 else "..." + who[-29:], f"LUN{rec['lun']}", rec["op"]]
    if "lba" in rec:
        parts.append(f"lba={rec['lba']} blocks={rec['blocks']}")
    parts.extend(rec.get("flags", []))
    parts.append(rec["status"])
    if "sense_key" in rec:
        parts.append(f"{rec['sense_key']} {rec['asc']} {rec.get('asc_name', '')}".rstrip())
    moved = rec["in"] or rec["out"]
    if moved:
        parts.append(f"{moved}B")
    parts.append(f"{rec['us']:.0f}us")
    return " ".join(parts)


class TraceError(ValueError):
    pass


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def summarize(path: Path | str) -> str:
    """Per-opcode summary of a trace file."""
    per_op: dict[str, dict] = defaultdict(lambda: {"n": 0, "blocks": 0, "in": 0, "out": 0,
                                                   "status": Counter(), "sense": Counter(),
                                                   "us": []})
    first = last = None
    queued: list[int] = []
    number = 0
    reader = Reader(str(path))
    try:
        for rec in read(path, reader):
            number += 1
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
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(f"{path}: record {number}: not a trace record ({exc})") from None
    lost = (f"{reader.dropped} records dropped: the trace's writer fell behind by "
            f"{MAX_PENDING} (the file's disk was slow or stalled)" if reader.dropped else "")
    if not per_op:
        return f"{path}: no commands" + (f"\n{lost}" if lost else "")
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
    if lost:
        rows.append(lost)
    return "\n".join(rows)
