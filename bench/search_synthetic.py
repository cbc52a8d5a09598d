"""Stage 1 against random feasible search on the synthetic objective, at the same fidelity budget.

    python bench/search_synthetic.py [--seeds 20] [--max-steps 300]

For each seed: the search's best configuration (by its highest-fidelity evidence) and the best of
random repaired configurations each evaluated at the highest fidelity, both judged by their true
value; prints regrets to the exhaustive constrained optimum and the win rate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import optuna

from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training, make_budget
from autoqra.search import EvolveSettings, evolve, ranking
from autoqra.search.optuna import history
from autoqra.search.repair import repair
from autoqra.search.synthetic import SyntheticObjective
from autoqra.space import Space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=300)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shapes = tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64 * (1 + i % 3), 128) for i in range(6))
    spec = ModelSpec(shapes, other_params=100, hidden=64, intermediate=128, layers=6, heads=4, kv_heads=2, vocab=100)
    space = Space.from_modules([m.name for m in shapes], "block", [2, 3, 4, 8], [4, 8, 16])
    budget = make_budget("relative", 1.0, "uniform3_r8", MemoryModel(spec, 64, Training(1, 4)), space)
    rows = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        obj = SyntheticObjective(space, seed)
        optimum, _ = obj.optimum(budget)
        settings = EvolveSettings(population=12, offspring=6, candidates=60, generations=50,
                                  fidelities=(1, 3, 9), eta=3, max_steps=args.max_steps, seed=seed)
        study, _ = evolve(obj, space, budget, obj.priors(), settings)
        best = ranking(history(study, space))[0][2]
        rng, rand, found = np.random.default_rng(seed + 100), SyntheticObjective(space, seed), []
        while rand.steps + 9 <= obj.steps:
            config = repair(space.random(rng), budget)
            found.append((rand(config, 9), config))
        random_best = min(found, key=lambda x: x[0])[1]
        rows.append((obj.true_value(best) - optimum, obj.true_value(random_best) - optimum, len(study.trials),
                     len(found)))
    regret = np.array([r[:2] for r in rows])
    print(f"{args.seeds} seeds, {args.max_steps} steps each, {time.perf_counter() - start:.1f} s")
    print(f"mean regret: search {regret[:, 0].mean():.3f}, random {regret[:, 1].mean():.3f} "
          f"(ratio {regret[:, 0].mean() / regret[:, 1].mean():.2f}); search better on "
          f"{int((regret[:, 0] < regret[:, 1]).sum())}/{args.seeds} seeds; evaluations per run: search "
          f"{np.mean([r[2] for r in rows]):.0f} (mixed fidelities), random {np.mean([r[3] for r in rows]):.0f}")


if __name__ == "__main__":
    main()
