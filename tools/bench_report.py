"""The figures of tools/bench: workloads, the runs of each side, the table and the JSON rows.

Rules of this module:
- A workload's row holds one Runs per side: "tgtd", "ours", and where measured
  "baseline" and "ceiling". Runs.values has one entry per round (None for a failed run),
  in round order, so values of two sides at the same index were measured in one round.
- The side columns show the best (max) or the median of the rounds, as --stat says.
- The ratio columns ours/tgtd and ours/ceiling (and tgtd/ceiling, in the JSON) are taken
  per round, a/b of the two values of that round, and the column shows the best (max) or
  the median of those per-round ratios (--stat): a ratio of two figures measured side by
  side, not of two figures from different rounds. ours/baseline keeps its median with
  the range of the rounds beside it.
- The ceiling of a 4 KiB (IOPS) row is tgtd's null store through the same client; of a
  1 MiB (GB/s) row, loopback TCP throughput (iperf3, one stream): see bench_ceilings.py.
- Pure: values in, text and dicts out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

MiB = 1 << 20


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    client: str  # "perf" (iscsi-perf) or "qemu" (qemu-img bench)
    depth: int
    size: int
    write: bool = False
    unit: str = "IOPS"  # or "GB/s"


WORKLOADS = (
    Workload("randread-4k-qd32", "4 KiB random read, QD32 (iscsi-perf)", "perf", 32, 4096),
    Workload("read-4k-qd32", "4 KiB read, QD32 (qemu-img bench)", "qemu", 32, 4096),
    Workload("write-4k-qd32", "4 KiB write, QD32 (qemu-img bench)", "qemu", 32, 4096, True),
    Workload("read-4k-qd1", "4 KiB read, QD1 (qemu-img bench)", "qemu", 1, 4096),
    Workload("read-1m-qd8", "1 MiB read, QD8 (qemu-img bench)", "qemu", 8, MiB, False, "GB/s"),
    Workload("write-1m-qd8", "1 MiB write, QD8 (qemu-img bench)", "qemu", 8, MiB, True, "GB/s"),
)

CEILING_NOTE = ("ceiling: IOPS rows = tgtd null store (--bstype null) through the same "
                "client; GB/s rows = loopback TCP, one iperf3 stream of 1 MiB writes")


@dataclass
class Runs:
    """The measured values (None for a failed run) of one workload on one side."""

    values: list[float | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def value(self, stat: str) -> float | None:
        return pick([v for v in self.values if v is not None], stat)


def pick(values: list[float], stat: str) -> float | None:
    """The best (max) or the median of `values`; None when there are none."""
    if not values:
        return None
    return max(values) if stat == "best" else statistics.median(values)


def fmt(w: Workload, value: float | None) -> str:
    if value is None:
        return "error"
    if w.unit == "GB/s":
        return f"{value:.2f} GB/s"
    return f"{value / 1000:.1f}k IOPS"


def ratio(ours: float | None, tgtd: float | None) -> float | None:
    return ours / tgtd if ours is not None and tgtd else None


def paired(a: Runs, b: Runs) -> list[float]:
    """a/b for each round in which both sides gave a value."""
    return [x / y for x, y in zip(a.values, b.values, strict=True)
            if x is not None and y]


def paired_stat(row: dict[str, Runs], a: str, b: str, stat: str) -> float | None:
    """--stat over the per-round ratios a/b of a row; None without both sides."""
    if a not in row or b not in row:
        return None
    return pick(paired(row[a], row[b]), stat)


def paired_text(ratios: list[float]) -> str:
    if not ratios:
        return "-"
    return (f"{statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f})")


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(workloads: list[Workload], results: dict[str, dict[str, Runs]], stat: str,
          ours: str) -> str:
    """The table: side columns, then ours/tgtd and ours/ceiling per round (--stat)."""
    width = max(len(w.label) for w in workloads)
    first = results[workloads[0].name]
    baseline, ceiling = "baseline" in first, "ceiling" in first
    cols = ["tgtd"] + (["baseline"] if baseline else []) + [ours] + \
        (["ceiling"] if ceiling else [])
    head = f"{'workload':<{width}} | " + " | ".join(f"{c:>12}" for c in cols)
    rule = f"{'-' * width}-|" + "|".join("-" * 14 for _ in cols)
    head += " | ours/tgtd"
    rule += "|----------"
    if ceiling:
        head += " | ours/ceiling"
        rule += "-|-------------"
    if baseline:
        head += " | base/tgtd | ours/baseline per round: median (min-max)"
        rule += "-|-----------|-------------------------------------------"
    lines = [head, rule]
    for w in workloads:
        row = results[w.name]
        sides = ["tgtd"] + (["baseline"] if baseline else []) + ["ours"] + \
            (["ceiling"] if ceiling else [])
        line = f"{w.label:<{width}} | " + " | ".join(
            f"{fmt(w, row[s].value(stat)):>12}" for s in sides)
        line += f" | {_r(paired_stat(row, 'ours', 'tgtd', stat)):>9}"
        if ceiling:
            line += f" | {_r(paired_stat(row, 'ours', 'ceiling', stat)):>12}"
        if baseline:
            line += (f" | {_r(paired_stat(row, 'baseline', 'tgtd', stat)):>9} | "
                     f"{paired_text(paired(row['ours'], row['baseline']))}")
        lines.append(line)
    if ceiling:
        lines.append(CEILING_NOTE)
    return "\n".join(lines)


def json_rows(workloads: list[Workload], results: dict[str, dict[str, Runs]],
              stat: str) -> list[dict]:
    """One dict per workload: every side's runs, value and errors, and the ratios."""
    rows = []
    for w in workloads:
        row = results[w.name]
        sides = {side: {"runs": runs.values, "value": runs.value(stat),
                        "errors": runs.errors} for side, runs in row.items()}
        entry = {"name": w.name, "label": w.label, "unit": w.unit, **sides,
                 "ratio": paired_stat(row, "ours", "tgtd", stat),
                 "ours_over_tgtd_per_round": paired(row["ours"], row["tgtd"])}
        if "ceiling" in row:
            entry["ceiling_kind"] = "iperf3" if w.unit == "GB/s" else "tgtd-null"
            entry["ours_over_ceiling"] = paired_stat(row, "ours", "ceiling", stat)
            entry["tgtd_over_ceiling"] = paired_stat(row, "tgtd", "ceiling", stat)
            entry["ours_over_ceiling_per_round"] = paired(row["ours"], row["ceiling"])
            entry["tgtd_over_ceiling_per_round"] = paired(row["tgtd"], row["ceiling"])
        if "baseline" in row:
            entry["baseline_ratio"] = paired_stat(row, "baseline", "tgtd", stat)
            entry["ours_over_baseline_per_round"] = paired(row["ours"], row["baseline"])
        rows.append(entry)
    return rows
