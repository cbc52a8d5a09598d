"""evolve: stage 1 of the search, multi-fidelity evolution warm-started by the priors (Optuna).

Trials live in an Optuna study (`search.storage`, default the journal of the stage's record store) whose
name hashes everything that defines the search, so a killed run resumes it and a changed search
starts a new one. Fidelity evaluations are records in data/search/records/evolve/ (read by every other
store there, and reading them), shared by every
search: a repeated or extended search pays only for evaluations it has not made before.
Writes `<out>/trials.parquet`, `front.parquet`, `best.json`, `trace.png` and `metrics.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoqra import report
from autoqra.config import Params
from autoqra.search import Settings, ablated, ranking
from stages import common
from stages.registry import STAGES
from stages.search_setup import SearchSetup, run_worker_job, run_workers

PARAMS = STAGES["evolve"].params


def settings(p: Params) -> Settings:
    """Stage 1's settings, with `search.ablation` applied."""
    s = p.search
    base = Settings(population=s.population, offspring=s.offspring, candidates=s.candidates,
                    generations=s.generations, fidelities=tuple(s.fidelities), eta=s.eta, max_steps=s.max_steps,
                    seed=p.seed, seeds_per_rung=tuple(s.seeds_per_rung))
    return ablated(base, s.ablation, s.refine.evaluations * s.seeds_per_rung[-1] * s.fidelities[-1])


def search(setup: SearchSetup) -> dict[str, int]:
    """Ask/evaluate/tell on the stage's study until the search is done."""
    from autoqra.search.samplers import drive

    study, sampler = setup.study("evolve", settings(setup.p))

    def log_trial(t: Any) -> None:
        job = t.system_attrs["autoqra:job"]
        common.log.info("trial %d: gen %s rung %s f=%s seed %s score=%s", t.number, job["generation"], job["rung"],
                        job["fidelity"], job.get("seed"), None if t.value is None else round(t.value, 4))

    ran = drive(study, sampler, setup.objective, describe=setup.describe, on_trial=log_trial,
                max_failures=setup.p.search.max_failures)
    return {"trials": ran, "steps_trained": setup.evaluator.steps_trained, "records_computed": setup.evaluator.computed}


def run(p: Params, params_path: str, dirs: dict[str, str], out: Path, threads: int,
        gathered: list[str] = ()) -> dict[str, Any]:
    from autoqra.search.samplers import describe_failures

    setup, mine, search_s = run_workers("evolve", p, params_path, dirs, threads, gathered)
    study, sampler = setup.study("evolve", settings(p))
    trials = report.trials_frame(study, setup.space)
    hist = setup.history(study)
    ranked = ranking(hist)
    if not ranked:
        raise SystemExit(f"error: no evaluation of the evolve stage succeeded ({describe_failures(study)}); "
                         f"all {len(trials)} are kept (records under {dirs['search']}/records)")
    best = ranked[0]
    searched_steps, searched_records = setup.evaluator.steps_trained, setup.evaluator.computed
    compared = setup.compare(best.config, hist, settings(p))
    out.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(out / "trials.parquet", index=False)
    report.front(trials).to_parquet(out / "front.parquet", index=False)
    common.write_json(out / "best.json", setup.best_json(best, compared["arms"]["pick"]))
    report.search_trace(trials, f"evolve: {p.search.metric}").savefig(out / "trace.png", dpi=120)
    per_fidelity = {str(f): int((trials["fidelity"] == f).sum()) for f in settings(p).fidelities}
    return {
        "study": study.study_name,
        "trials": len(trials),
        "evaluations_per_fidelity": per_fidelity,
        "generations": int(trials["generation"].max()) + 1 if len(trials) else 0,
        "failed": int((trials["status"] != "ok").sum()),
        "failures": describe_failures(study),
        "steps_spent": int(trials["fidelity"].sum()),
        "steps_trained_this_run": sum(m["steps_trained"] for m in mine),
        "records_computed_this_run": sum(m["records_computed"] for m in mine),
        "best": {"key": best.config.key, "fidelity": best.fidelity, "score": best.score, "se": best.se,
                 "seeds": list(best.seeds), "summary": best.config.describe(),
                 "memory_bytes": setup.memory.total(setup.space, best.config)},
        "comparison": {**compared, "steps_trained": setup.evaluator.steps_trained - searched_steps,
                       "records_computed": setup.evaluator.computed - searched_records},
        "budget": {"kind": setup.budget.kind, "limit": setup.budget.limit, "description": setup.budget.description},
        "all_within_budget": bool(all(setup.budget.feasible(c) for c in setup.configs(trials))),
        "ablation": p.search.ablation,
        "surrogate": (sampler.plan.surrogate_quality(hist) if hasattr(sampler.plan, "surrogate_quality") else []),
        "fidelity_agreement": report.fidelity_agreement(trials),
        "search_s": round(search_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    common.add_dirs(ap)
    ap.add_argument("--out", default="data/search/evolve")
    common.add_store_args(ap, "evolve")
    common.add_worker_args(ap)
    args = ap.parse_args(argv)
    common.setup(args.threads)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    p, _ = common.load(args.params, PARAMS)
    dirs = common.store_dirs(args, stage1_is_own=True)
    checked_s = common.preflight(p, args.prepare, args.search)
    SearchSetup.check_inputs(p, dirs)
    if args.worker_out:  # one of several worker jobs: search, write this worker's counts, no outputs
        with common.user_errors():
            run_worker_job("evolve", p, dirs, Path(args.worker_out))
        return
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, args.params, dirs, out, args.threads, args.gathered))
    common.write_json(out / "metrics.json", {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()

