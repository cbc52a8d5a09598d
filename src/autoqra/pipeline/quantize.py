"""The quantize stage's work: one GPTQ pass at one bit-width from the prepared folder into its cache."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from autoqra import data, devices, models, quant
from autoqra.quant.gptq import gptq_quantize
from autoqra.store import fingerprint
from autoqra.train import scoring

log = logging.getLogger("autoqra")


EVAL_BATCH = 16  # only speed depends on it: losses are token-weighted means



def quantize(p: Any, bits: int, prepare: Path, out: Path) -> dict[str, Any]:
    """The quantize stage's work: GPTQ of every target linear at `bits` from the prepared folder into the
    cache `out` (bits 16: nothing to quantize), and, with `quant.eval_examples`, the quantized model's
    held-out loss, for orientation. Returns the metrics (timings, fingerprints, validation loss)."""
    model_dir, task_dir = prepare / "model", prepare / "task"
    device, _ = devices.device_and_dtype()
    tok = models.load_tokenizer(model_dir)
    calib = data.calibration_ids(tok, task_dir, p.quant.calib_samples, p.quant.max_length)
    metrics: dict[str, Any] = {"bits": bits, "group_size": p.quant.group_size, "calib_samples": len(calib),
                               "base_fingerprint": fingerprint.of_dir(model_dir), "device": device}
    out.mkdir(parents=True, exist_ok=True)
    if bits != quant.UNQUANTIZED:
        start = time.perf_counter()
        metrics.update(gptq_quantize(model_dir, calib, bits, p.quant.group_size, p.quant.sym, p.quant.desc_act,
                                     p.quant.damp, p.quant.targets, out, device))
        metrics["gptq_s"] = round(time.perf_counter() - start, 2)
        begin = time.perf_counter()
        metrics["cache_fingerprint"] = quant.cache_fingerprint(out)
        metrics["fingerprint_s"] = round(time.perf_counter() - begin, 2)
        log.info("GPTQ %d-bit: %d modules in %.1f s", bits, metrics["modules"], metrics["gptq_s"])
    if not p.quant.eval_examples:  # the held-out pass is optional: it was 18 % of GPTQ's time (quantize_overhead)
        return metrics
    # a few validation examples in the compute dtype of fine-tuning, so the stage costs little beyond GPTQ
    begin = time.perf_counter()
    dtype = devices.compute_dtype("auto", device)
    model = models.load_model(model_dir, dtype, device)
    if bits != quant.UNQUANTIZED:
        names = models.target_modules(model, p.quant.targets)
        quant.apply_dequant(model, dict.fromkeys(names, bits), {bits: quant.QuantCache(out)})
    val = data.read_split(task_dir, "val")[:p.quant.eval_examples]
    metrics["val"] = {**scoring.loss_report(model, tok, val, p.quant.max_length, EVAL_BATCH), "examples": len(val),
                      "dtype": str(dtype)}
    metrics["val_s"] = round(time.perf_counter() - begin, 2)  # the held-out pass: loading, assembly, scoring
    log.info("%d-bit validation: %s", bits, metrics["val"])
    return metrics
