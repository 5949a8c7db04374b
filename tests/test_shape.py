"""The house keeps its shape: imports read from the source (ast), checked against the layering.

Arrows point down only: cli → search → scoring/target → sampling → solvers/skiptune/schedule.
Type-only imports (under `if TYPE_CHECKING:`) are not edges: they never run. Inside the package a
name is imported from the module that defines it: the lazy root package (`skipsearch.__all__`) is
the users' face, never a way in for the package itself. Faces stay narrow: `skipsearch.search`
exposes at most 25 names, benchmarks import no private (`_name`) module, and no function outside
the public API, the CLI's commands and the network constructors takes more than 8 parameters.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "skipsearch"
ENTRY = ("skipsearch.__main__", "skipsearch.entry")  # the top: they start the CLI
# Internals of the floors below the search: search/ and cli/ reach them through scoring and target.
LOWER = ("skipsearch.models", "skipsearch.sampling", "skipsearch.skiptune", "skipsearch.metrics")
MAX_PARAMETERS = 8
SEARCH_FACE_MAX = 25


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the skipsearch modules it imports (a name that is a submodule counts as that module)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.startswith("skipsearch") and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(1000, 10 * len(graph)))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            within = lambda prefixes: any(target == p or target.startswith(p + ".") for p in prefixes)  # noqa: E731
            if module.startswith(("skipsearch.search", "skipsearch.cli")) and within(LOWER):
                out.append(f"{module} imports {target}: search/ and cli/ reach models, metrics and sampling "
                           "through scoring and target")
            if target == "skipsearch" and module not in ENTRY:
                out.append(f"{module} imports the root package: import a name from the module that defines it")
            if module.startswith("skipsearch.metrics") and within(("skipsearch.models", "skipsearch.sampling",
                                                                    "skipsearch.scoring", "skipsearch.search")):
                out.append(f"{module} imports {target}: metrics know no models, sampling, scoring or search")
            if not module.startswith(("skipsearch.cli", "skipsearch.search")) and module not in ENTRY \
                    and within(("skipsearch.search", "skipsearch.cli")):
                out.append(f"{module} imports {target}: nothing below search imports search or cli")
            if module.startswith("skipsearch.integrations") and within(
                    ("skipsearch.metrics", "skipsearch.scoring", "skipsearch.sampling", "skipsearch.target")):
                out.append(f"{module} imports {target}: a consumer of schedules needs no search machinery")
            if within(("skipsearch.demo",)) and not module.startswith(("skipsearch.demo", "skipsearch.cli")):
                out.append(f"{module} imports {target}: the demo's build tooling is reached through the CLI only")
    return out


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_imports_point_down() -> None:
    assert violations(import_graph()) == []


def test_the_checks_catch_what_they_guard(tmp_path: Path) -> None:
    """The checkers themselves fail on a house that breaks the rules."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    bad = {"skipsearch.search._x": {"skipsearch.models.edm"}, "skipsearch.metrics.fid": {"skipsearch.sampling"},
           "skipsearch.solvers": {"skipsearch.cli"}, "skipsearch.scoring": {"skipsearch.demo.data"},
           "skipsearch.search._y": {"skipsearch"}}
    assert len(violations(bad)) == 5
    pkg = tmp_path / "skipsearch"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import c\n"
                                      "def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("from .sub import b\n")
    graph = import_graph(pkg)
    assert graph["skipsearch.sub.b"] == {"skipsearch.c"}  # the lazy import counts, the type-only one does not
    assert find_cycles(graph) == [["skipsearch.c", "skipsearch.sub.b"]]


def test_reading_a_schedules_file_imports_no_torch() -> None:
    import subprocess

    code = ("import sys, skipsearch.schedule_file, skipsearch.schedule; import skipsearch as ss; ss.load_schedules; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_fidelity') "
            "or m.startswith('skipsearch.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_what_all_says() -> None:
    import skipsearch

    assert set(skipsearch.__all__) - {"__version__"} == set(skipsearch._EXPORTS)
    for name in skipsearch.__all__:
        assert getattr(skipsearch, name) is not None
    with pytest.raises(AttributeError):
        getattr(skipsearch, "not_a_name")
    import skipsearch.search as search

    for name in search.__all__:
        assert hasattr(search, name), name


def private_imports(folder: Path) -> list[str]:
    """Imports of a private skipsearch module (a `_name` part) in the scripts of `folder`."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "skipsearch" and any(p.startswith("_") and not p.startswith("__") for p in parts):
                    out.append(f"{path.name} imports {name}")
    return out


def test_benchmarks_use_faces_only(tmp_path: Path) -> None:
    assert private_imports(PACKAGE.parent / "benchmarks") == []
    (tmp_path / "bench.py").write_text("from skipsearch.search._worker import run_worker\nimport skipsearch.search\n")
    assert private_imports(tmp_path) == ["bench.py imports skipsearch.search._worker.run_worker"]


def _is_command_module(path: Path) -> bool:
    return path.parent.name == "cli" and not path.name.startswith("_")


def wide_functions(root: Path = PACKAGE) -> list[str]:
    """Functions with more than MAX_PARAMETERS parameters, but the public API's (skipsearch.__all__),
    the CLI's commands (module-level functions of cli/ command modules) and network constructors
    (`__init__` in models/, whose arguments mirror the checkpoints' recorded ones)."""
    import skipsearch

    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module = module_name(path, root)
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            if names and names[0] in ("self", "cls"):
                names = names[1:]
            count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
            if count <= MAX_PARAMETERS:
                continue
            public = id(node) in top_level and node.name in skipsearch.__all__ and \
                skipsearch._EXPORTS.get(node.name) == module.removeprefix("skipsearch.")
            command = id(node) in top_level and _is_command_module(path)
            constructor = node.name == "__init__" and module.startswith("skipsearch.models")
            if not (public or command or constructor):
                out.append(f"{module}.{node.name}: {count} parameters")
    return out


def test_no_function_takes_more_than_eight_parameters() -> None:
    assert wide_functions() == []


def test_the_search_face_is_narrow() -> None:
    import skipsearch.search as search

    assert len(search.__all__) <= SEARCH_FACE_MAX
    for name in search.__all__:
        assert getattr(search, name) is not None
