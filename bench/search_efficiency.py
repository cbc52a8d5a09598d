"""How much compute does the search save? Every ablation and alternative search at equal training steps.

    python bench/search_efficiency.py [--seeds 10] [--units 12] [--stage1-steps 240] [--refine 6]
    python bench/search_efficiency.py --objective embedded [--seeds 2] [--params params.yaml]

`--objective synthetic` (default): the synthetic objective, judged by its true (noise-free) value.
`--objective embedded`: real fidelity evaluations (GPTQ caches, PEFT fine-tuning, validation scores) of
the model in `--prepare` with the priors of `--profile`, through the pipeline's evaluator and record
cache (`data/records`, shared with the pipeline: an evaluation any run or method made is not
repeated), at a small search size (`--population` ... `--refine`); an incumbent's
value is its top-fidelity validation mean over the top rung's training seeds, and each method's final
incumbent is trained again under `--fresh-seeds` unseen training seeds (`1000 + 100·search seed + i`: a
search seed's row is an independent replicate, the zero-search picks included) and scored on the
validation split and, the cost–benefit table, on the test split (the selected mean is biased low: it is
the best of several noisy means; nothing is chosen on the test split). The zero-search methods are
scored alike: `greedy` (the priors' importance-per-byte allocation) and `prior` (the prior-derived
configuration), both in generation 0 of the search, and `best_uniform` (the feasible uniform
configurations, the maximal ones under `search.frontier=maximal`, each scored at the top fidelity under
the top rung's seeds on validation; its steps are that frontier's). The test table: per method the test
answer loss and its paired difference to `greedy` with 95 % intervals from `autoqra.stats` over search
seeds × test examples (each search seed's per-example losses averaged over its fresh seeds).

Methods (the values of `search.ablation`): `none` (AutoQRA: evolution + refine), `no_priors`,
`no_surrogate`, `single_fidelity`, `no_refine`, `random`, `tpe`; random and tpe get stage 1's and
refine's steps together, as in the pipeline. Per seed and method, the incumbent after every
evaluation is the configuration with the lowest mean over the top rung's seeds among those fully
evaluated there (synthetic, before any is: the stage-1 ranking's first), judged by its true value
(synthetic) or that mean (embedded). Prints per method the mean ± standard error of the final value,
its paired difference to `none`, the steps spent, and the steps needed to reach random search's final
incumbent value (mean ratio to random's own, and in how many seeds it was reached at all). Writes
JSON to `--json`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from common import synthetic_problem

from autoqra.search import REFINE_OFF, EvolveSettings, RefineSettings, ablated, evolve, ranking, refine
from autoqra.search.history import Result, seed_scores
from autoqra.search.optuna import history
from autoqra.search.synthetic import SyntheticObjective

METHODS = ("none", "no_priors", "no_surrogate", "single_fidelity", "no_refine", "random", "tpe")
ZERO_SEARCH = ("greedy", "prior", "best_uniform")  # embedded only: the picks that cost no search


def incumbent(done: list[Result], top: int, seeds: tuple[int, ...]) -> tuple[str, float] | None:
    """(key, mean) of the configuration with the lowest mean over `seeds` at fidelity `top` among those
    scored under all of them; None before any is."""
    means = {k: float(np.mean(list(v.values()))) for (k, f), v in seed_scores(done).items()
             if f == top and set(v) >= set(seeds) and None not in v.values()}
    return min(means.items(), key=lambda kv: (kv[1], kv[0])) if means else None


def curve(results: list[Result], top: int, seeds: tuple[int, ...], true=None) -> list[tuple[int, float]]:
    """[(steps spent, value of the incumbent)] after every evaluation, in order: its `true` value, or
    without one its mean over `seeds` at fidelity `top` (no point before a configuration has one)."""
    out, steps, done = [], 0, []
    for r in results:
        steps += r.fidelity
        done.append(r)
        best = incumbent(done, top, seeds)
        if true is None:
            if best is not None:
                out.append((steps, best[1]))
            continue
        if best is not None:
            config = next(x.config for x in done if x.config.key == best[0])
        else:
            ranked = ranking(done)
            if not ranked:
                continue
            config = ranked[0].config
        out.append((steps, true(config)))
    return out


def se(a: np.ndarray) -> float:
    return float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


def summarize(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per method: the final true value (mean ± se), its paired difference to `none` (same seeds), and the
    steps to reach random search's final incumbent value (median over seeds, and as a ratio to random's
    own steps: median and mean; the mean is dominated by seeds where random found its best early)."""
    import statistics

    get = {(r["method"], r["seed"]): r for r in rows if r["method"] in METHODS}
    # the seeds every method finished (a run stopped part-way is summarised over those)
    seeds = sorted(s for s in {r["seed"] for r in rows} if all((m, s) in get for m in METHODS))
    table = []
    for method in METHODS:
        if not all((method, s) in get for s in seeds):
            continue
        final = np.array([get[(method, s)]["final"] for s in seeds])
        diff = np.array([get[(method, s)]["final"] - get[("none", s)]["final"] for s in seeds])
        steps, ratios = [], []
        for s in seeds:
            rnd = get[("random", s)]
            own = next((x for x, v in get[(method, s)]["curve"] if v <= rnd["final"] + 1e-12), math.inf)
            ref = next(x for x, v in rnd["curve"] if v <= rnd["final"] + 1e-12)
            steps.append(own)
            ratios.append(own / ref)
        reached = [r for r in ratios if r < math.inf]
        row = {"method": method, "final_mean": float(final.mean()), "final_se": se(final),
               "minus_none": float(diff.mean()), "minus_none_se": se(diff),
               "steps": float(np.mean([get[(method, s)]["steps"] for s in seeds])),
               "median_steps_to_random_best": float(statistics.median(steps)),
               "median_ratio": float(statistics.median(ratios)),
               "mean_ratio": float(np.mean(reached)) if reached else None, "reached": len(reached)}
        if all(get[(method, s)].get("fresh") is not None for s in seeds):
            fresh = np.array([get[(method, s)]["fresh"] for s in seeds])
            fdiff = fresh - np.array([get[("none", s)]["fresh"] for s in seeds])
            row.update(fresh_mean=float(fresh.mean()), fresh_se=se(fresh), fresh_minus_none=float(fdiff.mean()),
                       fresh_minus_none_se=se(fdiff))
        table.append(row)
    if getattr(args, "objective", "synthetic") == "embedded":
        print(f"\nembedded model: {len(seeds)} search seeds; fidelities {args.fidelities}, population "
              f"{args.population}, {args.generations} generations, stage 1 {args.max_steps} steps, refine "
              f"{args.refine} proposals; final = the incumbent's top-fidelity validation mean over the top rung's "
              f"seeds (selected: biased low), fresh = the same configuration under {args.fresh_seeds} unseen "
              "training seeds (lower is better); steps to reach random search's final value (median over seeds; "
              "ratio to random's own)")
    else:
        print(f"\nsynthetic objective: {args.units} units, noise sd {args.sigma}, {len(seeds)} seeds; stage 1 "
              f"{args.stage1_steps} steps, refine {args.refine} proposals; true value of the final incumbent "
              "(lower is better); steps to reach random search's final value (median over seeds; ratio to random's "
              "own)")
    fresh_cols = all("fresh_mean" in t for t in table)
    print(f"{'method':16} {'final (mean ± se)':>18} {'− none (paired)':>17} "
          + (f"{'fresh (mean ± se)':>18} {'− none (paired)':>17} " if fresh_cols else "")
          + f"{'steps':>6} {'median steps':>12} {'median ratio':>12} {'mean ratio':>10} {'reached':>8}")
    for t in table:
        mean_ratio = "—" if t["mean_ratio"] is None else f"{t['mean_ratio']:.2f}"
        fresh = (f"{t['fresh_mean']:>10.4f} ± {t['fresh_se']:.4f} {t['fresh_minus_none']:>+9.4f} ± "
                 f"{t['fresh_minus_none_se']:.4f} ") if fresh_cols else ""
        print(f"{t['method']:16} {t['final_mean']:>10.4f} ± {t['final_se']:.4f} {t['minus_none']:>+9.4f} ± "
              f"{t['minus_none_se']:.4f} {fresh}{t['steps']:>6.0f} {t['median_steps_to_random_best']:>12.0f} "
              f"{t['median_ratio']:>12.2f} {mean_ratio:>10} {t['reached']:>5}/{len(seeds)}")
    return table


