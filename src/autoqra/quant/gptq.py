"""The GPTQ pass (GPTQModel): every target linear of a model quantized at one bit-width, saved as a cache.

The only code the quantize stage (`autoqra.pipeline.quantize`) runs GPTQ with; everything that reads the
caches is the rest of `autoqra.quant`, so a change there never re-runs GPTQ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoqra.models import meta_model, target_modules
from autoqra.quant.cache import exact_name

log = logging.getLogger("autoqra")


def gptq_quantize(model_dir: str | Path, calibration: list[list[int]], bits: int, group_size: int, sym: bool,
                  desc_act: bool, damp: float, targets: list[str], out_dir: str | Path,
                  device: str = "cpu") -> dict[str, Any]:
    """Quantize every target linear at `bits` with GPTQ and save a GPTQModel checkpoint."""
    from gptqmodel import GPTQModel, QuantizeConfig

    meta = meta_model(model_dir)
    chosen = target_modules(meta, targets)
    skip = sorted(n for n, m in meta.named_modules()
                  if isinstance(m, nn.Linear) and ".layers." in n and n not in chosen)
    dynamic = {"-:" + exact_name(n): {} for n in skip} or None
    qcfg = QuantizeConfig(bits=bits, group_size=group_size, sym=sym, desc_act=desc_act, damp_percent=damp,
                          dynamic=dynamic, fallback=None, offload_to_disk=False)
    dtype = torch.float32 if device == "cpu" else torch.float16
    model = GPTQModel.load(str(model_dir), qcfg, dtype=dtype, device=device)
    calib = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration]
    model.quantize(calib, batch_size=1, calibration_data_min_length=1)
    out = Path(out_dir)
    model.save(str(out))
    log_path = out / "quant_log.csv"
    return {"modules": len(chosen), "gptq_log": log_path.name if log_path.exists() else None}


