"""The training loop shared by fidelity runs and final fine-tunes: AdamW, warm-up and decay, a data order
that is a function of the seed alone (so configurations trained under one seed are paired)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from autoqra.data.encoding import collate
from autoqra.train.scoring import labelled_nll


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
    if n < batch_size:  # no batch would ever be cut: the loop below would spin for ever
        raise ValueError(f"{n} training examples: fewer than one batch of {batch_size}")
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
    optimizer: dict | None = None  # with `keep_optimizer`: the state a continuation starts from


def train(model: Any, encoded: list[tuple[list[int], list[int]]], pad_id: int, steps: int, seed: int, *,
          batch_size: int, lr: float, warmup_ratio: float, schedule: str, weight_decay: float,
          max_grad_norm: float, gradient_checkpointing: bool = False, progress: bool = False,
          on_step: Any = None, horizon: int = 0, start: int = 0, optimizer_state: dict | None = None,
          keep_optimizer: bool = False) -> TrainResult:
    """AdamW steps `start` .. `steps` - 1 on the trainable parameters; data order from `seed` (the same for
    every configuration, so two configurations see the same batches). Stops at a non-finite loss.
    The learning-rate schedule spans `horizon` steps (default: `steps`); a longer horizon makes the
    run the first `steps` steps of a longer one. From `start` > 0 with the `optimizer_state` of a run
    cut there (and the model's weights and torch's random state as that run left them), the run goes on
    exactly as the uncut one would (the same batches, learning rates and moments); `keep_optimizer`
    returns the optimizer's state for such a continuation."""
    if horizon and horizon < steps:
        raise ValueError(f"horizon={horizon}: must be 0 or at least steps={steps}")
    if not 0 <= start <= steps or (start > 0) != (optimizer_state is not None):
        raise ValueError(f"start={start}: a continuation needs 0 < start <= steps={steps} and an optimizer state")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    order = batch_order([len(ids) for ids, _ in encoded], batch_size, seed)
    for _ in range(start):  # the batches the cut run trained on
        next(order)
    result = TrainResult()
    begin = time.perf_counter()
    model.train()
    bar = tqdm(range(start, steps), desc="train", disable=not progress, leave=False)
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
    result.seconds = time.perf_counter() - begin
    if keep_optimizer:
        result.optimizer = opt.state_dict()
    return result
