"""LoRA with per-module ranks, and the training loop shared by fidelity runs and final fine-tunes."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from autoqra import fingerprint
from autoqra.scoring import labelled_nll
from autoqra.tasks import collate


class AdapterError(RuntimeError):
    """PEFT did not attach an adapter exactly as configured."""


def attach_lora(model: Any, ranks: dict[str, int], alpha_ratio: float, dropout: float, seed: int | None = None) -> Any:
    """Wrap `model` with LoRA: module `m` gets rank `ranks[m]` and alpha `alpha_ratio * rank`
    (rank 0: not targeted), then check every module got exactly that (PEFT matches `rank_pattern`
    keys by suffix and silently ignores keys that match nothing). With a `seed`, every adapter's A is
    drawn from its own generator, seeded by (seed, module name, rank): two configurations that give
    a module the same rank start it from the same A, whatever else they differ in (paired runs)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    targeted = {m: r for m, r in ranks.items() if r > 0}
    if not targeted:
        raise AdapterError("no module has a LoRA rank > 0: nothing to train")
    default = max(set(targeted.values()), key=list(targeted.values()).count)
    cfg = LoraConfig(r=default, lora_alpha=alpha_ratio * default, lora_dropout=dropout, bias="none",
                     target_modules=sorted(targeted), task_type="CAUSAL_LM",
                     rank_pattern=dict(targeted), alpha_pattern={m: alpha_ratio * r for m, r in targeted.items()})
    peft_model = get_peft_model(model, cfg)
    layers = {n.removeprefix("base_model.model."): mod for n, mod in peft_model.named_modules()
              if isinstance(mod, LoraLayer)}
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


def lr_factor(step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    """Linear warm-up over `warmup_ratio` of the steps, then cosine, linear or constant."""
    warmup = int(round(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def batch_order(lengths: list[int], batch_size: int, seed: int, pool: int = 16) -> Iterator[list[int]]:
    """Batches of example indices, endlessly, as a function of `seed` alone (so every configuration
    trained under one seed sees the same batches). Each epoch is a fresh permutation, cut into pools
    of `pool` batches; inside a pool examples are grouped by length (less padding to compute) and the
    pool's batches come in random order."""
    rng = random.Random(seed)
    n = len(lengths)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        for start in range(0, n - batch_size + 1, batch_size * pool):
            chunk = sorted(perm[start:start + batch_size * pool], key=lambda i: lengths[i])
            batches = [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
            rng.shuffle(batches)
            yield from batches


@dataclass
class TrainResult:
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0


def train(model: Any, encoded: list[tuple[list[int], list[int]]], pad_id: int, steps: int, seed: int, *,
          batch_size: int, lr: float, warmup_ratio: float, schedule: str, weight_decay: float,
          max_grad_norm: float, gradient_checkpointing: bool = False, progress: bool = False,
          on_step: Any = None, horizon: int = 0) -> TrainResult:
    """`steps` AdamW steps on the trainable parameters; data order from `seed` (the same for every
    configuration, so two configurations see the same batches). Stops at a non-finite loss.
    The learning-rate schedule spans `horizon` steps (default: `steps`); a longer horizon makes the
    run the first `steps` steps of a longer one."""
    if horizon and horizon < steps:
        raise ValueError(f"horizon={horizon}: must be 0 or at least steps={steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    order = batch_order([len(ids) for ids, _ in encoded], batch_size, seed)
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="train", disable=not progress, leave=False)
    for step in bar:
        batch = collate([encoded[i] for i in next(order)], pad_id)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, horizon or steps, warmup_ratio, schedule)
        nll, count = labelled_nll(model, batch)
        loss = nll / max(count, 1)
        if not torch.isfinite(loss):
            result.failure = f"non-finite training loss ({loss.item()}) at step {step}"
            break
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.steps += 1
        result.losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step is not None:
            on_step()
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
