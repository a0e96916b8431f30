#!/usr/bin/env python3
"""guest_bench: the guest's view. fio in the Linux test guest against ours and tgtd.

    .venv/bin/python tools/guest_bench.py [--runtime 10] [--size 1G] [--targets ours,tgtd]

Rules of this module:
- One guest boot per target, in the order given (default ours, then tgtd): the Linux
  test guest's "fio" variant (images.linux VARIANTS) with the LUN on virtio-scsi-pci as
  scsi-block (qemu.spec), so the guest's own CDBs reach the target through QEMU's
  iscsi:// driver (libiscsi). Both targets serve the same kind of LUN: a sparse file of
  --size bytes in a scratch directory, 512-byte blocks (ours `serve --backing FILE`,
  tgtd's rdwr store).
- In the guest, fio 3.33 (Debian) runs each workload of WORKLOADS on the raw device
  /dev/sda for a fixed time: `--direct=1 --ioengine=libaio --time_based --runtime=N`
  (fio HOWTO: "direct", "ioengine=libaio", "time_based", "runtime"), one fio process per
  workload, with `--output-format=json`.
- Figures come from fio's JSON report only (parse_fio_json): per job `read`/`write`
  `.iops` and `.bw_bytes` (bytes per second), `error` (the job's errno, 0 when it
  completed), and `usr_cpu`/`sys_cpu` (percent of the job's run time the fio process
  spent in user and system mode; fio's os/os-linux + stat.c compute them from
  getrusage). With 1 vCPU, usr+sys near 100 % means the guest's CPU, not the target, is
  the bottleneck (under TCG it usually is): printed as "guest cpu".
- Host side, around each fio run: the CPU seconds of QEMU and of the target process
  (/proc/PID/stat utime+stime, proc(5)), as a share of one host core.
- Every process started here (targets, QEMU) is stopped by its PID; the scratch
  directory is removed unless --keep. Servers bind 127.0.0.1 on ephemeral ports.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GUEST_DEVICE = "/dev/sda"
FIO_VARIANT = "fio"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class FioError(RuntimeError):
    """fio's output could not be read, or a job reported an error."""


@dataclass(frozen=True)
class Workload:
    name: str      # fio job name
    rw: str        # fio rw=: randread, randwrite, read, write
    bs: str        # fio bs=
    iodepth: int   # fio iodepth= (libaio: that many I/Os in flight)
    unit: str      # what the table prints: "IOPS" or "MB/s"


WORKLOADS = (
    Workload("randread-4k-qd32", "randread", "4k", 32, "IOPS"),
    Workload("randwrite-4k-qd32", "randwrite", "4k", 32, "IOPS"),
    Workload("read-1m-qd8", "read", "1m", 8, "MB/s"),
    Workload("write-1m-qd8", "write", "1m", 8, "MB/s"),
)


@dataclass(frozen=True)
class FioJob:
    """One job of fio's JSON report (the fields this tool uses)."""

    name: str
    error: int          # the job's errno; 0 = completed
    read_iops: float
    read_bw: float      # bytes per second (fio's bw_bytes)
    read_ios: int       # completed read I/Os (total_ios)
    write_iops: float
    write_bw: float
    write_ios: int
    usr_cpu: float      # percent of the job's run time
    sys_cpu: float
    runtime_ms: int     # fio's job_runtime

    @property
    def iops(self) -> float:
        return self.read_iops + self.write_iops

    @property
    def bw(self) -> float:
        return self.read_bw + self.write_bw

    @property
    def cpu(self) -> float:
        return self.usr_cpu + self.sys_cpu


def fio_command(w: Workload, runtime: float, device: str = GUEST_DEVICE,
                output: str | None = None) -> str:
    """The guest shell command running workload w on device for runtime seconds."""
    args = ["fio", f"--name={w.name}", f"--filename={device}", "--direct=1",
            "--ioengine=libaio", f"--rw={w.rw}", f"--bs={w.bs}", f"--iodepth={w.iodepth}",
            "--time_based", f"--runtime={runtime:g}", "--output-format=json"]
    if w.rw.startswith("rand"):
        args.append("--randrepeat=0")  # a fresh random sequence each run
    if output:
        args.append(f"--output={output}")
    return " ".join(args)


def parse_fio_json(text: str) -> tuple[str, list[FioJob]]:
    """fio's version and jobs from `--output-format=json` output.

    Lines before the report's opening brace (fio's warnings, a console's echo) are
    skipped; anything else that is not JSON raises FioError.
    """
    start = text.find("{")
    if start < 0:
        raise FioError(f"no JSON in fio's output: {text[:300]!r}")
    try:
        report, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise FioError(f"fio's output is not JSON ({e}): {text[start:start + 300]!r}") from e
    try:
        jobs = [_job(j) for j in report["jobs"]]
        return report["fio version"], jobs
    except (KeyError, TypeError, ValueError) as e:
        raise FioError(f"fio's JSON report lacks {e}") from e


def _job(j: dict) -> FioJob:
    r, w = j["read"], j["write"]
    return FioJob(name=j["jobname"], error=int(j["error"]),
                  read_iops=float(r["iops"]), read_bw=float(r["bw_bytes"]),
                  read_ios=int(r["total_ios"]),
                  write_iops=float(w["iops"]), write_bw=float(w["bw_bytes"]),
                  write_ios=int(w["total_ios"]),
                  usr_cpu=float(j["usr_cpu"]), sys_cpu=float(j["sys_cpu"]),
                  runtime_ms=int(j["job_runtime"]))


