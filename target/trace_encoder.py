"""The CDB trace's wire format and its encoder process: binary records in, JSON lines out.

Rules:
- The server (target.trace.Tracer) packs each completed command into one fixed binary
  record (COMMAND, little-endian, precompiled struct) in preallocated chunks and writes the
  chunks to this process's stdin; this process (`python -m target.trace_encoder`, a child
  of the server: another core, its own GIL) turns them into the JSON lines of the trace
  file and, with --trace-live, the rendered lines. Nothing here runs in the server's
  process but the record layouts and render().
- The stream is a sequence of records, each starting with its type byte:
  COMMAND (the fixed fields; a CDB of more than 16 bytes follows the record, its length in
  the record); DEFINE (id, kind, payload length, payload): a string (the peer, the
  initiator name: UTF-8), a sense data blob, or a table entry (JSON [name, service action
  or null, [[bit, flag name], ...] of its block layout or null]), each sent once and then
  referred to by its id (0: no sense; no table entry, the command named by its opcode);
  CLOCK (time.time_ns() - time.perf_counter_ns() + 500, sent at the start of each chunk:
  "t" is end + this, in microseconds, rounded half up); RESET (forget every id and
  template: the server's table of ids started afresh).
- A table entry travels as the facts the trace shows of it (name, service action, the
  byte-1 flags its block layout names: target.scsi.commands.Command, target.scsi.extent.
  BlockCdb.flags), so this process needs no opcode table and any table's entries are
  named exactly as the server's tables name them.
- The lines are those of the field rules in target/trace.py's header, by one bytes
  %-template per command shape (entry, attribute, status, sense, CDB byte 1 when the
  command has a block range, initiator, peer, LUN, queued or not; an unknown opcode's code
  too), built once from json.dumps of each constant; only integers and the CDB's hex are
  formatted per record.
- Each batch read from stdin is written at once (os.write of the whole batch: no buffer
  to flush), so a line reaches the file as soon as the server sends its record (the server
  sends at least every FLUSH_INTERVAL). At end of input it exits 0. On any error it
  writes one line, the error, to stderr and exits 1 (the server warns once and stops
  tracing: target.trace).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from binascii import hexlify as _hex

from target.scsi.sense import SenseKey, sense_key_asc
from target.scsi.task import Status, TaskAttr

# Record types (the first byte of each record).
T_COMMAND, T_DEFINE, T_CLOCK, T_RESET = 0, 1, 2, 3
# DEFINE kinds.
K_STR, K_BYTES, K_ENTRY = 0, 1, 2
# type, has range, entry, peer, initiator, sense, LUN, tag, attr, status, CDB length, LBA,
# blocks, Data-In bytes, Expected Data Transfer Length, Data-Out bytes, start, end,
# queued (-1: not through a task set), CDB (first 16 bytes)
COMMAND = struct.Struct("<BBIIIIQIBBHQQQQQQQq16s")
DEFINE = struct.Struct("<BIBI")  # type, id, kind, payload length; the payload follows
CLOCK = struct.Struct("<Bq")
RESET = struct.Struct("<B")
SHORT_CDB = 16
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


def status_name(status: int) -> str:
    try:
        return Status(status).name.replace("_", " ")
    except ValueError:
        return f"0x{status:02X}"


def attr_name(attr: int) -> str:
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


def entry_payload(name: str, service_action: int | None,
                  flags: dict[int, str] | None) -> bytes:
    """A table entry's DEFINE payload (flags: its block layout's, None without one)."""
    return json.dumps([name, service_action,
                       None if flags is None else list(flags.items())]).encode()


def _lit(value) -> str:
    """A constant, as JSON, with % escaped for a template."""
    return json.dumps(value, separators=(",", ":")).replace("%", "%%")


class Decoder:
    """The stream's state (ids, clock offset, templates) and its records -> JSON lines."""

    def __init__(self) -> None:
        self.ids: dict[int, object] = {0: None}
        self.offset = time.time_ns() - time.perf_counter_ns() + 500
        self.templates: dict[tuple, bytes] = {}

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """The lines of the whole records at the start of `data`, and the bytes they took."""
        out: list[bytes] = []
        append = out.append
        ids = self.ids
        templates = self.templates
        unpack = COMMAND.unpack_from
        size = COMMAND.size
        end_of_data = len(data)
        off = 0
        while off < end_of_data:
            kind = data[off]
            if kind == T_COMMAND:
                if off + size > end_of_data:
                    break
                (_, ranged, e, p, i, s, lun, tag, attr, status, cdb_len, lba, blocks, n_in,
                 expected_in, n_out, start, end, queued, cdb) = unpack(data, off)
                if cdb_len > SHORT_CDB:
                    if off + size + cdb_len > end_of_data:
                        break
                    cdb = data[off + size:off + size + cdb_len]
                    off += size + cdb_len
                else:
                    cdb = cdb[:cdb_len]
                    off += size
                key = (e if e or not cdb else -1 - cdb[0], attr, status, s,
                       cdb[1] if ranged and cdb_len > 1 else -1, i, p, lun, queued < 0)
                tpl = templates.get(key)
                if tpl is None:
                    tpl = self._template(key, ids[e], ranged, cdb, ids[s], ids[i], ids[p])
                if status == 0 or status == 4:  # GOOD, CONDITION MET: Data-In was sent
                    if n_in > expected_in:
                        n_in = expected_in
                else:
                    n_in = 0
                t = (end + self.offset) // 1000
                us = (end - start + 50) // 100
                if not ranged:
                    if queued < 0:
                        append(tpl % (t // 1000000, t % 1000000, tag, _hex(cdb), n_in, n_out,
                                      us // 10, us % 10))
                    else:
                        append(tpl % (t // 1000000, t % 1000000, tag, _hex(cdb), n_in, n_out,
                                      us // 10, us % 10, queued))
                elif queued < 0:
                    append(tpl % (t // 1000000, t % 1000000, tag, lba, blocks, _hex(cdb),
                                  n_in, n_out, us // 10, us % 10))
                else:
                    append(tpl % (t // 1000000, t % 1000000, tag, lba, blocks, _hex(cdb),
                                  n_in, n_out, us // 10, us % 10, queued))
            elif kind == T_DEFINE:
                if off + DEFINE.size > end_of_data:
                    break
                _, ident, what, length = DEFINE.unpack_from(data, off)
                start_of = off + DEFINE.size
                if start_of + length > end_of_data:
                    break
                payload = bytes(data[start_of:start_of + length])
                if what == K_STR:
                    ids[ident] = payload.decode()
                elif what == K_BYTES:
                    ids[ident] = payload
                elif what == K_ENTRY:
                    name, sa, flags = json.loads(payload)
                    ids[ident] = (name, sa, None if flags is None else dict(flags))
                else:
                    raise ValueError(f"trace stream: define of unknown kind {what}")
                off = start_of + length
            elif kind == T_CLOCK:
                if off + CLOCK.size > end_of_data:
                    break
                self.offset = CLOCK.unpack_from(data, off)[1]
                off += CLOCK.size
            elif kind == T_RESET:
                ids.clear()
                ids[0] = None
                templates.clear()
                off += RESET.size
            else:
                raise ValueError(f"trace stream: record of unknown type {kind} at {off}")
        return b"".join(out), off

    def _template(self, key: tuple, entry, ranged: int, cdb: bytes, sense, initiator,
                  peer) -> bytes:
        """The %-template of one shape: the fields target/trace.py's rules give, in order."""
        _, attr, status, _, _, _, _, lun, no_queue = key
        parts = ['{"t":%d.%06d,"initiator":', _lit(initiator), ',"peer":', _lit(peer),
                 ',"lun":', _lit(lun), ',"tag":%d,"attr":', _lit(attr_name(attr))]
        if entry is None:
            parts += [',"op":', _lit(f"opcode 0x{cdb[0]:02X}" if cdb else "opcode 0x00")]
            ranged = 0
        else:
            name, sa, flags = entry
            parts += [',"op":', _lit(name)]
            if sa is not None:
                parts += [',"sa":', _lit(sa)]
            if ranged:
                parts.append(',"lba":%d,"blocks":%d')
                named = ([n for bit, n in flags.items() if cdb[1] & int(bit)]
                         if flags and len(cdb) >= 2 else [])
                if named:
                    parts += [',"flags":', _lit(named)]
        parts += [',"cdb":"%s","status":', _lit(status_name(status))]
        for name, value in sense_fields(sense or b"").items():
            parts += [",", _lit(name), ":", _lit(value)]
        parts.append(',"in":%d,"out":%d,"us":%d.%d')
        if not no_queue:
            parts.append(',"queued":%d')
        parts.append("}\n")
        tpl = "".join(parts).encode("ascii")  # json.dumps escapes all else
        if len(self.templates) >= MAX_TEMPLATES:
            self.templates.clear()
        self.templates[key] = tpl
        return tpl


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(stdin: int, out: int | None, live: int | None, encoding: str) -> None:
    """Read the stream from `stdin` to its end; lines to `out`, rendered ones to `live`."""
    decoder = Decoder()
    pending = b""
    while True:
        data = os.read(stdin, 1 << 20)
        if not data:
            break
        if pending:
            data = pending + data
        lines, used = decoder.feed(data)
        pending = data[used:]
        if lines:
            if out is not None:
                _write_all(out, lines)
            if live is not None:
                text = "".join(render(json.loads(line)) + "\n" for line in lines.splitlines())
                _write_all(live, text.encode(encoding, "backslashreplace"))
    if pending:
        raise ValueError(f"trace stream: {len(pending)} bytes of a record cut at the end")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the CDB trace's encoder (run by target.trace)")
    ap.add_argument("--out", type=int, default=-1, help="fd of the trace file (-1: none)")
    ap.add_argument("--live", action="store_true", help="rendered lines to stdout")
    ap.add_argument("--encoding", default="utf-8", help="the live stream's encoding")
    args = ap.parse_args(argv)
    try:
        serve(0, None if args.out < 0 else args.out, 1 if args.live else None, args.encoding)
    except Exception as exc:  # noqa: BLE001 - reported to the server, which warns once
        sys.stderr.write(f"{exc}\n")
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
