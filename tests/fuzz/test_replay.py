"""Replay of the fuzz corpus and findings, the harness's own checks, and a short fuzz run.

What each test proves:
- test_corpus / test_finding: every input of tests/fuzz/corpus/TARGET/ (and the target's
  built-in seeds) and of tests/fuzz/findings/TARGET/ ends, through the same
  tests.fuzz.harness.check() the fuzzer runs, in an outcome the rules of issue 15 allow
  (a Reject, a CHECK CONDITION, a closed connection, the module's own error), within its
  time bound and with a traced peak of memory under its bound. A finding's file is its
  regression case and failed before its fix (target/config.py's load refuses non-UTF-8
  text with ConfigError, TOML 1.0 being UTF-8; target/faults.py's parse_rule refuses an
  op/ops or tmf value of the wrong type with FaultError).
- test_check_*: check() itself can fail: an exception no rule allows, an error the product
  logs with a traceback (LogicalUnit._ended's HARDWARE ERROR, INTERNAL TARGET FAILURE
  44h/00h, SPC-4 table F.2), and an input over its time bound are findings.
- test_smoke: tools/fuzz runs every target for a few seconds (about 60 s in all) with
  atheris when it imports, else with its seeded mutator (the tool says which), and finds
  nothing; its findings would go to a temporary directory, not the tree.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from target.backing.memory import MemoryStore
from target.scsi.disk import make_disk
from target.scsi.sense import SenseKey
from target.scsi.task import ScsiTask
from tests.fuzz import harness, scsi
from tests.fuzz.harness import Finding, Hang, Target

pytestmark = pytest.mark.unit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGETS = harness.targets()
SMOKE_SECONDS = 6  # per target: six targets, about 60 s with the engines' start-up


def _files(kind: str, name: str | None = None) -> list[tuple[str, Path]]:
    out = []
    for n in ([name] if name else TARGETS):
        d = HERE / kind / n
        if d.is_dir():
            out += [(n, p) for p in sorted(d.iterdir()) if p.is_file()]
    return out


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus(name):
    target = TARGETS[name]
    inputs = [(f"seed {i}", s) for i, s in enumerate(target.seeds())]
    inputs += [(str(p.relative_to(HERE)), p.read_bytes()) for _, p in _files("corpus", name)]
    assert inputs
    for where, data in inputs:
        try:
            harness.check(target, data, memory=True)
        except Exception as exc:
            raise AssertionError(f"{where}: {exc!r}") from exc


FINDINGS = _files("findings")


@pytest.mark.parametrize(("name", "path"), FINDINGS,
                         ids=[f"{n}/{p.name[:12]}" for n, p in FINDINGS])
def test_finding(name, path):
    harness.check(TARGETS[name], path.read_bytes(), memory=True)


def test_corpus_is_small():
    """The corpus stays small (issue 15: minimised, under about 2 MB in all)."""
    total = sum(p.stat().st_size for _, p in _files("corpus") + _files("findings"))
    assert total < 2 << 20


def test_check_raises_what_no_rule_allows():
    def bad(data: bytes) -> None:
        {}[data]

    with pytest.raises(KeyError):
        harness.check(Target("bad", bad, ""), b"x")


def test_check_finds_a_logged_internal_target_failure():
    """A handler's bug ends the command in HARDWARE ERROR 44h/00h (the session lives on):
    the harness still calls it a finding, with the bug as its cause."""
    tur = next(c for c in scsi.COMMANDS if c.opcode == 0x00)  # TEST UNIT READY

    def broken(lu, task):
        raise ZeroDivisionError("handler bug")

    def run(data: bytes) -> None:
        lu = make_disk(0, MemoryStore(1 << 20))
        n = scsi.nexus(0)
        lu.ua.clear(n)
        task = ScsiTask(n, 0, bytes(6))
        task.command = dataclasses.replace(tur, handler=broken)
        lu.execute(task)
        assert task.sense[2] & 0x0F == SenseKey.HARDWARE_ERROR and task.sense[12] == 0x44

    with pytest.raises(Finding) as info:
        harness.check(Target("broken", run, ""), b"")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_check_bounds_time():
    def spin(data: bytes) -> None:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass

    with pytest.raises(Hang):
        harness.check(Target("spin", spin, "", time_limit=0.2), b"")


def test_smoke(tmp_path):
    """Every target fuzzed for SMOKE_SECONDS: inputs ran, no finding."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fuzz"), "all", "--seconds", str(SMOKE_SECONDS),
         "--findings", str(tmp_path / "findings"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    results = json.loads(out.read_text())
    assert [r["target"] for r in results] == sorted(TARGETS, key=list(TARGETS).index)
    for r in results:
        assert r["inputs"] > 0 and not r["findings"], r
