"""sg3_utils in a Linux guest decode what our target returns, without complaint.

The guest reaches our LUN through QEMU `scsi-block` on virtio-scsi-pci, so every CDB that
sg_opcodes, sg_vpd, sg_persist, sg_readcap and sg_modes (sg3_utils 1.46, bundled into the
guest image by images.linux) send reaches target.scsi unchanged. Each tool must
- exit 0 and print no complaint: nothing on stderr, no stdout line matching COMPLAINTS
  unless it is one of the BENIGN field decodes listed with it;
- decode what the target's own tables say, and what the host reads from the same LUN
  with our initiator (target.shell.initiator), field by field:
  - sg_opcodes: REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) lists exactly the
    (operation code, service action) entries of target.scsi.disk.DISK_COMMANDS, with their
    CDB length and CDB USAGE DATA (6.35.3) and a command timeouts descriptor (6.35.4);
  - sg_vpd -a: every page of target.scsi.spc.supported_vpd_pages() (SPC-4 7.8), in the
    order of the Supported VPD Pages page, each decoded under its own heading;
  - sg_persist -k/-r/-s/-c: PERSISTENT RESERVE IN (SPC-4 6.16) before and after a
    REGISTER and RESERVE from the guest;
  - sg_readcap -l: READ CAPACITY(16) (SBC-4 5.20), the LU's block count and length;
  - sg_modes -a: MODE SENSE(6)/(10) (SPC-4 6.11/6.12) with the mode pages of the LU's
    ModePages (SPC-4 7.5), byte for byte;
- agree with each other: what RSOC says of UNMAP against the provisioning VPD pages.
QEMU's scsi-block rewrites one thing on the way: bytes 8-15 of VPD page B0h (MAXIMUM and
OPTIMAL TRANSFER LENGTH, hw/scsi/scsi-generic.c), which the Block Limits check allows for.
The target is always ours (kind="ours"): the expected values are our tables, so this
module does not follow --scsi-target=tgtd.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import pytest

from target.backing.memory import MemoryStore
from target.scsi import spc
from target.scsi.disk import DISK_COMMANDS, make_disk
from target.shell.initiator import Initiator, InitiatorError
from target.testing.plugin import Lun, RunningTarget

pytestmark = pytest.mark.guest

# The sg3_utils programs these tests run in the guest.
TOOLS = ("sg_opcodes", "sg_vpd", "sg_persist", "sg_readcap", "sg_modes")
HOST_INITIATOR = "iqn.2026-11.local.scsi-target:sg3-utils-oracle"
GOOD = 0x00
CHECK_CONDITION = 0x02
UNIT_ATTENTION = 0x6
# sg3_utils exit status for ILLEGAL REQUEST sense (SG_LIB_CAT_ILLEGAL_REQ, sg_lib.h).
SG_ILLEGAL_REQUEST = 5

# What counts as sg3_utils complaining about the data it was given. Every tool writes its
# complaints to stderr (pr2serr), which must stay empty; these patterns catch the ones
# printed to stdout and are matched case-insensitively against every stdout line. They
# are the wording of sg3_utils 1.46 (src/sg_vpd.c, sg_opcodes.c, sg_persist.c,
# sg_readcap.c, sg_modes.c, lib/sg_lib.c, lib/sg_cmds_basic.c).
COMPLAINTS = re.compile("|".join((
    r"\berror",             # "VPD page error: ...", "Some error occurred", "Error in ..."
    r"\bbad\b|\bbadly\b",   # "bad NAA nibble", "First N bytes of bad response"
    r"malformed",
    r"not supported",       # "command not supported", "(perhaps PC not supported)"
    r"truncat",             # "Additional length too large=N, truncate", "truncate output"
    r"too (short|long|large|few)",  # "page length too short=N", "got too few bytes"
    r"\bshort (descriptor|designator)",
    r"unexpect",            # "<< unexpected NAA 3 ...", "Unexpected TPID format"
    r"invalid",             # "invalid VPD response", "Invalid block descriptor length"
    r"exceed",              # "resid (N) should never exceed requested len"
    r"\bresid\b|\btrim\b",  # "MS(10) resid=N implies ...", "page length > N, trim"
    r"warning",
    r">>>",                 # sg_modes/sg_vpd flag suspect data with ">>>"
    r"\bfail",
    r"illegal request|sense key|additional sense",  # sense data: a command was refused
    r"\breserved\b|\bobsolete\b",  # a field decoded as a reserved or obsolete value
    r"\bunknown\b",
    r"perhaps|probably",    # sg3_utils guessing at what went wrong
)), re.IGNORECASE)

# Lines that match COMPLAINTS but are sg3_utils decoding a field value we return as the
# standard defines it, not a complaint about it.
BENIGN = tuple(re.compile(p) for p in (
    # sg_opcodes rows and "Command_name:" end in sg3_utils' own name of the opcode, e.g.
    # "Sanitize, exit failure mode" or "Receive copy failure details(LID1)": not our data.
    r"^ [0-9a-f]{2} {5}[ 0-9a-f]{4} {7}[ \d]{2}\d {4}",
    r"^  Command_name: ",
    # sg_vpd page 8Fh (Third-party Copy) lists the copy commands by sg3_utils' names.
    r"^  Receive copy failure details\(LID1\)$",
    # sg_modes names mode page 01h "Read-Write error recovery" (SBC-4 6.5.9).
    r"^>> Read-Write error recovery, page_control: \w+$",
    # sg_vpd page B2h: THRESHOLD EXPONENT 0 = no threshold sets, THRESHOLD PERCENTAGE 0 =
    # no percentages (SBC-4 6.6.6).
    r"^  Threshold exponent: 0 \[threshold sets not supported\]$",
    r"^  Threshold percentage: 0 \[percentages not supported\]$",
    # sg_vpd page B0h: with UGAVALID=0 the UNMAP GRANULARITY ALIGNMENT is not valid
    # (SBC-4 6.6.4).
    r"^  Unmap granularity alignment: \d+ \[invalid\]$",
))

# sg_vpd 1.46's acronym of each standard page code (src/sg_vpd.c standard_vpd_pg[] and
# the VPD_* page codes), for reading the Supported VPD Pages list back into codes.
VPD_ACRONYMS = {
    "sv": 0x00, "sn": 0x80, "iod": 0x81, "aod": 0x82, "di": 0x83, "sii": 0x84,
    "mna": 0x85, "ei": 0x86, "mpp": 0x87, "sp": 0x88, "ai": 0x89, "pc": 0x8A, "dc": 0x8B,
    "cfa": 0x8C, "psm": 0x8D, "tpc": 0x8F, "pslu": 0x90, "pspo": 0x91, "sfs": 0x92,
    "bl": 0xB0, "bdc": 0xB1, "lbpv": 0xB2, "ref": 0xB3, "sbl": 0xB4, "bdce": 0xB5,
    "zbdch": 0xB6, "ble": 0xB7, "fp": 0xB8, "cpr": 0xB9,
}



# ---- the guest side ----------------------------------------------------------------------

_RC = "@@sg-rc="
_ERR = "@@sg-stderr@@"


@dataclass
class SgRun:
    """One sg3_utils command run in the guest: exit status, stdout and stderr apart."""

    command: str
    status: int
    out: str
    err: str

    def complaints(self) -> list[str]:
        """The stderr lines, and the stdout lines that COMPLAINTS matches (less BENIGN)."""
        found = [f"stderr: {line}" for line in self.err.splitlines() if line.strip()]
        for line in self.out.splitlines():
            if COMPLAINTS.search(line) and not any(b.match(line) for b in BENIGN):
                found.append(f"stdout: {line}")
        return found

    def text(self) -> str:
        return (f"$ {self.command}   (exit {self.status})\n{self.out.rstrip()}\n"
                f"--- stderr ---\n{self.err.rstrip()}")


class Sg:
    """sg3_utils commands on the guest's disk, over the serial console."""

    def __init__(self, vm) -> None:
        self.vm = vm
        self.dev = f"/dev/{vm.disk}"
        vm.check("dmesg -n 1")  # keep kernel messages off the console we parse
        _, out = vm.run(f"for t in {' '.join(TOOLS)}; do command -v $t >/dev/null "
                             "|| echo missing: $t; done")
        assert "missing:" not in out, (
            f"the guest image lacks sg3_utils programs ({out.strip()}): images/linux.py "
            "PROGRAMS ships sg3-utils' usr/bin/* with libsgutils2")

    def run(self, args: str, timeout: float = 60.0) -> SgRun:
        command = f"{args} {self.dev}"
        _, text = self.vm.run(f"{command} >/tmp/sg.out 2>/tmp/sg.err; echo {_RC}$?; "
                              f"cat /tmp/sg.out; echo; echo {_ERR}; cat /tmp/sg.err",
                              timeout)
        m = re.search(rf"{re.escape(_RC)}(\d+)\n(.*)\n{re.escape(_ERR)}\n(.*)\Z", text, re.S)
        assert m, f"cannot split the output of `{command}`:\n{text}"
        return SgRun(command, int(m.group(1)), m.group(2), m.group(3))

    def clean(self, args: str, what: str, hex_dump: bool = True) -> SgRun:
        """Run a command that must exit 0 without complaint; else fail with its response
        bytes (the same command with -H) in the message."""
        r = self.run(args)
        complaints = r.complaints()
        if r.status == 0 and not complaints:
            return r
        detail = ""
        if hex_dump:
            h = self.run(f"{args} -H")
            detail = f"\nresponse bytes:\n{h.text()}"
        pytest.fail(f"{what}: sg3_utils complains (exit {r.status}):\n  "
                    + "\n  ".join(complaints or ["(none printed)"])
                    + f"\n{r.text()}{detail}")


