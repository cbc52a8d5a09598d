"""refine: stage 2 of the search, trust-region Bayesian refinement of the stage-1 configurations.

Reads stage 1's study (same storage) for its top-fidelity evidence, proposes `search.refine.evaluations`
configurations (each evaluated for real at the top rung's fidelity and seeds, through the shared
record store) and writes `<out>/trials.parquet`, `best.json` (the best configuration by its mean over
the top seeds, stage 1's included, so never worse than stage 1's best on those seeds), `refine.png`
and `metrics.json` (incumbent and radius per proposal, restarts, the GP kernels' held-out rank
correlation, the pick's paired difference to stage 1's pick).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoqra import report, stats
from autoqra.config import Params
from autoqra.search import REFINE_OFF, RefineSettings
from autoqra.search.evolution import Evidence, seed_scores
from stages import common
from stages.evolve import settings as evolve_settings
from stages.registry import STAGES
from stages.search_setup import SearchSetup, run_worker_job, run_workers

PARAMS = STAGES["refine"].params


def settings(p: Params) -> RefineSettings:
    r, top = p.search.refine, evolve_settings(p)
    off = p.search.ablation in REFINE_OFF
    return RefineSettings(evaluations=0 if off else r.evaluations, fidelity=top.fidelities[-1],
                          seeds=top.seeds(len(top.fidelities) - 1), seed=p.seed, candidates=r.candidates,
                          kernel=r.kernel, acquisition=r.acquisition, length_init=r.length_init,
                          length_min=r.length_min, length_max=r.length_max, success_tolerance=r.success_tolerance,
                          failure_tolerance=r.failure_tolerance)


def search(setup: SearchSetup) -> dict[str, int]:
    from autoqra.search.samplers import drive

    study, sampler, _ = setup.refine_study(evolve_settings(setup.p), settings(setup.p))
    drive(study, sampler, setup.objective, describe=setup.describe, max_failures=setup.p.search.max_failures,
          on_trial=lambda t: common.log.info("proposal %s seed %s: %s", t.system_attrs["autoqra:job"]["generation"],
                                             t.system_attrs["autoqra:job"]["seed"], t.value))
    return {"steps_trained": setup.evaluator.steps_trained, "records_computed": setup.evaluator.computed}


def run(p: Params, params_path: str, dirs: dict[str, str], out: Path, threads: int,
        gathered: list[str] = ()) -> dict[str, Any]:
    setup, mine, search_s = run_workers("refine", p, params_path, dirs, threads, gathered)
    rs = settings(p)
    study, sampler, prior = setup.refine_study(evolve_settings(p), rs)
    plan = sampler.plan
    hist = setup.history(study)
    found = plan.incumbent(hist)
    if found is None:
        raise SystemExit("error: stage 1 has no configuration scored at the top fidelity under every top seed; "
                         "nothing to refine (raise search.max_steps or lower search.generations)")
    best, mean, scores = found
    stage1 = plan.starts()[0]
    by_seed = seed_scores(prior + hist)
    pick = by_seed[(best.key, rs.fidelity)]
    first = by_seed[(stage1.key, rs.fidelity)]
    steps, state, _, _ = plan.replay(hist)
    kernel, quality = plan.kernel()
    trials = report.trials_frame(study, setup.space)
    out.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(out / "trials.parquet", index=False)
    m, se = stats.mean_se(scores)
    top = {"mean": m, "se": se, "scores": dict(zip(rs.seeds, scores))}
    common.write_json(out / "best.json", setup.best_json(Evidence(rs.fidelity, m, best, se, rs.seeds), top))
    trace = [{"proposal": s.index, "key": s.config.key, "centre": s.centre.key, "radius": s.length,
              "restarts": s.restarts, "score": s.value, "success": s.success} for s in steps]
    report.refine_trace(trace, stage_one=float(sum(first[s] for s in rs.seeds) / len(rs.seeds)),
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
        "best_minus_stage1": stats.paired(pick, first),
        "all_within_budget": bool(all(setup.budget.feasible(s.config) for s in steps)),
        "search_s": round(search_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    common.add_dirs(ap)
    ap.add_argument("--evolve", default="data/search/evolve", help="stage 1's outputs (must exist)")
    ap.add_argument("--out", default="data/search/refine")
    common.add_store_args(ap, "refine")
    common.add_worker_args(ap)
    args = ap.parse_args(argv)
    common.setup(args.threads)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    p, _ = common.load(args.params, PARAMS)
    dirs = common.store_dirs(args)
    checked_s = common.preflight(p, args.prepare, args.search)
    SearchSetup.check_inputs(p, dirs)
    if not (Path(args.evolve) / "best.json").exists():
        raise SystemExit(f"error: --evolve {args.evolve}: no best.json (run the evolve stage)")
    if args.worker_out:  # one of several worker jobs: search, write this worker's counts, no outputs
        with common.user_errors():
            run_worker_job("refine", p, dirs, Path(args.worker_out))
        return
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, args.params, dirs, out, args.threads, args.gathered))
    common.write_json(out / "metrics.json", {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()
