"""The shape of target/, read with `ast` (issue 13): no duck typing on our own objects, no
import cycle.

(a) No call of getattr/hasattr/setattr/delattr and no `def __getattr__` in target/, except
    the entries of ALLOWED: (file, the object's expression) -> the reason the object is not
    ours. Our objects declare their attributes (fields, properties, typing.Protocol) or map
    names explicitly.
(b) The import graph of target/ (every `import` and `from ... import`, at any depth,
    `if TYPE_CHECKING:` blocks included, relative imports resolved, `from pkg import mod`
    counted as an import of pkg.mod) has no cycle. A failure prints each cycle as a path
    a -> b -> ... -> a.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "target"
DYNAMIC = ("getattr", "hasattr", "setattr", "delattr")

# (file, the first argument as source text) -> why that object is not ours.
ALLOWED: dict[tuple[str, str], str] = {
    ("target/cli.py", "args"): "argparse.Namespace: its attributes are the options that "
                               "argparse made from the subcommand's parser",
    ("target/shell/server.py", "os"): "the os module: os.sysconf exists only on some "
                                      "platforms",
    ("target/testing/plugin.py", "report"): "pytest's report objects: `when` and "
                                            "`user_properties` are pytest's, not on every kind",
    ("target/scsi/listing.py", "sys.modules.get(module)"): "a module object of Python's "
        "import system: the check is that a handler is importable by its name",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def dynamic_uses(path: Path) -> list[tuple[str, str]]:
    """(what, the object's source text) for each call of DYNAMIC and def __getattr__."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in DYNAMIC:
            obj = ast.unparse(node.args[0]) if node.args else ""
            found.append((f"{node.func.id}({obj}, ...) at line {node.lineno}", obj))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.name == "__getattr__":
            found.append((f"def __getattr__ at line {node.lineno}", "self"))
    return sorted(found, key=lambda u: int(u[0].rpartition(" ")[2]))


def violations() -> dict[str, list[str]]:
    out = {}
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        uses = [what for what, obj in dynamic_uses(path) if (rel, obj) not in ALLOWED]
        if uses:
            out[rel] = uses
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of target/ that module `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out.add(source)
            out.update(f"{source}.{a.name}" for a in node.names)  # from pkg import mod
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (or one importing
    itself), as one cycle through it: a -> b -> ... -> a (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g[v]:
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [_path_through(g, set(c)) for c in comps]


def _path_through(g: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A cycle a -> ... -> a inside one component, found by breadth-first search."""
    start = min(comp)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a component always has one


# --- the checks ---------------------------------------------------------------------------


def test_no_getattr_family_on_our_objects():
    found = violations()
    assert not found, "getattr/hasattr/setattr/delattr or __getattr__ on our objects:\n" + \
        "\n".join(f"  {f}: {', '.join(u)}" for f, u in sorted(found.items()))


def test_allowlist_entries_are_used_and_give_a_reason():
    files = {p.relative_to(ROOT).as_posix(): p for p in modules().values()}
    for (rel, obj), reason in ALLOWED.items():
        assert rel in files and obj in {o for _, o in dynamic_uses(files[rel])}, \
            f"{rel}: {obj} allowed but not used"
        assert reason.strip(), rel


def test_no_import_cycle_in_target():
    found = cycles(graph())
    assert not found, "import cycles in target/:\n" + "\n".join(
        "  " + " -> ".join(c) for c in found)


# --- the checker itself, on graphs and sources whose answer is known ------------------------


def test_cycle_finder_on_known_graphs():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"x": {"x"}}) == [["x", "x"]]


def test_import_reader_counts_every_form(tmp_path):
    pkg = tmp_path / "target" / "iscsi"
    pkg.mkdir(parents=True)
    src = pkg / "text.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import pdu\n"                      # relative, from pkg import mod
        "from .keys import parse\n"                # relative module
        "if TYPE_CHECKING:\n"
        "    from target.iscsi.session import Session\n"
        "def f():\n"
        "    import target.iscsi.connection\n"     # at depth, in a function
        "    from ..dump import formats\n")        # two levels up
    known = {"target.iscsi.pdu", "target.iscsi.keys", "target.iscsi.session",
             "target.iscsi.connection", "target.dump.formats", "target.iscsi", "target"}
    assert imports("target.iscsi.text", src, known) == {
        "target.iscsi", "target.iscsi.pdu", "target.iscsi.keys", "target.iscsi.session",
        "target.iscsi.connection", "target.dump.formats"}


def test_dynamic_reader_finds_every_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("getattr(a, 'b')\nhasattr(a, 'b')\nsetattr(a, 'b', 1)\ndelattr(a, 'b')\n"
                   "class C:\n    def __getattr__(self, n):\n        return n\n"
                   "object.__setattr__(a, 'b', 1)\n")  # an attribute call: not the builtin
    assert dynamic_uses(src) == [("getattr(a, ...) at line 1", "a"),
                                 ("hasattr(a, ...) at line 2", "a"),
                                 ("setattr(a, ...) at line 3", "a"),
                                 ("delattr(a, ...) at line 4", "a"),
                                 ("def __getattr__ at line 6", "self")]
