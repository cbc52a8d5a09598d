"""LoRA with per-module ranks through PEFT, checked module by module, seeded per module, saved and loaded."""

from __future__ import annotations

import math
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
    cfg = LoraConfig(r=default, lora_alpha=alpha_ratio * default, lora_dropout=dropout, bias="none",
                     target_modules=sorted(targeted), task_type="CAUSAL_LM",
                     rank_pattern=dict(targeted), alpha_pattern={m: alpha_ratio * r for m, r in targeted.items()})
    peft_model = get_peft_model(model, cfg)
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


def pad_adapter(src: Path, dst: Path, rank: int | None = None) -> int:
    """Rewrite the PEFT adapter folder `src` (per-module `rank_pattern`/`alpha_pattern`) into `dst` with one
    rank R for every module, for loaders that read one `r` and `lora_alpha` per adapter (vLLM's, SGLang's):
    R = `rank` or the largest, lora_A padded with zero rows and lora_B with zero columns, lora_B multiplied by
    s_m / s (s_m = alpha_m / r_m the module's own scale, s = lora_alpha / R), so every B A · scale, hence every
    output, is the same. `lora_alpha` = R × the ratio of the most common module's alpha to its rank. Returns R."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("use_rslora") or cfg.get("modules_to_save"):
        raise ValueError(f"{src}: DoRA, rsLoRA and modules_to_save cannot be padded to one rank")
    tensors = load_file(src / "adapter_model.safetensors")
    own = {k.rsplit(".lora_A.", 1)[0]: t.shape[0] for k, t in tensors.items() if ".lora_A." in k}

    def pattern(name: str, key: str, default: float) -> float:  # PEFT's lookup: the key is a suffix of the name
        found = [v for k, v in cfg.get(key, {}).items() if name == k or name.endswith("." + k)]
        return found[0] if found else default

    big = max(own.values())
    if rank is not None and rank < big:
        raise ValueError(f"rank={rank}: below the adapter's largest rank {big}")
    rank = rank or big
    scale = cfg["lora_alpha"] / cfg["r"]  # the padded adapter's: lora_alpha / R, lora_alpha = scale R
    out = {}
    for key, t in tensors.items():
        name = key.rsplit(".lora_", 1)[0]
        r = own[name]
        if ".lora_A." in key:
            out[key] = torch.cat([t, t.new_zeros(rank - r, t.shape[1])])
        else:
            s_m = pattern(name, "alpha_pattern", cfg["lora_alpha"]) / r
            out[key] = torch.cat([t * (s_m / scale), t.new_zeros(t.shape[0], rank - r)], dim=1)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("adapter_config.json", "adapter_model.safetensors") and f.is_file():
            shutil.copy2(f, dst / f.name)
    save_file({k: v.contiguous() for k, v in out.items()}, dst / "adapter_model.safetensors",
              metadata={"format": "pt"})
    padded = {**cfg, "r": rank, "lora_alpha": scale * rank, "rank_pattern": {}, "alpha_pattern": {}}
    (dst / "adapter_config.json").write_text(json.dumps(padded, indent=2, sort_keys=True))
    return rank