# ---- the host side: what the target returns, read with our initiator --------------------

def _sense_key(sense: bytes) -> int:
    if len(sense) < 3:
        return -1
    if sense[0] & 0x7F in (0x72, 0x73):  # descriptor format (SPC-4 4.5.2)
        return sense[1] & 0xF
    return sense[2] & 0xF


def host_read(target: RunningTarget, cdbs: dict[str, tuple[bytes, int]]) -> dict[str, bytes]:
    """Data-In of each named (CDB, allocation length), from the host on its own I_T nexus;
    a UNIT ATTENTION (the new nexus's power on, SAM-5 5.14) is retried."""
    a = target.address()
    out: dict[str, bytes] = {}
    with Initiator(a.host, a.port, a.iqn, initiator_name=HOST_INITIATOR) as ini:
        ini.login()
        for name, (cdb, length) in cdbs.items():
            for _ in range(4):
                r = ini.command(cdb, lun=a.lun, read=length)
                if r.status != CHECK_CONDITION or _sense_key(r.sense) != UNIT_ATTENTION:
                    break
            if r.status != GOOD:
                raise InitiatorError(f"{name}: status {r.status:#04x}, sense {r.sense.hex()}")
            out[name] = r.data
        try:
            ini.logout()
        except (InitiatorError, OSError):
            pass
    return out


def inquiry_vpd(code: int) -> tuple[bytes, int]:
    return bytes([0x12, 0x01, code, 0x10, 0x00, 0x00]), 0x1000


def host_lu(lun: Lun):
    """A disk LU like the served one, for the tables that take a LogicalUnit."""
    return make_disk(0, MemoryStore(lun.size), block_size=lun.block_size,
                     **(lun.options or {}))


# A thin LU on 16 KiB physical blocks: UNMAP, LBPME/LBPRZ, B2h with LBPU, LBPPB 4.
THIN = {"thin": True, "physical_block_size": 16384}


