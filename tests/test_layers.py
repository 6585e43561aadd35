"""The package's import graph: no cycles between subpackages, and layout/ and config/ stay at the bottom.

A static scan (``ast``) of every ``import recdim...`` / ``from recdim... import`` in recdim/, with each
subpackage (and each top-level module) as one node.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import recdim

ROOT = Path(recdim.__file__).parent


def _node(module: str) -> str:
    """``recdim.layout.masks`` -> ``layout``; ``recdim.cli`` -> ``cli``; ``recdim`` -> ``recdim``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> Dict[str, Set[str]]:
    """``{node: nodes it imports}`` over recdim/, self-edges left out."""
    edges: Dict[str, Set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        src = _node(module)
        for stmt in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                if stmt.level:
                    base = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    targets = [".".join(base + ([stmt.module] if stmt.module else []))]
                else:
                    targets = [stmt.module or ""]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != "recdim" or target == "recdim":
                    continue
                dst = _node(target)
                if dst != src:
                    edges.setdefault(src, set()).add(dst)
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_subpackages() -> None:
    edges = import_graph()
    assert "modules" in edges and "layout" in edges.get("modules", set())  # the scan sees real imports
    assert cycles(edges) == []


def test_layout_and_config_import_nothing_above_them() -> None:
    edges = import_graph()
    assert edges.get("layout", set()) <= {"config", "config_io"}
    assert edges.get("config", set()) <= {"config_io"}


# Lowest first: a node may import only nodes before it. A new subpackage must be placed here.
LAYERS = (
    "fsio",
    "config_io",
    "config",
    "layout",
    "native",
    "data",
    "modules",
    "models",
    "train",
    "search",
    "prune",
    "retrain",
    "export",
    "report",
    "pipeline",
    "compare",
    "bench",
    "cli",
)


def test_every_import_goes_down_the_layers() -> None:
    edges = import_graph()
    nodes = set(edges) | {w for ws in edges.values() for w in ws}
    assert nodes <= set(LAYERS), f"place {sorted(nodes - set(LAYERS))} in LAYERS"
    rank = {n: i for i, n in enumerate(LAYERS)}
    upward = sorted((src, dst) for src, dsts in edges.items() for dst in dsts if rank[dst] > rank[src])
    assert upward == []
