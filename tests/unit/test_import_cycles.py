"""The import graph of lib/prismatic has no cycle, read with the stdlib ``ast`` (no module is imported).

Every import statement counts, at module level and inside functions (a function-level import only delays a
cycle to the first call), except those under ``if TYPE_CHECKING:``, which never run. ``from x import y`` is an
edge to the module ``x.y`` when there is one, else to ``x`` (a package's ``__init__`` is the module ``x``);
relative imports are resolved against the importing module. Importing ``p.q.m`` first runs the ``__init__`` of
``p`` and ``p.q``, so the importer also gets an edge to each such package that is not one of its own (its own
packages are already being imported when it runs).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "lib"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``root`` (``__init__`` = package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Import / ImportFrom nodes anywhere under ``node`` (functions and classes included), skipping the bodies of
    ``if TYPE_CHECKING:`` blocks (their ``else`` branches still run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The known modules an import statement names (see the module docstring)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n for n in (next((p for p in [n, *reversed(_ancestors(n))] if p in known), None) for n in names) if n]
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    out = []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        if full in known:
            out.append(full)
        elif base in known:
            out.append(base)
    return out


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """Edges module -> imported modules of the package folder ``root``, and where each edge comes from
    (``file:line`` of its first import statement)."""
    files = module_names(root)
    known = set(files)
    graph: dict[str, set[str]] = {m: set() for m in files}
    where: dict[tuple[str, str], str] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own = set(_ancestors(module))
        for node in _import_nodes(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                implied = [p for p in _ancestors(target) if p in known and p not in own and p != module]
                for t in [target, *implied]:
                    if t != module:
                        graph[module].add(t)
                        where.setdefault((module, t), f"{path.relative_to(root.parent.parent)}:{node.lineno}")
    return graph, where


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest chain ``start -> ... -> start`` (breadth first), or [] when there is none."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w == start:
                chain = [v]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                return [*reversed(chain), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return []


def cycles(root: Path) -> list[str]:
    """One line per cycle (one per strongly connected component): the chain, then where each import is."""
    graph, where = import_graph(root)
    lines = []
    for comp in strongly_connected(graph):
        chain = shortest_cycle(graph, comp[0])
        steps = ", ".join(f"{a} -> {b} ({where[a, b]})" for a, b in zip(chain, chain[1:], strict=False))
        lines.append(" -> ".join(chain) + f"  [{len(comp)} modules tangled; imports: {steps}]")
    return lines


# ---- the detector on a planted package ------------------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "src" / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_planted_cycle_through_a_function_level_import_is_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "from pkg import b\n",
            "b.py": "def f():\n    from pkg.c import thing\n    return thing\n",
            "c.py": "import pkg.a\nthing = 1\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n",
            "e.py": "from . import d\n",
        },
    )
    graph, where = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set()  # TYPE_CHECKING imports never run
    assert graph["pkg.e"] == {"pkg.d"}  # relative import of a submodule
    assert where["pkg.b", "pkg.c"] == "src/pkg/b.py:2"
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (line,) = cycles(root)
    assert line.startswith("pkg.a -> pkg.b -> pkg.c -> pkg.a")


def test_a_package_init_is_a_module_of_the_graph(tmp_path):
    # `from pkg.sub import x` runs pkg/sub/__init__.py, which imports pkg.m: m -> pkg.sub -> m is a cycle
    root = _package(
        tmp_path,
        {
            "sub/__init__.py": "from pkg.sub.inner import x\nfrom pkg.m import y\n",
            "sub/inner.py": "x = 1\n",
            "m.py": "y = 2\ndef f():\n    from pkg.sub.inner import x\n",
        },
    )
    graph, _ = import_graph(root)
    assert graph["pkg.m"] == {"pkg.sub.inner", "pkg.sub"}  # the package's __init__ runs first
    assert graph["pkg.sub.inner"] == set()  # a module's own packages are not edges
    assert strongly_connected(graph) == [["pkg.m", "pkg.sub"]]


def test_the_walk_reads_lib_prismatic():
    graph, _ = import_graph(LIB / "prismatic")
    assert len(graph) > 40 and "prismatic.synth.loop" in graph and "prismatic.synth" in graph
    # a module-level and a function-level import, each resolved to its module
    assert "prismatic.synth.types" in graph["prismatic.synth.cache"]
    assert "prismatic.synth.cache" in graph["prismatic.synth.generators"]  # inside make_generator


def test_lib_prismatic_has_no_import_cycle():
    found = cycles(LIB / "prismatic")
    assert not found, "import cycles in lib/prismatic:\n" + "\n".join(found)