def start(scsi_target, guest, lun: Lun) -> tuple[RunningTarget, Sg]:
    target = scsi_target(lun, kind="ours")
    vm = guest(target, hba="virtio-scsi-pci", mode="scsi-block")
    return target, Sg(vm)


def _number(text: str, label: str) -> int:
    """The number after `label:` or `label=` in sg3_utils output (decimal or 0x hex; the
    "-1 [unbounded]" of 32-bit fields is FFFFFFFFh)."""
    m = re.search(rf"(?:^|[ ,:])\s*{re.escape(label)}[:=]\s*(-1|0x[0-9a-fA-F]+|\d+)", text,
                  re.M)
    assert m, f"no {label!r} in:\n{text}"
    value = m.group(1)
    return 0xFFFFFFFF if value == "-1" else int(value, 0)


def _flags(text: str) -> dict[str, int]:
    """Every NAME=digits of a decode (sg_vpd's extended INQUIRY page prints them so)."""
    return {k: int(v) for k, v in re.findall(r"\b([A-Z][A-Z0-9_]*)=(\d+)\b", text)}


def _hex_bytes(lines: list[str]) -> bytes:
    """The bytes of sg3_utils hex lines (" 00     01 0a 00 ...", offset first)."""
    data = bytearray()
    for line in lines:
        fields = line.split()
        data += bytes(int(f, 16) for f in fields[1:] if re.fullmatch(r"[0-9a-f]{2}", f))
    return bytes(data)


# ---- sg_opcodes: REPORT SUPPORTED OPERATION CODES ----------------------------------------

# " %.2x     %.4s       %3d" (sg_opcodes.c): opcode, service action (blank without
# SERVACTV), CDB size, then "    R,C    name" or, with RCTD, the two timeouts and the name.
_RSOC_ROW = re.compile(r"^ ([0-9a-f]{2}) {5}([ 0-9a-f]{4}) {7}([ \d]{2}\d)(.*)$")
_USAGE = re.compile(r"^ +cdb usage: ((?:[0-9a-f]{2} )*[0-9a-f]{2}) ?$")
_TIMEOUTS = re.compile(r"^ +(-|\d+) +(-|\d+) {4}\S")


def parse_rsoc(out: str) -> dict[tuple[int, int | None], dict]:
    rows: dict[tuple[int, int | None], dict] = {}
    last = None
    for line in out.splitlines():
        m = _RSOC_ROW.match(line)
        if m:
            sa = int(m.group(2), 16) if m.group(2).strip() else None
            last = (int(m.group(1), 16), sa)
            assert last not in rows, f"sg_opcodes lists {last} twice:\n{out}"
            rows[last] = {"cdb_length": int(m.group(3)), "rest": m.group(4)}
            continue
        u = _USAGE.match(line)
        if u and last is not None:
            rows[last]["usage"] = bytes.fromhex(u.group(1))
    return rows


def _key(op: int, sa: int | None) -> str:
    return f"{op:02x}h" if sa is None else f"{op:02x}h/{sa:02x}h"


# The table of the fully provisioned LU the tests use (Lun's default): no UNMAP.
TABLE = DISK_COMMANDS.restricted(frozenset())


