"""Stage 2 (trust-region BO) against random local search, from the same stage-1 history.

    python bench/refine_synthetic.py [--seeds 5] [--units 12] [--sigma 0.1] [--evaluations 12]

For each seed: stage 1 (`evolve`) on a synthetic objective with interacting units and noisy scores,
then, from its history, (a) `refine` with `--evaluations` proposals and (b) random local search with
the same number of evaluations: one-unit moves (one unit's bits or rank one rung) around the best
configuration so far, repaired to the budget, a move kept when its mean over the same two seeds is
lower. Both start from the stage-1 pick and are judged by the true (noise-free) value of the final
incumbent. Prints one row per seed and the mean improvement; writes JSON to `--json`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from common import synthetic_problem

from autoqra.search import EvolveSettings, RefineSettings, evolve, refine
from autoqra.search import trust_region as tr
from autoqra.search.optuna import history
from autoqra.search.repair import repair
from autoqra.search.synthetic import SyntheticObjective


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--units", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=0.1, help="sd of the evaluation noise")
    ap.add_argument("--evaluations", type=int, default=12, help="proposals of each method (x 2 seeds)")
    ap.add_argument("--stage1-steps", type=int, default=80, help="stage 1's step budget")
    ap.add_argument("--json", default="data/bench/refine_synthetic.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    u = args.units
    space, budget = synthetic_problem(u)
    rows = []
    print(f"{u} units, noise sd {args.sigma}, stage 1: {args.stage1_steps} steps, then {args.evaluations} "
          "evaluations x 2 seeds per method; true value of the incumbent (lower is better)")
    print(f"{'seed':>4} {'stage 1':>8} {'refine':>8} {'local':>8} {'kernel':>12} {'held-out rho':>12} {'time':>7}")
    for seed in range(args.seeds):
        obj = SyntheticObjective(space, seed, sigma=args.sigma, shared=0.6)
        prices = obj.priors()
        st = EvolveSettings(population=12, offspring=6, candidates=60, generations=50, fidelities=(1, 3, 9), eta=3,
                      max_steps=args.stage1_steps, seed=seed, seeds_per_rung=(1, 1, 2))
        study, _ = evolve(obj, space, budget, prices, st)
        hist = history(study, space)
        start = time.perf_counter()
        rs = RefineSettings(evaluations=args.evaluations, fidelity=9, seeds=(seed, seed + 1), seed=seed)
        study2, plan = refine(obj, space, budget, hist, rs, prices)
        incumbent = plan.incumbent(history(study2, space))[0]
        seconds = time.perf_counter() - start
        stage1 = plan.starts()[0]
        rng = np.random.default_rng(seed + 7)
        best, best_mean = stage1, float(np.mean([obj(stage1, 9, s) for s in rs.seeds]))
        for _ in range(args.evaluations):
            c = repair(tr.sample(space, best, 1, 1, rng)[0], budget, prices)
            mean = float(np.mean([obj(c, 9, s) for s in rs.seeds]))
            if mean < best_mean:
                best, best_mean = c, mean
        kernel, quality = plan.kernel()
        row = {"seed": seed, "stage1": obj.true_value(stage1), "refine": obj.true_value(incumbent),
               "local": obj.true_value(best), "kernel": kernel,
               "held_out_spearman": quality[kernel]["spearman"], "seconds": seconds,
               "within_budget": budget.feasible(incumbent)}
        rows.append(row)
        print(f"{seed:>4} {row['stage1']:>8.3f} {row['refine']:>8.3f} {row['local']:>8.3f} {kernel:>12} "
              f"{row['held_out_spearman']:>12.2f} {seconds:>6.0f}s", flush=True)
    gain_r = np.array([r["stage1"] - r["refine"] for r in rows])
    gain_l = np.array([r["stage1"] - r["local"] for r in rows])
    se = lambda a: float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")  # noqa: E731
    wins = int(sum(r["refine"] < r["local"] for r in rows))
    print(f"improvement over the stage-1 pick (true value, mean ± se over {len(rows)} seeds): "
          f"refine {gain_r.mean():.3f} ± {se(gain_r):.3f}, local search {gain_l.mean():.3f} ± {se(gain_l):.3f}; "
          f"refine ends lower than local search in {wins}/{len(rows)} seeds")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "wins": wins}, indent=1))


if __name__ == "__main__":
    main()
