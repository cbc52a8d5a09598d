"""The cost–benefit table at size: the pipeline's own search at several budgets and search seeds, its pick and
the arms a careful user would pick instead, trained under fresh seeds and scored on a large test set.

    python bench/budget_table.py [--budgets 1.0 0.9 1.1] [--seeds 0 10 20] [--fresh-seeds 3] [--test 1000]
                                 [--arms greedy best_uniform uniform4_r16 fp_lora] [--params params.yaml]
                                 [--out data/bench/budget_table] [--no-headroom] [--summarize]

For each budget (`budget.value`, in `budget.kind` against `budget.reference`) and search seed (`seed`) the
evolve and refine stages run as `make run` runs them (the same stage commands, `search.workers` processes,
the records of `--records`: an evaluation any run made before costs nothing, so the default budget's seed 0
replays `make run`'s search), into `<out>/b<budget>-s<seed>/` with the cell's studies in journals of their own.
A search seed trains under seed, seed + 1, … (`search.seeds_per_rung`, `search.frontier_seeds`): the search
seeds must be spaced so that no two share one, or their rows would not be independent replicates. Then
the pick (`autoqra`) and every arm of `--arms` (`autoqra.arms`: the zero-search picks `greedy` and
`best_uniform` at that budget, any `uniform{b}_r{r}`, `fp_lora`) are trained `finetune.steps` steps under the
search seed's fresh seeds, `1000 + 100·seed + i` (no search trains under them), and scored on `--test` test
examples (answer loss; `bench/eora.py`'s extension of the test split, disjoint from everything trained,
validated and calibrated on; nothing is chosen on it). The arms that do not depend on the budget (uniform,
fp_lora) are records: trained once per seed for all budgets.

The headroom (`best_found`, unless `--no-headroom`): once every search at a budget has run, the configuration
with the lowest mean validation score over all the top-fidelity runs any of them made (a configuration two
searches reached has both their runs; within the budget), measured like the other arms under every
search seed's fresh seeds. Whether the search could have done better than its pick, and than greedy, on
configurations it actually evaluated; chosen on validation, like everything else.

The table, per budget: autoqra − each arm, 95 % intervals from `autoqra.stats.difference` over search seeds ×
test examples (a search seed's row: its per-example losses averaged over its fresh seeds, so the search's
own outcome is what varies between rows; with one search seed finished, over its fresh seeds × examples as
in the pipeline's report), and the steps each pick cost (search steps for autoqra, the
uniform frontier's for best_uniform, none for the rest). Every finished training and scoring is a record
and every finished row is in `<out>/rows.json`: a killed run loses at most the evaluation it was in, and
`--summarize` prints the table of the rows so far (budgets and seeds not finished are left out of it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import ROOT, load, test_examples, trained_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    for d in ("prepare", "quantize", "profile", "records"):
        ap.add_argument(f"--{d}", default=f"data/{d}")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.9, 1.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 10, 20],
                    help="search seeds, spaced so that no two searches train under a common seed")
    ap.add_argument("--fresh-seeds", type=int, default=3, help="training seeds per search seed")
    ap.add_argument("--test", type=int, default=1000, help="test examples")
    ap.add_argument("--arms", nargs="+", default=["greedy", "best_uniform", "uniform4_r16", "fp_lora"])
    ap.add_argument("--out", default="data/bench/budget_table")
    ap.add_argument("--no-headroom", dest="headroom", action="store_false",
                    help="leave out the best configuration all searches at a budget found (best_found)")
    ap.add_argument("--summarize", action="store_true", help="print the table of the rows so far")
    args = ap.parse_args()
    out = Path(args.out)
    if args.summarize:
        if not (out / "rows.json").exists():
            raise SystemExit(f"error: --out {args.out}: no rows.json (nothing measured there yet)")
        summarize(json.loads((out / "rows.json").read_text())["rows"])
        return

    from autoqra import preflight
    from autoqra.arms import SEARCH_OUTPUTS
    from autoqra.params import ParamError
    from autoqra.params.rules import search_seeds
    from autoqra.pipeline.arms import resolve
    from autoqra.pipeline.setup import Setup, check_inputs
    from autoqra.store import fingerprint
    from stages import params as P

    base = P.read(args.params)
    p0 = load(args.params)
    args.arms = [a for a in dict.fromkeys(args.arms) if a != "autoqra"]  # the pick is always measured
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0 or max(args.seeds) >= 100:
        raise SystemExit(f"error: --seeds {args.seeds}: distinct, 0–99 (the fresh seeds are 1000 + 100·seed + i)")
    trains = {s: set(search_seeds(s, [*p0.search.seeds_per_rung, p0.search.frontier_seeds])) for s in args.seeds}
    shared = [(a, b) for a in args.seeds for b in args.seeds if a < b and trains[a] & trains[b]]
    if shared:  # a search seed's row must be an independent replicate
        raise SystemExit(f"error: --seeds {args.seeds}: searches {shared[0]} would train under the same seeds "
                         f"(each trains under seed … seed+{max(map(len, trains.values())) - 1}); space them out")
    if not 2 <= args.fresh_seeds <= 100 or args.test < 2:
        raise SystemExit(f"error: --fresh-seeds {args.fresh_seeds} --test {args.test}: fresh seeds 2–100, "
                         "test examples at least 2")
    dirs = {d: str(Path(getattr(args, d)).resolve()) for d in ("prepare", "quantize", "profile", "records")}
    cells = {}
    for budget in args.budgets:  # every cell's parameters and budget valid before any work
        for seed in args.seeds:
            cells[(budget, seed)] = {**base, "seed": seed, "budget": {**base["budget"], "value": budget}}
            try:
                preflight.check(P.validated(cells[(budget, seed)]), dirs["prepare"], dirs["records"])
            except (ParamError, ValueError) as exc:
                raise SystemExit(f"error: --budgets {budget:g} --seeds {seed}: {exc}") from None
    out = out.resolve()
    try:
        check_inputs(p0, {**dirs, "search": str(out)})
        setup = Setup(p0, {**dirs, "search": str(out)}, arm_ladders=True)
        for arm in (a for a in args.arms if a not in SEARCH_OUTPUTS):  # on the arms' ladders
            setup.arm_space.check(resolve(arm, setup, None))
    except (ParamError, ValueError) as exc:
        raise SystemExit(f"error: --arms {' '.join(args.arms)}: {exc}") from None
    test = test_examples(p0, Path(args.prepare) / "task", args.test)
    test_fp = fingerprint.of_data([ex["prompt"] + "\0" + ex["answer"] for ex in test])
    # what every row depends on besides its cell: rows made under other settings are not mixed in
    settings = {"test": test_fp, "fresh_seeds": args.fresh_seeds,
                "params": fingerprint.of_data({**base, "seed": None, "budget": {**base["budget"], "value": None}})}
    rows_file = out / "rows.json"
    saved = json.loads(rows_file.read_text()) if rows_file.exists() else {"settings": settings, "rows": []}
    if saved["settings"] != settings:
        raise SystemExit(f"error: --out {args.out}: its rows were made under other settings (test set, fresh seeds "
                         f"or params: {saved['settings']} against {settings}); give another --out")
    rows = saved["rows"]
    write(rows_file, settings, rows)  # before any search: a cell's outputs belong to these settings
    done = {(r["budget"], r["seed"], r["arm"]) for r in rows}
    print(f"{len(test)} test examples ({test_fp[:8]}); budgets {args.budgets}, search seeds {args.seeds}, "
          f"{args.fresh_seeds} fresh seeds each; {len(done)} rows already in {rows_file}", flush=True)
    def measure(budget: float, seed: int, arms: list[str], searched: dict, configs: dict | None = None,
                **extra) -> None:
        cell = out / f"b{budget:g}-s{seed}"
        for row in measure_cell(P.validated(cells[(budget, seed)]), {**dirs, "search": str(cell / "search")}, cell,
                                arms, searched, budget, seed, args, test, test_fp, configs):
            rows.append({**row, **extra})
            write(rows_file, settings, rows)

    for budget in args.budgets:
        searched = {}
        for seed in args.seeds:
            arms = [a for a in ("autoqra", *args.arms) if (budget, seed, a) not in done]
            if arms or args.headroom:
                searched[seed] = search(out / f"b{budget:g}-s{seed}", P.to_yaml(cells[(budget, seed)]), dirs)
            if arms:
                measure(budget, seed, arms, searched[seed])
        if not args.headroom:
            continue
        # the headroom: the best configuration any search at this budget found, under every row's fresh seeds
        setup = Setup(P.validated(cells[(budget, args.seeds[0])]),
                      {**dirs, "search": str(out / f"b{budget:g}-s{args.seeds[0]}" / "search")},
                      progress=False, arm_ladders=True)
        best, found = best_found(setup, [out / f"b{budget:g}-s{s}" / "search" for s in args.seeds])
        print(f"budget {budget:g}: best found {best.describe()} (validation {found['val_mean']:.4f} over "
              f"{found['val_n']} top-fidelity runs, among {found['candidates']} configurations)", flush=True)
        total = sum(searched[s]["autoqra"] for s in args.seeds)  # every search's steps went into finding it
        for seed in args.seeds:
            old = [r for r in rows if (r["budget"], r["seed"], r["arm"]) == (budget, seed, "best_found")]
            if old and old[0]["key"] == best.key and old[0]["found"]["searches"] == found["searches"]:
                continue
            rows[:] = [r for r in rows if r not in old]  # chosen among other searches: measured again
            write(rows_file, settings, rows)
            measure(budget, seed, ["best_found"], {**searched[seed], "best_found": total}, {"best_found": best},
                    found=found)
    summarize(rows)


def search(cell: Path, params_yaml: str, dirs: dict[str, str]) -> dict[str, float]:
    """The evolve and refine stages of one cell, as the pipeline runs them (skipped when their outputs
    exist), each cell's studies in journals of its own; their steps and seconds."""
    cell.mkdir(parents=True, exist_ok=True)
    params = cell / "params.yaml"
    if params.exists() and params.read_text() != params_yaml:
        raise SystemExit(f"error: {cell}: searched under other parameters (its params.yaml); remove the folder")
    params.write_text(params_yaml)
    journal = f"budget_table-{cell.name}"
    common = ["--params", str(params), "--prepare", dirs["prepare"], "--quantize", dirs["quantize"],
              "--profile", dirs["profile"], "--records", dirs["records"], "--search", str(cell / "search")]
    stages = {"evolve": ["--journal", journal, "--out", str(cell / "search/evolve")],
              "refine": ["--journal", f"{journal}-refine", "--stage1-journal", journal,
                         "--evolve", str(cell / "search/evolve"), "--out", str(cell / "search/refine")]}
    for stage, extra in stages.items():
        if not (cell / "search" / stage / "metrics.json").exists():
            print(f"{cell.name}: {stage} stage", flush=True)
            res = subprocess.run([sys.executable, "-m", f"stages.{stage}", *common, *extra], cwd=ROOT)
            if res.returncode:
                raise SystemExit(f"error: {cell.name}: the {stage} stage failed (exit {res.returncode})")
    evolve, refine = (json.loads((cell / "search" / s / "metrics.json").read_text()) for s in stages)
    frontier = json.loads((cell / "search/evolve/frontier.json").read_text())
    return {"autoqra": evolve["steps_cost"] + refine["steps_spent"],  # every uniform under every frontier seed
            "best_uniform": frontier["steps"] * len(frontier["seeds"]) * len(frontier["uniforms"]),
            "search_s": evolve["wall_s"] + refine["wall_s"]}


