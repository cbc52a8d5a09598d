"""The summary of a sweep: what a cell keeps (test scores over training seeds, the search's best-so-far
trace) and the table over cells (per method and budget: mean ± standard error over search seeds, the
paired difference to the full method with its 95 % interval, `stats.compare`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoqra import stats
from autoqra.params import ParamError, Params
from autoqra.sweep import cells

HIGHER_IS_BETTER = {"answer_loss": False, "exact_match": True}

def arm_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Test scores over the training seeds: mean, standard error, the per-seed values, and each test
    example's answer-loss share averaged over the seeds (what the summary pairs between cells)."""
    from autoqra.report.arms import values

    rows = [r for r in metrics["seeds"] if r.get("status") == "ok"]
    out: dict[str, Any] = {"summary": metrics["summary"], "memory_bytes": metrics["memory"]["total"],
                           "within_budget": metrics["within_budget"], "seeds": [r["seed"] for r in rows]}
    for key in ("answer_loss", "exact_match"):
        scores = [r[key] for r in rows if r.get(key) is not None]
        m, se = stats.mean_se(scores) if scores else (None, None)
        out[key], out[f"{key}_mean"], out[f"{key}_se"] = scores, m, se if len(scores) > 1 else None
    per_seed = values(metrics, "answer_loss")
    out["answer_loss_examples"] = np.mean([per_seed[sd] for sd in sorted(per_seed)], axis=0).tolist() \
        if per_seed else None
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


def summarise(p: Params, tree: dict[str, Any], cells_dir: Path) -> tuple[pd.DataFrame, str]:
    """(one row per cell and arm, the Markdown report)."""
    rows, examples = [], {}
    for c in cells(tree):
        path = cells_dir / c["name"] / "metrics.json"
        if not path.exists():
            raise ParamError(f"{path}: missing (run the sweep_cell stage of cell {c['name']})")
        m = json.loads(path.read_text())
        for arm, a in m["arms"].items():
            examples[(c["name"], arm)] = a.get("answer_loss_examples") or [a["answer_loss_mean"]]
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
    return table, markdown(p, table, examples)


def _mean_se(values: pd.Series) -> str:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.4f} (n=1)"
    m, se = stats.mean_se(v)
    return f"{m:.4f} ± {se:.4f}"


def markdown(p: Params, table: pd.DataFrame, examples: dict[tuple[str, str], list[float]]) -> str:
    """Per arm, budget and method: the test loss over search seeds and the paired difference to the full
    method (`stats.compare`: search seeds paired, and the test examples, each a cell's mean over its
    training seeds), with its 95 % interval and verdict. `examples[(cell, arm)]`: the per-example values."""
    lines = [f"# Sweep `{p.sweep.name[0]}`: {len(table['cell'].unique())} cells",
             "",
             f"Each cell: the search (`search.ablation`) under one search seed and budget, then the arm(s) "
             f"{', '.join(p.sweep.arms)} trained {p.finetune.steps} steps under seeds {p.finetune.seeds} and "
             f"scored on the test split. Test loss: mean over the training seeds per cell, then mean ± SE over "
             f"the search seeds. Paired difference: to the full method (`none`) at the same search seed and "
             f"budget (negative = lower loss than the full method), example by example, with its 95 % interval "
             f"over search seeds and test examples and the verdict read from it (`better`/`worse` only when "
             f"the interval excludes 0).",
             ""]
    for arm in p.sweep.arms:
        t = table[table["arm"] == arm]
        lines += [f"## Arm `{arm}`", "",
                  "| budget | method | test answer loss | paired diff. to `none` [95 % interval] | best val. (search) "
                  "| search steps | cells |", "|---|---|---|---|---|---|---|"]
        for budget in sorted(t["budget_value"].unique()):
            tb = t[t["budget_value"] == budget]
            ref = {r.seed: examples[(r.cell, arm)] for r in tb[tb["ablation"] == "none"].itertuples()}
            for ablation in p.sweep.ablations:
                ta = tb[tb["ablation"] == ablation]
                mine = {r.seed: examples[(r.cell, arm)] for r in ta.itertuples()}
                paired = ablation != "none" and set(ref) & set(mine)
                diff = stats.describe(stats.compare(mine, ref)) if paired else "–"
                lines.append(f"| {budget} | {ablation} | {_mean_se(ta['test_answer_loss'])} | {diff} | "
                             f"{_mean_se(ta['search_best_val'])} | {ta['search_steps'].mean():.0f} | {len(ta)} |")
        lines.append("")
    lines += [f"Steps trained by this sweep's cells (records not already in the store): "
              f"{int(table.drop_duplicates('cell')['steps_trained'].sum())}.", ""]
    return "\n".join(lines)


def write(p: Params, tree: dict[str, Any], cells_dir: Path, out: Path) -> str:
    """The sweep's summary into `out/` (`summary.csv`, `summary.md`, `score_vs_budget.png`,
    `best_so_far.png`); returns the Markdown."""
    from autoqra.report import plots

    out.mkdir(parents=True, exist_ok=True)
    table, text = summarise(p, tree, cells_dir)
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(text)
    figure = plots.score_vs_budget(table, p.sweep.ablations, p.sweep.arms[0])
    figure.savefig(out / "score_vs_budget.png", dpi=120)
    first = tree["sweep"]["budgets"][0]
    traces: dict[str, list[list[list[float]]]] = {}
    for c in cells(tree):
        if c["budget"] == first:
            traces.setdefault(c["ablation"], []).append(json.loads((cells_dir / c["name"] / "metrics.json").read_text())
                                                        ["trace"])
    plots.best_so_far(traces, p.search.metric, first).savefig(out / "best_so_far.png", dpi=120)
    return text
