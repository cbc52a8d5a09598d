"""Content fingerprints of files, folders, JSON data and code (what record keys are built from)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any


def of_data(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys), hex."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def of_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def of_dir(path: str | Path, skip: tuple[str, ...] = ("metrics.json", ".snakemake_timestamp")) -> str:
    """sha256 over the relative names and contents of every file under `path` (sorted)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip):
        h.update(str(f.relative_to(root)).encode() + b"\0" + of_file(f).encode())
    return h.hexdigest()


# The modules whose code determines a record's value (a fidelity run's, a test evaluation's): a change to
# any definition in them makes new record keys; where a definition lives among them does not matter.
VALUE_CODE = ("autoqra.pipeline.fidelity", "autoqra.train.lora", "autoqra.train.loop", "autoqra.train.scoring",
              "autoqra.data.generator", "autoqra.data.sources", "autoqra.data.encoding", "autoqra.quant.cache",
              "autoqra.quant.packed", "autoqra.quant.backends", "autoqra.quant.matmul", "autoqra.models",
              "autoqra.devices", "autoqra.space", "autoqra.quant.eora")
TEST_CODE = ("autoqra.train.evaluation",)  # what a test-split evaluation adds


class _Bare(ast.NodeTransformer):
    """Drops what does not compute anything: imports (they say where a name comes from, not what it
    does) and docstrings."""

    def visit_Import(self, node: ast.AST) -> None:
        return None

    visit_ImportFrom = visit_Import

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list):
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            node.body = body or [ast.Pass()]
        return node


def _definitions(path: str | Path) -> list[tuple[str, str]]:
    """(name, normalised code) of every top-level statement of a Python file but imports and docstrings."""
    tree = _Bare().visit(ast.parse(Path(path).read_text()))
    out = []
    for node in tree.body:
        if isinstance(node, ast.Pass):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            name = ",".join(ast.unparse(t) for t in targets)
        else:
            name = ""
        out.append((name, ast.dump(node)))
    return out


def of_sources(*paths: str | Path) -> str:
    """sha256 over the definitions of Python files, as a sorted set: the same definitions give the same
    hash however they are spread over files, whatever the files are called and however they import each
    other; comments, docstrings and formatting do not count. A change to any definition's code does."""
    return of_data(sorted(d for path in paths for d in _definitions(path)))


@cache
def of_code(*modules: str) -> str:
    """`of_sources` of the named Python modules (`autoqra.scoring`, ...): a record computed by other code
    than today's gets another key, so no stale result is ever reused, while moving or renaming code
    (a layout change) keeps every key."""
    paths = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        paths.append(spec.origin)
    return of_sources(*paths)
