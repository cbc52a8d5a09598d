"""How often the report's verdict (autoqra.stats.compare) claims a difference: on pure noise (false calls)
and at planted differences of 2-8 true standard errors (power), at 2, 3 and 5 seeds.

Two arms are drawn on a fresh test set of 200 examples under paired seeds: per example a difficulty per
arm (the test set's sampling error), per seed an offset per arm (seed noise), per run per example noise.
Two regimes: seed noise dominating the standard error (where the t test at S - 1 degrees of freedom is
all there is) and the test set's sampling error dominating. Prints a table; writes JSON.

    python bench/verdict_power.py [--draws 4000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoqra import stats

N = 200
REGIMES = {"seed noise dominates": (0.05, 0.1, 0.05),  # (sd per arm: seed offset, example difficulty, per run)
           "as measured (bench/noise.py)": (0.0113, 0.27, 0.05),
           "test-set error dominates": (0.005, 0.4, 0.05)}


def draw(rng, seeds, delta, sd_seed, sd_example, sd_residual):
    ex_a, ex_b = rng.normal(0, sd_example, N), rng.normal(0, sd_example, N)
    a = {s: delta + ex_a + rng.normal(0, sd_seed) + rng.normal(0, sd_residual, N) for s in range(seeds)}
    b = {s: ex_b + rng.normal(0, sd_seed) + rng.normal(0, sd_residual, N) for s in range(seeds)}
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--out", default="data/bench/verdict_power.json")
    args = ap.parse_args()
    rows = []
    for regime, (sd_seed, sd_example, sd_res) in REGIMES.items():
        for seeds in (2, 3, 5):
            se = np.sqrt(2 * sd_seed**2 / seeds + 2 * sd_example**2 / N + 2 * sd_res**2 / (seeds * N))
            rng = np.random.default_rng([seeds, len(rows)])
            row = {"regime": regime, "seeds": seeds}
            for k in (0, 2, 4, 6, 8):
                calls = [stats.compare(*draw(rng, seeds, k * se, sd_seed, sd_example, sd_res))["verdict"]
                         for _ in range(args.draws)]
                row[f"{k} SE"] = float(np.mean([c in ("better", "worse") for c in calls]))
            rows.append(row)
    print("| regime | seeds | false calls (0 SE) | power at 2 SE | 4 SE | 6 SE | 8 SE |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['regime']} | {r['seeds']} | {r['0 SE']:.3f} | {r['2 SE']:.3f} | {r['4 SE']:.3f} | "
              f"{r['6 SE']:.3f} | {r['8 SE']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"draws": args.draws, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