def save(args: argparse.Namespace, rows: list[dict], table: list[dict] | None = None) -> None:
    """The rows so far (a run stopped part-way keeps them: `--summarize` prints the finished seeds)."""
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "rows": rows}, indent=1))


def fresh_scores(setup, config, steps: int, seeds: list[int], test: list[dict], tmp: Path) -> tuple[list, dict]:
    """`config` trained `steps` steps under each fresh seed (records and adapters of the shared store):
    the validation scores, and per seed the per-example shares of the test answer loss (answer loss only:
    exact match is not needed here)."""
    import dataclasses

    from autoqra import stats
    from autoqra.train import evaluation

    ev, p = setup.fidelity_run, setup.p
    params = dataclasses.replace(p.evaluate, exact_match=False, lm_eval_tasks=[])
    built, val, out = [], [], {}
    for sd in seeds:
        record = ev(config, steps, sd, keep_adapter=True)
        if record["status"] != "ok":
            continue
        val.append(record["score"])
        adapter = ev.adapter_path(record["key"])
        key = evaluation.evaluation_key(record["key"], p.task.max_length, params, adapter)
        rec, _ = ev.store.get(key, lambda a=adapter: evaluation.score_seed(ev, config, a, test, p.task.max_length,
                                                                           params, tmp, built))
        out[sd] = stats.contributions(rec["scores"]["answer_nll"]).tolist()
    return val, out


