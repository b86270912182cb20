"""The package has no import cycle (issue 18): every ``import``/``from`` of a qubo_nn module, at
module level or inside a function, is an edge of the graph; a cycle fails with its path.

Imports under ``if TYPE_CHECKING:`` are annotations only and are not edges.
``from qubo_nn.pkg import name`` is an edge to ``qubo_nn.pkg.name`` when that is a module, else to
the package ``qubo_nn.pkg`` (its ``__init__``). String references (the CLI's lazy command table,
the sampler registry's ``"module:Class"`` names) are not imports and are not edges.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "qubo_nn"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    p = PKG.parent / Path(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_of(path)
        edges = graph.setdefault(mod, set())
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test)
                       for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("qubo_nn")}
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", node)
                if not target.startswith("qubo_nn"):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    edges.add(sub if _is_module(sub) else target)
        edges.discard(mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for root in graph:
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(nxt, 2) == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour.get(nxt) == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_the_checker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "qubo_nn.core.problem" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_core_imports_nothing_above_it():
    """core/ stands on nothing but errors/runtime, the feature container and itself: the head is one
    instance of the core, and nothing head-specific sits under it."""
    graph = import_graph()
    for mod, edges in graph.items():
        if mod.startswith("qubo_nn.core"):
            above = sorted(e for e in edges if not e.startswith(("qubo_nn.core", "qubo_nn.errors", "qubo_nn.runtime",
                                                                 "qubo_nn.data.featureset")))
            assert not above, f"{mod} imports {above}"


@pytest.mark.parametrize("mod", sorted(import_graph()))
def test_every_module_imports(mod):
    importlib.import_module(mod)