def checked_job(text: str, name: str) -> FioJob:
    """The job `name` of a fio JSON report; FioError unless it completed without error
    and did I/O."""
    _, jobs = parse_fio_json(text)
    found = [j for j in jobs if j.name == name]
    if len(found) != 1:
        raise FioError(f"fio's report has {len(found)} jobs named {name!r}")
    job = found[0]
    if job.error:
        raise FioError(f"fio job {name} ended with error {job.error} "
                       f"({os.strerror(job.error)})")
    if job.read_ios + job.write_ios == 0:
        raise FioError(f"fio job {name} completed no I/O")
    return job


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (proc(5) /proc/PID/stat fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass(frozen=True)
class Result:
    target: str
    workload: Workload
    job: FioJob
    qemu_cpu: float    # share of one host core over the fio run, percent
    target_cpu: float

    def figure(self) -> float:
        return self.job.iops if self.workload.unit == "IOPS" else self.job.bw / 1e6


def _run_target(kind: str, workdir: Path, size: int, runtime: float, image,
                progress, ours_args: list[str] = ()) -> list[Result]:
    import time

    from qemu.spec import AttachedGuest, AttachSpec, TargetAddress
    from target.testing.servers import OurTarget, Tgtd

    backing = workdir / f"{kind}.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    server = (OurTarget(["--backing", str(backing), *ours_args], workdir=workdir / kind)
              if kind == "ours" else Tgtd(backing, workdir=workdir / kind))
    results = []
    with server:
        address = TargetAddress(server.port, server.iqn, server.lun)
        with AttachedGuest(AttachSpec(hba="virtio-scsi-pci", mode="scsi-block"), address,
                           workdir / f"console-{kind}.log", image=image) as vm:
            vm.start()
            progress(f"{kind}: guest up in {vm.boot_seconds:.1f} s (log {vm.log_path})")
            for w in WORKLOADS:
                out = f"/tmp/{w.name}.json"
                q0, t0, c0 = cpu_seconds(vm.pid), cpu_seconds(server.pid), time.monotonic()
                vm.check(fio_command(w, runtime, output=out), timeout=runtime + 120)
                q1, t1, c1 = cpu_seconds(vm.pid), cpu_seconds(server.pid), time.monotonic()
                job = checked_job(vm.check(f"cat {out}"), w.name)
                wall = c1 - c0
                results.append(Result(kind, w, job, 100 * (q1 - q0) / wall,
                                      100 * (t1 - t0) / wall))
                r = results[-1]
                progress(f"{kind}: {w.name} {r.figure():.1f} {w.unit}, guest cpu "
                         f"{job.cpu:.0f} %")
            vm.poweroff()
    return results


def report(results: list[Result], runtime: float) -> str:
    """The table: per workload and target the figure and the CPU shares; ours/tgtd."""
    lines = [f"fio 3.33 in the Linux guest (TCG unless KVM is usable), virtio-scsi-pci + "
             f"scsi-block, {runtime:g} s per workload, libaio, O_DIRECT, {GUEST_DEVICE}",
             "guest cpu = fio's usr_cpu + sys_cpu (1 vCPU: ~100 % means the guest is the "
             "bottleneck); qemu/target = host CPU, % of one core",
             f"{'workload':<18} {'target':<6} {'figure':>12} {'guest cpu':>9} "
             f"{'qemu':>6} {'target':>6}"]
    by = {(r.target, r.workload.name): r for r in results}
    for w in WORKLOADS:
        for kind in dict.fromkeys(r.target for r in results):
            r = by.get((kind, w.name))
            if r is None:
                continue
            lines.append(f"{w.name:<18} {kind:<6} {r.figure():>7.1f} {w.unit:<4} "
                         f"{r.job.cpu:>8.0f}% {r.qemu_cpu:>5.0f}% {r.target_cpu:>5.0f}%")
        ours, tgtd = by.get(("ours", w.name)), by.get(("tgtd", w.name))
        if ours and tgtd and tgtd.figure():
            lines.append(f"{'':<18} ours/tgtd {ours.figure() / tgtd.figure():.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shutil
    import tempfile

    ap = argparse.ArgumentParser(prog="guest_bench", description=(
        "fio in the Linux test guest (virtio-scsi-pci, scsi-block) against our target "
        "and tgtd: 4 KiB random read/write QD32, 1 MiB sequential read/write QD8."))
    ap.add_argument("--runtime", type=float, default=10.0, help="seconds per workload")
    ap.add_argument("--size", default="1G", help="LUN size (K, M, G suffixes)")
    ap.add_argument("--targets", default="ours,tgtd",
                    help="comma-separated, in boot order: ours, tgtd")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--ours-args", default="", help="extra arguments for our server")
    args = ap.parse_args(argv)
    kinds = [k for k in args.targets.split(",") if k]
    if not kinds or set(kinds) - {"ours", "tgtd"}:
        ap.error("--targets takes ours and/or tgtd")
    size = _size(args.size)

    from images import linux

    def progress(msg: str) -> None:
        print(f"guest_bench: {msg}", file=sys.stderr, flush=True)

    image = linux.build().variant(FIO_VARIANT)
    workdir = Path(tempfile.mkdtemp(prefix="guest-bench-"))
    results: list[Result] = []
    try:
        for kind in kinds:
            results += _run_target(kind, workdir, size, args.runtime, image, progress,
                                   shlex.split(args.ours_args))
    except Exception as e:  # noqa: BLE001 - a failed run prints what it has and why
        progress(f"FAILED: {type(e).__name__}: {e}")
        args.keep = True  # the console logs say why
        if results:
            print(report(results, args.runtime))
        return 1
    finally:
        if args.keep:
            progress(f"scratch directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, args.runtime))
    return 0


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
