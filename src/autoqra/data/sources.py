"""Task sources beyond the generator (a user's table, a cached Hugging Face dataset) and the split files.

A user table's `split` column (train/val/test) is respected; otherwise rows are split by seed.
Calibration examples come from train.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from autoqra.data.generator import SPLITS, generate, make_example
from autoqra.params import ParamError

SPLIT_NAMES = {"train": "train", "val": "val", "test": "test", "validation": "val", "valid": "val", "dev": "val"}


def _json_rows(source: str, text: str) -> list[dict[str, Any]]:
    """Rows of a .json file (a list of objects) or a .jsonl file (one object per line); anything else is
    a one-line error naming what and where."""
    if source.endswith(".json") or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParamError(f"task.source={source!r}: not JSON ({exc.msg} at line {exc.lineno}; one example per "
                             "line is a .jsonl file)") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ParamError(f"task.source={source!r}: a .json file must hold a list of examples, not "
                             f"{type(rows).__name__ if not isinstance(rows, list) else 'a list of other values'}")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ParamError(f"task.source={source!r}: line {number} is not JSON ({exc.msg}, column {exc.colno})") \
                from None
        if not isinstance(row, dict):
            raise ParamError(f"task.source={source!r}: line {number} is a {type(row).__name__}, not an example")
        rows.append(row)
    return rows


def _read_table(source: str) -> list[dict[str, Any]]:
    """The rows of a task source as written: text columns are read as text (a CSV answer `007` stays
    `007`, an empty one stays empty), never converted to numbers."""
    if source.startswith("hf:"):
        import datasets

        try:
            dsets = datasets.load_dataset(source[3:])
        except Exception as exc:  # offline: only the local datasets cache is reachable
            raise ParamError(f"task.source={source!r}: cannot load from the local datasets cache ({exc})") from None
        return [{**row, "split": s} for s, d in dsets.items() for row in d]
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        return _json_rows(source, path.read_text())
    import pandas as pd

    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        frame = pd.read_parquet(path)
    return frame.to_dict("records")


def _splits(source: str, rows: list[dict[str, Any]]) -> list[str | None]:
    """Each row's split (train/val/test; validation, valid and dev read as val), or None for none; any
    other value is a one-line error."""
    out = [None if r.get("split") in (None, "") else SPLIT_NAMES.get(str(r["split"]).strip().lower()) for r in rows]
    bad = sorted({str(r["split"]) for r, s in zip(rows, out) if s is None and r.get("split") not in (None, "")})
    if bad:
        raise ParamError(f"task.source={source!r}: split column has values {bad[:5]} (allowed: train, val, test; "
                         "validation, valid and dev mean val)")
    return out


def _empty(value: Any) -> bool:
    """A missing cell: None, NaN (a parquet or pandas null) or text of nothing but white space."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _no_empty(source: str, rows: list[dict[str, Any]], column: str, key: str, what: str) -> None:
    """Every row has a value in `column`: one line naming the column and the first offending rows (numbered
    from 1, as a reader counts data rows; a CSV's header line is not a row)."""
    bad = [i for i, r in enumerate(rows, 1) if _empty(r.get(column))]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ParamError(f"{key}={column!r}: {len(bad)} of {len(rows)} rows of {source} have an empty {what} "
                         f"(rows {shown}); allowed: a non-empty {column} in every row")


def load_user(source: str, prompt_column: str, answer_column: str, sizes: dict[str, int],
              seed: int) -> dict[str, list[dict[str, Any]]]:
    """Splits from a user table. A `split` column (train/val/test) is respected; otherwise rows are
    shuffled with `seed` and cut into val, test and train. Calibration examples come from train."""
    rows = _read_table(source)
    if not rows:
        raise ParamError(f"task.source={source!r}: no rows")
    for column, key in ((prompt_column, "task.prompt_column"), (answer_column, "task.answer_column")):
        if column not in rows[0]:
            raise ParamError(f"{key}={column!r}: no such column in {source} (columns: {', '.join(rows[0])})")
    _no_empty(source, rows, answer_column, "task.answer_column", "answer (nothing to train or score on)")
    pairs = [(str(r[prompt_column]), str(r[answer_column]), split) for r, split in zip(rows, _splits(source, rows))]
    if any(s is not None for _, _, s in pairs):
        parts = {s: [(p, a) for p, a, t in pairs if t == s] for s in ("train", "val", "test")}
    else:
        shuffled = [(p, a) for p, a, _ in pairs]
        random.Random(seed).shuffle(shuffled)
        nv, nt = sizes["val"], sizes["test"]
        parts = {"val": shuffled[:nv], "test": shuffled[nv:nv + nt], "train": shuffled[nv + nt:]}
    parts = {s: xs[:sizes[s]] for s, xs in parts.items()}
    parts["calib"] = parts["train"][:sizes["calib"]]
    out = {}
    for split in SPLITS:
        if not parts.get(split):
            raise ParamError(f"task.source={source!r}: the {split} split is empty "
                             f"({len(rows)} rows; sizes requested: {sizes})")
        out[split] = [make_example(split, i, "user", "user", p, a) for i, (p, a) in enumerate(parts[split])]
    return out


def task_splits(source: str, families: list[str], sizes: dict[str, int], seed: int, prompt_column: str = "prompt",
          answer_column: str = "answer", system_prompt: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """All four splits for a task source; with a `system_prompt` every example carries that system
    message (None: the model's chat template decides, which may add a default one)."""
    if source == "synthetic":
        splits = generate(families, sizes, seed)
    else:
        splits = load_user(source, prompt_column, answer_column, sizes, seed)
    for rows in splits.values():
        with_system(rows, system_prompt)
    return splits


def with_system(rows: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """Give every example `system_prompt` as its system message (None: leave them to the chat template)."""
    if system_prompt is not None:
        for ex in rows:
            ex["system"] = system_prompt
            ex["messages"] = [{"role": "system", "content": system_prompt}, *ex["messages"]]
    return rows


def write_splits(splits: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_split(task_dir: str | Path, split: str) -> list[dict[str, Any]]:
    with open(Path(task_dir) / f"{split}.jsonl") as fh:
        return [json.loads(line) for line in fh]
