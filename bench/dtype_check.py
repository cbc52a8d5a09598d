"""Do bf16 and fp32 fidelity scores agree within seed noise, and rank configurations the same way?

    python bench/dtype_check.py [--params params.yaml] [--fidelity 24] [--seeds 0 1]

Scores a set of configurations (every feasible uniform one, the greedy importance-per-byte one and the
prior warm start) under each training seed with the frozen base in bf16 and in fp32 (adapters and
optimizer state fp32 in both), through the search's own evaluator (so bf16 records the search made are
read, not retrained). Prints per configuration the mean of each dtype, their difference next to the
seed-to-seed sd, and the rank correlation of the two dtypes' means. Writes JSON to `--json`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from common import search_parser, search_setup  # sets the offline environment

from autoqra import stats
from autoqra.search import operators as ops
from autoqra.stats import rank_correlation


def main() -> None:
    ap = search_parser(__doc__.splitlines()[0], "nothing")
    ap.add_argument("--fidelity", type=int, default=0, help="training steps (default: the middle rung)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--max-configs", type=int, default=0, help="score only the greedy, the prior and the first "
                    "uniform configurations, this many in all (0: every one)")
    ap.add_argument("--json", default="data/bench/dtype_check.json")
    args = ap.parse_args()
    p, setup, _ = search_setup(args, None)
    fids = p.search.fidelities
    fidelity = args.fidelity or fids[len(fids) // 2]
    configs = {c.describe(): c for c in [ops.greedy_config(setup.space, setup.budget, setup.prices),
                                         ops.prior_config(setup.space, setup.budget, setup.prices),
                                         *ops.feasible_uniforms(setup.space, setup.budget)]}
    if args.max_configs:
        configs = dict(list(configs.items())[:args.max_configs])
    scores: dict[str, dict[str, list[float]]] = {}
    for dtype in ("bf16", "fp32"):
        p2 = dataclasses.replace(p, finetune=dataclasses.replace(p.finetune, dtype=dtype))
        from autoqra.pipeline.setup import Setup

        ev = Setup(p2, setup.dirs).fidelity_run
        for name, config in configs.items():
            scores.setdefault(name, {})[dtype] = [ev(config, fidelity, s)["score"] for s in args.seeds]
    print(f"{p.search.metric} at {fidelity} steps, seeds {args.seeds}: bf16 vs fp32 base")
    print(f"{'configuration':40} {'bf16':>8} {'fp32':>8} {'bf16-fp32':>10} {'seed sd':>8}")
    rows = []
    for name, s in scores.items():
        b, f = np.mean(s["bf16"]), np.mean(s["fp32"])
        sd = float(np.mean([np.std(s[d], ddof=1) for d in s])) if len(args.seeds) > 1 else float("nan")
        rows.append({"config": name, "bf16": b, "fp32": f, "diff": b - f, "seed_sd": sd})
        print(f"{name[:40]:40} {b:8.4f} {f:8.4f} {b - f:+10.4f} {sd:8.4f}")
    corr = rank_correlation([r["bf16"] for r in rows], [r["fp32"] for r in rows])
    within = sum(abs(r["diff"]) <= r["seed_sd"] for r in rows)
    print(f"rank agreement of the two dtypes' means: Spearman {corr['spearman']:.3f}, Kendall {corr['kendall']:.3f} "
          f"(n={corr['n']}); |bf16 - fp32| <= seed sd for {within} of {len(rows)} configurations")
    # the same seed in both dtypes: same data order and initial adapters, so the difference is paired
    pairs = [b - f for s in scores.values() for b, f in zip(s["bf16"], s["fp32"])]
    offset, offset_se = stats.mean_se(pairs)
    median = float(np.median(pairs))
    print(f"bf16 - fp32 over all {len(pairs)} (configuration, seed) pairs: mean {offset:+.4f} ± {offset_se:.4f} "
          f"(median {median:+.4f}; bf16 higher in {sum(d > 0 for d in pairs)} of {len(pairs)})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"fidelity": fidelity, "seeds": args.seeds, "rows": rows, "rank": corr,
                                           "scores": scores, "paired": {"mean": offset, "se": offset_se,
                                                                        "median": median, "n": len(pairs)}},
                                          indent=1))


if __name__ == "__main__":
    main()
