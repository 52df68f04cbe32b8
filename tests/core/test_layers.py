"""The import graph of qat/ shows its layers: no cycle anywhere, and arrows point down only.

Every import counts, also those inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

QAT = Path(__file__).resolve().parents[2] / "qat"

# From the bottom up; a module may import its own layer and those below, never above.
LAYERS = (
    "foundation",  # config, model, data, quant, schedule, optim, checkpoint, tracking, ...
    "engine",  # qat.engine: trains
    "store",  # qat.store: claims, trunks, provenance on disk (beside the engine, not above it)
    "cell",  # qat.cell
    "orchestration",  # qat.orchestration
    "command",  # the CLIs at qat/ top level
)
COMMANDS = {
    "qat.plan",
    "qat.status",
    "qat.node_grid",
    "qat.report",
    "qat.generate",
    "qat.export.__main__",
    "qat.merge_runs",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(QAT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The qat modules ``path`` imports (``from qat.x import y`` counts qat.x.y if a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in QAT.rglob("*.py")}
    known = set(paths)
    graph = {name: imports_of(path, known) for name, path in paths.items()}
    # A package's __init__ is imported on the way to any of its modules; that edge is Python's,
    # not a design choice, so only the explicit imports count.
    return {name: {m for m in deps if m != name} for name, deps in graph.items()}


def layer(module: str) -> str:
    if module in COMMANDS:
        return "command"
    for name in ("engine", "store", "orchestration"):
        if module == f"qat.{name}" or module.startswith(f"qat.{name}."):
            return name
    return "cell" if module in ("qat.cell", "qat.pack") else "foundation"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_qat_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40  # the walk saw the package
    assert find_cycle(graph) is None


@pytest.mark.parametrize("lower", LAYERS[:-1])
def test_a_layer_imports_nothing_above_it(lower):
    graph = import_graph()
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = [
        f"{module} → {dep}"
        for module, deps in graph.items()
        if layer(module) == lower
        for dep in deps
        if rank[layer(dep)] > rank[lower]
    ]
    assert upward == []


def test_the_trunk_store_does_not_know_the_trainer():
    assert not {d for d in import_graph()["qat.store.trunk_store"] if "engine" in d}