def test_sg_opcodes_lists_the_opcode_table(scsi_target, guest):
    """SPC-4 6.35: sg_opcodes lists exactly DISK_COMMANDS' (opcode, service action)
    entries with their CDB length, CDB USAGE DATA and timeouts, reports single commands
    SUPPORT 011b or 001b, and sees the refusals SPC-4 6.35.1 requires."""
    lun = Lun(size=32 << 20, vendor="STSG3", product="SG-OPCODES")
    _, sg = start(scsi_target, guest, lun)
    table = {(c.opcode, c.service_action): c for c in TABLE}

    listed = parse_rsoc(sg.clean("sg_opcodes", "sg_opcodes (RSOC all commands)").out)
    missing = sorted(set(table) - set(listed), key=lambda k: (k[0], k[1] or 0))
    extra = sorted(set(listed) - set(table), key=lambda k: (k[0], k[1] or 0))
    assert not missing and not extra, (
        "SPC-4 6.35.2: the all_commands parameter data lists one descriptor per supported "
        f"command and service action; missing from sg_opcodes: "
        f"{[_key(*k) for k in missing]}, not in DISK_COMMANDS: {[_key(*k) for k in extra]}")
    wrong_len = {_key(*k): (row["cdb_length"], table[k].cdb_length)
                 for k, row in listed.items() if row["cdb_length"] != table[k].cdb_length}
    assert not wrong_len, f"SPC-4 6.35.2 CDB LENGTH (listed, table): {wrong_len}"

    # -m fetches each command's one_command parameter data (REPORTING OPTIONS 001b/010b).
    masks = parse_rsoc(sg.clean("sg_opcodes -m", "sg_opcodes -m (CDB usage data)").out)
    no_mask = [_key(*k) for k, row in masks.items() if "usage" not in row]
    assert not no_mask, f"SPC-4 6.35.3: sg_opcodes -m got no CDB USAGE DATA for {no_mask}"
    wrong_mask = {_key(*k): (row["usage"].hex(" "), table[k].usage.hex(" "))
                  for k, row in masks.items() if row["usage"] != table[k].usage}
    assert not wrong_mask, f"SPC-4 6.35.3 CDB USAGE DATA (sg_opcodes, table): {wrong_mask}"

    # -R sets RCTD: every descriptor carries CTDP=1 and a command timeouts descriptor.
    rctd = parse_rsoc(sg.clean("sg_opcodes -R", "sg_opcodes -R (RCTD)").out)
    nominal = "-" if spc.NOMINAL_TIMEOUT == 0 else str(spc.NOMINAL_TIMEOUT)
    recommended = "-" if spc.RECOMMENDED_TIMEOUT == 0 else str(spc.RECOMMENDED_TIMEOUT)
    bad_timeouts = {}
    for k, row in rctd.items():
        t = _TIMEOUTS.match(row["rest"])
        if t is None or (t.group(1), t.group(2)) != (nominal, recommended):
            bad_timeouts[_key(*k)] = row["rest"].strip()
    assert set(rctd) == set(table) and not bad_timeouts, (
        "SPC-4 6.35.4: with RCTD=1 each descriptor has CTDP=1 and a timeouts descriptor "
        f"(nominal {nominal}, recommended {recommended} s); differing: {bad_timeouts}")

    # One command (REPORTING OPTIONS 001b / 010b): SUPPORT 011b and the same usage data.
    for cmd in (TABLE.find(0x28), TABLE.find(0x9E, 0x10)):
        assert cmd is not None
        arg = f"0x{cmd.opcode:x}" + ("" if cmd.service_action is None
                                     else f",0x{cmd.service_action:x}")
        out = sg.clean(f"sg_opcodes -o {arg}", f"sg_opcodes -o {arg}").out
        assert "Command is supported [conforming to SCSI standard]" in out, (
            f"SPC-4 6.35.3: {cmd.name} is in the table, SUPPORT must be 011b:\n{out}")
        assert f"Usage data: {cmd.usage.hex(' ')}" in out, (
            f"SPC-4 6.35.3: {cmd.name} CDB USAGE DATA must be {cmd.usage.hex(' ')}:\n{out}")

    # An opcode the table does not have: SUPPORT 001b (SPC-4 6.35.3).
    absent = next(op for op in range(0xC0, 0x100)
                  if TABLE.find(op) is None and not TABLE.has_service_actions(op))
    r = sg.run(f"sg_opcodes -o 0x{absent:x}")
    assert r.status == 0 and not r.err.strip() and re.search(
        r"^  Command is NOT supported$", r.out, re.M), (
        f"SPC-4 6.35.3: opcode {absent:02x}h is not in the table, SUPPORT must be 001b:\n"
        f"{r.text()}")

    # REPORTING OPTIONS 001b for an opcode that has service actions is INVALID FIELD IN
    # CDB (SPC-4 6.35.1); sg_opcodes reports the ILLEGAL REQUEST as exit status 5.
    with_sa = next(c.opcode for c in TABLE.sorted() if c.service_action is not None)
    r = sg.run(f"sg_opcodes -v -o 0x{with_sa:x}")
    assert r.status == SG_ILLEGAL_REQUEST and "Invalid field in cdb" in r.err, (
        f"SPC-4 6.35.1: option 001b with opcode {with_sa:02x}h (it has service actions) "
        f"must end in ILLEGAL REQUEST, INVALID FIELD IN CDB:\n{r.text()}")

    # REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (A3h/0Dh) answers as the table says.
    r = sg.run("sg_opcodes -t")
    if DISK_COMMANDS.find(0xA3, 0x0D) is None:
        assert r.status == SG_ILLEGAL_REQUEST, (
            "SPC-4 4.2.5.1: A3h/0Dh is not in DISK_COMMANDS, an unsupported service action "
            f"must end in ILLEGAL REQUEST:\n{r.text()}")
    else:
        assert r.status == 0 and not r.complaints(), f"sg_opcodes -t:\n{r.text()}"


# ---- sg_vpd: the VPD pages ---------------------------------------------------------------

_VPD_HEADING = re.compile(r"^(\S.*?) VPD page(?: \((\w+)\))?:$")


def parse_vpd_all(out: str) -> list[tuple[str, list[str]]]:
    """sg_vpd -a: (heading, body lines) per page, in the order printed."""
    sections: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        m = _VPD_HEADING.match(line)
        if m:
            sections.append((m.group(1), []))
        elif line.strip():
            assert sections and line.startswith(" "), (
                f"sg_vpd -a printed {line!r} outside any page it decoded:\n{out}")
            sections[-1][1].append(line)
    return sections


def _norm(name: str) -> str:
    return " ".join(re.sub(r"\([^)]*\)", "", name).casefold().split())


