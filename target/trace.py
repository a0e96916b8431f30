"""The CDB trace: every command of every session, decoded, as JSON lines and live.

Rules:
- One record per completed command: time, initiator, target (its iSCSI name, for a
  command of a session: one trace may hold several targets, or several workers'), LUN,
  task tag and attribute, the command's name from the opcode table, the CDB fields that
  matter (LBA and transfer length by CDB layout, the flags by name), status, sense
  decoded (key, ASC/ASCQ), bytes moved in each direction, the latency from submission to
  completion (queueing included), and, for commands that waited in a task set, how many
  tasks were left in it.
- The name comes from the task's table entry and the LBA and transfer length from its
  block range, both kept on the task when its CDB was looked up on arrival
  (ScsiTask.command, ScsiTask.lba/blocks: target.scsi.commands.CommandSet.parse); the flags
  are named by the entry's block layout. Nothing is looked up or decoded again here, but
  for a task no LU looked up (no LU behind its LUN: the disk table parses it, once) or
  one its LU's table refused (named by the disk table's entry, with no range).
- Off the hot path when disabled: the server holds no tracer and never calls in here.
  When enabled, record() runs on the event loop and only keeps the command's raw facts
  (one tuple of values already at hand: peer, nexus, LUN, tag, attribute, table entry,
  LBA, blocks, CDB bytes, status, sense bytes, Data-In/Data-Out lengths, start and end
  from time.perf_counter_ns, queued); it keeps no buffer and decodes nothing. A writer
  thread turns them into JSON lines every FLUSH_INTERVAL seconds (and at close), so a
  running target's trace is at most that old; the lines are written then, a chunk of
  whole lines per write() to a file opened unbuffered for appending (O_APPEND: POSIX
  write() puts each write's bytes at the end of the file with no other write in
  between), so the worker processes of one server (target.shell.workers) share one trace
  file without mixing their lines.
- The encoder fills one bytes %-template per command shape (table entry, attribute,
  status, sense bytes, CDB byte 1 for the flags, initiator, target, peer, LUN, queued or
  not),
  built once from the rules above (decode_cdb, sense_fields, json.dumps of each constant),
  so only integers and the CDB's hex are formatted per record: "t" is the wall-clock time
  of the completion in microseconds and "us" the latency in tenths of one, both rounded
  half up and written as decimals (json.loads reads them as the floats round(x, 6) and
  round(x, 1) give, but at an exact tie, which round() may send down). The keys, their
  order and their values are those of json.dumps of the record dict (tests/unit/
  test_trace_encoder.py holds the dicts, written from these rules).
  Measured (tools/trace_bench.py, 4 KiB READ/WRITE(10) mix, best of 5, this shared 2-core
  machine): the old dict + json.dumps on the loop cost ~23 us CPU per record; now
  record() costs ~1.8 us on the loop (call included) and ~3.8-5.3 us in all, the writer's
  encoding and write included (3.8 on 2026-12-01 evening). The writer holds the GIL
  while it encodes, so on a busy target its share still delays the loop: a thread moves
  the cost, it does not hide it.
- Write errors (file or live stream): one warning, the tracer turns itself off and drops
  what it held; it never fails I/O. So does any error of the encoder.
- `summarize()` reads a trace back and reports per opcode: count, blocks, bytes, status
  and sense counts, and latency (mean, p50, p99, max).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from binascii import hexlify as _hex
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import BinaryIO, TextIO

from target.scsi import extent
from target.scsi.extent import Extent
from target.scsi.sense import SenseKey, sense_key_asc
from target.scsi.task import Status, TaskAttr

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between the writer's batches: records reach the file by then
CHUNK = 2048  # records encoded and written at a time
MAX_TEMPLATES = 4096  # line templates kept (one per command shape); then started afresh

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
    """Writes trace records; `path` for JSON lines, `live` for one line per command.

    record() runs on the event loop and only keeps the command's raw facts; a writer
    thread turns them into lines every `interval` seconds (and at close)."""

    def __init__(self, path: Path | None = None, live: TextIO | None = None,
                 interval: float = FLUSH_INTERVAL) -> None:
        self.path = path
        self.live = live
        self.interval = interval
        # Kept open for the tracer's life and closed by close(): not a with-block.
        # Unbuffered, appending: each chunk of whole lines is one write() at the end of
        # the file, so several processes (target.shell.workers) can share one trace.
        self._file = (open(path, "ab", buffering=0)  # noqa: SIM115
                      if path is not None else None)
        self._raw: deque[tuple] = deque()  # appended by record(), emptied by the writer
        self._append = self._raw.append
        self._templates: dict[tuple, bytes] = {}
        self._keep: list = []  # the table entries whose id() keys a template
        self.enabled = True
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._writer.start()

    def record(self, peer: str, task, start_ns: int, end_ns: int,
               queued: int | None = None) -> None:
        """Keep one completed command's facts (start_ns and end_ns from perf_counter_ns;
        `queued`: tasks left in its LU's task set as it completed, for one that went
        through it). Buffers and lengths are measured now: the task is not kept."""
        if self.enabled:
            data_in = task.data_in
            data_out = task.data_out
            cdb = task.cdb
            self._append((
                peer, task.nexus, task.lun, task.tag, task.attr,
                task.command or _table_entry(task), task.lba, task.blocks,
                cdb if cdb.__class__ is bytes else bytes(cdb), task.status, task.sense,
                0 if data_in is None else (
                    data_in.nbytes if data_in.__class__ is memoryview else len(data_in)),
                task.expected_in,
                0 if data_out is None else (
                    data_out.nbytes if data_out.__class__ is memoryview else len(data_out)),
                start_ns, end_ns, queued))

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Encode and write what record() kept, CHUNK records at a time (the GIL goes back
        to the event loop between chunks); on any error: one warning, the tracer is off."""
        raw = self._raw
        pop = raw.popleft
        while self.enabled and raw:
            batch = [pop() for _ in range(min(len(raw), CHUNK))]
            try:
                text = self.encode(batch)
                if self._file is not None:
                    _write_all(self._file, text)
                if self.live is not None:
                    self.live.write("".join(render(json.loads(line)) + "\n"
                                            for line in text.splitlines()))
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

    def encode(self, batch: list[tuple]) -> bytes:
        """The JSON lines of a batch of record() tuples, by a template per command shape:
        only integers and the CDB's hex are formatted per record (t in microseconds and
        the latency in tenths of one, each rounded half up and written as a decimal)."""
        offset = time.time_ns() - time.perf_counter_ns() + 500  # perf_counter -> wall clock
        templates = self._templates
        out = []
        append = out.append
        for (peer, nexus, lun, tag, attr, command, lba, blocks, cdb, status, sense, n_in,
             expected_in, n_out, start, end, queued) in batch:
            if nexus is not None:
                initiator, target = nexus.initiator_name, nexus.target_name
            else:
                initiator, target = peer, ""
            # An unknown opcode has no entry: its name is its code, so the code is the key.
            key = (id(command) if command is not None else -1 - cdb[0], attr, status, sense,
                   -1 if lba is None else cdb[1],
                   initiator, target, peer, lun, queued is None)
            tpl = templates.get(key)
            if tpl is None:
                tpl = self._template(key, command, cdb)
            if status == 0 or status == 4:  # GOOD, CONDITION MET: Data-In was sent
                if n_in > expected_in:
                    n_in = expected_in
            else:
                n_in = 0
            t = (end + offset) // 1000
            us = (end - start + 50) // 100
            if lba is None:
                if queued is None:
                    append(tpl % (t // 1000000, t % 1000000, tag, _hex(cdb), n_in, n_out,
                                  us // 10, us % 10))
                else:
                    append(tpl % (t // 1000000, t % 1000000, tag, _hex(cdb), n_in, n_out,
                                  us // 10, us % 10, queued))
            elif queued is None:
                append(tpl % (t // 1000000, t % 1000000, tag, lba, blocks, _hex(cdb), n_in,
                              n_out, us // 10, us % 10))
            else:
                append(tpl % (t // 1000000, t % 1000000, tag, lba, blocks, _hex(cdb), n_in,
                              n_out, us // 10, us % 10, queued))
        return b"".join(out)

    def _template(self, key: tuple, command, cdb: bytes) -> bytes:
        """The %-template of one shape: the fields the header's rules give, in their order."""
        _, attr, status, sense, flag_byte, initiator, target, peer, lun, no_queue = key

        def lit(value) -> str:  # a constant, as JSON, with % escaped for the template
            return json.dumps(value, separators=(",", ":")).replace("%", "%%")

        op = decode_cdb(cdb, command)
        parts = ['{"t":%d.%06d,"initiator":', lit(initiator)]
        if target:
            parts += [',"target":', lit(target)]
        parts += [',"peer":', lit(peer), ',"lun":', lit(lun), ',"tag":%d,"attr":',
                  lit(_attr_name(attr)), ',"op":', lit(op["op"])]
        if "sa" in op:
            parts += [',"sa":', lit(op["sa"])]
        if flag_byte >= 0:
            parts.append(',"lba":%d,"blocks":%d')
            flags = extent.flag_names(cdb, command.block)
            if flags:
                parts += [',"flags":', lit(flags)]
        parts += [',"cdb":"%s","status":', lit(_status_name(status))]
        for name, value in sense_fields(sense).items():
            parts += [",", lit(name), ":", lit(value)]
        parts.append(',"in":%d,"out":%d,"us":%d.%d')
        if not no_queue:
            parts.append(',"queued":%d')
        parts.append("}\n")
        tpl = "".join(parts).encode("ascii")  # json.dumps escapes all else
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
            self._keep.clear()
        self._templates[key] = tpl
        self._keep.append(command)
        return tpl

    def close(self) -> None:
        """Write what is left and close the file (the writer thread ends)."""
        if self._writer.is_alive():
            self._stop.set()
            self._writer.join()
        if self._raw:  # the writer thread ended early
            self._drain()
        self.enabled = False
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("trace: %s", exc)
            self._file = None


def _write_all(file: BinaryIO, data: bytes) -> None:
    """All of `data` to an unbuffered file (a regular file takes it in one write())."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) or 0:]


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