def best_found(setup, searches: list[Path]):
    """(configuration, what it was chosen on): among every top-fidelity configuration within the budget that
    the searches' evolve and refine stages trained, the lowest mean validation score over all their runs of
    it (a configuration two searches reached is run under both their seeds). A low validation score is partly
    luck (the winner's curse); the fresh-seed test is what measures it. Chosen on validation only."""
    import pandas as pd

    from autoqra.pipeline.arms import within_budget

    top = max(setup.p.search.fidelities)
    trials = pd.concat([pd.read_parquet(s / stage / "trials.parquet") for s in searches for stage in
                        ("evolve", "refine")])
    trials = trials[(trials["status"] == "ok") & (trials["fidelity"] == top)]
    # one run per (configuration, seed): the refine stage reads stage 1's runs, and a record is one run
    runs = trials.drop_duplicates(["config_key", "seed"]).groupby("config_key")
    table = pd.DataFrame({"mean": runs["score"].mean(), "n": runs["score"].size(), "config": runs["config"].first()})
    for key in table.sort_values(["mean"], kind="stable").index:
        config = setup.arm_space.parse({"units": json.loads(table.loc[key, "config"])})
        if within_budget(setup, config):
            return config, {"val_mean": float(table.loc[key, "mean"]), "val_n": int(table.loc[key, "n"]),
                            "candidates": len(table), "searches": [s.parent.name for s in searches]}
    raise SystemExit(f"error: {searches[0].parent}: no top-fidelity run within the budget to choose from")


