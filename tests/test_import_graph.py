"""No import circle inside ``cellbench/``: module-level and function-level imports both count.

The graph is built from the source with :mod:`ast` (no module is imported): an edge ``a -> b`` for
every ``import b`` / ``from b import x`` anywhere in ``a`` (inside functions too, since a circle
through a lazy import still ties the two modules together), relative imports resolved, and
``from pkg import sub`` pointing at the submodule ``pkg.sub`` where that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cellbench"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a ``from ... import`` in ``module`` (``level`` leading dots)."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                # `import a.b.c` binds a module that exists: walk up to the nearest one
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "cellbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from cellbench.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport cellbench.sub.c.d\n")
    (pkg / "sub" / "c.py").write_text("")
    graph = import_graph(pkg)
    assert graph["cellbench.a"] == {"cellbench.sub.b"}
    assert graph["cellbench.sub"] == {"cellbench.sub.b"}
    assert graph["cellbench.sub.b"] == {"cellbench.a", "cellbench.sub.c"}
    assert find_cycle(graph) == ["cellbench.a", "cellbench.sub.b", "cellbench.a"]
    (pkg / "a.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_circle_in_cellbench() -> None:
    graph = import_graph()
    assert "cellbench.scoring.scorer" in graph["cellbench.evaluation"]  # the graph is not empty
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
