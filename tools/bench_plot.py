"""The bar chart of tools/bench --plot: per workload, tgtd, ours, baseline and ceiling bars.

Rules of this module:
- matplotlib (in the venv, extra `tools`) with the Agg backend, no display; one panel per
  unit (IOPS rows, GB/s rows), since the two do not share an axis. Each workload is a
  group of bars, one per side measured, at the side's --stat value; a failed side has no
  bar. Each group's label carries ours/tgtd and ours/ceiling as the table shows them.
- Input is what bench_report holds (Workload, Runs per side); output one PNG file.
"""

from __future__ import annotations

from pathlib import Path

from bench_report import Runs, Workload, paired_stat

COLOURS = {"tgtd": "#4c72b0", "baseline": "#8172b2", "ours": "#dd8452", "ceiling": "#999999"}
ORDER = ("tgtd", "baseline", "ours", "ceiling")


def plot(path: Path, workloads: list[Workload], results: dict[str, dict[str, Runs]],
         stat: str, title: str = "tools/bench", dpi: int = 100) -> Path:
    """Write the bar chart to `path` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = [u for u in ("IOPS", "GB/s") if any(w.unit == u for w in workloads)]
    fig, axes = plt.subplots(1, len(units), figsize=(6 * len(units) + 1, 4.8), squeeze=False)
    for ax, unit in zip(axes[0], units, strict=True):
        rows = [w for w in workloads if w.unit == unit]
        sides = [s for s in ORDER if s in results[rows[0].name]]
        width = 0.8 / len(sides)
        for k, side in enumerate(sides):
            xs, hs = [], []
            for i, w in enumerate(rows):
                v = results[w.name][side].value(stat)
                if v is not None:
                    xs.append(i + (k - (len(sides) - 1) / 2) * width)
                    hs.append(v / 1000 if unit == "IOPS" else v)
            ax.bar(xs, hs, width, label=side, color=COLOURS[side])
        labels = []
        for w in rows:
            row = results[w.name]
            text = w.name
            for a, b in (("ours", "tgtd"), ("ours", "ceiling")):
                r = paired_stat(row, a, b, stat)
                if r is not None:
                    text += f"\n{a}/{b} {r:.2f}"
            labels.append(text)
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("k IOPS" if unit == "IOPS" else "GB/s")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} ({stat} of rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
