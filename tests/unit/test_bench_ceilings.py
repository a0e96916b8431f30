"""tools/bench_ceilings.py: the iperf3 ceiling figure is the receiver's, as iperf3 reports it.

Oracle: a real report of iperf3 3.12 (Debian bookworm), `iperf3 -c 127.0.0.1 -t 1 -J`,
captured on this machine (data/iperf3-3.12-loopback.json), and the error report the same
iperf3 prints when nothing listens. iperf3's "end" object carries for sum_received both
bytes and seconds and its own bits_per_second; the parse must give the latter / 8, agree
with the former, and take the receiver's figure, not the sender's (sum_sent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from bench_ceilings import CeilingError, parse_iperf3  # noqa: E402

pytestmark = pytest.mark.unit

REPORT = (Path(__file__).parent / "data" / "iperf3-3.12-loopback.json").read_text()

# What iperf3 3.12 printed here with -J when no server listened on the port.
ERROR_REPORT = """{
	"start":	{
		"connected":	[],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
	},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection refused"
}"""


def test_receiver_bits_per_second_over_8() -> None:
    # The report's end.sum_received.bits_per_second is 26845199289.433777 (iperf3's own).
    assert parse_iperf3(REPORT) == pytest.approx(26845199289.433777 / 8, rel=1e-12)


def test_agrees_with_the_received_bytes_over_seconds() -> None:
    received = json.loads(REPORT)["end"]["sum_received"]
    assert parse_iperf3(REPORT) == pytest.approx(received["bytes"] / received["seconds"],
                                                 rel=1e-5)


def test_not_the_sender_figure() -> None:
    # The sender's figure (what was queued) differs from the receiver's in this report;
    # swapping end.sum_sent for end.sum_received in the report must change the answer.
    report = json.loads(REPORT)
    report["end"]["sum_received"]["bits_per_second"] = 1.0
    assert parse_iperf3(json.dumps(report)) == pytest.approx(1 / 8)


def test_error_report_is_an_error() -> None:
    with pytest.raises(CeilingError, match="Connection refused"):
        parse_iperf3(ERROR_REPORT)


def test_not_json_is_an_error() -> None:
    with pytest.raises(CeilingError, match="not JSON"):
        parse_iperf3("iperf3: error - unable to connect to server\n")