def zero_search(setup, method: str, top: int, seeds: tuple[int, ...]) -> tuple[object, int, float | None]:
    """(pick, steps spent finding it, its validation mean at `top` under `seeds`) of a zero-search method."""
    from autoqra.search import operators as ops

    if method == "greedy":
        return ops.greedy_config(setup.space, setup.budget, setup.prices), 0, None
    if method == "prior":
        return ops.prior_config(setup.space, setup.budget, setup.prices), 0, None
    uniforms = ops.feasible_uniforms(setup.space, setup.budget, setup.p.search.frontier == "maximal")
    scored = [(setup.scored(c, top, seeds), c) for c in uniforms]
    ok = [(r, c) for r, c in scored if r["mean"] is not None and not r["failed"]]
    if not ok:
        raise SystemExit(f"error: no feasible uniform configuration scored at {top} steps under seeds {seeds}")
    r, c = min(ok, key=lambda rc: (rc[0]["mean"], rc[0]["memory_bytes"], rc[0]["key"]))
    return c, len(uniforms) * len(seeds) * top, r["mean"]


def test_table(rows: list[dict]) -> list[dict]:
    """Per method: the test answer loss and its paired difference to `greedy`, each with its 95 % interval
    over search seeds × test examples (`autoqra.stats.difference`; a search seed's row is its per-example
    losses averaged over its fresh seeds, paired with greedy's under the same fresh seeds)."""
    from autoqra import stats

    get = {(r["method"], r["seed"]): r for r in rows if r.get("test")}
    methods = [m for m in (*ZERO_SEARCH, *METHODS) if any(k[0] == m for k in get)]
    seeds = sorted(s for s in {k[1] for k in get} if all((m, s) in get for m in methods))
    if "greedy" not in methods or not seeds:
        return []

    def matrix(method: str) -> np.ndarray:
        out = []
        for s in seeds:
            per_seed = get[(method, s)]["test"]
            out.append(np.mean([per_seed[k] for k in sorted(per_seed)], axis=0))
        return np.stack(out)

    base = matrix("greedy")
    table = []
    for m in methods:
        level, diff = stats.difference(matrix(m)), stats.difference(matrix(m) - base)
        table.append({"method": m, "steps": float(np.mean([get[(m, s)]["steps"] for s in seeds])),
                      "test": level["diff"], "test_ci": level["ci"], "minus_greedy": diff["diff"],
                      "minus_greedy_ci": diff["ci"], "verdict": diff["verdict"], "search_seeds": len(seeds)})
    print(f"\ntest split: {len(seeds)} search seeds; test answer loss of each pick trained under its search seed's "
          "fresh seeds, 95 % intervals over search seeds × test examples; − greedy paired (negative: better)")
    print(f"{'method':16} {'steps':>6} {'test answer loss [95 %]':>32} {'− greedy [95 %] (verdict)':>44}")
    for t in table:
        lo, hi = t["test_ci"]
        dlo, dhi = t["minus_greedy_ci"]
        print(f"{t['method']:16} {t['steps']:>6.0f} {t['test']:>10.4f} [{lo:.4f}, {hi:.4f}] "
              f"{t['minus_greedy']:>+10.4f} [{dlo:+.4f}, {dhi:+.4f}] ({t['verdict']})")
    return table


