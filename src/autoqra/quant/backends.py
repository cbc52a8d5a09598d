"""Weight backends: turn a per-module bit assignment into a model to fine-tune, from the GPTQ caches.

Both have one method, `build(bits_by_module, workdir) -> model` (frozen base, no adapters yet):

- `DequantBackend`: every quantized module's weight is its cached GPTQ grid, dequantized once (with
  GPTQModel's own unpacking, in the compute dtype exactly as its layers do) and kept in memory; a build shares the base
  model's tensors and these cached weights (frozen, never written to), so it costs neither a disk
  read nor a dequantization after the first time. Fastest on the CPU.
- `PackedBackend`: a real mixed-precision GPTQ checkpoint (per-module bits in GPTQModel's `dynamic`
  config) loaded with GPTQModel's trainable quantized layers, their matmul routed through
  `quant.matmul.PackedMatmul` (no dense weight saved for backward): real memory savings (a GPU run).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoqra import models, quant
from autoqra.quant.matmul import keep_packed


class DequantBackend:
    name = "dequant"

    def __init__(self, model_dir: str | Path, caches: dict[int, quant.QuantCache], device: str, dtype: torch.dtype):
        self.model_dir, self.caches, self.device, self.dtype = Path(model_dir), caches, device, dtype
        self._template: nn.Module | None = None
        self._weights: dict[tuple[str, int], torch.Tensor] = {}  # (module, bits) -> dequantized weight

    @property
    def template(self) -> nn.Module:
        """The base model, loaded once, frozen."""
        if self._template is None:
            self._template = models.load_model(self.model_dir, self.dtype, self.device)
            for p in self._template.parameters():
                p.requires_grad_(False)
        return self._template

    def weight(self, module: str, bits: int, lin: nn.Linear) -> torch.Tensor:
        key = (module, bits)
        if key not in self._weights:
            w = self.caches[bits].dequantized(module, lin.in_features, lin.out_features, self.dtype)
            self._weights[key] = w.to(self.device)
        return self._weights[key]

    def assemble(self, bits_by_module: dict[str, int], workdir: Path | None = None) -> nn.Module:
        template = self.template
        # share every tensor with the template (deepcopy copies modules, not the frozen weights)
        memo = {id(t): t for t in [*template.parameters(), *template.buffers()]}
        model = copy.deepcopy(template, memo)
        modules = dict(model.named_modules())
        for name, bits in bits_by_module.items():
            if bits != quant.UNQUANTIZED:
                lin = modules[name]
                lin.weight = nn.Parameter(self.weight(name, bits, lin), requires_grad=False)
        return model


class PackedBackend:
    name = "packed"

    def __init__(self, model_dir: str | Path, caches: dict[int, quant.QuantCache], device: str, dtype: torch.dtype):
        self.model_dir, self.caches, self.device, self.dtype = Path(model_dir), caches, device, dtype

    def assemble(self, bits_by_module: dict[str, int], workdir: Path | None = None) -> nn.Module:
        if workdir is None:
            raise ValueError("the packed backend writes a checkpoint: give it a workdir")
        path = quant.write_packed(bits_by_module, self.model_dir, self.caches, Path(workdir) / "packed")
        model = quant.load_packed(path, self.device, self.dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        keep_packed(model)  # no dense weight alive between forward and backward
        return model


BACKENDS = {"dequant": DequantBackend, "packed": PackedBackend}


def weight_backend(name: str, model_dir: str | Path, caches: dict[int, quant.QuantCache], device: str,
         dtype: torch.dtype) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"search.backend={name!r}: must be one of {', '.join(BACKENDS)}")
    return BACKENDS[name](model_dir, caches, device, dtype)
