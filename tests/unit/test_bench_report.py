"""tools/bench_report.py: the table's ratio columns are per-round ratios, as --stat says.

Oracle: the rule of issue 14 and tools/bench's header (a ratio is of two figures measured
in one round; the column is the best or the median of the rounds' ratios), on figures
chosen so that a ratio of the sides' own best/median values gives a different answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from bench_report import WORKLOADS, Runs, json_rows, paired_stat, table  # noqa: E402

pytestmark = pytest.mark.unit

QD1 = next(w for w in WORKLOADS if w.name == "read-4k-qd1")
READ_1M = next(w for w in WORKLOADS if w.name == "read-1m-qd8")


def _results() -> dict:
    return {
        QD1.name: {"tgtd": Runs([10_000, 20_000, None]), "ours": Runs([8_000, 10_000, 9_000]),
                   "ceiling": Runs([20_000, 40_000, 30_000])},
        READ_1M.name: {"tgtd": Runs([1.0, 1.0]), "ours": Runs([1.5, 1.2]),
                       "ceiling": Runs([3.0, 2.0])},
    }


def test_ratios_are_per_round() -> None:
    row = _results()[QD1.name]
    # rounds: ours/tgtd 0.8, 0.5 (round 3: tgtd failed, not paired).
    assert paired_stat(row, "ours", "tgtd", "best") == pytest.approx(0.8)
    assert paired_stat(row, "ours", "tgtd", "median") == pytest.approx(0.65)
    # The sides' own best values would give 10k/20k = 0.5: not what the column shows.
    assert row["ours"].value("best") / row["tgtd"].value("best") == pytest.approx(0.5)
    # ours/ceiling 0.4, 0.25, 0.3.
    assert paired_stat(row, "ours", "ceiling", "best") == pytest.approx(0.4)
    assert paired_stat(row, "ours", "ceiling", "median") == pytest.approx(0.3)


def test_table_shows_the_columns() -> None:
    text = table([QD1, READ_1M], _results(), "median", "ours")
    head, _, qd1, mib, note = text.splitlines()
    assert [c.strip() for c in head.split("|")] == [
        "workload", "tgtd", "ours", "ceiling", "ours/tgtd", "ours/ceiling"]
    cells = [c.strip() for c in qd1.split("|")]
    assert cells[1:] == ["15.0k IOPS", "9.0k IOPS", "30.0k IOPS", "0.65", "0.30"]
    cells = [c.strip() for c in mib.split("|")]
    # 1 MiB rounds: ours/tgtd 1.5, 1.2 -> median 1.35; ours/ceiling 0.5, 0.6 -> 0.55.
    assert cells[1:] == ["1.00 GB/s", "1.35 GB/s", "2.50 GB/s", "1.35", "0.55"]
    assert note.startswith("ceiling:") and "iperf3" in note and "null" in note


def test_table_without_ceilings_has_no_ceiling_column() -> None:
    results = {QD1.name: {"tgtd": Runs([1.0]), "ours": Runs([2.0])}}
    text = table([QD1], results, "best", "ours")
    assert "ceiling" not in text
    assert text.splitlines()[2].rstrip().endswith("2.00")


def test_json_rows_carry_runs_and_ratios() -> None:
    rows = json_rows([QD1, READ_1M], _results(), "best")
    qd1, mib = rows
    assert qd1["ceiling"]["runs"] == [20_000, 40_000, 30_000]
    assert qd1["ceiling_kind"] == "tgtd-null" and mib["ceiling_kind"] == "iperf3"
    assert qd1["ours_over_ceiling_per_round"] == pytest.approx([0.4, 0.25, 0.3])
    assert qd1["ours_over_tgtd_per_round"] == pytest.approx([0.8, 0.5])
    assert qd1["ratio"] == pytest.approx(0.8)
    assert mib["tgtd_over_ceiling"] == pytest.approx(0.5)
