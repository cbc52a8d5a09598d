"""The profile stage's work: the per-unit priors from the prepared folder and the GPTQ caches."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from autoqra import data, devices, models, quant
from autoqra.params import ParamError
from autoqra.priors import base_pass, fisher_sensitivity, grad_spectra, loss_table, plot, quant_divergence, table
from autoqra.space import Space
from autoqra.train import scoring

log = logging.getLogger("autoqra")


def profile(p: Any, prepare: Path, quantize: Path, out: Path, records: Path | None = None) -> dict[str, Any]:
    """The profile stage's work: every search unit's price at every bit-width of `quant.bits`
    (`profile.iq_method`: measured, the KL on answer tokens with the raw loss increase beside it, or the
    gradient estimates of the loss increase summed over the unit's linears) into `<out>/losses.parquet`;
    every target linear's gradient spectrum, with the fast estimates at each bit-width, into
    `<out>/priors.parquet`; the curves into `<out>/priors.png`. With `lora.init=eora` every bit-width is
    measured through the compensation (`Compensated`) at the ladder's lowest rank, the start every
    configuration's adapters have at least: the priors see what the search trains. The factors are the
    search's own (same key, in the record cache `records`, default `<prepare>/../records`): computed here
    once, read there. Returns the metrics."""
    bits = [b for b in p.quant.bits if b != quant.UNQUANTIZED]
    if not bits:
        raise ParamError(f"quant.bits={p.quant.bits}: no bit-width to quantize, so nothing to profile")
    missing = [b for b in bits if not (quantize / f"b{b}" / "quantize_config.json").exists()]
    if missing:
        raise ParamError(f"quant.bits contains {missing[0]} but {quantize}/b{missing[0]} holds no GPTQ cache")
    caches = {b: quant.QuantCache(quantize / f"b{b}") for b in bits}
    device, dtype = devices.device_and_dtype()
    tok = models.load_tokenizer(prepare / "model")
    model = models.load_model(prepare / "model", dtype, device)
    quantized = set(caches[bits[0]].modules)
    modules = {n: m for n, m in model.named_modules() if n in quantized}
    if not modules:
        raise ParamError(f"--quantize {quantize}: holds no quantized module of this model")
    space = Space.from_modules(modules, p.search.granularity, p.quant.bits, [1])  # units only: no rank ladder
    units = {u: list(ms) for u, ms in space.members.items()}
    examples = data.read_split(prepare / "task", "calib")[: p.profile.samples]
    answer = scoring.batches(tok, examples, p.profile.max_length, p.profile.batch_size)
    begin = time.perf_counter()
    caches, compensation = compensated(p, prepare, caches, sorted(modules), records or prepare.parent / "records")
    compensation_s = time.perf_counter() - begin
    start = time.perf_counter()
    fast = {b: fisher_sensitivity(model, modules, caches[b], answer) for b in bits}
    t_fast = time.perf_counter() - start
    if p.profile.iq_method == "measured":
        base = base_pass(model, answer)  # the unquantized model's: the same at every bit-width
        losses = {b: quant_divergence(model, modules, caches[b], answer, units, progress=True, base=base)
                  for b in bits}
        del base
    else:
        losses = {b: {u: sum(fast[b][n][p.profile.iq_method] for n in ms) for u, ms in units.items()} for b in bits}
    t_q = time.perf_counter() - start
    spectra = grad_spectra(model, modules, answer)
    t_r = time.perf_counter() - start - t_q
    frame = table(modules, spectra)
    for b in bits:
        frame[f"I_q_fisher_b{b}"] = [fast[b][n]["fisher"] for n in frame["module"]]
        frame[f"I_q_taylor_b{b}"] = [fast[b][n]["taylor"] for n in frame["module"]]
    long = loss_table(losses, p.profile.iq_method)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "priors.parquet", index=False)
    long.to_parquet(out / "losses.parquet", index=False)
    plot(long, frame, units).savefig(out / "priors.png", dpi=120)
    nuclear = {u: sum(float(spectra[n].sum()) for n in ms) for u, ms in units.items()}
    at = {b: long[long["bits"] == b].set_index("unit")["price"] for b in bits}
    log.info("most quantization-sensitive at %d bits: %s", bits[0], at[bits[0]].nlargest(3).index.tolist())
    return {"units": len(units), "modules": len(frame), "granularity": space.granularity, "bits": bits,
            "samples": len(examples), "iq_method": p.profile.iq_method, "i_q_s": round(t_q, 2),
            "compensation": compensation and {**compensation, "factors_s": round(compensation_s, 2)},
            "i_q_fast_s": round(t_fast, 2), "i_r_s": round(t_r, 2),
            "price": {f"b{b}": {"max": float(v.max()), "median": float(v.median()),
                                "negative": int((v < 0).sum())} for b, v in at.items()},
            "loss_increase_negative": {f"b{b}": int((long[long["bits"] == b]["loss_increase"] < 0).sum())
                                       for b in bits},
            "top_q": {f"b{b}": v.nlargest(3).index.tolist() for b, v in at.items()},
            "top_r": sorted(nuclear, key=lambda u: -nuclear[u])[:3],
            "spectrum_top1_share": float(pd.Series([s[0] / s.sum() if s.sum() > 0 else 0.0
                                                    for s in spectra.values()]).median())}


def compensated(p: Any, prepare: Path, caches: dict[int, Any], targets: list[str],
                records: Path) -> tuple[dict[int, Any], dict[str, Any] | None]:
    """The caches the profile measures through and what compensates them: with `lora.init=eora` each cache seen
    through its EoRA factors at the ladder's lowest rank, the factors keyed as the search keys them
    (`FidelityRun`: the prepared fingerprints, the calibration, the ladder's largest rank, the targets), so
    the search reads these and computes none; otherwise the caches themselves (`random` is a control of
    the training's start, and the priors stay uncompensated under it)."""
    if p.lora.init != "eora":
        return caches, None
    from autoqra.pipeline.setup import prepared_fingerprints
    from autoqra.quant import eora
    from autoqra.store import fingerprint
    from autoqra.store.records import RecordStore

    fps = prepared_fingerprints(prepare) or {"model": fingerprint.of_dir(prepare / "model"),
                                             "task": fingerprint.of_dir(prepare / "task")}
    factors = eora.Compensations(RecordStore(records), prepare / "model", prepare / "task", caches,
                                 (p.quant.calib_samples, p.quant.max_length), max(p.lora.ranks), targets,
                                 fps, progress=True)(set(caches))
    rank = min(p.lora.ranks)
    return {b: Compensated(c, factors[b], rank) for b, c in caches.items()}, {"init": "eora", "rank": rank}


class Compensated:
    """A GPTQ cache (`quant.QuantCache`) seen through its compensation: `dequantized` is Q(W) + B A truncated to
    `rank`, what a quantized module with an eora-started adapter of that rank computes before training. The
    profile measures each unit through it, so the priors see what the search trains."""

    def __init__(self, cache: Any, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int):
        self.cache, self.factors, self.rank, self.bits = cache, factors, rank, cache.bits

    def dequantized(self, module: str, in_features: int, out_features: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        b, a = self.factors[module]
        q = self.cache.dequantized(module, in_features, out_features)
        return (q + b[:, : self.rank].float() @ a[: self.rank].float()).to(dtype)