@pytest.mark.parametrize("options", [None, THIN], ids=["full", "thin"])
def test_sg_vpd_decodes_every_supported_page(scsi_target, guest, options):
    """SPC-4 7.8: sg_vpd -a reads the Supported VPD Pages page (7.8.16) as exactly
    supported_vpd_pages(), in ascending order, and decodes every page without complaint;
    the fields it prints equal the bytes the host reads (SPC-4 7.8.6, 7.8.7, 7.8.17,
    SBC-4 6.6.2, 6.6.4, 6.6.6)."""
    lun = Lun(size=32 << 20, block_size=4096, vendor="STSG3", product="SG-VPD",
              serial="ST-SG3-VPD-4096", options=options)
    target = scsi_target(lun, kind="ours")
    expected = spc.supported_vpd_pages(host_lu(lun))
    raw = host_read(target, {f"{c:02x}": inquiry_vpd(c) for c in expected})
    sg = Sg(guest(target, hba="virtio-scsi-pci", mode="scsi-block"))

    out = sg.clean("sg_vpd -a", "sg_vpd -a (every supported VPD page)").out
    sections = parse_vpd_all(out)
    assert sections and sections[0][0] == "Supported VPD pages", (
        f"SPC-4 7.8.16: sg_vpd -a starts from page 00h:\n{out}")
    listed = []
    for line in sections[0][1]:
        m = re.fullmatch(r"  (.+?) \[(\w+)\]", line)
        assert m and m.group(2) in VPD_ACRONYMS, (
            f"SPC-4 7.8.16: sg_vpd does not know the page in {line!r}:\n{out}")
        listed.append((VPD_ACRONYMS[m.group(2)], m.group(1)))
    assert [code for code, _ in listed] == expected, (
        "SPC-4 7.8.16: the Supported VPD Pages page lists supported_vpd_pages() in "
        f"ascending order: sg_vpd read {[f'{c:02x}h' for c, _ in listed]}, the table says "
        f"{[f'{c:02x}h' for c in expected]} (page 00h bytes {raw['00'].hex(' ')})")
    decoded = [_norm(h) for h, _ in sections]
    assert decoded == [_norm(name) for _, name in listed], (
        f"SPC-4 7.8: sg_vpd -a decodes each listed page once, in order: {decoded}")
    empty = [h for h, body in sections if not body]
    assert not empty, f"SPC-4 7.8: sg_vpd -a decoded nothing of {empty}:\n{out}"
    body = {code: "\n".join(sections[i][1]) for i, (code, _) in enumerate(listed)}

    # 80h Unit Serial Number (SPC-4 7.8.17): the PRODUCT SERIAL NUMBER, ASCII.
    if 0x80 in body:
        p = raw["80"]
        serial = p[4:4 + p[3]].decode("ascii").strip()
        assert re.search(rf"Unit serial number: {re.escape(serial)}$", body[0x80], re.M), (
            f"SPC-4 7.8.17: sg_vpd must show serial {serial!r}:\n{body[0x80]}")
        assert serial == lun.serial
    # 83h Device Identification (SPC-4 7.8.6): the NAA name, the relative target port
    # and the iSCSI names of the target port and target device.
    if 0x83 in body:
        p = raw["83"]
        naa, rtp = [], []
        off = 4
        while off + 4 <= 4 + struct.unpack_from(">H", p, 2)[0]:
            dtype, length = p[off + 1] & 0xF, p[off + 3]
            if dtype == 0x3:
                naa.append("0x" + p[off + 4:off + 4 + length].hex())
            elif dtype == 0x4:
                rtp.append(struct.unpack_from(">H", p, off + 6)[0])
            off += 4 + length
        text = body[0x83]
        for d in naa:
            assert re.search(rf"^\s+{d}$", text, re.M), f"SPC-4 7.8.6.6: NAA {d}:\n{text}"
        for port in rtp:
            assert f"Relative target port: 0x{port:x}" in text, (
                f"SPC-4 7.8.6.7: relative target port {port:#x}:\n{text}")
        assert target.iqn in text, f"SPC-4 7.8.6.11: SCSI name string {target.iqn}:\n{text}"
    # 86h Extended INQUIRY Data (SPC-4 7.8.7).
    if 0x86 in body:
        p, f = raw["86"], _flags(body[0x86])
        want = {"SPT": (p[4] >> 3) & 7, "GRD_CHK": p[4] >> 2 & 1, "APP_CHK": p[4] >> 1 & 1,
                "REF_CHK": p[4] & 1, "UASK_SUP": p[5] >> 5 & 1, "GROUP_SUP": p[5] >> 4 & 1,
                "PRIOR_SUP": p[5] >> 3 & 1, "HEADSUP": p[5] >> 2 & 1, "ORDSUP": p[5] >> 1 & 1,
                "SIMPSUP": p[5] & 1, "WU_SUP": p[6] >> 3 & 1, "NV_SUP": p[6] >> 1 & 1,
                "V_SUP": p[6] & 1, "P_I_I_SUP": p[7] >> 4 & 1, "LUICLR": p[7] & 1}
        got = {k: f.get(k) for k in want}
        assert got == want, f"SPC-4 7.8.7 extended INQUIRY (sg_vpd, bytes): {got} != {want}"
    # B0h Block Limits (SBC-4 6.6.4).
    if 0xB0 in body:
        p, text = raw["b0"], body[0xB0]
        u16, u32, u64 = (lambda o: struct.unpack_from(">H", p, o)[0],
                         lambda o: struct.unpack_from(">I", p, o)[0],
                         lambda o: struct.unpack_from(">Q", p, o)[0])
        # QEMU's scsi-block rewrites bytes 8-15 of page B0h on the way to the guest
        # (hw/scsi/scsi-generic.c scsi_handle_inquiry_reply): MAXIMUM TRANSFER LENGTH
        # becomes its own limit (here IOV_MAX pages), OPTIMAL TRANSFER LENGTH the smaller
        # non-zero of that and ours.
        qemu_max = _number(text, "Maximum transfer length")
        assert qemu_max > 0, f"QEMU sets a MAXIMUM TRANSFER LENGTH:\n{text}"
        want = {"Write same non-zero (WSNZ)": p[4] & 1,
                "Maximum compare and write length": p[5],
                "Optimal transfer length granularity": u16(6),
                "Optimal transfer length": min(qemu_max, u32(12) or qemu_max),
                "Maximum prefetch transfer length": u32(16),
                "Maximum unmap LBA count": u32(20),
                "Maximum unmap block descriptor count": u32(24),
                "Optimal unmap granularity": u32(28),
                "Unmap granularity alignment": u32(32) & 0x7FFFFFFF,
                "Maximum write same length": u64(36)}
        got = {k: _number(text, k) for k in want}
        assert got == want, f"SBC-4 6.6.4 Block Limits (sg_vpd, bytes): {got} != {want}"
        assert p[3] == 0x3C, f"SBC-4 6.6.4: PAGE LENGTH 003Ch, got {p[3]:#x}"
    # B1h Block Device Characteristics (SBC-4 6.6.2): MEDIUM ROTATION RATE.
    if 0xB1 in body:
        rate = struct.unpack_from(">H", raw["b1"], 4)[0]
        line = {0: "Medium rotation rate is not reported",
                1: "Non-rotating medium (e.g. solid state)"}.get(
                    rate, f"Nominal rotation rate: {rate} rpm")
        assert line in body[0xB1], f"SBC-4 6.6.2 rotation rate {rate}:\n{body[0xB1]}"
    # B2h Logical Block Provisioning (SBC-4 6.6.6).
    if 0xB2 in body:
        p, text = raw["b2"], body[0xB2]
        want = {"Unmap command supported (LBPU)": p[5] >> 7 & 1,
                "Write same (16) with unmap bit supported (LBPWS)": p[5] >> 6 & 1,
                "Write same (10) with unmap bit supported (LBPWS10)": p[5] >> 5 & 1,
                "Logical block provisioning read zeros (LBPRZ)": p[5] >> 2 & 7,
                "Anchored LBAs supported (ANC_SUP)": p[5] >> 1 & 1,
                "Threshold exponent": p[4], "Descriptor present (DP)": p[5] & 1,
                "Provisioning type": p[6] & 7}
        got = {k: _number(text, k) for k in want}
        assert got == want, f"SBC-4 6.6.6 LBP (sg_vpd, bytes): {got} != {want}"


