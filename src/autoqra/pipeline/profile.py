"""The profile stage's work: the per-unit importance priors from the prepared folder and a GPTQ cache."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from autoqra import data, devices, models, quant
from autoqra.params import ParamError
from autoqra.priors import fisher_sensitivity, grad_sensitivity, plot, quant_sensitivity, table
from autoqra.train import scoring

log = logging.getLogger("autoqra")


def profile(p: Any, prepare: Path, cache_dir: Path, out: Path) -> dict[str, Any]:
    """The profile stage's work: I_q (`profile.iq_method`) and I_r of every target linear from the prepared
    folder and the lowest-bit cache, into `<out>/priors.parquet` (raw and normalised, with the fast I_q
    estimates next to it) and `<out>/priors.png`. Returns the metrics."""
    device, dtype = devices.device_and_dtype()
    cache = quant.QuantCache(cache_dir)
    tok = models.load_tokenizer(prepare / "model")
    model = models.load_model(prepare / "model", dtype, device)
    quantized = set(cache.modules)
    modules = {n: m for n, m in model.named_modules() if n in quantized}
    if not modules:
        raise ParamError(f"--cache {cache_dir}: holds no quantized module of this model")
    examples = data.read_split(prepare / "task", "calib")[: p.profile.samples]
    whole = scoring.batches(tok, examples, p.profile.max_length, p.profile.batch_size, whole_sequence=True)
    answer = scoring.batches(tok, examples, p.profile.max_length, p.profile.batch_size)
    start = time.perf_counter()
    fast = fisher_sensitivity(model, modules, cache, whole)
    t_fisher = time.perf_counter() - start
    if p.profile.iq_method == "measured":
        i_q = quant_sensitivity(model, modules, cache, whole, progress=True)
    else:
        i_q = {n: v[p.profile.iq_method] for n, v in fast.items()}
    t_q = time.perf_counter() - start
    i_r = grad_sensitivity(model, modules, answer)
    t_r = time.perf_counter() - start - t_q
    frame = table(modules, i_q, i_r)
    frame["I_q_fisher_raw"] = [fast[n]["fisher"] for n in frame["module"]]
    frame["I_q_taylor_raw"] = [fast[n]["taylor"] for n in frame["module"]]
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "priors.parquet", index=False)
    plot(frame).savefig(out / "priors.png", dpi=120)
    top = frame.sort_values("I_q_raw", ascending=False)
    log.info("most quantization-sensitive: %s", top["module"].head(3).tolist())
    return {"modules": len(frame), "bits": cache.bits, "samples": len(examples), "iq_method": p.profile.iq_method,
            "i_q_s": round(t_q, 2), "i_q_fisher_s": round(t_fisher, 2),
            "i_r_s": round(t_r, 2), "top_I_q": top["module"].head(5).tolist(),
            "top_I_r": frame.sort_values("I_r_raw", ascending=False)["module"].head(5).tolist(),
            "I_q_raw_max": float(frame["I_q_raw"].max()), "I_r_raw_max": float(frame["I_r_raw"].max())}
