"""Fault injection: rules that make chosen commands fail the way a sick disk or link would.

Rules:
- Sans-IO: Faults.match(task, target) -> the Fault to apply, or None; the shell
  (target.shell.dispatch) applies it. With no rules, match() is not called at all.
- A rule matches a command by target IQN, LUN, operation (names from the opcode table
  such as "WRITE(10)", or a hex opcode "0x2a"), LBA range (the command's block range
  overlaps [lba_from, lba_to)), initiator name (exact) - each optional - and then by
  count among the commands it matched: `every` N-th (N, 2N, ...), the `first` N, or
  `once` (the first 1). A rule that has run out of counts stays listed with its hits.
- Actions:
  - "check-condition": CHECK CONDITION with the rule's sense (key/ASC/ASCQ; default
    MEDIUM ERROR, 11h/00h UNRECOVERED READ ERROR for reads and 0Ch/00h WRITE ERROR for
    writes); the command is not executed (a failed write changes nothing). The Fault
    carries the CheckCondition; the LU turns it into sense in its format (LogicalUnit.fail).
  - "busy": BUSY status; "task-set-full": TASK SET FULL status (SAM-5 5.3); not executed.
  - "delay": executed in its turn (the task set's ordering rules hold), its status held
    for delay_ms.
  - "medium-delay": executed, its medium access (the store's reads, writes, flushes)
    taking delay_ms longer, as on a slow disk: the time is spent on a worker thread, so
    the event loop, the other LUs and the other sessions go on (commands without medium
    access are not slowed).
  - "drop": the connection is closed without a response (the initiator sees the link go).
  - "tmf-reject": a task management function request (not a command) is answered
    "Function rejected" (255, RFC 7143 11.6.1) and not performed. It matches by target,
    LUN, initiator, count and `tmf` (function names of RFC 7143 11.5.1 such as
    "TARGET_WARM_RESET", or numbers; all functions when not given), never by op or LBA;
    Faults.match_tmf() applies it (the connection's TMF handler calls it), and match()
    never returns it for a command.
- The first matching rule in rule order wins; its `hits` counts what it did.
- The LBA range and the read/write default sense use the block range decoded when the
  task's CDB was looked up (ScsiTask.lba, ScsiTask.blocks).
- Rules come from the config's [[fault]] tables and from the control socket at run time
  (`scsi-target fault add|list|clear`); parse_rule() validates both the same way and
  names the bad field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from target.scsi import extent
from target.scsi.sense import Asc, CheckCondition, SenseKey
from target.scsi.task import ScsiTask, Status

ACTIONS = ("check-condition", "busy", "task-set-full", "delay", "medium-delay", "drop",
           "tmf-reject")
TMF_REJECTED = 255  # RFC 7143 11.6.1 Function rejected


class FaultError(ValueError):
    """A fault rule that cannot be used, naming the field."""


@dataclass
class FaultRule:
    action: str
    target: str | None = None
    lun: int | None = None
    ops: list[str] = field(default_factory=list)
    lba_from: int | None = None
    lba_to: int | None = None          # exclusive
    initiator: str | None = None
    every: int | None = None
    first: int | None = None
    sense: str | None = None           # "KEY/ASC/ASCQ" in hex, e.g. "03/0C/00"
    delay_ms: float = 0.0
    tmf: list[int] = field(default_factory=list)   # TMF function codes (tmf-reject)
    id: int = 0
    matched: int = 0                   # commands the filters matched
    hits: int = 0                      # commands the action was applied to
    _opcodes: frozenset = field(default=frozenset(), repr=False)

    def describe(self) -> dict[str, Any]:
        """The rule as a dict: id and action first, then the fields set, then the counts."""
        d: dict[str, Any] = {"id": self.id, "action": self.action}
        for k, v in asdict(self).items():
            if k not in ("id", "action", "matched", "hits") and not k.startswith("_") \
                    and v not in (None, [], 0.0):
                d[k] = v
        d["matched"], d["hits"] = self.matched, self.hits
        return d


@dataclass(frozen=True)
class Fault:
    rule: FaultRule
    status: int | None = None          # complete with this status, not executed
    check: CheckCondition | None = None  # or end in CHECK CONDITION with this sense
    delay: float = 0.0                 # seconds to hold the completion
    medium_delay: float = 0.0          # seconds its medium access takes longer
    drop: bool = False


def _hex(text: str, what: str, bits: int) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise FaultError(f"{what}: {text!r} is not hexadecimal") from None
    if not 0 <= value < 1 << bits:
        raise FaultError(f"{what}: {text!r} is out of range")
    return value


def parse_sense(text: str) -> tuple[int, int, int]:
    parts = text.replace(":", "/").split("/")
    if len(parts) != 3:
        raise FaultError(f"sense: expected KEY/ASC/ASCQ in hex (e.g. 03/0C/00), not {text!r}")
    return (_hex(parts[0], "sense key", 4), _hex(parts[1], "sense ASC", 8),
            _hex(parts[2], "sense ASCQ", 8))


def _opcodes(ops: list[str]) -> frozenset:
    from target.scsi.disk import DISK_COMMANDS

    by_name = {c.name.upper(): c.opcode for c in DISK_COMMANDS}
    codes = set()
    for op in ops:
        key = op.strip().upper()
        if key.startswith("0X"):
            codes.add(_hex(key[2:], f"op {op!r}", 8))
        elif key in by_name:
            codes.add(by_name[key])
        else:
            raise FaultError(f"op: unknown command {op!r} (a name such as WRITE(10) or a hex "
                             "opcode such as 0x2a)")
    return frozenset(codes)


def _name(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise FaultError(f"{key}: expected a name, not {value!r}")
    return value


def _count(data: dict, key: str, minimum: int) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < minimum):
        raise FaultError(f"{key}: expected a non-negative integer"
                         f"{' of at least 1' if minimum else ''}, not {value!r}")
    return value


def _names(data: dict, key: str) -> list:
    """A name or a list of names (op, ops); FaultError for any other type."""
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise FaultError(f"{key}: expected a name or a list of names, not {value!r}")
    return list(value)


def parse_rule(data: dict[str, Any]) -> FaultRule:
    """A rule from a config table or a control request; FaultError names what is wrong."""
    known = {f for f in FaultRule.__dataclass_fields__ if not f.startswith("_")} - {
        "id", "matched", "hits"}
    known |= {"op", "lba", "once"}
    unknown = set(data) - known
    if unknown:
        raise FaultError(f"unknown field(s): {', '.join(sorted(unknown))}")
    action = data.get("action")
    if action not in ACTIONS:
        raise FaultError(f"action: expected one of {', '.join(ACTIONS)}, not {action!r}")
    ops = _names(data, "op") if "op" in data else _names(data, "ops")
    rule = FaultRule(action=action, ops=[str(o) for o in ops])
    rule._opcodes = _opcodes(rule.ops)
    rule.target = _name(data, "target")
    rule.initiator = _name(data, "initiator")
    rule.lun = _count(data, "lun", 0)
    rule.every = _count(data, "every", 1)
    rule.first = _count(data, "first", 1)
    rule.lba_from = _count(data, "lba_from", 0)
    rule.lba_to = _count(data, "lba_to", 0)
    if "lba" in data:  # "FROM-TO" (TO exclusive) or a single LBA
        text = str(data["lba"])
        lo, _, hi = text.partition("-")
        try:
            rule.lba_from = int(lo, 0)
            rule.lba_to = int(hi, 0) if hi else rule.lba_from + 1
        except ValueError:
            raise FaultError(f"lba: expected FROM-TO, not {text!r}") from None
    if rule.lba_from is not None and rule.lba_to is not None and rule.lba_to <= rule.lba_from:
        raise FaultError(f"lba: empty range {rule.lba_from}-{rule.lba_to}")
    if data.get("once"):
        if rule.every or rule.first:
            raise FaultError("once: give one of every, first, once")
        rule.first = 1
    if rule.every and rule.first:
        raise FaultError("every and first: give one of them")
    sense = data.get("sense")
    if sense is not None:
        if action != "check-condition":
            raise FaultError("sense: only for action check-condition")
        parse_sense(str(sense))
        rule.sense = str(sense)
    delay = data.get("delay_ms", 0.0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise FaultError(f"delay_ms: expected milliseconds >= 0, not {delay!r}")
    if action in ("delay", "medium-delay") and not delay:
        raise FaultError(f"delay_ms: action {action} needs delay_ms > 0")
    rule.delay_ms = float(delay)
    if "tmf" in data:
        if action != "tmf-reject":
            raise FaultError("tmf: only for action tmf-reject")
        rule.tmf = _tmf_functions(data["tmf"])
    if action == "tmf-reject" and (rule.ops or rule.lba_from is not None):
        raise FaultError("op/lba: a tmf-reject rule matches task management, not commands")
    return rule


def _tmf_functions(value: Any) -> list[int]:
    from target.iscsi.pdu import TmfFunction

    if not isinstance(value, str | int | list | tuple):
        raise FaultError(f"tmf: expected a function or a list of them, not {value!r}")
    items = [value] if isinstance(value, str | int) else list(value)
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item in \
                TmfFunction._value2member_map_:
            out.append(item)
        elif isinstance(item, str) and item.strip().upper() in TmfFunction.__members__:
            out.append(int(TmfFunction[item.strip().upper()]))
        else:
            raise FaultError(f"tmf: unknown task management function {item!r} (a name of "
                             "RFC 7143 11.5.1 such as TARGET_WARM_RESET, or its number)")
    return out


def _extent(task: ScsiTask) -> extent.Extent | None:
    """The task's block range, as its LU decoded it on arrival (task.lba, task.blocks; the
    dispatcher parses a task before the rules see it)."""
    return extent.of_task(task)


class Faults:
    def __init__(self, rules: list[FaultRule] | None = None) -> None:
        self.rules: list[FaultRule] = []
        self._next_id = 1
        for r in rules or ():
            self.add(r)

    def add(self, rule: FaultRule) -> FaultRule:
        rule.id = self._next_id
        self._next_id += 1
        self.rules.append(rule)
        return rule

    def clear(self, rule_id: int | None = None) -> int:
        """Remove one rule (or all); returns how many went."""
        before = len(self.rules)
        self.rules = [r for r in self.rules if rule_id is not None and r.id != rule_id]
        return before - len(self.rules)

    def match(self, task: ScsiTask, target: str) -> Fault | None:
        cdb = task.cdb
        ext = None
        for rule in self.rules:
            if rule.action == "tmf-reject":
                continue
            if rule.target is not None and rule.target != target:
                continue
            if rule.lun is not None and rule.lun != task.lun:
                continue
            if rule._opcodes and cdb[0] not in rule._opcodes:
                continue
            if rule.initiator is not None and (
                    task.nexus is None or task.nexus.initiator_name != rule.initiator):
                continue
            if rule.lba_from is not None:
                ext = ext or _extent(task)
                if ext is None or not (ext.lba < rule.lba_to and rule.lba_from < ext.end):
                    continue
            rule.matched += 1
            n = rule.matched
            if rule.first is not None and n > rule.first:
                continue
            if rule.every is not None and n % rule.every:
                continue
            rule.hits += 1
            return self._fault(rule, task)
        return None

    def match_tmf(self, function: int, lun: int, target: str,
                  initiator: str | None) -> int | None:
        """The TMF response a tmf-reject rule gives this request, or None (perform it)."""
        for rule in self.rules:
            if rule.action != "tmf-reject":
                continue
            if rule.target is not None and rule.target != target:
                continue
            if rule.lun is not None and rule.lun != lun:
                continue
            if rule.initiator is not None and rule.initiator != initiator:
                continue
            if rule.tmf and function not in rule.tmf:
                continue
            rule.matched += 1
            if rule.first is not None and rule.matched > rule.first:
                continue
            if rule.every is not None and rule.matched % rule.every:
                continue
            rule.hits += 1
            return TMF_REJECTED
        return None

    @staticmethod
    def _fault(rule: FaultRule, task: ScsiTask) -> Fault:
        action = rule.action
        if action == "busy":
            return Fault(rule, status=Status.BUSY)
        if action == "task-set-full":
            return Fault(rule, status=Status.TASK_SET_FULL)
        if action == "delay":
            return Fault(rule, delay=rule.delay_ms / 1000)
        if action == "medium-delay":
            return Fault(rule, medium_delay=rule.delay_ms / 1000)
        if action == "drop":
            return Fault(rule, drop=True)
        if rule.sense:
            key, asc, ascq = parse_sense(rule.sense)
        else:
            ext = _extent(task)
            key, (asc, ascq) = SenseKey.MEDIUM_ERROR, ((0x0C, 0) if ext and ext.writes
                                                       else (0x11, 0))
        return Fault(rule, check=CheckCondition(key, Asc(asc, ascq)))

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.rules]
