"""The searched model as a user takes it away: a mixed-precision GPTQ checkpoint and its adapter.

`export` writes `<out>/model/` (a GPTQModel checkpoint: every module at its own bit-width through the
`dynamic` config, unquantized modules left dense), `<out>/adapter/` (a PEFT adapter with per-module
`rank_pattern`/`alpha_pattern`, trained under the first of `finetune.seeds`) and `<out>/README.md` (the
lines that load it), then reloads it as a user would and re-scores the test split. Load it with
GPTQModel, not with transformers/optimum: their loader builds every layer at one bit-width and ignores
`dynamic`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from autoqra import data, models, quant, serving
from autoqra.train import evaluation
from autoqra.train.lora import attach_lora, load_adapter

LOAD = '''```python
import torch
from gptqmodel import BACKEND, GPTQModel
from peft import PeftModel
from transformers import AutoTokenizer

base = GPTQModel.load("{model}", backend=BACKEND.TORCH, dtype=torch.bfloat16, device="cpu")  # or "cuda"
model = PeftModel.from_pretrained(base.model, "{adapter}")
tokenizer = AutoTokenizer.from_pretrained("{model}")
```
'''


def readme(summary: str, p: Any, model: Path, adapter: Path, rank: int | None) -> str:
    """The export's README: what it holds and the lines that load it (and serve it, for an engine's target)."""
    text = (f"# {summary}\n\nSearched by AutoQRA for {p.model.source}: per-module bits in "
            f"`model/quantize_config.json` (`dynamic`), ")
    if rank is None:
        text += "per-module LoRA ranks in `adapter/adapter_config.json` (`rank_pattern`)."
    else:
        text += (f"one LoRA rank ({rank}: smaller ranks zero-padded, outputs unchanged) in "
                 f"`adapter/adapter_config.json`, for export.target={p.export.target}. Serve it with:\n\n"
                 f"```sh\n{serving.command(p.export.target, str(model), str(adapter), rank)}\n```\n\nOr")
    return text + " load it with GPTQModel and PEFT:\n\n" + LOAD.format(model=model, adapter=adapter)


def load(model_dir: Path, adapter_dir: Path, device: str = "cpu") -> Any:
    """The exported model as a user loads it (GPTQModel, then PEFT)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(quant.load_packed(model_dir, device), str(adapter_dir)).eval()


def export(setup: Any, train: Path, arm_metrics: Path, out: Path) -> dict[str, Any]:
    """Export the arm trained in `train` (the finetune stage's folder) to `out`; returns the metrics: the
    test answer loss of the model as reloaded from the files, next to the arm's own."""
    p = setup.p
    spec = json.loads((train / "arm.json").read_text())
    config = setup.arm_space.parse(spec["config"])
    bits, ranks = setup.arm_space.per_module(config)
    seed = p.finetune.seeds[0]
    if out.exists():
        shutil.rmtree(out)
    model_dir, adapter_dir = out / "model", out / "adapter"
    target = serving.TARGETS[p.export.target]
    quant.write_packed(bits, Path(setup.dirs["prepare"]) / "model", setup.fidelity_run.caches, model_dir,
                       fused=target.fuses)
    peft_model = attach_lora(quant.load_packed(model_dir, "cpu"), ranks, p.lora.alpha_ratio, p.lora.dropout)
    trained = load_adapter(peft_model, train / f"seed{seed}.safetensors")
    rank = None
    if target.one_rank:  # one r per adapter: every module zero-padded to the largest (exact)
        trained.save_pretrained(str(out / "adapter_mixed"))
        rank = pad_adapter(out / "adapter_mixed", adapter_dir)
        shutil.rmtree(out / "adapter_mixed")
    else:
        trained.save_pretrained(str(adapter_dir))
    (out / "README.md").write_text(readme(spec["summary"], p, model_dir.resolve(), adapter_dir.resolve(), rank))
    test = data.read_split(Path(setup.dirs["prepare"]) / "task", "test")
    reloaded = evaluation.test_scores(load(model_dir, adapter_dir), models.load_tokenizer(model_dir), test,
                                      p.task.max_length, p.evaluate.batch_size)
    arm = json.loads(arm_metrics.read_text()) if arm_metrics.exists() else None
    own = next((r.get("answer_loss") for r in arm["seeds"] if r["seed"] == seed), None) if arm else None
    return {"summary": spec["summary"], "seed": seed, "target": p.export.target, "adapter_rank": rank,
            "reloaded_test_answer_loss": reloaded["answer_loss"],
            "arm_test_answer_loss": own, "difference": None if own is None else reloaded["answer_loss"] - own,
            "bits": {str(b): sum(v == b for v in bits.values()) for b in sorted(set(bits.values()))},
            "files": sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())}


def pad_adapter(src: Path, dst: Path, rank: int | None = None) -> int:
    """Rewrite the PEFT adapter folder `src` (per-module `rank_pattern`/`alpha_pattern`) into `dst` with one
    rank R for every module, for loaders that read one `r` and `lora_alpha` per adapter (vLLM's, SGLang's):
    R = `rank` or the largest, lora_A padded with zero rows and lora_B with zero columns, lora_B multiplied by
    s_m / s (s_m = alpha_m / r_m the module's own scale, s = lora_alpha / R), so every B A · scale, hence every
    output, is the same. `lora_alpha` = R × the ratio of the most common module's alpha to its rank. Returns R."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "adapter_config.json").read_text())
    tensors = load_file(src / "adapter_model.safetensors")
    odd = [k for k in ("use_dora", "use_rslora", "modules_to_save", "lora_bias") if cfg.get(k)]
    odd += [k for k in tensors if ".lora_A." not in k and ".lora_B." not in k][:1]
    if odd:
        raise ValueError(f"{src}: {odd[0]} cannot be padded to one rank (plain LoRA A/B weights only)")
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
