"""The package's modules depend downward only: no import cycles, lazy imports included, and
onnxruntime only in the runtime and check layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "onnxfcn"


def _is_module(parts: list[str]) -> bool:
    return (PKG.joinpath(*parts).with_suffix(".py")).exists() or PKG.joinpath(*parts).is_dir()


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at any depth in the file (function-level too).
    Modules are named relative to the package ("convert", "rules.dense"); the root is "__init__"."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("").parts
        package = list(rel[:-1])
        module = ".".join(package if rel[-1] == "__init__" else rel) or "__init__"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:  # relative: from . import x, from .x import y, from ..x import y
                base = package[: len(package) - node.level + 1]
                parts = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").split(".")[0] == "onnxfcn":
                parts = (node.module or "").split(".")[1:]
            else:
                continue
            for alias in node.names:  # "from . import x" imports the module x
                deps.add(".".join([*parts, alias.name]) if _is_module([*parts, alias.name]) else ".".join(parts))
        graph[module] = {d or "__init__" for d in deps} - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = imports()
    assert "convert" in graph and "verify" in graph  # the walk found the package
    cycle = find_cycle({m: d for m, d in graph.items() if m != "__init__"})
    assert cycle is None, " -> ".join(cycle or [])
    # Nothing inside the package imports the package root (it only re-exports).
    assert not [m for m, d in graph.items() if "__init__" in d and m != "__init__"]


def test_cycle_finder_finds_a_cycle() -> None:
    """Control: the finder is not vacuous."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_onnxruntime_only_in_runtime_and_check_layers() -> None:
    """onnxruntime is imported by the runtime module and the checks (verify) alone; everything else
    runs models through runtime.py."""
    users = set()
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "onnxruntime" for n in names):
                users.add(".".join(path.relative_to(PKG).with_suffix("").parts))
    assert users and all(u == "runtime" or u.startswith("verify.") for u in users), users


def test_every_subpackage_is_installed() -> None:
    """`pip install .` (not editable) ships only the packages pyproject lists: every folder of the
    package with an __init__.py must be there (onnxfcn.rules once was not, and the installed tool
    failed to import)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("onnxfcn", *p.parent.relative_to(PKG).parts)) for p in PKG.rglob("__init__.py")}
    assert found == listed, found ^ listed


def test_modules_and_functions_stay_small() -> None:
    """No module over 600 lines, no function over 100 (docs/architecture.md): a newcomer reads one
    piece at a time."""
    long_modules, long_functions = [], []
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 600:
            long_modules.append(str(path.relative_to(PKG)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                if node.end_lineno - node.lineno + 1 > 100:
                    long_functions.append(f"{path.relative_to(PKG)}:{node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
