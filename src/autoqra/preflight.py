"""Checks of a whole parameter set that need no more than the model's shapes: run first by every stage.

A mistake found after GPTQ or halfway through a search costs tens of minutes; these checks cost
seconds. Each failure is one `ParamError` line naming the key, the value and what is allowed.
`check(params, prepare)` reads the model's transformers config from the prepared folder, or from the
source itself before it is prepared (`models.source_config`); `check_splits` checks the task splits.
Before prepare it counts the train split's answer tokens with the source's tokenizer as the prepare stage
will, so the budget it reports is, to the byte, the one the search binds on.
"""

from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from autoqra.params import GROUP_SIZES, ParamError, Params
from autoqra.params.sources import redact, storage_url


def check_storage(value: str | None, records: str | Path = "data/records") -> None:
    """`search.storage` must be openable: a journal or SQLite file in a writable folder, or an RDB
    server that answers. Errors never print a password."""
    if value is None:
        return _writable(Path(records) / "studies", "search.storage=null (journal file in the record cache)")
    url = storage_url(value)
    shown = value if value.startswith("env:") else redact(url)
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme == "sqlite":
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            _writable(Path(path).expanduser().resolve().parent, f"search.storage={shown!r}")
        return
    if scheme not in ("postgresql", "mysql"):
        raise ParamError(f"search.storage={shown!r}: unsupported URL (allowed: null for a journal file, "
                         "sqlite:///path, postgresql://..., mysql://..., or env:NAME holding one)")
    import sqlalchemy

    args = {"connect_timeout": 3}
    try:
        with sqlalchemy.create_engine(url, connect_args=args).connect():
            pass
    except Exception as exc:  # driver missing, host unreachable, bad credentials: all one line
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ParamError(f"search.storage={shown!r}: cannot be opened ({redact(detail)})") from None


