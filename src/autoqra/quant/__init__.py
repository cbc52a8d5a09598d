"""GPTQ through GPTQModel: quantize once per bit-width, then assemble any mixed configuration.

- `gptq`: the GPTQ pass (the quantize stage's only GPTQ code), writing one cache per bit-width;
- `cache`: a cache read lazily, its fingerprint, and its modules unpacked onto the exact grid;
- `packed`: a mixed-precision checkpoint assembled from the caches, loaded with GPTQModel's layers;
- `backends`: a per-module bit assignment turned into a model to fine-tune, `packed` (GPTQModel's
  quantized layers: real memory savings, what a GPU run uses) or `dequant` (the same grid dequantized
  once into plain `nn.Linear` weights: fastest on the CPU).
"""

from autoqra.quant.cache import (
    TENSORS,
    QuantCache,
    apply_dequant,
    cache_fingerprint,
    dequantize,
    rtn,
)
from autoqra.quant.packed import load_packed, write_packed
from autoqra.space import UNQUANTIZED

__all__ = ["TENSORS", "UNQUANTIZED", "QuantCache", "apply_dequant", "cache_fingerprint", "dequantize", "load_packed",
           "rtn", "write_packed"]
