"""LOG SENSE (SPC-4 6.8) and the log pages of target.scsi.logpages (SPC-4 7.3).

Oracles, none of them ours:
- sg3_utils' sg_logs (Debian sg3-utils 1.46) decodes the bytes our handler returns with
  `sg_logs --in=FILE` (hex), as it decodes a device's answer;
- the byte layout SPC-4 7.3.1 (page header and log parameter), 7.3.18/7.3.19 (supported
  pages and subpages), 7.3.21 (temperature) and 7.3.8 (informational exceptions) give;
- illumos sd.c: sd_log_page_supported() (page 00h, 255 bytes, PC 01b, the list in bytes
  4 .. 4+data[3]) and sd_dkio_get_temp() (page 0Dh, 16 bytes, PC 01b: parameter length
  02h at bytes 7 and 13, codes 0000h at 4-5 and 0001h at 10-11, values at 9 and 15);
- smartmontools 7.3 scsicmds.cpp scsiLogSense() (PC 01b; the page code echoed in byte 0
  bits 5-0, a non-zero PAGE LENGTH), scsiCheckIE() (page 2Fh: parameter code 0000h,
  length > 1, ASC/ASCQ at bytes 8/9), scsiprint.cpp scsiGetSupportedLogPages() (00h/FFh:
  SPF=1, subpage FFh in byte 1) and scsiFetchIECmpage() (mode page 1Ch).
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from target.scsi import logpages, spc
from target.scsi.commands import CommandSet
from target.scsi.modepages import INFORMATIONAL_EXCEPTIONS_CONTROL
from tests.unit.spc_util import check, data, make_lu, nexus, ready, run

pytestmark = pytest.mark.unit

ILLEGAL_REQUEST = 0x05
INVALID_FIELD_IN_CDB = (ILLEGAL_REQUEST, 0x24, 0x00)
INVALID_COMMAND_OPERATION_CODE = (ILLEGAL_REQUEST, 0x20, 0x00)


def log_sense(page: int, subpage: int = 0, *, pc: int = 1, sp: bool = False,
              ppc: bool = False, pointer: int = 0, alloc: int = 0xFFFF,
              byte1: int = 0, byte4: int = 0) -> bytes:
    """A LOG SENSE CDB (SPC-4 6.8.1 table: LOG SENSE command)."""
    b1 = byte1 | (0x02 if ppc else 0) | (0x01 if sp else 0)
    return struct.pack(">BBBBBHHB", 0x4D, b1, (pc << 6) | page, subpage, byte4, pointer,
                       alloc, 0)


@pytest.fixture
def lu():
    lu = make_lu()
    ready(lu, nexus(1))
    return lu


def page(lu, code: int, subpage: int = 0, **kw) -> bytes:
    return data(run(lu, nexus(1), log_sense(code, subpage, **kw)))


def parameters(d: bytes) -> list[tuple[int, int, bytes]]:
    """(PARAMETER CODE, control byte, value) of a log page (SPC-4 7.3.1)."""
    out, pos, end = [], 4, 4 + struct.unpack_from(">H", d, 2)[0]
    while pos < end:
        code, control, length = struct.unpack_from(">HBB", d, pos)
        out.append((code, control, d[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    assert pos == end, f"parameters overrun the PAGE LENGTH: {d.hex(' ')}"
    return out


needs_sg_logs = pytest.mark.skipif(
    shutil.which("sg_logs") is None,
    reason="needs sg3_utils' sg_logs: `apt-get install sg3-utils` (make test installs it)")


def sg_logs(d: bytes, tmp_path, *args: str) -> str:
    """sg_logs' decoding of the page bytes `d` (the oracle), exit status 0 required."""
    f = tmp_path / "page.hex"
    f.write_text(d.hex(" ") + "\n")
    r = subprocess.run(["sg_logs", f"--in={f}", *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and not r.stderr.strip(), (r.returncode, r.stdout, r.stderr)
    return r.stdout


# ---- the table ----------------------------------------------------------------------------


def test_log_sense_is_in_the_spc_table_with_its_cdb_usage():
    """SPC-4 6.35.3: CDB USAGE DATA of LOG SENSE: SP, PC + PAGE CODE, SUBPAGE CODE,
    PARAMETER POINTER, ALLOCATION LENGTH, CONTROL (NACA); not PPC (obsolete since SPC-4
    r18) nor reserved byte 4. LOG SELECT (4Ch) is not in the table."""
    cmd = spc.COMMANDS.find(0x4D)
    assert cmd is not None and cmd.cdb_length == 10
    assert cmd.usage == bytes((0x4D, 0x01, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x04))
    assert spc.COMMANDS.find(0x4C) is None


def test_log_select_is_invalid_command_operation_code(lu):
    """SPC-4 6.7 LOG SELECT is not implemented: INVALID COMMAND OPERATION CODE, byte 0."""
    s = check(run(lu, nexus(1), bytes((0x4C, 0x02, 0x40, 0, 0, 0, 0, 0, 0, 0))))
    assert s.code == INVALID_COMMAND_OPERATION_CODE and s.cd and s.field == 0


def test_disk_table_has_log_sense():
    from target.scsi.disk import DISK_COMMANDS
    assert isinstance(DISK_COMMANDS, CommandSet) and DISK_COMMANDS.find(0x4D) is not None


# ---- the pages against the clauses and sg_logs ------------------------------------------------


def test_supported_log_pages(lu, tmp_path):
    """SPC-4 7.3.18: header 00h/00h (SPF=0), then each page code, ascending."""
    d = page(lu, 0x00)
    assert d[0] & 0x7F == 0x00 and d[1] == 0x00
    assert d[4:] == bytes((0x00, 0x0D, 0x2F))
    assert struct.unpack_from(">H", d, 2)[0] == 3
    if shutil.which("sg_logs"):
        out = sg_logs(d, tmp_path)
        assert "Supported log pages  [0x0]:" in out
        decoded = [line.split()[0] for line in out.splitlines()[1:]]
        assert decoded == ["0x00", "0x0d", "0x2f"], out


def test_supported_log_pages_and_subpages(lu, tmp_path):
    """SPC-4 7.3.19: header SPF=1, page 00h, subpage FFh; then (page, subpage) pairs,
    ascending; smartctl (scsiGetSupportedLogPages) accepts it only with SPF=1 and FFh."""
    d = page(lu, 0x00, 0xFF)
    assert d[0] & 0x40 and d[0] & 0x3F == 0 and d[1] == 0xFF
    pairs = [tuple(d[i : i + 2]) for i in range(4, len(d), 2)]
    assert pairs == [(0x00, 0x00), (0x00, 0xFF), (0x0D, 0x00), (0x2F, 0x00)]
    assert struct.unpack_from(">H", d, 2)[0] == 8
    assert d != page(lu, 0x00)  # smartctl: "ignored subpage field, bad"
    if shutil.which("sg_logs"):
        out = sg_logs(d, tmp_path)
        assert "Supported log pages and subpages  [0x0, 0xff]:" in out
        assert [line.split()[0] for line in out.splitlines()[1:]] == \
            ["0x00", "0x00,0xff", "0x0d", "0x2f"], out


def test_temperature_page(lu, tmp_path):
    """SPC-4 7.3.21: parameter 0000h TEMPERATURE and 0001h REFERENCE TEMPERATURE, each
    length 02h (reserved, degrees C), list parameters (FORMAT AND LINKING 11b)."""
    d = page(lu, 0x0D)
    assert d[0] & 0x3F == 0x0D and d[1] == 0
    params = parameters(d)
    assert [(c, v) for c, _, v in params] == [
        (0x0000, bytes((0, logpages.CURRENT_TEMPERATURE))),
        (0x0001, bytes((0, logpages.REFERENCE_TEMPERATURE)))]
    assert all(control & 0x03 == 0x03 and not control & 0x80 for _, control, _ in params)
    if shutil.which("sg_logs"):
        out = sg_logs(d, tmp_path)
        assert f"Current temperature = {logpages.CURRENT_TEMPERATURE} C" in out, out
        assert f"Reference temperature = {logpages.REFERENCE_TEMPERATURE} C" in out, out
        pcb = sg_logs(d, tmp_path, "--pcb")
        assert pcb.count("format+linking=3") == 2 and "du=0" in pcb, pcb


def test_temperature_page_as_illumos_sd_reads_it(lu):
    """illumos sd.c sd_dkio_get_temp(): LOG SENSE 0Dh, PC 01b, 16 bytes (TEMPERATURE_PAGE_SIZE,
    sddef.h); the current temperature at byte 9 when bytes 4-5 are 0000h and byte 7 is 02h,
    the reference temperature at byte 15 when bytes 10-11 are 0001h and byte 13 is 02h."""
    t = page(lu, 0x0D, pc=1, alloc=16)
    assert len(t) == 16
    assert (t[4], t[5], t[7]) == (0, 0, 2) and t[9] == logpages.CURRENT_TEMPERATURE
    assert (t[10], t[11], t[13]) == (0, 1, 2) and t[15] == logpages.REFERENCE_TEMPERATURE
    assert 0xFF not in (t[9], t[15])  # FFh: DKT_INVALID_TEMP


def test_supported_pages_as_illumos_sd_reads_them(lu):
    """illumos sd.c sd_log_page_supported(): LOG SENSE 00h, PC 01b, 255 bytes; the page
    codes in bytes 4 .. 4+data[3]. The start/stop cycle counter page 0Eh is not there, so sd
    does not power-manage the disk (sd_setup_pm)."""
    d = page(lu, 0x00, pc=1, alloc=0xFF)
    listed = set(d[4 : 4 + d[3]])
    assert {0x0D, 0x2F} <= listed and 0x0E not in listed


def test_informational_exceptions_page(lu, tmp_path):
    """SPC-4 7.3.8: the general parameter 0000h: INFORMATIONAL EXCEPTION ASC 00h, ASCQ 00h
    (no failure predicted), MOST RECENT TEMPERATURE READING; smartmontools scsiCheckIE()
    reads ASC/ASCQ at bytes 8/9 once bytes 4-5 are 0000h and byte 7 > 1."""
    d = page(lu, 0x2F)
    assert d[0] & 0x3F == 0x2F
    params = parameters(d)
    assert len(params) == 1
    code, control, value = params[0]
    assert code == 0 and control & 0x03 == 0x03 and len(value) >= 3
    assert value[:3] == bytes((0x00, 0x00, logpages.CURRENT_TEMPERATURE))
    assert (d[4], d[5]) == (0, 0) and d[7] > 1 and (d[8], d[9]) == (0, 0)
    if shutil.which("sg_logs"):
        out = sg_logs(d, tmp_path)
        assert "IE asc = 0x0, ascq = 0x0" in out, out
        assert f"Current temperature = {logpages.CURRENT_TEMPERATURE} C" in out, out


@needs_sg_logs
def test_sg_logs_decodes_each_page_without_complaint(lu, tmp_path):
    """sg_logs --in on each page of logpages.PAGES: exit 0, nothing on stderr, no
    "unknown"/"error"/"bad"/"truncat" in its decoding."""
    for code, subpage in logpages.PAGES:
        out = sg_logs(page(lu, code, subpage), tmp_path, "-vv")
        bad = [line for line in out.splitlines()
               if any(w in line.lower() for w in ("unknown", "error", "bad", "truncat",
                                                   "reserved", "too "))]
        assert not bad, (code, subpage, bad, out)


@pytest.mark.parametrize("pc", [0, 1, 2, 3])
def test_every_page_control_value_returns_the_list_parameters(lu, pc):
    """SPC-4 6.8.1: PC 00b..11b; the pages hold list parameters only, which PC does not
    select among: the same page for each value."""
    for code, subpage in logpages.PAGES:
        assert page(lu, code, subpage, pc=pc) == page(lu, code, subpage, pc=1)


def test_saving_is_header_ds(lu):
    """SPC-4 7.3.1: DS=1 in byte 0 of every page (no log parameter is saveable), and TSD=1
    in every parameter control byte (SPC-4 7.3.2.2: never saved implicitly)."""
    for code, subpage in logpages.PAGES:
        d = page(lu, code, subpage)
        assert d[0] & 0x80
        for _, control, _ in (parameters(d) if code else []):
            assert control & 0x20


# ---- the CDB -------------------------------------------------------------------------------


def test_sp_is_invalid_field_in_cdb(lu):
    """SPC-4 6.8.1: SP=1 with saving not implemented -> INVALID FIELD IN CDB (byte 1 bit 0)."""
    s = check(run(lu, nexus(1), log_sense(0x0D, sp=True)))
    assert s.code == INVALID_FIELD_IN_CDB and s.sksv and s.cd
    assert (s.field, s.bpv, s.bit) == (1, True, 0)


def test_ppc_is_refused(lu):
    """PPC (byte 1 bit 1) is obsolete since SPC-4 r18: INVALID FIELD IN CDB, byte 1 bit 1."""
    s = check(run(lu, nexus(1), log_sense(0x0D, ppc=True)))
    assert s.code == INVALID_FIELD_IN_CDB and (s.field, s.bpv, s.bit) == (1, True, 1)


def test_reserved_fields_are_refused(lu):
    """Reserved bits of byte 1 and reserved byte 4: INVALID FIELD IN CDB with the pointer."""
    s = check(run(lu, nexus(1), log_sense(0x0D, byte1=0x80)))
    assert s.code == INVALID_FIELD_IN_CDB and (s.field, s.bit) == (1, 7)
    s = check(run(lu, nexus(1), log_sense(0x0D, byte4=0x01)))
    assert s.code == INVALID_FIELD_IN_CDB and s.field == 4


@pytest.mark.parametrize("code", [0x01, 0x0E, 0x10, 0x3F])
def test_unsupported_page_is_invalid_field_in_cdb(lu, code):
    """SPC-4 6.8.1: a page code not implemented -> INVALID FIELD IN CDB, byte 2 (bit 5:
    the PAGE CODE field's high bit, as the mode pages' pointer)."""
    s = check(run(lu, nexus(1), log_sense(code)))
    assert s.code == INVALID_FIELD_IN_CDB and s.cd and s.field == 2


@pytest.mark.parametrize("code,subpage", [(0x00, 0x01), (0x0D, 0x01), (0x0D, 0xFF),
                                          (0x2F, 0xFF)])
def test_unsupported_subpage_is_invalid_field_in_cdb(lu, code, subpage):
    """SPC-4 6.8.1: a subpage not implemented -> INVALID FIELD IN CDB, byte 3."""
    s = check(run(lu, nexus(1), log_sense(code, subpage)))
    assert s.code == INVALID_FIELD_IN_CDB and s.cd and s.field == 3


def test_parameter_pointer_selects_from_that_code(lu):
    """SPC-4 6.8.1: PARAMETER POINTER n returns the parameters with code >= n, the PAGE
    LENGTH counting those alone."""
    d = page(lu, 0x0D, pointer=1)
    assert [c for c, _, _ in parameters(d)] == [1]
    assert struct.unpack_from(">H", d, 2)[0] == 6
    assert page(lu, 0x0D, pointer=0) == page(lu, 0x0D)


@pytest.mark.parametrize("code,subpage,pointer", [(0x0D, 0, 2), (0x2F, 0, 1), (0x00, 0, 1),
                                                  (0x00, 0xFF, 1), (0x0D, 0, 0xFFFF)])
def test_parameter_pointer_past_the_last_code_is_invalid(lu, code, subpage, pointer):
    """SPC-4 6.8.1: a PARAMETER POINTER above the largest parameter code of the page ->
    INVALID FIELD IN CDB, byte 5."""
    s = check(run(lu, nexus(1), log_sense(code, subpage, pointer=pointer)))
    assert s.code == INVALID_FIELD_IN_CDB and s.field == 5


@pytest.mark.parametrize("alloc", [0, 1, 4, 9, 15])
def test_allocation_length_truncates(lu, alloc):
    """SPC-4 4.2.5.6: the data is cut to the ALLOCATION LENGTH, no error; the PAGE LENGTH
    still says the whole page."""
    full = page(lu, 0x0D)
    d = page(lu, 0x0D, alloc=alloc)
    assert d == full[:alloc]
    if alloc >= 4:
        assert struct.unpack_from(">H", d, 2)[0] == len(full) - 4 == 12


# ---- mode page 1Ch ---------------------------------------------------------------------------


def test_informational_exceptions_control_mode_page(lu):
    """SPC-4 7.5 Informational Exceptions Control mode page: 1Ch, length 0Ah, DEXCPT=0
    (smartmontools scsi_IsExceptionControlEnabled: enabled), MRIE 6h; nothing changeable.
    MODE SENSE(6) with DBD (SPC-4 6.11)."""
    def sense6(pc: int) -> bytes:
        d = data(run(lu, nexus(1), bytes((0x1A, 0x08, (pc << 6) | 0x1C, 0, 0xFF, 0))))
        return d[4 + d[3]:]
    cur = sense6(0)
    assert cur[0] & 0x3F == INFORMATIONAL_EXCEPTIONS_CONTROL and cur[1] == 0x0A
    assert len(cur) == 12
    assert cur[2] & 0x08 == 0 and cur[3] & 0x0F == 0x6
    assert sense6(1)[2:] == bytes(10)
    assert sense6(2) == cur
