"""tools/bench --elevator: fifo against disksort on a LU that seeks (issue 4's benchmark).

    tools/bench --elevator                      # 2 x 10 s, plot in ./elevator.png
    tools/bench --elevator --seconds 20 --plot /tmp/elevator.png --json elevator.json

Rules of this tool:
- Our target serves one sparse file in /dev/shm (--size, default 1 GiB) as a depth-1 LU
  with the rotational disk model (7200 rpm, 8.5 ms average seek, 0.8 ms track to track;
  `--rotational --dispatch-depth 1`), the starvation bound at its defaults (on), and the
  CDB trace on. One run per policy, fifo then disksort, each a fresh server.
- The load is iscsi-perf: random 4 KiB reads at queue depth 32 for --seconds; its final
  "iops average" is the IOPS.
- Seek distance is recomputed from the trace, independently of the target's own
  counters: READs in completion order (with one task running at a time, the order the
  disk served them), distance |lba - end of the previous one| summed.
- The plot (matplotlib, PNG) shows LBA against time for both policies over the same
  window: fifo's scatter and disksort's sweeps.
- Servers are stopped by PID; a failed run is reported and the tool exits 2.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from target.testing.servers import OurTarget, ServerError
from target.trace import read as read_trace

POLICIES = ("fifo", "disksort")
PERF_RE = re.compile(r"iops average (\d+)")
READS = {"READ(6)", "READ(10)", "READ(12)", "READ(16)"}
PLOT_WINDOW_S = 3.0


def seeks(trace: Path) -> dict:
    """Per-trace figures: reads, total and mean seek distance, latency p50/p99/max."""
    points: list[tuple[float, int]] = []
    head = None
    total = 0
    lat: list[float] = []
    for rec in read_trace(trace):
        if rec.get("op") not in READS or "lba" not in rec or rec.get("status") != "GOOD":
            continue
        lba = int(rec["lba"])
        if head is not None:
            total += abs(lba - head)
        head = lba + int(rec["blocks"])
        points.append((float(rec["t"]), lba))
        lat.append(float(rec["us"]) / 1000)
    lat.sort()
    n = len(points)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] if n else 0.0

    return {"reads": n, "seek_total": total, "seek_mean": total / max(n - 1, 1),
            "lat_p50_ms": pct(0.5), "lat_p99_ms": pct(0.99),
            "lat_max_ms": lat[-1] if lat else 0.0, "points": points}


def run_policy(policy: str, backing: Path, args: argparse.Namespace, workdir: Path) -> dict:
    trace = workdir / f"trace-{policy}.trace"
    extra = ["--backing", str(backing), "--rotational", "--dispatch-depth", "1",
             "--elevator", policy, "--trace", str(trace), *shlex.split(args.ours_args)]
    with OurTarget(extra, workdir=workdir / policy) as server:
        cmd = ["iscsi-perf", "-i", args.initiator, "-m", "32", "-b",
               str(max(1, 4096 // args.block_size)), "-r", "-t", str(int(args.seconds)),
               server.url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 3 + 30,
                             stdin=subprocess.DEVNULL)
        found = PERF_RE.findall(res.stdout)
        if res.returncode != 0 or not found:
            raise ServerError(f"iscsi-perf failed ({res.returncode}): "
                              f"{(res.stdout + res.stderr)[-300:]!r}")
    out = seeks(trace)
    out["iops"] = int(found[-1])
    return out


def plot(results: dict[str, dict], path: Path, capacity_blocks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), sharex=True)
    for ax, (policy, r) in zip(axes, results.items(), strict=True):
        pts = r["points"]
        if pts:
            t0 = pts[min(len(pts) - 1, len(pts) // 4)][0]  # skip the ramp-up
            window = [(t - t0, lba) for t, lba in pts if 0 <= t - t0 <= PLOT_WINDOW_S]
            ax.plot([p[0] for p in window], [p[1] for p in window], ".-", markersize=3,
                    linewidth=0.4)
        ax.set_ylim(0, capacity_blocks)
        ax.set_ylabel("LBA")
        ax.set_title(f"{policy}: {r['iops']} IOPS, mean seek {r['seek_mean']:,.0f} LBAs")
    axes[-1].set_xlabel(f"seconds (a {PLOT_WINDOW_S:g} s window)")
    fig.suptitle("Random 4 KiB reads, QD32, depth-1 LU with a 7200 rpm seek model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict]) -> str:
    f, d = results["fifo"], results["disksort"]
    rows = [("IOPS", f"{f['iops']}", f"{d['iops']}", d["iops"] / max(f["iops"], 1)),
            ("reads traced", f"{f['reads']}", f"{d['reads']}", None),
            ("total seek (LBAs)", f"{f['seek_total']:,}", f"{d['seek_total']:,}", None),
            ("mean seek (LBAs)", f"{f['seek_mean']:,.0f}", f"{d['seek_mean']:,.0f}",
             d["seek_mean"] / max(f["seek_mean"], 1)),
            ("latency p50 (ms)", f"{f['lat_p50_ms']:.1f}", f"{d['lat_p50_ms']:.1f}", None),
            ("latency p99 (ms)", f"{f['lat_p99_ms']:.1f}", f"{d['lat_p99_ms']:.1f}", None),
            ("latency max (ms)", f"{f['lat_max_ms']:.1f}", f"{d['lat_max_ms']:.1f}", None)]
    lines = [f"{'':20} | {'fifo':>14} | {'disksort':>14} | disksort/fifo",
             f"{'-' * 20}-|-{'-' * 14}-|-{'-' * 14}-|--------------"]
    for name, a, b, r in rows:
        lines.append(f"{name:20} | {a:>14} | {b:>14} | {'' if r is None else f'{r:.2f}'}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    plot_path = (args.plot or Path("elevator.png")).resolve()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="elevator-") as tmp:
        workdir = Path(tmp)
        with tempfile.NamedTemporaryFile(prefix="elevator-", suffix=".img", dir=shm) as f:
            backing = Path(f.name)
            f.truncate(args.size)
            results: dict[str, dict] = {}
            try:
                for policy in POLICIES:
                    print(f"bench: elevator {policy}, {args.seconds:g} s ...", flush=True)
                    results[policy] = run_policy(policy, backing, args, workdir)
            except (ServerError, subprocess.TimeoutExpired) as exc:
                print(f"bench: elevator run failed: {exc}")
                return 2
    print(table(results))
    f, d = results["fifo"], results["disksort"]
    total_ratio = d["seek_total"] / max(f["seek_total"], 1)
    print(f"disksort/fifo: total seek distance {total_ratio:.3f} (goal <= 0.25, with "
          f"{d['reads'] / max(f['reads'], 1):.2f}x the reads), "
          f"IOPS {d['iops'] / max(f['iops'], 1):.2f} (goal >= 1.5)")
    plot(results, plot_path, args.size // args.block_size)
    print(f"plot: {plot_path}")
    if args.json:
        slim = {p: {k: v for k, v in r.items() if k != "points"} for p, r in results.items()}
        args.json.write_text(json.dumps(slim, indent=2) + "\n")
    return 0