def _writable(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ParamError(f"{what}: folder {folder} cannot be written")


def check_shapes(p: Params, config: Any, labelled: int | None = None) -> dict[str, Any]:
    """Targets exist in the model, the group size divides every target's input width, and the
    budget (and every sweep cell's) can be met (the memory model needs only shapes)."""
    from autoqra import memory

    spec = memory.ModelSpec.from_config(config, p.quant.targets)
    bad = [m for m in spec.modules if m.in_features % p.quant.group_size]
    if bad:
        widths = sorted({m.in_features for m in spec.modules})
        ok = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
        raise ParamError(f"quant.group_size={p.quant.group_size}: does not divide the input width "
                         f"{bad[0].in_features} of {bad[0].name}; allowed for this model: {ok}")
    space, model, budget = memory.from_params(p, spec, labelled)  # BudgetError for an unattainable budget
    for value in p.sweep.budgets:  # every sweep cell's budget, named as the cell's key
        try:
            memory.make_budget(p.budget.kind, value, p.budget.reference, model, space)
        except ParamError as exc:
            raise ParamError(f"sweep.budgets={p.sweep.budgets}: {exc}") from None
    low, high = memory.value_range(p.budget.kind, p.budget.reference, model, space)
    return {"budget": budget.description, "value_range": [low, high], "limit": budget.limit,
            "smallest": budget.cost(space.minimum())}


def check_splits(p: Params, task_dir: str | Path) -> None:
    """Every split of a prepared task folder has examples and the calibration split holds what GPTQ and
    the priors take."""
    from autoqra.data import SPLITS

    sizes = {}
    for split in SPLITS:
        path = Path(task_dir) / f"{split}.jsonl"
        sizes[split] = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0
    check_split_sizes(p, sizes)


def check_task(p: Params) -> dict[str, list[dict[str, Any]]] | None:
    """A local or synthetic task as the prepare stage will split it (read, parsed and split in memory: 0.03 s
    for the default task, no model, no torch), so a defect in the data is one line before any heavy import.
    Returns the splits (None for a Hugging Face dataset, whose loading is left to the prepare stage)."""
    from autoqra import data

    if p.task.source.startswith("hf:"):
        return None  # loading a dataset costs what the prepare stage will pay once; its splits are checked there
    splits = data.task_splits(p.task.source, p.task.families, {s: getattr(p.task, s) for s in data.SPLITS}, p.task.seed,
                        p.task.prompt_column, p.task.answer_column, p.task.system_prompt)
    check_split_sizes(p, {s: len(rows) for s, rows in splits.items()})
    return splits


def chat_tokenizer(source: str) -> Any:
    """`model.source`'s tokenizer, which must have a chat template (prompts and answers are formatted with it)."""
    from autoqra import models

    tok = models.source_tokenizer(source)
    if not getattr(tok, "chat_template", None):
        raise ParamError(f"model.source={source!r}: its tokenizer has no chat template (prompts and answers "
                         "are formatted with it); allowed: a chat/instruct model, or a folder whose "
                         "tokenizer_config.json sets chat_template")
    return tok


def labelled_before_prepare(p: Params, splits: dict[str, list[dict[str, Any]]] | None) -> tuple[int | None, str]:
    """The most answer tokens of one training sequence, counted as the prepare stage will count them (the
    source's tokenizer on the train split), and where the figure comes from. The memory model's head term
    reads it, so the budget checked before prepare is the one the search binds on; for a Hugging Face
    dataset (not loaded before prepare) it is None: every position, an upper bound."""
    if splits is None:
        return None, ("every position of a sequence (an upper bound: a Hugging Face task's answers are counted "
                      "by the prepare stage, and the budget it binds on is lower)")
    from autoqra import data

    tok = chat_tokenizer(p.model.source)  # an answer over task.max_length is one line here (`data.TooLong`)
    return data.labelled_max(tok, splits["train"], p.task.max_length), "the train split, counted here"


def check_split_sizes(p: Params, sizes: dict[str, int]) -> None:
    for split, n in sizes.items():
        if n == 0:
            raise ParamError(f"task.source={p.task.source!r}: the {split} split is empty after splitting")
    if sizes["train"] < p.finetune.batch_size:
        raise ParamError(f"finetune.batch_size={p.finetune.batch_size}: the train split holds only {sizes['train']} "
                         f"examples; allowed: finetune.batch_size <= {sizes['train']}")
    for key, n in (("quant.calib_samples", p.quant.calib_samples), ("profile.samples", p.profile.samples)):
        if n > sizes["calib"]:
            raise ParamError(f"{key}={n}: the calibration split holds only {sizes['calib']} examples; "
                             f"allowed: {key} <= {sizes['calib']}")


def shapes_config(p: Params, prepare: str | Path | None) -> Any:
    """The base model's config for the shape checks (the prepared model's, else the source's): a Llama-family
    `config.json` read as attributes, and the tiny model's from its params, with neither transformers nor torch
    imported (that import is most of a check's time); any other model's through transformers."""
    model_dir = Path(prepare) / "model" if prepare else None
    source = Path(p.model.source).expanduser()
    folder = next((d for d in (model_dir, source) if d is not None and (d / "config.json").is_file()), None)
    if folder is not None:
        light = json_config(folder / "config.json")
        if light is not None:
            return light
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(folder)
    if p.model.source == "tiny":
        t = p.model.tiny
        return SimpleNamespace(model_type="llama", hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                               num_hidden_layers=t.layers, num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
                               vocab_size=TINY_VOCAB, tie_word_embeddings=True, attention_bias=t.attention_bias)
    from autoqra import models

    return models.source_config(p.model.source, p.model.tiny)


# the tiny model's character tokenizer (`models.char_tokenizer`): six specials and printable ASCII but three
# control characters (a test checks the count against the tokenizer)
TINY_VOCAB = 6 + len(string.printable) - 3
LIGHT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def json_config(path: Path) -> SimpleNamespace | None:
    """A config.json as attributes when it describes a Llama-family model completely (the keys the shapes
    need are written; a default transformers would fill in is not guessed), else None."""
    from autoqra.memory.spec import LLAMA_FAMILY

    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if d.get("model_type") not in LLAMA_FAMILY or "quantization_config" in d or not all(k in d for k in LIGHT_KEYS):
        return None
    return SimpleNamespace(**d)


def warn_slow_backend(backend: str) -> None:
    """The packed backend computes in bf16: on a CPU without BF16 instructions a bf16 matmul is tens of times
    slower than fp32 (77x measured on an AMD EPYC, docs/precision.md "Processors"), so a forced `packed` on a CPU is
    warned about (`auto` picks dequant there)."""
    if backend != "packed":
        return
    import torch

    if not torch.cuda.is_available():
        logging.getLogger("autoqra").warning(
            "search.backend=packed on a CPU: it computes in bf16, which is tens of times slower than the dequant "
            "backend's fp32 on a CPU without BF16 instructions; search.backend=auto picks dequant here")


def check(p: Params, prepare: str | Path | None, records: str | Path = "data/records") -> dict[str, Any]:
    """Every check that applies, cheapest first: the storage (it needs no model), shapes and budget
    (from the prepared model's config, or the source's when nothing is prepared yet), and the splits
    when they exist."""
    check_storage(p.search.storage, records)
    prepared = bool(prepare and (Path(prepare) / "task").exists())
    splits = None if prepared else check_task(p)  # nothing prepared yet: the data as they will be split
    warn_slow_backend(p.search.backend)
    config = shapes_config(p, prepare)
    metrics = Path(prepare) / "metrics.json" if prepare else None
    if metrics is not None and metrics.exists():  # the head term's bound, as the prepare stage counted it
        labelled, origin = json.loads(metrics.read_text()).get("train_labelled_max"), f"{metrics}"
    else:
        labelled, origin = labelled_before_prepare(p, splits)
    info = check_shapes(p, config, labelled)
    if prepared:
        check_splits(p, Path(prepare) / "task")
    return {**info, "labelled": labelled, "labelled_from": origin}
