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
from stages import common
from stages import params as P

HIGHER_IS_BETTER = {"answer_loss": False, "exact_match": True}


def cell_name(ablation: Any, seed: Any, budget: Any) -> str:
    """The cell's folder name, from the values as written in params.yaml (`1` and `1.0` stay apart):
    Snakemake's wildcards and DVC's matrix items render them the same way."""
    return f"{ablation}-s{seed}-b{budget}"


def cells(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's cells, from the composed params as a plain tree."""
    sw = tree["sweep"]
    return [{"ablation": a, "seed": s, "budget": b, "name": cell_name(a, s, b)}
            for a in sw["ablations"] for s in sw["seeds"] for b in sw["budgets"]]


# ---------------------------------------------------------------------------------------------- cell
def cell_tree(tree: dict[str, Any], ablation: str, seed: int, budget: float) -> dict[str, Any]:
    out = json.loads(json.dumps(tree))
    out["search"]["ablation"], out["seed"], out["budget"]["value"] = ablation, seed, budget
    return out


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


def arm_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Test scores over the training seeds: mean, standard error, and the per-seed values."""
    rows = [r for r in metrics["seeds"] if r.get("status") == "ok"]
    out: dict[str, Any] = {"summary": metrics["summary"], "memory_bytes": metrics["memory"]["total"],
                           "within_budget": metrics["within_budget"], "seeds": [r["seed"] for r in rows]}
    for key in ("answer_loss", "exact_match"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = values
        out[f"{key}_mean"] = float(np.mean(values)) if values else None
        out[f"{key}_se"] = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return out


def best_so_far(cell: Path, metric: str) -> list[list[float]]:
    """[(training steps spent so far, best top-fidelity mean validation score so far)] over the cell's
    evolve then refine trials, at each top-fidelity evaluation: the best of the configurations' means
    over the seeds evaluated so far."""
    frames = [pd.read_parquet(cell / stage / "trials.parquet") for stage in ("evolve", "refine")
              if (cell / stage / "trials.parquet").exists()]
    trials = pd.concat([f.sort_values("number") for f in frames], ignore_index=True)
    top = trials["fidelity"].max()
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    steps, seen, out = 0, {}, []
    for row in trials.itertuples():
        steps += int(row.fidelity)
        if row.fidelity == top and row.status == "ok" and np.isfinite(row.score):
            seen.setdefault(row.config_key, []).append(float(row.score))
            # the best of the current means: a mean that a further seed moved is not kept at its old value
            out.append([steps, sign * min(sign * float(np.mean(v)) for v in seen.values())])
    return out


# ---------------------------------------------------------------------------------------------- summary
def summarise(p: Params, tree: dict[str, Any], cells_dir: Path) -> tuple[pd.DataFrame, str]:
    """(one row per cell and arm, the Markdown report)."""
    rows = []
    for c in cells(tree):
        path = cells_dir / c["name"] / "metrics.json"
        if not path.exists():
            raise SystemExit(f"error: {path}: missing (run the sweep_cell stage of cell {c['name']})")
        m = json.loads(path.read_text())
        for arm, a in m["arms"].items():
            rows.append({"cell": c["name"], "ablation": c["ablation"], "seed": c["seed"], "budget": c["budget"],
                         "budget_value": float(c["budget"]), "arm": arm, "summary": a["summary"],
                         "memory_bytes": a["memory_bytes"],
                         "within_budget": a["within_budget"], "test_answer_loss": a["answer_loss_mean"],
                         "test_answer_loss_se": a["answer_loss_se"], "test_exact_match": a["exact_match_mean"],
                         "search_steps": m["search_steps"],
                         "search_best_val": m["search_best"]["mean"],
                         "steps_trained": int(sum(m["steps_trained"].values())),
                         "records_computed": int(sum(m["records_computed"].values()))})
    table = pd.DataFrame(rows)
    return table, markdown(p, table)


def _mean_se(values: pd.Series) -> str:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.4f} (n=1)"
    return f"{v.mean():.4f} ± {v.std(ddof=1) / np.sqrt(len(v)):.4f}"


def markdown(p: Params, table: pd.DataFrame) -> str:
    lines = [f"# Sweep `{p.sweep.name[0]}`: {len(table['cell'].unique())} cells",
             "",
             f"Each cell: the search (`search.ablation`) under one search seed and budget, then the arm(s) "
             f"{', '.join(p.sweep.arms)} trained {p.finetune.steps} steps under seeds {p.finetune.seeds} and "
             f"scored on the test split. Test loss: mean over the training seeds per cell, then mean ± SE over "
             f"the search seeds. Paired difference: to the full method (`none`) at the same search seed and "
             f"budget (negative = lower loss than the full method); `inconclusive` when |mean| < 2 SE.",
             ""]
    for arm in p.sweep.arms:
        t = table[table["arm"] == arm]
        lines += [f"## Arm `{arm}`", "",
                  "| budget | method | test answer loss | paired diff. to `none` | best val. (search) | search steps "
                  "| cells |", "|---|---|---|---|---|---|---|"]
        for budget in sorted(t["budget_value"].unique()):
            tb = t[t["budget_value"] == budget]
            ref = tb[tb["ablation"] == "none"].set_index("seed")["test_answer_loss"]
            for ablation in p.sweep.ablations:
                ta = tb[tb["ablation"] == ablation].set_index("seed")
                if ablation == "none" or ref.empty:
                    diff = "–"
                else:
                    d = (ta["test_answer_loss"] - ref).dropna()
                    diff = _mean_se(d)
                    if len(d) > 1 and abs(d.mean()) < 2 * d.std(ddof=1) / np.sqrt(len(d)):
                        diff += " (inconclusive)"
                lines.append(f"| {budget} | {ablation} | {_mean_se(ta['test_answer_loss'])} | {diff} | "
                             f"{_mean_se(ta['search_best_val'])} | {ta['search_steps'].mean():.0f} | {len(ta)} |")
        lines.append("")
    lines += [f"Steps trained by this sweep's cells (records not already in the store): "
              f"{int(table.drop_duplicates('cell')['steps_trained'].sum())}.", ""]
    return "\n".join(lines)


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