def run_embedded(args: argparse.Namespace) -> list[dict]:
    """Every method under each search seed on the real model, through the pipeline's evaluator."""
    import dataclasses

    from common import search_setup

    from autoqra.data import read_split
    from autoqra.pipeline.setup import Setup, evolve_settings, refine_settings

    p, _, _ = search_setup(argparse.Namespace(**{**vars(args), "out": None}), None)
    spr = list(args.seeds_per_rung or p.search.seeds_per_rung)
    if len(spr) != len(args.fidelities):
        raise SystemExit(f"error: --seeds-per-rung {spr}: needs one value per fidelity ({args.fidelities})")
    search = dataclasses.replace(p.search, population=args.population, generations=args.generations,
                                 offspring=args.offspring, fidelities=list(args.fidelities), max_steps=args.max_steps,
                                 seeds_per_rung=spr, val_per_rung=[], workers=1,
                                 refine=dataclasses.replace(p.search.refine, evaluations=args.refine))
    base = dataclasses.replace(p, search=search)
    dirs = {"prepare": args.prepare, "quantize": args.quantize, "profile": args.profile, "search": args.search,
            "journal": "bench-efficiency"}
    setup = Setup(base, dirs, progress=True)
    top = args.fidelities[-1]
    test = read_split(Path(args.prepare) / "task", "test")
    rows = []
    for seed in range(args.seeds):
        fresh_seeds = [1000 + 100 * seed + i for i in range(args.fresh_seeds)]
        top_seeds = refine_settings(dataclasses.replace(base, seed=seed)).seeds
        for method in ZERO_SEARCH:
            t0, steps0 = time.perf_counter(), setup.fidelity_run.steps_trained
            pick, steps, final = zero_search(setup, method, top, top_seeds)
            with setup.fidelity_run.workdir() as tmp:
                fresh, values = fresh_scores(setup, pick, top, fresh_seeds, test, Path(tmp))
            rows.append({"seed": seed, "method": method, "curve": [], "final": final, "steps": steps,
                         "pick": pick.describe(), "pick_key": pick.key,
                         "fresh": float(np.mean(fresh)) if len(fresh) == args.fresh_seeds and fresh else None,
                         "fresh_scores": fresh, "test": values if len(values) == args.fresh_seeds else None,
                         "trained_steps": setup.fidelity_run.steps_trained - steps0,
                         "seconds": round(time.perf_counter() - t0, 1)})
            save(args, rows)
            print(f"seed {seed} {method}: fresh {rows[-1]['fresh']} ({steps} steps): {pick.describe()}", flush=True)
        for method in METHODS:
            t0, steps0 = time.perf_counter(), setup.fidelity_run.steps_trained
            pm = dataclasses.replace(base, seed=seed, search=dataclasses.replace(search, ablation=method))
            st, rs = evolve_settings(pm), refine_settings(pm)
            study, _ = evolve(setup.objective, setup.space, setup.budget, setup.prices, st,
                              study_name=f"{method}-s{seed}")
            results = history(study, setup.space)
            if rs.evaluations:
                study2, _ = refine(setup.objective, setup.space, setup.budget, results, rs, setup.prices,
                                   study_name=f"{method}-s{seed}-refine")
                results = results + history(study2, setup.space)
            c = curve(results, top, rs.seeds)
            if not c:
                raise SystemExit(f"error: {method} (seed {seed}) scored no configuration at fidelity {top} under "
                                 f"every seed {rs.seeds}: raise --max-steps")
            key = incumbent(results, top, rs.seeds)[0]
            pick = next(x.config for x in results if x.config.key == key)
            with setup.fidelity_run.workdir() as tmp:
                fresh, values = fresh_scores(setup, pick, top, fresh_seeds, test, Path(tmp))
            rows.append({"seed": seed, "method": method, "curve": c, "final": c[-1][1], "steps": c[-1][0],
                         "pick": pick.describe(), "pick_key": key,
                         "fresh": float(np.mean(fresh)) if len(fresh) == args.fresh_seeds and fresh else None,
                         "fresh_scores": fresh, "test": values if len(values) == args.fresh_seeds else None,
                         "trained_steps": setup.fidelity_run.steps_trained - steps0,
                         "seconds": round(time.perf_counter() - t0, 1)})
            r = rows[-1]
            save(args, rows)
            print(f"seed {seed} {method}: final {r['final']:.4f} fresh {r['fresh']} after {r['steps']} steps "
                  f"({r['trained_steps']} trained, {r['seconds']:.0f} s): {r['pick']}", flush=True)
    return rows