# ---- sg_persist: PERSISTENT RESERVE IN ---------------------------------------------------

def _generation(out: str) -> int:
    m = re.search(r"PR generation=(0x[0-9a-f]+)", out)
    assert m, f"no PR generation in:\n{out}"
    return int(m.group(1), 16)


def test_sg_persist_decodes_persistent_reserve_in(scsi_target, guest):
    """SPC-4 6.16: sg_persist decodes READ KEYS (6.16.2), READ RESERVATION (6.16.3),
    REPORT CAPABILITIES (6.16.4) and READ FULL STATUS (6.16.5) without complaint, with no
    registration, then after the guest registers a key and reserves Write Exclusive, then
    after it releases and unregisters; PRGENERATION counts the REGISTERs."""
    lun = Lun(size=32 << 20, vendor="STSG3", product="SG-PERSIST")
    target = scsi_target(lun, kind="ours")
    caps = host_read(target, {"caps": (bytes([0x5E, 0x02, 0, 0, 0, 0, 0, 0, 8, 0]), 8)})
    sg = Sg(guest(target, hba="virtio-scsi-pci", mode="scsi-block"))
    key = 0x5354534733  # "STSG3"

    out = sg.clean("sg_persist -k", "sg_persist -k (READ KEYS)").out
    assert _generation(out) == 0 and "there are NO registered reservation keys" in out, (
        f"SPC-4 6.16.2: a fresh LU has PRGENERATION 0 and no keys:\n{out}")
    out = sg.clean("sg_persist -r", "sg_persist -r (READ RESERVATION)").out
    assert _generation(out) == 0 and "there is NO reservation held" in out, (
        f"SPC-4 6.16.3: a fresh LU holds no reservation:\n{out}")
    out = sg.clean("sg_persist -s", "sg_persist -s (READ FULL STATUS)").out
    assert _generation(out) == 0 and "No full status descriptors" in out, (
        f"SPC-4 6.16.5: a fresh LU has no full status descriptors:\n{out}")

    # REPORT CAPABILITIES: each bit sg_persist decodes equals the byte the host reads.
    c = caps["caps"]
    out = sg.clean("sg_persist -c", "sg_persist -c (REPORT CAPABILITIES)").out
    want = {"Replace Lost Reservation Capable(RLR_C)": c[2] >> 7 & 1,
            "Compatible Reservation Handling(CRH)": c[2] >> 4 & 1,
            "Specify Initiator Ports Capable(SIP_C)": c[2] >> 3 & 1,
            "All Target Ports Capable(ATP_C)": c[2] >> 2 & 1,
            "Persist Through Power Loss Capable(PTPL_C)": c[2] & 1,
            "Type Mask Valid(TMV)": c[3] >> 7 & 1, "Allow Commands": c[3] >> 4 & 7,
            "Persist Through Power Loss Active(PTPL_A)": c[3] & 1}
    if c[3] & 0x80:
        want |= {"Write Exclusive, all registrants": c[4] >> 7 & 1,
                 "Exclusive Access, registrants only": c[4] >> 6 & 1,
                 "Write Exclusive, registrants only": c[4] >> 5 & 1,
                 "Exclusive Access": c[4] >> 3 & 1, "Write Exclusive": c[4] >> 1 & 1,
                 "Exclusive Access, all registrants": c[5] & 1}
    got = {k: _number(out, k) for k in want}
    assert got == want, f"SPC-4 6.16.4 REPORT CAPABILITIES (sg_persist, bytes {c.hex(' ')})"

    # PERSISTENT RESERVE OUT from the guest (SPC-4 6.17): REGISTER, then RESERVE type 1.
    sg.clean(f"sg_persist --out --register --param-sark=0x{key:x}", "PR OUT REGISTER",
             hex_dump=False)
    sg.clean(f"sg_persist --out --reserve --param-rk=0x{key:x} --prout-type=1",
             "PR OUT RESERVE", hex_dump=False)
    out = sg.clean("sg_persist -k", "sg_persist -k after REGISTER").out
    assert _generation(out) == 1 and "1 registered reservation key follows:" in out \
        and re.search(rf"^\s+0x{key:x}$", out, re.M), (
            f"SPC-4 6.16.2: one key 0x{key:x}, PRGENERATION 1 after one REGISTER:\n{out}")
    out = sg.clean("sg_persist -r", "sg_persist -r after RESERVE").out
    assert _generation(out) == 1 and f"Key=0x{key:x}" in out \
        and "scope: LU_SCOPE,  type: Write Exclusive" in out, (
            f"SPC-4 6.16.3: the reservation of key 0x{key:x}, LU_SCOPE, type 1h "
            f"(RESERVE does not change PRGENERATION):\n{out}")
    out = sg.clean("sg_persist -s", "sg_persist -s after RESERVE").out
    assert _generation(out) == 1 and f"Key=0x{key:x}" in out \
        and "<< Reservation holder >>" in out \
        and "scope: LU_SCOPE,  type: Write Exclusive" in out, (
            f"SPC-4 6.16.5: one descriptor, R_HOLDER=1, LU_SCOPE, type 1h:\n{out}")
    # The initiator's TransportID: iSCSI, FORMAT CODE 01b = name ",i,0x" ISID (7.6.4.6).
    assert re.search(r"iSCSI world wide unique port id: \S+,i,0x[0-9a-f]{12}$", out, re.M), (
        f"SPC-4 7.6.4.6: an iSCSI initiator port TransportID with its ISID:\n{out}")
    # The RELATIVE TARGET PORT IDENTIFIER is the one of VPD page 83h (SPC-4 7.8.6.7).
    port = re.search(r"Relative port address: (0x[0-9a-f]+)", out)
    di = sg.clean("sg_vpd -p di", "sg_vpd -p di").out
    assert port and f"Relative target port: {port.group(1)}" in di, (
        f"SPC-4 6.16.5 / 7.8.6.7: READ FULL STATUS and VPD 83h name the same port:\n"
        f"{out}\n{di}")

    # RELEASE, then unregister (REGISTER with SERVICE ACTION RESERVATION KEY 0).
    sg.clean(f"sg_persist --out --release --param-rk=0x{key:x} --prout-type=1",
             "PR OUT RELEASE", hex_dump=False)
    sg.clean(f"sg_persist --out --register --param-rk=0x{key:x} --param-sark=0",
             "PR OUT REGISTER (unregister)", hex_dump=False)
    out = sg.clean("sg_persist -k", "sg_persist -k after unregister").out
    assert _generation(out) == 2 and "there are NO registered reservation keys" in out, (
        f"SPC-4 6.16.2: no keys, PRGENERATION 2 after two REGISTERs:\n{out}")
    out = sg.clean("sg_persist -r", "sg_persist -r after RELEASE").out
    assert "there is NO reservation held" in out, f"SPC-4 6.16.3: released:\n{out}"


