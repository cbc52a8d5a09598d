"""Do low rungs predict the top rung better when they are the start of the top rung's run?

    python bench/fidelity_schedule.py [--params params.yaml] [--out data/search/evolve]

By default a rung of `f` steps warms up and decays its learning rate over its own `f` steps: an
8-step run anneals to zero and measures how fast a configuration adapts. The alternative cuts the
top rung's schedule (`F` steps) after `f` steps, so a low rung is the first part of the run it is
meant to predict. For every configuration the evolve stage scored at the top fidelity, this scores
it at each lower fidelity with the cut schedule (through the search's record cache; the top-rung
runs are the same under both and are read, not retrained) and prints the rank agreement
(Spearman, Kendall) of each lower rung with the top rung, next to the same figure for the scores
the search itself made with the default schedule.
"""

from __future__ import annotations

import json

import pandas as pd
from common import search_parser, search_setup  # sets the offline environment

from autoqra.stats import rank_correlation


def main() -> None:
    args = search_parser(__doc__.splitlines()[0], "trials.parquet").parse_args()
    p, setup, trials_file = search_setup(args, "trials.parquet")
    fids = list(p.search.fidelities)
    top = fids[-1]
    trials = pd.read_parquet(trials_file)
    ok = trials[trials["status"] == "ok"]
    at_top = ok[ok["fidelity"] == top].drop_duplicates("config_key").set_index("config_key")
    if len(at_top) < 3:
        raise SystemExit(f"error: {trials_file}: {len(at_top)} configurations reached fidelity {top}; need 3")
    own = ok.set_index(["config_key", "fidelity"])["score"]
    rows = []
    for f in fids[:-1]:
        cut, default, truth = [], [], []
        for key, row in at_top.iterrows():
            record = setup.fidelity_run(setup.space.parse({"units": json.loads(row["config"])}), f, p.seed,
                                     horizon=top)
            if record.get("score") is None or (key, f) not in own.index:
                continue
            cut.append(record["score"])
            default.append(float(own.loc[(key, f)]))
            truth.append(float(row["score"]))
        for name, scores in (("own schedule (default)", default), (f"first {f} of {top}", cut)):
            rows.append({"rung": f, "schedule": name, **rank_correlation(scores, truth)})
    print(f"rank agreement of each lower rung with the {top}-step score, over the {len(at_top)} configurations "
          f"the search took to {top} steps ({setup.fidelity_run.steps_trained} steps trained in this run)")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:+.2f}"))


if __name__ == "__main__":
    main()
