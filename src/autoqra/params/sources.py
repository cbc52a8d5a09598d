"""Probes of the model and task sources a user names: resolvable offline, or a one-line `ParamError`."""

from __future__ import annotations

import re
from pathlib import Path

from autoqra.params.fields import ParamError

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_source(source: str) -> None:
    """Fail fast when `model.source` cannot be resolved offline."""
    if source in ("embedded", "tiny"):
        return
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not list(path.glob("*.gguf")):
            raise ParamError(f"model.source={source!r}: folder has no config.json or .gguf file")
        if path.is_dir() and (path / "config.json").exists() and not list(path.glob("*.safetensors")):
            found = sorted(f.name for f in path.glob("*.bin"))
            raise ParamError(f"model.source={source!r}: folder has no .safetensors weights"
                             f"{f' (only {found[0]}…: PyTorch pickles)' if found else ''}; allowed: a folder with "
                             "safetensors (model.save_pretrained(folder, safe_serialization=True) writes them)")
        if path.is_dir() and (path / "tokenizer_config.json").exists() and not _has_chat_template(path):
            raise ParamError(f"model.source={source!r}: its tokenizer has no chat template (prompts and answers "
                             "are formatted with it); allowed: a chat/instruct model, or a folder whose "
                             "tokenizer_config.json sets chat_template")
        if path.is_file() and path.suffix != ".gguf":
            raise ParamError(f"model.source={source!r}: a file source must be a .gguf file")
        return
    if source.startswith(("/", ".", "~")) or not _HF_ID.match(source):
        raise ParamError(f"model.source={source!r}: no such local folder or file (allowed: 'embedded', "
                         "'tiny', a local HF folder, a .gguf file, or a cached Hugging Face id)")
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source, "config.json"), str):
        raise ParamError(f"model.source={source!r}: not in the local Hugging Face cache and the hub is "
                         "offline; download it once or give a local folder")


def _has_chat_template(folder: Path) -> bool:
    """Whether an HF folder's tokenizer carries a chat template, read from its files (no transformers):
    `tokenizer_config.json`'s `chat_template`, or the separate files transformers also reads."""
    import json

    if any((folder / name).exists() for name in ("chat_template.jinja", "chat_template.json",
                                                  "additional_chat_templates")):
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return True  # unreadable here: transformers decides when it loads the tokenizer


def check_task_source(source: str) -> None:
    """`task.source` names the synthetic generator, a dataset id, or a data file that exists."""
    if source == "synthetic" or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise ParamError(f"task.source={source!r}: no such file (expected 'synthetic', "
                         "'hf:<id>' or a .jsonl/.csv/.parquet file)")
    if path.is_file() and path.suffix not in (".jsonl", ".json", ".csv", ".parquet"):
        raise ParamError(f"task.source={source!r}: unsupported file type {path.suffix!r} "
                         "(allowed: .jsonl, .json, .csv, .parquet)")
