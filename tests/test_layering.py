"""The package's modules depend downward only: no import cycles, lazy imports included, and
onnxruntime only in the runtime and check layers."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "onnxfcn"


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at any depth in the file (function-level too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts) or "__init__"
        package = list(rel.parts[:-1])
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x: x may be a module
                    for alias in node.names:
                        name = ".".join(base + [alias.name])
                        deps.add(name if (PKG / Path(*name.split("."))).with_suffix(".py").exists()
                                 or (PKG / Path(*name.split("."))).is_dir() else target or "__init__")
                else:
                    deps.add(target)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnxfcn"):
                deps.add(node.module.removeprefix("onnxfcn").lstrip(".") or "__init__")  # type: ignore[union-attr]
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
                return stack[stack.index(d):] + [d]
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
    allowed = {"runtime", "verify"}
    users = set()
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "onnxruntime" for n in names):
                users.add(path.stem)
    assert users <= allowed, users - allowed
