"""The shape of the package, checked: no import cycle among its modules
(counting every import, at module level, under TYPE_CHECKING and inside
functions), no module too long to read, and one registry entry per backend,
which every list of backend names is drawn from."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import parloop
from parloop import _entry, _options, backends

PACKAGE = Path(parloop.__file__).parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every parloop module ``name`` imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            targets.update(bases)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    edges = set()
    for target in targets:
        # importing a.b.c runs a and a.b first, unless they contain the importer
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            module = ".".join(parts[:end])
            if module in known and module != name and not name.startswith(module + "."):
                edges.add(module)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_counting_every_import() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    # The check itself must be able to fail: a cycle closed only by a
    # function-level import is one.
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from pkg import b\n")
    b.write_text("def f():\n    from pkg import a\n")
    graph = {"pkg.a": _imports("pkg.a", a, {"pkg.a", "pkg.b"}),
             "pkg.b": _imports("pkg.b", b, {"pkg.a", "pkg.b"})}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_too_long_to_read(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_every_backend_name_comes_from_the_registry() -> None:
    typed = typing.get_args(_entry.Backend)
    assert set(typed) == set(backends.CHOICES)
    assert set(_options.BACKENDS) == set(backends.CHOICES)
    for info in backends.REGISTRY.values():
        module = importlib.import_module(info.module)
        assert callable(module.create), f"{info.module} has no create()"


def test_the_cli_lists_each_optional_backend_of_the_registry() -> None:
    from parloop import _cli

    out = "\n".join(_cli.info_lines())
    for info in backends.REGISTRY.values():
        assert info.name in out


def test_importing_parloop_imports_no_backend_and_a_backend_no_engine() -> None:
    code = ("import sys, parloop\n"
            "print(sorted(m for m in sys.modules if m.startswith('parloop.backends.')))\n"
            "from parloop.backends.cluster import dask, ray\n"
            "print(sorted(m for m in ('distributed', 'dask', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


def test_importing_parloop_loads_only_what_decorating_needs() -> None:
    # The engine, the planner and cloudpickle wait for the first call: a
    # script that imports a module with decorated functions pays for none.
    code = ("import sys, parloop\n"
            "@parloop.parallel_for\n"
            "def f(x): return x\n"
            "heavy = ['parloop._calls', 'parloop._dispatch', 'parloop._planner', "
            "'parloop._pickling', 'parloop._scope', 'cloudpickle']\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "f([1, 2])\n"
            "print('parloop._dispatch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["[]", "True"]
