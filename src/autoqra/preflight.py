"""Checks of a whole parameter set that need no more than the model's shapes: run first by every stage.

A mistake found after GPTQ or halfway through a search costs tens of minutes; these checks cost
seconds. Each failure is one `ParamError` line naming the key, the value and what is allowed.
`check(params, config)` takes the model's transformers config (from the prepared folder, or from
the source itself before it is prepared: `models.source_config`); `check_splits` the task splits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from autoqra.config import ParamError, Params


def check_storage(url: str | None, search_dir: str | Path = "data/search") -> None:
    """`search.storage` must be openable: a journal or SQLite file in a writable folder, or an RDB
    server that answers."""
    if url is None:
        return _writable(Path(search_dir), "search.storage=null (journal file under the search folder)")
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme == "sqlite":
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            _writable(Path(path).expanduser().resolve().parent, f"search.storage={url!r}")
        return
    if scheme not in ("postgresql", "mysql"):
        raise ParamError(f"search.storage={url!r}: unsupported URL (allowed: null for a journal file, "
                         "sqlite:///path, postgresql://..., mysql://...)")
    import sqlalchemy

    args = {"connect_timeout": 3}
    try:
        with sqlalchemy.create_engine(url, connect_args=args).connect():
            pass
    except Exception as exc:  # driver missing, host unreachable, bad credentials: all one line
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ParamError(f"search.storage={url!r}: cannot be opened ({detail})") from None


def _writable(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ParamError(f"{what}: folder {folder} cannot be written")


def check_shapes(p: Params, config: Any) -> None:
    """Targets exist in the model, the group size divides every target's input width, and the
    budget can be met (the memory model needs only shapes)."""
    from autoqra.memory import MemoryModel, ModelSpec, Training, make_budget
    from autoqra.space import Space

    spec = ModelSpec.from_config(config, p.quant.targets)
    bad = [m for m in spec.modules if m.in_features % p.quant.group_size]
    if bad:
        widths = sorted({m.in_features for m in spec.modules})
        ok = [g for g in (16, 32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        raise ParamError(f"quant.group_size={p.quant.group_size}: does not divide the input width "
                         f"{bad[0].in_features} of {bad[0].name}; allowed for this model: {ok}")
    space = Space.build([m.name for m in spec.modules], p.search.granularity, p.quant.bits, p.lora.ranks)
    training = Training(batch_size=p.finetune.batch_size, seq_len=p.task.max_length,
                        gradient_checkpointing=p.finetune.gradient_checkpointing, lora_dropout=p.lora.dropout > 0)
    make_budget(p.budget.kind, p.budget.value, p.budget.reference, MemoryModel(spec, p.quant.group_size, training),
                space)


def check_splits(p: Params, task_dir: str | Path) -> None:
    """Every split has examples and the calibration split holds what GPTQ and the priors take."""
    from autoqra.tasks import SPLITS

    sizes = {}
    for split in SPLITS:
        path = Path(task_dir) / f"{split}.jsonl"
        sizes[split] = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0
        if sizes[split] == 0:
            raise ParamError(f"task.source={p.task.source!r}: the {split} split is empty after splitting")
    for key, n in (("quant.calib_samples", p.quant.calib_samples), ("profile.samples", p.profile.samples)):
        if n > sizes["calib"]:
            raise ParamError(f"{key}={n}: the calibration split holds only {sizes['calib']} examples; "
                             f"allowed: {key} <= {sizes['calib']}")


def check(p: Params, config: Any, search_dir: str | Path = "data/search", task_dir: str | Path | None = None) -> None:
    """Every check that applies: storage, shapes and budget, and the splits when they exist."""
    check_storage(p.search.storage, search_dir)
    check_shapes(p, config)
    if task_dir is not None and Path(task_dir).exists():
        check_splits(p, task_dir)
