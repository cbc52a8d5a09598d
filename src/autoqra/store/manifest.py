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

from autoqra.store.files import place, write_json
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
        _copy(journal[1], folder / JOURNAL, replace=True)
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


def _copy(source: Path, target: Path, replace: bool) -> bool:
    """Copy `source` to `target` whole (`autoqra.store.files.place`)."""
    def write(fh: Any) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh)

    return place(target, write, replace=replace, binary=True)


def _rehydrate_one(store: RecordStore, path: Path, counts: dict[str, int]) -> None:
    body = json.loads(path.read_text())
    if not isinstance(body, dict):
        raise ValueError(f"not a JSON object ({type(body).__name__})")
    counts["manifests"] += 1
    for key, record in dict(body.get("records", {})).items():
        if store.path(key).exists():
            continue
        try:
            counts["records"] += store.write_new(key, validate(record, key))  # never over a newer one
        except RecordError:
            counts["damaged"] += 1
    for key, name in dict(body.get("adapters", {})).items():
        source, target = path.parent / str(name), store.root / "adapters" / f"{key}.safetensors"
        if not source.exists():
            continue
        # a copy a kill cut short has another size: copied again (the adapter's bytes are in its key)
        cut = target.exists() and target.stat().st_size != source.stat().st_size
        if (cut or not target.exists()) and _copy(source, target, replace=cut):
            counts["adapters"] += 1
    journal = body.get("journal")
    snapshot = path.parent / str(journal["file"]) if isinstance(journal, dict) and "file" in journal else None
    # only into a cache without that journal: a live journal (a worker may be appending to it, or it
    # holds another history) is never replaced; its study's records are back either way
    if snapshot is not None and snapshot.exists() and _copy(snapshot, journal_path(store.root, str(journal["store"])),
                                                            replace=False):
        counts["journals"] += 1


def rehydrate(store: RecordStore, data: Path) -> dict[str, int]:
    """Write into `store` every record of the manifests under `data` that it lacks (each validated
    against its key), with the adapters and journals it lacks; returns the counts. An unreadable or
    malformed manifest is skipped with a warning."""
    counts = {"manifests": 0, "records": 0, "adapters": 0, "journals": 0, "damaged": 0, "skipped": 0}
    for path in manifests(data, store.root):
        try:
            _rehydrate_one(store, path, counts)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("manifest %s unreadable (%s): skipped", path, exc)
            counts["skipped"] += 1
    return counts
