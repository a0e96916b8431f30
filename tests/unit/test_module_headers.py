"""Every name a module header of target/ gives for the code resolves (issue 13: each module
starts with a docstring stating its rules; a header must not name what the code no longer has).

Two classes of claim are checked mechanically, against the code itself (imported, or read
with ast), not against another docstring:

- A dotted name rooted at the package, `target.a.b` or `target.a.b.Name.attr`, is
  importable down to its last module and each further part is an attribute of what precedes
  it (the same rule tests/unit/test_architecture_doc.py applies to docs/ARCHITECTURE.md's
  `module:name` references).
- `Class.member` or `Class.member()`, where Class is a class defined somewhere under
  target/: member is defined by that class or one of its bases (a method, a class-level
  name or annotation, a `__slots__` entry, or an attribute its methods assign on self).

The prose rules themselves (who calls whom, what a rule is) are not checked here: they were
checked by reading the code, and a name that disappears is the commonest way a header goes
stale. The check must be able to fail: test_a_planted_false_name_is_found plants one.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "target"
# Not a TOML table header ([target.lun] in config.py's example) nor a file of another
# project (tgt's usr/target.c).
DOTTED = re.compile(r"(?<![\w.\[/])target(?:\.[A-Za-z_]\w*)+(?![\w\]])")
MEMBER = re.compile(r"(?<![\w.])([A-Z][A-Za-z0-9_]*)\.([A-Za-z_]\w*)")
# The file suffixes and the like that follow a capitalised word in prose ("DESIGN.md").
NOT_MEMBERS = {"py", "md", "c", "h", "cpp", "toml", "txt", "json", "img"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def header(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""


@cache
def _classes() -> dict[str, set[str]]:
    """Class name -> the names its own body defines, plus '^Base' markers for its bases."""
    members: dict[str, set[str]] = defaultdict(set)
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            names = members[node.name]
            names.update("^" + b.id for b in node.bases if isinstance(b, ast.Name))
            names.update("^" + b.attr for b in node.bases if isinstance(b, ast.Attribute))
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                        and sub.value.id in ("self", "cls"):
                    names.add(sub.attr)
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    names.add(sub.target.id)
                elif isinstance(sub, ast.Assign):
                    for target in sub.targets:
                        if isinstance(target, ast.Name):
                            names.add(target.id)
                        if isinstance(target, ast.Name) and target.id == "__slots__" \
                                and isinstance(sub.value, (ast.Tuple, ast.List)):
                            names.update(e.value for e in sub.value.elts
                                         if isinstance(e, ast.Constant))
    return dict(members)


def _has_member(cls: str, member: str, seen: frozenset[str] = frozenset()) -> bool:
    names = _classes().get(cls, set())
    if member in names:
        return True
    for base in (n[1:] for n in names if n.startswith("^")):
        if base in seen:
            continue
        if base not in _classes():  # a base from outside target/: ask Python's own
            if hasattr(builtins, base) and hasattr(getattr(builtins, base), member):
                return True
            # IntEnum, NamedTuple, Protocol, ABC ...: their members are on the real class
            for module in ("enum", "typing", "abc", "asyncio"):
                kind = getattr(importlib.import_module(module), base, None)
                if kind is not None and hasattr(kind, member):
                    return True
            continue
        if _has_member(base, member, seen | {cls}):
            return True
    return False


def resolve_dotted(name: str) -> str | None:
    """None when `name` resolves; else why not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        break
    else:
        return "no such module"
    for j, part in enumerate(parts[i:], i):
        if not hasattr(obj, part):
            return f"{'.'.join(parts[:j])} has no {part}"
        obj = getattr(obj, part)
    return None


def false_names(text: str) -> list[str]:
    """The names `text` gives that the code does not have."""
    bad = []
    for m in DOTTED.finditer(text):
        if m.group(0).rsplit(".", 1)[1] in NOT_MEMBERS:
            continue
        why = resolve_dotted(m.group(0))
        if why is not None:
            bad.append(f"{m.group(0)}: {why}")
    classes = _classes()
    for m in MEMBER.finditer(text):
        cls, member = m.groups()
        if cls in classes and member not in NOT_MEMBERS and not _has_member(cls, member):
            bad.append(f"{cls}.{member}: {cls} has no {member}")
    return bad


def test_the_headers_are_read() -> None:
    """The scan sees what it is meant to see: the headers, and names in both forms."""
    texts = [header(p) for p in _modules()]
    assert sum(bool(t) for t in texts) > 60, "module headers not found: has the layout changed?"
    assert sum(len(DOTTED.findall(t)) for t in texts) > 40
    assert sum(len(MEMBER.findall(t)) for t in texts) > 60
    assert "LogicalUnit" in _classes() and _has_member("LogicalUnit", "complete_io")
    assert _has_member("ScsiTask", "rejection"), "__slots__ / self.x not collected"
    assert _has_member("FileStore", "sidecar") or "FileStore" not in _classes()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_in_the_header_resolves(path: Path) -> None:
    bad = false_names(header(path))
    assert not bad, f"{path.relative_to(ROOT)}'s header names what the code does not have:\n" \
        + "\n".join(bad)


@pytest.mark.parametrize("plant", [
    "the task manager (target.scsi.tmf.TaskManager.no_such_method)",
    "set by target.scsi.no_such_module",
    "LogicalUnit.no_such_method() runs it",
    "kept in ScsiTask.no_such_slot",
])
def test_a_planted_false_name_is_found(plant: str) -> None:
    """The check can fail: a real header with one false name planted in it is refused."""
    text = header(PACKAGE / "scsi" / "lu.py")
    assert false_names(text) == []
    assert len(false_names(text + "\n" + plant)) == 1
