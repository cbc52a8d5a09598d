"""Packed checkpoints: a real mixed-precision GPTQ checkpoint assembled from the caches (per-module bits
in GPTQModel's `dynamic` config), loaded with GPTQModel's trainable quantized layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from autoqra.quant.cache import QuantCache, exact_name
from autoqra.space import UNQUANTIZED, fused_layers

_BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")


def write_packed(bits_by_module: dict[str, int], base_dir: str | Path, caches: dict[int, QuantCache],
                 out_dir: str | Path, fused: bool = False) -> Path:
    """A mixed-precision GPTQ checkpoint: each module's tensors copied from its bit-width's cache (its
    bias, which GPTQ leaves alone, from the base), per-module bits in GPTQModel's `dynamic` config;
    bits 16 keeps the base weight unquantized. With `fused` (for vLLM and SGLang), a rule for each fused layer
    too (they match `dynamic` against `...qkv_proj` and `...gate_up_proj`, never `q_proj`: its members must
    agree), and the config in `config.json`'s `quantization_config`, where they look for it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quantized = {m for m, b in bits_by_module.items() if b != UNQUANTIZED}
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for key in fh.keys():
                module, name = key.rsplit(".", 1)
                if module not in quantized or name != "weight":  # a quantized module keeps its bias
                    tensors[key] = fh.get_tensor(key)
    for module in sorted(quantized):
        for name, value in caches[bits_by_module[module]].tensors(module).items():
            tensors[f"{module}.{name}"] = value
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    for name in _BASE_FILES:
        if (Path(base_dir) / name).exists():
            shutil.copy2(Path(base_dir) / name, out / name)
    ref = next(iter(caches.values())).config if caches else {}
    named = dict(sorted(bits_by_module.items()))
    if fused:
        for unit, members in fused_layers(bits_by_module).items():
            agreed = {bits_by_module[m] for m in members}
            if len(agreed) > 1:
                raise ValueError(f"{unit}: fused by the serving engine but its linears differ in bits {sorted(agreed)}")
            named[unit] = agreed.pop()
    dynamic = {("-:" if b == UNQUANTIZED else "+:") + exact_name(m): ({} if b == UNQUANTIZED else {"bits": b})
               for m, b in named.items()}
    cfg = {**ref, "bits": max((b for b in bits_by_module.values() if b != UNQUANTIZED), default=4),
           "dynamic": dynamic}
    (out / "quantize_config.json").write_text(json.dumps(cfg, indent=2))
    if fused and (out / "config.json").exists():  # engines detect GPTQ from config.json's quantization_config
        hf = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**hf, "quantization_config": cfg}, indent=2))
    return out


def load_packed(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A packed checkpoint as a trainable HF model with GPTQModel's quantized layers."""
    from gptqmodel import BACKEND, GPTQModel

    # On the CPU only the pure-torch kernel trains for every bit-width and group size; on a GPU let
    # GPTQModel choose among its trainable kernels.
    from autoqra.devices import attention

    backend = BACKEND.AUTO_TRAINABLE if device.startswith("cuda") else BACKEND.TORCH
    model = GPTQModel.load(str(path), backend=backend, dtype=dtype, device=device).model
    model.set_attn_implementation(attention(device))
    return model
