"""tools/guest_bench.py: fio's JSON report read as fio defines it, and the fio command line.

Oracles:
- Two real reports of fio 3.33 (Debian bookworm) captured in the Linux test guest
  (images.linux variant "fio") against our target, virtio-scsi-pci + scsi-block, with the
  command lines guest_bench.fio_command builds: data/fio-3.33-guest-randread-4k-qd8.json
  (4 KiB randread QD8, 2 s) and data/fio-3.33-guest-write-1m-qd8.json (1 MiB sequential
  write QD8, 2 s).
- fio's stat.c, add_ddir_status_json(): per direction `bw_bytes = (1000 * io_bytes) /
  runtime` (integer bytes/s, runtime in ms) and `iops = (1000.0 * total_io_u) / runtime`;
  a direction with no runtime reports 0. The parse must give those for the direction the
  workload used, and 0 for the other.
- fio's own record of the options it parsed (each job's "job options" object): the
  command line must have set exactly what the brief asks (direct=1, ioengine=libaio,
  the workload's rw/bs/iodepth, the runtime).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from guest_bench import (  # noqa: E402
    WORKLOADS,
    FioError,
    Result,
    Workload,
    checked_job,
    fio_command,
    parse_fio_json,
    report,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
RANDREAD = (DATA / "fio-3.33-guest-randread-4k-qd8.json").read_text()
WRITE = (DATA / "fio-3.33-guest-write-1m-qd8.json").read_text()
RANDREAD_W = Workload("randread-4k-qd8", "randread", "4k", 8, "IOPS")
WRITE_W = Workload("write-1m-qd8", "write", "1m", 8, "MB/s")


def _raw(text: str) -> dict:
    return json.loads(text)["jobs"][0]


def _stat_c(side: dict) -> tuple[float, int]:
    """(iops, bw_bytes) of one direction as fio's stat.c computes them."""
    runt = side["runtime"]
    if not runt:
        return 0.0, 0
    return 1000.0 * side["total_ios"] / runt, 1000 * side["io_bytes"] // runt


def test_randread_report_is_read_side_as_stat_c_defines_it() -> None:
    version, jobs = parse_fio_json(RANDREAD)
    assert version == "fio-3.33"
    assert [j.name for j in jobs] == ["randread-4k-qd8"]
    raw = _raw(RANDREAD)
    iops, bw = _stat_c(raw["read"])
    job = jobs[0]
    assert job.error == 0
    assert job.read_iops == pytest.approx(iops, rel=1e-6) and job.read_iops > 0
    assert job.read_bw == bw
    assert job.read_ios == raw["read"]["total_ios"]
    assert (job.write_iops, job.write_bw, job.write_ios) == (0, 0, 0)
    # 4 KiB per I/O: bytes/s over IOPS is the block size (within fio's integer rounding)
    assert job.read_bw / job.read_iops == pytest.approx(4096, rel=1e-3)
    assert job.cpu == pytest.approx(raw["usr_cpu"] + raw["sys_cpu"])


def test_write_report_is_write_side_and_megabytes_per_second() -> None:
    job = checked_job(WRITE, "write-1m-qd8")
    raw = _raw(WRITE)
    iops, bw = _stat_c(raw["write"])
    assert job.write_iops == pytest.approx(iops, rel=1e-6) and job.write_bw == bw > 0
    assert (job.read_iops, job.read_bw, job.read_ios) == (0, 0, 0)
    assert job.write_bw / job.write_iops == pytest.approx(1 << 20, rel=1e-3)
    r = Result("ours", WRITE_W, job, qemu_cpu=0.0, target_cpu=0.0)
    assert r.figure() == pytest.approx(raw["write"]["bw_bytes"] / 1e6)  # MB/s, 10^6 bytes
    r = Result("ours", RANDREAD_W, checked_job(RANDREAD, RANDREAD_W.name), 0.0, 0.0)
    assert r.figure() == pytest.approx(_raw(RANDREAD)["read"]["iops"])
    assert r.figure() > 0


@pytest.mark.parametrize(("workload", "sample"), [(RANDREAD_W, RANDREAD), (WRITE_W, WRITE)])
def test_command_sets_what_fio_recorded(workload: Workload, sample: str) -> None:
    """Every --key=value of the command (but the output options) is what fio recorded as
    the job's options, and nothing fio recorded is missing from the command."""
    argv = fio_command(workload, 2, output="/tmp/x.json").split()
    assert argv[0] == "fio" and "--time_based" in argv
    given = dict(a[2:].split("=", 1) for a in argv[1:] if "=" in a)
    assert given.pop("output-format") == "json"
    assert given.pop("output") == "/tmp/x.json"
    assert given == _raw(sample)["job options"]
    assert given["direct"] == "1" and given["ioengine"] == "libaio"


def test_bench_workloads_are_the_briefs() -> None:
    assert [(w.rw, w.bs, w.iodepth) for w in WORKLOADS] == [
        ("randread", "4k", 32), ("randwrite", "4k", 32), ("read", "1m", 8), ("write", "1m", 8)]


def test_console_lines_before_the_report_are_skipped() -> None:
    noisy = "fio: some warning the guest printed\n" + RANDREAD + "\n"
    assert parse_fio_json(noisy)[1] == parse_fio_json(RANDREAD)[1]


def test_a_job_error_is_reported() -> None:
    data = json.loads(RANDREAD)
    data["jobs"][0]["error"] = 5  # EIO, as fio reports a failed job
    with pytest.raises(FioError, match="error 5"):
        checked_job(json.dumps(data), "randread-4k-qd8")


def test_a_job_without_io_is_reported() -> None:
    data = json.loads(RANDREAD)
    data["jobs"][0]["read"]["total_ios"] = 0
    with pytest.raises(FioError, match="no I/O"):
        checked_job(json.dumps(data), "randread-4k-qd8")


def test_not_json_and_missing_fields_raise() -> None:
    with pytest.raises(FioError, match="no JSON"):
        parse_fio_json("fio: failed to open /dev/sda: No such file or directory\n")
    with pytest.raises(FioError, match="not JSON"):
        parse_fio_json(RANDREAD[: len(RANDREAD) // 2])
    data = json.loads(RANDREAD)
    del data["jobs"][0]["read"]["bw_bytes"]
    with pytest.raises(FioError, match="bw_bytes"):
        parse_fio_json(json.dumps(data))
    with pytest.raises(FioError, match="jobs named"):
        checked_job(RANDREAD, "another-job")


def test_report_prints_both_targets_and_the_ratio() -> None:
    job = checked_job(RANDREAD, RANDREAD_W.name)
    w = WORKLOADS[0]
    half = Result("tgtd", w, job, 50.0, 20.0)
    text = report([Result("ours", w, job, 90.0, 40.0), half], 5)
    assert f"{job.iops:.1f} IOPS" in text
    assert "ours/tgtd 1.00" in text
    assert f"{job.cpu:.0f}%" in text
