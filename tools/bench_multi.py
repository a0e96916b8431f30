"""tools/bench --multi N: N targets, one session each, all at once; the aggregate IOPS.

    tools/bench --multi 4                       # 2 rounds of 5 s, ours with --workers 4
    tools/bench --multi 4 --rounds 3 --stat median --json multi.json
    tools/bench --multi 4 --ours-args ''        # before `serve --workers` exists

Rules of this tool (issue 14: "4 targets, each with one session at 4 KiB random read
QD32, at the same time: the aggregate is at least 1.3x tgtd's aggregate"):
- Backing: N sparse files in /dev/shm, --size each (default 256 MiB), the first --fill
  bytes (default 64 MiB) of each holding tools/bench's non-zero pattern (make_backing),
  so reads meet data. They are made once, served by every side in turn, removed at the end.
- Sides, each started fresh for its turn in every round and stopped by PID after it:
  "tgtd": one tgtd with N targets, tid 1 as target.testing.servers.Tgtd makes it, tids
  2..N added with tgtadm (target new, logicalunit new --lun 1 --backing-store FILE, bind
  --initiator-address ALL: the recipe of ../shared/ENVIRONMENT.md); LUN 1 of each.
  "ours": our server serving one TOML config of N targets (target/config.py: a
  [[target]] per file, its [[target.lun]] lun 0, store "file"), started with --ours-args
  (default `--workers N`). "ours-1": the same config in one process, --ours-args not
  applied, so the table shows what the workers bring. The order of the sides is rotated
  from round to round (tools/bench side_order), so drift hits every side alike.
- A side's run: N iscsi-perf clients at once, one per target, each with its own initiator
  name (initiator_iqn("bench-multi-K")), `-m 32 -b <4 KiB in blocks> -r -t --seconds`:
  tools/bench perf_run, one thread each, every client bounded in time (3 * seconds + 30 s)
  and killed by PID when over (subprocess.run's timeout). The side's figure is the sum of
  the clients' final "iops average"; every session's own figure is kept. A round in which
  a session failed (or the side did not start) has no aggregate for that side: an error,
  shown as such; its other sessions' figures are kept. The clients start within a few ms
  of one another and each averages over its own --seconds, so the sum is the aggregate of
  overlapping runs whose skew (the logins) is small against --seconds.
- The table (bench_report's rules): per side the aggregate (best or median of the rounds,
  --stat), the per-session min and max (--stat over the rounds' own min and max), and
  side/tgtd taken per round (bench_report.paired: two figures of one round), then --stat
  over those ratios, with the per-round ratios beside it.
- Conditions (bench_conditions.py): each round is bracketed by two snapshots; a round
  beside another busy process is "not quiet", printed, and warned about after the table.
- `--json FILE`: the meta data, every round's aggregate and sessions per side, the errors,
  the ratios and each round's conditions.
- Pure parts (config_text, SideRuns, table, to_json) take values and return text or dicts;
  the loader of tools/bench (a script without .py) runs only when a measurement does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from bench_conditions import Conditions, conditions, snapshot
from bench_report import WORKLOADS, Runs, fmt, paired, pick

from target.testing.servers import HOST, OurTarget, ServerError, Tgtd, initiator_iqn

BENCH = Path(__file__).resolve().parent / "bench"
WORKLOAD = next(w for w in WORKLOADS if w.name == "randread-4k-qd32")
OUR_IQN = "iqn.2026-11.local.scsi-target:multi-{}"
TGTD_IQN = "iqn.2026-11.local.scsi-target:tgtd-multi-{}"
SIDES = ("tgtd", "ours", "ours-1")
GOAL = 1.3  # issue 14: the aggregate of ours at least 1.3x tgtd's


def bench_tool() -> ModuleType:
    """tools/bench as a module: the running one when it is __main__, else loaded once."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) and Path(main.__file__).resolve() == BENCH:
        return main
    if "bench_tool" not in sys.modules:
        loader = importlib.machinery.SourceFileLoader("bench_tool", str(BENCH))
        spec = importlib.util.spec_from_loader("bench_tool", loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_tool"] = module
        loader.exec_module(module)
    return sys.modules["bench_tool"]


# ---------------------------------------------------------------- pure parts

def iqns(template: str, n: int) -> list[str]:
    return [template.format(k) for k in range(1, n + 1)]


def config_text(paths: list[Path], names: list[str], block_size: int, size: int) -> str:
    """The TOML config (target/config.py) of one target per file, LUN 0 a file store."""
    parts = []
    for path, iqn in zip(paths, names, strict=True):
        parts.append(f'[[target]]\niqn = "{iqn}"\n\n'
                     f'[[target.lun]]\nlun = 0\nstore = "file"\npath = "{path}"\n'
                     f"size = {size}\nblock_size = {block_size}\n")
    return "\n".join(parts)


@dataclass
class SideRuns:
    """One side over the rounds: the aggregate per round (a Runs) and every session's
    figure per round (None for a failed session), both in round order."""

    total: Runs = field(default_factory=Runs)
    sessions: list[list[float | None]] = field(default_factory=list)

    def add(self, figures: list[float | None], errors: list[str]) -> None:
        self.sessions.append(figures)
        ok = bool(figures) and all(v is not None for v in figures) and not errors
        self.total.values.append(sum(figures) if ok else None)
        self.total.errors.extend(errors)

    def session_extreme(self, which: Callable, stat: str) -> float | None:
        """--stat over the rounds of each round's `which` (min or max) session."""
        per_round = [which(v for v in r if v is not None) for r in self.sessions
                     if any(v is not None for v in r)]
        return pick(per_round, stat)


def over_tgtd(results: dict[str, SideRuns], side: str) -> list[float]:
    """side/tgtd of every round in which both had an aggregate."""
    return paired(results[side].total, results["tgtd"].total)


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(results: dict[str, SideRuns], stat: str, n: int) -> str:
    """One row per side: aggregate, session min/max, side/tgtd per round and its --stat."""
    w = WORKLOAD
    head = (f"{'side':<8} | {f'{n} sessions':>12} | {'session min':>12} | "
            f"{'session max':>12} | side/tgtd | per round")
    lines = [head, "-" * 9 + "|" + "|".join("-" * 14 for _ in range(3)) + "|-----------|"
             + "-" * 10]
    for side, runs in results.items():
        ratios = over_tgtd(results, side) if side != "tgtd" and "tgtd" in results else []
        lines.append(f"{side:<8} | {fmt(w, runs.total.value(stat)):>12} | "
                     f"{fmt(w, runs.session_extreme(min, stat)):>12} | "
                     f"{fmt(w, runs.session_extreme(max, stat)):>12} | "
                     f"{_r(pick(ratios, stat)) if side != 'tgtd' else '':>9} | "
                     f"{' '.join(f'{r:.2f}' for r in ratios)}".rstrip())
    return "\n".join(lines)


def verdict(results: dict[str, SideRuns], stat: str) -> str:
    """Issue 14's goal, on ours/tgtd (per round, --stat)."""
    value = pick(over_tgtd(results, "ours"), stat) if "ours" in results else None
    if value is None:
        return f"issue 14: ours/tgtd unmeasured (goal >= {GOAL})"
    return (f"issue 14: ours/tgtd {value:.2f} ({stat} of the rounds), goal >= {GOAL}: "
            + ("met" if value >= GOAL else "not met"))


def to_json(meta: dict, results: dict[str, SideRuns], rounds: list[Conditions],
            stat: str) -> dict:
    sides = {}
    for side, runs in results.items():
        entry = {"runs": runs.total.values, "value": runs.total.value(stat),
                 "errors": runs.total.errors, "sessions": runs.sessions,
                 "session_min": runs.session_extreme(min, stat),
                 "session_max": runs.session_extreme(max, stat)}
        if side != "tgtd" and "tgtd" in results:
            entry["over_tgtd_per_round"] = over_tgtd(results, side)
            entry["over_tgtd"] = pick(entry["over_tgtd_per_round"], stat)
        sides[side] = entry
    return {"meta": meta, "quiet": all(c.quiet for c in rounds),
            "conditions": [c.to_json() for c in rounds], "sides": sides}


# ---------------------------------------------------------------- the sides

def add_tgtd_target(tgt: Tgtd, tid: int, iqn: str, path: Path, block_size: int) -> None:
    """Target `tid` named `iqn` with LUN 1 on `path`, open to every initiator."""
    tgt.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", str(tid),
               "--targetname", iqn)
    lu = ["--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", str(tid),
          "--lun", "1", "--backing-store", str(path)]
    if block_size != 512:
        lu += ["--blocksize", str(block_size)]
    tgt.tgtadm(*lu)
    tgt.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", str(tid),
               "--initiator-address", "ALL")


