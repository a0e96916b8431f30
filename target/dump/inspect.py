"""`scsi-target dump inspect LUN-OR-FILE`: find a crash dump, check it, summarise, extract.

Rules:
- The source is an iscsi:// LUN URL (read over iSCSI, target.dump.source) or an image
  file or block device. Dumps are found by target.dump.formats.scan(): an illumos dump by
  its header where savecore looks (64 KiB before the end), Linux dumps by signature at
  any MiB boundary (kdump's capture writes at a chosen offset, e.g. 64 MiB).
- Checking: an illumos dump must be DF_VALID and DF_COMPLETE with its header copy at
  dump_start and all its pages present; a flattened dump must have all its records and
  the end marker, and reassemble into a kdump-compressed or ELF dump whose header parses.
- The summary names OS, format, release, panic string (illumos; Linux keeps it in the
  log, which `makedumpfile --dump-dmesg` on the extracted file recovers), size and crash
  time. --extract FILE writes the dump as savecore would keep it: an illumos dump's
  pages, or a Linux dump reassembled (makedumpfile -R's output).
- Exit status: 0 a valid dump found, 1 none or not valid (the reason printed), 2 a source
  that cannot be read.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from target.dump import formats
from target.dump.source import SourceError, Window, open_source


def _linux(f, offset: int, kind: str, size: int, extract: Path | None):
    if kind == "flattened":
        length = formats.flattened_length(f, offset)
        with tempfile.TemporaryFile() as tmp:
            full = formats.reassemble_flattened(f, tmp, offset)
            summary = formats.summarize_file(tmp, full)
            if extract is not None:
                tmp.seek(0)
                with open(extract, "wb") as out:
                    while chunk := tmp.read(1 << 20):
                        out.write(chunk)
        summary.format = f"flattened ({summary.format} inside)"
        summary.details["stream_bytes"] = length
    else:
        view = Window(f, offset, size - offset)
        summary = formats.summarize_file(view, size - offset)
        if extract is not None:
            raise formats.DumpFormatError("--extract of an in-place ELF/kdump dump is not "
                                          "needed: it is the image itself from that offset")
    summary.offset = offset
    return summary


def inspect(spec: str, extract: Path | None = None) -> list[formats.DumpSummary]:
    f, size = open_source(spec)
    try:
        found = formats.scan(f, size)
        summaries = []
        for offset, kind in found:
            if kind == "illumos":
                dump = formats.find_illumos_dump(f, size)
                assert dump is not None
                if not dump.complete:
                    raise formats.DumpFormatError(f"illumos dump at {dump.start}: flags "
                                                  f"{dump.flags:#x} lack DF_VALID|DF_COMPLETE")
                pages = formats.read_illumos_payload(f, dump)
                if extract is not None:
                    extract.write_bytes(pages)
                summaries.append(formats.illumos_summary(dump))
            else:
                summaries.append(_linux(f, offset, kind, size, extract))
            if extract is not None:
                break  # one dump extracted: the first found
        return summaries
    finally:
        f.close()


def render(spec: str, summaries: list[formats.DumpSummary]) -> str:
    lines = []
    for s in summaries:
        when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.crashtime))
                if s.crashtime else "unknown")
        lines += [f"{spec}: {s.os} crash dump at byte {s.offset}",
                  f"  format   {s.format}", f"  release  {s.release or 'unknown'}",
                  f"  panic    {s.panic if s.panic is not None else '(in the kernel log)'}",
                  f"  size     {s.size} bytes", f"  crashed  {when}",
                  f"  page     {s.pagesize or 'unknown'}"]
        for k, v in s.details.items():
            lines.append(f"  {k:<8} {v}")
    return "\n".join(lines)


def main(spec: str, extract: Path | None = None, as_json: bool = False) -> int:
    try:
        summaries = inspect(spec, extract)
    except SourceError as exc:
        print(f"scsi-target: {exc}", file=sys.stderr)
        return 2
    except formats.DumpFormatError as exc:
        print(f"scsi-target: {spec}: not a valid dump: {exc}", file=sys.stderr)
        return 1
    if not summaries:
        print(f"scsi-target: {spec}: no crash dump found", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([asdict(s) for s in summaries], indent=2))
    else:
        print(render(spec, summaries))
        if extract is not None:
            print(f"extracted to {extract}")
    return 0
