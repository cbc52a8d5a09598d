"""evolve: stage 1 of the search, multi-fidelity evolution warm-started by the priors (Optuna).

Trials live in an Optuna study (`search.storage`, default the journal of the stage's record store) whose
name hashes everything that defines the search, so a killed run resumes it and a changed search
starts a new one. Fidelity evaluations are records in data/search/records/evolve/ (read by every other
store there, and reading them), shared by every search: a repeated or extended search pays only for
evaluations it has not made before. Writes `<out>/trials.parquet`, `front.parquet`, `best.json`,
`trace.png` and `metrics.json` (see `autoqra.search.runs`).
"""

from __future__ import annotations

from pathlib import Path

from autoqra.search import runs
from autoqra.search.setup import check_inputs
from autoqra.search.workers import run_worker_job
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/search/evolve")
    common.add_store_args(ap, "evolve")
    common.add_worker_args(ap)
    args = ap.parse_args(argv)
    p = common.start(args)
    dirs = common.dirs(args, stage1_is_own=True)
    checked_s = common.preflight(p, args.prepare, args.search)
    with common.user_errors():
        check_inputs(p, dirs)
        if args.worker_out:  # one of several worker jobs: search, write this worker's counts, no outputs
            return run_worker_job(runs.search_evolve, p, dirs, Path(args.worker_out))
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: runs.evolve(p, args.params, dirs, out, args.threads, args.gathered),
                  preflight_s=checked_s)


if __name__ == "__main__":
    main()
