"""The CDBs of SPC-4, SPC-2 and SBC-4 as construct definitions: an oracle for RSOC's usage data.

Each definition below is written from the standard's CDB table for the command (byte by
byte, bit 7 first), not from target.scsi's tables, so that the CDB USAGE DATA that REPORT
SUPPORTED OPERATION CODES returns (SPC-4 6.35.3) can be judged against it
(tests/unit/test_cdb_usage.py). Sources, per command, in each definition's `clause`:
- SPC-4 (T10/BSR INCITS 513, revision 37): clause numbers as given by the project for
  6.15, 6.16, 6.33, 6.35, 6.39; the rest are named by their clause title.
- SPC-2 (revision 20) for RESERVE/RELEASE(6)/(10), which SPC-4 no longer has.
- SBC-4 (T10/BSR INCITS 506): clause titles; field widths as in the later revisions, where
  GROUP NUMBER is 6 bits (5-0) and READ(16)/WRITE(16) carry the command duration limit
  bits DLD2 (byte 1 bit 0) and DLD1/DLD0 (byte 14 bits 7-6). Linux sd.c
  (sd_setup_rw16_cmnd, sd_group_number) builds them so, and scsi_debug's opcode_info_arr
  (drivers/scsi/scsi_debug.c) checks GROUP NUMBER as 6 bits (byte 6 mask 3Fh in READ(10)).
- Checked against a transcription of the SPC-5/SBC-4 tables: Seagate's "SCSI Commands
  Reference Manual", Rev. J (READ (10) table 97: byte 1 RDPROTECT DPO FUA RARC Obsolete
  Obsolete; READ (12) table 99: byte 10 RESTRICTED FOR MMC-6; READ CAPACITY (16) table
  121: LOGICAL BLOCK ADDRESS and PMI obsolete; WRITE SAME (10) table 236: byte 1 WRPROTECT
  ANCHOR UNMAP Obsolete Obsolete Obsolete).
- SAM-5 5.2 for the CONTROL byte: VENDOR SPECIFIC (7-6), reserved (5-3), NACA (2),
  obsolete (1: FLAG), obsolete (0: LINK).

Rules of this module:
- One `Cdb` per command (and service action); `layout` is a construct BitStruct whose
  fields are named after the standard's field names in snake case. Bits the standard does
  not define for this device type are named by their keyword: `reserved` (a Const 0: a CDB
  with a reserved bit set does not parse), `obsolete`, `vendor_specific`, `restricted`
  (set aside for another standard, e.g. "Restricted for MMC-6").
- `operation_code` is a Const of the opcode; `service_action` a Const of the action.
- fields() gives each field with its first bit (byte, bit) and width, in CDB order;
  usage_bits() the bits the usage map may mark (defined fields, SPC-4 6.35.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import BitsInteger, BitStruct, Const, Construct, Default, Flag

# Keywords that name bits which are not a field of the command (the keywords of SPC-4 clause 3).
NOT_FIELDS = ("reserved", "obsolete", "vendor_specific", "restricted")


def op(code: int) -> Construct:
    return "operation_code" / Const(code, BitsInteger(8))


def sa(action: int, reserved_above: int = 3) -> list[Construct]:
    """Byte 1 of a service action CDB: reserved (7-5) and SERVICE ACTION (4-0)."""
    return [res(reserved_above), "service_action" / Const(action, BitsInteger(5))]


def res(bits: int) -> Construct:
    return "reserved" / Const(0, BitsInteger(bits))


def obs(bits: int = 1) -> Construct:
    return "obsolete" / Default(BitsInteger(bits), 0)


def restricted(bits: int = 1) -> Construct:
    return "restricted" / Default(BitsInteger(bits), 0)


def u(name: str, bits: int) -> Construct:
    return name / Default(BitsInteger(bits), 0)


def bit(name: str) -> Construct:
    return name / Default(Flag, False)


# SAM-5 5.2, the CONTROL byte.
CONTROL = ["vendor_specific" / Default(BitsInteger(2), 0), res(3), bit("naca"), obs(), obs()]


@dataclass(frozen=True)
class Field:
    name: str
    byte: int   # CDB byte of the field's most significant bit
    bit: int    # its bit in that byte (7 = MSB)
    width: int  # bits

    @property
    def kind(self) -> str:
        for word in NOT_FIELDS:
            if self.name.startswith(word):
                return word
        return "field"

    def positions(self) -> list[tuple[int, int]]:
        """(byte, bit) of every bit of the field."""
        start = self.byte * 8 + (7 - self.bit)
        return [(i // 8, 7 - i % 8) for i in range(start, start + self.width)]


@dataclass(frozen=True)
class Cdb:
    name: str
    clause: str
    layout: Construct
    # (field, why) that this device server ignores or treats as reserved: usage 0 there
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def length(self) -> int:
        return self.layout.sizeof()

    def fields(self) -> list[Field]:
        out = []
        pos = 0
        for sc in self.layout.subcon.subcons:  # BitStruct = Bitwise(Struct(...))
            width = sc.sizeof()
            out.append(Field(sc.name, pos // 8, 7 - pos % 8, width))
            pos += width
        assert pos == 8 * self.length
        return out

    def opcode(self) -> int:
        return self.build()[0]

    def service_action(self) -> int | None:
        for f in self.fields():
            if f.name == "service_action":
                return self.layout.parse(self.build())["service_action"]
        return None

    def build(self, **values: int) -> bytes:
        return self.layout.build(values)

    def usage_bits(self) -> set[tuple[int, int]]:
        """The (byte, bit)s that belong to a field the standard defines, other than the
        OPERATION CODE and SERVICE ACTION (which the usage data holds as values)."""
        out: set[tuple[int, int]] = set()
        for f in self.fields():
            if f.kind == "field" and f.name not in ("operation_code", "service_action"):
                out.update(f.positions())
        return out


def expected_usage(spec: Cdb) -> bytes:
    """The CDB USAGE DATA SPC-4 6.35.3 asks for: the OPERATION CODE, the SERVICE ACTION in
    its field, 1s on every bit of the defined fields less `ignored`, 0s elsewhere."""
    out = bytearray(spec.build())  # operation code and service action values, 0s elsewhere
    ignored = {name for name, _ in spec.ignored}
    for f in spec.fields():
        if f.kind == "field" and f.name not in ("operation_code", "service_action") \
                and f.name not in ignored:
            for byte, b in f.positions():
                out[byte] |= 1 << b
    return bytes(out)


SPECS: list[Cdb] = []


def cdb(name: str, clause: str, *subcons: Construct,
        ignored: tuple[tuple[str, str], ...] = ()) -> Cdb:
    spec = Cdb(name, clause, BitStruct(*subcons), ignored)
    SPECS.append(spec)
    return spec


def lookup(opcode: int, service_action: int | None) -> Cdb | None:
    for spec in SPECS:
        if spec.opcode() == opcode and spec.service_action() == service_action:
            return spec
    return None


RARC = ("rarc", "the rebuild assist mode is not supported: RARC is not evaluated")
DLD = tuple((f"dld{i}", "no command duration limits: the DLD bits are not evaluated")
            for i in (2, 1, 0))

# --- SPC-4 ------------------------------------------------------------------------------

cdb("TEST UNIT READY", "SPC-4 TEST UNIT READY command", op(0x00), res(32), *CONTROL)
cdb("REQUEST SENSE", "SPC-4 6.39 REQUEST SENSE command",
    op(0x03), res(7), bit("desc"), res(16), u("allocation_length", 8), *CONTROL)
cdb("INQUIRY", "SPC-4 INQUIRY command",
    op(0x12), res(6), obs(), bit("evpd"), u("page_code", 8), u("allocation_length", 16),
    *CONTROL)
cdb("MODE SELECT(6)", "SPC-4 MODE SELECT(6) command",
    op(0x15), res(3), bit("pf"), res(3), bit("sp"), res(16),
    u("parameter_list_length", 8), *CONTROL)
cdb("MODE SELECT(10)", "SPC-4 MODE SELECT(10) command",
    op(0x55), res(3), bit("pf"), res(3), bit("sp"), res(40),
    u("parameter_list_length", 16), *CONTROL)
cdb("MODE SENSE(6)", "SPC-4 MODE SENSE(6) command",
    op(0x1A), res(4), bit("dbd"), res(3), u("pc", 2), u("page_code", 6),
    u("subpage_code", 8), u("allocation_length", 8), *CONTROL)
cdb("MODE SENSE(10)", "SPC-4 MODE SENSE(10) command",
    op(0x5A), res(3), bit("llbaa"), bit("dbd"), res(3), u("pc", 2), u("page_code", 6),
    u("subpage_code", 8), res(24), u("allocation_length", 16), *CONTROL)
cdb("LOG SENSE", "SPC-4 LOG SENSE command (PPC, byte 1 bit 1, is obsolete)",
    op(0x4D), res(6), obs(), bit("sp"), u("pc", 2), u("page_code", 6),
    u("subpage_code", 8), res(8), u("parameter_pointer", 16),
    u("allocation_length", 16), *CONTROL)
cdb("REPORT LUNS", "SPC-4 6.33 REPORT LUNS command",
    op(0xA0), res(8), u("select_report", 8), res(24), u("allocation_length", 32), res(8),
    *CONTROL)
cdb("REPORT SUPPORTED OPERATION CODES", "SPC-4 6.35 REPORT SUPPORTED OPERATION CODES command",
    op(0xA3), *sa(0x0C), bit("rctd"), res(4), u("reporting_options", 3),
    u("requested_operation_code", 8), u("requested_service_action", 16),
    u("allocation_length", 32), res(8), *CONTROL)

for _sa, _name in enumerate(("READ KEYS", "READ RESERVATION", "REPORT CAPABILITIES",
                             "READ FULL STATUS")):
    cdb(f"PERSISTENT RESERVE IN/{_name}", "SPC-4 6.15 PERSISTENT RESERVE IN command",
        op(0x5E), *sa(_sa), res(40), u("allocation_length", 16), *CONTROL)

for _sa, _name in enumerate(("REGISTER", "RESERVE", "RELEASE", "CLEAR", "PREEMPT",
                             "PREEMPT AND ABORT", "REGISTER AND IGNORE EXISTING KEY",
                             "REGISTER AND MOVE")):
    cdb(f"PERSISTENT RESERVE OUT/{_name}", "SPC-4 6.16 PERSISTENT RESERVE OUT command",
        op(0x5F), *sa(_sa), u("scope", 4), u("type", 4), res(16),
        u("parameter_list_length", 32), *CONTROL)

cdb("EXTENDED COPY(LID1)", "SPC-4 EXTENDED COPY(LID1) command",
    op(0x83), *sa(0x00), res(64), u("parameter_list_length", 32), res(8), *CONTROL)
for _sa, _name, _list_id in ((0x00, "COPY STATUS", True), (0x01, "RECEIVE DATA", True),
                             (0x03, "OPERATING PARAMETERS", False),
                             (0x04, "FAILED SEGMENT DETAILS", True)):
    cdb(f"RECEIVE COPY RESULTS/{_name}",
        "SPC-4 RECEIVE COPY STATUS(LID1) / RECEIVE COPY DATA(LID1) / RECEIVE COPY OPERATING "
        "PARAMETERS / RECEIVE COPY FAILURE DETAILS(LID1) commands (SPC-3 RECEIVE COPY RESULTS)",
        op(0x84), *sa(_sa), u("list_identifier", 8) if _list_id else res(8), res(56),
        u("allocation_length", 32), res(8), *CONTROL)

# --- SPC-2 (reservations SPC-4 dropped) -----------------------------------------------

for _code, _name in ((0x16, "RESERVE(6)"), (0x17, "RELEASE(6)")):
    cdb(_name, f"SPC-2 {'7.21' if _code == 0x16 else '7.16'} {_name} command",
        op(_code), res(3), obs(5), obs(24), *CONTROL)
_THIRD_PARTY = (("third_party_device_id", "3RDPTY=1 is refused, so there is no device ID"),
                ("parameter_list_length", "LONGID=1 is refused, so there is no list"))
for _code, _name in ((0x56, "RESERVE(10)"), (0x57, "RELEASE(10)")):
    cdb(_name, f"SPC-2 {'7.22' if _code == 0x56 else '7.17'} {_name} command",
        op(_code), res(3), bit("3rdpty"), res(2), bit("longid"), obs(), obs(8),
        u("third_party_device_id", 8), res(24), u("parameter_list_length", 16), *CONTROL,
        ignored=_THIRD_PARTY)

# --- SBC-4 ------------------------------------------------------------------------------

GROUP = [res(2), u("group_number", 6)]

for _code, _name, _prot in ((0x08, "READ(6)", None), (0x0A, "WRITE(6)", None)):
    cdb(_name, f"SBC-4 {_name} command",
        op(_code), res(3), u("logical_block_address", 21), u("transfer_length", 8), *CONTROL)

cdb("READ(10)", "SBC-4 READ (10) command",
    op(0x28), u("rdprotect", 3), bit("dpo"), bit("fua"), bit("rarc"), obs(), obs(),
    u("logical_block_address", 32), *GROUP, u("transfer_length", 16), *CONTROL,
    ignored=(RARC,))
cdb("READ(12)", "SBC-4 READ (12) command",
    op(0xA8), u("rdprotect", 3), bit("dpo"), bit("fua"), bit("rarc"), obs(), obs(),
    u("logical_block_address", 32), u("transfer_length", 32), restricted(), res(1),
    u("group_number", 6), *CONTROL, ignored=(RARC,))
cdb("READ(16)", "SBC-4 READ (16) command",
    op(0x88), u("rdprotect", 3), bit("dpo"), bit("fua"), bit("rarc"), obs(), bit("dld2"),
    u("logical_block_address", 64), u("transfer_length", 32), bit("dld1"), bit("dld0"),
    u("group_number", 6), *CONTROL, ignored=(RARC, *DLD))
cdb("WRITE(10)", "SBC-4 WRITE (10) command",
    op(0x2A), u("wrprotect", 3), bit("dpo"), bit("fua"), res(1), obs(), obs(),
    u("logical_block_address", 32), *GROUP, u("transfer_length", 16), *CONTROL)
cdb("WRITE(12)", "SBC-4 WRITE (12) command",
    op(0xAA), u("wrprotect", 3), bit("dpo"), bit("fua"), res(1), obs(), obs(),
    u("logical_block_address", 32), u("transfer_length", 32), restricted(), res(1),
    u("group_number", 6), *CONTROL)
cdb("WRITE(16)", "SBC-4 WRITE (16) command",
    op(0x8A), u("wrprotect", 3), bit("dpo"), bit("fua"), res(1), obs(), bit("dld2"),
    u("logical_block_address", 64), u("transfer_length", 32), bit("dld1"), bit("dld0"),
    u("group_number", 6), *CONTROL, ignored=DLD)
cdb("WRITE ATOMIC(16)", "SBC-4 WRITE ATOMIC (16) command",
    op(0x9C), u("wrprotect", 3), bit("dpo"), bit("fua"), res(3),
    u("logical_block_address", 64), u("atomic_boundary", 16), u("transfer_length", 16),
    *GROUP, *CONTROL)

for _code, _name, _lba, _len in ((0x2F, "VERIFY(10)", 32, 16), (0xAF, "VERIFY(12)", 32, 32),
                                 (0x8F, "VERIFY(16)", 64, 32)):
    cdb(_name, f"SBC-4 {_name[:-4]} ({_name[-3:-1]}) command",
        op(_code), u("vrprotect", 3), bit("dpo"), res(1), u("bytchk", 2),
        obs() if _lba == 32 else res(1), u("logical_block_address", _lba),
        *([restricted(), res(1), u("group_number", 6), u("verification_length", 16)]
          if _len == 16 else [u("verification_length", 32), restricted(), res(1),
                              u("group_number", 6)]),
        *CONTROL)
for _code, _name, _lba, _len in ((0x2E, "WRITE AND VERIFY(10)", 32, 16),
                                 (0xAE, "WRITE AND VERIFY(12)", 32, 32),
                                 (0x8E, "WRITE AND VERIFY(16)", 64, 32)):
    cdb(_name, f"SBC-4 {_name[:-4]} ({_name[-3:-1]}) command",
        op(_code), u("wrprotect", 3), bit("dpo"), res(1), u("bytchk", 2),
        obs() if _lba == 32 else res(1), u("logical_block_address", _lba),
        *([restricted(), res(1), u("group_number", 6), u("transfer_length", 16)]
          if _len == 16 else [u("transfer_length", 32), restricted(), res(1),
                              u("group_number", 6)]),
        *CONTROL)

cdb("ORWRITE(16)", "SBC-4 ORWRITE (16) command",
    op(0x8B), u("orprotect", 3), bit("dpo"), bit("fua"), res(1), obs(), res(1),
    u("logical_block_address", 64), u("transfer_length", 32), *GROUP, *CONTROL)
cdb("COMPARE AND WRITE", "SBC-4 COMPARE AND WRITE command",
    op(0x89), u("wrprotect", 3), bit("dpo"), bit("fua"), res(1), obs(), res(1),
    u("logical_block_address", 64), res(24), u("number_of_logical_blocks", 8), *GROUP,
    *CONTROL)

cdb("SYNCHRONIZE CACHE(10)", "SBC-4 SYNCHRONIZE CACHE (10) command (SYNC_NV obsolete)",
    op(0x35), res(5), obs(), bit("immed"), obs(), u("logical_block_address", 32), *GROUP,
    u("number_of_logical_blocks", 16), *CONTROL)
cdb("SYNCHRONIZE CACHE(16)", "SBC-4 SYNCHRONIZE CACHE (16) command (SYNC_NV obsolete)",
    op(0x91), res(5), obs(), bit("immed"), res(1), u("logical_block_address", 64),
    u("number_of_logical_blocks", 32), *GROUP, *CONTROL)
cdb("PRE-FETCH(10)", "SBC-4 PRE-FETCH (10) command",
    op(0x34), res(6), bit("immed"), obs(), u("logical_block_address", 32), *GROUP,
    u("prefetch_length", 16), *CONTROL)
cdb("PRE-FETCH(16)", "SBC-4 PRE-FETCH (16) command",
    op(0x90), res(6), bit("immed"), res(1), u("logical_block_address", 64),
    u("prefetch_length", 32), *GROUP, *CONTROL)

cdb("WRITE SAME(10)", "SBC-4 WRITE SAME (10) command (PBDATA, LBDATA obsolete)",
    op(0x41), u("wrprotect", 3), bit("anchor"), bit("unmap"), obs(), obs(), obs(),
    u("logical_block_address", 32), *GROUP, u("number_of_logical_blocks", 16), *CONTROL)
cdb("WRITE SAME(16)", "SBC-4 WRITE SAME (16) command (PBDATA, LBDATA obsolete)",
    op(0x93), u("wrprotect", 3), bit("anchor"), bit("unmap"), obs(), obs(), bit("ndob"),
    u("logical_block_address", 64), u("number_of_logical_blocks", 32), *GROUP, *CONTROL)
cdb("UNMAP", "SBC-4 UNMAP command",
    op(0x42), res(7), bit("anchor"), res(32), *GROUP, u("parameter_list_length", 16),
    *CONTROL)

cdb("READ CAPACITY(10)", "SBC-4 READ CAPACITY (10) command (LBA and PMI obsolete)",
    op(0x25), res(7), obs(), "obsolete_logical_block_address" / Default(BitsInteger(32), 0),
    res(16), res(7), "obsolete_pmi" / Default(Flag, False), *CONTROL)
cdb("READ CAPACITY(16)", "SBC-4 READ CAPACITY (16) command (LBA and PMI obsolete)",
    op(0x9E), *sa(0x10), "obsolete_logical_block_address" / Default(BitsInteger(64), 0),
    u("allocation_length", 32), res(7), "obsolete_pmi" / Default(Flag, False), *CONTROL)
cdb("GET LBA STATUS", "SBC-4 GET LBA STATUS command (SERVICE ACTION IN(16))",
    op(0x9E), *sa(0x12), u("starting_logical_block_address", 64),
    u("allocation_length", 32), res(8), *CONTROL)

cdb("START STOP UNIT", "SBC-4 START STOP UNIT command",
    op(0x1B), res(7), bit("immed"), res(8), res(4), u("power_condition_modifier", 4),
    u("power_condition", 4), res(1), bit("no_flush"), bit("loej"), bit("start"), *CONTROL)
cdb("PREVENT ALLOW MEDIUM REMOVAL", "SBC-4 PREVENT ALLOW MEDIUM REMOVAL command",
    op(0x1E), res(24), res(6), u("prevent", 2), *CONTROL)
cdb("READ DEFECT DATA(10)", "SBC-4 READ DEFECT DATA (10) command",
    op(0x37), res(8), res(3), bit("req_plist"), bit("req_glist"),
    u("defect_list_format", 3), res(32), u("allocation_length", 16), *CONTROL)
cdb("READ DEFECT DATA(12)", "SBC-4 READ DEFECT DATA (12) command",
    op(0xB7), res(3), bit("req_plist"), bit("req_glist"), u("defect_list_format", 3),
    u("address_descriptor_index", 32), u("allocation_length", 32), res(8), *CONTROL)

for _sa, _name in ((0x01, "OVERWRITE"), (0x02, "BLOCK ERASE"), (0x03, "CRYPTOGRAPHIC ERASE"),
                   (0x1F, "EXIT FAILURE MODE")):
    cdb(f"SANITIZE/{_name}", "SBC-4 SANITIZE command",
        op(0x48), bit("immed"), bit("znr"), bit("ause"),
        "service_action" / Const(_sa, BitsInteger(5)), res(40),
        u("parameter_list_length", 16), *CONTROL,
        ignored=(("znr", "zoned block devices only: refused as if reserved"),))
