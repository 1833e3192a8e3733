"""The import graph points only down, and has no cycle (read from the source with ``ast``)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import imagegate

PACKAGE = Path(imagegate.__file__).parent

# Lowest first. A module may import from its own layer's other entries' lower layers and from
# its own top-level module or package; never from a layer above. Imports under
# ``if TYPE_CHECKING:`` are annotations, not arrows, and are not counted.
LAYERS: list[set[str]] = [
    {"redaction"},
    {"attempts"},
    {"errors"},
    {"sampling", "inputs"},
    {"tracing"},
    {"deadline", "request", "jobend", "images", "hedging", "latency", "allocator", "console"},
    {"config", "registry", "config_keys"},
    {"transport", "hubcache"},
    {"providers"},
    {"router", "breaker", "store"},
    {"gateway"},
    {"backplane", "imagegate"},
    {"doctor"},
    {"server"},
    {"cli", "cli_config", "cli_history", "cli_keys", "cli_usage", "cli_storage", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, top_level_only: bool) -> Iterator[str]:
    """The imagegate modules named by the imports in ``tree``, outside TYPE_CHECKING blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("imagegate"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imagegate"):
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not isinstance(node, ast.Import | ast.ImportFrom):
            yield from _imports(node, top_level_only=top_level_only)


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """``imagegate.x.y.Name`` -> the longest prefix that is a module."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "imagegate"


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = {
            _resolve(target, modules) for target in _imports(tree, top_level_only=top_level_only)
        }
        graph[name] = found - {name}
    return graph


def test_every_module_has_a_layer() -> None:
    """Each top-level module or package of imagegate is placed in exactly one layer."""
    tops = {_top(name) for name in _modules()}
    assert tops == set(RANK), f"place these in LAYERS: {sorted(tops ^ set(RANK))}"
    assert sum(len(layer) for layer in LAYERS) == len(RANK)


def test_no_module_imports_upward() -> None:
    """No import (top level or inside a function) reaches a layer above the importer's."""
    upward = [
        f"{source} -> {target}"
        for source, targets in _graph(top_level_only=False).items()
        for target in targets
        if _top(target) != _top(source) and RANK[_top(target)] > RANK[_top(source)]
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    """The modules imported at load time form no cycle."""
    graph = _graph(top_level_only=True)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []
