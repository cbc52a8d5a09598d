"""The two search stages as runs over a prepared folder: search (with any number of workers), then write
the stage's outputs and return its metrics. `evolve_worker` / `refine_worker` are one worker's
ask/tell loop on the stage's study; `evolve_stage` / `refine_stage` run the workers and write:

- evolve: stage 1 (multi-fidelity evolution warm-started by the priors, or an ablation's search) into
  `<out>/trials.parquet`, `front.parquet`, `best.json`, `trace.png`;
- refine: stage 2 (trust-region Bayesian refinement of stage 1's top-rung configurations) into
  `<out>/trials.parquet`, `best.json` (greedy unless the performance model gives a configuration scored
  under every top seed, stage 1's included, a posterior probability ≥ `search.pick_confidence` of scoring
  lower: `guarded_pick`) and `refine.png`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoqra import stats
from autoqra.params import Params
from autoqra.params.rules import stage_workers
from autoqra.pipeline.setup import Setup, evolve_settings, records_root, refine_settings
from autoqra.pipeline.workers import run_workers
from autoqra.report import plots
from autoqra.report.search import fidelity_agreement, pareto_front, trials_frame
from autoqra.search import diagnostics
from autoqra.search.evolution import Evolution, spent_steps
from autoqra.search.history import Evidence, ranking, seed_scores
from autoqra.search.optuna import JOB, SearchFailed, describe_failures, drive, history
from autoqra.search.performance import Observation
from autoqra.search.repair import exchange_rates
from autoqra.store import manifest
from autoqra.store.files import write_json

log = logging.getLogger("autoqra")


def evolve_worker(setup: Setup) -> dict[str, int]:
    """Ask/evaluate/tell on stage 1's study until the search is done: this worker's counts."""
    study, sampler = setup.study()

    def log_trial(t: Any) -> None:
        job = t.system_attrs[JOB]
        log.info("trial %d: gen %s rung %s f=%s seed %s score=%s", t.number, job["generation"], job["rung"],
                 job["fidelity"], job.get("seed"), None if t.value is None else round(t.value, 4))

    ran = drive(study, sampler, setup.objective, describe=setup.describe, on_trial=log_trial,
                max_failures=setup.p.search.max_failures)
    run = setup.fidelity_run
    return {"trials": ran, "steps_trained": run.steps_trained, "records_computed": run.computed}


def refine_worker(setup: Setup) -> dict[str, int]:
    """Ask/evaluate/tell on stage 2's study until its proposals are done: this worker's counts."""
    study, sampler, _ = setup.refine_study()
    drive(study, sampler, setup.objective, describe=setup.describe, max_failures=setup.p.search.max_failures,
          on_trial=lambda t: log.info("proposal %s seed %s: %s", t.system_attrs[JOB]["generation"],
                                      t.system_attrs[JOB]["seed"], t.value))
    return {"steps_trained": setup.fidelity_run.steps_trained, "records_computed": setup.fidelity_run.computed}


def evolve_stage(p: Params, params_path: str, dirs: dict[str, str], out: Path, threads: int = 0,
           gathered: list[str] = ()) -> dict[str, Any]:
    """Stage 1 to completion, its outputs in `out`; returns its metrics."""
    setup, mine, search_s = run_workers(evolve_worker, p, params_path, dirs, threads, gathered,
                                         stage_workers(p, "evolve"))
    study, sampler = setup.study()
    trials = trials_frame(study, setup.space)
    hist = history(study, setup.space)
    ranked = ranking(hist)
    if not ranked:
        raise SearchFailed(f"no evaluation of the evolve stage succeeded ({describe_failures(study)}); "
                           f"all {len(trials)} are kept (records under {dirs['search']}/records)")
    plan = sampler.plan
    evolution = isinstance(plan, Evolution)
    decided = plan.decision(hist) if evolution else None  # greedy unless the model says otherwise (guarded_pick)
    pick = decided[0] if decided else None
    best = next((e for e in ranked if pick is not None and e.config.key == pick.key), ranked[0])
    searched_steps, searched_records = setup.fidelity_run.steps_trained, setup.fidelity_run.computed
    frontier = setup.frontier()
    chosen = setup.space.parse(next(u for u in frontier["uniforms"] if u["key"] == frontier["chosen"])["config"])
    compared = setup.compare(best.config, chosen)
    out.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(out / "trials.parquet", index=False)
    pareto_front(trials).to_parquet(out / "front.parquet", index=False)
    write_json(out / "best.json", setup.best_json(best, compared["arms"]["pick"]))
    write_json(out / "frontier.json", frontier)
    held = _manifest(setup, trials, out, dirs.get("journal", "evolve"))
    plots.search_trace(trials, f"evolve: {p.search.metric}").savefig(out / "trace.png", dpi=120)
    fidelities = evolve_settings(p).fidelities
    return {
        "study": study.study_name,
        "trials": len(trials),
        "evaluations_per_fidelity": {str(f): int((trials["fidelity"] == f).sum()) for f in fidelities},
        "generations": int(trials["generation"].max()) + 1 if len(trials) else 0,
        "failed": int((trials["status"] != "ok").sum()),
        "failures": describe_failures(study),
        "steps_spent": int(trials["fidelity"].sum()),  # every evaluation's fidelity
        "steps_cost": spent_steps(hist),  # what search.max_steps bounds: promotions continue
        "steps_trained_this_run": sum(m["steps_trained"] for m in mine),
        "records_computed_this_run": sum(m["records_computed"] for m in mine),
        "best": {"key": best.config.key, "fidelity": best.fidelity, "score": best.score, "se": best.se,
                 "seeds": list(best.seeds), "summary": best.config.describe(),
                 "memory_bytes": setup.memory.total(setup.space, best.config)},
        "frontier": {u["summary"]: {"mean": u["mean"], "se": u["se"], "chosen": u["key"] == frontier["chosen"]}
                     for u in frontier["uniforms"]},
        "comparison": {**compared, "steps_trained": setup.fidelity_run.steps_trained - searched_steps,
                       "records_computed": setup.fidelity_run.computed - searched_records},
        "budget": {"kind": setup.budget.kind, "limit": setup.budget.limit, "description": setup.budget.description},
        "all_within_budget": bool(all(setup.budget.feasible(c) for c in setup.configs(trials))),
        "ablation": p.search.ablation,
        "screening": diagnostics.screening_quality(plan, hist) if evolution else [],
        "model": diagnostics.model_report(plan, hist, best.config, _outside(frontier, compared, best.config, chosen,
                                                                           setup)) if evolution else None,
        "fidelity_agreement": fidelity_agreement(trials),
        "promotion": diagnostics.promotions(plan, hist) if evolution else None,
        "pick": decided[1] if decided else None,
        "exchange_rates": exchange_rates(_means(hist, frontier, setup), setup.budget, setup.prices),
        "manifest": held,
        "search_s": round(search_s, 1),
    }


def _outside(frontier: dict[str, Any], compared: dict[str, Any], pick: Any, chosen: Any,
             setup: Setup) -> list[Observation]:
    """The results scored beside the search (the frontier's uniforms, the comparison's arms), one
    observation per seed."""
    configs = {"pick": pick, "best_uniform": chosen}
    if setup.p.budget.reference in compared["arms"]:
        configs[setup.p.budget.reference] = setup.reference_config()
    rows = [(setup.space.parse(u["config"]), frontier["steps"], u["scores"]) for u in frontier["uniforms"]]
    rows += [(configs[n], compared["fidelity"], a["scores"]) for n, a in compared["arms"].items()]
    return [Observation(c, f, int(sd), float(v)) for c, f, scores in rows for sd, v in scores.items()
            if v is not None]


def _means(hist: list, frontier: dict[str, Any], setup: Setup) -> dict:
    """(configuration, fidelity) -> mean score over its seeds: the search's and the frontier's."""
    configs = {r.config.key: r.config for r in hist}
    out = {(configs[k], f): sum(v.values()) / len(v) for (k, f), v in seed_scores(hist).items()
           if None not in v.values()}
    for u in frontier["uniforms"]:
        if u["mean"] is not None:
            out[(setup.space.parse(u["config"]), frontier["steps"])] = u["mean"]
    return out


def refine_stage(p: Params, params_path: str, dirs: dict[str, str], out: Path, threads: int = 0,
           gathered: list[str] = ()) -> dict[str, Any]:
    """Stage 2 to completion, its outputs in `out`; returns its metrics (incumbent and radius per
    proposal, restarts, the GP kernels' held-out rank correlation, the pick's paired difference to
    stage 1's pick)."""
    setup, mine, search_s = run_workers(refine_worker, p, params_path, dirs, threads, gathered,
                                         stage_workers(p, "refine"))
    rs = refine_settings(p)
    study, sampler, prior = setup.refine_study()
    plan = sampler.plan
    hist = history(study, setup.space)
    found = plan.incumbent(hist)
    if found is None:
        raise SearchFailed("stage 1 has no configuration scored at the top fidelity under every top seed; "
                           "nothing to refine (raise search.max_steps or lower search.generations)")
    best, mean, scores, decided = found
    stage1 = plan.starts()[0]
    first = seed_scores(prior + hist)[(stage1.key, rs.fidelity)]
    pick_minus = stats.compare(setup.scored(best, rs.fidelity, rs.seeds)["values"],
                               setup.scored(stage1, rs.fidelity, rs.seeds)["values"])
    steps, state, _, _ = plan.replay(hist)
    kernel, quality = plan.kernel()
    trials = trials_frame(study, setup.space)
    out.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(out / "trials.parquet", index=False)
    m, se = stats.mean_se(scores)
    top = {"mean": m, "se": se, "scores": dict(zip(rs.seeds, scores))}
    write_json(out / "best.json", setup.best_json(Evidence(rs.fidelity, m, best, se, rs.seeds), top))
    trace = [{"proposal": s.index, "key": s.config.key, "centre": s.centre.key, "radius": s.length,
              "restarts": s.restarts, "score": s.value, "success": s.success} for s in steps]
    held = _manifest(setup, trials, out, dirs.get("journal", "refine"))
    plots.refine_trace(trace, stage_one=float(sum(first[s] for s in rs.seeds) / len(rs.seeds)),
                       title=f"refine: {p.search.metric} at {rs.fidelity} steps, seeds {list(rs.seeds)}"
                       ).savefig(out / "refine.png", dpi=120)
    return {
        "study": study.study_name,
        "proposals": len(steps),
        "evaluations": len(trials),
        "steps_spent": int(trials["fidelity"].sum()) if len(trials) else 0,
        "steps_trained_this_run": sum(r["steps_trained"] for r in mine),
        "records_computed_this_run": sum(r["records_computed"] for r in mine),
        "restarts": state.restarts,
        "trace": trace,
        "kernel": kernel,
        "kernel_rank_correlation": quality,
        "stage1_pick": {"key": stage1.key, "summary": stage1.describe(), "scores": first},
        "best": {"key": best.key, "summary": best.describe(), "mean": m, "se": se, "from_refine": best.key in
                 {s.config.key for s in steps}, "memory_bytes": setup.memory.total(setup.space, best)},
        "best_minus_stage1": pick_minus,
        "pick": decided,
        "all_within_budget": bool(all(setup.budget.feasible(s.config) for s in steps)),
        "manifest": held,
        "search_s": round(search_s, 1),
    }


def _manifest(setup: Setup, trials: Any, out: Path, journal_name: str) -> dict[str, int]:
    """The stage's manifest: the records of its trials (every worker's) and of what this process scored
    beyond them (frontier, comparisons), and a snapshot of its study journal."""
    keys = {k for k in trials["record_key"] if isinstance(k, str)} | set(setup.fidelity_run.used)
    journal = manifest.journal_path(records_root(setup.dirs), journal_name)
    return manifest.write(out, setup.fidelity_run.store, keys, journal=(journal_name, journal))


SEARCHES = {"evolve": evolve_worker, "refine": refine_worker}  # what one worker job of each stage runs