@contextlib.contextmanager
def tgtd_side(paths: list[Path], block_size: int, workdir: Path) -> Iterator[list[str]]:
    """One tgtd with a target per file; yields their URLs; deletes tids N..2, then stops."""
    names = iqns(TGTD_IQN, len(paths))
    with contextlib.ExitStack() as stack:
        tgt = stack.enter_context(Tgtd(paths[0], block_size, iqn=names[0], workdir=workdir))
        for tid in range(2, len(paths) + 1):
            stack.callback(tgt.tgtadm, "--lld", "iscsi", "--mode", "target", "--op",
                           "delete", "--force", "--tid", str(tid), check=False)
            add_tgtd_target(tgt, tid, names[tid - 1], paths[tid - 1], block_size)
        yield [f"iscsi://{HOST}:{tgt.port}/{iqn}/1" for iqn in names]


@contextlib.contextmanager
def our_side(config: Path, n: int, extra: list[str], workdir: Path) -> Iterator[list[str]]:
    with OurTarget(extra, config=config, workdir=workdir) as server:
        yield [f"iscsi://{HOST}:{server.port}/{iqn}/0" for iqn in iqns(OUR_IQN, n)]


def run_sessions(urls: list[str], args: argparse.Namespace,
                 bench: ModuleType) -> tuple[list[float | None], list[str]]:
    """One iscsi-perf per URL, all at once (tools/bench perf_run); figures and errors."""
    def one(k: int, url: str) -> float:
        own = argparse.Namespace(**vars(args))
        own.initiator = initiator_iqn(f"bench-multi-{k}")
        return bench.perf_run(WORKLOAD, url, own)

    with ThreadPoolExecutor(len(urls)) as pool:
        futures = [pool.submit(one, k, url) for k, url in enumerate(urls, 1)]
    figures: list[float | None] = []
    errors: list[str] = []
    for k, f in enumerate(futures, 1):
        try:
            figures.append(f.result())
        except bench.RunError as e:
            figures.append(None)
            errors.append(f"session {k}: {e}")
    return figures, errors


