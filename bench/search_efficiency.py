"""How much compute does the search save? Every ablation and alternative search on the synthetic objective.

    python bench/search_efficiency.py [--seeds 10] [--units 12] [--stage1-steps 240] [--refine 6]

Methods (the values of `search.ablation`): `none` (AutoQRA: evolution + refine), `no_priors`,
`no_surrogate`, `single_fidelity`, `no_refine`, `random`, `tpe`; random and tpe get stage 1's and
refine's steps together, as in the pipeline. Per seed and method, the incumbent after every
evaluation is the configuration with the lowest mean over the top rung's seeds among those fully
evaluated there (before any is: the stage-1 ranking's first), judged by its true (noise-free)
value. Prints per method the mean ± standard error of the final true value, the regret to the
exhaustive constrained optimum, the steps spent, and the steps needed to reach random search's final
incumbent value (mean ratio to random's own, and in how many seeds it was reached at all). Writes
JSON to `--json`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from common import synthetic_problem

from autoqra.search import REFINE_OFF, RefineSettings, Settings, ablated, evolve, ranking, refine
from autoqra.search.evolution import Result, seed_scores
from autoqra.search.samplers import history
from autoqra.search.synthetic import SyntheticObjective

METHODS = ("none", "no_priors", "no_surrogate", "single_fidelity", "no_refine", "random", "tpe")


def curve(results: list[Result], top: int, seeds: tuple[int, ...], true) -> list[tuple[int, float]]:
    """[(steps spent, true value of the incumbent)] after every evaluation, in order."""
    out, steps, done = [], 0, []
    for r in results:
        steps += r.fidelity
        done.append(r)
        means = {k: np.mean(list(v.values())) for (k, f), v in seed_scores(done).items()
                 if f == top and set(v) >= set(seeds) and None not in v.values()}
        if means:
            key = min(means, key=lambda k: (means[k], k))
            config = next(x.config for x in done if x.config.key == key)
        else:
            ranked = ranking(done)
            if not ranked:
                continue
            config = ranked[0].config
        out.append((steps, true(config)))
    return out


def se(a: np.ndarray) -> float:
    return float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


def summarize(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per method: the final true value (mean ± se), its paired difference to `none` (same seeds), and the
    steps to reach random search's final incumbent value (median over seeds, and as a ratio to random's
    own steps: median and mean; the mean is dominated by seeds where random found its best early)."""
    import statistics

    seeds = sorted({r["seed"] for r in rows})
    get = {(r["method"], r["seed"]): r for r in rows}
    table = []
    for method in METHODS:
        if not all((method, s) in get for s in seeds):
            continue
        final = np.array([get[(method, s)]["final"] for s in seeds])
        diff = np.array([get[(method, s)]["final"] - get[("none", s)]["final"] for s in seeds])
        steps, ratios = [], []
        for s in seeds:
            rnd = get[("random", s)]
            own = next((x for x, v in get[(method, s)]["curve"] if v <= rnd["final"] + 1e-12), math.inf)
            ref = next(x for x, v in rnd["curve"] if v <= rnd["final"] + 1e-12)
            steps.append(own)
            ratios.append(own / ref)
        reached = [r for r in ratios if r < math.inf]
        table.append({"method": method, "final_mean": float(final.mean()), "final_se": se(final),
                      "minus_none": float(diff.mean()), "minus_none_se": se(diff),
                      "steps": float(np.mean([get[(method, s)]["steps"] for s in seeds])),
                      "median_steps_to_random_best": float(statistics.median(steps)),
                      "median_ratio": float(statistics.median(ratios)),
                      "mean_ratio": float(np.mean(reached)) if reached else None, "reached": len(reached)})
    print(f"\nsynthetic objective: {args.units} units, noise sd {args.sigma}, {len(seeds)} seeds; stage 1 "
          f"{args.stage1_steps} steps, refine {args.refine} proposals; true value of the final incumbent "
          "(lower is better); steps to reach random search's final value (median over seeds; ratio to random's own)")
    print(f"{'method':16} {'final (mean ± se)':>18} {'− none (paired)':>17} {'steps':>6} {'median steps':>12} "
          f"{'median ratio':>12} {'mean ratio':>10} {'reached':>8}")
    for t in table:
        mean_ratio = "—" if t["mean_ratio"] is None else f"{t['mean_ratio']:.2f}"
        print(f"{t['method']:16} {t['final_mean']:>10.3f} ± {t['final_se']:.3f} {t['minus_none']:>+9.3f} ± "
              f"{t['minus_none_se']:.3f} {t['steps']:>6.0f} {t['median_steps_to_random_best']:>12.0f} "
              f"{t['median_ratio']:>12.2f} {mean_ratio:>10} {t['reached']:>5}/{len(seeds)}")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--units", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=0.1, help="sd of the evaluation noise")
    ap.add_argument("--stage1-steps", type=int, default=240)
    ap.add_argument("--refine", type=int, default=6, help="refine proposals (x 2 seeds x the top fidelity)")
    ap.add_argument("--kernel", default="additive", help="refine's GP kernel ('auto' compares three: slower)")
    ap.add_argument("--json", default="data/bench/search_efficiency.json")
    ap.add_argument("--summarize", action="store_true", help="print the table of an earlier run's --json")
    args = ap.parse_args()
    if args.summarize:
        saved = json.loads(Path(args.json).read_text())
        summarize(saved["rows"], argparse.Namespace(**{**saved["args"], "json": args.json}))
        return
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    u = args.units
    space, budget = synthetic_problem(u)
    fidelities, spr = (1, 3, 9), (1, 1, 2)
    refine_steps = args.refine * spr[-1] * fidelities[-1]
    rows = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        obj = SyntheticObjective(space, seed, sigma=args.sigma, shared=0.6)
        i_q, i_r = obj.priors()
        optimum = obj.optimum(budget)[0] if u <= 8 else None  # (value, config)
        top_seeds = tuple(seed + i for i in range(spr[-1]))
        for method in METHODS:
            t0 = time.perf_counter()
            st = ablated(Settings(population=12, offspring=6, candidates=60, generations=100, fidelities=fidelities,
                                  eta=3, max_steps=args.stage1_steps, seed=seed, seeds_per_rung=spr),
                         method, refine_steps)
            study, _ = evolve(obj, space, budget, i_q, i_r, st)
            results = history(study, space)
            if method not in REFINE_OFF:
                rs = RefineSettings(evaluations=args.refine, fidelity=fidelities[-1], seeds=top_seeds, seed=seed,
                                    kernel=args.kernel)
                study2, _ = refine(obj, space, budget, results, rs, i_q, i_r)
                results = results + history(study2, space)
            c = curve(results, fidelities[-1], top_seeds, obj.true_value)
            rows.append({"seed": seed, "method": method, "curve": c, "final": c[-1][1], "steps": c[-1][0],
                         "optimum": optimum, "seconds": time.perf_counter() - t0})
        print(f"seed {seed}: " + ", ".join(f"{r['method']} {r['final']:.3f}" for r in rows if r["seed"] == seed),
              flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    table = summarize(rows, args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
