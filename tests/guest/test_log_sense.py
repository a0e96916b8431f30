"""LOG SENSE in a Linux guest: sg_logs and smartctl decode our log pages without complaint.

The guest reaches our LUN through QEMU `scsi-block` on virtio-scsi-pci (the pattern and the
helpers of test_sg3_utils.py), so the LOG SENSE and MODE SENSE CDBs that sg_logs (sg3_utils
1.46) and smartctl (smartmontools 7.3, Debian) send reach target.scsi unchanged.
- sg_logs -a / -A: every page of target.scsi.logpages.PAGES (SPC-4 7.3), each decoded
  under its own heading, with the temperature values of logpages.py, and no complaint
  (test_sg3_utils.COMPLAINTS); a page we do not have (0Eh) is ILLEGAL REQUEST.
- smartctl -a: "SMART support is: Available" and "Enabled" (mode page 1Ch read, DEXCPT=0),
  "SMART Health Status: OK" (log page 2Fh: ASC/ASCQ 00h/00h; smartmontools scsiprint.cpp
  scsiGetSmartData()), the current and trip temperatures of page 0Dh (scsiGetTemp()).
  Its exit status (smartctl(8) EXIT STATUS) has no bit but bit 2 set: bit 2 is set because
  the disk keeps no Self-Test Results log page (10h): scsiprint.cpp prints "Device does not
  support Self Test logging" and sets FAILSMART for `-a`. `smartctl -H -A -l error`, which
  asks nothing about self-tests, must exit 0.
The target is always ours (kind="ours"): the expected values are our tables.
"""

from __future__ import annotations

import re

import pytest

from target.scsi import logpages
from target.testing.plugin import Lun
from tests.guest.test_sg3_utils import SG_ILLEGAL_REQUEST, start

pytestmark = pytest.mark.guest

# smartctl(8) EXIT STATUS bits.
SMART_FAILSMART = 1 << 2  # "Some SMART or other ATA command to the disk failed"
SMART_FAILSTATUS = 1 << 3  # "SMART status check returned DISK FAILING"

# What smartctl 7.3 prints when something went wrong with what it was given (scsiprint.cpp,
# scsicmds.cpp): failed commands, bad responses, early termination.
SMART_COMPLAINTS = re.compile(
    r"failed|\bbad\b|Terminate|unexpect|Unavailable|not available|lacks|error:|"
    r"DISK FAILING|FAILURE|illegal|invalid|sense key|additional sense", re.IGNORECASE)
# Lines that match but state a fact of our disk that the standard allows.
SMART_BENIGN = (
    "Device does not support Self Test logging",  # no log page 10h (see the docstring)
)


def _smart_complaints(out: str, err: str) -> list[str]:
    found = [f"stderr: {line}" for line in err.splitlines() if line.strip()]
    for line in out.splitlines():
        if SMART_COMPLAINTS.search(line) and line.strip() not in SMART_BENIGN:
            found.append(f"stdout: {line}")
    return found


def test_sg_logs_and_smartctl_decode_the_log_pages(scsi_target, guest):
    """SPC-4 6.8 / 7.3: sg_logs -a and -A decode every log page, smartctl -a finds the
    disk healthy with its temperatures (smartmontools scsiCheckIE(), scsiGetTemp())."""
    lun = Lun(size=32 << 20, vendor="STLOG", product="LOGPAGES")
    _, sg = start(scsi_target, guest, lun)
    current, reference = logpages.CURRENT_TEMPERATURE, logpages.REFERENCE_TEMPERATURE

    out = sg.clean("sg_logs -a", "sg_logs -a (LOG SENSE, every page)").out
    for heading in ("Supported log pages", "Temperature page", "Informational Exceptions page"):
        assert heading in out, f"SPC-4 7.3: sg_logs -a decoded no {heading!r}:\n{out}"
    assert f"Current temperature = {current} C" in out, out
    assert f"Reference temperature = {reference} C" in out, out
    assert "IE asc = 0x0, ascq = 0x0" in out, f"SPC-4 7.3.8: ASC/ASCQ 00h/00h:\n{out}"

    out = sg.clean("sg_logs -A", "sg_logs -A (pages and subpages)").out
    assert "Supported log pages and subpages" in out, out

    listed = sg.clean("sg_logs -lll", "sg_logs -lll (00h/FFh)").out
    pairs = {(int(p, 16), int(s, 16) if s else 0)
             for p, s in re.findall(r"^\s+0x([0-9a-f]{2})(?:,0x([0-9a-f]{2}))?\s", listed, re.M)}
    assert pairs == set(logpages.PAGES), (
        f"SPC-4 7.3.19: the Supported Log Pages and Subpages page lists {sorted(pairs)}, "
        f"logpages.PAGES has {sorted(logpages.PAGES)}:\n{listed}")

    r = sg.run("sg_logs -p 0x0e")
    assert r.status == SG_ILLEGAL_REQUEST, (
        f"SPC-4 6.8.1: an unsupported page is ILLEGAL REQUEST, INVALID FIELD IN CDB:\n{r.text()}")

    # smartctl -a: health and temperatures.
    r = sg.run("smartctl -a")
    assert r.status & ~SMART_FAILSMART == 0 and "Device does not support Self Test logging" in \
        r.out, f"smartctl(8) exit status {r.status}: only bit 2 (no self-test log):\n{r.text()}"
    complaints = _smart_complaints(r.out, r.err)
    assert not complaints, "smartctl -a complains:\n  " + "\n  ".join(complaints) + \
        f"\n{r.text()}"
    for line in ("SMART support is:     Available - device has SMART capability.",
                 "SMART support is:     Enabled",
                 "SMART Health Status: OK",
                 f"Current Drive Temperature:     {current} C",
                 f"Drive Trip Temperature:        {reference} C"):
        assert line in r.out, f"smartctl -a printed no {line!r}:\n{r.text()}"

    r = sg.run("smartctl -H -A -l error")
    assert r.status == 0 and "SMART Health Status: OK" in r.out, (
        f"smartctl(8): exit status 0 for a healthy disk:\n{r.text()}")
    assert not _smart_complaints(r.out, r.err), r.text()
