"""LoRA with per-module ranks through PEFT, checked module by module, seeded per module, saved and loaded."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from autoqra.store import fingerprint


class AdapterError(RuntimeError):
    """PEFT did not attach an adapter exactly as configured."""


def attach_lora(model: Any, ranks: dict[str, int], alpha_ratio: float, dropout: float, seed: int | None = None) -> Any:
    """Wrap `model` with LoRA: module `m` gets rank `ranks[m]` and alpha `alpha_ratio * rank`
    (rank 0: not targeted), then check every module got exactly that (PEFT matches `rank_pattern`
    keys by suffix and silently ignores keys that match nothing). With a `seed`, every adapter's A is
    drawn from its own generator, seeded by (seed, module name, rank): two configurations that give
    a module the same rank start it from the same A, whatever else they differ in (paired runs)."""
    from peft import LoraConfig, get_peft_model

    targeted = {m: r for m, r in ranks.items() if r > 0}
    if not targeted:
        raise AdapterError("no module has a LoRA rank > 0: nothing to train")
    default = max(set(targeted.values()), key=list(targeted.values()).count)
    alphas = {m: alpha_ratio * r for m, r in targeted.items()}
    cfg = LoraConfig(r=default, lora_alpha=alpha_ratio * default, lora_dropout=dropout, bias="none",
                     target_modules=sorted(targeted), task_type="CAUSAL_LM",
                     rank_pattern=_by_value(targeted, default), alpha_pattern=_by_value(alphas, alpha_ratio * default))
    peft_model = get_peft_model(model, cfg)
    # what the saved adapter_config.json says (the loaders of autoqra.serving read it): one key per module
    peft_model.peft_config["default"].rank_pattern, peft_model.peft_config["default"].alpha_pattern = targeted, alphas
    layers = lora_layers(peft_model)
    for name, rank in ranks.items():
        layer = layers.get(name)
        if rank == 0:
            if layer is not None:
                raise AdapterError(f"{name}: has an adapter but its rank is 0")
            continue
        if layer is None:
            raise AdapterError(f"{name}: no adapter attached (wanted rank {rank})")
        got_r, got_alpha = layer.r["default"], layer.lora_alpha["default"]
        if got_r != rank or not math.isclose(got_alpha, alpha_ratio * rank):
            raise AdapterError(f"{name}: adapter has r={got_r}, alpha={got_alpha}; wanted r={rank}, "
                               f"alpha={alpha_ratio * rank}")
    extra = set(layers) - set(ranks)
    if extra:
        raise AdapterError(f"adapters on modules outside the configuration: {sorted(extra)[:3]}")
    if seed is not None:
        init_lora(layers, seed)
    return peft_model


def _by_value(values: dict[str, float], default: float) -> dict[str, float]:
    """A `rank_pattern`/`alpha_pattern` with one key per value other than `default`: the alternation of the
    exact names of its modules. PEFT tries every key on every module as a regex (`get_pattern_key`), so one
    key per module costs modules² matches: 210 modules took 5–8 s per attach, more than 8 training steps."""
    names: dict[float, list[str]] = {}
    for module, value in values.items():
        if value != default:
            names.setdefault(value, []).append(module)
    return {"|".join(re.escape(m) for m in sorted(ms)): value for value, ms in names.items()}


def lora_layers(peft_model: Any) -> dict[str, Any]:
    """The PEFT LoRA layers of a model, by the base model's module names."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): mod for n, mod in peft_model.named_modules()
            if isinstance(mod, LoraLayer)}


@torch.no_grad()
def init_lora(layers: dict[str, Any], seed: int) -> None:
    """PEFT's default initialisation (A Kaiming-uniform, B zero), each A from a generator of its own."""
    for name, layer in layers.items():
        a = layer.lora_A["default"].weight
        gen = torch.Generator().manual_seed(int(fingerprint.of_data([seed, name, a.shape[0]])[:15], 16))
        w = torch.empty(a.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
        a.copy_(w)
        layer.lora_B["default"].weight.zero_()


def save_adapter(model: Any, path: Path) -> None:
    """The trained LoRA weights (fp32), written atomically and durably (synced before the rename)."""
    import os

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def adapter_ok(path: Path) -> bool:
    """Whether `path` holds a readable adapter file (a crash can leave a zero-length or cut one)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as fh:
            return bool(list(fh.keys()))
    except Exception:  # missing, empty, truncated header: not an adapter
        return False


def load_adapter(model: Any, path: Path) -> Any:
    """Load weights written by `save_adapter` into a model with the same adapters attached."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    params = dict(model.named_parameters())
    mismatch = sorted({n for n in params if "lora_" in n} ^ set(tensors))
    if mismatch:
        raise ValueError(f"{path}: adapter does not match the model's adapters (e.g. {mismatch[0]})")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].dtype))
    return model
