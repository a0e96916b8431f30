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
  When enabled, records are buffered and flushed at close (and every FLUSH_EVERY
  records); a write error turns the tracer off with one warning, it never fails I/O.
- `summarize()` reads a trace back and reports per opcode: count, blocks, bytes, status
  and sense counts, and latency (mean, p50, p99, max).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TextIO

from target.scsi import extent
from target.scsi.extent import Extent
from target.scsi.sense import SenseKey, sense_key_asc
from target.scsi.task import Status, TaskAttr

log = logging.getLogger(__name__)

FLUSH_EVERY = 256

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
    """Writes trace records; `path` for JSON lines, `live` for one line per command."""

    def __init__(self, path: Path | None = None, live: TextIO | None = None) -> None:
        self.path = path
        self.live = live
        # Kept open for the tracer's life and closed by close(): not a with-block.
        self._file = (open(path, "a", buffering=1 << 16)  # noqa: SIM115
                      if path is not None else None)
        self._pending = 0
        self.enabled = True

    def record(self, peer: str, task, start_ns: int, end_ns: int,
               queued: int | None = None) -> None:
        if not self.enabled:
            return
        command = task.command
        if command is None:
            command = _table_entry(task)
        data_in = task.data_in
        n_in = 0
        if data_in is not None and task.status in (Status.GOOD, Status.CONDITION_MET):
            n_in = min(data_in.nbytes if isinstance(data_in, memoryview) else len(data_in),
                       task.expected_in)
        data_out = task.data_out
        n_out = 0 if data_out is None else (
            data_out.nbytes if isinstance(data_out, memoryview) else len(data_out))
        rec = {
            "t": round(time.time(), 6),
            "initiator": task.nexus.initiator_name if task.nexus is not None else peer,
            "peer": peer,
            "lun": task.lun,
            "tag": task.tag,
            "attr": _attr_name(task.attr),
            **decode_cdb(task.cdb, command, extent.of_task(task) if command else None),
            "cdb": bytes(task.cdb).hex(),
            "status": _status_name(task.status),
            **sense_fields(task.sense),
            "in": n_in,
            "out": n_out,
            "us": round((end_ns - start_ns) / 1000, 1),
        }
        if queued is not None:
            rec["queued"] = queued  # tasks left in the LU's task set as this one completed
        try:
            if self._file is not None:
                self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")
                self._pending += 1
                if self._pending >= FLUSH_EVERY:
                    self._file.flush()
                    self._pending = 0
            if self.live is not None:
                self.live.write(render(rec) + "\n")
                self.live.flush()
        except (OSError, ValueError) as exc:
            log.warning("trace disabled: %s", exc)
            self.enabled = False

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("trace: %s", exc)
            self._file = None


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