def run_rounds(args: argparse.Namespace, starters: dict[str, Callable], workdir: Path,
               bench: ModuleType) -> tuple[dict[str, SideRuns], list[Conditions]]:
    results = {side: SideRuns() for side in starters}
    seen: list[Conditions] = []
    for n in range(1, args.rounds + 1):
        before = snapshot()
        for side in bench.side_order(list(starters), n):
            try:
                with starters[side](workdir / f"{side}-round{n}") as urls:
                    figures, errors = run_sessions(urls, args, bench)
            except ServerError as e:
                figures, errors = [None] * args.multi, [f"{side} did not start: {e}"]
            results[side].add(figures, errors)
            shown = " ".join(fmt(WORKLOAD, v) for v in figures)
            print(f"bench: round {n} {side}: {fmt(WORKLOAD, results[side].total.values[-1])}"
                  f" = {shown}", file=sys.stderr)
            for e in errors:
                print(f"bench: round {n} {side}: error: {e}", file=sys.stderr)
        seen.append(conditions(n, before, snapshot()))
        print(f"bench: {seen[-1].text()}", file=sys.stderr)
    return results, seen


def main(args: argparse.Namespace) -> int:
    bench = bench_tool()
    if not shutil.which("iscsi-perf"):
        print("bench: missing iscsi-perf (libiscsi-bin)", file=sys.stderr)
        return 2
    n = args.multi
    paths: list[Path] = []
    try:
        paths = [bench.make_backing(args.size, args.fill) for _ in range(n)]
        with bench.work_directory(args.keep_logs) as workdir:
            config = workdir / "multi.toml"
            config.write_text(config_text(paths, iqns(OUR_IQN, n), args.block_size,
                                          args.size))
            extra = shlex.split(args.ours_args)
            starters = {
                "tgtd": lambda d: tgtd_side(paths, args.block_size, d),
                "ours": lambda d: our_side(config, n, extra, d),
                "ours-1": lambda d: our_side(config, n, [], d),
            }
            results, rounds = run_rounds(args, starters, workdir, bench)
    finally:
        for p in paths:
            p.unlink(missing_ok=True)
    print(f"{n} targets, one session each at once: {WORKLOAD.label}, {args.seconds:g} s, "
          f"{args.rounds} round(s), {args.stat}")
    print(table(results, args.stat, n))
    print(f"ours: --ours-args {shlex.quote(args.ours_args)}; ours-1: one process")
    print(verdict(results, args.stat))
    for c in rounds:
        print(f"conditions: {c.text()}")
    warning = bench.quiet_warning(rounds)
    if warning:
        print(warning)
    if args.json:
        meta = {"multi": n, "seconds": args.seconds, "rounds": args.rounds,
                "stat": args.stat, "block_size": args.block_size, "size": args.size,
                "fill": args.fill, "ours_args": args.ours_args, "workload": WORKLOAD.name,
                "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        args.json.write_text(json.dumps(to_json(meta, results, rounds, args.stat),
                                        indent=2) + "\n")
    return 0