# ---- sg_readcap and sg_modes -------------------------------------------------------------

@dataclass
class ModeData:
    length: int            # what sg_modes prints as "Mode data length" (the whole data)
    medium_type: int
    wp: int
    dpofua: int
    longlba: int
    descriptors: bytes
    pages: dict[int, bytes]
    controls: set[str]


def parse_sg_modes(out: str) -> ModeData:
    head = re.search(r"Mode data length=(\d+), medium type=0x([0-9a-f]+), WP=(\d), "
                     r"DpoFua=(\d), longlba=(\d)", out)
    assert head, f"no mode parameter header in:\n{out}"
    bd_lines: list[str] = []
    pages: dict[int, bytes] = {}
    controls: set[str] = set()
    current: list[str] | None = None
    collected: list[list[str]] = []
    for line in out.splitlines():
        if re.match(r"^> .*block descriptors:$", line):
            current = bd_lines
        elif m := re.match(r"^>> (.+), page_control: (\w+)$", line):
            controls.add(m.group(2))
            current = []
            collected.append(current)
        elif current is not None and re.match(r"^ [0-9a-f]{2,4} {2,}[0-9a-f]{2}", line):
            current.append(line)
    for lines in collected:
        page = _hex_bytes(lines)
        pages[page[0] & 0x3F] = page
    return ModeData(int(head.group(1)), int(head.group(2), 16), int(head.group(3)),
                    int(head.group(4)), int(head.group(5)), _hex_bytes(bd_lines), pages,
                    controls)


def parse_mode_data(data: bytes, ten: bool) -> ModeData:
    """MODE SENSE parameter data as the target returned it (SPC-4 7.5.4 / 7.5.5)."""
    if ten:
        length, medium, specific, longlba, bd_len = struct.unpack_from(">HBBBxH", data)
        length, off = length + 2, 8
    else:
        length, medium, specific, bd_len = data[0] + 1, data[1], data[2], data[3]
        longlba, off = 0, 4
    descriptors = data[off:off + bd_len]
    off += bd_len
    pages = {}
    while off + 2 <= length:
        spf = data[off] & 0x40
        size = 4 + struct.unpack_from(">H", data, off + 2)[0] if spf else 2 + data[off + 1]
        pages[data[off] & 0x3F] = data[off:off + size]
        off += size
    return ModeData(length, medium, specific >> 7, specific >> 4 & 1, longlba & 1,
                    descriptors, pages, set())


def _mode_sense(ten: bool, pc: int, llbaa: bool = False) -> tuple[bytes, int]:
    if ten:
        return bytes([0x5A, 0x10 if llbaa else 0, pc << 6 | 0x3F, 0, 0, 0, 0, 0x10, 0, 0]), 4096
    return bytes([0x1A, 0, pc << 6 | 0x3F, 0, 0xFF, 0]), 255


@pytest.mark.parametrize("block_size,options", [(512, None), (4096, None), (512, THIN)],
                         ids=["512", "4096", "512-thin"])
