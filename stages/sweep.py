"""sweep: a grid of pipeline runs (cells) and one table over them.

`cell`: one cell, the composed params with `search.ablation`, `seed` and `budget.value` set, written to
`<out>/params.yaml`. It runs the evolve, refine, finetune and evaluate stages (for each of `sweep.arms`)
into `<out>/`, reading the shared GPTQ caches and priors; its records and studies go to its own store
`<search>/records/cells/<cell>/`, which reads every other store: a cell trains only what no single run
and no other cell has trained (the record keys are those of single runs). `<out>/metrics.json` gathers
what the summary needs.

`summary`: every cell of the sweep into `<out>/summary.csv` (one row per cell), `<out>/summary.md`
(per method and budget: the test score mean ± SE over search seeds, the paired difference to the full
method, search steps), `<out>/score_vs_budget.png` and `<out>/best_so_far.png` (the best top-fidelity
validation score found after n training steps, mean and range over seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoqra.config import ParamError, Params
from autoqra.sweep import arm_summary, best_so_far, cell_name, cell_tree, cells, summarise
from stages import common
from stages import params as P


# ---------------------------------------------------------------------------------------------- cell
def _stage(name: str, *args: str) -> None:
    cmd = [sys.executable, "-m", f"stages.{name}", *args]
    common.log.info("sweep cell: %s", " ".join(cmd[2:]))
    res = subprocess.run(cmd)
    if res.returncode:
        raise SystemExit(f"error: the {name} stage of this cell failed (exit {res.returncode}): {' '.join(cmd[2:])}")


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    tree = cell_tree(P.read(args.params), args.ablation, args.seed, args.budget)
    try:
        p = P.validated(tree)
    except ParamError as exc:
        raise SystemExit(f"error: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = out / "params.yaml"
    params.write_text(P.to_yaml(tree))
    # the cell's record store and studies: one DVC output per cell, reading every other store
    store = f"cells/{out.name}"
    dirs = [f"--{k}={v}" for k, v in common.dirs(args).items()] + [f"--store={store}"]
    stage1 = [f"--stage1-store={store}"]
    threads = [f"--threads={args.threads}"]
    _stage("evolve", f"--params={params}", *dirs, f"--out={out / 'evolve'}", *threads)
    _stage("refine", f"--params={params}", *dirs, *stage1, f"--evolve={out / 'evolve'}", f"--out={out / 'refine'}",
           *threads)
    arms = {}
    for arm in p.sweep.arms:
        train, metrics = out / "final" / arm / "train", out / "final" / arm / "metrics.json"
        _stage("finetune", f"--params={params}", f"--arm={arm}", *dirs, *stage1, f"--refine={out / 'refine'}",
               f"--out={train}", *threads)
        _stage("evaluate", f"--params={params}", f"--arm={arm}", *dirs, f"--train={train}", f"--out={metrics}",
               *threads)
        arms[arm] = {"train": json.loads((train / "metrics.json").read_text()),
                     "test": json.loads(metrics.read_text())}
    evolve = json.loads((out / "evolve" / "metrics.json").read_text())
    refine = json.loads((out / "refine" / "metrics.json").read_text())
    trace = best_so_far(out, p.search.metric)
    return {
        "cell": out.name, "ablation": args.ablation, "seed": args.seed, "budget": args.budget,
        "metric": p.search.metric,
        "search_steps": int(evolve["steps_spent"] + refine["steps_spent"]),
        # optimizer steps this cell ran (records already in the store cost none): the search workers' and
        # the evolve stage's own comparison of its pick with the uniform arms
        "steps_trained": {"evolve": evolve["steps_trained_this_run"] + evolve["comparison"]["steps_trained"],
                          "refine": refine["steps_trained_this_run"],
                          **{f"finetune/{a}": m["train"]["trained_steps"] for a, m in arms.items()}},
        "records_computed": {"evolve": evolve["records_computed_this_run"] + evolve["comparison"]["records_computed"],
                             "refine": refine["records_computed_this_run"],
                             **{f"finetune/{a}": m["train"]["records_computed"] for a, m in arms.items()}},
        "search_best": refine["best"],
        "trace": trace,
        "arms": {a: arm_summary(m["test"]) for a, m in arms.items()},
    }


def plots(p: Params, tree: dict[str, Any], table: pd.DataFrame, cells_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arm = p.sweep.arms[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    t = table[table["arm"] == arm]
    for ablation in p.sweep.ablations:
        g = t[t["ablation"] == ablation].groupby("budget_value")["test_answer_loss"]
        mean, se = g.mean(), g.std(ddof=1).fillna(0) / np.sqrt(g.count())
        ax.errorbar(mean.index, mean.values, yerr=se.values, marker="o", capsize=3, label=ablation)
    ax.set(xlabel="budget.value", ylabel=f"test answer loss ({arm})", title="score vs budget (mean ± SE over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "score_vs_budget.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    grid_max = 0
    traces: dict[str, list[list[list[float]]]] = {}
    first = tree["sweep"]["budgets"][0]
    for c in cells(tree):
        if c["budget"] != first:
            continue
        tr = json.loads((cells_dir / c["name"] / "metrics.json").read_text())["trace"]
        traces.setdefault(c["ablation"], []).append(tr)
        grid_max = max([grid_max] + [s for s, _ in tr])
    grid = np.linspace(0, grid_max, 200)
    for ablation, runs in traces.items():
        curves = np.array([[next((v for s, v in reversed(tr) if s <= x), np.nan) for x in grid] for tr in runs])
        with warnings.catch_warnings():  # before a run's first top-fidelity result its curve is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(grid, np.nanmean(curves, axis=0), label=ablation)
            if len(runs) > 1:
                ax.fill_between(grid, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), alpha=0.15)
    ax.set(xlabel="training steps spent by the search", ylabel=f"best top-fidelity {p.search.metric}",
           title=f"best so far (budget {first}; mean, range over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "best_so_far.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    cell = sub.add_parser("cell", help="run one cell")
    cell.add_argument("--params", default="params.yaml")
    cell.add_argument("--threads", type=int, default=0)
    common.add_dirs(cell)
    cell.add_argument("--ablation", required=True)
    cell.add_argument("--seed", type=int, required=True)
    cell.add_argument("--budget", type=float, required=True)
    cell.add_argument("--out", required=True, help="the cell's folder (data/sweep/cells/<cell>)")
    summary = sub.add_parser("summary", help="gather the cells into one table")
    summary.add_argument("--params", default="params.yaml")
    summary.add_argument("--threads", type=int, default=0)
    summary.add_argument("--cells", default="data/sweep/cells")
    summary.add_argument("--out", required=True, help="data/sweep/<name>")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, ())
    tree = P.read(args.params)
    if args.command == "cell":
        wanted = {(c["ablation"], c["seed"], float(c["budget"])) for c in cells(tree)}
        if (args.ablation, args.seed, args.budget) not in wanted:
            raise SystemExit(f"error: cell {cell_name(args.ablation, args.seed, args.budget)}: not in the sweep of "
                             f"{args.params} (cells: {', '.join(c['name'] for c in cells(tree))})")
        metrics = common.timed(lambda: run_cell(args))
        common.write_json(Path(args.out) / "metrics.json", metrics)
        return
    if not p.sweep.name:
        raise SystemExit(f"error: sweep.name=[] in {args.params}: no sweep to summarise (e.g. sweep=ablations)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table, text = summarise(p, tree, Path(args.cells))
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(text)
    plots(p, tree, table, Path(args.cells), out)
    print(text)


if __name__ == "__main__":
    main()
