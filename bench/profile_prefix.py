"""What starting each unit's pass at its first decoder layer saves the profile: its KL, timed both ways.

    python bench/profile_prefix.py [--params params.yaml] [--prepare data/prepare] [--quantize data/quantize]
                                   [--bits 3] [--repeats 1]

The profile stage's measured I_q (`priors.quant_divergence`) at `--bits` on the profile's calibration
answers and units, run with the layers before each unit replayed from the base pass (what the stage does)
and with every layer run (`starting_at` replaced by a no-op), alternately, `--repeats` times each, in one
process. Prints both times, their ratio, and whether the two results are identical (they must be).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import common  # noqa: F401  (offline environment, the stages' helpers on the path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from autoqra import data, devices, models, priors, quant
    from autoqra.space import Space
    from autoqra.train import scoring
    from stages import params as P

    p = P.validated(P.read(args.params))
    cache_dir = Path(args.quantize) / f"b{args.bits}"
    if not (cache_dir / "quantize_config.json").exists():
        raise SystemExit(f"error: --bits {args.bits}: no GPTQ cache in {cache_dir} (run the quantize stage)")
    cache = quant.QuantCache(cache_dir)
    device, dtype = devices.device_and_dtype()
    model_dir = Path(args.prepare) / "model"
    tok, model = models.load_tokenizer(model_dir), models.load_model(model_dir, dtype, device)
    modules = {n: m for n, m in model.named_modules() if n in set(cache.modules)}
    space = Space.from_modules(modules, p.search.granularity, p.quant.bits, [1])
    units = {u: list(ms) for u, ms in space.members.items()}
    examples = data.read_split(Path(args.prepare) / "task", "calib")[: p.profile.samples]
    answers = scoring.batches(tok, examples, p.profile.max_length, p.profile.batch_size)
    own = priors.starting_at
    times: dict[str, list[float]] = {"skipping": [], "full": []}
    results = {}
    for _ in range(args.repeats):
        for way in times:
            priors.starting_at = own if way == "skipping" else (lambda *a: nullcontext())
            start = time.perf_counter()
            results[way] = priors.quant_divergence(model, modules, cache, answers, units)
            times[way].append(time.perf_counter() - start)
    priors.starting_at = own
    best = {way: min(t) for way, t in times.items()}
    print(f"{len(units)} units ({space.granularity}), {args.bits} bits, {len(examples)} calibration sequences, "
          f"{dtype}, {device}")
    print(f"every layer run: {best['full']:.1f} s; from each unit's first layer: {best['skipping']:.1f} s; "
          f"full / skipping {best['full'] / best['skipping']:.2f}x; identical results: "
          f"{results['full'] == results['skipping']}")


if __name__ == "__main__":
    main()
