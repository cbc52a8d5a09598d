"""Memory measured on one real training step, term by term, to check the memory model against.

`training_step(model, batch)` runs one forward, backward and AdamW step of a model with its adapters
attached (any device) and counts, each storage once:

- `weights`, `metadata`: the target linears' weight tensors (packed `qweight` or the dense weight, and
  biases) and GPTQ's `scales`, `qzeros`, `g_idx`; `rest`: every other parameter and buffer of the base;
- `lora`: the adapters' parameters, their gradients and AdamW's two moments;
- `activations` and `lora_activations`: every tensor autograd saved for the backward pass (through
  `torch.autograd.graph.saved_tensors_hooks`), not a parameter or buffer, attributed to the adapters when
  saved inside a LoRA branch (`lora_A`, `lora_B`, `lora_dropout`), to the base otherwise;
- on CUDA, `peak_allocated`: `torch.cuda.max_memory_allocated` over the step.

These are the memory model's terms (`autoqra.memory.estimate`), so each can be compared with its prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

GPTQ_METADATA = ("scales", "qzeros", "g_idx")
LORA_PARTS = ("lora_A", "lora_B", "lora_dropout")


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Tensors:
    """Storages counted once, by kind."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = {}
        self.alive: list[torch.Tensor] = []  # held, so no later tensor reuses a counted address

    def add(self, kind: str, t: torch.Tensor | None) -> None:
        if t is None or t.device.type == "meta":
            return
        ptr, n = _storage(t)
        if ptr and ptr not in self.seen:
            self.seen.add(ptr)
            self.alive.append(t)
            self.bytes[kind] = self.bytes.get(kind, 0) + n


def _targets(model: Any, bits_by_module: dict[str, int]) -> dict[str, Any]:
    modules = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()}
    return {name: getattr(modules[name], "base_layer", modules[name]) for name in bits_by_module}


@contextlib.contextmanager
def _inside_lora(model: Any) -> Iterator[list[bool]]:
    """A flag that is True while a LoRA branch's module runs its forward."""
    flag, hooks = [False], []
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in LORA_PARTS:  # `...q_proj.lora_A.default`
            hooks.append(module.register_forward_pre_hook(lambda *a: flag.__setitem__(0, True)))
            hooks.append(module.register_forward_hook(lambda *a: flag.__setitem__(0, False)))
    try:
        yield flag
    finally:
        for h in hooks:
            h.remove()


def training_step(model: Any, batch: dict[str, torch.Tensor], bits_by_module: dict[str, int],
                  lr: float = 1e-4) -> dict[str, int]:
    """Bytes of every term of one training step of `model` (adapters attached) on `batch` (see the module
    docstring); `bits_by_module` names the target linears (their weights and metadata are the terms that
    the configuration changes)."""
    from autoqra.train.scoring import labelled_nll

    counted = _Tensors()
    for module in _targets(model, bits_by_module).values():
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            counted.add("metadata" if name in GPTQ_METADATA else "weights", t)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        counted.add("lora", p)
    for t in [*model.parameters(), *model.buffers()]:
        counted.add("rest", t)
    device = trainable[0].device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with _inside_lora(model) as in_lora:
        def pack(t: torch.Tensor) -> torch.Tensor:
            counted.add("lora_activations" if in_lora[0] else "activations", t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train()
            nll, count = labelled_nll(model, batch)
    (nll / max(count, 1)).backward()
    opt = torch.optim.AdamW(trainable, lr=lr)
    opt.step()
    for p in trainable:
        counted.add("lora", p.grad)
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.dim() > 0:  # the moments; `step` is a scalar
                counted.add("lora", v)
    opt.zero_grad(set_to_none=True)
    out = {k: counted.bytes.get(k, 0) for k in ("weights", "metadata", "rest", "lora", "activations",
                                                 "lora_activations")}
    out["total"] = sum(out.values())
    if device.type == "cuda":
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
    return out


def priced_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int,
                 max_length: int) -> dict[str, torch.Tensor]:
    """The batch the memory model prices: the `batch_size` encoded examples with the most labelled
    tokens, padded to `max_length` (the largest activations a training step of this data can save)."""
    from autoqra.data import collate

    chosen = sorted(encoded, key=lambda e: sum(y != -100 for y in e[1]))[-batch_size:]
    batch = collate(chosen, pad_id)
    pad = max_length - batch["input_ids"].shape[1]
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {k: torch.nn.functional.pad(v, (0, pad), value=fill[k]) for k, v in batch.items()}
