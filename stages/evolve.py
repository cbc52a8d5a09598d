"""evolve: stage 1 of the search, multi-fidelity evolution warm-started by the priors (Optuna).

Trials live in an Optuna study (`search.storage`, default data/records/studies/evolve.journal) whose
name hashes everything that defines the search, so a killed run resumes it and a changed search
starts a new one. Fidelity evaluations are records in the record cache (`--records`, data/records:
no stage's output, so no orchestrator deletes it), shared by every search: a repeated or extended
search pays only for evaluations it has not made before; the stage's output carries a manifest of
them (records.json) and a snapshot of its study. Writes `<out>/trials.parquet`, `front.parquet`, `best.json`,
`trace.png` and `metrics.json` (see `autoqra.pipeline.search`).
"""

from __future__ import annotations

from autoqra.pipeline import search
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/search/evolve")
    common.add_journal_args(ap, "evolve")
    common.add_worker_args(ap)
    args = ap.parse_args(argv)
    p = common.start(args)
    common.run_search(args, p, common.dirs(args, stage1_is_own=True), search.evolve_worker, search.evolve_stage)


if __name__ == "__main__":
    main()
