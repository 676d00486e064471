"""The import graph points one way, and has no cycle apart from type-only imports.

Layers, bottom up (a module may import its own layer and the ones below, never above):

0. leaves: ``hookkit.errors``, ``hookkit.compat`` (the transformers seam), ``hookkit.registry``, ``hookkit.io``
1. ``hookkit.models`` (architecture families, loading, tiny models)
2. ``hookkit.core`` (sites, regions, attention dispatch, sessions, recipes)
3. ``hookkit.generation`` (generation with reference branches)
4. ``hookkit.methods`` and ``hookkit.evals``: siblings that never import each other
5. ``hookkit.integrations`` (harness plug-ins)
6. ``hookkit.cli``

The package facade ``hookkit/__init__.py`` may import anything. Imports under ``if TYPE_CHECKING:`` are type-only
and do not count. Registry entries are ``"module:object"`` strings resolved by name, like entry points, so they are
not imports either.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hookkit"
LEVELS = [
    ("hookkit.errors", 0), ("hookkit.compat", 0), ("hookkit.registry", 0), ("hookkit.io", 0),
    ("hookkit.models", 1), ("hookkit.core", 2), ("hookkit.generation", 3),
    ("hookkit.methods", 4), ("hookkit.evals", 4), ("hookkit.integrations", 5), ("hookkit.cli", 6),
]
SIBLINGS = {("hookkit.methods", "hookkit.evals"), ("hookkit.evals", "hookkit.methods")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> tuple[str, int] | None:
    for prefix, level in LEVELS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, level
    return None


def _resolve(name: str) -> str | None:
    """The hookkit module an import name refers to (a submodule if it exists, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.startswith("hookkit"):
                resolved = _resolve(name)
                if resolved and resolved != "hookkit":
                    found.add(resolved)
    return found


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def test_imports_point_downwards() -> None:
    problems = []
    for importer, imported in GRAPH.items():
        src = _layer(importer)
        if src is None:  # the facade
            continue
        for target in imported:
            dst = _layer(target)
            if dst is None:
                continue
            if dst[1] > src[1] or (src[0], dst[0]) in SIBLINGS:
                problems.append(f"{importer} (layer {src[1]}) imports {target} (layer {dst[1]})")
    assert not problems, "upward or sideways imports:\n" + "\n".join(sorted(problems))


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over module-level and function-level imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w == v or w not in GRAPH or _is_package_of(w, v):
                continue
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
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def _is_package_of(package: str, module: str) -> bool:
    """Importing ``a.b.c`` runs ``a/b/__init__.py``; a package re-exporting its own submodules is not a cycle."""
    return module.startswith(package + ".")


def test_the_layering_test_sees_a_violation() -> None:
    assert _layer("hookkit.methods.vhr") == ("hookkit.methods", 4)
    assert _layer("hookkit.models.tiny")[1] < _layer("hookkit.core.session")[1]
    assert "hookkit.core.session" in GRAPH["hookkit.generation"]  # imports are actually collected
    assert "hookkit.models.families" in GRAPH["hookkit.core.session"]
