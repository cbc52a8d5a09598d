"""The GPTQ caches and their assembly: one GPTQModel checkpoint per bit-width holding every target
linear (`qweight`, `qzeros`, `scales`, `g_idx` in GPTQ v1 format), read lazily, fingerprinted by its
tensors, and unpacked onto the exact grid with GPTQModel's own code.

Unit and module names are full Hugging Face module names (`model.layers.3.self_attn.q_proj`).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from autoqra.space import UNQUANTIZED
from autoqra.store import fingerprint

TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def exact_name(name: str) -> str:
    """A regex matching exactly one full module name (a key of GPTQModel's `dynamic` config)."""
    return "^" + re.escape(name) + "$"


def rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool = True) -> torch.Tensor:
    """Round-to-nearest on GPTQ's own grid (per output row and input group): the baseline GPTQ must beat."""
    out_f, in_f = w.shape
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    maxq = 2**bits - 1
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    if sym:
        hi = torch.maximum(hi, -lo)
        lo = torch.where(lo < 0, -hi, lo)
    scale = ((hi - lo) / maxq).clamp(min=1e-12)
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale) + zero, 0, maxq)
    return (scale * (q - zero)).reshape(out_f, in_f)


class QuantCache:
    """One bit-width's GPTQ checkpoint (`data/quantize/b{bits}`), read lazily from safetensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg = json.loads((self.path / "quantize_config.json").read_text())
        self.bits, self.group_size = int(cfg["bits"]), int(cfg["group_size"])
        self.sym, self.desc_act = bool(cfg["sym"]), bool(cfg.get("desc_act") or False)
        self.config = cfg
        self._files = sorted(self.path.glob("*.safetensors"))

    @cached_property
    def _index(self) -> dict[str, Path]:
        from safetensors import safe_open

        index = {}
        for f in self._files:
            with safe_open(f, "pt") as fh:
                index.update({k: f for k in fh.keys()})
        return index

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the packed tensors and the grid settings (not of logs or timings)."""
        metrics = self.path / "metrics.json"
        if metrics.exists() and "cache_fingerprint" in (m := json.loads(metrics.read_text())):
            return m["cache_fingerprint"]
        return cache_fingerprint(self.path)

    @cached_property
    def modules(self) -> list[str]:
        """Full names of the quantized modules in this cache."""
        return sorted(k[: -len(".qweight")] for k in self._index if k.endswith(".qweight"))

    def tensors(self, module: str) -> dict[str, torch.Tensor]:
        """The packed tensors of one module, exactly as stored."""
        from safetensors import safe_open

        out = {}
        for name in TENSORS:
            key = f"{module}.{name}"
            if key not in self._index:
                raise KeyError(f"{module}: not in the {self.bits}-bit cache {self.path}")
            with safe_open(self._index[key], "pt") as fh:
                out[name] = fh.get_tensor(key)
        return out

    def dequantized(self, module: str, in_features: int, out_features: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) of one module on exactly the stored grid, in `dtype` (see `dequantize`)."""
        return dequantize(self.tensors(module), self.bits, self.group_size, self.sym, self.desc_act,
                          in_features, out_features, dtype)


def cache_fingerprint(path: str | Path) -> str:
    cfg = json.loads((Path(path) / "quantize_config.json").read_text())
    grid = {k: cfg.get(k) for k in ("bits", "group_size", "sym", "desc_act", "format")}
    files = [fingerprint.of_file(f) for f in sorted(Path(path).glob("*.safetensors"))]
    return fingerprint.of_data({"grid": grid, "files": files})


def dequantize(tensors: dict[str, torch.Tensor], bits: int, group_size: int, sym: bool, desc_act: bool,
               in_features: int, out_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack GPTQ v1 tensors with GPTQModel's own TorchLinear, returning (out, in) in `dtype`. The
    scales are cast to `dtype` first, as GPTQModel's loader does: in bf16 the weights are bit for bit
    the ones its quantized layers compute on the fly (the packed backend, an exported model); in fp32
    they are the exact grid."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

    layer = TorchLinear(bits=bits, group_size=group_size, sym=sym, desc_act=desc_act, in_features=in_features,
                        out_features=out_features, bias=False, pack_dtype=torch.int32)
    for name, value in tensors.items():
        getattr(layer, name).data = value.clone()
    convert_gptq_v1_to_v2_format_module(layer, bits=bits, pack_dtype=torch.int32)
    layer.scales.data = layer.scales.data.to(dtype)
    layer.optimized = True  # one call per module: torch.compile would cost more than it saves
    layer.post_init()
    with torch.no_grad():
        return layer.dequantize_weight().to(dtype).T.contiguous()


def apply_dequant(model: nn.Module, bits_by_module: dict[str, int], caches: dict[int, QuantCache]) -> nn.Module:
    """Replace, in place, the weight of every module with bits < 16 by its dequantized cached weight."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, bits in bits_by_module.items():
            if bits == UNQUANTIZED:
                continue
            lin = modules[name]
            lin.weight.copy_(caches[bits].dequantized(name, lin.in_features, lin.out_features, lin.weight.dtype))
    return model
