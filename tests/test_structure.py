"""The shape of pipeline/: no module imports itself back through others, and no function longer than a screen.

The import graph is read from the source with `ast` alone (nothing of pipeline is imported, so a circle that
only bites at import time in some order is still seen). Every `import` and `from ... import` counts, also the
ones inside functions, since those still tie the two modules together; a package's __init__.py is a module of
its own.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a function longer than this (def line to last line, decorators aside) is several functions
MAX_FUNCTION_LINES = 60


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _targets(mod: str, path: Path, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """Dotted names an import statement reaches: `from X import a` reaches X.a where that is a module, else X."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{base}.{node.module}" if node.module else base
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within the package at `root`."""
    mods = _modules(root)
    graph: dict[str, dict[str, int]] = {}
    for mod, path in mods.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _targets(mod, path, node, mods):
                while name not in mods and "." in name:
                    name = name.rpartition(".")[0]
                if name in mods and name != mod:
                    edges.setdefault(name, node.lineno)
        graph[mod] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _describe(component: frozenset[str], graph: dict[str, dict[str, int]], mods: dict[str, Path]) -> str:
    edges = [f"  {a} -> {b} ({mods[a].relative_to(REPO)}:{line})"
             for a in sorted(component) for b, line in sorted(graph[a].items()) if b in component]
    return " <-> ".join(sorted(component)) + "\n" + "\n".join(edges)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_checker_sees_circles_through_function_imports_relative_imports_and_package_faces(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from .b import g\n",  # a function-level import still ties a to b
        "pkg/b.py": "from pkg import a\n",
        "pkg/sub/__init__.py": "from .leaf import X\n",  # the package face is a module of its own
        "pkg/sub/leaf.py": "from .. import sub\n",
        "pkg/sub/other.py": "from ..sub import leaf\nimport pkg.c\n",  # reaches leaf, not the face
        "pkg/c.py": "import os\nfrom .sub.other import y\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b": 2} and graph["pkg.b"] == {"pkg.a": 1}
    assert graph["pkg.sub.other"] == {"pkg.sub.leaf": 1, "pkg.c": 2}
    assert sorted(map(sorted, circles(graph))) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.other"],
                                                   ["pkg.sub", "pkg.sub.leaf"]]


def test_pipeline_has_no_import_circle():
    root = REPO / "pipeline"
    graph, mods = import_graph(root), _modules(root)
    found = circles(graph)
    assert not found, "import circles in pipeline/:\n" + "\n".join(_describe(c, graph, mods) for c in found)


def long_functions(root: Path, limit: int) -> list[str]:
    """`path:line name (N lines)` for every function or method under root longer than limit lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_the_function_length_check_counts_the_signature_and_nested_functions(tmp_path):
    (tmp_path / "m.py").write_text(
        "def short(a,\n"
        "          b):\n"
        "    return a\n"
        "\n"
        "\n"
        "class K:\n"
        "    def long(self):\n"
        "        def inner():\n"
        "            x = 1\n"
        "            return x\n"
        "        return inner\n")
    short, long_, inner = (f"{tmp_path.name}/m.py:{at}" for at in ("1 short (3 lines)", "7 long (5 lines)",
                                                                    "8 inner (3 lines)"))
    assert long_functions(tmp_path, 2) == [short, long_, inner]
    assert long_functions(tmp_path, 3) == [long_]
    assert long_functions(tmp_path, 5) == []


def test_no_function_in_pipeline_is_longer_than_a_screen():
    found = long_functions(REPO / "pipeline", MAX_FUNCTION_LINES)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(found)
