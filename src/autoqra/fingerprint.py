"""Content fingerprints of files, folders, JSON data and code (what record keys are built from)."""

from __future__ import annotations

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


@cache
def of_code(*modules: str) -> str:
    """sha256 over the source files of the named Python modules (`autoqra.scoring`, ...): a record
    computed by other code than today's gets another key, so no stale result is ever reused."""
    parts = []
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        parts.append([name, of_file(spec.origin)])
    return of_data(parts)