def measure_cell(p, dirs: dict[str, str], cell: Path, arms: list[str], searched: dict[str, float], budget: float,
                 seed: int, args, test: list[dict], test_fp: str, configs: dict | None = None) -> Iterator[dict]:
    """One row per arm of the cell, as each is done: its configuration, memory and steps, per fresh seed the
    validation score and the per-example test contributions."""
    import dataclasses

    from autoqra.pipeline.arms import resolve, within_budget
    from autoqra.pipeline.setup import Setup

    setup = Setup(p, dirs, progress=False, arm_ladders=True)
    evaluate = dataclasses.replace(p.evaluate, exact_match=False, lm_eval_tasks=[])
    fresh = [1000 + 100 * seed + i for i in range(args.fresh_seeds)]
    for arm in arms:
        config = (configs or {}).get(arm) or resolve(arm, setup, cell / "search")
        start = time.perf_counter()
        per_seed, val = trained_test(setup.fidelity_run, config, p.finetune.steps, fresh, test, test_fp, evaluate,
                                     f"{cell.name} {arm}")
        if len(per_seed) != len(fresh):
            print(f"{cell.name} {arm}: {len(fresh) - len(per_seed)} fresh seeds failed: no row, and the table "
                  f"leaves search seed {seed} out at budget {budget:g}", flush=True)
            continue
        yield {"budget": budget, "seed": seed, "arm": arm, "summary": config.describe(), "key": config.key,
               "memory_bytes": setup.memory.total(setup.arm_space, config),
               "within_budget": within_budget(setup, config),
               "steps": searched.get(arm, 0), "search_s": searched["search_s"] if arm == "autoqra" else 0,
               "val": {str(s): v for s, v in val.items()}, "test": {str(s): c.tolist() for s, c in per_seed.items()},
               "seconds": round(time.perf_counter() - start, 1)}


