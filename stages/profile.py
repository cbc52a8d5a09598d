"""profile: per-linear importance priors I_q (quantization sensitivity) and I_r (adaptation gain).

Reads the prepared model and task and the lowest-bit GPTQ cache; writes `<out>/priors.parquet`
(one row per target linear, full HF name, raw and [0, 1]-normalised values), `<out>/priors.png`
and `metrics.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from autoqra import models, priors, quant, scoring, tasks
from autoqra.config import Params
from stages import common
from stages.registry import STAGES

PARAMS = STAGES["profile"].params


def run(p: Params, prepare: Path, cache_dir: Path, out: Path) -> dict[str, Any]:
    device, dtype = models.device_and_dtype()
    cache = quant.QuantCache(cache_dir)
    tok = models.load_tokenizer(prepare / "model")
    model = models.load_model(prepare / "model", dtype, device)
    quantized = set(cache.modules)
    modules = {n: m for n, m in model.named_modules() if n in quantized}
    if not modules:
        raise SystemExit(f"error: {cache_dir} holds no quantized module of this model")
    examples = tasks.read_split(prepare / "task", "calib")[: p.profile.samples]
    whole = scoring.batches(tok, examples, p.profile.max_length, p.profile.batch_size, whole_sequence=True)
    answer = scoring.batches(tok, examples, p.profile.max_length, p.profile.batch_size)
    start = time.perf_counter()
    fast = priors.fisher_sensitivity(model, modules, cache, whole)
    t_fisher = time.perf_counter() - start
    if p.profile.iq_method == "measured":
        i_q = priors.quant_sensitivity(model, modules, cache, whole, progress=True)
    else:
        i_q = {n: v[p.profile.iq_method] for n, v in fast.items()}
    t_q = time.perf_counter() - start
    i_r = priors.grad_sensitivity(model, modules, answer)
    t_r = time.perf_counter() - start - t_q
    table = priors.table(modules, i_q, i_r)
    table["I_q_fisher_raw"] = [fast[n]["fisher"] for n in table["module"]]
    table["I_q_taylor_raw"] = [fast[n]["taylor"] for n in table["module"]]
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "priors.parquet", index=False)
    priors.plot(table).savefig(out / "priors.png", dpi=120)
    top = table.sort_values("I_q_raw", ascending=False)
    common.log.info("most quantization-sensitive: %s", top["module"].head(3).tolist())
    return {"modules": len(table), "bits": cache.bits, "samples": len(examples), "iq_method": p.profile.iq_method,
            "i_q_s": round(t_q, 2), "i_q_fisher_s": round(t_fisher, 2),
            "i_r_s": round(t_r, 2), "top_I_q": top["module"].head(5).tolist(),
            "top_I_r": table.sort_values("I_r_raw", ascending=False)["module"].head(5).tolist(),
            "I_q_raw_max": float(table["I_q_raw"].max()), "I_r_raw_max": float(table["I_r_raw"].max())}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--prepare", default="data/prepare", help="prepare stage folder")
    ap.add_argument("--cache", required=True, help="lowest-bit quantize folder (data/quantize/b{min bits})")
    ap.add_argument("--out", default="data/profile", help="output folder")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    checked_s = common.preflight(p, args.prepare)
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, Path(args.prepare), Path(args.cache), out))
    common.write_json(out / "metrics.json", {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()
