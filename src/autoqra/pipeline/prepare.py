"""The prepare stage's work: the task's splits and the base model as a plain Hugging Face folder.

Writes `<out>/task/{train,val,test,calib}.jsonl` and `<out>/model/` (with its tokenizer); returns the
metrics (origin of the model, split sizes, prompts cut by `task.max_length`, fingerprints).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from autoqra import data, preflight
from autoqra.params import Params
from autoqra.store import fingerprint

log = logging.getLogger("autoqra")


def prepare(p: Params, out: Path) -> dict[str, Any]:
    sizes = {s: getattr(p.task, s) for s in data.SPLITS}
    splits = data.task_splits(p.task.source, p.task.families, sizes, p.task.seed, p.task.prompt_column,
                        p.task.answer_column, p.task.system_prompt)
    data.write_splits(splits, out / "task")
    preflight.check_splits(p, out / "task")
    log.info("task: %s", {s: len(r) for s, r in splits.items()})
    # the token limit is checked with the source's tokenizer, before the model is converted
    tok = preflight.chat_tokenizer(p.model.source)
    cut = {s: data.truncated(tok, rows, p.task.max_length) for s, rows in splits.items() if s != "calib"}
    from autoqra import models  # torch: after the task data are read and checked

    info = models.prepare_model(p.model.source, out / "model", p.model.tiny, splits["train"], p.model.tiny.seed)
    log.info("model: %s", info["origin"])
    if any(cut.values()):
        log.warning("examples over task.max_length=%d lose the start of their prompt: %s", p.task.max_length, cut)
    labelled = data.labelled_max(tok, splits["train"], p.task.max_length)  # the memory model's head term
    return {**info, "examples": {s: len(r) for s, r in splits.items()}, "truncated_prompts": cut,
            "train_labelled_max": labelled,
            "families": sorted({r["family"] for r in splits["train"]}),
            "model_fingerprint": fingerprint.of_dir(out / "model"),
            "task_fingerprint": fingerprint.of_dir(out / "task"),
            "tiny": dataclasses.asdict(p.model.tiny) if p.model.source == "tiny" else None}