def run_synthetic(args: argparse.Namespace) -> list[dict]:
    u = args.units
    space, budget = synthetic_problem(u)
    fidelities, spr = (1, 3, 9), (1, 1, 2)
    refine_steps = args.refine * spr[-1] * fidelities[-1]
    rows = []
    for seed in range(args.seeds):
        obj = SyntheticObjective(space, seed, sigma=args.sigma, shared=0.6)
        prices = obj.priors()
        optimum = obj.optimum(budget)[0] if u <= 8 else None  # (value, config)
        top_seeds = tuple(seed + i for i in range(spr[-1]))
        for method in METHODS:
            t0 = time.perf_counter()
            st = ablated(EvolveSettings(population=12, offspring=6, candidates=60, generations=100,
                                        fidelities=fidelities, eta=3, max_steps=args.stage1_steps, seed=seed,
                                        seeds_per_rung=spr),
                         method, refine_steps)
            study, _ = evolve(obj, space, budget, prices, st)
            results = history(study, space)
            if method not in REFINE_OFF:
                rs = RefineSettings(evaluations=args.refine, fidelity=fidelities[-1], seeds=top_seeds, seed=seed,
                                    kernel=args.kernel)
                study2, _ = refine(obj, space, budget, results, rs, prices)
                results = results + history(study2, space)
            c = curve(results, fidelities[-1], top_seeds, obj.true_value)
            rows.append({"seed": seed, "method": method, "curve": c, "final": c[-1][1], "steps": c[-1][0],
                         "optimum": optimum, "seconds": time.perf_counter() - t0})
        print(f"seed {seed}: " + ", ".join(f"{r['method']} {r['final']:.3f}" for r in rows if r["seed"] == seed),
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", choices=("synthetic", "embedded"), default="synthetic")
    ap.add_argument("--seeds", type=int, default=0, help="search seeds (default: 10 synthetic, 2 embedded)")
    ap.add_argument("--units", type=int, default=12, help="synthetic: units")
    ap.add_argument("--sigma", type=float, default=0.1, help="synthetic: sd of the evaluation noise")
    ap.add_argument("--stage1-steps", type=int, default=240, help="synthetic: stage 1's steps")
    ap.add_argument("--refine", type=int, default=0, help="refine proposals, x the top rung's seeds x the top "
                    "fidelity (default: 6 synthetic, 1 embedded)")
    ap.add_argument("--kernel", default="additive", help="synthetic: refine's GP kernel ('auto' compares three)")
    ap.add_argument("--params", default="params.yaml", help="embedded: the pipeline's params")
    for d in ("prepare", "quantize", "profile", "search"):
        ap.add_argument(f"--{d}", default=f"data/{d}", help=f"embedded: the {d} stage's folder")
    ap.add_argument("--fidelities", type=int, nargs="+", default=[4, 8, 16], help="embedded: the rungs' steps")
    ap.add_argument("--seeds-per-rung", type=int, nargs="+", default=[1, 1, 2], help="embedded")
    ap.add_argument("--population", type=int, default=6, help="embedded")
    ap.add_argument("--generations", type=int, default=2, help="embedded")
    ap.add_argument("--offspring", type=int, default=3, help="embedded")
    ap.add_argument("--max-steps", type=int, default=120, help="embedded: stage 1's steps")
    ap.add_argument("--fresh-seeds", type=int, default=2, help="embedded: unseen training seeds for each pick")
    ap.add_argument("--json", default="")
    ap.add_argument("--summarize", action="store_true", help="print the table of an earlier run's --json")
    args = ap.parse_args()
    embedded = args.objective == "embedded"
    args.seeds = args.seeds or (2 if embedded else 10)
    args.refine = args.refine or (1 if embedded else 6)
    args.json = args.json or f"data/bench/search_efficiency{'_embedded' if embedded else ''}.json"
    if args.summarize:
        saved = json.loads(Path(args.json).read_text())
        summarize(saved["rows"], argparse.Namespace(**{**saved["args"], "json": args.json}))
        test_table(saved["rows"])
        return
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    rows = run_embedded(args) if embedded else run_synthetic(args)
    print(f"total {time.perf_counter() - start:.0f} s")
    table = summarize(rows, args)
    save(args, rows, {"search": table, "test": test_table(rows)} if embedded else table)


if __name__ == "__main__":
    main()
