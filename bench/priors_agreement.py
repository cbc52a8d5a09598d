"""Does the fast I_q estimate rank layers like the measured one? And how well does the measured one
agree with itself?

    python bench/priors_agreement.py [--params params.yaml] [--prepare data/prepare] [--quantize data/quantize]

On the prepared model and its lowest-bit GPTQ cache, computes I_q three ways on the profile's
calibration sequences, side by side in one run, with their times: `measured` (the loss with each
linear alone quantized: one forward pass per linear), `fisher` (second-order, empirical Fisher, one
backward pass) and `taylor` (first plus second order). Prints Spearman, Kendall and top-10 overlap of
each fast estimate with the measured one, per linear and per block (the search's unit), and, as the
yardstick of "ranks as well", the measured estimate on two disjoint halves of the sequences against
each other. Writes JSON to `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import TARGETS  # sets the offline environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import load  # noqa: E402

from autoqra import data, devices, models, priors, quant  # noqa: E402
from autoqra.space import block_of  # noqa: E402
from autoqra.stats import rank_correlation  # noqa: E402
from autoqra.train import scoring  # noqa: E402


def agreement(a: dict[str, float], b: dict[str, float], top: int = 10) -> dict[str, float]:
    names = sorted(a)
    corr = rank_correlation([a[n] for n in names], [b[n] for n in names])
    best_a = set(sorted(names, key=lambda n: -a[n])[:top])
    best_b = set(sorted(names, key=lambda n: -b[n])[:top])
    return {**corr, f"top{top}_overlap": len(best_a & best_b)}


def by_block(values: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, v in values.items():
        out[block_of(name)] = out.get(block_of(name), 0.0) + v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--json", default="data/bench/priors_agreement.json")
    args = ap.parse_args()
    p = load(args.params)
    prepare = Path(args.prepare)
    device, dtype = devices.device_and_dtype()
    cache = quant.QuantCache(Path(args.quantize) / f"b{p.quant.bits[0]}")
    tok = models.load_tokenizer(prepare / "model")
    model = models.load_model(prepare / "model", dtype, device)
    modules = {n: m for n, m in model.named_modules() if n in set(cache.modules) and n.rsplit(".", 1)[-1] in TARGETS}
    examples = data.read_split(prepare / "task", "calib")[: p.profile.samples]

    def batches(rows):
        return scoring.batches(tok, rows, p.profile.max_length, p.profile.batch_size, whole_sequence=True)

    times = {}
    start = time.perf_counter()
    fast = priors.fisher_sensitivity(model, modules, cache, batches(examples))
    times["fisher"] = time.perf_counter() - start
    start = time.perf_counter()
    measured = priors.quant_sensitivity(model, modules, cache, batches(examples), progress=True)
    times["measured"] = time.perf_counter() - start
    half = len(examples) // 2
    halves = [priors.quant_sensitivity(model, modules, cache, data(rows)) for rows in (examples[:half],
                                                                                         examples[half:])]
    rows = []
    for level, f in (("linear", lambda d: d), ("block", by_block)):
        for name, est in (("fisher", {n: v["fisher"] for n, v in fast.items()}),
                          ("taylor", {n: v["taylor"] for n, v in fast.items()})):
            rows.append({"level": level, "estimate": name, "vs": "measured", **agreement(f(est), f(measured))})
        rows.append({"level": level, "estimate": "measured, half A", "vs": "measured, half B",
                     **agreement(f(halves[0]), f(halves[1]))})
    print(f"I_q on {len(modules)} linears, {len(examples)} calibration sequences, {cache.bits}-bit cache")
    print(f"time: fisher (and taylor) {times['fisher']:.1f} s, measured {times['measured']:.1f} s "
          f"({times['measured'] / times['fisher']:.0f}× longer)")
    print(f"{'level':8} {'estimate':18} {'against':18} {'spearman':>9} {'kendall':>8} {'top-10':>7}")
    for r in rows:
        print(f"{r['level']:8} {r['estimate']:18} {r['vs']:18} {r['spearman']:9.3f} {r['kendall']:8.3f} "
              f"{r['top10_overlap']:7d}")
    out = {"times": times, "rows": rows, "measured": measured, "fast": fast, "halves": halves,
           "pearson": float(np.corrcoef(list(measured.values()),
                                                   [fast[n]["fisher"] for n in measured])[0, 1])}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