def test_sg_readcap_and_sg_modes(scsi_target, guest, block_size, options):
    """SBC-4 5.20: sg_readcap -l shows the LU's block count and length and the READ
    CAPACITY(16) fields the target returns; SPC-4 7.5: sg_modes -a decodes MODE SENSE
    (10) and (6) for the current, changeable and default values, with the LU's mode pages
    byte for byte and the block descriptor (SBC-4 6.5.2) of its capacity; saved values,
    which the LU does not keep, are refused as SAVING PARAMETERS NOT SUPPORTED."""
    lun = Lun(size=32 << 20, block_size=block_size, vendor="STSG3", product="SG-MODES",
              options=options)
    blocks = lun.size // block_size
    target = scsi_target(lun, kind="ours")
    codes = host_lu(lun).mode.page_codes()
    cdb16 = bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    raw = host_read(target, {
        "rc16": (cdb16, 32),
        "ms10-0": _mode_sense(True, 0), "ms10-1": _mode_sense(True, 1),
        "ms10-2": _mode_sense(True, 2), "ms6-0": _mode_sense(False, 0),
        "ms10-0-llbaa": _mode_sense(True, 0, llbaa=True)})
    sg = Sg(guest(target, hba="virtio-scsi-pci", mode="scsi-block"))

    # READ CAPACITY(16) (SBC-4 5.20.2).
    out = sg.clean("sg_readcap -l", "sg_readcap -l (READ CAPACITY(16))").out
    rc = raw["rc16"]
    last, length = struct.unpack_from(">QI", rc)
    assert (last + 1, length) == (blocks, block_size)
    want = {"Last LBA": last, "Number of logical blocks": blocks,
            "Logical block length": block_size, "prot_en": rc[12] & 1,
            "p_type": rc[12] >> 1 & 7, "p_i_exponent": rc[13] >> 4,
            "lbpme": rc[14] >> 7, "lbprz": rc[14] >> 6 & 1,
            "Logical blocks per physical block exponent": rc[13] & 0xF,
            "Lowest aligned LBA": struct.unpack_from(">H", rc, 14)[0] & 0x3FFF}
    got = {k: _number(out, k) for k in want}
    assert got == want, (f"SBC-4 5.20.2 READ CAPACITY(16) parameter data (sg_readcap -l, "
                         f"bytes {rc.hex(' ')})")
    assert f"Device size: {lun.size} bytes" in out, f"SBC-4 5.20.2: {lun.size} bytes:\n{out}"
    # READ CAPACITY(10) (SBC-4 5.19) agrees.
    out = sg.clean("sg_readcap", "sg_readcap (READ CAPACITY(10))").out
    got = {k: _number(out, k)
           for k in ("Last LBA", "Number of logical blocks", "Logical block length")}
    assert got == {"Last LBA": blocks - 1, "Number of logical blocks": blocks,
                   "Logical block length": block_size}, f"SBC-4 5.19 READ CAPACITY(10):\n{out}"

    # MODE SENSE: every mode page of the LU, each as the target returns it.
    for args, name, ten, control in (("sg_modes -a", "ms10-0", True, "current"),
                                     ("sg_modes -a -c 1", "ms10-1", True, "changeable"),
                                     ("sg_modes -a -c 2", "ms10-2", True, "default"),
                                     ("sg_modes -a -6", "ms6-0", False, "current"),
                                     ("sg_modes -a -L", "ms10-0-llbaa", True, "current"),
                                     ("sg_modes -aa", "ms10-0", True, "current")):
        out = sg.clean(args, f"{args} (MODE SENSE)").out
        seen, said = parse_sg_modes(out), parse_mode_data(raw[name], ten)
        where = f"{args}, the target's bytes {raw[name].hex(' ')}"
        assert sorted(seen.pages) == codes, (
            f"SPC-4 7.5.7: page 3Fh returns every mode page of the LU {codes}; "
            f"{args} decoded {sorted(seen.pages)}\n{out}")
        assert seen.controls == {control}, f"SPC-4 6.11.1 page control {control}: {where}"
        assert seen.pages == said.pages, f"SPC-4 7.5.7 mode pages byte for byte: {where}"
        assert seen.length == said.length == len(raw[name]), (
            f"SPC-4 7.5.4/7.5.5: MODE DATA LENGTH counts the data after itself: {where}")
        assert (seen.medium_type, seen.wp, seen.dpofua) == (0, 0, 1), (
            f"SPC-4 7.5.5 / SBC-4 6.5.1: medium type 00h, WP=0, DPOFUA=1: {where}")
        assert seen.descriptors == said.descriptors, f"SBC-4 6.5.2 block descriptor: {where}"
        d = seen.descriptors
        if "-L" in args:
            assert seen.longlba == 1 and len(d) == 16, f"SBC-4 6.5.2.3 long LBA: {where}"
            count, size = struct.unpack_from(">Q", d)[0], struct.unpack_from(">I", d, 12)[0]
        else:
            assert seen.longlba == 0 and len(d) == 8, f"SBC-4 6.5.2.2 short: {where}"
            count, size = struct.unpack_from(">I", d)[0], int.from_bytes(d[5:8], "big")
        if control != "changeable":  # a changeable descriptor is a mask, not a capacity
            assert (count, size) == (blocks, block_size), (
                f"SBC-4 6.5.2: NUMBER OF LOGICAL BLOCKS {blocks} and LOGICAL BLOCK LENGTH "
                f"{block_size} in the block descriptor: {where}")

    # Saved values (PC 11b) are not kept: ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED
    # (39h/00h, SPC-4 6.11.1), which sg_modes reports with exit status 5.
    r = sg.run("sg_modes -a -c 3 -v")
    assert r.status == SG_ILLEGAL_REQUEST and "Saving parameters not supported" in r.err, (
        f"SPC-4 6.11.1: PC 11b without saved values -> SAVING PARAMETERS NOT SUPPORTED:\n"
        f"{r.text()}")


# ---- provisioning: the opcode table against the provisioning pages -----------------------

@pytest.mark.parametrize("options", [None, THIN], ids=["full", "thin"])
def test_rsoc_unmap_agrees_with_the_provisioning_pages(scsi_target, guest, options):
    """SPC-4 6.35.3 / SBC-4 6.6.4, 6.6.6: on a fully provisioned LU and on a thin one, what
    sg_opcodes says of UNMAP (42h) agrees with the Block Limits and LBP VPD pages sg_vpd
    decodes (not supported / supported everywhere)."""
    lun = Lun(size=32 << 20, vendor="STSG3", product="SG-UNMAP", options=options)
    _, sg = start(scsi_target, guest, lun)
    r = sg.run("sg_opcodes -o 0x42")  # "NOT supported" is the answer here, not a complaint
    assert r.status == 0 and not r.err.strip(), r.text()
    rsoc = r.out
    supported = "Command is supported" in rsoc
    max_unmap = _number(sg.clean("sg_vpd -p bl", "sg_vpd -p bl").out, "Maximum unmap LBA count")
    lbpu = _number(sg.clean("sg_vpd -p lbpv", "sg_vpd -p lbpv").out,
                   "Unmap command supported (LBPU)")
    assert supported == bool(lbpu) == bool(max_unmap) == bool(options), (
        f"RSOC says UNMAP {'supported' if supported else 'not supported'}, LBPU={lbpu}, "
        f"MAXIMUM UNMAP LBA COUNT={max_unmap}:\n{rsoc}")

