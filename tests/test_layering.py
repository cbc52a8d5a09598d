"""The library's layers are a test: on the real import graph (every import of an `autoqra` module,
those inside functions included; only `if TYPE_CHECKING:` blocks, which name types for a checker and
never run, are left out) no module imports a higher layer and no import circle exists.

Layers, lowest first (a module may import its own layer or any lower one):

0. leaves: the input error, the record store, the statistics, the sweep's cell names;
1. vocabulary: the search space, the arm names (one parser of the `uniform{b}_r{r}` grammar) and the
   serving targets' constraints;
2. parameters: typed, validated sections;
3. data, devices;
4. model sources and shapes, the memory model and budgets;
5. engines that know no stage: training, the search algorithms (and their Optuna adapter);
6. engines over the GPTQ caches: quantization, the priors, the preflight checks;
7. report: tables and plots of finished results;
8. pipeline: the composition layer, one module per stage of work;
9. the package's public API.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS = (
    ("autoqra.errors", "autoqra.store", "autoqra.stats", "autoqra.sweep"),
    ("autoqra.space", "autoqra.arms", "autoqra.serving"),
    ("autoqra.params",),
    ("autoqra.data", "autoqra.devices"),
    ("autoqra.models", "autoqra.memory"),
    ("autoqra.train", "autoqra.search"),
    ("autoqra.quant", "autoqra.priors", "autoqra.preflight"),
    ("autoqra.report",),
    ("autoqra.pipeline",),
    ("autoqra",),
)
MAX_LINES = 300


def modules(src: Path) -> dict[str, Path]:
    out = {}
    for f in src.rglob("*.py"):
        parts = list(f.relative_to(src).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _executed(tree: ast.AST) -> list[ast.AST]:
    """Every node but those inside `if TYPE_CHECKING:`."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the `autoqra` modules it imports (`from a import b` counts as `a.b` when that is a
    module, else as `a`; relative imports resolved), and the packages whose `__init__` such an import
    runs (but its own, which ran before it); every statement, at any depth."""
    mods = modules(src)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _executed(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t.split(".")[0] == "autoqra" and t != name:
                    graph[name] |= {t, *(_ancestors(t) - _ancestors(name) - {name})}
    return graph


def _ancestors(module: str) -> set[str]:
    """The packages whose `__init__` importing `module` runs first (`a.b.c`: `a`, `a.b`)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def layer(module: str) -> int:
    """The layer of the longest listed prefix of `module`."""
    best = max((p for tier in LAYERS for p in tier if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, tier in enumerate(LAYERS) if best in tier)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the path that closes it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return [*stack[stack.index(w):], w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer(b) > layer(a)]


def test_no_module_imports_upward_and_no_import_circle_exists():
    graph = import_graph(ROOT / "src")
    assert not violations(graph), "\n".join(violations(graph))
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_check_catches_a_planted_circle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "autoqra"
    (pkg / "search").mkdir(parents=True)
    for f in ("__init__.py", "space.py", "search/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "search/repair.py").write_text("from autoqra.search import evolution\n")
    (pkg / "search/evolution.py").write_text("def f():\n    from autoqra.search.repair import g\n")
    (pkg / "space.py").write_text("from autoqra.search import repair\n")
    graph = import_graph(tmp_path)
    assert cycle(graph) in (["autoqra.search.evolution", "autoqra.search.repair", "autoqra.search.evolution"],
                            ["autoqra.search.repair", "autoqra.search.evolution", "autoqra.search.repair"])
    assert violations(graph) == ["autoqra.space (layer 1) imports autoqra.search (layer 5)",  # its __init__ runs
                                 "autoqra.space (layer 1) imports autoqra.search.repair (layer 5)"]


@pytest.mark.parametrize("path", sorted((ROOT / "src/autoqra").rglob("*.py")), ids=lambda p: p.name)
def test_every_library_file_is_listed_in_a_layer_and_short(path):
    name = [n for n, f in modules(ROOT / "src").items() if f == path][0]
    assert layer(name) >= 0
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.relative_to(ROOT)}"
