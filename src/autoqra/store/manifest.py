"""Manifests: the records a stage used, kept in the stage's own output, so that the record cache (no
pipeline's output) travels with the outputs and can be rebuilt from them.

A manifest (`records.json` in a stage's output folder) holds every record the stage read or wrote, the
adapter files of its own output that belong to records (by key), and a snapshot of its Optuna journal
(`study.journal` beside it, with the name of the cache's journal it copies). `rehydrate` writes into the
cache every manifest record it lacks, copies the adapters and journals it lacks, and leaves the rest: a
`dvc pull` (or a copied folder) followed by any stage, or `autoqra records rehydrate`, has every record
of the pulled outputs back, and a search resumes its study.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from autoqra.store.files import write_json
from autoqra.store.records import RecordError, RecordStore, validate

NAME = "records.json"
JOURNAL = "study.journal"
log = logging.getLogger("autoqra")


def journal_path(cache: Path, store: str) -> Path:
    """The cache's Optuna journal of the studies of `store` (`evolve`, `refine`, `cells/<cell>`)."""
    return cache / "studies" / f"{store}.journal"


def write(folder: Path, store: RecordStore, keys: set[str], adapters: dict[str, str] | None = None,
          journal: tuple[str, Path] | None = None) -> dict[str, int]:
    """The manifest of a stage's output `folder`: the cached records of `keys` (those it has),
    `adapters` ({key: file name inside `folder`}) and `journal` ((store name, the cache's journal),
    snapshotted beside the manifest). Returns what it holds."""
    records = {k: r for k in sorted(keys) if (r := store.read(k)) is not None}
    body: dict[str, Any] = {"records": records, "adapters": dict(adapters or {})}
    if journal is not None and journal[1].exists():
        shutil.copyfile(journal[1], folder / JOURNAL)
        body["journal"] = {"store": journal[0], "file": JOURNAL}
    write_json(folder / NAME, body)
    return {"records": len(records), "adapters": len(body["adapters"])}


def manifests(data: Path, skip: Path) -> list[Path]:
    """Every manifest under `data` (the pipeline's outputs), not looking inside `skip` (the cache)."""
    out = []
    skip = skip.resolve()
    for root, dirs, files in os.walk(data):
        dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
        if NAME in files:
            out.append(Path(root) / NAME)
    return sorted(out)


def rehydrate(store: RecordStore, data: Path) -> dict[str, int]:
    """Write into `store` every record of the manifests under `data` that it lacks (each validated
    against its key), with the adapters and journals it lacks; returns the counts."""
    counts = {"manifests": 0, "records": 0, "adapters": 0, "journals": 0, "damaged": 0}
    for path in manifests(data, store.root):
        try:
            body = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("manifest %s unreadable (%s): skipped", path, exc)
            continue
        counts["manifests"] += 1
        for key, record in body.get("records", {}).items():
            if store.path(key).exists():
                continue
            try:
                store.write(key, validate(record, key))
                counts["records"] += 1
            except RecordError:
                counts["damaged"] += 1
        for key, name in body.get("adapters", {}).items():
            target = store.root / "adapters" / f"{key}.safetensors"
            if not target.exists() and (path.parent / name).exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path.parent / name, target)
                counts["adapters"] += 1
        journal = body.get("journal")
        snapshot = path.parent / journal["file"] if journal else None
        if snapshot is not None and snapshot.exists():
            target = journal_path(store.root, journal["store"])
            # journals only grow: a longer snapshot holds everything a shorter journal does
            if not target.exists() or target.stat().st_size < snapshot.stat().st_size:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(snapshot, target)
                counts["journals"] += 1
    return counts
