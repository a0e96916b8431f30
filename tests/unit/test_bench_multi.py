"""tools/bench_multi.py: the config it serves, the tgtadm calls it makes, its arithmetic.

Oracles: the project's config reader (target/config.py `from_dict`, with its RFC 7143
4.2.7 iSCSI-name check and unknown-key errors), which must read the generated text as
N targets each with one file LUN 0; tgtadm(8)'s syntax as ../shared/ENVIRONMENT.md
records it for tgtd 1.0.85 (target new --tid --targetname; logicalunit new --tid --lun
--backing-store [--blocksize]; target bind --tid --initiator-address ALL); and the rule of
issue 14 and bench_report.py that a ratio is of two figures of one round, the column
being --stat over those per-round ratios, on figures chosen so that the ratio of the
sides' own best values gives another answer.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from bench_multi import (  # noqa: E402
    OUR_IQN,
    SideRuns,
    add_tgtd_target,
    bench_tool,
    config_text,
    iqns,
    table,
    to_json,
    verdict,
)

from target.config import from_dict  # noqa: E402

pytestmark = pytest.mark.unit


def test_config_is_n_targets_of_one_file_lun(tmp_path: Path) -> None:
    paths = [tmp_path / f"t{k}.img" for k in range(1, 5)]
    names = iqns(OUR_IQN, 4)
    text = config_text(paths, names, 4096, 256 << 20)
    cfg = from_dict(tomllib.loads(text), "generated")
    assert [t.iqn for t in cfg.targets] == names
    assert len(set(names)) == 4
    for target, path in zip(cfg.targets, paths, strict=True):
        assert len(target.luns) == 1
        lun = target.luns[0]
        assert (lun.lun, lun.store, lun.path) == (0, "file", str(path))
        assert (lun.block_size, lun.size) == (4096, 256 << 20)


class FakeTgtd:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def tgtadm(self, *args: str, check: bool = True) -> str:
        self.calls.append(args)
        return ""


@pytest.mark.parametrize("block_size", [512, 4096])
def test_tgtd_target_is_the_environment_recipe(block_size: int) -> None:
    tgt = FakeTgtd()
    add_tgtd_target(tgt, 3, "iqn.2026-11.local.scsi-target:tgtd-multi-3", Path("/dev/shm/x"),
                    block_size)
    lu = ("--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "3",
          "--lun", "1", "--backing-store", "/dev/shm/x")
    if block_size != 512:
        lu += ("--blocksize", "4096")
    assert tgt.calls == [
        ("--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "3",
         "--targetname", "iqn.2026-11.local.scsi-target:tgtd-multi-3"),
        lu,
        ("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "3",
         "--initiator-address", "ALL"),
    ]


def _results() -> dict[str, SideRuns]:
    results = {side: SideRuns() for side in ("tgtd", "ours", "ours-1")}
    # round 1: tgtd 40k, ours 60k (1.5), ours-1 30k (0.75)
    results["tgtd"].add([10_000.0] * 4, [])
    results["ours"].add([12_000.0, 18_000.0, 15_000.0, 15_000.0], [])
    results["ours-1"].add([7_500.0] * 4, [])
    # round 2: tgtd 80k, ours 80k (1.0), ours-1 one session failed: no aggregate
    results["tgtd"].add([20_000.0] * 4, [])
    results["ours"].add([20_000.0] * 4, [])
    results["ours-1"].add([9_000.0, None, 9_000.0, 9_000.0], ["session 2: exit 1"])
    return results


def test_aggregate_is_the_sum_and_a_failed_session_voids_the_round() -> None:
    r = _results()
    assert r["ours"].total.values == [60_000.0, 80_000.0]
    assert r["ours-1"].total.values == [30_000.0, None]
    assert r["ours-1"].sessions[1] == [9_000.0, None, 9_000.0, 9_000.0]
    assert r["ours-1"].total.errors == ["session 2: exit 1"]


def test_session_min_max_per_round_then_stat() -> None:
    ours = _results()["ours"]
    # the rounds' min sessions: 12k, 20k; max sessions: 18k, 20k
    assert ours.session_extreme(min, "best") == 20_000.0
    assert ours.session_extreme(min, "median") == 16_000.0
    assert ours.session_extreme(max, "median") == 19_000.0
    # a round's failed session is left out of its min, not counted as zero
    assert _results()["ours-1"].session_extreme(min, "median") == 8_250.0


def test_ratios_are_per_round() -> None:
    r = _results()
    data = to_json({}, r, [], "median")["sides"]
    assert data["ours"]["over_tgtd_per_round"] == pytest.approx([1.5, 1.0])
    assert data["ours"]["over_tgtd"] == pytest.approx(1.25)
    # ours-1's second round has no aggregate: only round 1 is paired
    assert data["ours-1"]["over_tgtd_per_round"] == pytest.approx([0.75])
    assert "over_tgtd" not in data["tgtd"]
    best = to_json({}, r, [], "best")["sides"]["ours"]["over_tgtd"]
    assert best == pytest.approx(1.5)
    # the sides' own best values would give 80k/80k = 1.0: not what is reported
    assert r["ours"].total.value("best") / r["tgtd"].total.value("best") == 1.0


def test_table_and_verdict() -> None:
    r = _results()
    text = table(r, "median", 4)
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")]
            for line in text.splitlines()[2:]}
    assert rows["tgtd"][1:4] == ["60.0k IOPS", "15.0k IOPS", "15.0k IOPS"]
    assert rows["ours"][1] == "70.0k IOPS"
    assert rows["ours"][4:] == ["1.25", "1.50 1.00"]
    assert rows["ours-1"][1] == "30.0k IOPS"
    assert rows["ours-1"][4:] == ["0.75", "0.75"]
    assert verdict(r, "median").endswith("goal >= 1.3: not met")
    assert verdict(r, "best").endswith("goal >= 1.3: met")


def test_bench_option_defaults() -> None:
    bench = bench_tool()
    multi = bench.parse_args(["--multi", "4"])
    assert (multi.size, multi.fill, multi.ours_args) == (256 << 20, 64 << 20, "--workers 4")
    assert bench.parse_args(["--multi", "4", "--ours-args", ""]).ours_args == ""
    plain = bench.parse_args([])
    assert (plain.multi, plain.size, plain.fill, plain.ours_args) == (None, 1 << 30,
                                                                      256 << 20, "")
    with pytest.raises(SystemExit):
        bench.parse_args(["--multi", "0"])
