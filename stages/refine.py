"""refine: stage 2 of the search, trust-region Bayesian refinement of the stage-1 configurations.

Reads stage 1's study (same storage) for its top-fidelity evidence, proposes `search.refine.evaluations`
configurations (each evaluated for real at the top rung's fidelity and seeds, through the shared
record store) and writes `<out>/trials.parquet`, `best.json` (the best configuration by its mean over
the top seeds, stage 1's included, so never worse than stage 1's best on those seeds), `refine.png`
and `metrics.json` (incumbent and radius per proposal, restarts, the GP kernels' held-out rank
correlation, the pick's paired difference to stage 1's pick; see `autoqra.pipeline.search`).
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline import search
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--evolve", default="data/search/evolve", help="stage 1's outputs (must exist)")
    ap.add_argument("--out", default="data/search/refine")
    common.add_journal_args(ap, "refine")
    common.add_worker_args(ap)
    args = ap.parse_args(argv)
    p = common.start(args)
    if not (Path(args.evolve) / "best.json").exists():
        raise SystemExit(f"error: --evolve {args.evolve}: no best.json (run the evolve stage)")
    common.run_search(args, p, common.dirs(args), search.refine_worker, search.refine_stage)


if __name__ == "__main__":
    main()