def write(path: Path, settings: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "rows": rows}))
    tmp.replace(path)


def summarize(rows: list[dict]) -> list[dict]:
    """Per budget, over the search seeds every arm finished: each arm's test answer loss and autoqra − arm
    with 95 % intervals (over search seeds × test examples; with one search seed, over its fresh seeds × test
    examples), and where the headroom was measured, best_found − each arm over the search seeds it has;
    printed as Markdown tables and returned."""
    from autoqra import stats

    table, headroom = [], []
    print("\n| budget | arm | configuration | steps | test answer loss | autoqra − arm [95 %] | verdict (autoqra) "
          "| search seeds |\n|---|---|---|---|---|---|---|---|")
    for budget in sorted({r["budget"] for r in rows}):
        get = {(r["arm"], r["seed"]): r for r in rows if r["budget"] == budget}
        arms = [a for a in dict.fromkeys(r["arm"] for r in rows if r["budget"] == budget) if a != "best_found"]
        seeds = sorted(s for s in {k[1] for k in get} if all((a, s) in get for a in arms))
        if "autoqra" not in arms or not seeds:
            continue
        pick = _matrix(get, "autoqra", seeds)
        for arm in arms:
            m = _matrix(get, arm, seeds)
            level = stats.difference(m)
            diff = stats.difference(pick - m) if arm != "autoqra" else None
            summaries = sorted({get[(arm, s)]["summary"] for s in seeds})
            steps = float(np.mean([get[(arm, s)]["steps"] for s in seeds]))
            table.append({"budget": budget, "arm": arm, "test": level["diff"], "test_ci": level["ci"],
                          "autoqra_minus": diff and diff["diff"], "ci": diff and diff["ci"],
                          "verdict": diff and diff["verdict"], "steps": steps, "search_seeds": len(seeds),
                          "configurations": summaries})
            d = "—" if diff is None else f"{diff['diff']:+.4f} [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}]"
            conf = summaries[0].replace("|", "\\|") if len(summaries) == 1 else f"{len(summaries)} different"
            print(f"| {budget:g} | {arm} | {conf} | {steps:.0f} | {level['diff']:.4f} | {d} | "
                  f"{'—' if diff is None else diff['verdict']} | {len(seeds)} |")
        found = [get[k] for k in get if k[0] == "best_found" and k[1] in seeds]
        if found and len({(r["key"], tuple(r["found"]["searches"])) for r in found}) > 1:
            print(f"(budget {budget:g}: best_found rows chosen among different searches; headroom left out until "
                  "the next run measures them again)")
        elif found:
            headroom.append((budget, get, arms, sorted(r["seed"] for r in found)))
    if headroom:  # what the best configuration any search found buys over each arm: the room there was
        print("\n| budget | best_found | arm | best_found − arm [95 %] | verdict (best_found) | search seeds |\n"
              "|---|---|---|---|---|---|")
    for budget, get, arms, seeds in headroom:
        best = _matrix(get, "best_found", seeds)
        conf = get[("best_found", seeds[0])]["summary"].replace("|", "\\|")
        for arm in arms:
            diff = stats.difference(best - _matrix(get, arm, seeds))
            next(t for t in table if (t["budget"], t["arm"]) == (budget, arm)).update(
                best_found_minus=diff["diff"], best_found_ci=diff["ci"], best_found_verdict=diff["verdict"])
            print(f"| {budget:g} | {conf} | {arm} | {diff['diff']:+.4f} [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}] "
                  f"| {diff['verdict']} | {len(seeds)} |")
    print("\nIntervals: over search seeds × test examples (each search seed's fresh seeds averaged); with one "
          "search seed, over its fresh seeds × test examples. best_found is held fixed: how its choice would "
          "vary is not in its intervals.")
    return table


def _matrix(get: dict, arm: str, seeds: list[int]) -> np.ndarray:
    """Search seeds × test examples: each search seed's per-example losses, averaged over its fresh seeds
    (their noise is in the spread between search seeds). With one search seed, its fresh seeds × test
    examples instead: the interval of the pipeline's report, with the training seeds' noise in it."""
    rows = [np.array([get[(arm, s)]["test"][k] for k in sorted(get[(arm, s)]["test"])]) for s in seeds]
    return rows[0] if len(rows) == 1 else np.stack([r.mean(axis=0) for r in rows])


if __name__ == "__main__":
    main()
