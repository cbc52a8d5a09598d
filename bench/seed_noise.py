"""Seed noise of a fidelity score: is the search's best really better than the reference arm?

    python bench/seed_noise.py [--fidelity 72] [--seeds 0 1 2] [--params params.yaml]

Scores the evolve stage's best configuration (`<out>/best.json`) and the budget's reference arm
(default `uniform4_r16`) at one fidelity under several training seeds, through the search's own
evaluator and record cache (so seeds the search already ran are read, not retrained). Prints each
arm's scores, mean and standard deviation, and the difference of the means in units of its
standard error. A difference within about two standard errors is not evidence of a better
configuration.
"""

from __future__ import annotations

import json
import math

import numpy as np
from common import search_parser, search_setup  # sets the offline environment


def main() -> None:
    ap = search_parser(__doc__.splitlines()[0], "best.json")
    ap.add_argument("--fidelity", type=int, default=0, help="training steps (default: the best's fidelity)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"error: --seeds {args.seeds}: give at least two distinct seeds")
    p, setup, best_file = search_setup(args, "best.json")
    best = json.loads(best_file.read_text())
    fidelity = args.fidelity or int(best["fidelity"])
    arms = {"search best": setup.space.parse(best["config"]), p.budget.reference: setup.reference_config()}
    scores: dict[str, list[float]] = {}
    for name, config in arms.items():
        for seed in args.seeds:
            record = setup.fidelity_run(config, fidelity, seed)
            if record.get("score") is None:
                raise SystemExit(f"error: {name} seed {seed}: evaluation failed ({record.get('reason')})")
            scores.setdefault(name, []).append(float(record["score"]))
    print(f"{p.search.metric} at {fidelity} steps, seeds {args.seeds} "
          f"(trained {setup.fidelity_run.steps_trained} steps in this run, the rest read from the record cache)")
    print(f"{'arm':16} {'mean':>8} {'sd':>8}  scores")
    for name, s in scores.items():
        print(f"{name:16} {np.mean(s):8.4f} {np.std(s, ddof=1):8.4f}  " + " ".join(f"{v:.4f}" for v in s))
    (a, sa), (b, sb) = ((np.mean(s), np.std(s, ddof=1)) for s in scores.values())
    se = math.sqrt((sa**2 + sb**2) / len(args.seeds))
    print(f"difference (best - reference) {a - b:+.4f} = {(a - b) / b:+.2%} of the reference; "
          f"{(a - b) / se:+.1f} standard errors" if se > 0 else "identical scores under every seed")


if __name__ == "__main__":
    main()
