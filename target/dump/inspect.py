"""`scsi-target dump inspect SOURCE`: find a crash dump, check it, summarise, save it.

Rules:
- The source is an iscsi:// LUN URL (read over iSCSI, target.dump.source) or an image
  file or block device (or a vmdump.N file). Dumps are found by
  target.dump.formats.scan(): an illumos dump by its terminal header where savecore
  looks (64 KiB before the 64 KiB-aligned end), Linux dumps by signature at any MiB
  boundary (kdump's capture writes at a chosen offset, e.g. 64 MiB).
- Checking: an illumos dump is checked as savecore's read_dumphdr() checks it
  (target.dump.illumos.read_dump: magic, version, wordsize, data header, the initial
  header equal to the terminal one); a dump without DF_COMPLETE or DF_VALID is a warning
  (printed on stderr, and in the JSON's details.warnings), not a refusal. A flattened
  dump must have all its records and the end marker, and reassemble into a
  kdump-compressed or ELF dump whose header parses.
- The summary names OS, format, release, panic string (illumos; Linux keeps it in the
  log, which `makedumpfile --dump-dmesg` on the extracted file recovers), size (of the
  uncompressed pages for illumos) and crash time.
- Saving, illumos (savecore(8), usr/src/cmd/savecore/savecore.c):
  --extract DIR writes DIR/vmdump.N as plain savecore does (copy_crashfile(): still
  compressed, laid out like a dump device); --expand DIR writes DIR/unix.N (the symbol
  table) and DIR/vmcore.N (the pages decompressed, build_corefile()) as
  `savecore -f vmdump.N` or savecore with DUMPADM_CSAVE=off does. N is the number in
  DIR/bounds (0 if absent), which is then set to N + 1; for a source file named
  vmdump.N, --expand uses that N and leaves bounds alone (savecore's getbounds()).
  Pages are streamed: the source may be far smaller than the pages it holds.
- Saving, Linux: --extract FILE writes the dump as a file: a flattened dump reassembled
  (makedumpfile -R's output). --expand is illumos only.
- Each file written is printed with its size (and listed in the JSON's details.files).
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

from target.dump import formats, illumos
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


def _illumos(f, size: int, spec: str, extract: Path | None,
             expand: Path | None) -> formats.DumpSummary:
    dump = illumos.read_dump(f, size)
    files: list[dict] = []
    if extract is not None:
        extract.mkdir(parents=True, exist_ok=True)
        n = illumos.next_bounds(extract)
        path = extract / f"vmdump.{n}"
        with open(path, "wb") as out:
            illumos.write_vmdump(f, dump, out)
        illumos.write_bounds(extract, n)
        files.append({"name": str(path), "size": path.stat().st_size})
    if expand is not None:
        expand.mkdir(parents=True, exist_ok=True)
        n = -1 if spec.startswith("iscsi://") else illumos.getbounds(spec)
        from_file = n >= 0
        if not from_file:
            n = illumos.next_bounds(expand)
        unix, core = expand / f"unix.{n}", expand / f"vmcore.{n}"
        with open(core, "wb") as c, open(unix, "wb") as u:
            illumos.write_vmcore(f, dump, c, u)
        if not from_file:
            illumos.write_bounds(expand, n)
        files += [{"name": str(p), "size": p.stat().st_size} for p in (unix, core)]
    summary = illumos.summary(dump)
    if files:
        summary.details["files"] = files
    return summary


def inspect(spec: str, extract: Path | None = None,
            expand: Path | None = None) -> list[formats.DumpSummary]:
    f, size = open_source(spec)
    try:
        found = formats.scan(f, size)
        summaries = []
        for offset, kind in found:
            if kind == "illumos":
                summaries.append(_illumos(f, size, spec, extract, expand))
            else:
                if expand is not None:
                    raise formats.DumpFormatError(f"{kind} dump at {offset}: --expand is "
                                                  "for illumos dumps (savecore -f)")
                summaries.append(_linux(f, offset, kind, size, extract))
            if extract is not None or expand is not None:
                break  # one dump saved: the first found
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
            if k not in ("files", "warnings"):
                lines.append(f"  {k:<8} {v}")
        for fl in s.details.get("files", []):
            lines.append(f"wrote {fl['name']} ({fl['size']} bytes)")
    return "\n".join(lines)


def main(spec: str, extract: Path | None = None, as_json: bool = False,
         expand: Path | None = None) -> int:
    try:
        summaries = inspect(spec, extract, expand)
    except SourceError as exc:
        print(f"scsi-target: {exc}", file=sys.stderr)
        return 2
    except formats.DumpFormatError as exc:
        print(f"scsi-target: {spec}: not a valid dump: {exc}", file=sys.stderr)
        return 1
    if not summaries:
        print(f"scsi-target: {spec}: no crash dump found", file=sys.stderr)
        return 1
    for s in summaries:
        for w in s.details.get("warnings", []):
            print(f"scsi-target: {spec}: warning: {w}", file=sys.stderr)
    if as_json:
        print(json.dumps([asdict(s) for s in summaries], indent=2))
    else:
        print(render(spec, summaries))
        if extract is not None and all(s.os == "linux" for s in summaries):
            print(f"extracted to {extract}")
    return 0
