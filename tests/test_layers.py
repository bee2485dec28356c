"""The package's layers (pyproject.toml ``[tool.importlinter]``): imports point down only, no circle of imports
anywhere, and no import of lficam inside a function except one deferred for start-up time, saying so."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from tests.conftest import ROOT

PACKAGE = ROOT / "lficam"
#: the only upward imports: `python -m lficam.explain|export` start the command line on top
ENTRY_POINTS = {"lficam.explain.__main__", "lficam.export.__main__"}


def test_the_import_contract_holds():
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def module_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), a package counted apart from its
    modules (``lficam.models`` is its __init__)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if not imported.startswith("lficam") or module in ENTRY_POINTS:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            members = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.append(top)
                if top == module:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module.startswith("lficam") and module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("lficam")
    assert module_cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_circle():
    graph = grimp.ImportGraph()
    for name in ("lficam.a", "lficam.b", "lficam.c", "lficam.d"):
        graph.add_module(name)
    graph.add_import(importer="lficam.a", imported="lficam.b")
    graph.add_import(importer="lficam.b", imported="lficam.c")
    graph.add_import(importer="lficam.c", imported="lficam.a")
    graph.add_import(importer="lficam.d", imported="lficam.a")
    assert module_cycles(graph) == [["lficam.a", "lficam.b", "lficam.c"]]


def imports_inside_functions(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each ``import lficam…``/``from lficam… import`` inside a function of ``path`` whose
    line and the line above carry no "deferred" comment."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom):
                names = [inner.module or ""]
            elif isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            else:
                continue
            if not any(n == "lficam" or n.startswith("lficam.") for n in names):
                continue
            said = " ".join(lines[max(0, inner.lineno - 2) : inner.lineno])
            if "deferred" not in said:
                found.append((inner.lineno, names[0]))
    return found


def test_no_import_of_lficam_inside_a_function_without_its_reason():
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if "conf" not in path.relative_to(PACKAGE).parts and (found := imports_inside_functions(path))
    }
    assert offenders == {}


def test_the_function_import_check_sees_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from lficam.core import errors\n\n"
        "def g():\n    # deferred: start-up time\n    from lficam.training import task\n"
    )
    assert imports_inside_functions(module) == [(2, "lficam.core")]
